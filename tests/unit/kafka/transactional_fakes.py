"""In-memory doubles of confluent-kafka's consumer and producer and of a tiny transactional broker.

The broker keeps committed outputs and offsets, and the group's generation: offsets sent with
an older generation are refused the way KIP-447's group coordinator refuses a zombie's. Tests
script faults by queueing exceptions per producer or consumer call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.pipeline import InputRecord, OutputRecord

TP = tuple[str, int]


def abortable(code: int = KafkaError._TIMED_OUT) -> KafkaException:
    """A transaction error that requires an abort."""
    return KafkaException(KafkaError(code, "abortable", txn_requires_abort=True))


def fatal(code: int = KafkaError._FENCED) -> KafkaException:
    """A fatal producer error (the producer must not be used again)."""
    return KafkaException(KafkaError(code, "fatal", fatal=True))


def retriable(code: int = KafkaError._TIMED_OUT) -> KafkaException:
    """A retriable error (the same call may be repeated)."""
    return KafkaException(KafkaError(code, "retriable", retriable=True))


@dataclass
class Message:
    """A consumed record (the confluent ``Message`` accessors)."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None = b"v"
    _error: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str | None:
        return self._topic

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def key(self) -> bytes | None:
        return f"k{self._offset}".encode()

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)


@dataclass
class Broker:
    """Committed state: outputs of committed transactions, group offsets, the group generation."""

    logs: dict[TP, list[bytes]] = field(default_factory=dict)
    committed_outputs: list[tuple[str, int, bytes | None]] = field(default_factory=list)
    offsets: dict[TP, int] = field(default_factory=dict)
    generation: int = 1

    def add_partition(self, topic: str, partition: int, count: int) -> None:
        """An ingress partition holding ``count`` records."""
        self.logs[(topic, partition)] = [f"r{i}".encode() for i in range(count)]


