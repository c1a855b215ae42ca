"""The runner's confluent-kafka (librdkafka) clients: configuration, error classes, interfaces.

Kept apart from the loop in :mod:`streams.kafka.transactional` so the settings that carry the
guarantees (isolation, static membership, transaction timeout, record sizes) are in one place
and unit-tested without a broker; the ``*Like`` protocols are what the runner needs of the
clients (fakes implement them in unit tests), :class:`RunnerListener` what metrics hook into.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streams.pipeline import InputRecord, OutputRecord
from streams.settings import DLQ_HEADROOM_BYTES, Settings

#: Produce errors that no retry can fix: the record, the topic's limits or the ACLs must change.
#: The worker stops on them (naming topic, partition, offset and cause) instead of looping.
PERMANENT_PRODUCE_ERRORS: frozenset[int] = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._INVALID_ARG,
    }
)

#: Delivery reports of records purged by an abort: expected, not a failure of their own.
PURGED: frozenset[int] = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

#: Errors that mean "this producer's epoch is over" (a newer one, or the coordinator, fenced it).
FENCED: frozenset[int] = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


#: More fatal consumer errors than this within FENCE_WINDOW_S stop the worker.
MAX_CONSUMER_FENCES = 3
FENCE_WINDOW_S = 600.0
#: Aborted transactions in a row (other than group refusals) after which the producer is replaced.
RETIRE_AFTER_FAILURES = 3
#: Abort causes that say "the group moved on", not "this producer's connections are bad".
GROUP_REFUSALS = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)


def is_permanent(error: KafkaError) -> bool:
    """Whether a produce error is one that retrying cannot fix (see PERMANENT_PRODUCE_ERRORS)."""
    return error.code() in PERMANENT_PRODUCE_ERRORS


def librdkafka_logger() -> logging.Logger:
    """The logger librdkafka's log lines go to (it never logs record contents unless ``debug`` is set)."""
    return logging.getLogger("streams.kafka.librdkafka")


def transactional_id(settings: Settings) -> str:
    """This worker's ``transactional.id``: one per worker (KIP-447), stable across its restarts.

    With a static ``instance_id`` a restarted worker initialises the same id and so aborts the
    transaction its predecessor left open at once; without one, a fresh id per process (the
    broker then aborts an orphaned transaction after ``transaction_timeout_ms``).
    """
    member = settings.instance_id or f"dynamic-{uuid.uuid4().hex}"
    return f"{settings.group_id}-{member}"


def producer_max_message_bytes(settings: Settings) -> int:
    """The producer's local record limit: above the dead-letter topic's, so the broker decides."""
    return settings.dlq_max_message_bytes + DLQ_HEADROOM_BYTES


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The ingress consumer: read_committed, offsets only through transactions, static membership.

    ``isolation.level=read_committed`` also makes librdkafka fetch committed offsets with
    ``require_stable`` (KIP-447), so a new owner of a partition waits while a zombie's
    transaction holding that partition's offsets is still open.
    """
    session = settings.session_timeout_ms
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        **settings.kafka_auth.librdkafka(),
        "group.id": settings.group_id,
        "client.id": f"{settings.group_id}-consumer",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session,
        "heartbeat.interval.ms": max(100, min(3000, session // 3)),
        "max.poll.interval.ms": max(300_000, session),
        # Prefetch bounded (per partition), so worker memory stays flat over a backlog; a record
        # larger than the fetch sizes is still returned whole (KIP-74).
        "queued.max.messages.kbytes": 16_384,
        # Fetch requests leave at once (TCP_NODELAY; librdkafka's default keeps Nagle on).
        "socket.nagle.disable": True,
        "fetch.max.bytes": 52_428_800,
        "receive.message.max.bytes": 52_428_800 + 2 * settings.dlq_max_message_bytes,
        "logger": librdkafka_logger(),
    }
    if settings.instance_id:
        config["group.instance.id"] = settings.instance_id
    return config


def producer_config(settings: Settings, *, transactional: bool, txn_id: str | None = None) -> dict[str, Any]:
    """The output producer: idempotent, acks=all, transactional in exactly-once mode.

    Only failed deliveries are reported (``delivery.report.only.error``): success costs no
    Python call per record. ``message.max.bytes`` is above the dead-letter topic's limit, so a
    dead letter of the largest ingress record is never refused locally.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        **settings.kafka_auth.librdkafka(),
        "client.id": f"{settings.group_id}-producer",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "none",  # readers need no codec library (kafka-python has no lz4)
        # TCP_NODELAY, as Kafka's Java clients set it: a transaction's small requests are never held
        # back behind an unacknowledged one (librdkafka's default leaves Nagle on).
        "socket.nagle.disable": True,
        "message.max.bytes": producer_max_message_bytes(settings),
        "delivery.report.only.error": True,
        "logger": librdkafka_logger(),
    }
    if transactional:
        config["transactional.id"] = txn_id or transactional_id(settings)
        config["transaction.timeout.ms"] = settings.transaction_timeout_ms
    return config


