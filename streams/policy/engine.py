"""Compile policies into per-agency view builders and apply them to records.

The hot path (:meth:`Minimiser.apply`) evaluates each recipient's filters, picks the agency
(one per region for routed recipients) and builds the view from precompiled closures. The slow
path (:meth:`Minimiser.explain`) says, for one record, who receives what and why the others
do not; ``policy dry-run`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.contracts.schemas import Schema, fields_by_name
from streams.domain.geography import Geography
from streams.errors import RecordRejected
from streams.policy.model import DERIVED_FILTERS, Condition, FieldRule, Policy
from streams.policy.operators import OPERATORS, BuildContext
from streams.policy.pseudonyms import KeyRing

Record = dict[str, Any]
Getter = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Agency:
    """One receiving organisation: a recipient, or one region of a routed recipient."""

    agency: str  # key id and audit name: ``cnam``, ``ars.11``, ``spf``
    recipient: str
    topic: str
    region: str | None
    policy: Policy
    project: Callable[[Mapping[str, Any]], Record]


@dataclass(frozen=True)
class View:
    """What one agency receives for one record."""

    agency: Agency
    record: Record


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
                agency = Agency(name, policy.recipient, topic, region, policy, _projector(tuple(getters)))
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
                views.append(View(agency, agency.project(record)))
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
