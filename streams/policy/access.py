"""What each recipient can learn, in a normal form that two revisions (or a lock) can compare.

A :class:`RecipientAccess` holds a recipient's topic and route, its filter (field → accepted
values), and every field it receives: the source fields, the canonical :class:`Grain` of the
operator, and the ``when`` condition normalised to an ``in`` set over the field's domain
(``not_in: [NONE]`` becomes the set of the other symbols, so a symbol added to the input
schema later widens the condition visibly). ``drop`` rules are absent: the bottom of the order.
A recipient under small-cell protection also has its :class:`SmallCells` (k, window,
quasi-identifiers, ladder): turning it off, lowering k, lengthening the window, counting fewer
quasi-identifiers or changing the ladder (other than dropping its last steps) are gains.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.contracts.schemas import FieldInfo, Schema, fields_by_name
from streams.errors import ConfigError
from streams.policy.granularity import Grain, at_least_as_fine
from streams.policy.model import DERIVED_FILTERS, Condition, KAnonymity, LadderStep, Policy

#: Pseudo-grain by which a derived filter field is read from its source (``region`` of a commune).
DERIVED_GRAINS = {"region": Grain.of("region")}


@dataclass(frozen=True)
class Cond:
    """The field's value is one of ``values`` (the normal form of a ``when`` condition)."""

    field: str
    values: frozenset[Any]

    def describe(self) -> str:
        """Readable form, e.g. ``collective_housing in {NURSING_HOME, PRISON}``."""
        return f"{self.field} in {{{', '.join(map(str, sort_values(self.values)))}}}"


@dataclass(frozen=True)
class FieldAccess:
    """One output field: from which sources, at which grain, under which condition, why."""

    name: str
    sources: tuple[str, ...]
    grain: Grain
    when: Cond | None
    purpose: str

    def describe(self) -> str:
        """Readable form, e.g. ``age_band(top=90, width=10) of birth_date, sampled_at``."""
        text = f"{self.grain.describe()} of {', '.join(self.sources)}"
        return text + (f" if {self.when.describe()}" if self.when else "")


@dataclass(frozen=True)
class SmallCells:
    """The small-cell protection a recipient is under (the normal form of ``k_anonymity``)."""

    k: int
    window_ms: int
    quasi_identifiers: frozenset[str]
    ladder: tuple[LadderStep, ...]

    @classmethod
    def of(cls, option: KAnonymity) -> SmallCells:
        """The normal form of a validated policy option (the order of the quasi-identifiers is immaterial)."""
        return cls(option.k, option.window_ms, frozenset(option.quasi_identifiers), option.ladder)

    def describe_window(self) -> str:
        """The window in the policy syntax, e.g. ``1d``."""
        return KAnonymity(self.k, self.window_ms, (), ()).describe_window()


@dataclass(frozen=True)
class RecipientAccess:
    """Everything one recipient receives (see module docstring)."""

    recipient: str
    topic: str
    route: str | None
    filters: Mapping[str, frozenset[Any]]
    fields: Mapping[str, FieldAccess]
    small_cells: SmallCells | None = None

    def reveals(self, field: str) -> bool:
        """Whether every delivered record tells this recipient the exact value of input ``field``.

        ``region`` (a derived filter) is revealed by routing by region, or by receiving the
        commune code unconditionally at region detail or finer.
        """
        if field in DERIVED_FILTERS:
            if self.route == field:
                return True
            source, need = DERIVED_FILTERS[field], DERIVED_GRAINS[field]
        else:
            source, need = field, Grain.of("keep")
        return any(
            f.sources == (source,) and f.when is None and at_least_as_fine(f.grain, need) for f in self.fields.values()
        )


AccessMap = Mapping[str, RecipientAccess]


def sort_values(values: Iterable[Any]) -> list[Any]:
    """Values in a stable order (None, booleans and strings may mix)."""
    return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _domain(info: FieldInfo) -> frozenset[Any]:
    values: set[Any] = set(info.symbols) if info.base == "enum" else {True, False} if info.base == "boolean" else set()
    if info.nullable:
        values.add(None)
    return frozenset(values)


def _normal_when(
    condition: Condition, inputs: Mapping[str, FieldInfo], filters: Mapping[str, frozenset[Any]]
) -> Cond | None:
    domain = _domain(inputs[condition.field])
    allowed = domain - condition.values if condition.negate else frozenset(condition.values)
    population = filters.get(condition.field)
    if population is not None:
        if allowed >= population:
            return None  # true for every record the recipient takes
        allowed &= population
    elif allowed >= domain:
        return None
    return Cond(condition.field, allowed)


def recipient_access(policy: Policy, input_schema: Schema) -> RecipientAccess:
    """The normal form of one validated policy."""
    inputs = fields_by_name(input_schema)
    filters = {c.field: frozenset(c.values) for c in policy.filters}
    fields = {
        rule.name: FieldAccess(
            rule.name,
            rule.sources,
            Grain.of(rule.op, rule.args),
            _normal_when(rule.when, inputs, filters) if rule.when is not None else None,
            rule.purpose,
        )
        for rule in policy.emitted
    }
    small_cells = SmallCells.of(policy.k_anonymity) if policy.k_anonymity is not None else None
    return RecipientAccess(policy.recipient, policy.topic, policy.route, filters, fields, small_cells)


def access_of(policies: Iterable[Policy], input_schema: Schema) -> dict[str, RecipientAccess]:
    """Every recipient's access, by recipient name (a recipient defined twice is an error)."""
    out: dict[str, RecipientAccess] = {}
    for policy in policies:
        if policy.recipient in out:
            raise ConfigError(f"{policy.path}: recipient {policy.recipient!r} is defined by more than one file")
        out[policy.recipient] = recipient_access(policy, input_schema)
    return dict(sorted(out.items()))
