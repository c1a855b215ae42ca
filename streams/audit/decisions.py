"""Draft one decision record per ingress record: for every recipient, delivered or not, and why.

A draft is made while the pipeline processes a record, before its outputs have been produced,
so delivered entries point at their output by index in the batch (:attr:`PendingDecision.output`).
:mod:`streams.audit.chain` completes drafts with the produced coordinates, sealed, and chains them.
Drafts hold only audit references (keyed with the audit secret), never an identifying value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.audit.keys import AuditKeys
from streams.policy.engine import Minimiser, View
from streams.policy.model import Condition, Policy

DELIVERED = "DELIVERED"
NOT_DELIVERED = "NOT_DELIVERED"
DEAD_LETTERED = "DEAD_LETTERED"
#: Coordinates of a Kafka record: ``(topic, partition, offset)``.
Location = tuple[str, int, int]
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class PendingDecision:
    """One recipient's fate for one record; ``output`` indexes the batch output when delivered."""

    recipient: str
    agency: str | None
    delivered: bool
    reason: str
    fields: tuple[str, ...]
    key_id: str | None
    policy_version: str
    output: int | None = None


@dataclass(frozen=True)
class SmallCellFate:
    """What finally became of a view small-cell protection held: released at ``step``, or suppressed."""

    released: bool
    window: int
    step: int | None
    withheld: tuple[str, ...]
    reason: str | None = None


@dataclass(frozen=True)
class PendingAudit:
    """The decision record of one ingress record, before its outputs' coordinates are known.

    With ``small_cell``, the record of a held view's later release or suppression instead: it
    carries the held view's own ``source``, ``audit_ref`` and ``person``, and one decision.
    """

    source: Location
    audit_ref: str
    person: str | None
    processing_mode: str | None
    outcome: str
    dead_letter_code: str | None
    decisions: tuple[PendingDecision, ...]
    processed_hour: int
    small_cell: SmallCellFate | None = None


class Auditor:
    """Makes :class:`PendingAudit` drafts for the pipeline (pure; keys and policies injected)."""

    def __init__(self, keys: AuditKeys, minimiser: Minimiser) -> None:
        """Draft with the audit ``keys`` for the recipients of ``minimiser``."""
        self.keys = keys
        self.minimiser = minimiser
        # One decision per (recipient, failed filter), bounded; each entry keeps its condition alive.
        self._filtered_memo: dict[tuple[str, str, int], tuple[Condition | None, PendingDecision]] = {}

    def delivered(
        self,
        source: Location,
        event: Mapping[str, Any],
        views: Sequence[View],
        first_output: int,
        now_ms: int,
        key_ids: Mapping[str, str] | None = None,
    ) -> PendingAudit:
        """The draft of a valid event whose ``views`` become outputs ``first_output``, ``first_output + 1``, ...

        ``key_ids`` maps an agency to the id of the public key its fields were sealed to.
        """
        key_ids = key_ids or {}
        by_recipient = {view.agency.recipient: (i, view) for i, view in enumerate(views)}
        decisions = []
        for policy in self.minimiser.policies:
            hit = by_recipient.get(policy.recipient)
            if hit is not None:
                index, view = hit
                fields = tuple(name for name, value in view.record.items() if value is not None)
                agency = view.agency.agency
                decisions.append(
                    PendingDecision(
                        policy.recipient,
                        agency,
                        True,
                        "delivered",
                        fields,
                        key_ids.get(agency),
                        policy.version,
                        first_output + index,
                    )
                )
            else:
                decisions.append(self._filtered(policy, self.minimiser.excluded_by(policy, event)))
        return PendingAudit(
            source,
            self.keys.event_ref(str(event["event_id"])),
            self._person(event),
            _text(event.get("processing_mode")),
            DELIVERED if views else NOT_DELIVERED,
            None,
            tuple(decisions),
            now_ms - now_ms % HOUR_MS,
        )

    def _filtered(self, policy: Policy, failed: Condition | None) -> PendingDecision:
        """The (shared, immutable) decision of ``policy``'s recipient filtered out by ``failed``."""
        key = (policy.recipient, policy.version, id(failed))
        hit = self._filtered_memo.get(key)
        if hit is not None and hit[0] is failed:  # the same live condition (an id may be reused)
            return hit[1]
        if len(self._filtered_memo) >= 4096:
            self._filtered_memo.clear()
        reason = f"filtered out: requires {failed.describe()}" if failed else "filtered out"
        decision = PendingDecision(policy.recipient, None, False, reason, (), None, policy.version)
        self._filtered_memo[key] = (failed, decision)  # holds the condition: its id stays its own
        return decision

    def dead_lettered(self, source: Location, code: str, event: Mapping[str, Any] | None, now_ms: int) -> PendingAudit:
        """The draft of a rejected record (``event`` is its decoded form, if it decoded)."""
        event_id = event.get("event_id") if event is not None else None
        ref = self.keys.event_ref(str(event_id)) if event_id is not None else self.keys.coordinates_ref(*source)
        decisions = tuple(
            PendingDecision(p.recipient, None, False, f"dead-lettered: {code}", (), None, p.version)
            for p in self.minimiser.policies
        )
        return PendingAudit(
            source,
            ref,
            None,  # no person on a dead letter: its DLQ twin holds the raw NIR, so it would link them
            _text(event.get("processing_mode")) if event is not None else None,
            DEAD_LETTERED,
            code,
            decisions,
            now_ms - now_ms % HOUR_MS,
        )

    def _person(self, event: Mapping[str, Any]) -> str | None:
        nir = event.get("nir")
        return self.keys.person(nir) if isinstance(nir, str) and nir else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
