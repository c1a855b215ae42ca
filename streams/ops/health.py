"""Liveness and readiness of a worker, from the runner's heartbeat (pure; clock injected).

``/healthz`` answers 200 while the runner thread keeps polling (a heartbeat no older than
``stale_after_s``); a stuck or dead runner turns it 503, so an orchestrator restarts the
process. ``/readyz`` answers 200 once the runner has joined the group and initialised its
transactional producer, and 503 before that or while it is stopping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HealthStatus:
    """The answer of one probe: HTTP status and a one-line reason (no record data)."""

    status: int
    reason: str


class Health:
    """Thread-safe heartbeat shared by the runner thread (writer) and the web handlers (readers)."""

    def __init__(self, stale_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``stale_after_s``: how old the last heartbeat may be before the worker counts as stuck."""
        self._clock = clock
        self._stale = stale_after_s
        self._lock = threading.Lock()
        self._beat: float | None = None
        self._ready = False
        self._stopping = False

    def beat(self) -> None:
        """Called by the runner on every poll loop."""
        with self._lock:
            self._beat = self._clock()

    def set_ready(self, ready: bool) -> None:
        """Called once the group is joined and the producer initialised (False on revocation)."""
        with self._lock:
            self._ready = ready

    def stopping(self) -> None:
        """Called when the worker starts shutting down."""
        with self._lock:
            self._stopping, self._ready = True, False

    def liveness(self) -> HealthStatus:
        """200 while the runner's heartbeat is fresh; 503 before the first beat or once stale."""
        with self._lock:
            beat = self._beat
        if beat is None:
            return HealthStatus(503, "runner has not started polling")
        age = self._clock() - beat
        if age > self._stale:
            return HealthStatus(503, f"runner heartbeat is {age:.0f} s old (limit {self._stale:.0f} s)")
        return HealthStatus(200, "ok")

    def readiness(self) -> HealthStatus:
        """200 when live, joined and initialised, and not stopping."""
        live = self.liveness()
        if live.status != 200:
            return live
        with self._lock:
            ready, stopping = self._ready, self._stopping
        if stopping:
            return HealthStatus(503, "stopping")
        return HealthStatus(200, "ready") if ready else HealthStatus(503, "not yet assigned and initialised")
