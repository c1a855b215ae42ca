"""Fixtures of the audit unit tests: an auditing pipeline, its writer, and a fake producer."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from streams.assembly import agency_names, build_audit_writer, build_pipeline, load_policy_set
from streams.audit.chain import AuditWriter, ChainHead
from streams.audit.decisions import Location
from streams.audit.keys import AuditKeys
from streams.contracts.registry import InMemorySchemaRegistry
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.publish import event_encoder
from streams.pipeline import Batch, InputRecord, Pipeline
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings
from tests.conftest import public_key_ring

FIXED = 1_601_510_400_000 + 1_234_567  # a little after 2020-10-01T00:00Z
POLICY_SET = load_policy_set(Settings())
SECRET = hashlib.sha256(b"test audit secret").digest()


class Trail:
    """A pipeline with auditing on, its writer, and a fake producer assigning offsets per topic."""

    def __init__(self) -> None:
        """Build with in-memory registry, throw-away agency keys, the audit secret and a fixed clock."""
        self.settings = Settings()
        self.registry = InMemorySchemaRegistry()
        self.agency_keys = StaticKeyRing(generate_keys(agency_names(POLICY_SET)))
        self.audit_keys = AuditKeys(SECRET)
        self.pipeline: Pipeline = build_pipeline(
            self.settings,
            self.registry,
            self.agency_keys,
            clock_ms=lambda: FIXED,
            policy_set=POLICY_SET,
            audit_keys=self.audit_keys,
            public_keys=public_key_ring(),
        )
        self.writer: AuditWriter = build_audit_writer(self.settings, self.registry, self.audit_keys)
        self.encoder = event_encoder(self.registry, self.settings.ingress_topic)
        self.next_offset: dict[str, int] = {}

    def inputs(self, events: Sequence[dict[str, object]], start: int = 0) -> list[InputRecord]:
        """Frame ``events`` as ingress records of partition 0 from offset ``start``."""
        topic = self.settings.ingress_topic
        return [InputRecord(topic, 0, start + i, None, self.encoder.encode(e)) for i, e in enumerate(events)]

    def produce(self, batch: Batch) -> list[Location | None]:
        """Pretend to produce the batch's outputs: the coordinates a broker would give each."""
        locations: list[Location | None] = []
        for out in batch.outputs:
            offset = self.next_offset.get(out.topic, 0)
            self.next_offset[out.topic] = offset + 1
            locations.append((out.topic, 0, offset))
        return locations

    def audit_values(
        self, events: Sequence[dict[str, object]], head: ChainHead | None = None
    ) -> tuple[list[bytes], ChainHead, Batch]:
        """Process ``events``, produce their outputs, and return the chained audit values."""
        head = head or ChainHead()
        batch = self.pipeline.process_batch(self.inputs(events))
        locations = self.produce(batch)
        values, new_head = self.writer.chain((self.writer.record(a, locations) for a in batch.audits), head)
        return values, new_head, batch


def events(n: int, seed: int = 1) -> list[dict[str, object]]:
    """``n`` generated events (a fifth of them in test/debug mode), deterministic for ``seed``."""
    return list(generate_events(n, GeneratorSettings(seed=seed, non_production_share=0.2)))


@pytest.fixture(scope="module")
def trail() -> Trail:
    """One auditing pipeline for the module."""
    return Trail()


@pytest.fixture(scope="module")
def make_events() -> object:
    """The event generator of these tests, as a fixture (test modules cannot import each other)."""
    return events
