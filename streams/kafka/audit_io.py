"""The runner's side of the audit trail: chain heads carried in the committed offsets' metadata.

Audit partition ``p`` is written only by the owner of ingress partition ``p``, inside the
transaction that commits the batch and its outputs. The head of that partition's chain (next
``seq`` and last MAC) travels as the metadata of the ingress offset committed in the same
transaction, so the head and the offset are committed (or aborted) together: a new owner
reads both with the committed offset (``require_stable`` under ``read_committed``) and
continues the chain exactly where the last committed batch left it, zombie or not.

When the committed offset carries no head (offsets reset by an operator, expired, or
committed by a worker without the audit secret), the head is rebuilt from the audit
partition itself: its last committed record (read ``read_committed``, by
:func:`tail_reader`) gives the next ``seq`` and MAC, so the chain goes on instead of
restarting at ``seq 0``, which ``audit verify`` would report as tampering.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.audit.chain import MAC_BYTES, AuditWriter, ChainHead, mac_matches
from streams.audit.decisions import Location, PendingAudit
from streams.errors import RegistryUnavailable

log = logging.getLogger(__name__)

#: The last committed values of one audit partition, in offset order (empty if it holds none).
TailReader = Callable[[int], list[bytes]]

#: Prefix of the offset metadata that carries an audit chain head.
META_PREFIX = "audit1:"


def head_metadata(head: ChainHead) -> str:
    """The offset metadata text of ``head`` (``audit1:<seq>:<mac hex>``, 80 bytes)."""
    return f"{META_PREFIX}{head.next_seq}:{head.mac.hex()}"


def committed_head(metadata: str | None) -> ChainHead | None:
    """The chain head in committed offset metadata, None if it carries none (or a malformed one)."""
    metadata = next((part for part in (metadata or "").split() if part.startswith(META_PREFIX)), None)
    if not metadata:
        return None
    try:
        seq_text, mac_hex = metadata[len(META_PREFIX) :].split(":", 1)
        mac = bytes.fromhex(mac_hex)
        seq = int(seq_text)
    except ValueError:
        return None
    if len(mac) != MAC_BYTES or seq < 0:
        return None
    return ChainHead(seq, mac)


def tail_reader(config: dict[str, Any], topic: str, *, timeout_s: float = 30.0) -> TailReader:
    """A :data:`TailReader` of ``topic`` for a consumer ``config`` (bootstrap, security; no group use).

    Reads ``read_committed`` backwards in growing windows from the end until a committed record
    turns up (transaction markers and aborted records take offsets but are never returned).
    """
    settings = {
        **{k: v for k, v in config.items() if k != "group.instance.id"},
        "group.id": f"{config.get('group.id', 'screening-streams')}-audit-tail",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
    }

    def read(partition: int) -> list[bytes]:
        consumer = Consumer(settings)
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            window = 64
            while high > low:
                start = max(low, high - window)
                consumer.assign([TopicPartition(topic, partition, start)])
                values = _values_to_end(consumer, timeout_s)
                if values or start == low:
                    return values
                window *= 8
            return []
        finally:
            consumer.close()

    return read


def _values_to_end(consumer: Consumer, timeout_s: float) -> list[bytes]:
    """The values read until the end of the assigned partition (its LSO under read_committed)."""
    values: list[bytes] = []
    while True:
        message = consumer.poll(timeout_s)
        if message is None:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "audit partition tail not read in time"))
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return values
            raise KafkaException(error)
        value = message.value()
        if value is not None:
            values.append(value)


class AuditSink:
    """Chain heads of the audit partitions this worker owns, and the audit values of a batch."""

    def __init__(self, writer: AuditWriter, topic: str, tail: TailReader | None = None) -> None:
        """Write ``writer``'s records to ``topic`` (one partition per ingress partition); ``tail``
        rebuilds a head the committed offsets lost (without one, such a chain restarts at seq 0)."""
        self.writer = writer
        self.topic = topic
        self._tail = tail
        self._heads: dict[int, ChainHead] = {}
        self.rebuilt = 0  # heads rebuilt from the audit partition's tail
        self.gaps = 0  # rebuilt heads whose last audited ingress offset fell short of the committed one

    def missing(self, partitions: Iterable[int]) -> list[int]:
        """The partitions whose head must be read from the committed offsets first."""
        return sorted(p for p in set(partitions) if p not in self._heads)

    def adopt(self, partition: int, metadata: str | None, committed: int = -1) -> None:
        """Take the head committed with ``partition``'s offset, or rebuild it from the partition's tail.

        Rebuilt from the last tail record whose MAC verifies (a forged record cannot set the
        head); when that record's ingress offset is short of ``committed`` (the committed
        ingress offset), the offsets in between were committed without audit records (e.g. by
        a worker without the audit secret): logged as a gap, counted in :attr:`gaps`.
        """
        head = committed_head(metadata)
        if head is None and self._tail is not None:
            head, source = self._rebuilt(partition)
            self.rebuilt += 1
            if source is not None and committed > source + 1:
                self.gaps += 1
                log.warning(
                    "audit gap: ingress partition %d offsets %d..%d were committed without audit records "
                    "(a worker without the audit secret, or an offset reset?)",
                    partition,
                    source + 1,
                    committed - 1,
                )
        self._heads[partition] = head or ChainHead()

    def _rebuilt(self, partition: int) -> tuple[ChainHead, int | None]:
        """The head after the partition's last verifying record, and that record's ingress offset."""
        assert self._tail is not None
        values = self._tail(partition)
        for value in reversed(values):
            try:
                record = self.writer.decode(value)
                if not mac_matches(self.writer, value, record):
                    continue
                aad = record["audit_ref"].encode() + b"|source"
                source = int(self.writer.keys.unseal(record["sealed_source"], aad).rsplit(":", 1)[1])
            except RegistryUnavailable:
                raise  # never restart a chain at genesis because the registry is down
            except Exception:  # not an audit record of this secret (only the processor writes here)
                continue
            return ChainHead(int(record["seq"]) + 1, bytes(record["mac"])), source
        if values:
            log.warning("audit partition %d: no verifying record at its tail; its chain restarts at seq 0", partition)
        return ChainHead(), None

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
            values, heads[partition] = self.writer.chain_drafts(
                group, locations, self._heads.get(partition, ChainHead())
            )
            out.extend((partition, v) for v in values)
        return out, heads

    def committed(self, heads: dict[int, ChainHead]) -> None:
        """Adopt the heads of a batch whose transaction has committed."""
        self._heads.update(heads)
