"""Policy files: one YAML document per recipient, validated into typed models when loaded.

Loading fails fast with :class:`ConfigError` naming the file, the recipient and the field when
a policy names a field the input schema lacks, applies an operator to a type it cannot handle,
omits a purpose, filters on nothing, or routes to a topic outside the naming convention.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streams.contracts.schemas import FieldInfo, Schema, fields_by_name
from streams.errors import ConfigError
from streams.policy.operators import OPERATORS

#: ``<tracing|surveillance>.<agency>[.<region>].results.v<N>``; ``{region}`` when routed.
TOPIC_PATTERN = re.compile(r"^(tracing|surveillance)\.[a-z][a-z0-9]*(\.(\{region\}))?\.results\.v[1-9][0-9]*$")
ROUTES = frozenset({"region"})
#: Filter keys that are not input fields but derived from them.
DERIVED_FILTERS = {"region": "commune_code"}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
MIN_PURPOSE_WORDS = 3


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
    unknown_keys = set(raw) - {"recipient", "title", "topic", "route", "filter", "fields"}
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
    return Policy(
        recipient=recipient,
        title=str(raw.get("title") or recipient),
        topic=topic,
        route=route,
        filters=filters,
        fields=rules,
        path=path,
        version=hashlib.sha256(text.encode()).hexdigest()[:16],
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
