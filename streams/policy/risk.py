"""Re-identification risk of what one recipient receives: equivalence classes of its quasi-identifiers.

The quasi-identifiers of a policy are its output fields read from an input of class
``quasi_identifier`` plus the fields the policy marks ``quasi_identifier: true`` (health facts an
outsider may know, such as the sampling day). Records that agree on all of them form one
equivalence class; a record in a class of fewer than ``k`` records is singled out by anyone who
knows those facts about a person. :func:`assess` gives the class-size distribution, the minimum
class size, the share of records in classes below ``k``, and for each quasi-identifier how that
share falls when the field is generalised one step (:func:`one_step`) or suppressed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from streams.contracts.schemas import Schema, fields_by_name
from streams.domain.geography import Geography, department_of
from streams.errors import ConfigError
from streams.policy.explain import table
from streams.policy.model import FieldRule, Policy

_MS_PER_DAY = 86_400_000
_EPOCH = dt.date(1970, 1, 1)
_BAND = re.compile(r"^(\d+)-(\d+)$")
Key = tuple[Any, ...]


@dataclass(frozen=True)
class Step:
    """One generalisation step on an output value, e.g. ``department → region``."""

    name: str
    apply: Callable[[Any], Any]


@dataclass(frozen=True)
class Driver:
    """How the share of records below k changes when one quasi-identifier is coarsened."""

    field: str
    step: str | None
    below_k_after_step: float | None
    below_k_suppressed: float


@dataclass(frozen=True)
class RiskReport:
    """The equivalence classes of one recipient's quasi-identifiers over a sample."""

    recipient: str
    scope: str
    events: int
    records: int
    quasi_identifiers: tuple[str, ...]
    k: int
    classes: int
    min_k: int
    below_k_records: int
    sizes: Mapping[int, int]  # class size -> number of classes of that size
    drivers: tuple[Driver, ...]

    @property
    def below_k_share(self) -> float:
        """Share of records in classes of fewer than k records."""
        return self.below_k_records / self.records if self.records else 0.0


def quasi_identifiers(policy: Policy, input_schema: Schema) -> tuple[str, ...]:
    """The output fields of ``policy`` that are quasi-identifiers (see module docstring)."""
    inputs = fields_by_name(input_schema)
    return tuple(
        rule.name
        for rule in policy.emitted
        if rule.quasi_identifier or any(inputs[s].data_class == "quasi_identifier" for s in rule.sources)
    )


def _iso_week(days: int) -> str:
    year, week, _ = (_EPOCH + dt.timedelta(days=days)).isocalendar()
    return f"{year}-W{week:02d}"


def _wider_band(width: int, top: int) -> Callable[[Any], Any]:
    def wider(label: Any) -> Any:
        match = _BAND.match(str(label))
        if not match:
            return label  # the top class ("90+") stays as it is
        lower = int(match.group(1)) // (2 * width) * (2 * width)
        return f"{lower}-{min(lower + 2 * width, top) - 1}"

    return wider


