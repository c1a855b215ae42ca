"""Compile policies into per-agency view builders and apply them to records.

The hot path (:meth:`Minimiser.apply`) evaluates each recipient's filters, picks the agency
(one per region for routed recipients) and builds the view from precompiled closures. The slow
path (:meth:`Minimiser.explain`) says, for one record, who receives what and why the others
do not; ``policy dry-run`` prints it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.contracts.schemas import Schema, fields_by_name
from streams.domain.geography import Geography
from streams.domain.nir import normalise_nir
from streams.errors import RecordRejected
from streams.policy.model import DERIVED_FILTERS, Condition, FieldRule, Policy
from streams.policy.operators import OPERATORS, BuildContext
from streams.policy.pseudonyms import KeyRing, make_partition_hasher

Record = dict[str, Any]
Getter = Callable[[Mapping[str, Any]], Any]
#: ``route(input record, view) -> bytes``: the key that chooses an output record's partition.
Router = Callable[[Mapping[str, Any], Record], bytes]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
_FIRST_MONDAY_MS = 4 * DAY_MS  # 1970-01-05: ISO weeks start on Mondays
#: How finely each (operator, source kind) releases a point in time, in ms.
_TIME_RELEASE = {
    ("keep", "timestamp-millis"): 1,
    ("day", "timestamp-millis"): DAY_MS,
    ("iso_week", "timestamp-millis"): WEEK_MS,
    ("keep", "date"): DAY_MS,
    ("iso_week", "date"): WEEK_MS,
}


def _no_route(record: Mapping[str, Any], view: Record) -> bytes:
    return b""


def clock_grain_ms(rules: Iterable[FieldRule], kinds: Mapping[str, str]) -> int:
    """The unit an agency's Kafka record timestamps are truncated to: never finer than its policy.

    A UTC day when the policy's emitted ``rules`` release some point in time at a day or finer
    (``kinds`` maps input fields to their kind), an ISO week (Monday 00:00 UTC) when they
    release time only by week, or nothing at all. Never finer than a day, even for a policy that keeps
    millisecond timestamps: the record's time would otherwise tell when it was processed to the
    millisecond, a join key with another agency's records.
    """
    finest = min(
        (_TIME_RELEASE.get((rule.op, kinds.get(source, "")), WEEK_MS) for rule in rules for source in rule.sources),
        default=WEEK_MS,
    )
    return DAY_MS if finest <= DAY_MS else WEEK_MS


def truncate_ms(timestamp_ms: int, grain_ms: int) -> int:
    """``timestamp_ms`` rounded down to a UTC day, or to a Monday for weeks."""
    if grain_ms == WEEK_MS:
        return (timestamp_ms - _FIRST_MONDAY_MS) // WEEK_MS * WEEK_MS + _FIRST_MONDAY_MS
    return timestamp_ms // grain_ms * grain_ms


def _router(policy: Policy, key: bytes) -> Router:
    """Per-agency keyed partition key: of the person when the policy names the NIR, else of the view.

    Keyed with the agency's own key (a derivation distinct from its pseudonyms), so one
    person's records share a partition at this agency (and stay in order there), while two
    agencies' partitions of one person are unrelated. A policy that does not name the NIR
    gets a hash of its own view instead, so the partition depends on nothing it may not see.
    """
    if "nir" in policy.named_sources():
        person = make_partition_hasher(key)

        def by_person(record: Mapping[str, Any], view: Record) -> bytes:
            return person(normalise_nir(record["nir"]))

        return by_person
    base = hmac.new(key, b"partition|view|", hashlib.sha256)

    def by_view(record: Mapping[str, Any], view: Record) -> bytes:
        mac = base.copy()
        mac.update(repr(sorted(view.items())).encode())
        return mac.digest()[:16]

    return by_view


@dataclass(frozen=True)
class Agency:
    """One receiving organisation: a recipient, or one region of a routed recipient."""

    agency: str  # key id and audit name: ``cnam``, ``ars.11``, ``spf``
    recipient: str
    topic: str
    region: str | None
    policy: Policy
    project: Callable[[Mapping[str, Any]], Record]
    route: Router = _no_route  # the output partition key (see :func:`_router`)
    clock_grain_ms: int = DAY_MS  # output record timestamps are truncated to this (see :func:`clock_grain_ms`)


@dataclass(frozen=True)
class View:
    """What one agency receives for one record, and the key choosing its output partition."""

    agency: Agency
    record: Record
    route_key: bytes = b""


@dataclass(frozen=True)
class Decision:
    """Why one recipient does or does not receive one record (for dry runs and audits)."""

    recipient: str
    agency: str | None
    topic: str | None
    delivered: bool
    reason: str
    view: Record | None


def _getter(rule: FieldRule, fn: Callable[..., Any]) -> Getter:
    sources = rule.sources
    if len(sources) == 1:
        (source,) = sources

        def one(record: Mapping[str, Any]) -> Any:
            value = record[source]
            return None if value is None else fn(value)

        base: Getter = one
    else:

        def many(record: Mapping[str, Any]) -> Any:
            values = [record[s] for s in sources]
            return None if any(v is None for v in values) else fn(*values)

        base = many
    when = rule.when
    if when is None:
        return base
    return lambda record: base(record) if when.holds(record) else None


def _regions_of(policy: Policy, geography: Geography) -> list[str | None]:
    """The regions a policy is compiled for: every region when routed, else one unrouted agency."""
    if policy.route == "region":
        return [region for region in sorted(geography.region_names)]
    return [None]


def _projector(getters: tuple[tuple[str, Getter], ...]) -> Callable[[Mapping[str, Any]], Record]:
    def project(record: Mapping[str, Any]) -> Record:
        return {name: get(record) for name, get in getters}

    return project


class Minimiser:
    """Applies every policy to every record: default deny, per-agency views, routing."""

    def __init__(
        self,
        policies: tuple[Policy, ...],
        input_schema: Schema,
        keys: KeyRing,
        geography: Geography,
    ) -> None:
        """Compile ``policies`` for ``input_schema`` with agency keys from ``keys``."""
        self.policies = policies
        self.geography = geography
        inputs = fields_by_name(input_schema)
        kinds_of = {name: info.kind for name, info in inputs.items()}
        self._routes: list[
            tuple[Policy, tuple[tuple[str, frozenset[Any], bool], ...], str | None, dict[str | None, Agency]]
        ] = []
        agencies: list[Agency] = []
        for policy in policies:
            # (field, accepted values, is derived from the commune's region)
            filters = tuple((c.field, c.values, c.field in DERIVED_FILTERS) for c in policy.filters)
            by_region: dict[str | None, Agency] = {}
            regions = _regions_of(policy, geography)
            for region in regions:
                name = policy.recipient if region is None else f"{policy.recipient}.{region}"
                getters = []
                for rule in policy.emitted:
                    op = OPERATORS[rule.op]
                    kinds = tuple(inputs[s].kind for s in rule.sources)
                    ctx = BuildContext(name, keys, geography, rule.sources, kinds)
                    getters.append((rule.name, _getter(rule, op.build(ctx, rule.args))))
                topic = policy.topic.replace("{region}", region or "")
                agency = Agency(
                    name,
                    policy.recipient,
                    topic,
                    region,
                    policy,
                    _projector(tuple(getters)),
                    _router(policy, keys.key_for(name)),
                    clock_grain_ms(policy.emitted, kinds_of),
                )
                by_region[region] = agency
                agencies.append(agency)
            self._routes.append((policy, filters, policy.route, by_region))
        self.agencies: tuple[Agency, ...] = tuple(agencies)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every output topic the policies can write to."""
        return tuple(a.topic for a in self.agencies)

    def _region(self, record: Mapping[str, Any]) -> str | None:
        return self.geography.region_of(record["commune_code"])

    def apply(self, record: Mapping[str, Any]) -> list[View]:
        """Return the views of ``record`` for every agency whose filters it passes."""
        region = self._region(record)
        views = []
        for policy, filters, route, by_region in self._routes:
            for name, values, derived in filters:
                if (region if derived else record.get(name)) not in values:
                    break
            else:
                agency = by_region.get(region) if route else by_region[None]
                if agency is None:
                    raise RecordRejected(
                        "unknown_commune",
                        f"commune code maps to no region; recipient {policy.recipient!r} "
                        "is routed by region and no region is guessed",
                        stage="route",
                    )
                view = agency.project(record)
                views.append(View(agency, view, agency.route(record, view)))
        return views

    def explain(self, record: Mapping[str, Any]) -> list[Decision]:
        """Say for each recipient whether ``record`` reaches it, where, and why (slow path)."""
        region = self._region(record)
        decisions = []
        for policy, _filters, route, by_region in self._routes:
            failed = failed_filter(policy.filters, record, region)
            if failed is not None:
                decisions.append(
                    Decision(policy.recipient, None, None, False, f"filtered out: requires {failed.describe()}", None)
                )
                continue
            agency = by_region.get(region if route else None)
            if agency is None:
                decisions.append(
                    Decision(
                        policy.recipient,
                        None,
                        None,
                        False,
                        "commune maps to no region: record goes to the dead-letter topic",
                        None,
                    )
                )
                continue
            withheld = [r.name for r in policy.emitted if r.when is not None and not r.when.holds(record)]
            reason = "passes " + ", ".join(c.describe() for c in policy.filters)
            if withheld:
                reason += f"; withheld by condition: {', '.join(withheld)}"
            decisions.append(
                Decision(policy.recipient, agency.agency, agency.topic, True, reason, agency.project(record))
            )
        return decisions

    def excluded_by(self, policy: Policy, record: Mapping[str, Any]) -> Condition | None:
        """The first filter of ``policy`` that ``record`` fails (None if it passes them all)."""
        return failed_filter(policy.filters, record, self._region(record))


def failed_filter(filters: tuple[Condition, ...], record: Mapping[str, Any], region: str | None) -> Condition | None:
    """The first of ``filters`` that ``record`` (whose commune lies in ``region``) fails, or None."""
    for condition in filters:
        value = region if condition.field in DERIVED_FILTERS else record.get(condition.field)
        if value not in condition.values:
            return condition
    return None
