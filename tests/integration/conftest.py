"""Integration fixtures: the real local Kafka broker and Apicurio registry, once per session.

The stack is fetched with mvn and started by ``streams.stack.lifecycle`` unless
``KAFKA_BOOTSTRAP_SERVERS`` (and ``SCHEMA_REGISTRY_URL``) point at running servers. A stack
this session started is stopped at the end; one that was already running is left alone.
Each test module gets its own topic prefix, so modules never see each other's records.

The broker authenticates every client (SASL/SCRAM) and enforces ACLs. The harness itself
(creating topics, applying the ACL plan, publishing, reading back) runs as the stack's admin;
worker and CLI subprocesses get no credentials from the harness and authenticate as their own
principal (processor, operators, an agency...) through the stack's credentials files, so the
ACL plan is exercised for real.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition

from streams.assembly import agency_names, hold_topics, key_holders, load_policy_set, output_topics
from streams.credentials import KafkaAuth
from streams.crypto.ring import PrivateKeyRing
from streams.kafka.acl import agency_users
from streams.kafka.offsets import ReadRecord, wait_for_lag_zero
from streams.kafka.publish import publish_raw
from streams.kafka.topics import create_topics
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings, settings_from_env
from streams.stack import lifecycle
from streams.stack.settings import Endpoints, StackSettings


@pytest.fixture(scope="session")
def stack() -> Iterator[Endpoints]:
    """Bring up (or reuse) the real broker and registry for the whole test session.

    Besides the stack's own principals, every agency of the shipped policies gets its SCRAM user
    (and credentials file), as ``broker up`` does.
    """
    settings = StackSettings.from_env(os.environ)
    was_running = all(state.startswith("up") for state in lifecycle.status(settings).values())
    started = time.monotonic()
    endpoints = lifecycle.up(
        settings,
        echo=lambda line: print(f"[stack] {line}", file=sys.stderr),
        users=agency_users(load_policy_set(Settings())),
    )
    print(f"[stack] ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    yield endpoints
    if endpoints.managed and not was_running and not os.environ.get("SCREENING_KEEP_STACK"):
        lifecycle.down(settings, echo=lambda line: print(f"[stack] {line}", file=sys.stderr))


def admin_auth() -> KafkaAuth:
    """The credentials the harness uses: the local stack's admin (the environment's with an external broker)."""
    return lifecycle.admin_auth(StackSettings.from_env(os.environ))


#: Credentials a subprocess must not inherit from the test run: it would then not run as its own principal.
_CREDENTIAL_VARIABLES = ("SCREENING_KAFKA_USERNAME", "SCREENING_KAFKA_PASSWORD", "SCREENING_KAFKA_CREDENTIALS_FILE")


@dataclass
class Env:
    """One isolated environment on the shared stack: settings, topics, partitions, keys."""

    settings: Settings
    partitions: dict[str, int]
    keys_file: Path
    keys: StaticKeyRing
    #: Agency side: each encrypting agency's private key file (the processor only has the public ones),
    #: and the operators' (``operators``: dead letters are sealed to them).
    private_keys: dict[str, Path] = field(default_factory=dict)

    def process_env(self) -> dict[str, str]:
        """Environment variables for a worker or CLI subprocess of this environment.

        No Kafka credentials (never the admin's ``settings.kafka_auth``): with the local stack each
        command picks its own principal's credentials file from ``SCREENING_STREAMS_STATE`` (the
        worker runs as the processor...). Only against an external broker, where there is no such
        file, does a subprocess keep the credentials the test run was given.
        """
        policies = {"SCREENING_POLICY_DIR": str(self.settings.policy_dir)} if self.settings.policy_dir else {}
        operators = self.private_keys.get("operators")
        dlq_key = {"SCREENING_DLQ_PRIVATE_KEY": str(operators)} if operators else {}
        stack = StackSettings.from_env(os.environ)
        inherited = dict(os.environ)
        if not stack.external_bootstrap:
            for name in _CREDENTIAL_VARIABLES:
                inherited.pop(name, None)
        return {
            **inherited,
            **policies,
            **dlq_key,
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": self.settings.registry_url,
            "SCREENING_TOPIC_PREFIX": self.settings.topic_prefix,
            "SCREENING_KEYS_FILE": str(self.keys_file),
            "SCREENING_PUBLIC_KEYS_DIR": str(self.settings.public_keys_dir or ""),
            "SCREENING_STATE_DIR": str(self.settings.state_dir),
            "SCREENING_STREAMS_STATE": str(stack.state_dir),
            "SCREENING_LOG_LEVEL": "info",
        }

    def private_ring(self, agency: str) -> PrivateKeyRing:
        """An agency's private key ring (what its reference client is given)."""
        return PrivateKeyRing.from_files([self.private_keys[agency]], agency)

    def dead_letters(self) -> list[ReadRecord]:
        """The DLQ's records with their sealed raw key, value and original headers opened (the operators' key),
        the ``dlq.*`` headers after them: what a dead letter held before sealing."""
        from streams.crypto.letters import LetterOpener, dlq_key_topic
        from streams.kafka.offsets import read_from

        s = self.settings

        def read(topic: str) -> list[ReadRecord]:
            start = {TopicPartition(topic, p): 0 for p in range(self.partitions[topic])}
            return read_from(s.bootstrap_servers, start, auth=s.kafka_auth)

        opener = LetterOpener(self.private_ring("operators"))
        for record in read(dlq_key_topic(s.dlq_topic)):
            opener.add_key_record(record.value)
        out = []
        for r in read(s.dlq_topic):
            raw = opener.open(r.topic, r.partition, r.offset, r.value, r.headers)
            headers = tuple((k, v or b"") for k, v in raw.headers) + r.headers
            out.append(ReadRecord(r.topic, r.partition, r.offset, raw.key, raw.value, headers))
        return out

    def publish(self, records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]) -> int:
        """Publish raw ``(key, value, headers)`` records to this environment's ingress topic."""
        s = self.settings
        return asyncio.run(
            publish_raw(
                s.bootstrap_servers, s.ingress_topic, records, self.partitions[s.ingress_topic], auth=s.kafka_auth
            )
        )

    def drain(self, timeout_s: float = 240) -> float:
        """Wait until the worker group has committed the whole ingress topic; return the seconds."""
        s = self.settings
        return wait_for_lag_zero(
            s.bootstrap_servers, s.group_id, s.ingress_topic, auth=s.kafka_auth, timeout_s=timeout_s
        )


