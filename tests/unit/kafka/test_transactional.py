"""Unit tests of the exactly-once runner's transaction, abort, fencing and stop paths (fake clients).

Each test scripts one fault the nemesis test provokes on the real broker and pins what the
runner does: what it aborts, which producer it never touches again, where it seeks, what the
broker ends up holding. No sleeps: the runner's sleep is injected and records its delays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.errors import RegistryError
from streams.kafka.batches import EXIT_FATAL, Batch, BoundedCalls, Failure, RunnerFatal
from streams.kafka.clients import group_generation
from streams.kafka.transactional import Runner
from streams.pipeline import Pipeline
from streams.settings import Settings
from streams.worker import run_runner_thread

from .transactional_fakes import (
    Broker,
    FakeConsumer,
    FakePipeline,
    FakeProducer,
    abortable,
    fatal,
    retriable,
)

IN = "in"
PARTITIONS = {"out.a": 3, "out.b": 3}


class Harness:
    """A runner over a fake broker with two ingress partitions; the loop stops when ``until`` holds."""

    def __init__(self, records: int = 5, guarantee: str = "exactly_once", batch_size: int = 500) -> None:
        """Two ingress partitions of ``records`` records each, both assigned to this runner."""
        self.broker = Broker()
        for partition in (0, 1):
            self.broker.add_partition(IN, partition, records)
        self.consumer = FakeConsumer(self.broker, assign=[(IN, 0), (IN, 1)])
        self.producers: list[FakeProducer] = []
        self.pipeline = FakePipeline()
        self.sleeps: list[float] = []
        self.producer_faults: list[dict[str, list[BaseException]]] = []
        settings = Settings(app_id="g", instance_id="w1", processing_guarantee=guarantee, batch_size=batch_size)
        self.runner = Runner(
            settings,
            cast(Pipeline, self.pipeline),
            PARTITIONS,
            consumer_factory=self._consumer,
            producer_factory=self._producer,
            sleep=self.sleeps.append,
        )

    def _consumer(self, config: dict[str, Any]) -> FakeConsumer:
        self.consumer.config = config
        return self.consumer

    def _producer(self, config: dict[str, Any]) -> FakeProducer:
        producer = FakeProducer(self.broker, config)
        if self.producer_faults:
            producer.faults.update(self.producer_faults.pop(0))
        self.producers.append(producer)
        return producer

    def run_until_drained(self, max_polls: int = 50) -> None:
        """Run the loop until every ingress record's offset is committed (or ``max_polls`` consumes)."""
        polls = 0
        original = self.consumer.consume

        def consume(num_messages: int = 1, timeout: float = -1) -> list[Any]:
            nonlocal polls
            polls += 1
            done = all(self.broker.offsets.get(tp, 0) >= len(log) for tp, log in self.broker.logs.items())
            if done or polls > max_polls:
                self.runner.stop()
                return []
            return original(num_messages, timeout)

        self.consumer.consume = consume  # type: ignore[method-assign]
        self.runner.run()

    def run_polls(self, polls: int) -> None:
        """Run the loop for ``polls`` consumes, then stop it."""
        done = 0
        original = self.consumer.consume

        def consume(num_messages: int = 1, timeout: float = -1) -> list[Any]:
            nonlocal done
            done += 1
            if done > polls:
                self.runner.stop()
                return []
            return original(num_messages, timeout)

        self.consumer.consume = consume  # type: ignore[method-assign]
        self.runner.run()

    def change_first_producer(self, change: Callable[[FakeProducer], None]) -> None:
        """The runner's first producer gets ``change`` applied (a fault of that producer only)."""
        created = self._producer

        def producer(config: dict[str, Any]) -> FakeProducer:
            made = created(config)
            if len(self.producers) == 1:
                change(made)
            return made

        self.runner._producer_factory = producer

    def first_poll_unjoined(self) -> None:
        """The first poll's group metadata says generation -1 (librdkafka's form: not a member)."""
        answers = [b"CGMDv2:\xff\xff\xff\xffscreening-streams\x00\x00\x01"]
        original = self.consumer.consumer_group_metadata
        self.consumer.consumer_group_metadata = lambda: answers.pop(0) if answers else original()  # type: ignore[method-assign]

    def delivered(self) -> Counter[tuple[str, bytes | None]]:
        """Committed outputs counted by (topic, value)."""
        return Counter((topic, value) for topic, _, value in self.broker.committed_outputs)


