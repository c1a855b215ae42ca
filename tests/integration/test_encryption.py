"""Encryption for the recipient on the real broker: a real worker, a key rotated while it runs, the agency client.

One worker processes two phases of events. Between them CNAM makes its next key pair (valid from
a few seconds later) and the processor imports the public half with the CLI, while the worker
keeps running (no restart). Then, with ``screening-streams agency consume`` as the agency runs it:

* both private keys read every record, exactly as the policy derives it;
* the new key alone reads exactly the records written from its valid_from (the old period is
  shredded once its private key is destroyed): the client stops with an error naming the first
  unreadable record, or with ``--skip-shredded`` skips and counts them;
* a wrong key, a tampered ciphertext, a value moved from another record and a record whose data
  key is missing each stop the client with a clear error naming the record, never garbage;
* the broker's log segments hold the events' NIRs, names, phones, emails and address lines in the
  ingress topic only, never in agency or key topics, the dead-letter topic (events rejected late,
  after decoding, are dead-lettered sealed to the operators' key) or the audit topic.

The forging test appends records to the CNAM topic: it runs last.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from kafka import KafkaProducer, TopicPartition

from streams.assembly import load_policy_set
from streams.audit.keys import generate_secret, write_secret
from streams.contracts.registry import HttpSchemaRegistry
from streams.contracts.schemas import load_schema, schema_dir, strip_logical_types, to_readable
from streams.contracts.wire import frame
from streams.crypto.envelope import DATA_KEY_ID_BYTES, DataKeyStore, parse_key_record
from streams.crypto.errors import DecryptionError
from streams.crypto.keys import generate_key_pair, load_private_key_file, write_key_pair
from streams.crypto.letters import dlq_key_topic
from streams.crypto.reader import AgencyRecordReader
from streams.crypto.ring import PrivateKeyRing
from streams.crypto.views import encrypted_fields, key_topic, plaintext_schema
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import ReadRecord, read_from
from streams.kafka.publish import event_encoder, framed_events
from streams.policy.engine import Minimiser
from streams.policy.outputs import contract_path
from streams.stack.settings import Endpoints, StackSettings

from .conftest import Env, Worker, make_env

PHASE = 400  # events per phase
CNAM = "tracing.cnam.results.v1"
IDENTIFYING = ("nir", "last_name", "first_names", "phone", "email", "prescriber_last_name", "prescriber_phone")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cli(env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _events(seed: int) -> list[dict[str, Any]]:
    return [dict(e) for e in generate_events(PHASE, GeneratorSettings(seed=seed, positive_share=0.6))]


def _rejected_late(count: int) -> list[dict[str, Any]]:
    """Events that decode but fail validation (their raw value holds real-looking NIRs, names, phones...):
    half with a wrong NIR key (invalid_nir), half from commune 97501, in no region (unknown_commune)."""
    events = _events(63)[:count]
    for i, event in enumerate(events):
        if i % 2:
            event["nir"] = event["nir"][:13] + "00"  # a NIR key is 01..97
        else:
            event.update(commune_code="97501", result="POSITIVE", processing_mode="P")
    return events


@pytest.fixture(scope="module")
def run(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Phase 1 under CNAM's first key; CNAM's next key imported while the worker runs; phase 2 under it."""
    tmp = tmp_path_factory.mktemp("encryption")
    env = make_env(stack, tmp, "crypto")
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    audit_key = tmp / "audit.key"
    write_secret(audit_key, generate_secret())
    extra = {"SCREENING_PUBLIC_KEYS_RELOAD_S": "1", "SCREENING_AUDIT_KEY_FILE": str(audit_key)}
    worker = Worker(env, tmp / "worker.log", extra_env=extra)
    phase1, phase2, rejected = _events(61), _events(62), _rejected_late(60)
    try:
        env.publish(framed_events(phase1 + rejected, encoder))
        env.drain(timeout_s=240)
        first = load_private_key_file(env.private_keys["cnam"]).public
        rotation_ms = int(time.time() * 1000) + 3000
        made = _cli(
            env,
            "agency",
            "keygen",
            "--recipient",
            "cnam",
            "--valid-from",
            _iso(rotation_ms),
            "--valid-until",
            _iso(first.valid_until_ms + 30 * 86_400_000),
            "--out",
            str(tmp / "cnam-next"),
        )
        [next_public] = (tmp / "cnam-next").glob("*.public.json")
        [next_private] = (tmp / "cnam-next").glob("*.private.json")
        imported = _cli(env, "agency", "import-key", str(next_public))
        time.sleep(max(0.0, (rotation_ms - time.time() * 1000) / 1000) + 2.5)  # past valid_from + one reload
        env.publish(framed_events(phase2, encoder))
        env.drain(timeout_s=240)
    finally:
        code = worker.stop()
    yield {
        "env": env,
        "phase1": phase1,
        "phase2": phase2,
        "rejected": rejected,
        "old_private": env.private_keys["cnam"],
        "new_private": next_private,
        "rotation_ms": rotation_ms,
        "worker_exit": code,
        "worker_log": worker.log(),
        "cli_output": made.stdout + imported.stdout,
    }