def policies_without_small_cells(tmp: Path) -> Path:
    """A copy of the shipped policies without their ``k_anonymity`` option (SPF's small-cell protection).

    The delivery tests (flow, faults, nemesis, audit...) check that every view the policies derive
    reaches its topic exactly once; under small-cell protection SPF holds views for up to a day,
    so they run on this copy. tests/integration/test_smallcell.py runs the shipped policies.
    """
    import yaml

    from streams.policy.model import default_policy_dir

    target = tmp / "policies-without-small-cells"
    target.mkdir(parents=True, exist_ok=True)
    for path in default_policy_dir().glob("*.yaml"):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc.pop("k_anonymity", None)
        (target / path.name).write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


def make_env(stack: Endpoints, tmp: Path, name: str, *, small_cells: bool = False, **settings_changes: Any) -> Env:
    """Create a fresh topic namespace with throw-away keys on the shared stack (``settings_changes`` on top).

    Without ``small_cells`` the policies are :func:`policies_without_small_cells` (unless a
    ``policy_dir`` is given); with it, the shipped ones, SPF's small-cell protection included.
    The admin creates the topics and applies the policies' ACL plan for the prefix (the worker,
    as the processor, may not create topics); the environment's settings hold the admin's
    credentials, for the harness's own reads and writes.
    """
    from streams.kafka.acl_apply import apply_plan
    from streams.policy.pseudonyms import generate_keys, write_key_file

    prefix = f"it.{name}.{uuid.uuid4().hex[:8]}."
    if not small_cells:
        settings_changes.setdefault("policy_dir", policies_without_small_cells(tmp))
    settings_changes.setdefault("kafka_auth", admin_auth())
    settings = settings_from_env({}).with_(
        bootstrap_servers=stack.bootstrap_servers,
        registry_url=stack.registry_url,
        topic_prefix=prefix,
        state_dir=tmp,
        batch_within_s=0.02,
        **settings_changes,
    )
    policy_set = load_policy_set(settings)
    keys = generate_keys(agency_names(policy_set))
    keys_file = tmp / "keys.json"
    write_key_file(keys_file, keys)
    private_keys = agency_key_files(tmp, key_holders(policy_set))
    settings = settings.with_(public_keys_dir=tmp / "public-keys")
    partitions = create_topics(settings, output_topics(policy_set), hold_topics(settings, policy_set))
    apply_plan(settings, policy_set)
    return Env(settings, partitions, keys_file, StaticKeyRing(keys), private_keys)


def agency_key_files(tmp: Path, agencies: Iterable[str], valid_days: int = 365) -> dict[str, Path]:
    """Each agency makes a key pair valid from yesterday (files under ``tmp/agency-keys``); the processor
    imports the public halves into ``tmp/public-keys``. Returns the private key file of each agency."""
    from streams.crypto.keys import generate_key_pair, write_key_pair
    from streams.crypto.ring import import_public_key

    now = int(time.time() * 1000)
    private_keys = {}
    for agency in agencies:
        pair = generate_key_pair(agency, now - 86_400_000, now + valid_days * 86_400_000)
        private_keys[agency], public = write_key_pair(tmp / "agency-keys", pair)
        import_public_key(tmp / "public-keys", public)
    return private_keys


