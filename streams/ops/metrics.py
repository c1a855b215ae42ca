"""Prometheus metrics of a worker, counted when a transaction commits, never before.

The runner computes a :class:`Tally` of each batch (pure: from the batch's inputs and outputs)
and hands it to :meth:`WorkerMetrics.committed` only after the transaction holding those
outputs has committed; an aborted batch is reprocessed and counted once, when it finally
commits. Labels carry recipients, agencies and reason codes only, never record contents.
The registry is injected, so tests read exact values without a global.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

from streams.pipeline import H_CODE, H_RECIPIENT, InputRecord, OutputRecord

#: End-to-end latency buckets (seconds), from ingress timestamp to transaction commit.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Tally:
    """What one batch will have done once committed."""

    consumed: int = 0
    valid: int = 0
    delivered: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    ingress_timestamps_ms: list[int] = field(default_factory=list)


def tally(inputs: Sequence[InputRecord], outputs: Iterable[OutputRecord]) -> Tally:
    """Count a batch: inputs, delivered records per recipient, dead letters per reason code."""
    result = Tally(consumed=len(inputs))
    for out in outputs:
        headers = dict(out.headers)
        if out.dead_letter:
            result.dead_letters[headers.get(H_CODE, b"unknown").decode()] += 1
        elif H_RECIPIENT in headers:  # agency records (key-topic records carry no recipient)
            result.delivered[headers[H_RECIPIENT].decode()] += 1
    result.valid = result.consumed - sum(result.dead_letters.values())
    result.ingress_timestamps_ms = [r.timestamp_ms for r in inputs if r.timestamp_ms is not None]
    return result


class WorkerMetrics:
    """The worker's metrics in one registry (served on the web port as ``/metrics``)."""

    def __init__(self, recipients: Sequence[str], registry: CollectorRegistry | None = None) -> None:
        """Create every series; ``recipients`` get their delivered/filtered series at 0 from the start."""
        self.registry = registry or CollectorRegistry()
        self.recipients = tuple(recipients)
        r = self.registry
        self.consumed = PromCounter("screening_events_consumed", "Ingress records committed as processed.", registry=r)
        self.delivered = PromCounter(
            "screening_delivered", "Agency records committed, per recipient.", ["recipient"], registry=r
        )
        self.filtered = PromCounter(
            "screening_filtered",
            "Valid events a recipient's policy did not take, per recipient.",
            ["recipient"],
            registry=r,
        )
        self.dead_letters = PromCounter(
            "screening_dead_letters", "Dead letters committed, per reason code.", ["reason"], registry=r
        )
        self.transactions = PromCounter(
            "screening_transactions", "Transactions, by outcome (committed, aborted).", ["outcome"], registry=r
        )
        self.fenced = PromCounter("screening_fenced_producers", "Producers fenced by a newer owner.", registry=r)
        self.latency = Histogram(
            "screening_end_to_end_latency_seconds",
            "From the ingress record's timestamp to the commit of its outputs.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge("screening_consumer_lag", "Records behind the partition's end.", ["partition"], registry=r)
        self.registry_lookups = PromCounter(
            "screening_registry_cache",
            "Writer-schema lookups, by result (hit, miss, negative).",
            ["result"],
            registry=r,
        )
        self.owned_partitions = Gauge("screening_owned_partitions", "Ingress partitions this worker owns.", registry=r)
        self.schema_lookups = Gauge(
            "screening_registry_requests", "Writer-schema requests made to the registry (cache misses).", registry=r
        )
        for name in self.recipients:
            self.delivered.labels(name)
            self.filtered.labels(name)
        for outcome in ("committed", "aborted"):
            self.transactions.labels(outcome)

    def committed(self, batch: Tally, now_ms: int) -> None:
        """Count a batch whose transaction has committed at ``now_ms``."""
        self.consumed.inc(batch.consumed)
        for name in self.recipients:
            got = batch.delivered.get(name, 0)
            if got:
                self.delivered.labels(name).inc(got)
            # One view per recipient and valid event, so the rest were filtered out (or not routed).
            self.filtered.labels(name).inc(max(batch.valid - got, 0))
        for code, count in batch.dead_letters.items():
            self.dead_letters.labels(code).inc(count)
        self.transactions.labels("committed").inc()
        for ts in batch.ingress_timestamps_ms:
            self.latency.observe(max(now_ms - ts, 0) / 1000)

    def aborted(self) -> None:
        """Count an aborted transaction (its batch will be counted when it commits)."""
        self.transactions.labels("aborted").inc()

    def fenced_producer(self) -> None:
        """Count a producer fenced by a newer owner of the same transactional id or generation."""
        self.fenced.inc()

    def set_lag(self, partition: int, lag: int) -> None:
        """Record the consumer lag of one ingress partition."""
        self.lag.labels(str(partition)).set(lag)

    def forget_partition(self, partition: int) -> None:
        """Drop the lag series of a partition this worker no longer owns."""
        with contextlib.suppress(KeyError):
            self.lag.remove(str(partition))

    def registry_lookup(self, result: str, count: int = 1) -> None:
        """Count writer-schema lookups: ``hit``, ``miss`` (asked the registry) or ``negative`` (cached unknown)."""
        if count:
            self.registry_lookups.labels(result).inc(count)

    def owned(self, partitions: Sequence[int]) -> None:
        """Record which ingress partitions this worker owns (lag series of the others are dropped)."""
        self.owned_partitions.set(len(partitions))
        keep = {str(p) for p in partitions}
        for metric in self.lag.collect():
            for sample in metric.samples:
                if sample.labels["partition"] not in keep:
                    self.forget_partition(int(sample.labels["partition"]))

    def watch_registry(self, lookups: Callable[[], int]) -> None:
        """Export the resolver's request count (misses and negative-cache expiries) at scrape time."""
        self.schema_lookups.set_function(lambda: float(lookups()))

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)
