"""The main job, end to end on real servers: the README's first command.

Brings up the local broker and registry, creates topics, starts a real worker process,
publishes N synthetic events plus a few poison records, waits until the worker has committed
everything, prints per-topic counts, dead-letter reasons and sample minimised records decoded
independently against the checked-in output contracts, then shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import fastavro
from kafka import TopicPartition

from streams.assembly import agency_names, hold_topics, key_holders, load_policy_set, output_topics
from streams.contracts.registry import HttpSchemaRegistry
from streams.contracts.schemas import load_schema, schema_dir, strip_logical_types, to_readable
from streams.contracts.wire import frame
from streams.credentials import ADMIN, PRODUCER, stack_credentials_file
from streams.crypto.envelope import DataKeyStore
from streams.crypto.reader import AgencyRecordReader
from streams.crypto.ring import PrivateKeyRing, throwaway_key_pairs
from streams.crypto.views import encrypted_fields, key_topic
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.acl import agency_users
from streams.kafka.acl_apply import apply_plan
from streams.kafka.offsets import (
    KafkaIOError,
    count_records,
    end_offsets,
    read_from,
    wait_for_lag_zero,
    wait_for_members,
)
from streams.kafka.publish import event_encoder, framed_events, publish_raw
from streams.kafka.topics import create_topics
from streams.pipeline import H_CODE
from streams.policy.outputs import contract_path
from streams.policy.pseudonyms import generate_keys, write_key_file
from streams.settings import Settings, settings_from_env
from streams.stack import lifecycle
from streams.stack.settings import StackSettings

Echo = Callable[[str], None]


def poison_records(valid_body: bytes) -> list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]:
    """Four kinds of bad input the demo mixes in: each must end in the dead-letter topic."""
    return [
        (b"poison-random", bytes(range(7, 60)), ()),
        (b"poison-magic", b"\x07" + valid_body[1:], ()),
        (b"poison-unknown-id", frame(987_654, valid_body[5:]), ()),
        (b"poison-truncated", valid_body[:20], ()),
    ]


def _agencies_and_topics(settings: Settings) -> tuple[list[str], list[str]]:
    policy_set = load_policy_set(settings)
    return agency_names(policy_set), output_topics(policy_set)


def still_held(settings: Settings, before: dict[TopicPartition, int]) -> dict[str, int]:
    """Per hold topic, the views small-cell protection still holds: hold records minus those their
    class's open records released (k - 1 each: a class opens on its k-th member)."""
    out = {}
    for policy in load_policy_set(settings).policies:
        if policy.k_anonymity is None:
            continue
        topic = settings.hold_topic(policy.recipient)
        kinds = Counter(
            dict(r.headers).get("smallcell.entry", b"?").decode()
            for r in read_from(
                settings.bootstrap_servers,
                {tp: o for tp, o in before.items() if tp.topic == topic},
                auth=settings.kafka_auth,
            )
        )
        out[topic] = kinds["hold"] - kinds["open"] * (policy.k_anonymity.k - 1)
    return out


