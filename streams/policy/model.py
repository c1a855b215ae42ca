"""Policy files: one YAML document per recipient, validated into typed models when loaded.

Loading fails fast with :class:`ConfigError` naming the file, the recipient and the field when
a policy names a field the input schema lacks, applies an operator to a type it cannot handle,
omits a purpose, filters on nothing, or routes to a topic outside the naming convention, or
when its ``k_anonymity`` option (small-cell protection, :mod:`streams.policy.smallcell`) is
malformed: k below 2, a window that does not tile UTC days, a quasi-identifier of the policy left
out, or a ladder step that is not a generalisation the granularity order proves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from streams.contracts.schemas import FieldInfo, Schema, fields_by_name
from streams.errors import ConfigError
from streams.policy.granularity import Grain, at_least_as_fine
from streams.policy.operators import OPERATORS

#: ``<tracing|surveillance>.<agency>[.<region>].results.v<N>``; ``{region}`` when routed.
TOPIC_PATTERN = re.compile(r"^(tracing|surveillance)\.[a-z][a-z0-9]*(\.(\{region\}))?\.results\.v[1-9][0-9]*$")
ROUTES = frozenset({"region"})
#: Filter keys that are not input fields but derived from them.
DERIVED_FILTERS = {"region": "commune_code"}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
MIN_PURPOSE_WORDS = 3
DAY_MS = 86_400_000
#: ``k_anonymity.window``: a number and a unit, e.g. ``1d``, ``6h``, ``30m``, ``90s``.
WINDOW_PATTERN = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}
#: A ladder step, ``department -> region`` (``→`` also accepted); ``any`` suppresses the value.
STEP_PATTERN = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(?:->|→)\s*([a-z][a-z0-9_]*)\s*$")
ANY = "any"
MIN_WINDOW_MS = 60_000
MAX_WINDOW_MS = 7 * DAY_MS


@dataclass(frozen=True)
class Condition:
    """``field`` must (``negate=False``) or must not (``negate=True``) hold one of ``values``."""

    field: str
    values: frozenset[Any]
    negate: bool

    def holds(self, record: Mapping[str, Any]) -> bool:
        """Evaluate the condition on one record."""
        return (record.get(self.field) in self.values) != self.negate

    def describe(self) -> str:
        """Human-readable form, e.g. ``collective_housing not in {NONE}``."""
        values = ", ".join(sorted(map(str, self.values)))
        return f"{self.field} {'not in' if self.negate else 'in'} {{{values}}}"


@dataclass(frozen=True)
class FieldRule:
    """One output field: where it comes from, how it is transformed, and why it is shared."""

    name: str
    sources: tuple[str, ...]
    op: str
    args: Mapping[str, Any]
    purpose: str
    when: Condition | None = None
    quasi_identifier: bool = False  # marked in the policy (fields from quasi_identifier inputs always are)


@dataclass(frozen=True)
class LadderStep:
    """One rung of the generalisation ladder: ``field`` is withheld, ``to`` (or nothing) shown instead."""

    field: str
    to: str | None  # another output field of the policy, coarser on the same sources; None: ``any``

    def describe(self) -> str:
        """The policy syntax, e.g. ``department -> region``."""
        return f"{self.field} -> {self.to or ANY}"


@dataclass(frozen=True)
class KAnonymity:
    """Small-cell protection: never release a record whose class has fewer than ``k`` members.

    Classes are the combinations of ``quasi_identifiers`` within a processing-time window of
    ``window_ms``; ``ladder`` steps apply cumulatively (step ``j`` withholds the fields of steps
    ``1..j``). See :mod:`streams.policy.smallcell` for the algorithm.
    """

    k: int
    window_ms: int
    quasi_identifiers: tuple[str, ...]
    ladder: tuple[LadderStep, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The fields a class is read from: the quasi-identifiers, then the ladder's coarser fields."""
        targets = [s.to for s in self.ladder if s.to is not None and s.to not in self.quasi_identifiers]
        return self.quasi_identifiers + tuple(dict.fromkeys(targets))

    @property
    def withheld(self) -> tuple[str, ...]:
        """Every field some ladder step withholds (nullable in the recipient's contract)."""
        return tuple(dict.fromkeys(s.field for s in self.ladder))

    def describe_window(self) -> str:
        """The window in the policy syntax (``1d``, ``6h``, ``30m``, ``90s``)."""
        for unit in ("d", "h", "m"):
            if self.window_ms % _UNIT_MS[unit] == 0:
                return f"{self.window_ms // _UNIT_MS[unit]}{unit}"
        return f"{self.window_ms // 1000}s"


