"""Unit tests of the output dispatcher (streams.kafka.dispatch) with an injected send and sleep."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from streams.kafka.dispatch import Dispatcher
from streams.pipeline import OutputRecord

PARTITIONS = {"out.a": 6, "out.b": 1, "dlq": 3}


def _record(value: bytes, topic: str = "out.a", route: bytes | None = None) -> OutputRecord:
    return OutputRecord(topic, b"k-" + value, value, (("h", b"1"),), route or b"r-" + value)


@dataclass
class FakeProducer:
    """Records every send; hands out pending futures, or fails/raises as scripted per value."""

    fail_times: dict[bytes, int] = field(default_factory=dict)  # value -> failed deliveries
    raise_times: dict[bytes, int] = field(default_factory=dict)  # value -> send raising
    resolve_at_once: bool = True
    calls: list[tuple[str, bytes | None, bytes | None, int, tuple[tuple[str, bytes], ...]]] = field(
        default_factory=list
    )
    pending: list[asyncio.Future[Any]] = field(default_factory=list)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        headers: Sequence[tuple[str, bytes]],
    ) -> asyncio.Future[Any]:
        """The injected send: raise, or return a delivery future failed, done or pending."""
        assert value is not None
        self.calls.append((topic, key, value, partition, tuple(headers)))
        if self.raise_times.get(value, 0) > 0:
            self.raise_times[value] -= 1
            raise RuntimeError("producer queue full")
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_times.get(value, 0) > 0:
            self.fail_times[value] -= 1
            delivery.set_exception(ConnectionError("broker gone"))
        elif self.resolve_at_once:
            delivery.set_result(("metadata", value))
        else:
            self.pending.append(delivery)
        return delivery

    def sent_values(self) -> list[bytes | None]:
        """The values handed to send, in call order."""
        return [value for _, _, value, _, _ in self.calls]


@dataclass
class FakeSleep:
    """Records requested delays and returns at once (no real waiting)."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        """The injected sleep."""
        self.delays.append(seconds)


async def _let_loop_run(rounds: int = 5) -> None:
    """Give other tasks a few turns of the event loop, without any timer."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        turn: asyncio.Future[None] = loop.create_future()
        loop.call_soon(turn.set_result, None)
        await turn


def test_partition_is_crc32_of_route_key_and_stable() -> None:
    """The same route key always maps to the same partition: CRC-32 modulo the topic's count."""
    dispatcher = Dispatcher(FakeProducer().send, PARTITIONS)
    first = dispatcher.partition_for(_record(b"x", route=b"event-ref-1"))
    again = dispatcher.partition_for(_record(b"other value", route=b"event-ref-1"))
    assert first == again == zlib.crc32(b"event-ref-1") % 6


def test_partitions_are_within_range_and_spread() -> None:
    """Partitions lie in [0, count) for each topic and many keys use every partition."""
    dispatcher = Dispatcher(FakeProducer().send, PARTITIONS)
    for topic, count in PARTITIONS.items():
        seen = {dispatcher.partition_for(_record(b"v", topic, f"key-{i}".encode())) for i in range(300)}
        assert seen == set(range(count))


def test_unknown_topic_partition_raises_key_error() -> None:
    """Asking the partition of a topic without a known count raises KeyError."""
    with pytest.raises(KeyError, match="nowhere"):
        Dispatcher(FakeProducer().send, PARTITIONS).partition_for(_record(b"v", "nowhere"))


def test_dispatch_of_unknown_topic_raises_key_error_instead_of_retrying() -> None:
    """A record for a topic with no partition count is a bug: dispatch raises, it never loops."""
    producer, sleep = FakeProducer(), FakeSleep()
    dispatcher = Dispatcher(producer.send, PARTITIONS, sleep=sleep)
    with pytest.raises(KeyError):
        asyncio.run(dispatcher.dispatch([_record(b"v", "nowhere")]))
    assert producer.calls == []
    assert sleep.delays == []