def test_happy_path_commits_outputs_and_offsets_in_one_transaction() -> None:
    """A batch's views and its offsets commit together, once; the consumer reads read_committed."""
    h = Harness(records=5)
    h.run_until_drained()
    assert h.runner.stats.transactions == 1
    assert len(h.broker.committed_outputs) == 2 * 10
    assert h.broker.offsets == {(IN, 0): 5, (IN, 1): 5}
    assert h.consumer.config["isolation.level"] == "read_committed"
    assert h.consumer.config["group.instance.id"] == "w1"
    assert h.producers[0].calls[:2] == ["init_transactions", "begin_transaction"]
    assert h.consumer.closed


def test_producer_is_initialised_before_the_consumer_joins() -> None:
    """init_transactions runs before the group hands out partitions (no lazy producer)."""
    h = Harness(records=1)
    order: list[str] = []
    h.consumer.before_consume.append(lambda c: order.append(f"consume after {len(h.producers)} producer(s)"))
    h.run_until_drained()
    assert order == ["consume after 1 producer(s)"]
    assert h.producers[0].calls[0] == "init_transactions"


def test_abortable_error_aborts_rewinds_and_commits_each_output_once() -> None:
    """An abortable commit error: abort, seek both partitions back, process again, no duplicate."""
    h = Harness(records=5)
    h.producer_faults.append({"commit_transaction": [abortable()]})
    h.run_until_drained()
    producer = h.producers[0]
    assert "abort_transaction" in producer.calls
    assert sorted(h.consumer.seeks) == [(IN, 0, 0), (IN, 1, 0)]
    assert h.runner.stats.aborts == 1 and h.runner.stats.transactions == 1
    assert len(h.producers) == 1, "an abortable error keeps the producer"
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 20
    assert h.sleeps == [0.1], "one backoff, injected"


def test_fatal_fenced_producer_is_never_used_again_and_a_new_one_takes_over() -> None:
    """A fenced producer (fatal): no abort on it, dropped; a new producer with the same id redoes the batch."""
    h = Harness(records=5)
    h.producer_faults.append({"commit_transaction": [fatal(KafkaError._FENCED)]})
    h.run_until_drained()
    first, second = h.producers
    assert first.dead and "abort_transaction" not in first.calls
    assert second.calls[0] == "init_transactions"
    assert first.config["transactional.id"] == second.config["transactional.id"] == "g-w1"
    assert h.runner.stats.fenced == 1 and h.runner.stats.producers == 2
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 20


def test_fatal_error_on_produce_drops_the_producer() -> None:
    """A fatal error raised by produce (not only by commit) is handled the same way, never a dead worker."""
    h = Harness(records=3)
    h.producer_faults.append({"produce": [fatal(KafkaError._FATAL)]})
    h.run_until_drained()
    assert len(h.producers) == 2 and h.producers[0].dead
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 12


def test_failed_abort_drops_the_producer() -> None:
    """If abort_transaction itself fails, the producer is replaced instead of reused."""
    h = Harness(records=2)
    h.producer_faults.append({"commit_transaction": [abortable()], "abort_transaction": [fatal()]})
    h.run_until_drained()
    assert len(h.producers) == 2
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 8


def test_unflagged_error_is_treated_as_fatal_for_the_producer() -> None:
    """An error neither retriable, abortable nor fatal is handled as fatal (librdkafka's advice)."""
    h = Harness(records=2)
    from confluent_kafka import KafkaException

    h.producer_faults.append({"begin_transaction": [KafkaException(KafkaError(KafkaError._STATE, "odd"))]})
    h.run_until_drained()
    assert len(h.producers) == 2
    assert max(h.delivered().values()) == 1


def _lose_everything_mid_batch(h: Harness, *, client_rejoined: bool) -> None:
    """While the first batch is processed, its partitions go to another member in generation 2
    (``client_rejoined``: this client's background thread already joined that generation too);
    the loss is served by the next consume."""

    def arm(c: FakeConsumer) -> None:
        original = h.pipeline.process

        def process(record: Any) -> Any:
            if h.broker.generation == 1:
                h.broker.generation = 2
                if client_rejoined:
                    c.generation = 2
                c.pending_assign = []
                c.before_consume.append(lambda c2: c2.revoke_now([(IN, 0), (IN, 1)], lost=True))
            return original(record)

        h.pipeline.process = process  # type: ignore[method-assign]

    h.consumer.before_consume.append(arm)


