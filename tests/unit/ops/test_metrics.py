"""Unit tests of worker metrics and health (streams.ops): counts move at commit only, probes follow the heartbeat."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streams.ops.health import Health
from streams.ops.metrics import WorkerMetrics, tally
from streams.pipeline import H_CODE, H_RECIPIENT, InputRecord, OutputRecord

RECIPIENTS = ("ars", "cnam", "spf")


def _inputs(n: int, ts: int = 1_000) -> list[InputRecord]:
    return [InputRecord("in", 0, i, None, b"v", (), ts) for i in range(n)]


def _out(recipient: str) -> OutputRecord:
    return OutputRecord("t", b"k", b"v", ((H_RECIPIENT, recipient.encode()),), b"k")


def _dead(code: str) -> OutputRecord:
    return OutputRecord("dlq", None, b"v", ((H_CODE, code.encode()),), b"r", dead_letter=True)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_tally_counts_recipients_and_dead_letters_and_derives_filtered() -> None:
    """10 inputs, 2 dead letters: 8 valid; spf 8, cnam 1, ars 1 delivered; filtered = valid - delivered."""
    outputs = [*(_out("spf") for _ in range(8)), _out("cnam"), _out("ars"), _dead("not_framed"), _dead("bad_magic")]
    registry = CollectorRegistry()
    metrics = WorkerMetrics(RECIPIENTS, registry)
    metrics.committed(tally(_inputs(10), outputs), now_ms=1_250)
    assert _value(registry, "screening_events_consumed_total") == 10
    assert _value(registry, "screening_delivered_total", recipient="spf") == 8
    assert _value(registry, "screening_filtered_total", recipient="spf") == 0
    assert _value(registry, "screening_filtered_total", recipient="cnam") == 7
    assert _value(registry, "screening_dead_letters_total", reason="not_framed") == 1
    assert _value(registry, "screening_transactions_total", outcome="committed") == 1
    assert _value(registry, "screening_end_to_end_latency_seconds_count") == 10
    assert _value(registry, "screening_end_to_end_latency_seconds_bucket", le="0.25") == 10
    assert _value(registry, "screening_end_to_end_latency_seconds_bucket", le="0.1") == 0


def test_an_aborted_batch_counts_once_when_it_finally_commits() -> None:
    """Abort then commit of the same batch: consumed and delivered count it once, aborts once."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(RECIPIENTS, registry)
    batch = tally(_inputs(3), [_out("spf")] * 3)
    metrics.aborted()
    metrics.committed(batch, now_ms=2_000)
    assert _value(registry, "screening_events_consumed_total") == 3
    assert _value(registry, "screening_delivered_total", recipient="spf") == 3
    assert _value(registry, "screening_transactions_total", outcome="aborted") == 1
    assert _value(registry, "screening_transactions_total", outcome="committed") == 1


def test_every_series_exists_from_the_start_and_labels_hold_no_record_data() -> None:
    """Recipients' series are exported at 0 before any event; the exposition names only recipients and codes."""
    metrics = WorkerMetrics(RECIPIENTS)
    text = metrics.render().decode()
    for name in RECIPIENTS:
        assert f'screening_delivered_total{{recipient="{name}"}} 0.0' in text
    metrics.set_lag(2, 41)
    metrics.registry_lookup("miss")
    metrics.fenced_producer()
    text = metrics.render().decode()
    assert 'screening_consumer_lag{partition="2"} 41.0' in text
    assert 'screening_registry_cache_total{result="miss"} 1.0' in text
    assert "screening_fenced_producers_total 1.0" in text
    metrics.forget_partition(2)
    metrics.forget_partition(2)  # twice is harmless
    assert 'partition="2"' not in metrics.render().decode()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        """Start at 100 s."""
        self.now = 100.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def test_liveness_follows_the_heartbeat_and_readiness_needs_an_assignment() -> None:
    """Not live before the first beat or after a stale one; ready only when live, assigned and not stopping."""
    clock = FakeClock()
    health = Health(stale_after_s=30, clock=clock)
    assert health.liveness().status == 503 and health.readiness().status == 503
    health.beat()
    assert health.liveness().status == 200
    assert health.readiness().status == 503
    health.set_ready(True)
    assert health.readiness().status == 200
    clock.now += 31
    assert health.liveness().status == 503 and "old" in health.liveness().reason
    assert health.readiness().status == 503
    health.beat()
    assert health.readiness().status == 200
    health.stopping()
    assert health.readiness().status == 503 and health.liveness().status == 200


def test_a_worker_that_lost_its_partitions_is_not_ready_until_it_joins_again() -> None:
    """Readiness follows membership: a revocation keeps the worker in the group (ready, even with
    no partitions), a loss (fenced, session expired) makes it unready until the next assignment."""
    from streams.ops.listener import OpsListener

    clock = FakeClock()
    health = Health(stale_after_s=30, clock=clock)
    listener = OpsListener(WorkerMetrics(["cnam"], CollectorRegistry()), health)
    listener.polled()
    listener.assigned([0, 1])
    assert health.readiness().status == 200
    listener.assigned([1])  # a cooperative revocation of partition 0
    assert health.readiness().status == 200
    listener.assigned([], member=False)  # lost
    assert health.readiness().status == 503
    listener.assigned([0, 1])
    assert health.readiness().status == 200
