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


# --- registry outages through the async path, and per-person partitions -------------------------


def _pipeline_with_flaky_registry(down_for: int) -> tuple[Any, Any, list[Any]]:
    """A real pipeline whose registry fails ``down_for`` lookups before answering; a v2 batch it never saw."""
    from streams.assembly import build_pipeline, load_policy_set
    from streams.contracts.registry import InMemorySchemaRegistry
    from streams.domain.generate import GeneratorSettings, generate_events
    from streams.domain.geography import DEFAULT_GEOGRAPHY
    from streams.errors import RegistryUnavailable
    from streams.kafka.publish import event_encoder
    from streams.pipeline import InputRecord
    from streams.policy.pseudonyms import StaticKeyRing, generate_keys
    from streams.settings import Settings
    from tests.conftest import public_key_ring

    class Flaky(InMemorySchemaRegistry):
        failures = down_for
        lookups = 0

        def get_schema(self, schema_id: int) -> str:
            """Fail like a stopped registry, then answer."""
            self.lookups += 1
            if self.failures > 0:
                self.failures -= 1
                raise RegistryUnavailable("connection refused")
            return super().get_schema(schema_id)

    settings = Settings()
    registry = Flaky()
    agencies = ["cnam", "spf", *(f"ars.{r}" for r in DEFAULT_GEOGRAPHY.region_names)]
    pipeline = build_pipeline(
        settings,
        registry,
        StaticKeyRing(generate_keys(agencies)),
        clock_ms=lambda: 1_601_510_400_000,
        policy_set=load_policy_set(settings),
        public_keys=public_key_ring(),
    )
    v2 = event_encoder(registry, settings.ingress_topic, 2)
    events = generate_events(20, GeneratorSettings(seed=4, schema_version=2))
    records = [InputRecord(settings.ingress_topic, 0, i, None, v2.encode(dict(e))) for i, e in enumerate(events)]
    return pipeline, registry, records


def test_registry_outage_is_retried_with_backoff_and_nothing_is_dead_lettered() -> None:
    """outputs_with_retry waits out 3 failed lookups (0.5, 1, 2 s backoff), then delivers every view."""
    from streams.kafka.dispatch import outputs_with_retry

    pipeline, registry, records = _pipeline_with_flaky_registry(down_for=3)
    sleep = FakeSleep()
    outputs = asyncio.run(outputs_with_retry(pipeline, records, sleep))
    assert sleep.delays == pytest.approx([0.5, 1.0, 2.0])
    assert not any(o.dead_letter for o in outputs)
    assert pipeline.stats.dead_letters == {}
    assert registry.lookups == 4  # the v2 id, once per attempt; never again once known


def test_lookups_run_off_the_event_loop_thread() -> None:
    """The registry lookup of an unseen id happens in a worker thread, not on the loop's thread."""
    import threading

    from streams.kafka.dispatch import outputs_of

    pipeline, registry, records = _pipeline_with_flaky_registry(down_for=0)
    threads: list[str] = []
    original = registry.get_schema

    def spy(schema_id: int) -> str:
        threads.append(threading.current_thread().name)
        return str(original(schema_id))

    registry.get_schema = spy

    async def run() -> str:
        await outputs_of(pipeline, records)
        return threading.current_thread().name

    loop_thread = asyncio.run(run())
    assert threads and loop_thread not in threads


def test_one_persons_records_land_on_one_partition_per_agency() -> None:
    """Records with one route key (one person at one agency) share a partition, whatever their event key."""
    from streams.kafka.dispatch import partition_for

    parts = {"t.spf": 3, "t.cnam": 3}
    same = [OutputRecord("t.spf", f"ref{i}".encode(), b"v", (), b"person-key-at-spf") for i in range(10)]
    assert {partition_for(r, parts) for r in same} == {zlib.crc32(b"person-key-at-spf") % 3}