@dataclass(frozen=True)
class Policy:
    """Everything one recipient may receive; what is not here is dropped (default deny)."""

    recipient: str
    title: str
    topic: str
    route: str | None
    filters: tuple[Condition, ...]
    fields: tuple[FieldRule, ...]
    path: Path
    version: str  # sha256 of the policy file, first 16 hex chars
    k_anonymity: KAnonymity | None = None  # small-cell protection of what is released

    @property
    def emitted(self) -> tuple[FieldRule, ...]:
        """The rules that produce an output field (all but explicit ``drop``)."""
        return tuple(r for r in self.fields if OPERATORS[r.op].emits)

    def named_sources(self) -> frozenset[str]:
        """Every input field this policy reads, for outputs, conditions or filters."""
        names = {s for r in self.emitted for s in r.sources}
        names |= {r.when.field for r in self.emitted if r.when}
        names |= {DERIVED_FILTERS.get(c.field, c.field) for c in self.filters}
        if self.route:
            names.add("commune_code")
        return frozenset(names)


class Failing(Protocol):
    """Something that builds a :class:`ConfigError` naming where the problem is."""

    def fail(self, message: str, field: str | None = None) -> ConfigError:
        """The error to raise for ``message`` (about ``field``, if given)."""
        ...


class _Context:
    def __init__(self, path: Path, recipient: str = "?") -> None:
        self.path = path
        self.recipient = recipient

    def fail(self, message: str, field: str | None = None) -> ConfigError:
        where = f"{self.path}: recipient {self.recipient!r}"
        if field is not None:
            where += f", field {field!r}"
        return ConfigError(f"{where}: {message}")


def _symbols_check(ctx: _Context, info: FieldInfo, values: Sequence[Any], where: str) -> None:
    allowed: set[Any]
    if info.base == "enum":
        allowed = set(info.symbols)
    elif info.base == "boolean":
        allowed = {True, False}
    else:
        raise ctx.fail(f"{where}: can only test enum or boolean fields, {info.name!r} is {info.kind}", info.name)
    if info.nullable:
        allowed.add(None)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ctx.fail(f"{where}: unknown values {unknown!r} (allowed: {sorted(map(str, allowed))})", info.name)


def _condition(ctx: _Context, raw: Any, inputs: Mapping[str, FieldInfo], where: str) -> Condition:
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ctx.fail(f"{where}: expected one mapping {{field: {{in|not_in: [values]}}}}")
    ((name, test),) = raw.items()
    if not isinstance(test, Mapping) or set(test) - {"in", "not_in"} or len(test) != 1:
        raise ctx.fail(f"{where}: expected {{in: [...]}} or {{not_in: [...]}}", name)
    ((kind, values),) = test.items()
    if name not in inputs:
        raise ctx.fail(f"{where}: the input schema has no field {name!r}", name)
    values = list(values) if isinstance(values, list) else [values]
    _symbols_check(ctx, inputs[name], values, where)
    return Condition(name, frozenset(values), kind == "not_in")


