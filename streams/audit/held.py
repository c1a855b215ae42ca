"""Audit records of small-cell holds: a held view's decision says "held", its later fate is chained too.

Under small-cell protection (:mod:`streams.policy.smallcell`) a guarded recipient's view may be
held until its class reaches k or its window closes. The view's own decision record then says
``held`` (not delivered; its sealed location is its hold record's), and the worker appends, in
the transaction that releases or suppresses it, one more record on the chain of the same audit
partition: the held view's ``audit_ref``, ``person`` and ingress ``source`` (so it names the
original decision), a :class:`~streams.audit.decisions.SmallCellFate` (released at step j, the
fields withheld; or suppressed with its reason) and the recipient's one decision (delivered with
the fields that carry a value and the output's sealed coordinates, or not).

What the later record needs of the original one travels with the held view as a **lineage
token**: a JSON object sealed under the audit secret (AES-256-GCM, bound to
:data:`LINEAGE_AAD`), kept in the hold record's headers, so a new owner rebuilding the hold
partition can still audit the views it releases. The hold topic thus holds no audit reference
or audit pseudonym in clear: without the audit secret it cannot be joined to the audit topic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from streams.audit.decisions import (
    DELIVERED,
    HOUR_MS,
    NOT_DELIVERED,
    Location,
    PendingAudit,
    PendingDecision,
    SmallCellFate,
)
from streams.audit.keys import AuditKeys

#: The reason of a held view's decision in its own record (it is not delivered yet).
HELD_REASON = "held: small-cell protection"
#: Prefixes of the reason of the later decision.
RELEASED_PREFIX = "released: small-cell step "
SUPPRESSED_PREFIX = "suppressed: "
#: One compact encoder, built once (``json.dumps`` with separators builds one per call).
_JSON = json.JSONEncoder(separators=(",", ":"))
#: Additional data of every sealed lineage token.
LINEAGE_AAD = b"screening-streams/audit/small-cell-lineage"


@dataclass(frozen=True)
class Lineage:
    """What the record of a held view's fate repeats of the view's own decision record."""

    source: Location
    audit_ref: str
    person: str | None
    processing_mode: str | None
    recipient: str
    agency: str | None
    fields: tuple[str, ...]
    key_id: str | None
    policy_version: str


class HeldAudit:
    """Marks held decisions, seals and opens lineage tokens, drafts release and suppression records (pure)."""

    def __init__(self, keys: AuditKeys) -> None:
        """Seal with the audit ``keys`` (the processor's audit secret)."""
        self.keys = keys

    def lineage(self, draft: PendingAudit, decision: PendingDecision) -> Lineage:
        """The lineage of ``decision`` (a delivered one) of ``draft``."""
        return Lineage(
            draft.source,
            draft.audit_ref,
            draft.person,
            draft.processing_mode,
            decision.recipient,
            decision.agency,
            decision.fields,
            decision.key_id,
            decision.policy_version,
        )

    def seal(self, lineage: Lineage) -> bytes:
        """The token of ``lineage`` (sealed: opens only with the audit secret)."""
        body = {
            "s": list(lineage.source),
            "r": lineage.audit_ref,
            "p": lineage.person,
            "m": lineage.processing_mode,
            "c": lineage.recipient,
            "a": lineage.agency,
            "f": list(lineage.fields),
            "k": lineage.key_id,
            "v": lineage.policy_version,
        }
        return self.keys.seal(_JSON.encode(body), LINEAGE_AAD)

    def open(self, token: bytes) -> Lineage:
        """The lineage a token holds (:class:`~streams.audit.keys.AuditSealError` if it does not open)."""
        b = json.loads(self.keys.unseal(token, LINEAGE_AAD))
        topic, partition, offset = b["s"]
        return Lineage(
            (str(topic), int(partition), int(offset)),
            b["r"],
            b["p"],
            b["m"],
            b["c"],
            b["a"],
            tuple(b["f"]),
            b["k"],
            b["v"],
        )

    @staticmethod
    def held(draft: PendingAudit, recipient: str) -> PendingAudit:
        """``draft`` with ``recipient``'s decision held (not delivered, no fields; its output, the
        hold record, kept); the record's outcome is DELIVERED only if another recipient got it."""
        # Built directly, not with dataclasses.replace (~4× slower): this runs for every held view.
        decisions = tuple(
            PendingDecision(d.recipient, d.agency, False, HELD_REASON, (), d.key_id, d.policy_version, d.output)
            if d.recipient == recipient and d.delivered
            else d
            for d in draft.decisions
        )
        outcome = draft.outcome
        if outcome == DELIVERED and not any(d.delivered for d in decisions):
            outcome = NOT_DELIVERED
        return PendingAudit(
            draft.source,
            draft.audit_ref,
            draft.person,
            draft.processing_mode,
            outcome,
            draft.dead_letter_code,
            decisions,
            draft.processed_hour,
            draft.small_cell,
        )

    @staticmethod
    def released(
        lineage: Lineage, window: int, step: int, withheld: Sequence[str], output: int, now_ms: int
    ) -> PendingAudit:
        """The record of a held view released at ``step`` as batch output ``output``."""
        hidden = set(withheld)
        decision = PendingDecision(
            lineage.recipient,
            lineage.agency,
            True,
            f"{RELEASED_PREFIX}{step}",
            tuple(f for f in lineage.fields if f not in hidden),
            lineage.key_id,
            lineage.policy_version,
            output,
        )
        fate = SmallCellFate(True, window, step, tuple(withheld))
        return _record(lineage, DELIVERED, decision, fate, now_ms)

    @staticmethod
    def suppressed(lineage: Lineage, window: int, reason: str, now_ms: int) -> PendingAudit:
        """The record of a held view suppressed (``reason``: a code such as ``small_cell``)."""
        decision = PendingDecision(
            lineage.recipient,
            None,
            False,
            f"{SUPPRESSED_PREFIX}{reason}",
            (),
            None,
            lineage.policy_version,
        )
        return _record(lineage, NOT_DELIVERED, decision, SmallCellFate(False, window, None, (), reason), now_ms)


def _record(
    lineage: Lineage, outcome: str, decision: PendingDecision, fate: SmallCellFate, now_ms: int
) -> PendingAudit:
    return PendingAudit(
        lineage.source,
        lineage.audit_ref,
        lineage.person,
        lineage.processing_mode,
        outcome,
        None,
        (decision,),
        now_ms - now_ms % HOUR_MS,
        fate,
    )
