"""Hostile but readable writer schemas against a real worker (issue 8, rows 1 and 2).

Two writer schemas are registered in the real registry under the ingress subject, each the v1
contract plus one defaulted field (so the subject's compatibility rule accepts them and a v1
reader can read their data): a recursive ``Node{next: [null, Node]}``, and an ``array<null>``.
One record of each is published among valid events: the first nested 5 000 deep (5 kB: it made
fastavro segfault the worker, over and over), the second 294 bytes with a block count of 3·10⁷
(5 s of CPU and 230 MB, then delivered). The worker must dead-letter both as
``incompatible_schema``, stay alive, and deliver every valid event, those behind them included.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import TopicPartition

from streams.assembly import load_policy_set
from streams.contracts.registry import HttpSchemaRegistry
from streams.contracts.schemas import input_schema
from streams.contracts.wire import HEADER_SIZE, frame
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import ReadRecord, read_from
from streams.kafka.publish import event_encoder
from streams.policy.engine import Minimiser
from streams.stack.settings import Endpoints

from .conftest import Env, Worker, make_env

SPF_TOPIC = "surveillance.spf.results.v1"


def _zigzag(value: int) -> bytes:
    """The Avro varint of a non-negative ``value``."""
    n, out = value << 1, bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes([*out, n])


NODE = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"], "default": None}]}
ROWS = {
    b"hostile-recursive": (
        {"name": "x_node", "type": ["null", NODE], "default": None},
        b"\x02" * 5_000 + b"\x00",
        "recursive type Node at field x_node.next",
    ),
    b"hostile-nulls": (
        {"name": "x_nulls", "type": {"type": "array", "items": "null"}, "default": []},
        _zigzag(30_000_000) + b"\x00",  # a block of 3·10⁷ nulls (zero bytes), then the end of the array
        "array of zero-width items (null) at field x_nulls",
    ),
}


def _v1_plus(field: dict[str, Any]) -> str:
    v1 = input_schema(1)
    return json.dumps({**v1, "fields": [*v1["fields"], field]})


def _read_all(env: Env, topic: str) -> list[ReadRecord]:
    full = topic if topic.startswith(env.settings.topic_prefix) else env.settings.topic_prefix + topic
    start = {TopicPartition(full, p): 0 for p in range(env.partitions[full])}
    return read_from(env.settings.bootstrap_servers, start, auth=env.settings.kafka_auth)


@pytest.fixture(scope="module")
def replayed(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Register the hostile writers, publish valid events around one record of each, run a worker to lag 0."""
    tmp = tmp_path_factory.mktemp("hostile")
    env = make_env(stack, tmp, "hostile")
    s = env.settings
    registry = HttpSchemaRegistry(s.registry_url)
    encoder = event_encoder(registry, s.ingress_topic, 1)
    ids = {key: registry.register(f"{s.ingress_topic}-value", _v1_plus(field)) for key, (field, _, _) in ROWS.items()}
    events = list(generate_events(600, GeneratorSettings(seed=8, positive_share=0.3)))
    records: list[tuple[bytes, bytes, tuple[()]]] = []
    hostile: dict[bytes, bytes] = {}
    for i, event in enumerate(events):
        if i in (100, 200):
            key = list(ROWS)[i // 100 - 1]
            body = encoder.encode(event)[HEADER_SIZE:] + ROWS[key][1]
            hostile[key] = frame(ids[key], body)
            records.append((key, hostile[key], ()))
        records.append((str(event["event_id"]).encode(), encoder.encode(event), ()))
    env.publish(records)
    worker = Worker(env, tmp / "worker.log")
    started = time.monotonic()
    try:
        waited = env.drain(timeout_s=180)
        alive = worker.process.poll() is None
    finally:
        code = worker.stop()
    print(
        f"[hostile] {len(records)} records drained in {waited:.1f} s ({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )
    yield {
        "env": env,
        "events": events,
        "records": records,
        "hostile": hostile,
        "alive": alive,
        "exit": code,
        "log": worker.log(),
    }


def test_the_records_are_those_of_the_issue(replayed: dict[str, Any]) -> None:
    """Row 1 is a 5 kB record nested 5 000 deep; row 2 a record of about 294 bytes whose block count is 3·10⁷."""
    assert 5_000 < len(replayed["hostile"][b"hostile-recursive"]) < 5_400
    assert 250 < len(replayed["hostile"][b"hostile-nulls"]) < 350


def test_both_hostile_records_are_dead_lettered_as_incompatible_schema(replayed: dict[str, Any]) -> None:
    """The DLQ holds exactly the two hostile records, raw, as incompatible_schema with a reason naming the construct."""
    env: Env = replayed["env"]
    dead = env.dead_letters()  # sealed to the operators: opened with their key
    assert sorted(r.key for r in dead if r.key) == sorted(replayed["hostile"])
    for record in dead:
        assert record.key is not None
        headers = {k: v.decode() for k, v in record.headers}
        assert record.value == replayed["hostile"][record.key]
        assert headers["dlq.reason.code"] == "incompatible_schema"
        assert ROWS[record.key][2] in headers["dlq.reason"]


def test_the_worker_stays_alive_and_exits_cleanly(replayed: dict[str, Any]) -> None:
    """The worker is still running once the ingress is drained (no crash, no restart) and exits 0 on SIGTERM."""
    assert replayed["alive"], replayed["log"][-3000:]
    assert replayed["exit"] == 0, replayed["log"][-3000:]
    assert "unrecoverable" not in replayed["log"] and "internal error" not in replayed["log"]


def test_every_valid_event_is_delivered_including_those_behind_the_hostile_records(replayed: dict[str, Any]) -> None:
    """SPF holds each valid production event once; events published after a hostile record on its partition arrive."""
    env: Env = replayed["env"]
    policy_set = load_policy_set(env.settings)
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, DEFAULT_GEOGRAPHY)
    ref_of = {
        str(event["event_id"]).encode(): view.record["event_ref"].encode()
        for event in replayed["events"]
        for view in minimiser.apply(event)
        if view.agency.agency == "spf"
    }
    counts = Counter(r.key for r in _read_all(env, SPF_TOPIC))
    assert [k for k, c in counts.items() if c > 1] == []
    assert set(counts) == set(ref_of.values())
    partitions = env.partitions[env.settings.ingress_topic]
    keys = [key for key, _, _ in replayed["records"]]
    for hostile_key in replayed["hostile"]:
        partition = zlib.crc32(hostile_key) % partitions
        behind = [k for k in keys[keys.index(hostile_key) + 1 :] if zlib.crc32(k) % partitions == partition]
        delivered_behind = [k for k in behind if k in ref_of]
        assert len(delivered_behind) >= 5
        assert all(ref_of[k] in counts for k in delivered_behind)
