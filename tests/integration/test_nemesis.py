"""Nemesis: several live workers, live traffic, and a seeded schedule of pauses, kills, joins and stops.

At least three worker processes drain a 100 000-event backlog while a publisher keeps sending
live events for the whole schedule (a drained backlog would leave zombies idle and prove
nothing). A seeded nemesis mixes: SIGSTOP a worker past its session timeout then SIGCONT it
(a zombie waking mid-transaction), kill -9 one and start its replacement with the same
``group.instance.id``, add a worker, SIGTERM one. A ``read_committed`` reader then must find
every expected (agency topic, event_ref) pair exactly once, and no worker may have died.

Marked ``fault``. Two seeded runs by default; ``SCREENING_NEMESIS_RUNS=N`` runs N seeds
(``SCREENING_NEMESIS_SEEDS=3,7`` picks them). ``-s`` prints each run's figures: nemesis
actions, expected, delivered, missing, duplicated, fenced, aborts.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streams.audit.keys import AuditKeys, generate_secret, load_secret, write_secret
from streams.contracts.registry import HttpSchemaRegistry
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.publish import event_encoder, framed_events
from streams.stack.settings import Endpoints

from .auditing import check_audit
from .conftest import Env, Worker, audit_delivery, committed_keys, lag_retrying, make_env, publish_events

pytestmark = pytest.mark.fault

BACKLOG = 100_000
LIVE_RATE = 500  # events/s, for the whole schedule
SESSION_MS = 6_000  # the broker's minimum (group.min.session.timeout.ms)
TRANSACTION_MS = 10_000
WORKER_ENV = {
    "SCREENING_SESSION_TIMEOUT_MS": str(SESSION_MS),
    "SCREENING_TRANSACTION_TIMEOUT_MS": str(TRANSACTION_MS),
}


def _seeds() -> list[int]:
    chosen = os.environ.get("SCREENING_NEMESIS_SEEDS")
    if chosen:
        return [int(s) for s in chosen.split(",") if s.strip()]
    return [11 * (i + 1) for i in range(int(os.environ.get("SCREENING_NEMESIS_RUNS", "2")))]


class LivePublisher(threading.Thread):
    """Publishes pre-encoded live events at a steady rate until stopped; counts what the broker acked."""

    def __init__(self, env: Env, records: list[tuple[bytes, bytes]], rate: int) -> None:
        """``records`` are (key, framed value) pairs, sent in order at ``rate`` per second."""
        super().__init__(name="live-publisher", daemon=True)
        self.env, self.records, self.rate = env, records, rate
        self.stopping = threading.Event()
        self.acked: list[int] = []
        self.failed = 0

    def run(self) -> None:
        """Send ~rate/10 records every 100 ms."""
        s = self.env.settings
        # Idempotent: without it, a retried produce request under load writes an ingress record
        # twice, and every duplicate the worker then faithfully processes looks like a broken
        # exactly-once.
        producer = Producer(
            {
                "bootstrap.servers": s.bootstrap_servers,
                **s.kafka_auth.librdkafka(),
                "acks": "all",
                "linger.ms": 5,
                "enable.idempotence": True,
            }
        )
        partitions = self.env.partitions[s.ingress_topic]
        sent, started, per_tick = 0, time.monotonic(), max(1, self.rate // 10)
        while not self.stopping.is_set() and sent < len(self.records):
            for key, value in self.records[sent : sent + per_tick]:
                producer.produce(
                    s.ingress_topic,
                    value=value,
                    key=key,
                    partition=zlib.crc32(key) % partitions,
                    on_delivery=lambda err, msg, i=sent: self._count(err, i),
                )
                sent += 1
            producer.poll(0)
            self.stopping.wait(max(0.0, started + sent / self.rate - time.monotonic()))
        producer.flush(30)

    def _count(self, err: Any, index: int) -> None:
        if err is None:
            self.acked.append(index)
        else:
            self.failed += 1


class Nemesis:
    """Worker processes of one run and the seeded faults done to them."""

    def __init__(self, env: Env, tmp: Path, rng: random.Random) -> None:
        """No worker yet."""
        self.env, self.tmp, self.rng = env, tmp, rng
        self.live: dict[str, Worker] = {}
        self.finished: list[tuple[str, Worker, int]] = []
        self.all: list[Worker] = []
        self.actions: list[str] = []
        self._next_id = 0
        #: The audit secret every worker writes the decision records with (issue 10: atomic with outputs).
        self.audit_key = tmp / "audit.key"
        write_secret(self.audit_key, generate_secret())

    def start(self, instance: str | None = None) -> str:
        """Start a worker (a new instance id unless one is given)."""
        if instance is None:
            instance, self._next_id = f"w{self._next_id}", self._next_id + 1
        log = self.tmp / f"{instance}.{len(self.all)}.log"
        extra = {**WORKER_ENV, "SCREENING_INSTANCE_ID": instance, "SCREENING_AUDIT_KEY_FILE": str(self.audit_key)}
        worker = Worker(self.env, log, extra)
        self.live[instance] = worker
        self.all.append(worker)
        worker.wait_ready()  # one at a time past start-up (registry subjects are set up before Ready)
        return instance

    def pick(self) -> str:
        """A live worker, chosen by the seeded generator."""
        return self.rng.choice(sorted(self.live))

    def pause(self) -> None:
        """SIGSTOP past the session timeout, then SIGCONT: a zombie waking up mid-transaction."""
        name = self.pick()
        # Past the session always; past the transaction timeout (and the broker's 10 s abort
        # sweep) sometimes, so some zombies find their transaction aborted and their producer fenced.
        held = SESSION_MS / 1000 * 1.3 + self.rng.uniform(0.0, 12.0)
        self.live[name].signal(signal.SIGSTOP)
        time.sleep(held)
        self.live[name].signal(signal.SIGCONT)
        self.actions.append(f"pause({name},{held:.1f}s)")

    def kill(self) -> None:
        """kill -9 and start a replacement with the same instance id."""
        name = self.pick()
        worker = self.live.pop(name)
        worker.signal(signal.SIGKILL)
        worker.process.wait()
        self.finished.append((name, worker, worker.process.returncode))
        time.sleep(self.rng.uniform(0.0, 2.0))
        self.start(name)
        self.actions.append(f"kill9+replace({name})")

    def add(self) -> None:
        """A new member joins."""
        self.actions.append(f"add({self.start()})")

    def term(self) -> None:
        """SIGTERM one worker (never below three live ones); it must exit 0."""
        if len(self.live) <= 3:
            self.add()
        name = self.pick()
        worker = self.live.pop(name)
        code = worker.stop()
        self.finished.append((name, worker, code))
        self.actions.append(f"term({name})={code}")

    def schedule(self) -> list[str]:
        """Every kind of fault at least once, plus one more of a random kind, in a seeded order."""
        kinds = ["pause", "kill", "add", "term", self.rng.choice(["pause", "kill"])]
        self.rng.shuffle(kinds)
        return kinds


def _scrape(logs: list[str]) -> dict[str, Any]:
    """Counts from the workers' logs: aborted transactions, fenced producers, refused zombie offsets."""
    text = "\n".join(logs)
    aborted = re.findall(r"transaction aborted \(([A-Z_]+)", text)
    fatal = re.findall(r"transaction failed fatally for this producer \(([A-Z_]+)", text)
    return {
        "aborts": len(aborted) + len(fatal),
        "fenced": sum(1 for code in fatal if "FENCED" in code or "EPOCH" in code),
        "offsets_refused": sum(
            1 for code in aborted if code in ("ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID")
        ),
        "producers_replaced": len(fatal),
        # The workers' own critical lines (a RunnerFatal, an unhandled error). librdkafka logs a fenced
        # zombie producer's fatal error at CRITICAL too ("[thrd:" lines): the runner handles that one
        # (counted in "fenced"; a paused worker woken mid-transaction after the broker aborted it).
        "critical": sum(1 for line in text.splitlines() if "[CRITICAL]" in line and "[thrd:" not in line),
        "librdkafka_fatal": sum(1 for line in text.splitlines() if "[CRITICAL]" in line and "[thrd:" in line),
        "abort_codes": "/".join(f"{code}:{n}" for code, n in sorted(Counter(aborted + fatal).items())) or "-",
    }


