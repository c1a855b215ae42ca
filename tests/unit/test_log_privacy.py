"""No identifying data in logs: every logger captured at DEBUG while the pipeline runs."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from streams.assembly import PolicySet, build_pipeline
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.wire import HEADER_SIZE
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.domain.validation import EventValidator
from streams.kafka.publish import event_encoder
from streams.pipeline import InputRecord
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings
from streams.worker import _quiet_framework_loggers
from tests.conftest import public_key_ring

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00Z: after every generated event
IDENTIFYING = ("nir", "last_name", "first_names", "phone", "email", "prescriber_last_name", "prescriber_phone")


class LeakyValidator(EventValidator):
    """A validator that fails with an exception quoting the NIR, like a careless bug would."""

    def check(self, record: Mapping[str, Any]) -> None:
        """Raise for events from the city ``Crash``, quoting the NIR and name; validate the others."""
        if record["city"] == "Crash":
            raise ValueError(f"cannot handle {record['nir']} {record['last_name']}")
        super().check(record)


def _identifying_values(events: Iterable[Mapping[str, Any]]) -> set[str]:
    values: set[str] = set()
    for event in events:
        values.update(v for name in IDENTIFYING if isinstance(v := event.get(name), str))
        values.update(event["address_lines"])
    return values


def test_pipeline_logs_at_debug_hold_no_identifying_value(
    policy_set: PolicySet, keys: StaticKeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, good, invalid and crashing events log codes and coordinates, never an identity or contact value."""
    caplog.set_level(logging.DEBUG)
    registry = InMemorySchemaRegistry()
    pipeline = build_pipeline(
        Settings(), registry, keys, clock_ms=lambda: NOW_MS, policy_set=policy_set, public_keys=public_key_ring()
    )
    pipeline.validator = LeakyValidator(DEFAULT_GEOGRAPHY, lambda: NOW_MS)
    encoder = event_encoder(registry, Settings().ingress_topic)
    events = list(generate_events(400, GeneratorSettings(seed=23, positive_share=0.3)))
    values: list[bytes | None] = []
    sent: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        bad = {
            1: {"nir": event["nir"][:13] + "00"},  # invalid_nir
            2: {"city": event["last_name"] * 100},  # oversized_field
            3: {"commune_code": "97501"},  # unknown_commune
            4: {"city": "Crash"},  # internal_error, with the NIR in the exception text
        }.get(i % 6, {})
        sent.append({**event, **bad})
        data = encoder.encode(sent[-1])
        values.append(data[: HEADER_SIZE + 60] if i % 6 == 5 else data)  # cut inside the identity
    for offset, value in enumerate(values):
        pipeline.process(InputRecord("screening.results.v1", 0, offset, b"k", value))
    codes = pipeline.stats.dead_letters
    assert set(codes) == {"invalid_nir", "oversized_field", "unknown_commune", "internal_error", "undecodable"}
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    text = "\n".join(formatter.format(record) for record in caplog.records)
    assert len(caplog.records) >= sum(codes.values())
    leaked = sorted(v for v in _identifying_values(sent) if v in text)
    assert leaked == [], f"{len(leaked)} identifying values in the logs"


def test_worker_keeps_client_loggers_above_debug_when_it_runs_at_debug() -> None:
    """At worker level DEBUG, aiokafka (whose producer logs each key and value at DEBUG), faust, mode stay at INFO."""
    names = ("faust", "mode", "aiokafka", "kafka")
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        _quiet_framework_loggers(logging.DEBUG)
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("faust.agents.agent").isEnabledFor(logging.DEBUG)
        assert all(logging.getLogger(name).level == logging.INFO for name in names)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
