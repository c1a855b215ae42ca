"""The pipeline with encryption: no identifying byte in agency records, every batch self-sufficient, fail closed."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import fastavro
import pytest

from streams.assembly import PolicySet, agency_names, build_pipeline, key_holders, load_policy_set
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.schemas import strip_logical_types, to_readable
from streams.contracts.wire import frame
from streams.crypto.envelope import DataKeyStore
from streams.crypto.errors import DecryptionError, KeyUnavailable
from streams.crypto.keys import generate_key_pair
from streams.crypto.reader import AgencyRecordReader
from streams.crypto.ring import PublicKeyRing
from streams.crypto.views import is_key_topic, key_topic, plaintext_schema
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.errors import ConfigError
from streams.kafka.publish import event_encoder
from streams.pipeline import InputRecord, OutputRecord, Pipeline
from streams.policy.engine import Minimiser
from streams.policy.outputs import output_schema
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings
from tests.conftest import agency_key_pairs, private_key_ring, public_key_ring

NOW = 1_601_510_400_000  # 2020-10-01T00:00Z, after every generated event
POLICY_SET: PolicySet = load_policy_set(Settings())
IDENTIFYING = (
    "nir",
    "last_name",
    "first_names",
    "phone",
    "email",
    "city",
    "prescriber_last_name",
    "prescriber_first_name",
    "prescriber_phone",
)


class Sealed:
    """A pipeline with encryption on, and what an agency needs to read its records."""

    def __init__(self, public_keys: PublicKeyRing | None = None, clock: list[int] | None = None) -> None:
        """Build with in-memory registry, throw-away pseudonym keys and the test agency key pairs."""
        self.clock = clock or [NOW]
        self.registry = InMemorySchemaRegistry()
        self.keys = StaticKeyRing(generate_keys(agency_names(POLICY_SET)))
        self.pipeline: Pipeline = build_pipeline(
            Settings(),
            self.registry,
            self.keys,
            clock_ms=lambda: self.clock[0],
            policy_set=POLICY_SET,
            public_keys=public_keys or public_key_ring(),
        )
        self.encoder = event_encoder(self.registry, Settings().ingress_topic)
        self.minimiser = Minimiser(POLICY_SET.policies, POLICY_SET.input_schema, self.keys, DEFAULT_GEOGRAPHY)

    def inputs(self, events: list[dict[str, Any]]) -> list[InputRecord]:
        """Frame events as ingress records of partition 0."""
        topic = Settings().ingress_topic
        return [InputRecord(topic, 0, i, None, self.encoder.encode(e)) for i, e in enumerate(events)]

    def reader(self, agency: str, outputs: list[OutputRecord]) -> AgencyRecordReader:
        """The agency's reader, holding the key records found among ``outputs`` (and nothing else)."""
        store = DataKeyStore(agency, private_key_ring(agency))
        for out in outputs:
            if is_key_topic(out.topic):
                store.add(out.value)
        return AgencyRecordReader(self.registry, store)


def _events(count: int, **changes: Any) -> list[dict[str, Any]]:
    events = [dict(e) for e in generate_events(count, GeneratorSettings(seed=5, positive_share=0.8))]
    for event in events:
        event.update(result="POSITIVE", processing_mode="P", **changes)
    return events


def _expected(sealed: Sealed, event: Mapping[str, Any], agency: str) -> dict[str, Any]:
    [view] = [v for v in sealed.minimiser.apply(event) if v.agency.agency == agency]
    policy = next(p for p in POLICY_SET.policies if p.recipient == view.agency.recipient)
    return to_readable(view.record, plaintext_schema(output_schema(policy, POLICY_SET.input_schema)))


def test_agency_records_hold_no_identifying_bytes_and_decrypt_to_exactly_the_policy_view() -> None:
    """CNAM and a collective-housing ARS record carry no NIR, name, phone, email, city or address in clear,
    and the agency reading only that batch's outputs gets exactly the view its policy derives."""
    sealed = Sealed()
    events = _events(40, collective_housing="NURSING_HOME")
    outputs = sealed.pipeline.process_many(sealed.inputs(events))
    views = [o for o in outputs if o.topic.startswith("tracing.") and not is_key_topic(o.topic)]
    assert {o.topic for o in views} >= {"tracing.cnam.results.v1"}
    for out in views:
        assert out.value is not None
        for event in events:
            for name in IDENTIFYING:
                if isinstance(event[name], str):
                    assert event[name].encode() not in out.value, (out.topic, name)
            for line in event["address_lines"]:
                assert line.encode() not in out.value
    by_ref: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        for view in sealed.minimiser.apply(event):
            by_ref[(view.agency.agency, view.record["event_ref"])] = _expected(sealed, event, view.agency.agency)
    for out in views:
        agency = "cnam" if out.topic == "tracing.cnam.results.v1" else "ars." + out.topic.split(".")[2]
        record = sealed.reader(agency, outputs).read(out.topic, 0, 0, out.value)
        assert record == by_ref[(agency, record["event_ref"])]