def run_demo(count: int, seed: int, keep_running: bool, echo: Echo = print) -> None:
    """Run the whole job once and print the summary (see module docstring)."""
    started = time.monotonic()
    stack = StackSettings.from_env(os.environ)
    endpoints = lifecycle.up(stack, echo=echo, users=agency_users(load_policy_set(settings_from_env())))
    state = stack.state_dir / "demo"
    state.mkdir(parents=True, exist_ok=True)
    # The demo sets up as the admin (topics, ACLs, the summary's reads), publishes as the screening
    # system and runs the worker as the processor: each with its own credentials and ACLs.
    settings = settings_from_env(credentials=stack_credentials_file(stack.state_dir, ADMIN)).with_(
        bootstrap_servers=endpoints.bootstrap_servers, registry_url=endpoints.registry_url, state_dir=state
    )
    producer = settings_from_env(credentials=stack_credentials_file(stack.state_dir, PRODUCER)).kafka_auth
    agencies, outputs = _agencies_and_topics(settings)
    keys_file = state / "throwaway-keys.json"
    write_key_file(keys_file, generate_keys(agencies), force=True)  # fresh throw-away keys each run
    echo(f"throw-away pseudonymisation keys for {len(agencies)} agencies: {keys_file}")
    private_keys = _agency_keys(settings, state)
    echo(
        f"throw-away agency key pairs for {len(private_keys) - 1} agencies that receive encrypted fields and for "
        f"the operators (dead letters are sealed to them): private halves in {state / 'agency-keys'} (the "
        f"agencies' and operators' side), public halves imported into {state / 'public-keys'} (the worker's)"
    )

    partitions = create_topics(settings, outputs, hold_topics(settings, load_policy_set(settings)))
    if settings.kafka_auth.sasl:
        change = apply_plan(settings, load_policy_set(settings))
        echo(f"ACLs: {len(change.added)} added, {len(change.removed)} removed, {change.kept} unchanged")
    topics = sorted(partitions)
    before = end_offsets(settings.bootstrap_servers, topics, auth=settings.kafka_auth)

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": settings.registry_url,
        "SCREENING_KEYS_FILE": str(keys_file),
        "SCREENING_PUBLIC_KEYS_DIR": str(state / "public-keys"),
        "SCREENING_STATE_DIR": str(state),
        "SCREENING_TOPIC_PREFIX": settings.topic_prefix,
    }
    log_path = state / "worker.log"
    with log_path.open("ab") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    echo(f"worker started (pid {worker.pid}, log {log_path})")
    try:
        try:
            joined = wait_for_members(
                settings.bootstrap_servers,
                settings.group_id,
                timeout_s=120,
                gone=lambda: None if worker.poll() is None else f"the worker exited with {worker.returncode}",
                auth=settings.kafka_auth,
            )
        except KafkaIOError as exc:  # the worker's log holds no record contents (dead letters name offsets only)
            raise KafkaIOError(f"{exc}; the worker's log ({log_path}) ends with:\n{_tail(log_path)}") from exc
        echo(f"worker joined the consumer group in {joined:.1f} s")
        encoder = event_encoder(HttpSchemaRegistry(settings.registry_url), settings.ingress_topic, 1)
        events = list(generate_events(count, GeneratorSettings(seed=seed)))
        poison = poison_records(encoder.encode(dict(events[0])))
        t_publish = time.monotonic()
        records = [
            *framed_events(events[: count // 2], encoder),
            *poison,
            *framed_events(events[count // 2 :], encoder),
        ]
        asyncio.run(
            publish_raw(
                settings.bootstrap_servers,
                settings.ingress_topic,
                records,
                partitions[settings.ingress_topic],
                auth=producer,
            )
        )
        published = time.monotonic()
        echo(f"published {count} events + {len(poison)} poison records in {published - t_publish:.1f} s")
        wait_for_lag_zero(
            settings.bootstrap_servers,
            settings.group_id,
            settings.ingress_topic,
            timeout_s=600,
            on_progress=None,
            auth=settings.kafka_auth,
        )
        done = time.monotonic()
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {log_path}")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
    delta = count_records(settings.bootstrap_servers, before, auth=settings.kafka_auth)
    _summary(settings, delta, before, count + len(poison), done - t_publish, echo, private_keys)
    echo(f"\ndemo finished in {time.monotonic() - started:.1f} s; worker stopped (exit {worker.returncode})")
    if not keep_running:
        lifecycle.down(stack, echo=echo)


def _tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _agency_keys(settings: Settings, state: Path) -> dict[str, Path]:
    """Fresh throw-away key pairs for the encrypting agencies and the operators (previous runs' keys are removed)."""
    for name in ("agency-keys", "public-keys"):
        shutil.rmtree(state / name, ignore_errors=True)
    holders = key_holders(load_policy_set(settings))
    return throwaway_key_pairs(holders, state / "agency-keys", state / "public-keys", int(time.time() * 1000))


def _summary(
    settings: Settings,
    delta: dict[str, int],
    before: dict[TopicPartition, int],
    sent: int,
    seconds: float,
    echo: Echo,
    private_keys: dict[str, Path],
) -> None:
    echo(f"\n{'topic':<40} {'records':>8}")
    echo(f"{'-' * 40} {'-' * 8}")
    ingress, dlq = settings.ingress_topic, settings.dlq_topic
    echo(f"{ingress + ' (in)':<40} {delta.get(ingress, 0):>8}")
    held = still_held(settings, before)
    for topic in sorted(delta):
        if topic not in (ingress, dlq, settings.audit_topic, *held):
            echo(f"{topic:<40} {delta[topic]:>8}")
    for topic, count in held.items():  # small-cell protection: released when the class has k, or the window closes
        echo(f"{topic + ' (held)':<40} {count:>8}")
    echo(f"{dlq + ' (dead letters)':<40} {delta.get(dlq, 0):>8}")
    echo(
        f"\nend-to-end: {sent} records in {seconds:.1f} s = {sent / seconds:,.0f} records/s "
        "(first publish to last commit, worker already in the group)"
    )
    reasons = Counter(
        dict(r.headers).get(H_CODE, b"?").decode()
        for r in read_from(
            settings.bootstrap_servers, {tp: o for tp, o in before.items() if tp.topic == dlq}, auth=settings.kafka_auth
        )
    )
    echo("dead-letter reasons: " + ", ".join(f"{code}={n}" for code, n in sorted(reasons.items())))
    policy_set = load_policy_set(settings)
    for policy in policy_set.policies:
        topic = settings.topic_prefix + policy.topic.replace("{region}", "11")
        sample = read_from(
            settings.bootstrap_servers,
            {tp: o for tp, o in before.items() if tp.topic == topic},
            limit=1,
            auth=settings.kafka_auth,
        )
        if not sample or sample[0].value is None:
            continue
        schema = load_schema(contract_path(schema_dir(), policy))
        value = sample[0].value
        parsed = fastavro.parse_schema(strip_logical_types(schema))
        record = cast(dict[str, Any], fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed, None))
        echo(
            f"\nsample from {topic} (schema id {int.from_bytes(value[1:5], 'big')}, "
            f"policy {dict(sample[0].headers).get('policy.version', b'?').decode()}):"
        )
        encrypted = encrypted_fields(schema)
        wire = {k: f"<{len(v)} encrypted bytes>" if k in encrypted and v is not None else v for k, v in record.items()}
        echo(json.dumps(to_readable(wire, schema), ensure_ascii=False))
        agency = policy.recipient + (".11" if policy.route else "")
        if agency in private_keys and any(record.get(name) is not None for name in encrypted):
            store = DataKeyStore(agency, PrivateKeyRing.from_files([private_keys[agency]], agency))
            keys = {
                tp: 0 for tp in end_offsets(settings.bootstrap_servers, [key_topic(topic)], auth=settings.kafka_auth)
            }
            for key_record in read_from(settings.bootstrap_servers, keys, auth=settings.kafka_auth):
                store.add(key_record.value)
            reader = AgencyRecordReader(HttpSchemaRegistry(settings.registry_url), store)
            opened = reader.read(topic, sample[0].partition, sample[0].offset, value)
            echo(f"as {agency} reads it with its private key (encrypted fields decrypted):")
            echo(json.dumps(opened, ensure_ascii=False))
