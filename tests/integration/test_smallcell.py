"""Small-cell protection on the real broker: a worker under the shipped SPF option (k = 5, the ladder
department → region, day → ISO week, housing → any) with a 20-second window, checked by an independent
read_committed count over the SPF topic; and a kill -9 mid-window followed by a restart.

The independent count (bench/_kcheck.py, shared with bench/throughput.py) does not use the guard's
code: it groups the SPF records by their window header and the values of every counted field (null
where a step withheld it), so a class is a set of records released at the same detail in the same
window; each must have at least k members. It also checks that no event_ref appears twice, that every
released record is one the policies derive from the events, that the withheld fields match each
record's step, and that released + suppressed (the counts in the hold topic's close records) = every
SPF view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streams.assembly import load_policy_set
from streams.stack.settings import Endpoints
from tests.conftest import bench_module

from .conftest import Env, Worker, expected_pairs, lag_retrying, make_env
from .smallcell_audit import check_small_cell_audit

pytestmark = pytest.mark.integration

#: The backlog test's size and window (CI: 20 000 events, 20 s; the issue's scale: e.g. 1 400 000 and 300 s).
EVENTS = int(os.environ.get("SCREENING_SMALLCELL_TEST_EVENTS", "20000"))
WINDOW_S = int(os.environ.get("SCREENING_SMALLCELL_TEST_WINDOW_S", "20"))
GRACE_S = 2
DAYS = int(os.environ.get("SCREENING_SMALLCELL_TEST_DAYS", "2"))
SMALL_CELL_ENV = {
    "SCREENING_KANON_WINDOW_S": str(WINDOW_S),
    "SCREENING_KANON_GRACE_S": str(GRACE_S),
    "SCREENING_INSTANCE_ID": "smallcell-worker",
    "SCREENING_SESSION_TIMEOUT_MS": "10000",
}


kcheck = bench_module("_kcheck")


def _spf(env: Env) -> tuple[Any, Any]:
    policy_set = load_policy_set(env.settings)
    return next(p for p in policy_set.policies if p.recipient == "spf"), policy_set.input_schema


def _decided(env: Env) -> int:
    """SPF views released or suppressed, read from the topics."""
    spf, _ = _spf(env)
    return int(
        kcheck.decided(
            env.settings.bootstrap_servers,
            env.settings.topic_prefix + spf.topic,
            env.settings.hold_topic("spf"),
            auth=env.settings.kafka_auth,
        )
    )


def _hold_counts(env: Env) -> dict[str, Any]:
    """From the hold topic: entries by kind, and the close records' released-by-step and suppressed sums."""
    s = env.settings
    hold = kcheck.hold_summary(kcheck.read_committed(s.bootstrap_servers, s.hold_topic("spf"), auth=s.kafka_auth))
    return {"kinds": dict(hold.kinds), "released_by_step": dict(hold.released_by_step), "suppressed": hold.suppressed}


