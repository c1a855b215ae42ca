"""No identifying data in the logs of a real worker at DEBUG level, on the real broker.

~2 000 generated events (a few of them invalid, their identifying values known) go through a
worker started with ``SCREENING_LOG_LEVEL=debug``; its whole log (start-up, processing, dead
letters, shutdown) is then searched for every NIR, name, phone, email and address line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from streams.contracts.registry import HttpSchemaRegistry
from streams.contracts.wire import HEADER_SIZE
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.publish import event_encoder
from streams.stack.settings import Endpoints

from .conftest import Env, Worker, make_env

EVENTS = 2_000
IDENTIFYING = ("nir", "last_name", "first_names", "phone", "email", "prescriber_last_name", "prescriber_phone")


@dataclass
class DebugEnv(Env):
    """The environment, with workers logging at DEBUG."""

    def process_env(self) -> dict[str, str]:
        """The environment's variables with ``SCREENING_LOG_LEVEL=debug``."""
        return {**super().process_env(), "SCREENING_LOG_LEVEL": "debug"}


def _identifying_values(events: Iterable[Mapping[str, Any]]) -> set[str]:
    values: set[str] = set()
    for event in events:
        values.update(v for name in IDENTIFYING if isinstance(v := event.get(name), str))
        values.update(event["address_lines"])
    return values


def test_worker_debug_log_holds_no_identifying_value(
    stack: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A DEBUG worker's whole log, over valid and invalid events, contains no NIR, name, phone, email or address."""
    tmp = tmp_path_factory.mktemp("logs")
    base = make_env(stack, tmp, "logs")
    env = DebugEnv(base.settings, base.partitions, base.keys_file, base.keys, base.private_keys)
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    events = list(generate_events(EVENTS, GeneratorSettings(seed=77, positive_share=0.3)))
    published: list[dict[str, Any]] = []
    records = []
    for i, event in enumerate(events):
        bad: dict[str, Any] = {
            1: {"nir": event["nir"][:13] + "00"},  # invalid_nir
            2: {"commune_code": "97501"},  # unknown_commune
            3: {"city": f"{event['last_name']} " * 100},  # oversized_field
        }.get(i % 97, {})
        value = encoder.encode({**event, **bad})
        if i % 97 == 4:
            value = value[: HEADER_SIZE + 80]  # undecodable, cut inside the identity
        published.append({**event, **bad})
        records.append((str(event["event_id"]).encode(), value, ()))
    env.publish(records)
    worker = Worker(env, tmp / "worker.log")
    try:
        env.drain(timeout_s=240)
    finally:
        code = worker.stop()
    log = worker.log()
    print(f"[logs] debug log of {len(log.splitlines())} lines, {len(log)} characters", file=sys.stderr)
    assert code == 0, log[-3000:]
    assert "dead-lettered" in log  # the invalid events were logged (by code and coordinates)
    values = _identifying_values(published)
    leaked = sorted(v for v in values if v in log)
    context = [line[:200] for line in log.splitlines() if any(v in line for v in leaked)][:5]
    assert leaked == [], f"{len(leaked)} identifying values in the debug log, e.g. {context}"
