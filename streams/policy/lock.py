"""The access lock: a checked-in statement of everything each recipient may receive.

``policies/access.lock`` (YAML, recipients, filters, fields and values sorted) lists per recipient its
topic, route, filter and every output field with its sources, operator and canonical
arguments, ``when`` condition (as an ``in`` set) and purpose, and its small-cell protection
(``k_anonymity``: k, window, quasi-identifiers sorted, ladder in order) when it has one. ``policy check`` compares the
policies with it (:func:`streams.policy.diff.compare`): access the lock does not list fails;
less access than locked, or a changed purpose, only makes the lock stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from streams.errors import ConfigError
from streams.policy.access import AccessMap, Cond, FieldAccess, RecipientAccess, SmallCells, sort_values
from streams.policy.granularity import Grain
from streams.policy.model import ANY, STEP_PATTERN, LadderStep, window_ms

LOCK_NAME = "access.lock"
LOCK_VERSION = 1
HEADER = (
    "# Access lock: everything each recipient may receive (fields, operator granularity, conditions,\n"
    "# filter, topic). `screening-streams policy check` fails when the policies grant more than this;\n"
    "# rewrite it with `screening-streams policy lock --write` and have the diff reviewed.\n"
)


def lock_path(policy_dir: Path) -> Path:
    """Where the lock of a policy directory lives (``<policy dir>/access.lock``)."""
    return policy_dir / LOCK_NAME


def _field_doc(field: FieldAccess) -> dict[str, Any]:
    doc: dict[str, Any] = {"from": list(field.sources), "op": field.grain.op}
    if field.grain.args:
        doc["args"] = field.grain.arguments
    if field.when is not None:
        doc["when"] = {field.when.field: sort_values(field.when.values)}
    doc["purpose"] = field.purpose
    return doc


def lock_document(access: AccessMap) -> dict[str, Any]:
    """The lock as plain data (what :func:`render_lock` writes)."""
    recipients: dict[str, Any] = {}
    for name, rec in sorted(access.items()):
        doc: dict[str, Any] = {"topic": rec.topic}
        if rec.route is not None:
            doc["route"] = rec.route
        doc["filter"] = {k: sort_values(v) for k, v in sorted(rec.filters.items())}
        doc["fields"] = {f: _field_doc(rec.fields[f]) for f in sorted(rec.fields)}
        if rec.small_cells is not None:
            cells = rec.small_cells
            doc["k_anonymity"] = {
                "k": cells.k,
                "window": cells.describe_window(),
                "quasi_identifiers": sorted(cells.quasi_identifiers),
                "ladder": [step.describe() for step in cells.ladder],
            }
        recipients[name] = doc
    return {"lock_version": LOCK_VERSION, "recipients": recipients}


def render_lock(access: AccessMap) -> str:
    """The checked-in text of the lock (stable: sorted names and values, no line wrapping)."""
    body = yaml.safe_dump(
        lock_document(access), sort_keys=False, default_flow_style=None, allow_unicode=True, width=10_000
    )
    return HEADER + body


class _Where:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, message: str, recipient: str | None = None, field: str | None = None) -> ConfigError:
        where = self.origin
        if recipient is not None:
            where += f": recipient {recipient!r}"
        if field is not None:
            where += f", field {field!r}"
        return ConfigError(f"{where}: {message} (rewrite it with `screening-streams policy lock --write`)")


def _mapping(
    where: _Where, value: Any, what: str, recipient: str | None = None, field: str | None = None
) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise where.fail(f"{what} must be a mapping", recipient, field)
    return value


def _values(where: _Where, value: Any, what: str, recipient: str, field: str | None = None) -> frozenset[Any]:
    if not isinstance(value, list) or not value:
        raise where.fail(f"{what} must be a non-empty list of values", recipient, field)
    return frozenset(value)


def _parse_field(where: _Where, recipient: str, name: str, raw: Any) -> FieldAccess:
    doc = _mapping(where, raw, "a field", recipient, name)
    unknown = set(doc) - {"from", "op", "args", "when", "purpose"}
    if unknown:
        raise where.fail(f"unknown keys {sorted(unknown)}", recipient, name)
    sources = doc.get("from")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise where.fail("`from` must list the source fields", recipient, name)
    op = doc.get("op")
    if not isinstance(op, str):
        raise where.fail("`op` must name an operator", recipient, name)
    args = _mapping(where, doc.get("args") or {}, "`args`", recipient, name)
    when: Cond | None = None
    if doc.get("when") is not None:
        test = _mapping(where, doc["when"], "`when`", recipient, name)
        if len(test) != 1:
            raise where.fail("`when` must map one field to its accepted values", recipient, name)
        ((cond_field, cond_values),) = test.items()
        when = Cond(cond_field, _values(where, cond_values, "`when`", recipient, name))
    purpose = doc.get("purpose")
    if not isinstance(purpose, str):
        raise where.fail("`purpose` must be a sentence", recipient, name)
    return FieldAccess(name, tuple(sources), Grain.of(op, args), when, purpose)


class _LockContext:
    """Adapter so :func:`streams.policy.model.window_ms` fails with the lock's wording."""

    def __init__(self, where: _Where, recipient: str) -> None:
        self.where, self.recipient = where, recipient

    def fail(self, message: str, field: str | None = None) -> ConfigError:
        """The lock's error naming the recipient (and field)."""
        return self.where.fail(message, self.recipient, field)


