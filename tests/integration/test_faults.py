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
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition

from streams.assembly import load_policy_set
from streams.contracts.registry import HttpSchemaRegistry
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import KafkaIOError, group_lag, read_from
from streams.kafka.publish import event_encoder, framed_events
from streams.policy.engine import Minimiser
from streams.stack import lifecycle
from streams.stack.settings import Endpoints, StackSettings

from .conftest import Env, Worker, make_env

pytestmark = pytest.mark.fault


def _publish(env: Env, count: int, seed: int) -> list[dict[str, Any]]:
    events = list(generate_events(count, GeneratorSettings(seed=seed, positive_share=0.3)))
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    env.publish(framed_events(events, encoder))
    return events


def _audit(env: Env, events: list[dict[str, Any]]) -> dict[str, int]:
    """Compare what read_committed readers see with what the policies derive."""
    policy_set = load_policy_set(env.settings)
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, DEFAULT_GEOGRAPHY)
    expected = {
        (env.settings.topic_prefix + view.agency.topic, view.record["event_ref"].encode())
        for event in events
        for view in minimiser.apply(event)
    }
    outputs = [t for t in env.partitions if t not in (env.settings.ingress_topic, env.settings.audit_topic)]
    start = {TopicPartition(t, p): 0 for t in outputs for p in range(env.partitions[t])}
    records = read_from(env.settings.bootstrap_servers, start, idle_timeout_s=5.0)
    delivered = Counter((r.topic, r.key) for r in records if r.topic != env.settings.dlq_topic)
    return {
        "events": len(events),
        "expected": len(expected),
        "delivered": len(delivered),
        "missing": len(expected - set(delivered)),
        "unexpected": len(set(delivered) - expected),
        "duplicated": sum(n - 1 for n in delivered.values() if n > 1),
        "dead_lettered": sum(1 for r in records if r.topic == env.settings.dlq_topic),
    }


def _lag(env: Env) -> int:
    """The group's lag; the coordinator may be briefly unavailable while members come and go."""
    for _ in range(50):
        try:
            return group_lag(env.settings.bootstrap_servers, env.settings.group_id, env.settings.ingress_topic)
        except KafkaIOError:
            time.sleep(0.2)
    raise AssertionError("group offsets unreadable for 10 s")


def _report(name: str, figures: dict[str, Any]) -> None:
    print(f"\n[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_kill_minus_nine_five_times_loses_and_duplicates_nothing(stack: Endpoints, tmp_path: Path) -> None:
    """kill -9 of the worker at random moments of a 50 000-event backlog, 5 times: exactly once."""
    env = make_env(stack, tmp_path, "kill9")
    events = _publish(env, 50_000, seed=9)
    rng = random.Random(99)
    kills = []
    lag = len(events)
    for trial in range(5):
        worker = Worker(env, tmp_path / f"worker{trial}.log")
        # Wait until this worker makes progress (the group first waits for the killed member's
        # session to expire), then kill at a random moment while transactions are in flight.
        deadline = time.monotonic() + 120
        while (now := _lag(env)) >= lag and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.5))
        lag = _lag(env)
        worker.process.kill()  # SIGKILL: no shutdown hook runs
        worker.process.wait()
        kills.append(lag)
        _report(
            f"kill {trial + 1}", {"lag_when_progressing": now, "lag_at_kill": lag, "exit": worker.process.returncode}
        )
    final = Worker(env, tmp_path / "final.log")
    try:
        env.drain(timeout_s=600)
    finally:
        assert final.stop() == 0, final.log()[-2000:]
    figures = _audit(env, events)
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
    events = _publish(env, 30_000, seed=21)
    worker = Worker(env, tmp_path / "worker.log")
    settings = StackSettings.from_env(os.environ)
    try:
        time.sleep(5.0)
        lag_before = _lag(env)
        lifecycle.down(settings, only="kafka", echo=lambda line: None)
        time.sleep(3.0)
        lifecycle.up(settings, echo=lambda line: None)
        env.drain(timeout_s=600)
        assert worker.process.poll() is None, "the worker must survive a broker restart"
    finally:
        code = worker.stop()
    figures = _audit(env, events)
    _report("broker restart", {"lag_at_stop": lag_before, **figures, "worker_exit": code})
    assert 0 < lag_before < len(events), "the broker must stop while the backlog is being processed"
    assert figures["missing"] == 0 and figures["unexpected"] == 0
    assert figures["duplicated"] == 0