def _topic(env: Env, topic: str) -> list[ReadRecord]:
    full = env.settings.topic_prefix + topic
    start = {TopicPartition(full, p): 0 for p in range(env.partitions[full])}
    return read_from(env.settings.bootstrap_servers, start, auth=env.settings.kafka_auth)


def _expected(env: Env, events: list[dict[str, Any]], agency: str) -> dict[str, dict[str, Any]]:
    """What the agency must read: the policy's views of ``events``, rendered as the client renders them."""
    policy_set = load_policy_set(env.settings)
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, DEFAULT_GEOGRAPHY)
    out = {}
    for event in events:
        for view in minimiser.apply(event):
            if view.agency.agency == agency:
                readable = plaintext_schema(load_schema(contract_path(schema_dir(), view.agency.policy)))
                out[view.record["event_ref"]] = to_readable(view.record, readable)
    return out


def _consume(
    env: Env, agency: str, *keys: Path, fmt: str = "jsonl", start: str = "beginning", check: bool = True
) -> Any:
    args = ["agency", "consume", "--recipient", agency, "--format", fmt, "--from", start, "--timeout", "3"]
    for key in keys:
        args += ["--private-key", str(key)]
    return _cli(env, *args, check=check)


def test_the_worker_took_the_new_key_without_a_restart(run: dict[str, Any]) -> None:
    """The same worker process ran both phases, reloaded the key directory, and stopped cleanly."""
    assert run["worker_exit"] == 0, run["worker_log"][-2000:]
    assert "public key directory" in run["worker_log"] and "reloaded" in run["worker_log"]
    assert "imported key" in run["cli_output"] and "0600" in run["cli_output"]


def test_both_private_keys_read_exactly_the_policy_views_of_both_phases(run: dict[str, Any]) -> None:
    """The reference client (jsonl) with the old and new keys writes exactly CNAM's views, nothing more."""
    env: Env = run["env"]
    done = _consume(env, "cnam", run["old_private"], run["new_private"])
    got = {r["event_ref"]: r for r in map(json.loads, done.stdout.splitlines())}
    expected = _expected(env, run["phase1"] + run["phase2"], "cnam")
    assert len(got) == len(done.stdout.splitlines()) == len(expected) > PHASE // 2
    assert got == expected
    assert f"{len(expected)} records of" in done.stderr