def _filters(
    ctx: _Context, raw: Any, inputs: Mapping[str, FieldInfo], known_regions: frozenset[str]
) -> tuple[Condition, ...]:
    if not raw:
        raise ctx.fail(
            "no `filter`: a recipient without a filter would receive nothing; "
            "name the records it takes (at least processing_mode and result)"
        )
    if not isinstance(raw, Mapping):
        raise ctx.fail("`filter` must map field names to lists of accepted values")
    out = []
    for name, values in raw.items():
        values = list(values) if isinstance(values, list) else [values]
        if not values:
            raise ctx.fail("filter accepts no value: the recipient would receive nothing", name)
        if name in DERIVED_FILTERS:
            unknown = sorted(set(map(str, values)) - known_regions)
            if unknown:
                raise ctx.fail(f"filter on unknown region codes {unknown}", name)
            out.append(Condition(name, frozenset(map(str, values)), False))
            continue
        if name not in inputs:
            raise ctx.fail("filter on a field the input schema lacks", name)
        _symbols_check(ctx, inputs[name], values, "filter")
        out.append(Condition(name, frozenset(values), False))
    mode = next((c for c in out if c.field == "processing_mode"), None)
    if mode is None or mode.values != {"P"}:
        raise ctx.fail(
            "production recipients must filter processing_mode: [P] (test and debug records never reach them)",
            "processing_mode",
        )
    return tuple(out)


