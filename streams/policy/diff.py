"""Compare the access of two policy revisions (or a revision and the lock): who gains what.

:func:`compare` is a pure function over two :data:`AccessMap` values. A change is a **gain**
when the new side lets a recipient learn something the old side did not:

* a new recipient; a changed topic or route (records go somewhere the old side did not send them);
* a filter widened, removed or changed (more records);
* an output field that no old field *covers*. An old field covers a new one when it reads the
  same sources at a grain at least as fine (:mod:`streams.policy.granularity`) under a condition
  at least as wide, or when every source of the new field is received unconditionally at the
  grain the new operator needs (``age_band`` from a kept birth date and the sampling day). So a
  finer or incomparable operator, or a removed or widened ``when``, is a gain unless another
  field already gave the same;
* a narrower filter or ``when`` on a field the recipient does not itself receive: whether a
  record arrives (or a field is filled) then tells the recipient that field's value.

Small-cell protection (``k_anonymity``): turning it off, lowering k, lengthening the window,
counting fewer quasi-identifiers, or a ladder that is not the old one with steps dropped from its
end (it releases records at a detail the old one did not) are gains; turning it on, raising k,
shortening the window, counting more quasi-identifiers or dropping final ladder steps are not.

Narrower filters, coarser operators, lost fields, removed recipients and changed purposes are
reported, not gains. Retention is not part of a policy (agency topics share one retention,
``streams.kafka.topics``), so it cannot change per recipient here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from streams.policy.access import AccessMap, Cond, FieldAccess, RecipientAccess, SmallCells, sort_values
from streams.policy.explain import table
from streams.policy.granularity import at_least_as_fine, needs, relation


@dataclass(frozen=True)
class Change:
    """One difference for one recipient (``field`` None for recipient-level changes)."""

    recipient: str
    field: str | None
    kind: str
    old: str | None
    new: str | None
    gain: bool
    note: str = ""

    def describe(self) -> str:
        """One line naming the recipient and the field, e.g. for ``policy check``."""
        where = f"recipient {self.recipient!r}" + (f", field {self.field!r}" if self.field else "")
        what = self.kind.replace("_", " ")
        values = f": {self.old or '-'} → {self.new or '-'}"
        return f"{where}: {what}{values}" + (f" ({self.note})" if self.note else "")


def _values(values: frozenset[Any] | None) -> str:
    return "any" if values is None else "[" + ", ".join(map(str, sort_values(values))) + "]"


def _when(cond: Cond | None) -> str:
    return "always" if cond is None else cond.describe()


def _condition_covers(old: Cond | None, new: Cond | None, old_rec: RecipientAccess) -> bool:
    """Whether a field sent under ``old`` already tells everything one sent under ``new`` does."""
    if old == new:
        return True
    if new is None:
        return False  # old is narrower: the new field is filled for more records
    wider = old is None or (old.field == new.field and new.values <= old.values)
    return wider and old_rec.reveals(new.field)  # the narrower condition itself must be known


def covering(new: FieldAccess, old_rec: RecipientAccess) -> str | None:
    """Name of the old field(s) from which ``new`` can be computed, or None (a gain)."""
    for old in old_rec.fields.values():
        if (
            old.sources == new.sources
            and at_least_as_fine(old.grain, new.grain)
            and _condition_covers(old.when, new.when, old_rec)
        ):
            return old.name
    names = []
    for source, need in zip(new.sources, needs(new.grain, len(new.sources)), strict=True):
        found = next(
            (
                old.name
                for old in old_rec.fields.values()
                if old.sources == (source,)
                and at_least_as_fine(old.grain, need)
                and _condition_covers(old.when, new.when, old_rec)
            ),
            None,
        )
        if found is None:
            return None
        names.append(found)
    return " + ".join(names)


def _filter_changes(old: RecipientAccess, new: RecipientAccess) -> list[Change]:
    changes = []
    for key in sorted(set(old.filters) | set(new.filters)):
        before, after = old.filters.get(key), new.filters.get(key)
        if before == after:
            continue
        args = (old.recipient, key)
        if after is None:
            changes.append(Change(*args, "filter_removed", _values(before), "any", True))
        elif before is not None and after > before:
            changes.append(Change(*args, "filter_widened", _values(before), _values(after), True))
        elif before is None or after < before:
            kind = "filter_added" if before is None else "filter_narrowed"
            leak = not old.reveals(key)
            note = f"arriving at all now tells the recipient {key}, which it does not receive" if leak else ""
            changes.append(Change(*args, kind, _values(before), _values(after), leak, note))
        else:
            changes.append(Change(*args, "filter_changed", _values(before), _values(after), True))
    return changes


_NARROWING = frozenset({"operator_coarser", "condition_added", "condition_narrowed"})
_LEAK = "the field's presence now tells the recipient the condition's field, which it does not receive"


def _condition_kind(old: Cond | None, new: Cond | None) -> str:
    if new is None:
        return "condition_removed"
    if old is None:
        return "condition_added"
    if old.field == new.field and new.values < old.values:
        return "condition_narrowed"
    if old.field == new.field and new.values > old.values:
        return "condition_widened"
    return "condition_changed"


def _field_changes(
    name: str, old: FieldAccess | None, new: FieldAccess | None, old_rec: RecipientAccess
) -> list[Change]:
    recipient = old_rec.recipient
    if new is None:
        assert old is not None
        return [Change(recipient, name, "field_lost", old.describe(), None, False)]
    cover = covering(new, old_rec)
    gain = cover is None
    covered = "" if gain else f"already given by {cover}"
    if old is None:
        return [Change(recipient, name, "field_gained", None, new.describe(), gain, covered)]
    aspects: list[tuple[str, str, str]] = []
    if old.sources != new.sources:
        aspects.append(("sources_changed", old.describe(), new.describe()))
    elif old.grain != new.grain:
        aspects.append((f"operator_{relation(old.grain, new.grain)}", old.grain.describe(), new.grain.describe()))
    if old.when != new.when:
        aspects.append((_condition_kind(old.when, new.when), _when(old.when), _when(new.when)))
    # Which aspects carry a gain: the widening ones, or, when only narrowing ones are left,
    # the narrower condition (its field is then learnt from the field's presence).
    blamed = {kind for kind, _, _ in aspects if kind not in _NARROWING}
    if gain and not blamed:
        blamed = {kind for kind, _, _ in aspects if kind.startswith("condition")}
    changes = []
    for kind, before, after in aspects:
        blame = gain and kind in blamed
        note = _LEAK if blame and kind in _NARROWING else covered if kind not in _NARROWING else ""
        changes.append(Change(recipient, name, kind, before, after, blame, note))
    if old.purpose != new.purpose:
        changes.append(Change(recipient, name, "purpose_changed", old.purpose, new.purpose, False))
    return changes


def _ladder(cells: SmallCells) -> str:
    return ", ".join(step.describe() for step in cells.ladder) or "suppress at once"


def _small_cell_changes(name: str, old: SmallCells | None, new: SmallCells | None) -> list[Change]:
    """Changes of the small-cell protection (see module docstring for what is a gain)."""
    if old == new:
        return []
    if new is None:
        assert old is not None
        return [Change(name, None, "k_anonymity_removed", f"k={old.k}", None, True, "small cells are released")]
    if old is None:
        return [Change(name, None, "k_anonymity_added", None, f"k={new.k}", False)]
    changes = []
    if old.k != new.k:
        changes.append(
            Change(name, None, "k_lowered" if new.k < old.k else "k_raised", str(old.k), str(new.k), new.k < old.k)
        )
    if old.window_ms != new.window_ms:
        longer = new.window_ms > old.window_ms
        kind = "window_lengthened" if longer else "window_shortened"
        changes.append(Change(name, None, kind, old.describe_window(), new.describe_window(), longer))
    dropped, added = old.quasi_identifiers - new.quasi_identifiers, new.quasi_identifiers - old.quasi_identifiers
    if dropped:
        changes.append(Change(name, None, "quasi_identifiers_removed", _values(dropped), None, True))
    if added:
        changes.append(Change(name, None, "quasi_identifiers_added", None, _values(added), False))
    if old.ladder != new.ladder:
        shortened = old.ladder[: len(new.ladder)] == new.ladder
        kind = "ladder_shortened" if shortened else "ladder_changed"
        note = "" if shortened else "records are released at a detail the old ladder did not release"
        changes.append(Change(name, None, kind, _ladder(old), _ladder(new), not shortened, note))
    return changes


def _recipient_changes(old: RecipientAccess, new: RecipientAccess) -> list[Change]:
    name = old.recipient
    changes = []
    if old.topic != new.topic:
        changes.append(Change(name, None, "topic_changed", old.topic, new.topic, True))
    if old.route != new.route:
        changes.append(Change(name, None, "route_changed", old.route or "none", new.route or "none", True))
    changes += _filter_changes(old, new)
    changes += _small_cell_changes(name, old.small_cells, new.small_cells)
    for field in sorted(set(old.fields) | set(new.fields)):
        before, after = old.fields.get(field), new.fields.get(field)
        if before != after:
            changes += _field_changes(field, before, after, old)
    return changes


def compare(old: AccessMap, new: AccessMap) -> list[Change]:
    """Every difference between two access maps, recipient by recipient (see module docstring)."""
    changes: list[Change] = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if after is None:
            assert before is not None
            changes.append(Change(name, None, "recipient_removed", before.topic, None, False))
        elif before is None:
            changes.append(Change(name, None, "recipient_added", None, after.topic, True))
            changes += [
                Change(name, f, "field_gained", None, after.fields[f].describe(), True) for f in sorted(after.fields)
            ]
        else:
            changes += _recipient_changes(before, after)
    return changes


def gains(changes: Iterable[Change]) -> list[Change]:
    """The changes that widen some recipient's access."""
    return [c for c in changes if c.gain]


def diff_table(changes: list[Change]) -> str:
    """The changes as a terminal table (``GAIN`` marks widened access)."""
    if not changes:
        return "no change in what any recipient receives"
    rows = [
        [c.recipient, c.field or "", c.kind, c.old or "-", c.new or "-", "GAIN" if c.gain else "", c.note]
        for c in changes
    ]
    return table(["recipient", "field", "change", "old", "new", "gain", "note"], rows, 60)


def diff_json(changes: list[Change], old_label: str, new_label: str) -> str:
    """The changes as JSON: labels, whether any recipient gains, a summary and every change."""
    recipients: dict[str, dict[str, Any]] = {}
    for c in changes:
        summary = recipients.setdefault(c.recipient, {"gain": False, "changes": 0})
        summary["changes"] += 1
        summary["gain"] = summary["gain"] or c.gain
    doc: Mapping[str, Any] = {
        "old": old_label,
        "new": new_label,
        "gain": any(c.gain for c in changes),
        "recipients": recipients,
        "changes": [asdict(c) for c in changes],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)