def test_an_ars_region_reads_its_collective_housing_names_as_csv(run: dict[str, Any]) -> None:
    """CSV output: header = the contract's fields; names and phone decrypted only where collective housing."""
    env: Env = run["env"]
    events = run["phase1"] + run["phase2"]
    region = max(
        DEFAULT_GEOGRAPHY.region_names,
        key=lambda r: sum(
            1
            for e in events
            if e["collective_housing"] != "NONE" and DEFAULT_GEOGRAPHY.region_of(str(e["commune_code"])) == r
        ),
    )
    agency = f"ars.{region}"
    done = _consume(env, agency, env.private_keys[agency], fmt="csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    expected = _expected(env, events, agency)
    assert {r["event_ref"] for r in rows} == set(expected) and rows
    contract = load_schema(
        contract_path(schema_dir(), next(p for p in load_policy_set(env.settings).policies if p.route))
    )
    assert list(rows[0]) == [f["name"] for f in contract["fields"]]
    named = [r for r in rows if r["last_name"]]
    assert named and all(r["last_name"] == expected[r["event_ref"]]["last_name"] for r in named)
    assert all(r["collective_housing"] != "NONE" for r in named)


def test_new_records_use_the_new_key_and_old_ones_stay_under_the_old(run: dict[str, Any]) -> None:
    """Every CNAM data key of phase 1 is sealed to the first key, every one of phase 2 to the next key."""
    env: Env = run["env"]
    sealed_to = {}
    for record in _topic(env, key_topic(CNAM)):
        parsed = parse_key_record(record.value)
        sealed_to[parsed.data_key_id] = parsed.public_key_id
    old_id = load_private_key_file(run["old_private"]).key_id
    new_id = load_private_key_file(run["new_private"]).key_id
    assert set(sealed_to.values()) == {old_id, new_id}
    reader = AgencyRecordReader(HttpSchemaRegistry(env.settings.registry_url), DataKeyStore("cnam", PrivateKeyRing([])))
    phase2 = set(_expected(env, run["phase2"], "cnam"))
    for record in _topic(env, CNAM):
        _, raw = reader.decode(record.value, "x")
        data_key = raw["nir"][1 : 1 + DATA_KEY_ID_BYTES]
        assert sealed_to[data_key] == (new_id if raw["event_ref"] in phase2 else old_id)


def test_destroying_the_old_private_key_shreds_exactly_its_period(run: dict[str, Any]) -> None:
    """With only the new key: the client stops at the first old record, naming it; with --skip-shredded it reads
    every phase-2 record and counts the phase-1 ones it cannot open; a library read finds each of those unreadable."""
    env: Env = run["env"]
    new_only = _consume(env, "cnam", run["new_private"], check=False)
    assert new_only.returncode == 2
    assert f"{env.settings.topic_prefix}{CNAM}[" in new_only.stderr and "destroyed" in new_only.stderr
    for event in run["phase1"][:50]:
        assert str(event["nir"]) not in new_only.stderr + new_only.stdout
    kept = _cli(
        env,
        "agency",
        "consume",
        "--recipient",
        "cnam",
        "--private-key",
        str(run["new_private"]),
        "--skip-shredded",
        "--timeout",
        "3",
    )
    assert {json.loads(line)["event_ref"] for line in kept.stdout.splitlines()} == set(
        _expected(env, run["phase2"], "cnam")
    )
    old_id = load_private_key_file(run["old_private"]).key_id
    assert f"{len(_expected(env, run['phase1'], 'cnam'))} records skipped: sealed to public key {old_id}" in kept.stderr
    store = DataKeyStore("cnam", PrivateKeyRing([load_private_key_file(run["new_private"])], "cnam"))
    for record in _topic(env, key_topic(CNAM)):
        store.add(record.value)
    reader = AgencyRecordReader(HttpSchemaRegistry(env.settings.registry_url), store)
    phase1 = set(_expected(env, run["phase1"], "cnam"))
    unreadable = 0
    for record in _topic(env, CNAM):
        try:
            reader.read(record.topic, record.partition, record.offset, record.value)
        except DecryptionError as exc:
            assert exc.code == "no_private_key"
            unreadable += 1
    assert unreadable == len(phase1) > 0


def test_late_rejections_are_dead_lettered_sealed_and_open_to_their_raw_input(run: dict[str, Any]) -> None:
    """Each late rejection is one dead letter (invalid_nir / unknown_commune) whose readable headers say why,
    and whose raw value, once opened with the operators' key, is the event as published, NIR and names in it."""
    env: Env = run["env"]
    letters = env.dead_letters()
    assert len(letters) == len(run["rejected"])
    codes = sorted(dict(r.headers)["dlq.reason.code"].decode() for r in letters)
    assert codes == sorted(["invalid_nir", "unknown_commune"] * (len(run["rejected"]) // 2))
    nirs = {str(e["nir"]).encode() for e in run["rejected"]}
    assert {n for n in nirs if any(n in (r.value or b"") for r in letters)} == nirs


def test_no_topic_but_the_ingress_holds_identifying_bytes_on_disk(run: dict[str, Any]) -> None:
    """Every log segment of this run's topics, scanned for NIRs, names, phones, emails, address lines (of the
    delivered and of the dead-lettered events): hits in the ingress topic only (which proves the scan finds
    them), none in agency or key topics, the DLQ, the DLQ's key topic or the audit topic."""
    env: Env = run["env"]
    stack = StackSettings.from_env(os.environ)
    if stack.external_bootstrap:
        pytest.skip("an external cluster's disks are not visible here")
    needles = set()
    for event in run["phase1"] + run["phase2"] + run["rejected"]:
        for name in IDENTIFYING:
            value = event.get(name)
            if isinstance(value, str) and len(value) >= 6:
                needles.add(value.encode())
        needles |= {line.encode() for line in event["address_lines"] if len(line) >= 8}
    hits: dict[str, int] = {}
    segments = list((stack.state_dir / "kafka-data").glob(f"{env.settings.topic_prefix}*/*.log"))
    assert segments
    for segment in segments:
        data = segment.read_bytes()
        topic = segment.parent.name.rsplit("-", 1)[0]
        hits[topic] = hits.get(topic, 0) + sum(1 for n in needles if n in data)
    ingress = env.settings.ingress_topic
    print(f"[disk scan] {len(segments)} segments, {len(needles)} values; hits per topic: {hits}")
    assert hits.pop(ingress) > len(needles) // 2
    scanned = {t for t in hits if ".results." in t or ".keys." in t}
    assert (
        f"{env.settings.topic_prefix}{CNAM}" in scanned and f"{env.settings.topic_prefix}{key_topic(CNAM)}" in scanned
    )
    dlq, audit = env.settings.dlq_topic, env.settings.audit_topic
    assert {dlq, dlq_key_topic(dlq), audit} <= set(hits)  # their segments were scanned
    assert {t: n for t, n in hits.items() if n} == {}


def _forge(env: Env, value: bytes) -> tuple[int, int, str]:
    """Write ``value`` into the CNAM topic as an attacker with write access would; (partition, offset, start)."""
    start = _iso(int(time.time() * 1000))
    time.sleep(0.01)
    producer = KafkaProducer(bootstrap_servers=env.settings.bootstrap_servers, **env.settings.kafka_auth.kafka_python())
    try:
        meta = producer.send(env.settings.topic_prefix + CNAM, value=value, key=b"forged", partition=0).get(30)
    finally:
        producer.close()
    time.sleep(0.01)
    return meta.partition, meta.offset, start


def test_wrong_key_tampering_moving_and_missing_keys_each_stop_the_client_naming_the_record(
    run: dict[str, Any], tmp_path: Path
) -> None:
    """Each case exits 2 with an error naming topic[partition]@offset and what went wrong, writes no record,
    and quotes no identifying value."""
    env: Env = run["env"]
    keys = (run["old_private"], run["new_private"])
    stranger, _ = write_key_pair(tmp_path, generate_key_pair("cnam", 0, 4_102_444_800_000))
    wrong = _consume(env, "cnam", stranger, check=False)
    assert wrong.returncode == 2 and "not among those supplied" in wrong.stderr and not wrong.stdout
    assert f"{env.settings.topic_prefix}{CNAM}[" in wrong.stderr

    reader = AgencyRecordReader(HttpSchemaRegistry(env.settings.registry_url), DataKeyStore("cnam", PrivateKeyRing([])))
    first, second = _topic(env, CNAM)[:2]
    schema_id, one = reader.decode(first.value, "x")
    _, other = reader.decode(second.value, "x")
    contract = reader._writer(schema_id).schema
    parsed = fastavro.parse_schema(strip_logical_types(contract))
    assert "nir" in encrypted_fields(contract)

    def encoded(record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, record)
        return frame(schema_id, buffer.getvalue())

    flipped = bytearray(one["nir"])
    flipped[-1] ^= 1
    missing = bytearray(one["nir"])
    missing[1 : 1 + DATA_KEY_ID_BYTES] = bytes(DATA_KEY_ID_BYTES)
    cases = {
        "tampered": ({**one, "nir": bytes(flipped)}, "authentication failed"),
        "moved from another record": ({**one, "nir": other["nir"]}, "moved from another record"),
        "moved to another field": ({**one, "last_name": one["nir"]}, "field 'last_name'"),
        "missing data key": ({**one, "nir": bytes(missing)}, "is not in the agency's key topic"),
    }
    secrets = [str(e[n]) for e in run["phase1"][:100] for n in IDENTIFYING if e.get(n)]
    for case, (record, message) in cases.items():
        partition, offset, start = _forge(env, encoded(record))
        done = _consume(env, "cnam", *keys, start=start, check=False)
        assert done.returncode == 2, (case, done.stderr)
        assert f"{env.settings.topic_prefix}{CNAM}[{partition}]@{offset}" in done.stderr, (case, done.stderr)
        assert message in done.stderr, (case, done.stderr)
        assert not done.stdout, case
        assert not any(s in done.stderr for s in secrets), case
