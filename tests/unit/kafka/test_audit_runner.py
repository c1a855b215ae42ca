"""The runner's audit guards (streams.kafka.transactional / batches), with fake clients."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.errors import ConfigError
from streams.kafka.audit_io import AuditSink
from streams.kafka.batches import Batch, read_heads
from streams.kafka.transactional import Runner
from streams.settings import Settings


def test_auditing_refuses_at_least_once() -> None:
    """Audit records are atomic with the outputs only in a transaction: at_least_once + audit fails fast."""
    sink = AuditSink(writer=None, topic="audit")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exactly_once"):
        Runner(Settings(processing_guarantee="at_least_once"), None, {}, audit=sink)  # type: ignore[arg-type]


class _Consumer:
    def __init__(self, error: KafkaError | None) -> None:
        self.error = error

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        first = partitions[0]
        return [
            SimpleNamespace(
                topic=first.topic,
                partition=first.partition,
                metadata="audit1:3:" + "00" * 32,
                error=self.error,
                offset=-1001,
            )
        ]


def test_a_failed_committed_read_never_restarts_a_chain() -> None:
    """A per-partition error from committed() fails the batch instead of adopting the genesis head."""
    sink = AuditSink(writer=None, topic="audit")  # type: ignore[arg-type]
    batch = Batch(next={("in", 0): 9})
    with pytest.raises(KafkaException):
        read_heads(sink, _Consumer(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)), "in", batch, 1.0)
    assert sink.missing([0]) == [0]
    read_heads(sink, _Consumer(None), "in", batch, 1.0)
    assert sink.missing([0]) == []


def test_unreadable_chain_heads_are_retried_and_unauthorised_ones_stop_the_worker() -> None:
    """A transient error reading the heads (coordinator loading) is a reason to read the batch
    again, never a failed transaction; an authorisation or missing-partition error cannot heal:
    RunnerFatal names it (no silent retry loop)."""
    from streams.kafka.batches import RunnerFatal, heads_problem

    sink = AuditSink(writer=None, topic="audit")  # type: ignore[arg-type]
    batch = Batch(next={("in", 0): 9})
    why = heads_problem(sink, _Consumer(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)), "in", batch, 1.0)
    assert why is not None and "COORDINATOR_LOAD_IN_PROGRESS" in why
    for code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._UNKNOWN_PARTITION):
        with pytest.raises(RunnerFatal, match="audit chain heads"):
            heads_problem(AuditSink(writer=None, topic="audit"), _Consumer(KafkaError(code)), "in", batch, 1.0)  # type: ignore[arg-type]
    assert heads_problem(sink, _Consumer(None), "in", batch, 1.0) is None


def test_an_audit_topic_with_fewer_partitions_than_the_ingress_is_refused_at_start() -> None:
    """Audit partition p chains ingress partition p: fewer audit partitions fail fast, naming both topics."""
    from streams.kafka.topics import check_one_partition_per_ingress

    check_one_partition_per_ingress("audit", "audit", "in", {"audit": 6, "in": 6})
    with pytest.raises(ConfigError, match="audit has 3 partitions, in has 6: the audit topic needs"):
        check_one_partition_per_ingress("audit", "audit", "in", {"audit": 3, "in": 6})
