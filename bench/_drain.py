"""Draining a backlog with one consumer process, sampled: committed lag, RSS and CPU (not a benchmark itself).

Used by ``backlog.py`` for both contenders (the worker and the transactional passthrough): every
~0.5 s it reads the group's committed lag (``streams.kafka.offsets.wait_for_lag_zero``), the
process's resident set (``VmRSS`` in ``/proc/<pid>/status``) and its CPU seconds, until lag zero.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _stack import cpu_seconds
from throughput import steady_rate

from streams.credentials import KafkaAuth
from streams.kafka.offsets import wait_for_lag_zero

MIB = 1 << 20
SAMPLE_SLEEP_S = 0.35  # plus the lag query itself (~0.1-0.2 s): one sample every ~0.5 s
PROGRESS_EVERY_S = 3.0
SMOOTH_S = 2.0


def rss_bytes(pid: int) -> int:
    """The resident set size of a live process (``VmRSS``), 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


@dataclass(frozen=True)
class Sample:
    """One sample: seconds since the process started, committed lag, RSS bytes, CPU seconds."""

    t: float
    lag: int
    rss: int
    cpu: float


@dataclass
class Drain:
    """One contender's drain of ``total`` records: its samples until lag zero, and what they give."""

    name: str
    total: int
    pid: int
    load_average: float  # 1-minute load average when it started
    samples: list[Sample] = field(default_factory=list)
    wall: float = float("nan")  # process start → lag zero seen, seconds
    cpu: float = 0.0  # the process's CPU seconds, start → lag zero
    broker_cpu: float = 0.0  # the broker's CPU seconds over the same span
    exit_code: int | None = None

    @property
    def steady(self) -> float:
        """Events/s between consuming 10 % and 90 % of the backlog (start-up excluded)."""
        return steady_rate([(s.t, s.lag) for s in self.samples], self.total)

    @property
    def to_lag_zero(self) -> float:
        """Events/s from process start to lag zero seen (start-up and the last commit included)."""
        return self.total / self.wall if self.wall > 0 else float("nan")

    @property
    def first(self) -> Sample | None:
        """The first sample after the process committed its first records."""
        return next((s for s in self.samples if s.lag < self.total), None)

    @property
    def rss_start(self) -> float:
        """RSS (MiB) at :attr:`first`."""
        return self.first.rss / MIB if self.first else float("nan")

    @property
    def rss_end(self) -> float:
        """RSS (MiB) at lag zero."""
        return self.samples[-1].rss / MIB if self.samples else float("nan")

    @property
    def rss_max(self) -> float:
        """The largest RSS (MiB) sampled."""
        return max(s.rss for s in self.samples) / MIB if self.samples else float("nan")

    def rates(self, window_s: float = SMOOTH_S) -> list[tuple[float, float]]:
        """``(t, events/s)``: the committed-lag decrease over ~``window_s`` before each sample (at the midpoint)."""
        out: list[tuple[float, float]] = []
        j = 0
        for i, s in enumerate(self.samples):
            while j + 1 < i and self.samples[j + 1].t <= s.t - window_s:
                j += 1
            prev = self.samples[j]
            if i > j and s.t - prev.t >= window_s * 0.75:
                out.append(((s.t + prev.t) / 2, (prev.lag - s.lag) / (s.t - prev.t)))
        return out

    def summary(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        first = self.first
        return {
            "events": self.total,
            "events_per_s_steady": self.steady,
            "events_per_s_start_to_lag_zero": self.to_lag_zero,
            "start_to_lag_zero_s": self.wall,
            "first_commit_s": first.t if first else None,
            "rss_mib": {"start": self.rss_start, "end": self.rss_end, "max": self.rss_max},
            "cpu_s": self.cpu,
            "broker_cpu_s": self.broker_cpu,
            "load_average_at_start": self.load_average,
            "exit_code": self.exit_code,
            "samples": [[round(s.t, 3), s.lag, s.rss, round(s.cpu, 3)] for s in self.samples],
        }


def drain(
    name: str,
    proc: subprocess.Popen[bytes],
    started: float,
    *,
    bootstrap: str,
    group: str,
    topic: str,
    auth: KafkaAuth,
    total: int,
    timeout_s: float,
    broker_pid: int | None = None,
    log: Path | None = None,
) -> Drain:
    """Sample ``proc`` (started at monotonic ``started``) and its group's lag on ``topic`` until lag zero.

    Prints a progress line every ~3 s; raises if the process exits first (naming ``log``).
    """
    result = Drain(name, total, proc.pid, os.getloadavg()[0])
    broker0 = cpu_seconds(broker_pid)
    last_line = [time.monotonic()]

    def sample(lag: int) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with {proc.returncode}; see {log}")
        now = time.monotonic()
        s = Sample(now - started, lag, rss_bytes(proc.pid), cpu_seconds(proc.pid))
        result.samples.append(s)
        if now - last_line[0] >= PROGRESS_EVERY_S or lag == 0:
            last_line[0] = now
            ref = next((x for x in reversed(result.samples) if x.t <= s.t - SMOOTH_S), result.samples[0])
            rate = (ref.lag - lag) / (s.t - ref.t) if s.t > ref.t else 0.0
            print(
                f"{name}: drained {total - lag:,}/{total:,}, {rate:,.0f} ev/s now, "
                f"RSS {result.samples[-1].rss / MIB:,.0f} MiB",
                flush=True,
            )

    wait_for_lag_zero(
        bootstrap,
        group,
        topic,
        auth=auth,
        timeout_s=timeout_s,
        sleep=lambda _s: time.sleep(SAMPLE_SLEEP_S),
        on_progress=sample,
    )
    result.wall = time.monotonic() - started
    result.cpu = cpu_seconds(proc.pid)
    result.broker_cpu = cpu_seconds(broker_pid) - broker0
    return result
