"""The small-cell stage's audit side: held decisions marked, each held view's release or suppression chained.

:class:`~streams.kafka.smallcell_io.SmallCellStage` calls :class:`StageAudit` when the worker
audits (see :mod:`streams.audit.held` for the records). Per batch:

* every guarded view gets a sealed lineage token from its own draft's decision (carried by the
  held view in memory and in its hold record's headers, so a rebuilt partition keeps it);
* the draft of a view that is held says ``held`` (its sealed location stays its hold record's);
* for every held view released (its class reaching k, or a closing window's ladder) or suppressed
  in this transaction, one more draft is appended to the batch's audit drafts: the runner chains
  it, on the audit partition of the view's ingress partition (the owner of its hold partition),
  in the same transaction as the released records, pointing at the released record's position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from streams.audit.decisions import PendingAudit, PendingDecision
from streams.audit.held import HeldAudit, Lineage
from streams.audit.keys import AuditKeys, AuditSealError
from streams.pipeline import OutputRecord
from streams.policy.smallcell import Ladder

log = logging.getLogger("streams.kafka.smallcell_io")

#: One released view: its window, its ladder step, the agency record produced.
Released = tuple[int, int, OutputRecord]
#: One suppressed view: its window, the reason code, the held item.
Suppressed = tuple[int, str, OutputRecord]


class StageAudit:
    """Audit drafts for one guarded recipient's holds, releases and suppressions (see module docstring)."""

    def __init__(self, keys: AuditKeys, recipient: str, ladder: Ladder) -> None:
        """Audit ``recipient``'s held views with the audit ``keys``; ``ladder`` says what each step withholds."""
        self.held = HeldAudit(keys)
        self.recipient = recipient
        self.ladder = ladder
        self.unopened = 0  # released or suppressed views whose token did not open (another audit secret)

    def decisions_at(self, drafts: Sequence[PendingAudit]) -> dict[int, tuple[int, PendingDecision]]:
        """Output position -> (draft index, decision) of the recipient's delivered decisions."""
        return {
            d.output: (i, d)
            for i, draft in enumerate(drafts)
            for d in draft.decisions
            if d.recipient == self.recipient and d.delivered and d.output is not None
        }

    def token(
        self, drafts: Sequence[PendingAudit], at: Mapping[int, tuple[int, PendingDecision]], position: int
    ) -> bytes | None:
        """The lineage token of the view at output ``position`` (None: no draft names it)."""
        found = at.get(position)
        if found is None:
            return None
        index, decision = found
        return self.held.seal(self.held.lineage(drafts[index], decision))

    def mark_held(
        self, drafts: list[PendingAudit], at: Mapping[int, tuple[int, PendingDecision]], held: Iterable[int]
    ) -> None:
        """Mark as held the decisions of the views at output positions ``held`` (before the drafts are remapped)."""
        for position in held:
            found = at.get(position)
            if found is not None:
                drafts[found[0]] = HeldAudit.held(drafts[found[0]], self.recipient)

    def fates(
        self, released: Iterable[Released], first_output: int, suppressed: Iterable[Suppressed], now_ms: int
    ) -> list[PendingAudit]:
        """The records of held views released (the ``n``-th at output ``first_output + n``) and suppressed.

        ``released`` lists every record of the tail in order (the views released with others or by a
        closing window); a record without a token (held by a worker that did not audit) gets none.
        """
        out: list[PendingAudit] = []
        for n, (window, step, record) in enumerate(released):
            lineage = self._open(record.lineage)
            if lineage is not None:
                withheld = self.ladder.withheld[step]
                out.append(HeldAudit.released(lineage, window, step, withheld, first_output + n, now_ms))
        for window, reason, item in suppressed:
            lineage = self._open(item.lineage)
            if lineage is not None:
                out.append(HeldAudit.suppressed(lineage, window, reason, now_ms))
        return out

    def _open(self, token: bytes | None) -> Lineage | None:
        if token is None:
            return None
        try:
            return self.held.open(token)
        except (AuditSealError, ValueError, KeyError, TypeError):
            self.unopened += 1
            log.warning("small cells: a held view's audit lineage does not open with this audit secret; not audited")
            return None
