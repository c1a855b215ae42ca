"""The runner's view of its assignment: rebalance callbacks and partitions to restart from the group.

A mixin of :class:`streams.kafka.transactional.Runner` (split off to keep each module one job):
librdkafka calls these inside ``consume()``, when no transaction is open. A partition leaves
``_owned`` on revocation or loss (its audit head and small-cell state are forgotten, its
pause lifted); one revoked and assigned again within a poll, or whose last transaction's
outcome is unknown, is put in ``_needs_reset`` and sought to its committed offset after the
poll (read with ``require_stable``, so after any open transaction on it has ended).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from streams.kafka.audit_io import AuditSink
from streams.kafka.batches import TP, RunnerStats, pausing
from streams.kafka.clients import ConsumerLike, RunnerListener, describe, error_of
from streams.kafka.smallcell_io import SmallCellStage
from streams.pipeline import InputRecord

log = logging.getLogger("streams.kafka.transactional")  # the runner's log


class RebalanceTracking:
    """Owned partitions, and the bookkeeping of rebalances (see the module doc)."""

    stats: RunnerStats
    listener: RunnerListener
    audit: AuditSink | None
    small_cells: SmallCellStage | None
    _owned: set[TP]
    _revoked_in_poll: set[TP]
    _needs_reset: set[TP]
    _held: dict[TP, list[InputRecord]]
    _txn_timeout_s: float

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self._owned.update((tp.topic, tp.partition) for tp in partitions)
        log.info("assigned %d ingress partitions (%d owned)", len(partitions), len(self._owned))
        self.listener.assigned(sorted(p for _, p in self._owned))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._release(partitions, "revoked", consumer)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._release(partitions, "lost", consumer)

    def _release(self, partitions: list[TopicPartition], how: str, consumer: Any = None) -> None:
        # No transaction is open here (callbacks run inside consume()), so nothing to finish.
        self.stats.rebalances += 1
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self._owned -= tps
        self._revoked_in_poll |= tps
        held = sorted(tp for tp in tps if self._held.pop(tp, None) is not None)
        if held and consumer is not None:
            # librdkafka keeps an application pause across unassign and assign: lift it now, or a
            # partition set aside here and later assigned here again would never be fetched.
            pausing(consumer, held, pause=False)
        self._forget_state(tps)
        log.info("%s %d ingress partitions (%d owned)", how, len(tps), len(self._owned))
        self.listener.assigned(sorted(p for _, p in self._owned), member=how != "lost")

    def _reset_reassigned(self, consumer: ConsumerLike) -> None:
        """Partitions revoked and assigned again within one poll, or whose last transaction's outcome is
        unknown, restart from their committed offsets (their records of this poll are dropped); one
        whose committed offset could not be read stays set aside until it can."""
        self._needs_reset = (self._needs_reset | self._revoked_in_poll) & self._owned
        if not self._needs_reset:
            return
        again = sorted(self._needs_reset)
        try:
            committed = consumer.committed([TopicPartition(t, p) for t, p in again], self._txn_timeout_s)
        except KafkaException as exc:  # their records stay skipped; tried again after the next poll
            log.warning("resetting %d partitions failed: %s", len(again), describe(error_of(exc)))
            return
        for tp in committed:
            if tp.error is not None:  # never restart a partition from its beginning on a failed read
                log.warning("resetting %s[%d] failed: %s; retried", tp.topic, tp.partition, describe(tp.error))
                continue
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING  # nothing committed yet: the start
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                log.warning("seek of %s[%d] failed: %s; retried", tp.topic, tp.partition, describe(error_of(exc)))
                continue
            self._needs_reset.discard((tp.topic, tp.partition))

    def _forget_state(self, partitions: set[TP]) -> None:
        """Drop the audit heads and small-cell state of ``partitions`` (read again from the group)."""
        if self.audit is not None:
            self.audit.forget(p for _, p in partitions)
        if self.small_cells is not None:
            self.small_cells.forget(p for _, p in partitions)
