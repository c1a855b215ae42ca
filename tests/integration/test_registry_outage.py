"""Registry outages and floods against a real worker (issue 8, item 3). Marked ``fault``.

* The registry is stopped while a worker that has never seen the writer schemas of the next
  records meets them: nothing is dead-lettered, nothing is acknowledged, and once the registry
  is back every event is delivered exactly once.
* A flood of 2 000 records with unknown schema ids (200 distinct) and 2 000 JSON payloads on two
  ingress partitions while valid events keep arriving on the other four: every flood record is
  dead-lettered, and the valid events' latency from publish to ``read_committed`` delivery
  (measured here, per event) stays under 1 s at p99 (the bound grows with the machine's load
  beyond its 2 cores, at most 2.5 s: see the assertion). The worker defers (pauses) the partitions
  waiting for lookups; it runs with 200-record batches, so one transaction of flood dead letters
  holds the others up ~0.1 s.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.contracts.registry import HttpSchemaRegistry
from streams.contracts.schemas import input_schema
from streams.contracts.wire import frame
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.publish import event_encoder, framed_events
from streams.stack import lifecycle
from streams.stack.settings import Endpoints, StackSettings

from .conftest import Env, Worker, committed_keys, expected_pairs, lag_retrying, make_env

pytestmark = pytest.mark.fault

SPF = "surveillance.spf.results.v1"


def _local(stack: Endpoints) -> StackSettings:
    settings = StackSettings.from_env(os.environ)
    if not stack.managed or settings.external_registry or settings.external_bootstrap:
        pytest.skip("needs the locally managed registry to stop it")
    return settings


def _delivery(env: Env, events: list[dict[str, Any]]) -> dict[str, int]:
    """Expected vs found on the agency result topics (key topics excluded: keys are re-sent per batch)."""
    from streams.crypto.views import is_key_topic

    s = env.settings
    topics = [
        t for t in env.partitions if t not in (s.ingress_topic, s.audit_topic, s.dlq_topic) and not is_key_topic(t)
    ]
    expected = expected_pairs(env, events)
    found = committed_keys(env, topics)
    return {
        "expected": len(expected),
        "missing": len(expected - set(found)),
        "unexpected": len(set(found) - expected),
        "duplicated": sum(n - 1 for n in found.values() if n > 1),
    }


def _dead_letters(env: Env) -> Counter[str]:
    """Reason codes of every committed dead letter."""
    consumer = Consumer(
        {
            "bootstrap.servers": env.settings.bootstrap_servers,
            **env.settings.kafka_auth.librdkafka(),
            "group.id": f"dlq-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    topic = env.settings.dlq_topic
    count = env.partitions[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in range(count)])
    codes: Counter[str] = Counter()
    ended: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(ended) < count and time.monotonic() < deadline:
            for message in consumer.consume(5000, 0.5):
                if message.error() is not None:
                    ended.add(int(message.partition() or 0))
                    continue
                codes[dict(message.headers() or ()).get("dlq.reason.code", b"?").decode()] += 1
    finally:
        consumer.close()
    return codes


def _extra_field_writer() -> dict[str, Any]:
    """v1 plus one optional field: another writer schema the worker has never seen."""
    schema = input_schema(1)
    extra = {"name": "lab_comment", "type": ["null", "string"], "default": None, "class": "technical"}
    return {**schema, "fields": [*schema["fields"], extra]}


def test_registry_down_while_a_fresh_worker_meets_unseen_writer_ids(stack: Endpoints, tmp_path: Path) -> None:
    """Stopped registry + unseen writer ids: 0 dead letters, no progress, then all delivered once it is back."""
    settings = _local(stack)
    env = make_env(stack, tmp_path, "outage")
    client = HttpSchemaRegistry(env.settings.registry_url)
    v1 = event_encoder(client, env.settings.ingress_topic, 1)
    warmup = list(generate_events(100, GeneratorSettings(seed=40, positive_share=0.3)))
    env.publish(framed_events(warmup, v1))
    worker = Worker(env, tmp_path / "worker.log")
    try:
        env.drain(timeout_s=180)
        v2 = event_encoder(client, env.settings.ingress_topic, 2)
        from streams.contracts.codec import register_encoder

        extra = register_encoder(client, f"{env.settings.ingress_topic}-value", _extra_field_writer())
        later = list(generate_events(1000, GeneratorSettings(seed=41, schema_version=2, positive_share=0.3)))
        plain = list(generate_events(500, GeneratorSettings(seed=42, positive_share=0.3)))

        lifecycle.down(settings, only="registry", echo=lambda line: None)
        try:
            env.publish([*framed_events(later, v2), *framed_events(plain, extra)])
            time.sleep(10.0)  # the worker meets the unseen ids and must wait, not dead-letter
            lag_while_down = lag_retrying(env)
            dead_while_down = sum(_dead_letters(env).values())
            alive_while_down = worker.process.poll() is None
        finally:
            lifecycle.up(settings, echo=lambda line: None)
        env.drain(timeout_s=300)
        alive = worker.process.poll() is None
    finally:
        code = worker.stop()
    figures = _delivery(env, [*warmup, *later, *plain])
    dead = _dead_letters(env)
    print(f"\n[registry outage] lag while down {lag_while_down}, {figures}, dead letters {dict(dead)}, exit {code}")
    assert alive_while_down and alive, "the worker must ride out the outage"
    assert lag_while_down == len(later) + len(plain), "nothing may be acknowledged while the registry is down"
    assert dead_while_down == 0 and sum(dead.values()) == 0
    assert figures["missing"] == figures["unexpected"] == figures["duplicated"] == 0
    assert "registry unavailable" in worker.log()
    assert code == 0


def _keys_for(partitions: set[int], count: int, total: int, tag: str) -> list[bytes]:
    """Record keys that publish_raw sends to ``partitions`` (CRC-32 of the key modulo ``total``)."""
    keys: list[bytes] = []
    i = 0
    while len(keys) < count:
        key = f"{tag}-{i}".encode()
        if zlib.crc32(key) % total in partitions:
            keys.append(key)
        i += 1
    return keys


class Arrivals:
    """A read_committed reader of one topic, from its current end, noting when each key arrives (wall ms)."""

    def __init__(self, env: Env, topic: str) -> None:
        """Assign every partition at its high watermark (before anything is published)."""
        self.seen: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": env.settings.bootstrap_servers,
                **env.settings.kafka_auth.librdkafka(),
                "group.id": f"latency-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 20,
            }
        )
        tps = []
        for p in range(env.partitions[topic]):
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            tps.append(TopicPartition(topic, p, high))
        self._consumer.assign(tps)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.1):
                if message.error() is None and message.key() is not None:
                    self.seen.setdefault(message.key(), time.time() * 1000)

    def stop(self) -> None:
        """Stop reading."""
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def test_flood_of_unknown_ids_and_json_does_not_hold_up_valid_events(stack: Endpoints, tmp_path: Path) -> None:
    """4 000 flood records on two partitions: all dead-lettered; valid events elsewhere delivered with p99 < 1 s."""
    _local(stack)
    env = make_env(stack, tmp_path, "flood")
    s = env.settings
    total = env.partitions[s.ingress_topic]
    client = HttpSchemaRegistry(s.registry_url)
    v1 = event_encoder(client, s.ingress_topic, 1)
    # Batches of 200: a transaction of flood dead letters then holds valid events up ~0.1 s, not ~0.4 s.
    worker = Worker(env, tmp_path / "worker.log", extra_env={"SCREENING_BATCH_SIZE": "200"})
    rate, seconds = 50, 24
    valid = [
        {**e, "processing_mode": "P"}
        for e in generate_events(rate * seconds + 200, GeneratorSettings(seed=50, positive_share=0.3))
    ]
    warmup, timed = valid[:200], valid[200:]
    try:
        env.publish(
            [(k, v1.encode(dict(e)), ()) for k, e in zip(_keys_for({2, 3, 4, 5}, 200, total, "w"), warmup, strict=True)]
        )
        env.drain(timeout_s=180)
        spf_key = {}
        for i, event in enumerate(timed):
            for topic, ref in expected_pairs(env, [event]):
                if topic == s.topic_prefix + SPF:
                    spf_key[ref] = i
        arrivals = Arrivals(env, s.topic_prefix + SPF)
        producer = Producer(
            {
                "bootstrap.servers": s.bootstrap_servers,
                **s.kafka_auth.librdkafka(),
                "linger.ms": 2,
                "enable.idempotence": True,
            }
        )
        flood_keys = _keys_for({0, 1}, 4000, total, "f")
        unknown = [frame(50_000_000 + i % 200, b"\x02" * 60) for i in range(2000)]
        junk = [json.dumps({"event_id": str(uuid.uuid4()), "nir": "1" * 15, "n": i}).encode() for i in range(2000)]
        keys = _keys_for({2, 3, 4, 5}, len(timed), total, "v")
        sent: list[float] = []
        started = time.monotonic()
        for i, (key, event) in enumerate(zip(keys, timed, strict=True)):
            while time.monotonic() < started + i / rate:
                producer.poll(0.001)
            if i == 3 * rate:  # after 3 s of valid traffic: the whole flood at once
                for fkey, value in zip(flood_keys, [*unknown, *junk], strict=True):
                    producer.produce(s.ingress_topic, value, fkey, partition=zlib.crc32(fkey) % total)
                producer.poll(0)
            sent.append(time.time() * 1000)
            producer.produce(s.ingress_topic, v1.encode(dict(event)), key, partition=zlib.crc32(key) % total)
            producer.poll(0)
        producer.flush(30)
        env.drain(timeout_s=240)
        time.sleep(1.0)
        arrivals.stop()
        alive = worker.process.poll() is None
    finally:
        code = worker.stop()
    latencies = sorted(arrivals.seen[ref] - sent[i] for ref, i in spf_key.items() if ref in arrivals.seen)
    missing = len(spf_key) - len(latencies)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)]

    dead = _dead_letters(env)
    load = os.getloadavg()[0]
    print(
        f"\n[flood] {len(latencies)} valid events timed ({missing} unseen): p50 {pct(0.5):.0f} ms, "
        f"p95 {pct(0.95):.0f} ms, p99 {pct(0.99):.0f} ms, max {latencies[-1]:.0f} ms; dead letters {dict(dead)}; "
        f"load {load:.1f}"
    )
    assert alive and code == 0
    assert missing == 0
    assert dead["unknown_schema_id"] == 2000 and dead["not_framed"] == 2000
    # 1 s on an otherwise idle 2-core machine. Other work on the machine (other test sessions, CI
    # neighbours) takes CPU from the worker and the registry: the bound grows with the load
    # average beyond the 2 cores, at most 2.5 s (before the fix, p99 was 5-6 s at any load).
    bound = 1000 * min(2.5, max(1.0, load / 2))
    assert pct(0.99) < bound, f"valid events waited behind the flood: p99 {pct(0.99):.0f} ms (bound {bound:.0f})"
