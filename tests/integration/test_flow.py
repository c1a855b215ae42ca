"""End to end on the real broker and registry: ingress → worker process → agency topics + DLQ.

Agency topics are read back with an independent client (kafka-python consumer) and decoded
with plain fastavro against the checked-in output contracts, not with the project's codec.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from kafka import TopicPartition

from streams.assembly import load_policy_set
from streams.contracts.registry import HttpSchemaRegistry
from streams.contracts.schemas import strip_logical_types
from streams.contracts.wire import frame
from streams.crypto.envelope import DataKeyStore
from streams.crypto.ring import PrivateKeyRing
from streams.crypto.views import RecordOpener, encrypted_fields, key_topic
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import ReadRecord, read_from
from streams.kafka.publish import event_encoder, framed_events
from streams.policy.engine import Minimiser
from streams.policy.outputs import output_schema
from streams.stack.settings import Endpoints

from .conftest import Env, Worker, make_env

EVENTS = 3_000


def _nir_with_bad_key(nir: str) -> str:
    return nir[:13] + f"{(int(nir[13:]) + 1) % 97:02d}"


@pytest.fixture(scope="module")
def flow(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Publish v1+v2 events with poison records between them through one real worker."""
    tmp = tmp_path_factory.mktemp("flow")
    env = make_env(stack, tmp, "flow")
    registry = HttpSchemaRegistry(env.settings.registry_url)
    v1 = event_encoder(registry, env.settings.ingress_topic, 1)
    v2 = event_encoder(registry, env.settings.ingress_topic, 2)
    events_v1 = list(generate_events(EVENTS // 2, GeneratorSettings(seed=101, positive_share=0.4)))
    events_v2 = list(generate_events(EVENTS // 2, GeneratorSettings(seed=202, positive_share=0.4, schema_version=2)))
    bad_nir = dict(
        events_v1[0], event_id="11111111-1111-4111-8111-111111111111", nir=_nir_with_bad_key(str(events_v1[0]["nir"]))
    )
    valid_body = v1.encode(dict(events_v1[1]))
    poison = [
        (b"poison-random", b"\x8f" + random.Random(5).randbytes(80), ()),
        (b"poison-magic", b"\x01" + valid_body[1:], ()),
        (b"poison-unknown-id", frame(999_999, valid_body[5:]), ()),
        (b"poison-nir", v1.encode(bad_nir), ()),
    ]
    records: list[Any] = []
    mixed = list(framed_events(events_v1, v1)) + list(framed_events(events_v2, v2))
    random.Random(7).shuffle(mixed)
    for i, chunk_start in enumerate(range(0, len(mixed), len(mixed) // 4)):
        records += mixed[chunk_start : chunk_start + len(mixed) // 4]
        if i < len(poison):
            records.append(poison[i])
    env.publish(records)
    worker = Worker(env, tmp / "worker.log")
    try:
        env.drain(timeout_s=240)
    finally:
        code = worker.stop()
    yield {
        "env": env,
        "events": events_v1 + events_v2,
        "worker_exit": code,
        "worker_log": worker.log(),
        "registry": registry,
        "poison": poison,
    }


def _read_all(env: Env, topic: str) -> list[ReadRecord]:
    full = env.settings.topic_prefix + topic if not topic.startswith(env.settings.topic_prefix) else topic
    start = {TopicPartition(full, p): 0 for p in range(env.partitions[full])}
    return read_from(env.settings.bootstrap_servers, start, auth=env.settings.kafka_auth)


def _decode(value: bytes, schema: dict[str, Any]) -> dict[str, Any]:
    assert value[0] == 0
    return dict(
        fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(strip_logical_types(schema)), None)
    )


def _opener(env: Env, agency: str, topic: str) -> RecordOpener:
    """What the agency decrypts with: its private key and its key topic (empty for agencies that encrypt nothing)."""
    store = DataKeyStore(agency, env.private_ring(agency) if agency in env.private_keys else PrivateKeyRing([]))
    for record in _read_all(env, key_topic(topic)):
        store.add(record.value)
    return RecordOpener(store)


def test_worker_exits_cleanly_and_never_logs_identifying_data(flow: dict[str, Any]) -> None:
    """SIGTERM stops the worker with exit 0, and its log holds no NIR, name, phone or email."""
    assert flow["worker_exit"] == 0, flow["worker_log"][-2000:]
    log = flow["worker_log"]
    for event in flow["events"][:500]:
        for field in ("nir", "last_name", "phone", "email"):
            value = event.get(field)
            if isinstance(value, str) and len(value) >= 6:
                assert value not in log


def test_every_agency_topic_holds_exactly_the_expected_views(flow: dict[str, Any]) -> None:
    """Each agency topic holds exactly the views the policies derive, decodable with the checked-in contract
    and, for encrypted fields, decrypted with the agency's private key and its key topic."""
    env: Env = flow["env"]
    policy_set = load_policy_set(env.settings)
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, DEFAULT_GEOGRAPHY)
    expected: dict[str, dict[str, dict[str, Any]]] = {}
    for event in flow["events"]:
        for view in minimiser.apply(event):
            expected.setdefault(view.agency.topic, {})[view.record["event_ref"]] = view.record
    registry: HttpSchemaRegistry = flow["registry"]
    for policy in policy_set.policies:
        # The contract the policy in use derives (the checked-in one for the shipped policies, which
        # `policy check` pins; these tests run them without SPF's small-cell option, see conftest).
        contract = output_schema(policy, policy_set.input_schema)
        regions = sorted(DEFAULT_GEOGRAPHY.region_names) if policy.route else [""]
        for region in regions:
            topic = policy.topic.replace("{region}", region)
            records = _read_all(env, topic)
            opener = _opener(env, policy.recipient + (f".{region}" if region else ""), topic)
            got = {}
            for record in records:
                assert record.value is not None
                schema_id = int.from_bytes(record.value[1:5], "big")
                assert json.loads(registry.get_schema(schema_id)) == contract
                wire = _decode(record.value, contract)
                view = opener.open(wire, schema_id, contract, record.topic, f"{record.topic}@{record.offset}")
                for name in encrypted_fields(contract):  # on the wire: ciphertext, never the value
                    assert wire[name] is None or (isinstance(wire[name], bytes) and wire[name] != view[name])
                assert record.key == view["event_ref"].encode()
                assert dict(record.headers)["policy.version"] == policy.version.encode()
                got[view["event_ref"]] = view
            assert len(got) == len(records), f"duplicates on {topic}"
            assert got == expected.get(topic, {}), f"unexpected content on {topic}"
    assert sum(len(v) for v in expected.values()) > EVENTS


def test_each_poison_record_is_dead_lettered_with_a_distinct_reason(flow: dict[str, Any]) -> None:
    """Random bytes, wrong magic, unknown schema id and bad NIR key each land in the DLQ with their own reason."""
    env: Env = flow["env"]
    dead = env.dead_letters()  # sealed to the operators: opened with their key
    codes = {r.key: dict(r.headers)["dlq.reason.code"].decode() for r in dead}
    assert codes == {
        b"poison-random": "not_framed",
        b"poison-magic": "bad_magic",
        b"poison-unknown-id": "unknown_schema_id",
        b"poison-nir": "invalid_nir",
    }
    by_key = {r.key: r for r in dead}
    for key, value, _ in flow["poison"]:
        record = by_key[key]
        headers = dict(record.headers)
        assert record.value == value  # raw input kept for replay
        assert headers["dlq.source.topic"] == env.settings.ingress_topic.encode()
        assert int(headers["dlq.source.offset"]) >= 0 and headers["dlq.reason"]


def test_spf_counts_every_production_event(flow: dict[str, Any]) -> None:
    """Every valid production event, v1 or v2, reaches surveillance exactly once."""
    env: Env = flow["env"]
    production = sum(1 for e in flow["events"] if e["processing_mode"] == "P")
    assert len(_read_all(env, "surveillance.spf.results.v1")) == production
    assert Counter(e["processing_mode"] for e in flow["events"])["P"] < EVENTS  # T/D present, dropped


def test_registry_client_against_the_real_registry(stack: Endpoints, tmp_path: Path) -> None:
    """Registering is idempotent, ids resolve back, and an unknown id is SchemaNotFound."""
    from streams.contracts.registry import SchemaNotFound

    registry = HttpSchemaRegistry(stack.registry_url)
    schema = json.dumps(
        {"type": "record", "name": "Probe", "fields": [{"name": "a", "type": "int", "class": "technical"}]}
    )
    subject = f"it.probe.{tmp_path.name}-value"
    first = registry.register(subject, schema)
    fresh = HttpSchemaRegistry(stack.registry_url)
    assert fresh.register(subject, schema) == first
    assert json.loads(fresh.get_schema(first)) == json.loads(schema)
    with pytest.raises(SchemaNotFound):
        fresh.get_schema(987_654_321)