def test_zombie_offsets_refused_by_generation_abort_and_leave_the_partition() -> None:
    """A zombie: its partitions moved to a newer generation while it processed; its offsets are
    refused (KIP-447), it aborts, commits nothing, and processes nothing more once the loss is served."""
    h = Harness(records=4)
    _lose_everything_mid_batch(h, client_rejoined=False)
    h.run_polls(4)
    assert h.broker.committed_outputs == [] and h.broker.offsets == {}
    assert "abort_transaction" in h.producers[0].calls
    assert len(h.pipeline.processed) == 8, "after the loss (served by the next consume) nothing is reprocessed"
    assert h.runner._owned == set()
    assert h.runner.stats.aborts == 1


def test_permanent_delivery_error_stops_with_topic_partition_offset_and_cause() -> None:
    """A record too large for its topic: abort, then RunnerFatal naming source coordinates and cause."""
    h = Harness(records=3)

    def too_large(topic: str, partition: int) -> KafkaError | None:
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large") if topic == "out.b" else None

    original = h._producer

    def producer(config: dict[str, Any]) -> FakeProducer:
        p = original(config)
        p.fail_delivery = too_large
        return p

    h.runner._producer_factory = producer
    with pytest.raises(RunnerFatal) as caught:
        h.run_until_drained()
    message = str(caught.value)
    assert "MSG_SIZE_TOO_LARGE" in message
    assert f"{IN}[0]@0" in message
    assert "to out.b[" in message
    assert "abort_transaction" in h.producers[0].calls
    assert h.broker.committed_outputs == [] and h.broker.offsets == {}