def _field_rule(ctx: _Context, raw: Any, inputs: Mapping[str, FieldInfo]) -> FieldRule:
    if not isinstance(raw, Mapping):
        raise ctx.fail("each entry of `fields` must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ctx.fail("output field needs a snake_case `name`", str(name))
    unknown_keys = set(raw) - {"name", "from", "op", "args", "purpose", "when", "quasi_identifier"}
    if unknown_keys:
        raise ctx.fail(f"unknown keys {sorted(unknown_keys)}", name)
    sources_raw = raw.get("from", name)
    sources = tuple(sources_raw if isinstance(sources_raw, list) else [sources_raw])
    for source in sources:
        if source not in inputs:
            raise ctx.fail(f"the input schema has no field {source!r}", name)
    op_name = raw.get("op")
    if op_name not in OPERATORS:
        raise ctx.fail(f"unknown operator {op_name!r} (known: {sorted(OPERATORS)})", name)
    op = OPERATORS[op_name]
    if len(sources) != len(op.input_kinds):
        raise ctx.fail(f"operator {op_name!r} takes {len(op.input_kinds)} source field(s), got {len(sources)}", name)
    for source, kinds in zip(sources, op.input_kinds, strict=True):
        kind = inputs[source].kind
        if kinds is not None and kind not in kinds:
            raise ctx.fail(
                f"operator {op_name!r} cannot handle {source!r} of type {kind} (accepts {sorted(kinds)})", name
            )
    args = raw.get("args") or {}
    if not isinstance(args, Mapping):
        raise ctx.fail("`args` must be a mapping", name)
    for arg, value in args.items():
        expected = op.args.get(arg)
        if expected is None:
            raise ctx.fail(
                f"operator {op_name!r} has no argument {arg!r} "
                f"(arguments: {dict((k, t.__name__) for k, t in op.args.items())})",
                name,
            )
        # YAML `true` is a bool, and bool is an int in Python: never accept one for the other.
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            wrong = f"argument {arg!r} must be {expected.__name__}, not {type(value).__name__}"
            raise ctx.fail(f"operator {op_name!r}: {wrong}", name)
    problem = op.check_args(args)
    if problem is not None:
        raise ctx.fail(f"operator {op_name!r}: {problem}", name)
    purpose = raw.get("purpose")
    if not isinstance(purpose, str) or len(purpose.split()) < MIN_PURPOSE_WORDS:
        raise ctx.fail(
            f"needs a `purpose` sentence (at least {MIN_PURPOSE_WORDS} words) saying why the recipient needs it", name
        )
    when = _condition(ctx, raw["when"], inputs, "when") if raw.get("when") is not None else None
    qi = raw.get("quasi_identifier", False)
    if not isinstance(qi, bool) or (qi and not op.emits):
        raise ctx.fail("`quasi_identifier` must be true or false, and only on a field that is shared", name)
    if not qi and "quasi_identifier" in raw and any(inputs[s].data_class == "quasi_identifier" for s in sources):
        raise ctx.fail("a field derived from a quasi_identifier input is one; it cannot be unmarked", name)
    return FieldRule(name, sources, op_name, dict(args), " ".join(purpose.split()), when, qi)


def is_quasi_identifier(rule: FieldRule, inputs: Mapping[str, FieldInfo]) -> bool:
    """Whether an output field is a quasi-identifier: marked so, or read from a quasi-identifier input."""
    return rule.quasi_identifier or any(inputs[s].data_class == "quasi_identifier" for s in rule.sources)


def window_ms(ctx: Failing, raw: Any) -> int:
    """Parse ``k_anonymity.window``: between a minute and 7 days, tiling UTC days (or whole days)."""
    match = WINDOW_PATTERN.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise ctx.fail(f"k_anonymity.window must be like 1d, 6h, 30m or 90s, not {raw!r}")
    value = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if not MIN_WINDOW_MS <= value <= MAX_WINDOW_MS or (DAY_MS % value and value % DAY_MS):
        raise ctx.fail(
            f"k_anonymity.window {raw!r}: between 1m and 7d, and either a divisor of a day or whole days "
            "(windows are aligned on UTC midnight)"
        )
    return value


def _ladder(ctx: _Context, raw: Any, rules: Mapping[str, FieldRule], qis: tuple[str, ...]) -> tuple[LadderStep, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ctx.fail("k_anonymity.ladder must list steps like 'department -> region'")
    visible = set(qis)
    steps = []
    for item in raw:
        match = STEP_PATTERN.match(item) if isinstance(item, str) else None
        if match is None:
            raise ctx.fail(f"k_anonymity.ladder: step {item!r} is not 'field -> coarser field' (or '-> any')")
        name, to = match.group(1), match.group(2)
        if name not in visible:
            raise ctx.fail(
                "k_anonymity.ladder: a step must withhold a quasi-identifier (or the field an earlier step "
                "put in its place) that is still shown",
                name,
            )
        visible.discard(name)
        if to == ANY:
            steps.append(LadderStep(name, None))
            continue
        target = rules.get(to)
        if target is None:
            raise ctx.fail(f"k_anonymity.ladder: {to!r} is not an output field of this policy", name)
        if to in visible or to in qis:
            raise ctx.fail(f"k_anonymity.ladder: {to!r} is already shown; write '{name} -> any'", name)
        source = rules[name]
        finer, coarser = Grain.of(source.op, source.args), Grain.of(target.op, target.args)
        if target.sources != source.sources or not at_least_as_fine(finer, coarser):
            raise ctx.fail(
                f"k_anonymity.ladder: {to!r} ({coarser.describe()} of {', '.join(target.sources)}) is not "
                f"provably at most as fine as {name!r} ({finer.describe()} of {', '.join(source.sources)}) "
                "in the granularity order",
                name,
            )
        if target.when is not None or target.op == "encrypt":
            raise ctx.fail(f"k_anonymity.ladder: {to!r} must be shown unconditionally and in clear", name)
        visible.add(to)
        steps.append(LadderStep(name, to))
    return tuple(steps)


def _k_anonymity(
    ctx: _Context, raw: Any, rules: tuple[FieldRule, ...], inputs: Mapping[str, FieldInfo]
) -> KAnonymity | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ctx.fail("`k_anonymity` must be a mapping {k, window, quasi_identifiers, ladder}")
    unknown = set(raw) - {"k", "window", "quasi_identifiers", "ladder"}
    if unknown:
        raise ctx.fail(f"k_anonymity: unknown keys {sorted(unknown)}")
    k = raw.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ctx.fail(f"k_anonymity.k must be an integer of at least 2, not {k!r}")
    window = window_ms(ctx, raw.get("window"))
    emitted = {r.name: r for r in rules if OPERATORS[r.op].emits}
    names = raw.get("quasi_identifiers")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ctx.fail("k_anonymity.quasi_identifiers must list output fields")
    if len(set(names)) != len(names):
        raise ctx.fail("k_anonymity.quasi_identifiers names a field twice")
    for name in names:
        rule = emitted.get(name)
        if rule is None:
            raise ctx.fail("k_anonymity.quasi_identifiers: not an output field of this policy", name)
        if rule.op in ("pseudonymise", "encrypt"):
            raise ctx.fail(
                f"k_anonymity.quasi_identifiers: a field released by {rule.op!r} is unique per person or "
                "per record, so every class would have one member",
                name,
            )
    qis = tuple(names)
    ladder = _ladder(ctx, raw.get("ladder"), emitted, qis)
    counted = set(qis) | {s.to for s in ladder if s.to is not None}
    for rule in emitted.values():
        if is_quasi_identifier(rule, inputs) and rule.name not in counted:
            raise ctx.fail(
                "k_anonymity.quasi_identifiers leaves out a quasi-identifier this policy releases", rule.name
            )
    for name in counted - set(qis):
        if not is_quasi_identifier(emitted[name], inputs):
            raise ctx.fail(
                "k_anonymity.ladder: a coarser field stands for a quasi-identifier and is one: "
                "mark it `quasi_identifier: true`",
                name,
            )
    return KAnonymity(k, window, qis, ladder)


def parse_policy(path: Path, text: str, input_schema: Schema, known_regions: frozenset[str]) -> Policy:
    """Validate one policy document against the input schema (see module docstring)."""
    ctx = _Context(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ctx.fail(f"not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ctx.fail("a policy is a YAML mapping")
    recipient = raw.get("recipient")
    if not isinstance(recipient, str) or not NAME_PATTERN.match(recipient):
        raise ctx.fail("needs a snake_case `recipient` name")
    ctx.recipient = recipient
    unknown_keys = set(raw) - {"recipient", "title", "topic", "route", "filter", "fields", "k_anonymity"}
    if unknown_keys:
        raise ctx.fail(f"unknown keys {sorted(unknown_keys)}")
    topic = raw.get("topic")
    route = raw.get("route")
    if route is not None and route not in ROUTES:
        raise ctx.fail(f"unknown route {route!r} (known: {sorted(ROUTES)})")
    if not isinstance(topic, str) or not TOPIC_PATTERN.match(topic):
        raise ctx.fail(
            f"topic {topic!r} is outside the naming convention "
            "<tracing|surveillance>.<agency>[.{region}].results.v<N>"
        )
    if ("{region}" in topic) != (route == "region"):
        raise ctx.fail("a topic with {region} needs `route: region`, and `route: region` needs {region}")
    inputs = fields_by_name(input_schema)
    filters = _filters(ctx, raw.get("filter"), inputs, known_regions)
    fields_raw = raw.get("fields")
    if not isinstance(fields_raw, list) or not fields_raw:
        raise ctx.fail("`fields` must list at least one output field")
    rules = tuple(_field_rule(ctx, item, inputs) for item in fields_raw)
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ctx.fail("output field named twice", rule.name)
        seen.add(rule.name)
    k_anonymity = _k_anonymity(ctx, raw.get("k_anonymity"), rules, inputs)
    if k_anonymity is not None and route is not None:
        raise ctx.fail("k_anonymity on a routed recipient is not supported (counts are per ingress partition)")
    return Policy(
        recipient=recipient,
        title=str(raw.get("title") or recipient),
        topic=topic,
        route=route,
        filters=filters,
        fields=rules,
        path=path,
        version=hashlib.sha256(text.encode()).hexdigest()[:16],
        k_anonymity=k_anonymity,
    )


def default_policy_dir() -> Path:
    """The policies shipped with the project (``policies/`` at the repository root)."""
    return Path(__file__).resolve().parents[2] / "policies"


def load_policies(directory: Path, input_schema: Schema, known_regions: frozenset[str]) -> tuple[Policy, ...]:
    """Load and validate every ``*.yaml`` policy in ``directory`` (sorted by file name)."""
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise ConfigError(f"{directory}: no policy files (*.yaml)")
    policies = tuple(parse_policy(p, p.read_text(encoding="utf-8"), input_schema, known_regions) for p in paths)
    recipients = [p.recipient for p in policies]
    topics = [p.topic for p in policies]
    for name in set(recipients):
        if recipients.count(name) > 1:
            raise ConfigError(f"{directory}: recipient {name!r} is defined by more than one file")
    for topic in set(topics):
        if topics.count(topic) > 1:
            raise ConfigError(f"{directory}: topic {topic!r} is used by more than one recipient")
    return policies
