"""The runner's side of the audit trail: chain heads carried in the committed offsets' metadata.

Audit partition ``p`` is written only by the owner of ingress partition ``p``, inside the
transaction that commits the batch and its outputs. The head of that partition's chain (next
``seq`` and last MAC) travels as the metadata of the ingress offset committed in the same
transaction, so the head and the offset are committed (or aborted) together: a new owner
reads both with the committed offset (``require_stable`` under ``read_committed``) and
continues the chain exactly where the last committed batch left it, zombie or not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from streams.audit.chain import MAC_BYTES, AuditWriter, ChainHead
from streams.audit.decisions import Location, PendingAudit

#: Prefix of the offset metadata that carries an audit chain head.
META_PREFIX = "audit1:"


def head_metadata(head: ChainHead) -> str:
    """The offset metadata text of ``head`` (``audit1:<seq>:<mac hex>``, 80 bytes)."""
    return f"{META_PREFIX}{head.next_seq}:{head.mac.hex()}"


def parse_head(metadata: str | None) -> ChainHead:
    """The chain head in committed offset metadata (its ``audit1:`` part); genesis when there is none."""
    metadata = next((part for part in (metadata or "").split() if part.startswith(META_PREFIX)), None)
    if not metadata:
        return ChainHead()
    try:
        seq_text, mac_hex = metadata[len(META_PREFIX) :].split(":", 1)
        mac = bytes.fromhex(mac_hex)
        seq = int(seq_text)
    except ValueError:
        return ChainHead()
    if len(mac) != MAC_BYTES or seq < 0:
        return ChainHead()
    return ChainHead(seq, mac)


class AuditSink:
    """Chain heads of the audit partitions this worker owns, and the audit values of a batch."""

    def __init__(self, writer: AuditWriter, topic: str) -> None:
        """Write ``writer``'s records to ``topic`` (one partition per ingress partition)."""
        self.writer = writer
        self.topic = topic
        self._heads: dict[int, ChainHead] = {}

    def missing(self, partitions: Iterable[int]) -> list[int]:
        """The partitions whose head must be read from the committed offsets first."""
        return sorted(p for p in set(partitions) if p not in self._heads)

    def adopt(self, partition: int, metadata: str | None) -> None:
        """Take the head committed with ``partition``'s offset."""
        self._heads[partition] = parse_head(metadata)

    def heads_for(self, partitions: Iterable[int]) -> dict[int, ChainHead]:
        """The adopted heads of ``partitions`` (those known), to commit again unchanged."""
        return {p: self._heads[p] for p in partitions if p in self._heads}

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the heads of partitions no longer owned (their next owner reads them again)."""
        for p in partitions:
            self._heads.pop(p, None)

    def values(
        self, drafts: Sequence[PendingAudit], locations: Sequence[Location | None]
    ) -> tuple[list[tuple[int, bytes]], dict[int, ChainHead]]:
        """The batch's ``(audit partition, value)`` pairs and the heads they lead to (not adopted yet)."""
        by_partition: dict[int, list[PendingAudit]] = defaultdict(list)
        for draft in drafts:
            by_partition[draft.source[1]].append(draft)
        out: list[tuple[int, bytes]] = []
        heads: dict[int, ChainHead] = {}
        for partition, group in by_partition.items():
            records = (self.writer.record(d, locations) for d in group)
            values, heads[partition] = self.writer.chain(records, self._heads.get(partition, ChainHead()))
            out.extend((partition, v) for v in values)
        return out, heads

    def committed(self, heads: dict[int, ChainHead]) -> None:
        """Adopt the heads of a batch whose transaction has committed."""
        self._heads.update(heads)