def test_permanent_error_raised_by_produce_stops_the_runner() -> None:
    """A record the producer refuses locally (too large for message.max.bytes) stops, never loops."""
    from confluent_kafka import KafkaException

    h = Harness(records=2)
    h.producer_faults.append({"produce": [KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too big"))]})
    with pytest.raises(RunnerFatal, match=r"MSG_SIZE_TOO_LARGE"):
        h.run_until_drained()
    assert h.runner.stats.transactions == 0


def test_retriable_commit_error_retries_the_commit_without_abort() -> None:
    """A retriable commit timeout: the commit is called again; nothing is aborted or reprocessed."""
    h = Harness(records=2)
    h.producer_faults.append({"commit_transaction": [retriable()]})
    h.run_until_drained()
    calls = h.producers[0].calls
    assert calls.count("commit_transaction") == 2 and "abort_transaction" not in calls
    assert h.runner.stats.aborts == 0 and len(h.pipeline.processed) == 4


def test_registry_outage_opens_no_transaction_and_retries_the_batch_after_backoff() -> None:
    """A registry outage: no transaction begun, the batch sought back and retried with growing backoff."""
    h = Harness(records=2)
    h.pipeline.errors = [RegistryError("down"), RegistryError("down")]
    h.run_until_drained()
    assert h.producers[0].calls.count("begin_transaction") == 1
    assert h.runner.stats.registry_retries == 2
    assert h.sleeps == [0.1, 0.2]
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 8


def test_buffer_full_polls_and_retries_the_produce() -> None:
    """BufferError (local queue full) is served by poll() and the record produced again."""
    h = Harness(records=1)
    h.producer_faults.append({"produce": [BufferError("full")]})
    h.run_until_drained()
    assert "poll" in h.producers[0].calls
    assert len(h.delivered()) == 4 and max(h.delivered().values()) == 1


def test_fatal_consumer_error_replaces_the_consumer_and_goes_on() -> None:
    """One fatal consumer error (librdkafka's spurious fence of a static member rejoining after its
    session expired, e.g. across a broker restart): the consumer is closed, a new one joins, the
    partitions come back from their committed offsets, and every output is committed once."""
    h = Harness(records=3)
    h.consumer.before_consume.append(lambda c: None)
    h.consumer.before_consume.append(
        lambda c: c.errors.append(KafkaError(KafkaError._FATAL, "Static consumer fenced", fatal=False))
    )
    h.run_until_drained()
    assert h.consumer.subscriptions == 2
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 12
    assert h.runner.stats.transactions >= 1


def test_repeated_fatal_consumer_errors_stop_naming_the_instance_id() -> None:
    """Fenced again and again (another live process with the same group.instance.id): RunnerFatal."""
    h = Harness(records=1)
    fenced = KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True)
    h.consumer.errors.extend([fenced] * 10)

    def again(c: FakeConsumer) -> None:
        c.errors.extend([fenced])

    original = h.consumer.subscribe

    def subscribe(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        h.consumer.before_consume.append(again)

    h.consumer.subscribe = subscribe  # type: ignore[method-assign]
    with pytest.raises(RunnerFatal, match=r"4 times in 600 s.*group\.instance\.id 'w1'"):
        h.run_until_drained()
    assert h.consumer.subscriptions == 4
    assert h.sleeps == [0.1, 0.2, 0.4], "backed off between rejoins"


def test_revoked_and_reassigned_in_one_poll_restarts_from_committed_offset() -> None:
    """Records of a partition revoked and assigned again within one consume are dropped; the
    partition restarts from its committed offset, so nothing is produced twice."""
    h = Harness(records=4)
    h.broker.offsets[(IN, 0)] = 2

    def churn(c: FakeConsumer) -> None:
        c.revoke_now([(IN, 0)])
        c.assign_now([(IN, 0)])
        c.positions[(IN, 0)] = 3  # whatever was fetched before: untrusted

    h.consumer.before_consume.append(lambda c: None)
    h.consumer.before_consume.append(churn)
    h.run_until_drained()
    assert (IN, 0, 2) in h.consumer.seeks
    assert max(h.delivered().values()) == 1
    assert len(h.delivered()) == 2 * (2 + 4)


def test_at_least_once_produces_flushes_then_commits_offsets() -> None:
    """at_least_once: no transactions; offsets are committed only after every delivery succeeded."""
    h = Harness(records=3, guarantee="at_least_once")
    h.run_until_drained()
    calls = h.producers[0].calls
    assert "begin_transaction" not in calls and "init_transactions" not in calls
    assert "transactional.id" not in h.producers[0].config
    assert h.consumer.commits and h.broker.offsets == {(IN, 0): 3, (IN, 1): 3}


def test_batch_size_bounds_each_transaction() -> None:
    """No transaction holds more than batch_size input records."""
    h = Harness(records=5, batch_size=3)
    h.run_until_drained()
    assert h.runner.stats.transactions == 4  # 10 records: 1 + 2, 3, 3, 1 (first consume takes 1, then 2)
    assert h.runner.stats.records == 10


def test_stop_cuts_a_backoff_short() -> None:
    """Without an injected sleep, backoff waits on the stop event, so stop() ends it at once."""
    runner = Runner(Settings(), cast(Pipeline, FakePipeline()), PARTITIONS)
    runner.stop()
    assert runner._sleep(30.0) is True


def test_runner_thread_exits_the_process_with_status_70_on_fatal() -> None:
    """A RunnerFatal in the thread ends the process with EXIT_FATAL (injected exit)."""

    class Failing:
        stopping = False

        def run(self) -> None:
            raise RunnerFatal("permanent produce error")

    codes: list[int] = []
    run_runner_thread(cast(Runner, Failing()), exit_process=codes.append)
    assert codes == [EXIT_FATAL] == [70]


def test_runner_thread_returns_quietly_after_stop() -> None:
    """A runner that returns because it was stopped does not exit the process."""

    class Stopped:
        stopping = True

        def run(self) -> None:
            return None

    codes: list[int] = []
    run_runner_thread(cast(Runner, Stopped()), exit_process=codes.append)
    assert codes == []


def test_listener_counts_only_committed_batches() -> None:
    """The listener hears about a batch once, when it commits; an aborted attempt is an abort, not a count."""

    class Recorder:
        def __init__(self) -> None:
            self.committed_records = 0
            self.committed_outputs = 0
            self.aborts = 0
            self.fences = 0
            self.polls = 0

        def committed(self, records: Any, outputs: Any) -> None:
            self.committed_records += len(records)
            self.committed_outputs += len(outputs)

        def aborted(self) -> None:
            self.aborts += 1

        def fenced(self) -> None:
            self.fences += 1

        def polled(self) -> None:
            self.polls += 1

        def assigned(self, owned: Any, member: bool = True) -> None:
            self.owned = list(owned)

        def lagged(self, lags: Any) -> None:
            self.lags = dict(lags)

    h = Harness(records=3)
    recorder = Recorder()
    h.runner.listener = recorder
    h.producer_faults.append({"commit_transaction": [abortable(), fatal(KafkaError.PRODUCER_FENCED)]})
    h.run_until_drained()
    assert (recorder.committed_records, recorder.committed_outputs) == (6, 12)
    assert recorder.aborts == 2 and recorder.fences == 1 and recorder.polls >= 3


def test_a_partition_set_aside_then_revoked_is_resumed() -> None:
    """A paused (set-aside) partition that is revoked has its pause lifted: librdkafka would keep it
    across a later re-assignment, and the partition would never be fetched again."""
    h = Harness(records=2)
    h.pipeline.waiting = {(IN, 1): 10_000}  # its lookup never ends while it is owned here

    polls = 0
    original = h.consumer.consume

    def consume(num_messages: int = 1, timeout: float = -1) -> list[Any]:
        nonlocal polls
        polls += 1
        if polls > 6:
            h.runner.stop()
            return []
        if polls == 4 and (IN, 1) in h.consumer.owned:
            h.consumer.revoke_now([(IN, 1)])
        return original(num_messages, timeout)

    h.consumer.consume = consume  # type: ignore[method-assign]
    h.runner.run()
    assert ("pause", (IN, 1)) in h.consumer.pauses
    assert h.consumer.pauses[-1] == ("resume", (IN, 1))
    assert (IN, 1) not in h.consumer.paused


def test_send_offsets_timeout_aborts_instead_of_calling_again() -> None:
    """A timed-out send_offsets_to_transaction is never called again in the same transaction
    (librdkafka cannot resume it): the transaction is aborted and the batch redone once."""
    h = Harness(records=2)
    h.producer_faults.append({"send_offsets_to_transaction": [retriable()]})
    h.run_until_drained()
    calls = h.producers[0].calls
    assert calls[: calls.index("abort_transaction")].count("send_offsets_to_transaction") == 1
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 8


def test_offsets_are_fenced_by_the_generation_the_batch_was_read_in() -> None:
    """librdkafka rejoins in its own thread: while a zombie's batch is processed its client may
    already hold the new generation (the loss not yet served). The offsets must carry the
    generation of the poll that returned the records, so the coordinator refuses them; with
    the commit-time generation they would be accepted and the batch committed twice."""
    h = Harness(records=4)
    _lose_everything_mid_batch(h, client_rejoined=True)
    h.run_polls(4)
    assert h.broker.committed_outputs == [] and h.broker.offsets == {}
    assert "abort_transaction" in h.producers[0].calls
    assert h.runner.stats.aborts == 1


def test_a_batch_read_outside_any_generation_is_never_produced() -> None:
    """Metadata with generation -1 (no member of any generation) would not be fenced by the
    coordinator: such a batch begins no transaction; it is sought back and read again later."""
    h = Harness(records=3)
    h.first_poll_unjoined()
    h.run_until_drained()
    assert h.producers[0].calls.count("begin_transaction") == 1, "only the batch read in a generation is begun"
    assert (IN, 0, 0) in h.consumer.seeks or (IN, 1, 0) in h.consumer.seeks
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 2 * 6


def test_group_generation_reads_librdkafka_metadata() -> None:
    """The generation is read from librdkafka's serialised metadata (forms captured from
    confluent-kafka 2.16 against Kafka 4.4); anything else is unknown (None)."""
    static = b"CGMDv2:\x01\x00\x00\x00probe-g\x00inst-probe-7e1f\x00\x00inst-probe\x00"
    assert group_generation(static) == 1
    assert group_generation(b"CGMDv2:\xff\xff\xff\xffprobe-g2\x00\x00\x01") == -1
    assert group_generation(b"CGMDv2:\x01") is None
    assert group_generation(b"something else") is None
    assert group_generation(7) is None


def test_a_timed_out_delivery_aborts_with_the_same_producer() -> None:
    """A delivery report's error (e.g. _MSG_TIMED_OUT after a pause) carries no transaction flags;
    the transaction is still abortable: abort it with the same producer, rewind and redo, rather
    than abandon an open transaction that blocks read_committed readers until it times out."""
    h = Harness(records=2)
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
    h.runner._producer = h._producer({})
    h.runner._owned = {(IN, 0)}
    producer = h.producers[0]
    batch = Batch(first={(IN, 0): 0}, next={(IN, 0): 2})
    h.runner._failed(h.consumer, batch, producer, timed_out, [Failure(cast(Any, None), "out.a", 0, timed_out)])
    assert producer.calls[-1] == "abort_transaction"
    assert h.runner._producer is producer, "the producer is kept"
    assert (IN, 0, 0) in h.consumer.seeks


def test_three_failed_transactions_in_a_row_retire_the_producer() -> None:
    """A producer whose transactions keep timing out (its coordinator link stuck since a broker
    restart) is replaced after three aborts in a row; the batch still commits once, later."""
    h = Harness(records=3)
    h.producer_faults.append({"commit_transaction": [abortable(), abortable(), abortable()]})
    h.run_until_drained()
    assert len(h.producers) == 2, "a fresh producer took over after the third abort"
    assert h.producers[0].calls.count("abort_transaction") == 3
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 2 * 6


def test_group_refusals_in_a_row_keep_the_producer() -> None:
    """Offsets refused because the group moved on (a rebalance storm) say nothing about the
    producer's connections: the same producer stays, however many come in a row."""
    h = Harness(records=3)
    refused = [abortable(KafkaError.ILLEGAL_GENERATION) for _ in range(5)]
    h.producer_faults.append({"commit_transaction": refused})
    h.run_until_drained()
    assert len(h.producers) == 1
    assert max(h.delivered().values()) == 1


def test_a_transaction_call_blocked_past_its_deadline_retires_the_producer() -> None:
    """send_offsets_to_transaction stuck past its timeout (librdkafka #5456, seen after a broker
    restart): the runner gives up on that producer instead of hanging with it; a new producer
    (same transactional.id, so the stuck one is fenced) commits the batch once."""
    import threading

    h = Harness(records=3)
    release = threading.Event()
    h.runner._txn_timeout_s = 0.05
    h.runner._calls = BoundedCalls(grace_s=0.05)

    def never_returns(made: FakeProducer) -> None:  # the first producer's send_offsets never returns
        made.send_offsets_to_transaction = lambda *a, **k: release.wait(30)  # type: ignore[method-assign]

    h.change_first_producer(never_returns)
    try:
        h.run_until_drained()
    finally:
        release.set()
    assert len(h.producers) == 2
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 2 * 6


def test_bounded_calls_pass_results_and_errors_through() -> None:
    """A call that returns or raises in time behaves as if called directly."""
    calls = BoundedCalls(grace_s=1.0)
    seen: list[int] = []
    calls.run(lambda abandoned: seen.append(1), 1.0)
    assert seen == [1]
    with pytest.raises(KafkaException) as raised:
        calls.run(lambda abandoned: (_ for _ in ()).throw(abortable()), 1.0)
    assert raised.value.args[0].txn_requires_abort()


def test_a_commit_that_reached_the_broker_then_hung_is_not_redone() -> None:
    """EndTxn(commit) reached the coordinator, then the call hangs (broker restart, librdkafka
    #5511): the outcome is unknown, so the batch is not rewound and produced again; its partitions
    restart from the committed offsets (the commit's), and every output is there once."""
    import threading

    h = Harness(records=3, batch_size=2)
    release = threading.Event()
    h.runner._txn_timeout_s = 0.05
    h.runner._calls = BoundedCalls(grace_s=0.05)

    def commit_then_hang(made: FakeProducer) -> None:
        real = made.commit_transaction

        def commit(timeout: float = -1) -> None:
            real(timeout)  # the coordinator committed it ...
            release.wait(30)  # ... but the answer never comes

        made.commit_transaction = commit  # type: ignore[method-assign]

    h.change_first_producer(commit_then_hang)
    try:
        h.run_until_drained()
    finally:
        release.set()
    assert len(h.producers) == 2
    assert max(h.delivered().values()) == 1, h.delivered().most_common(3)
    assert len(h.delivered()) == 2 * 6


def _commits_then_times_out(made: FakeProducer) -> None:
    """The first commit lands at the coordinator yet every call reports a retriable timeout, and
    librdkafka refuses to abort a transaction whose commit is in progress."""
    real, calls = made.commit_transaction, [0]

    def commit(timeout: float = -1) -> None:
        calls[0] += 1
        if calls[0] == 1:
            real(timeout)
        raise retriable()

    def abort(timeout: float = -1) -> None:
        raise KafkaException(KafkaError(KafkaError._STATE, "commit in progress"))

    made.commit_transaction = commit  # type: ignore[method-assign]
    made.abort_transaction = abort  # type: ignore[method-assign]


def test_commit_timeouts_that_did_commit_are_not_redone() -> None:
    """commit_transaction times out (retriable) three times although the coordinator committed;
    librdkafka then refuses abort_transaction (the commit is in progress): the producer goes and
    the partitions restart from the committed offsets, so nothing is delivered twice."""
    h = Harness(records=3, batch_size=2)
    h.change_first_producer(_commits_then_times_out)
    h.run_until_drained()
    assert len(h.producers) == 2
    assert max(h.delivered().values()) == 1, h.delivered().most_common(3)
    assert len(h.delivered()) == 2 * 6


def test_without_an_instance_id_each_new_producer_of_a_runner_fences_the_last() -> None:
    """Dynamic membership: the transactional.id is drawn once per runner, so a producer replaced
    after a timeout is fenced by its successor (a fresh id per producer would fence nothing and
    let the old transaction commit after its batch was redone); another runner draws another."""
    h = Harness()
    settings = Settings(app_id="g", processing_guarantee="exactly_once")

    def runner() -> Runner:
        return Runner(
            settings,
            cast(Pipeline, h.pipeline),
            PARTITIONS,
            consumer_factory=h._consumer,
            producer_factory=h._producer,
            sleep=h.sleeps.append,
        )

    first = runner()
    first._open_producer()
    first._open_producer()
    runner()._open_producer()
    ids = [p.config["transactional.id"] for p in h.producers]
    assert ids[0] == ids[1] != ids[2] and ids[0].startswith("g-dynamic-")


def test_an_abandoned_transaction_call_does_not_hold_up_the_process_exit() -> None:
    """The stuck call's thread is a daemon: after giving up on it, the process still exits at once
    (a SIGTERMed worker must not hang on a call librdkafka never returns from)."""
    import subprocess
    import sys

    script = (
        "import threading\n"
        "from confluent_kafka import KafkaException\n"
        "from streams.kafka.batches import BoundedCalls\n"
        "try:\n"
        "    BoundedCalls(grace_s=0.05).run(lambda abandoned: threading.Event().wait(), 0.05)\n"
        "except KafkaException as exc:\n"
        "    assert exc.args[0].fatal()\n"
        "    print('gave up')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "gave up", done.stderr


class _RecordingCells:
    """The small-cell stage's runner interface, recording what the runner asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def guard_batch(self, consumer: Any, owned: Any, batch: Any, work: Any, timeout: float) -> Any:
        self.calls.append("guard")
        return work

    def metadata(self, partition: int) -> str:
        return "smallcell1:0"

    def committed(self, batch: Any) -> None:
        self.calls.append("committed")

    def aborted(self) -> None:
        self.calls.append("aborted")

    def forget(self, partitions: Any) -> None:
        self.calls.append("forget")

    def due(self, partitions: Any) -> bool:
        return False


def test_a_guarded_batch_that_is_not_begun_rolls_the_guard_back() -> None:
    """The guard admits a batch before the runner decides it may commit; a batch refused then
    (read outside any generation, or chain heads unreadable) must roll the guard back, or its
    re-read views are counted twice and its entry numbers leave a gap no owner can rebuild."""
    h = Harness(records=3)
    cells = _RecordingCells()
    h.runner.small_cells = cells  # type: ignore[assignment]
    h.first_poll_unjoined()
    h.run_until_drained()
    assert cells.calls[:3] == ["guard", "aborted", "guard"], cells.calls
    assert cells.calls.count("committed") == 1
    assert max(h.delivered().values()) == 1


def test_a_failed_committed_read_never_restarts_a_partition_from_its_beginning() -> None:
    """After an unknown outcome the partitions restart from their committed offsets; a per-partition
    error in that read (offset -1001: unknown, not "nothing committed") keeps them set aside and
    retried, instead of seeking to the log start and committing the partition a second time."""
    from types import SimpleNamespace

    h = Harness(records=3, batch_size=2)
    h.change_first_producer(_commits_then_times_out)
    real_committed, failures = h.consumer.committed, [1]

    def committed(partitions: list[Any], timeout: float = -1) -> list[Any]:
        if failures:
            failures.pop()
            error = KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
            return [
                SimpleNamespace(topic=p.topic, partition=p.partition, offset=-1001, error=error) for p in partitions
            ]
        return real_committed(partitions, timeout)

    h.consumer.committed = committed  # type: ignore[method-assign]
    h.run_until_drained()
    assert not failures, "the failing read happened"
    assert max(h.delivered().values()) == 1, h.delivered().most_common(3)
    assert len(h.delivered()) == 2 * 6