def publish_events(env: Env, count: int, seed: int) -> list[dict[str, Any]]:
    """Generate ``count`` valid events (30 % positive) and publish them to the ingress topic."""
    from streams.contracts.registry import HttpSchemaRegistry
    from streams.domain.generate import GeneratorSettings, generate_events
    from streams.kafka.publish import event_encoder, framed_events

    events = list(generate_events(count, GeneratorSettings(seed=seed, positive_share=0.3)))
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    env.publish(framed_events(events, encoder))
    return events


def expected_pairs(env: Env, events: Iterable[Mapping[str, Any]]) -> set[tuple[str, bytes]]:
    """Every (agency topic, event_ref) the policies derive from ``events``, in-process, with the same keys."""
    from streams.domain.geography import DEFAULT_GEOGRAPHY
    from streams.policy.engine import Minimiser

    policy_set = load_policy_set(env.settings)
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, DEFAULT_GEOGRAPHY)
    return {
        (env.settings.topic_prefix + view.agency.topic, view.record["event_ref"].encode())
        for event in events
        for view in minimiser.apply(dict(event))
    }


def committed_keys(env: Env, topics: Iterable[str], idle_timeout_s: float = 30.0) -> Counter[tuple[str, bytes | None]]:
    """Every (topic, key) a read_committed reader finds on ``topics``, from the beginning to the end.

    An independent confluent-kafka consumer (not the worker's code): assigned all partitions,
    it reads until each reports end of partition (past transaction markers).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError
    from confluent_kafka import TopicPartition as CTopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": env.settings.bootstrap_servers,
            **env.settings.kafka_auth.librdkafka(),
            "group.id": f"audit-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    tps = [CTopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(env.partitions[t])]
    consumer.assign(tps)
    pending = {(tp.topic, tp.partition) for tp in tps}
    keys: Counter[tuple[str, bytes | None]] = Counter()
    idle_since = time.monotonic()
    try:
        while pending and time.monotonic() - idle_since < idle_timeout_s:
            for message in consumer.consume(10_000, 0.5):
                idle_since = time.monotonic()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard((str(message.topic()), int(message.partition() or 0)))
                    continue
                keys[(str(message.topic()), message.key())] += 1
    finally:
        consumer.close()
    assert not pending, f"partitions not read to their end: {sorted(pending)[:5]}"
    return keys


def agency_result_topics(env: Env) -> list[str]:
    """The agency topics holding views (not the ingress, DLQ, audit or the agencies' key topics)."""
    from streams.crypto.views import is_key_topic

    s = env.settings
    internal = (s.ingress_topic, s.audit_topic, s.dlq_topic)
    return [t for t in env.partitions if t not in internal and not is_key_topic(t)]


def audit_delivery(env: Env, events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Compare what a read_committed reader finds on the agency topics with what the policies derive."""
    events = list(events)
    expected = expected_pairs(env, events)
    s = env.settings
    outputs = agency_result_topics(env)
    delivered = committed_keys(env, outputs)
    dead = committed_keys(env, [s.dlq_topic])
    return {
        "events": len(events),
        "expected": len(expected),
        "delivered": len(delivered),
        "missing": len(expected - set(delivered)),
        "unexpected": len(set(delivered) - expected),
        "duplicated": sum(n - 1 for n in delivered.values() if n > 1),
        "dead_lettered": sum(dead.values()),
    }


def lag_retrying(env: Env) -> int:
    """The group's lag; the coordinator may be briefly unavailable while members come and go."""
    from streams.kafka.offsets import KafkaIOError, group_lag

    for _ in range(50):
        try:
            s = env.settings
            return group_lag(s.bootstrap_servers, s.group_id, s.ingress_topic, auth=s.kafka_auth)
        except KafkaIOError:
            time.sleep(0.2)
    raise AssertionError("group offsets unreadable for 10 s")


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(scope="session", autouse=True)
def _no_orphan_workers() -> Iterator[None]:
    """Kill any worker a failing test left running, so no process outlives the session."""
    yield
    for process in _STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()


class Worker:
    """A real worker process (``screening-streams worker``) of one environment."""

    def __init__(self, env: Env, log_path: Path, extra_env: Mapping[str, str] | None = None) -> None:
        """Start the worker (``extra_env`` on top of the environment's); its output goes to ``log_path``."""
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env={**env.process_env(), **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _STARTED.append(self.process)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until faust reports the worker Ready (its signal handlers are then installed)."""
        deadline = time.monotonic() + timeout_s
        while "Ready" not in self.log() and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)

    def signal(self, signum: int) -> None:
        """Send a signal (SIGSTOP, SIGCONT, SIGKILL, ...) to the worker if it still runs."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def stop(self) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        """The worker's log so far."""
        return self.log_path.read_text(errors="replace")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration as ``integration``."""
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
