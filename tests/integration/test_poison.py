"""Poison records on the real broker: a real worker never stalls, and each bad record is dead-lettered once.

5 000 valid events with one poison record after every 100, of a rotating kind, each under a
unique key. The worker must drain the ingress (lag 0 within the timeout); then every valid
production event is on the surveillance topic exactly once, every poison record is in the
DLQ exactly once with its expected code and raw value, and nothing else is in the DLQ.
Run once per processing guarantee (transactional, and the faust agent).
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import TopicPartition

from streams.assembly import load_policy_set
from streams.contracts.codec import ViewEncoder
from streams.contracts.registry import HttpSchemaRegistry
from streams.contracts.wire import HEADER_SIZE, frame
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import ReadRecord, read_from
from streams.kafka.publish import event_encoder
from streams.policy.engine import Minimiser
from streams.settings import GUARANTEES
from streams.stack.settings import Endpoints

from .conftest import Env, Worker, make_env

VALID = 5_000
EVERY = 100
SPF_TOPIC = "surveillance.spf.results.v1"

Poison = Callable[[dict[str, Any], ViewEncoder, random.Random, int], bytes]


def _wrong_key(nir: str) -> str:
    return nir[:13] + "00"  # a NIR key is 01..97


#: kind -> (how to make the value from a valid event, expected dead-letter code)
POISONS: dict[str, tuple[Poison, str]] = {
    "random": (lambda e, enc, rng, n: b"\x8f" + rng.randbytes(rng.randint(4, 300)), "not_framed"),
    "magic": (lambda e, enc, rng, n: b"\x01" + enc.encode(e)[1:], "bad_magic"),
    "unknown-id": (lambda e, enc, rng, n: frame(2_000_000_000 + n, enc.encode(e)[HEADER_SIZE:]), "unknown_schema_id"),
    "truncated": (lambda e, enc, rng, n: enc.encode(e)[: HEADER_SIZE + rng.randint(0, 100)], "undecodable"),
    "nir": (lambda e, enc, rng, n: enc.encode({**e, "nir": _wrong_key(e["nir"])}), "invalid_nir"),
    "commune": (lambda e, enc, rng, n: enc.encode({**e, "commune_code": "97501"}), "unknown_commune"),
    # result is the last field: index -3 is read by fastavro as POSITIVE (see streams.contracts.codec)
    "negative-enum": (lambda e, enc, rng, n: enc.encode({**e, "result": "NEGATIVE"})[:-1] + b"\x05", "undecodable"),
}


@dataclass
class GuaranteeEnv(Env):
    """The environment, with workers running under one processing guarantee."""

    guarantee: str = "exactly_once"

    def process_env(self) -> dict[str, str]:
        """The environment's variables with ``SCREENING_PROCESSING_GUARANTEE`` set."""
        return {**super().process_env(), "SCREENING_PROCESSING_GUARANTEE": self.guarantee}


def _read_all(env: Env, topic: str) -> list[ReadRecord]:
    full = topic if topic.startswith(env.settings.topic_prefix) else env.settings.topic_prefix + topic
    start = {TopicPartition(full, p): 0 for p in range(env.partitions[full])}
    return read_from(env.settings.bootstrap_servers, start, auth=env.settings.kafka_auth)


@pytest.fixture(scope="module", params=GUARANTEES)
def poisoned(
    stack: Endpoints, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """Publish valid events with poison between them, run one worker until lag 0, stop it."""
    tmp = tmp_path_factory.mktemp("poison")
    base = make_env(stack, tmp, "poison")
    env = GuaranteeEnv(base.settings, base.partitions, base.keys_file, base.keys, base.private_keys, request.param)
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    events = list(generate_events(VALID, GeneratorSettings(seed=404, positive_share=0.3)))
    rng = random.Random(404)
    kinds = list(POISONS)
    records: list[tuple[bytes, bytes, tuple[()]]] = []
    poison: dict[bytes, tuple[bytes, str]] = {}
    for i, event in enumerate(events):
        records.append((str(event["event_id"]).encode(), encoder.encode(event), ()))
        if (i + 1) % EVERY == 0:
            n = len(poison)
            kind = kinds[n % len(kinds)]
            make, code = POISONS[kind]
            key = f"poison-{n:03d}-{kind}".encode()
            poison[key] = (make(event, encoder, rng, n), code)
            records.append((key, poison[key][0], ()))
    env.publish(records)
    worker = Worker(env, tmp / "worker.log")
    started = time.monotonic()
    try:
        waited = env.drain(timeout_s=240)
    finally:
        code = worker.stop()
    print(
        f"[poison {env.guarantee}] {len(records)} records ({len(poison)} poison) drained in {waited:.1f} s "
        f"({time.monotonic() - started:.1f} s with start-up and stop)",
        file=sys.stderr,
    )
    yield {"env": env, "events": events, "poison": poison, "worker_exit": code, "worker_log": worker.log()}


def test_worker_drains_the_poisoned_ingress_and_exits_cleanly(poisoned: dict[str, Any]) -> None:
    """With 50 poison records among 5 000 events the worker reaches lag 0 (never stalls) and exits 0 on SIGTERM."""
    assert len(poisoned["poison"]) == VALID // EVERY
    assert poisoned["worker_exit"] == 0, poisoned["worker_log"][-3000:]
    assert "internal error" not in poisoned["worker_log"]


def test_every_valid_production_event_reaches_surveillance_exactly_once(poisoned: dict[str, Any]) -> None:
    """spf holds one record per valid production event (counted by event_ref key), none missing, none twice."""
    env: Env = poisoned["env"]
    policy_set = load_policy_set(env.settings)
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, DEFAULT_GEOGRAPHY)
    expected = {
        view.record["event_ref"].encode()
        for event in poisoned["events"]
        for view in minimiser.apply(event)
        if view.agency.agency == "spf"
    }
    production = sum(1 for e in poisoned["events"] if e["processing_mode"] == "P")
    assert len(expected) == production > VALID * 0.9
    counts = Counter(r.key for r in _read_all(env, SPF_TOPIC))
    assert [k for k, c in counts.items() if c > 1] == []
    assert set(counts) == expected


def test_every_poison_record_is_dead_lettered_once_with_its_code(poisoned: dict[str, Any]) -> None:
    """The DLQ holds each poison record exactly once (by key) with its expected code and raw value (sealed to the
    operators, opened with their key), and nothing else."""
    env: Env = poisoned["env"]
    dead = env.dead_letters()
    counts = Counter(r.key for r in dead)
    assert [k for k, c in counts.items() if c > 1] == []
    assert set(counts) == set(poisoned["poison"])
    for record in dead:
        assert record.key is not None
        value, code = poisoned["poison"][record.key]
        headers = dict(record.headers)
        assert headers["dlq.reason.code"].decode() == code, record.key
        assert record.value == value, record.key
        assert headers["dlq.source.topic"] == env.settings.ingress_topic.encode()
    kinds = Counter(headers["dlq.reason.code"] for headers in (dict(r.headers) for r in dead))
    assert len(kinds) == len({code for _, code in POISONS.values()})
