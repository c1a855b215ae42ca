"""The runner's listener that feeds metrics and health (``streams.kafka.clients.RunnerListener``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from streams.ops.health import Health
from streams.ops.metrics import WorkerMetrics, tally
from streams.pipeline import InputRecord, OutputRecord


class OpsListener:
    """Counts committed batches, aborts and fencings; beats the heartbeat on every poll."""

    def __init__(
        self, metrics: WorkerMetrics, health: Health, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    ) -> None:
        """Feed ``metrics`` and ``health``; ``clock_ms`` dates commits (end-to-end latency)."""
        self.metrics = metrics
        self.health = health
        self._clock_ms = clock_ms

    def committed(self, records: Sequence[InputRecord], outputs: Sequence[OutputRecord]) -> None:
        """A batch committed: count it now, never before."""
        self.metrics.committed(tally(records, outputs), self._clock_ms())

    def aborted(self) -> None:
        """A transaction failed; its batch will be counted when it commits."""
        self.metrics.aborted()

    def fenced(self) -> None:
        """A producer was fenced and replaced."""
        self.metrics.fenced_producer()

    def polled(self) -> None:
        """The loop went round."""
        self.health.beat()

    def assigned(self, owned: Sequence[int], member: bool = True) -> None:
        """The group gave this worker ``owned`` ingress partitions (possibly none): it is ready;
        after a loss (``member`` False: fenced, session expired) it is not until it joins again."""
        self.health.set_ready(member)
        self.metrics.owned(owned)

    def lagged(self, lags: Mapping[int, int]) -> None:
        """Lag per owned partition, from the consumer's statistics."""
        for partition, lag in lags.items():
            self.metrics.set_lag(partition, lag)