class FakeConsumer:
    """Assigns what the test says, returns records from positions, honours seeks."""

    def __init__(self, broker: Broker, *, assign: Sequence[TP] = ()) -> None:
        """``assign`` is handed to ``on_assign`` on the first consume."""
        self.broker = broker
        self.config: dict[str, Any] = {}
        self.positions: dict[TP, int] = {}
        self.owned: set[TP] = set()
        self.pending_assign = list(assign)
        self.before_consume: list[Callable[[FakeConsumer], None]] = []
        self.errors: list[KafkaError] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.paused: set[TP] = set()
        self.pauses: list[tuple[str, TP]] = []
        self.commits: list[list[TopicPartition]] = []
        self.closed = False
        self.subscriptions = 0
        self.on_assign: Any = None
        self.on_revoke: Any = None
        self.on_lost: Any = None
        self.generation = broker.generation

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None) -> None:
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost
        self.subscriptions += 1
        if self.closed:  # a new consumer after a fatal error: the group assigns the partitions again
            self.pending_assign, self.owned, self.closed = sorted(self.owned), set(), False

    def assign_now(self, tps: Sequence[TP]) -> None:
        """Rebalance: the group hands these partitions over (positions from committed offsets)."""
        self.generation = self.broker.generation
        for tp in tps:
            self.owned.add(tp)
            self.positions[tp] = self.broker.offsets.get(tp, 0)
        self.on_assign(self, [TopicPartition(t, p) for t, p in tps])

    def revoke_now(self, tps: Sequence[TP], *, lost: bool = False) -> None:
        """Rebalance: these partitions go away."""
        for tp in tps:
            self.owned.discard(tp)
        (self.on_lost if lost else self.on_revoke)(self, [TopicPartition(t, p) for t, p in tps])

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if self.pending_assign:
            self.assign_now(self.pending_assign)
            self.pending_assign = []
        while self.before_consume:
            self.before_consume.pop(0)(self)
        out: list[Message] = [Message("?", -1, -1, None, self.errors.pop(0))] if self.errors else []
        for tp in sorted(self.owned - self.paused):
            log = self.broker.logs.get(tp, [])
            while self.positions[tp] < len(log) and len(out) < num_messages:
                out.append(Message(tp[0], tp[1], self.positions[tp], log[self.positions[tp]]))
                self.positions[tp] += 1
        return out

    def pause(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.paused.add((tp.topic, tp.partition))
            self.pauses.append(("pause", (tp.topic, tp.partition)))

    def resume(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.paused.discard((tp.topic, tp.partition))
            self.pauses.append(("resume", (tp.topic, tp.partition)))

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))
        # OFFSET_BEGINNING (-2) is the log's start, as librdkafka resolves it
        self.positions[(partition.topic, partition.partition)] = 0 if partition.offset == -2 else partition.offset

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return [
            TopicPartition(p.topic, p.partition, self.broker.offsets.get((p.topic, p.partition), -1001))
            for p in partitions
        ]

    def consumer_group_metadata(self) -> Any:
        return self.generation

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        self.commits.append(offsets)
        for tp in offsets:
            self.broker.offsets[(tp.topic, tp.partition)] = tp.offset
        return offsets

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """A transactional producer over :class:`Broker`; ``faults[name]`` raises at that call."""

    def __init__(self, broker: Broker, config: dict[str, Any]) -> None:
        """Create with the runner's configuration (kept for assertions)."""
        self.broker = broker
        self.config = config
        self.faults: dict[str, list[BaseException]] = defaultdict(list)
        self.calls: list[str] = []
        self.in_txn: list[tuple[str, int, bytes | None]] = []
        self.pending_offsets: list[TopicPartition] = []
        self.fail_delivery: Callable[[str, int], KafkaError | None] = lambda topic, partition: None
        self.callbacks: list[Callable[[], None]] = []
        self.dead = False

    def _call(self, name: str) -> None:
        if self.dead:
            raise AssertionError(f"{name} called on a producer that was fatally failed")
        self.calls.append(name)
        if self.faults[name]:
            exc = self.faults[name].pop(0)
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.fatal():
                self.dead = True
            raise exc

    def init_transactions(self, timeout: float = -1) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")
        self.in_txn, self.pending_offsets = [], []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        self._call("produce")
        self.in_txn.append((topic, partition, value))
        error = self.fail_delivery(topic, partition)
        if error is not None and on_delivery is not None:
            msg = Message(topic, partition, -1, value)
            self.callbacks.append(lambda: on_delivery(error, msg))

    def poll(self, timeout: float = -1) -> int:
        self.calls.append("poll")
        return 0

    def flush(self, timeout: float = -1) -> int:
        self.calls.append("flush")
        return self._serve_callbacks()

    def _serve_callbacks(self) -> int:
        failed = len(self.callbacks)
        for callback in self.callbacks:
            callback()
        self.callbacks = []
        return failed

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self._call("send_offsets_to_transaction")
        if group_metadata != self.broker.generation:  # KIP-447: the coordinator checks the generation
            raise abortable(KafkaError.ILLEGAL_GENERATION)
        self.pending_offsets = positions

    def commit_transaction(self, timeout: float = -1) -> None:
        self._call("commit_transaction")
        if self._serve_callbacks():
            raise abortable(KafkaError._INCONSISTENT)
        self.broker.committed_outputs += self.in_txn
        for tp in self.pending_offsets:
            self.broker.offsets[(tp.topic, tp.partition)] = tp.offset
        self.in_txn, self.pending_offsets = [], []

    def abort_transaction(self, timeout: float = -1) -> None:
        self._call("abort_transaction")
        self.callbacks = []
        self.in_txn, self.pending_offsets = [], []


class FakePipeline:
    """Two outputs per record (one per agency topic); raises ``errors`` first if any are queued."""

    def __init__(self) -> None:
        """An empty pipeline."""
        self.errors: list[BaseException] = []
        self.processed: list[InputRecord] = []
        self.waiting: dict[tuple[str, int], int] = {}  # partition -> calls for which it is still pending

    def process(self, record: InputRecord) -> list[OutputRecord]:
        if self.errors:
            raise self.errors.pop(0)
        self.processed.append(record)
        ref = f"{record.partition}:{record.offset}".encode()
        return [OutputRecord(topic, ref, ref, (), ref) for topic in ("out.a", "out.b")]

    def pending_partitions(self, records: list[InputRecord], wait_s: float = 0.1) -> set[tuple[str, int]]:
        """Like ``Pipeline.pending_partitions``: a partition in ``waiting`` is pending for that many calls."""
        asked = {(r.topic, r.partition) for r in records}
        pending = {tp for tp in asked if self.waiting.get(tp, 0) > 0}
        for tp in pending:
            self.waiting[tp] -= 1
        return pending

    def process_each(self, records: list[InputRecord]) -> list[tuple[InputRecord, list[OutputRecord]]]:
        """Each record with its outputs, as ``Pipeline.process_each`` (this fake encrypts nothing: no key records)."""
        return [(record, self.process(record)) for record in records]