def test_a_batch_carries_one_key_record_per_data_key_it_used_and_needs_nothing_else() -> None:
    """Key records come last, once per data key, in the batch's own key topics: the batch is self-sufficient."""
    sealed = Sealed()
    outputs = sealed.pipeline.process_many(sealed.inputs(_events(60, collective_housing="PRISON")))
    keys = [o for o in outputs if is_key_topic(o.topic)]
    assert keys and outputs[-len(keys) :] == keys
    assert len({o.key for o in keys}) == len(keys)
    views = [o for o in outputs if o.topic.startswith("tracing.") and not is_key_topic(o.topic)]
    assert {o.topic for o in keys} == {key_topic(o.topic) for o in views}
    second = sealed.pipeline.process_many(sealed.inputs(_events(5, collective_housing="PRISON")))
    assert any(is_key_topic(o.topic) and o.key in {k.key for k in keys} for o in second), "re-published per batch"


def test_records_without_anything_to_encrypt_add_no_key_record() -> None:
    """ARS records outside collective housing have null names and phone: no data key is needed."""
    sealed = Sealed()
    outputs = sealed.pipeline.process_many(sealed.inputs(_events(20, collective_housing="NONE")))
    assert {o.topic for o in outputs if is_key_topic(o.topic)} == {"tracing.cnam.keys.v1"}


def test_a_field_moved_to_another_record_or_field_fails_naming_the_record_never_the_value() -> None:
    """Swapping two records' encrypted NIRs, or a NIR into the last name, is ``tampered``, not a wrong answer."""
    sealed = Sealed()
    events = _events(2)
    outputs = sealed.pipeline.process_many(sealed.inputs(events))
    cnam = [o for o in outputs if o.topic == "tracing.cnam.results.v1"]
    reader = sealed.reader("cnam", outputs)
    (sid, first), (_, second) = (reader.decode(o.value, "x") for o in cnam)
    schema = fastavro.parse_schema(strip_logical_types(output_schema(POLICY_SET.policies[1], POLICY_SET.input_schema)))
    assert POLICY_SET.policies[1].recipient == "cnam"

    def framed(record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        return frame(sid, buffer.getvalue())

    for forged in ({**first, "nir": second["nir"]}, {**first, "last_name": first["nir"]}):
        with pytest.raises(DecryptionError) as caught:
            reader.read("tracing.cnam.results.v1", 2, 77, framed(forged))
        assert caught.value.code == "tampered"
        message = str(caught.value)
        assert "tracing.cnam.results.v1[2]@77" in message
        assert all(str(e[n]) not in message for e in events for n in IDENTIFYING)
    with pytest.raises(DecryptionError) as caught:
        reader.read("tracing.ars.11.results.v1", 0, 1, cnam[0].value)
    assert caught.value.code == "tampered"


def test_building_without_a_public_key_ring_fails_closed() -> None:
    """Policies that encrypt and no ring: the pipeline is not built (nothing would go out in clear)."""
    with pytest.raises(ConfigError, match=r"encrypt fields for ars.01, ars.02, ars.03 and 16 more"):
        keys = StaticKeyRing(generate_keys(agency_names(POLICY_SET)))
        build_pipeline(Settings(), InMemorySchemaRegistry(), keys, policy_set=POLICY_SET)


def test_building_when_an_agency_has_no_key_in_force_names_it() -> None:
    """A ring missing ARS 24's key (or whose keys expired) stops the build with the agency named."""
    ring = PublicKeyRing([p.public for a, p in agency_key_pairs().items() if a != "ars.24"])
    with pytest.raises(KeyUnavailable, match=r"ars\.24"):
        Sealed(public_keys=ring)


def test_a_key_expiring_while_running_stops_the_batch_instead_of_dead_lettering_or_sending_clear() -> None:
    """When the clock passes the last key's end, process_many raises KeyUnavailable; nothing is dead-lettered."""
    end = NOW + 86_400_000
    short = {a: generate_key_pair(a, NOW - 1, end).public for a in key_holders(POLICY_SET)}
    clock = [NOW]
    sealed = Sealed(public_keys=PublicKeyRing(short.values()), clock=clock)
    assert sealed.pipeline.process_many(sealed.inputs(_events(3)))
    clock[0] = end
    with pytest.raises(KeyUnavailable, match="cnam"):
        sealed.pipeline.process_many(sealed.inputs(_events(3)))
    assert not sealed.pipeline.stats.dead_letters


def test_process_each_attaches_the_batch_key_records_to_its_last_record() -> None:
    """For per-record runners: each output comes with its source record, the batch's key records ride on the last one.

    (Outputs are in transaction order, one per entry: see ``pipeline.transaction_order``.)
    """
    sealed = Sealed()
    records = sealed.inputs(_events(10))
    work = sealed.pipeline.process_each(records)
    assert {source.offset for source, _ in work} <= {r.offset for r in records}
    assert not any(is_key_topic(o.topic) for _, outputs in work[:-1] for o in outputs)
    assert any(is_key_topic(o.topic) for o in work[-1][1])
    assert sealed.pipeline.process_each([]) == []