def test_send_receives_record_fields_and_its_partition() -> None:
    """Each record is sent once with its topic, key, value, headers and computed partition."""
    producer = FakeProducer()
    dispatcher = Dispatcher(producer.send, PARTITIONS, sleep=FakeSleep())
    records = [_record(b"a"), _record(b"b", "out.b"), _record(b"c", "dlq")]
    asyncio.run(dispatcher.dispatch(records))
    assert producer.calls == [(r.topic, r.key, r.value, dispatcher.partition_for(r), tuple(r.headers)) for r in records]
    assert dispatcher.retries == 0


def test_dispatch_returns_only_after_every_delivery_is_acknowledged() -> None:
    """dispatch stays pending while any delivery is unresolved and returns once all are done."""
    producer = FakeProducer(resolve_at_once=False)
    dispatcher = Dispatcher(producer.send, PARTITIONS, sleep=FakeSleep())

    async def scenario() -> None:
        task = asyncio.ensure_future(dispatcher.dispatch([_record(b"a"), _record(b"b")]))
        await _let_loop_run()
        assert len(producer.pending) == 2
        assert not task.done()
        producer.pending[1].set_result("ok")
        await _let_loop_run()
        assert not task.done()  # the first delivery is still outstanding
        producer.pending[0].set_result("ok")
        await _let_loop_run()
        assert task.done()
        await task

    asyncio.run(scenario())
    assert producer.sent_values() == [b"a", b"b"]


def test_failed_deliveries_are_retried_with_growing_backoff() -> None:
    """A failed delivery is re-sent after 0.1, 0.2, 0.4 s ... until it succeeds; others are not."""
    producer = FakeProducer(fail_times={b"b": 3})
    sleep = FakeSleep()
    dispatcher = Dispatcher(producer.send, PARTITIONS, sleep=sleep)
    asyncio.run(dispatcher.dispatch([_record(b"a"), _record(b"b"), _record(b"c")]))
    assert producer.sent_values() == [b"a", b"b", b"c", b"b", b"b", b"b"]
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4])
    assert dispatcher.retries == 3


def test_backoff_is_capped() -> None:
    """The retry delay doubles up to max_backoff_s and then stays there."""
    producer = FakeProducer(fail_times={b"a": 5})
    sleep = FakeSleep()
    dispatcher = Dispatcher(producer.send, PARTITIONS, sleep=sleep, max_backoff_s=0.3)
    asyncio.run(dispatcher.dispatch([_record(b"a")]))
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert producer.sent_values() == [b"a"] * 6


def test_several_failures_are_retried_together() -> None:
    """Records failing in the same round are all retried, each until it succeeds."""
    producer = FakeProducer(fail_times={b"a": 1, b"c": 2})
    sleep = FakeSleep()
    dispatcher = Dispatcher(producer.send, PARTITIONS, sleep=sleep)
    asyncio.run(dispatcher.dispatch([_record(b"a"), _record(b"b"), _record(b"c")]))
    assert producer.sent_values() == [b"a", b"b", b"c", b"a", b"c", b"c"]
    assert sleep.delays == pytest.approx([0.1, 0.2])
    assert dispatcher.retries == 3


def test_exception_raised_by_send_is_retried() -> None:
    """When send itself raises (not the delivery), the record is retried like a failed delivery."""
    producer = FakeProducer(raise_times={b"b": 2})
    sleep = FakeSleep()
    dispatcher = Dispatcher(producer.send, PARTITIONS, sleep=sleep)
    asyncio.run(dispatcher.dispatch([_record(b"a"), _record(b"b")]))
    assert producer.sent_values() == [b"a", b"b", b"b", b"b"]
    assert sleep.delays == pytest.approx([0.1, 0.2])


def test_empty_batch_sends_nothing() -> None:
    """Dispatching no records returns at once without sending or sleeping."""
    producer, sleep = FakeProducer(), FakeSleep()
    asyncio.run(Dispatcher(producer.send, PARTITIONS, sleep=sleep).dispatch([]))
    assert producer.calls == [] and sleep.delays == []