def one_step(rule: FieldRule, input_schema: Schema, geography: Geography) -> Step | None:
    """The next coarser detail of an output field's values, or None (then only suppression)."""
    kind = fields_by_name(input_schema)[rule.sources[0]].kind
    if rule.op == "keep" and rule.sources[0] == "commune_code":
        return Step("commune → department", department_of)
    if rule.op == "department":
        return Step("department → region", geography.region_of_department)
    if rule.op == "day" or (rule.op == "keep" and kind == "date"):
        return Step("day → ISO week", _iso_week)
    if rule.op == "keep" and kind == "timestamp-millis":
        return Step("timestamp → day", lambda v: v // _MS_PER_DAY)
    if rule.op == "birth_year":
        return Step("year → 5 years", lambda y: f"{y // 5 * 5}-{y // 5 * 5 + 4}")
    if rule.op == "age_band":
        width, top = int(rule.args.get("width", 10)), int(rule.args.get("top", 90))
        return Step(f"{width}-year → {2 * width}-year bands", _wider_band(width, top))
    return None


def equivalence_classes(records: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> Counter[Key]:
    """Number of records per combination of ``fields`` values."""
    return Counter(tuple(record[f] for f in fields) for record in records)


def below_k(classes: Counter[Key], k: int) -> int:
    """Number of records in classes of fewer than ``k`` records."""
    return sum(size for size in classes.values() if size < k)


def _regroup(classes: Counter[Key], index: int, step: Callable[[Any], Any] | None) -> Counter[Key]:
    out: Counter[Key] = Counter()
    for key, size in classes.items():
        if step is None:
            new = key[:index] + key[index + 1 :]
        else:
            value = key[index]
            new = (*key[:index], None if value is None else step(value), *key[index + 1 :])
        out[new] += size
    return out


def assess(
    records: Sequence[Mapping[str, Any]],
    fields: Sequence[str],
    k: int,
    *,
    steps: Mapping[str, Step] | None = None,
    recipient: str = "?",
    scope: str = "",
    events: int | None = None,
) -> RiskReport:
    """Classes, sizes, minimum k, records below k, and per-field drivers (see module docstring)."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if not fields:
        raise ConfigError(f"recipient {recipient!r} receives no quasi-identifier: nothing to assess")
    steps = steps or {}
    classes = equivalence_classes(records, fields)
    total = len(records)
    drivers = []
    for index, name in enumerate(fields):
        step = steps.get(name)
        after = below_k(_regroup(classes, index, step.apply), k) / total if step and total else None
        suppressed = below_k(_regroup(classes, index, None), k) / total if total else 0.0
        drivers.append(Driver(name, step.name if step else None, after, suppressed))
    # The field whose coarsening (one step, or suppression) helps most comes first.
    drivers.sort(key=lambda d: min(d.below_k_suppressed, 2.0 if d.below_k_after_step is None else d.below_k_after_step))
    return RiskReport(
        recipient=recipient,
        scope=scope,
        events=total if events is None else events,
        records=total,
        quasi_identifiers=tuple(fields),
        k=k,
        classes=len(classes),
        min_k=min(classes.values(), default=0),
        below_k_records=below_k(classes, k),
        sizes=dict(sorted(Counter(classes.values()).items())),
        drivers=tuple(drivers),
    )


def size_bins(report: RiskReport) -> list[tuple[str, int, int]]:
    """(label, classes, records) per class-size bin: each size below k, then k-9, 10-19, 20-49, ..."""
    edges = [*range(1, report.k + 1)] + [e for e in (10, 20, 50, 100, 1000) if e > report.k]
    bins = []
    for low, high in zip(edges, [*edges[1:], None], strict=True):
        members = [(s, n) for s, n in report.sizes.items() if s >= low and (high is None or s < high)]
        label = str(low) if high == low + 1 else (f"{low}+" if high is None else f"{low}-{high - 1}")
        bins.append((label, sum(n for _, n in members), sum(s * n for s, n in members)))
    while len(bins) > report.k and bins[-1][1] == 0:
        bins.pop()  # no empty bins past the largest class (the bins up to k always show)
    return bins


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def risk_table(report: RiskReport) -> str:
    """The report for a terminal: summary, class-size distribution, drivers."""
    head = [
        f"recipient {report.recipient}{f' ({report.scope})' if report.scope else ''}: "
        f"{report.records} records from {report.events} events",
        f"quasi-identifiers: {', '.join(report.quasi_identifiers)}",
        f"equivalence classes: {report.classes}; minimum k: {report.min_k}; "
        f"records in classes below k={report.k}: {report.below_k_records} ({_pct(report.below_k_share)})",
        "",
    ]
    rows = [
        [label, str(classes), str(records), _pct(records / report.records if report.records else 0.0)]
        for label, classes, records in size_bins(report)
    ]
    sizes = table(["class size", "classes", "records", "share of records"], rows)
    drivers = table(
        ["field", "one step coarser", f"below k={report.k} after it", "below k if suppressed"],
        [[d.field, d.step or "-", _pct(d.below_k_after_step), _pct(d.below_k_suppressed)] for d in report.drivers],
    )
    why = f"\n\nWhat drives the small classes (baseline {_pct(report.below_k_share)}):\n"
    return "\n".join(head) + sizes + why + drivers


def risk_json(report: RiskReport) -> str:
    """The report as JSON (``sizes`` maps class size to number of classes)."""
    doc = asdict(report)
    doc["sizes"] = {str(size): n for size, n in report.sizes.items()}
    doc["below_k_share"] = report.below_k_share
    doc["bins"] = [{"size": label, "classes": c, "records": r} for label, c, r in size_bins(report)]
    return json.dumps(doc, indent=2, ensure_ascii=False)
