"""Fault tests on the real broker: kill -9 the worker, restart the broker — nothing lost, nothing twice.

Marked ``fault`` (run them alone with ``pytest -m fault -s``; ``-s`` prints the per-trial
figures). Expected deliveries are derived in-process from the same events and keys; agency
topics are read with an independent ``read_committed`` consumer and counted by record key
(``event_ref``, unique per event and agency).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from streams.stack import lifecycle
from streams.stack.settings import Endpoints, StackSettings

from .conftest import Worker, audit_delivery, lag_retrying, make_env, publish_events

pytestmark = pytest.mark.fault


#: Static membership and a short session: a restarted worker takes its partitions back at once.
FAULT_ENV = {
    "SCREENING_INSTANCE_ID": "fault-worker",
    "SCREENING_SESSION_TIMEOUT_MS": "6000",
    "SCREENING_TRANSACTION_TIMEOUT_MS": "15000",  # a stuck transaction call is given up on after 2 x this + 10 s
}


def _report(name: str, figures: dict[str, Any]) -> None:
    print(f"\n[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_kill_minus_nine_five_times_loses_and_duplicates_nothing(stack: Endpoints, tmp_path: Path) -> None:
    """kill -9 of the worker at random moments of a 50 000-event backlog, 5 times: exactly once.

    Each restart uses the same group.instance.id (static membership), so it takes the killed
    worker's partitions back without waiting out the session, and its transactional.id, so its
    init_transactions aborts the transaction the killed process left open.
    """
    env = make_env(stack, tmp_path, "kill9")
    events = publish_events(env, 50_000, seed=9)
    rng = random.Random(99)
    kills = []
    lag = len(events)
    for trial in range(5):
        worker = Worker(env, tmp_path / f"worker{trial}.log", FAULT_ENV)
        # Wait until this worker makes progress (the group first waits for the killed member's
        # session to expire), then kill at a random moment while transactions are in flight.
        deadline = time.monotonic() + 120
        while (now := lag_retrying(env)) >= lag and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.5))
        lag = lag_retrying(env)
        worker.process.kill()  # SIGKILL: no shutdown hook runs
        worker.process.wait()
        kills.append(lag)
        _report(
            f"kill {trial + 1}", {"lag_when_progressing": now, "lag_at_kill": lag, "exit": worker.process.returncode}
        )
    final = Worker(env, tmp_path / "final.log", FAULT_ENV)
    try:
        env.drain(timeout_s=600)
    finally:
        assert final.stop() == 0, final.log()[-2000:]
    figures = audit_delivery(env, events)
    _report("kill -9 x5", figures)
    assert all(0 < lag < len(events) for lag in kills), f"every kill must happen mid-backlog: {kills}"
    assert len(set(kills)) == len(kills), f"every restart must make progress before the next kill: {kills}"
    assert figures["missing"] == 0 and figures["unexpected"] == 0
    assert figures["duplicated"] == 0
    assert figures["dead_lettered"] == 0


def test_broker_restart_mid_run_loses_and_duplicates_nothing(stack: Endpoints, tmp_path: Path) -> None:
    """Stopping and restarting the broker while the worker drains a backlog: exactly once."""
    if not stack.managed or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs the locally managed broker to restart it")
    env = make_env(stack, tmp_path, "restart")
    events = publish_events(env, 30_000, seed=21)
    worker = Worker(env, tmp_path / "worker.log", FAULT_ENV)
    settings = StackSettings.from_env(os.environ)
    try:
        deadline = time.monotonic() + 120  # stop the broker once the worker makes progress
        while lag_retrying(env) >= len(events) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        lag_before = lag_retrying(env)
        lifecycle.down(settings, only="kafka", echo=lambda line: None)
        time.sleep(3.0)
        lifecycle.up(settings, echo=lambda line: None)
        env.drain(timeout_s=600)
        assert worker.process.poll() is None, "the worker must survive a broker restart"
    finally:
        code = worker.stop()
    figures = audit_delivery(env, events)
    _report("broker restart", {"lag_at_stop": lag_before, **figures, "worker_exit": code})
    assert 0 < lag_before < len(events), "the broker must stop while the backlog is being processed"
    assert figures["missing"] == 0 and figures["unexpected"] == 0
    assert figures["duplicated"] == 0


def test_two_live_workers_with_one_instance_id_stop_instead_of_sharing_it(stack: Endpoints, tmp_path: Path) -> None:
    """Two live processes sharing a group.instance.id fence each other on every rejoin; after a few
    fences a worker stops (exit 70) naming the instance id, and nothing was duplicated meanwhile."""
    env = make_env(stack, tmp_path, "dupid")
    events = publish_events(env, 5_000, seed=31)
    first = Worker(env, tmp_path / "first.log", FAULT_ENV)
    second: Worker | None = None
    try:
        deadline = time.monotonic() + 120
        while lag_retrying(env) >= len(events) and time.monotonic() < deadline:
            time.sleep(0.2)
        second = Worker(env, tmp_path / "second.log", FAULT_ENV)
        deadline = time.monotonic() + 240
        while first.process.poll() is None and second.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        codes = {"first": first.process.poll(), "second": second.process.poll()}
    finally:
        first.stop()
        if second is not None:
            second.stop()
    stopped = [w for w in (first, second) if w is not None and w.process.returncode == 70]
    _report("one instance id, two processes", {**codes, "stopped": len(stopped)})
    assert stopped, f"neither worker stopped: {codes}"
    assert all("group.instance.id 'fault-worker'" in w.log() for w in stopped)
    final = Worker(env, tmp_path / "final.log", {**FAULT_ENV, "SCREENING_INSTANCE_ID": "fault-worker-2"})
    try:
        final.wait_ready()
        env.drain(timeout_s=240)
    finally:
        assert final.stop() == 0
    figures = audit_delivery(env, events)
    _report("one instance id, two processes: audit", figures)
    assert figures["missing"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0, figures