#: librdkafka's serialised consumer-group metadata: this magic, then the generation (int32, host order).
_CGMD_MAGIC = b"CGMDv2:"


def group_generation(metadata: object) -> int | None:
    """The generation inside ``consumer.consumer_group_metadata()``, or None if its form is unknown.

    librdkafka writes ``CGMDv2:``, the generation id, then the group, member and instance ids;
    -1 means "not a member of any generation" (before a join completes, or after the member
    id was reset). The group coordinator skips the generation check of a transactional offset
    commit carrying -1 and no instance id, so such metadata must never fence a batch.
    """
    if isinstance(metadata, bytes) and metadata.startswith(_CGMD_MAGIC) and len(metadata) >= len(_CGMD_MAGIC) + 4:
        return int.from_bytes(metadata[len(_CGMD_MAGIC) : len(_CGMD_MAGIC) + 4], sys.byteorder, signed=True)
    return None


def describe(error: KafkaError | None) -> str:
    """A short, data-free description of a client error: its name and librdkafka's sentence."""
    if error is None:
        return "unknown error"
    return f"{error.name()} ({error.str()})"


def error_of(exc: BaseException) -> KafkaError | None:
    """The :class:`KafkaError` a ``KafkaException`` carries, if any."""
    args: Any = getattr(exc, "args", ())
    if args and isinstance(args[0], KafkaError):
        return args[0]
    return None


class MessageLike(Protocol):
    """The part of ``confluent_kafka.Message`` the runner reads."""

    def error(self) -> KafkaError | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


class ConsumerLike(Protocol):
    """The part of ``confluent_kafka.Consumer`` the runner uses (a fake in unit tests)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> Sequence[MessageLike]: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]: ...
    def consumer_group_metadata(self) -> Any: ...
    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any: ...
    def close(self) -> None: ...


DeliveryCallback = Callable[[KafkaError | None, Any], None]


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the runner uses (a fake in unit tests)."""

    def init_transactions(self, timeout: float = -1) -> None: ...
    def begin_transaction(self) -> None: ...
    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: DeliveryCallback | None = None,
        timestamp: int = 0,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None: ...
    def poll(self, timeout: float = -1) -> int: ...
    def flush(self, timeout: float = -1) -> int: ...
    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None: ...
    def commit_transaction(self, timeout: float = -1) -> None: ...
    def abort_transaction(self, timeout: float = -1) -> None: ...


class RunnerListener(Protocol):
    """Hooks for metrics and health (``streams.ops``): called from the runner thread."""

    def committed(self, records: Sequence[InputRecord], outputs: Sequence[OutputRecord]) -> None:
        """A batch's outputs and offsets committed (count here, never before)."""

    def aborted(self) -> None:
        """A transaction (or an at-least-once delivery round) failed and its batch will be redone."""

    def fenced(self) -> None:
        """A producer was fenced and replaced."""

    def polled(self) -> None:
        """The loop went round (liveness)."""

    def assigned(self, owned: Sequence[int], member: bool = True) -> None:
        """A rebalance left this worker owning these ingress partitions (readiness, lag series);
        ``member`` is False when they were lost (out of the group until it joins again)."""

    def lagged(self, lags: Mapping[int, int]) -> None:
        """The consumer's lag per owned ingress partition (from librdkafka's statistics)."""


class NoListener:
    """The listener that does nothing (the default)."""

    def committed(self, records: Sequence[InputRecord], outputs: Sequence[OutputRecord]) -> None:
        pass

    def aborted(self) -> None:
        pass

    def fenced(self) -> None:
        pass

    def polled(self) -> None:
        pass

    def assigned(self, owned: Sequence[int], member: bool = True) -> None:
        pass

    def lagged(self, lags: Mapping[int, int]) -> None:
        pass


ConsumerFactory = Callable[[dict[str, Any]], ConsumerLike]
ProducerFactory = Callable[[dict[str, Any]], ProducerLike]


def confluent_consumer(config: dict[str, Any]) -> ConsumerLike:
    """A real confluent-kafka consumer."""
    return cast(ConsumerLike, Consumer(config))


def confluent_producer(config: dict[str, Any]) -> ProducerLike:
    """A real confluent-kafka producer."""
    return cast(ProducerLike, Producer(config))
