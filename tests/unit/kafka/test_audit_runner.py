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
                topic=first.topic, partition=first.partition, metadata="audit1:3:" + "00" * 32, error=self.error
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
