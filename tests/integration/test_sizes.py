"""Sizes end to end, on the real broker: the largest ingress record is dead-lettered whole, and a
produce error no retry can fix stops the worker with a message naming where and why.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka import TopicPartition

from streams.kafka.batches import EXIT_FATAL
from streams.kafka.offsets import read_from
from streams.pipeline import H_CODE
from streams.settings import BROKER_DEFAULT_MAX_MESSAGE_BYTES
from streams.stack.settings import Endpoints

from .conftest import Env, Worker, agency_result_topics, expected_pairs, lag_retrying, make_env, publish_events

#: A value just under the broker's default message.max.bytes (1 MiB + 12), leaving room for the
#: record batch framing, key and a header: the broker accepts it on the ingress.
HUGE = BROKER_DEFAULT_MAX_MESSAGE_BYTES - 600


def _produce_raw(env: Env, key: bytes, value: bytes, partition: int = 0) -> None:
    """Publish one raw record to the ingress (a producer allowed to send up to 2 MiB)."""
    s = env.settings
    producer = Producer(
        {"bootstrap.servers": s.bootstrap_servers, **s.kafka_auth.librdkafka(), "message.max.bytes": 2 * 1024 * 1024}
    )
    failures: list[str] = []
    producer.produce(
        env.settings.ingress_topic,
        value=value,
        key=key,
        partition=partition,
        headers=[("origin", b"lab-42")],
        on_delivery=lambda err, msg: failures.append(err.name()) if err else None,
    )
    assert producer.flush(30) == 0
    assert failures == [], failures


def _topic_config(env: Env, topic: str, name: str) -> str:
    admin = AdminClient({"bootstrap.servers": env.settings.bootstrap_servers, **env.settings.kafka_auth.librdkafka()})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    return str(configs[name].value)


def test_record_just_under_the_broker_limit_is_dead_lettered_whole(stack: Endpoints, tmp_path: Path) -> None:
    """A ~1 MiB ingress record ends in the DLQ with every byte of its value, and the worker goes on."""
    env = make_env(stack, tmp_path, "sizes")
    s = env.settings
    assert int(_topic_config(env, s.dlq_topic, "max.message.bytes")) == s.dlq_max_message_bytes
    assert int(_topic_config(env, s.ingress_topic, "max.message.bytes")) == s.ingress_max_message_bytes
    value = bytes(range(256)) * (HUGE // 256) + b"\x00" * (HUGE % 256)
    _produce_raw(env, b"huge", value)
    events = publish_events(env, 200, seed=5)  # after the huge record: must still be delivered
    worker = Worker(env, tmp_path / "worker.log")
    try:
        env.drain(timeout_s=120)
        assert worker.process.poll() is None, worker.log()[-2000:]
    finally:
        code = worker.stop()
    assert code == 0
    dlq = env.dead_letters()  # sealed to the operators: opened with their key
    assert len(dlq) == 1
    letter = dlq[0]
    assert letter.value == value and letter.key == b"huge", "dead-lettered whole"
    headers = dict(letter.headers)
    assert headers[H_CODE] == b"oversized_payload"
    assert headers["origin"] == b"lab-42"
    outputs = agency_result_topics(env)
    records = read_from(
        s.bootstrap_servers,
        {TopicPartition(t, p): 0 for t in outputs for p in range(env.partitions[t])},
        auth=s.kafka_auth,
    )
    assert {(r.topic, r.key) for r in records} == expected_pairs(env, events)


def test_non_retriable_produce_error_stops_the_worker_naming_where_and_why(stack: Endpoints, tmp_path: Path) -> None:
    """An agency topic whose max.message.bytes is tiny: the worker exits 70 within seconds, naming
    the ingress topic, partition, offset, the output topic and MSG_SIZE_TOO_LARGE; nothing is
    committed (the records wait for the fix), and the message quotes no event data."""
    env = make_env(stack, tmp_path, "toolarge")
    s = env.settings
    spf = next(t for t in agency_result_topics(env) if ".spf." in t)
    admin = AdminClient({"bootstrap.servers": s.bootstrap_servers, **s.kafka_auth.librdkafka()})
    resource = ConfigResource(
        ResourceType.TOPIC,
        spf,
        incremental_configs=[ConfigEntry("max.message.bytes", "64", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    events = publish_events(env, 50, seed=6)
    worker = Worker(env, tmp_path / "worker.log")
    started = time.monotonic()
    try:
        worker.process.wait(timeout=90)
    finally:
        worker.stop()
    elapsed = time.monotonic() - started
    log = worker.log()
    assert worker.process.returncode == EXIT_FATAL, log[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s to stop"
    line = next(line for line in log.splitlines() if "permanent produce error" in line)
    assert re.search(re.escape(s.ingress_topic) + r"\[\d+\]@\d+", line), line
    assert f"to {spf}[" in line and "MSG_SIZE_TOO_LARGE" in line, line
    assert log.count("permanent produce error") == 1, "stopped at the first, not retried"
    assert lag_retrying(env) == len(events), "nothing committed past the failing batch"
    identifying = [str(e[f]) for e in events for f in ("nir", "last_name", "phone", "email") if e.get(f)]
    assert identifying and not [value for value in identifying if len(value) >= 5 and value in log]
