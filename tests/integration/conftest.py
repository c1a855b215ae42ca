"""Integration fixtures: the real local Kafka broker and Apicurio registry, once per session.

The stack is fetched with mvn and started by ``streams.stack.lifecycle`` unless
``KAFKA_BOOTSTRAP_SERVERS`` (and ``SCHEMA_REGISTRY_URL``) point at running servers. A stack
this session started is stopped at the end; one that was already running is left alone.
Each test module gets its own topic prefix, so modules never see each other's records.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.assembly import agency_names, load_policy_set, output_topics
from streams.kafka.offsets import wait_for_lag_zero
from streams.kafka.publish import publish_raw
from streams.kafka.topics import create_topics
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings, settings_from_env
from streams.stack import lifecycle
from streams.stack.settings import Endpoints, StackSettings


@pytest.fixture(scope="session")
def stack() -> Iterator[Endpoints]:
    """Bring up (or reuse) the real broker and registry for the whole test session."""
    settings = StackSettings.from_env(os.environ)
    was_running = all(state.startswith("up") for state in lifecycle.status(settings).values())
    started = time.monotonic()
    endpoints = lifecycle.up(settings, echo=lambda line: print(f"[stack] {line}", file=sys.stderr))
    print(f"[stack] ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    yield endpoints
    if endpoints.managed and not was_running and not os.environ.get("SCREENING_KEEP_STACK"):
        lifecycle.down(settings, echo=lambda line: print(f"[stack] {line}", file=sys.stderr))


@dataclass
class Env:
    """One isolated environment on the shared stack: settings, topics, partitions, keys."""

    settings: Settings
    partitions: dict[str, int]
    keys_file: Path
    keys: StaticKeyRing

    def process_env(self) -> dict[str, str]:
        """Environment variables for a worker or CLI subprocess of this environment."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": self.settings.registry_url,
            "SCREENING_TOPIC_PREFIX": self.settings.topic_prefix,
            "SCREENING_KEYS_FILE": str(self.keys_file),
            "SCREENING_STATE_DIR": str(self.settings.state_dir),
            "SCREENING_LOG_LEVEL": "info",
        }

    def publish(self, records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]) -> int:
        """Publish raw ``(key, value, headers)`` records to this environment's ingress topic."""
        s = self.settings
        return asyncio.run(publish_raw(s.bootstrap_servers, s.ingress_topic, records, self.partitions[s.ingress_topic]))

    def drain(self, timeout_s: float = 240) -> float:
        """Wait until the worker group has committed the whole ingress topic; return the seconds."""
        s = self.settings
        return wait_for_lag_zero(s.bootstrap_servers, s.group_id, s.ingress_topic, timeout_s=timeout_s)


def make_env(stack: Endpoints, tmp: Path, name: str) -> Env:
    """Create a fresh topic namespace with throw-away keys on the shared stack."""
    from streams.policy.pseudonyms import generate_keys, write_key_file

    prefix = f"it.{name}.{uuid.uuid4().hex[:8]}."
    settings = settings_from_env({}).with_(
        bootstrap_servers=stack.bootstrap_servers,
        registry_url=stack.registry_url,
        topic_prefix=prefix,
        state_dir=tmp,
        batch_within_s=0.02,
    )
    policy_set = load_policy_set(settings)
    keys = generate_keys(agency_names(policy_set))
    keys_file = tmp / "keys.json"
    write_key_file(keys_file, keys)
    partitions = create_topics(settings, output_topics(policy_set))
    return Env(settings, partitions, keys_file, StaticKeyRing(keys))


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