def _check(env: Env, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The independent count (module docstring); returns the figures for the report."""
    spf, input_schema = _spf(env)
    spf_topic = env.settings.topic_prefix + spf.topic
    expected = {ref for topic, ref in expected_pairs(env, events) if topic == spf_topic}
    report = kcheck.k_check(
        env.settings.bootstrap_servers,
        spf,
        input_schema,
        spf_topic,
        env.settings.hold_topic("spf"),
        auth=env.settings.kafka_auth,
        expected_keys=expected,
    )
    figures: dict[str, Any] = report.as_dict()
    print(f"\n[smallcell] {json.dumps(figures)}", file=sys.stderr)
    assert not report.below_k, f"released classes below k={report.k}: {report.below_k[:5]}"
    assert figures["duplicates"] == 0 and figures["unexpected"] == 0 and figures["malformed"] == 0
    assert figures["still_held"] == 0, "a window did not close"
    assert figures["lost"] == 0, "a view was lost (neither released nor suppressed)"
    assert {s: n for s, n in figures["released_by_step"].items() if s > 0} == figures["hold_released_by_step"]
    assert report.ok
    return figures


def _publish(env: Env, count: int, seed: int, days: int = 2) -> list[dict[str, Any]]:
    """Publish ``count`` valid events sampled over ``days`` days (a daily stream sees recent samples)."""
    from streams.contracts.registry import HttpSchemaRegistry
    from streams.domain.generate import GeneratorSettings, generate_events
    from streams.kafka.publish import event_encoder, framed_events

    events = list(generate_events(count, GeneratorSettings(seed=seed, days=days)))
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    env.publish(framed_events(events, encoder))
    return events


def _worker_decided(worker: Worker) -> int:
    """Views the worker says it released or suppressed (its last ``small cells:`` stats line, counts only)."""
    import re

    lines = re.findall(r"small cells: held=\d+ released_by_step=\{([^}]*)\} suppressed=(\d+)", worker.log())
    if not lines:
        return 0
    steps, suppressed = lines[-1]
    return sum(int(pair.split(":")[1]) for pair in steps.split(",") if pair) + int(suppressed)


def _wait_all_closed(
    env: Env, events: list[dict[str, Any]], worker: Worker | None = None, timeout_s: float = 180
) -> None:
    """Wait for the backlog to drain and every window to close: until ``worker``'s stats (every 10 s)
    count every SPF view released or suppressed, or, without one (a worker replaced it), until the
    topics do; the independent check reads the topics afterwards."""
    spf_topic = env.settings.topic_prefix + "surveillance.spf.results.v1"
    expected = sum(1 for topic, _ in expected_pairs(env, events) if topic == spf_topic)

    def decided() -> int:
        if worker is not None:
            return _worker_decided(worker)
        return _decided(env) if lag_retrying(env) == 0 else 0

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if decided() >= expected:
            return
        time.sleep(2 if worker is not None else 5)
    raise AssertionError(f"windows did not close in time: {decided()} of {expected} views decided")


def test_every_released_spf_record_lies_in_a_class_of_k_within_its_window(stack: Endpoints, tmp_path: Path) -> None:
    """A 20 000-event backlog (samples over 2 days) through one worker under the shipped SPF option: after the
    windows close, every released class (window, values at the released detail) has >= 5 records, nothing is duplicated,
    released + suppressed = every SPF view; the figures per ladder step are printed. Scaled with
    SCREENING_SMALLCELL_TEST_EVENTS, _WINDOW_S and _DAYS (the days the samples spread over)."""
    env = make_env(stack, tmp_path, "smallcell", small_cells=True)
    worker = Worker(env, tmp_path / "worker.log", SMALL_CELL_ENV)
    try:
        events = _publish(env, EVENTS, seed=12, days=DAYS)
        _wait_all_closed(env, events, worker, timeout_s=180 + EVENTS / 500)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    figures = _check(env, events)
    assert all(figures["released_by_step"].get(step, 0) > 0 for step in range(4)), "every ladder step is used"
    assert figures["suppressed"] > 0
    assert "small cells: window" in worker.log()


@pytest.mark.fault
def test_kill_minus_nine_mid_window_then_restart_loses_and_duplicates_nothing(stack: Endpoints, tmp_path: Path) -> None:
    """kill -9 of an audited worker while views are held in an open window; the restarted worker (same
    instance id) rebuilds the open windows from the hold topic, then the rest of the backlog arrives: after
    the windows close, no SPF record is duplicated or lost, every class still has k members, the audit chain
    verifies, every SPF view is in it delivered at once or held then released or suppressed exactly once
    (tests/integration/smallcell_audit.py), and who-received says what became of a held view."""
    from streams.audit.keys import AuditKeys, generate_secret, load_secret, write_secret

    env = make_env(stack, tmp_path, "smallcell-kill", small_cells=True)
    key_file = tmp_path / "audit.key"
    write_secret(key_file, generate_secret())
    audited = {**SMALL_CELL_ENV, "SCREENING_AUDIT_KEY_FILE": str(key_file)}
    events = _publish(env, 8_000, seed=21)
    first = Worker(env, tmp_path / "worker1.log", audited)
    deadline = time.monotonic() + 60
    while lag_retrying(env) > 4_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    first.process.kill()  # mid-backlog and mid-window: transactions in flight, views held
    first.process.wait()
    held = _hold_counts(env)["kinds"].get("hold", 0)
    second = Worker(env, tmp_path / "worker2.log", audited)
    try:
        events += _publish(env, 4_000, seed=22)
        _wait_all_closed(env, events)
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    _check(env, events)  # k at every released detail, no duplicate, nothing lost
    print(f"[smallcell] held before the kill: {held}", file=sys.stderr)
    assert held > 0, "the kill must happen while views are held"
    assert "rebuilt from" in second.log()
    # The audit chain survives the shared offset metadata (chain head + small-cell checkpoint) and the kill.
    verify = subprocess.run(
        [sys.executable, "-m", "streams.cli", "audit", "verify", "--json"],
        env={**env.process_env(), **audited, "SCREENING_AUDIT_INDEX": str(tmp_path / "audit.sqlite")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True, verify.stdout[-2000:]
    # Every SPF view, in the audit chain: delivered at once, or held then released (at the step and window
    # its SPF record's headers say) or suppressed, exactly once; every SPF record audited once.
    keys = AuditKeys(load_secret(key_file))
    figures = check_small_cell_audit(env, keys, events)
    held_refs = set(figures.pop("held_refs"))
    print(f"[smallcell] audit of the holds: {json.dumps(figures)}", file=sys.stderr)
    assert figures["problems"] == {} and figures["held"] > 0 and "suppressed" in figures["fates"]
    # who-received answers, for a person with a held view, what finally became of it.
    nir = next(str(e["nir"]) for e in events if keys.event_ref(str(e["event_id"])) in held_refs)
    asked = subprocess.run(
        [sys.executable, "-m", "streams.cli", "audit", "who-received", "--nir", nir, "--json"],
        env={**env.process_env(), **audited, "SCREENING_AUDIT_INDEX": str(tmp_path / "audit.sqlite")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert asked.returncode == 0, asked.stderr[-2000:]
    answer = json.loads(asked.stdout)
    assert answer["held"] and {h["fate"] for h in answer["held"]} <= {"released", "suppressed"}, answer
    released = [d for d in answer["deliveries"] if d["recipient"] == "spf" and d["step"] is not None]
    assert len(released) == sum(1 for h in answer["held"] if h["fate"] == "released"), answer