def _parse_small_cells(where: _Where, recipient: str, raw: Any) -> SmallCells:
    doc = _mapping(where, raw, "`k_anonymity`", recipient)
    if set(doc) != {"k", "window", "quasi_identifiers", "ladder"}:
        raise where.fail("`k_anonymity` must give k, window, quasi_identifiers and ladder", recipient)
    k, names, steps = doc["k"], doc["quasi_identifiers"], doc["ladder"]
    if not isinstance(k, int) or isinstance(k, bool):
        raise where.fail("`k_anonymity.k` must be an integer", recipient)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise where.fail("`k_anonymity.quasi_identifiers` must list field names", recipient)
    if not isinstance(steps, list):
        raise where.fail("`k_anonymity.ladder` must list steps", recipient)
    ladder = []
    for step in steps:
        match = STEP_PATTERN.match(step) if isinstance(step, str) else None
        if match is None:
            raise where.fail(f"`k_anonymity.ladder`: bad step {step!r}", recipient)
        ladder.append(LadderStep(match.group(1), None if match.group(2) == ANY else match.group(2)))
    window = window_ms(_LockContext(where, recipient), doc["window"])
    return SmallCells(k, window, frozenset(names), tuple(ladder))


def parse_lock(text: str, origin: str) -> dict[str, RecipientAccess]:
    """Read a lock written by :func:`render_lock`, failing with ``origin`` and the recipient named."""
    where = _Where(origin)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise where.fail(f"not valid YAML: {exc}") from exc
    doc = _mapping(where, raw, "the lock")
    if doc.get("lock_version") != LOCK_VERSION:
        raise where.fail(f"unsupported lock_version {doc.get('lock_version')!r} (expected {LOCK_VERSION})")
    out: dict[str, RecipientAccess] = {}
    for recipient, body in _mapping(where, doc.get("recipients"), "`recipients`").items():
        rec = _mapping(where, body, "a recipient", recipient)
        unknown = set(rec) - {"topic", "route", "filter", "fields", "k_anonymity"}
        if unknown:
            raise where.fail(f"unknown keys {sorted(unknown)}", recipient)
        topic, route = rec.get("topic"), rec.get("route")
        if not isinstance(topic, str) or (route is not None and not isinstance(route, str)):
            raise where.fail("`topic` (and `route`, if any) must be strings", recipient)
        filters = {
            key: _values(where, values, f"filter {key!r}", recipient)
            for key, values in _mapping(where, rec.get("filter"), "`filter`", recipient).items()
        }
        fields = {
            name: _parse_field(where, recipient, name, raw_field)
            for name, raw_field in _mapping(where, rec.get("fields") or {}, "`fields`", recipient).items()
        }
        cells = _parse_small_cells(where, recipient, rec["k_anonymity"]) if "k_anonymity" in rec else None
        out[recipient] = RecipientAccess(recipient, topic, route, filters, fields, cells)
    return out