def _live_records(env: Env, count: int, seed: int) -> tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]:
    events = list(generate_events(count, GeneratorSettings(seed=seed, positive_share=0.3)))
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    return events, [(key, value) for key, value, _ in framed_events(events, encoder)]


def _report(seed: int, figures: Mapping[str, Any]) -> None:
    print(f"\n[nemesis] seed={seed}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.mark.parametrize("seed", _seeds())
def test_nemesis_exactly_once_with_live_workers(stack: Endpoints, tmp_path: Path, seed: int) -> None:
    """Pauses past the session, kill -9 + replace, joins and SIGTERMs under live load: every
    expected (topic, event_ref) pair is read exactly once with read_committed, and no worker dies."""
    rng = random.Random(seed)
    env = make_env(stack, tmp_path, f"nemesis{seed}", ingress_partitions=12)
    backlog = publish_events(env, BACKLOG, seed=seed)
    live_events, live_records = _live_records(env, LIVE_RATE * 150, seed=seed + 100_000)
    nemesis = Nemesis(env, tmp_path, rng)
    started = time.monotonic()
    for _ in range(3):
        nemesis.start()
    publisher = LivePublisher(env, live_records, LIVE_RATE)
    try:
        # Let the group form and the backlog start moving, then strike while it drains.
        deadline = time.monotonic() + 60
        while lag_retrying(env) >= BACKLOG and time.monotonic() < deadline:
            time.sleep(0.2)
        publisher.start()
        lag_at_first_fault = lag_retrying(env)
        for kind in nemesis.schedule():
            time.sleep(rng.uniform(1.0, 4.0))
            getattr(nemesis, kind)()
        time.sleep(2.0)
        publisher.stopping.set()
        publisher.join(60)
        alive_before_drain = {name: w.process.poll() for name, w in nemesis.live.items()}
        env.drain(timeout_s=300)
        alive_after_drain = {name: w.process.poll() for name, w in nemesis.live.items()}
    finally:
        publisher.stopping.set()
        exits = {name: w.stop() for name, w in nemesis.live.items()}
    published_live = [live_events[i] for i in sorted(set(publisher.acked))]
    figures = audit_delivery(env, backlog + published_live)
    # The input side first: a duplicated ingress record would be processed (correctly) twice.
    ingress = committed_keys(env, [env.settings.ingress_topic])
    figures["ingress_duplicated"] = sum(n - 1 for n in ingress.values() if n > 1)
    trail = check_audit(env, AuditKeys(load_secret(nemesis.audit_key)))
    figures["audit_records"] = trail.audit_records
    figures["audit_defects"] = trail.defects()
    scraped = _scrape([w.log() for w in nemesis.all])
    _report(
        seed,
        {
            "actions": " ".join(nemesis.actions),
            "workers": len(nemesis.all),
            "backlog": BACKLOG,
            "live": len(published_live),
            "lag_at_first_fault": lag_at_first_fault,
            **figures,
            **scraped,
            "seconds": round(time.monotonic() - started),
        },
    )
    assert publisher.failed == 0
    assert lag_at_first_fault > 0, "the faults must start while the backlog is being drained"
    assert all(code is None for code in alive_before_drain.values()), f"a worker died: {alive_before_drain}"
    assert all(code is None for code in alive_after_drain.values()), f"a worker died: {alive_after_drain}"
    assert all(code == 0 for code in exits.values()), exits
    terms = Counter(code for name, _, code in nemesis.finished if code != -signal.SIGKILL)
    assert set(terms) <= {0}, f"a SIGTERMed worker exited non-zero: {nemesis.finished}"
    assert scraped["critical"] == 0
    assert figures["ingress_duplicated"] == 0, "the test's own publishers wrote an event twice"
    assert figures["missing"] == 0, figures
    assert figures["unexpected"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["dead_lettered"] == 0, figures
    # Every committed output has exactly one audit entry, every ingress record one audit record,
    # and every audit partition's chain verifies, across pauses, kills and rebalances.
    assert trail.defects() == 0, trail
    assert trail.audit_records >= BACKLOG + len(published_live), trail
