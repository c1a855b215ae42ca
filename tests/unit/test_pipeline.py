"""Unit tests of the record pipeline (streams.pipeline) assembled with in-memory doubles."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Mapping
from typing import Any

import fastavro
import pytest

from streams import __version__
from streams.assembly import build_letter_sealer, build_pipeline, build_sealers, load_policy_set, subject_for
from streams.contracts.codec import EventDecoder, ViewEncoder, register_encoder
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.schemas import strip_logical_types
from streams.contracts.wire import frame, unframe
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.domain.nir import nir_key
from streams.domain.validation import EventValidator
from streams.errors import RegistryError, RegistryUnavailable
from streams.kafka.publish import event_encoder
from streams.pipeline import (
    DLQ_HEADERS,
    MAX_PAYLOAD,
    InputRecord,
    OutputRecord,
    Pipeline,
)
from streams.policy.engine import Minimiser
from streams.policy.outputs import output_schema
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import DLQ_TOPIC, INGRESS_TOPIC, Settings
from tests.conftest import open_letter, public_key_ring

FIXED = 1_601_510_400_000  # 2020-10-01T00:00Z, after every generated event (July-August 2020)
FIXED_ISO = b"2020-10-01T00:00:00.000+00:00"
MS_PER_DAY = 86_400_000
AGENCIES = ["cnam", "spf", *(f"ars.{r}" for r in DEFAULT_GEOGRAPHY.region_names)]
# Distinctive identifying values, so a leak into any header is found by a byte search.
LAST_NAME = "Quennehenvilliers"
PHONE = "0698765432"
EMAIL = "q.quennehenvilliers@example.org"
POLICY_SET = load_policy_set(Settings())  # loaded once: policies are immutable


class Harness:
    """A pipeline built like the worker's, with the registry and an ingress encoder at hand."""

    def __init__(self, settings: Settings | None = None) -> None:
        """Build the pipeline with in-memory registry, throw-away keys and the fixed clock."""
        self.settings = settings or Settings()
        self.registry = InMemorySchemaRegistry()
        self.keys = StaticKeyRing(generate_keys(AGENCIES))
        self.pipeline = build_pipeline(
            self.settings,
            self.registry,
            self.keys,
            clock_ms=lambda: FIXED,
            policy_set=POLICY_SET,
            public_keys=public_key_ring(),
        )
        self.encoder = event_encoder(self.registry, self.settings.ingress_topic)

    def record(self, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> InputRecord:
        """Wrap a value as the record at ingress partition 4, offset 1234."""
        return InputRecord(self.settings.ingress_topic, 4, 1234, b"ingress-key", value, headers)

    def encode(self, event: Mapping[str, Any]) -> bytes:
        """Frame and encode an event with the v1 contract, as the screening system does."""
        return self.encoder.encode(dict(event))

    def view_of(self, out: OutputRecord) -> dict[str, Any]:
        """Decode an output record with the schema its frame names."""
        schema_id, body = unframe(out.value)
        schema = strip_logical_types(json.loads(self.registry.get_schema(schema_id)))
        parsed = fastavro.parse_schema(schema)
        view = fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
        assert isinstance(view, dict)
        return view


def _event(result: str = "POSITIVE", mode: str = "P", **changes: Any) -> dict[str, Any]:
    """A generated event forced to the given result and mode, with distinctive identifiers."""
    event = dict(next(iter(generate_events(1, GeneratorSettings(seed=11)))))
    event.update(result=result, processing_mode=mode, last_name=LAST_NAME, phone=PHONE, email=EMAIL)
    event.update(changes)
    return event


def _headers(out: OutputRecord) -> dict[str, bytes]:
    names = [k for k, _ in out.headers]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    return dict(out.headers)


def _leaks(out: OutputRecord, event: Mapping[str, Any]) -> list[str]:
    """The identifying fields of ``event`` whose value occurs in any header name or value."""
    blob = b"\n".join(k.encode() + b"=" + v for k, v in out.headers)
    names = ("nir", "last_name", "phone", "email")
    return [name for name in names if event[name].encode() in blob]


def test_positive_production_event_reaches_cnam_its_ars_and_spf() -> None:
    """A valid P/POSITIVE event yields one record for cnam, the ARS of its region, and spf."""
    harness = Harness()
    event = _event()
    region = DEFAULT_GEOGRAPHY.region_of(event["commune_code"])
    outputs = harness.pipeline.process(harness.record(harness.encode(event)))
    assert sorted(o.topic for o in outputs) == [
        "surveillance.spf.results.v1",
        f"tracing.ars.{region}.results.v1",
        "tracing.cnam.results.v1",
    ]
    assert not any(o.dead_letter for o in outputs)
    assert harness.pipeline.stats.dead_letters == {}


def test_outputs_carry_policy_headers_and_event_ref_key() -> None:
    """Each output has recipient/agency/version headers; key = route key = its view's event_ref."""
    harness = Harness()
    event = _event()
    region = DEFAULT_GEOGRAPHY.region_of(event["commune_code"])
    outputs = harness.pipeline.process(harness.record(harness.encode(event)))
    expected_agency = {
        "tracing.cnam.results.v1": ("cnam", "cnam"),
        f"tracing.ars.{region}.results.v1": ("ars", f"ars.{region}"),
        "surveillance.spf.results.v1": ("spf", "spf"),
    }
    versions = {p.recipient: p.version for p in POLICY_SET.policies}
    refs = set()
    for out in outputs:
        headers = _headers(out)
        recipient, agency = expected_agency[out.topic]
        assert headers["policy.recipient"] == recipient.encode()
        assert headers["policy.agency"] == agency.encode()
        assert headers["policy.version"] == versions[recipient].encode()
        view = harness.view_of(out)
        assert out.key == view["event_ref"].encode()
        assert len(out.route_key) == 16 and out.route_key != out.key  # the agency's keyed hash of the person
        refs.add(view["event_ref"])
        if recipient != "cnam":  # only contact tracing may see identity, never in headers
            assert _leaks(out, event) == []
    assert len(refs) == 3  # agency-specific references: not joinable across agencies
    assert event["event_id"] not in refs


def test_spf_view_holds_no_direct_identifier() -> None:
    """The surveillance record decodes to its policy's fields only: no NIR, name, phone or email."""
    harness = Harness()
    event = _event()
    outputs = harness.pipeline.process(harness.record(harness.encode(event)))
    (spf,) = [o for o in outputs if o.topic == "surveillance.spf.results.v1"]
    view = harness.view_of(spf)
    assert set(view) == {
        "event_ref",
        "pseudonym",
        "age_band",
        "sex",
        "department",
        "region",
        "test_kind",
        "sampled_on",
        "sampled_week",
        "result",
        "symptomatic",
        "collective_housing",
    }
    assert spf.value is not None
    for secret in (event["nir"], LAST_NAME, PHONE, EMAIL):
        assert secret.encode() not in spf.value


@pytest.mark.parametrize("mode", ["T", "D"])
def test_non_production_event_yields_nothing(mode: str) -> None:
    """Test (T) and debug (D) events reach no recipient and are not dead-lettered."""
    harness = Harness()
    outputs = harness.pipeline.process(harness.record(harness.encode(_event(mode=mode))))
    assert outputs == []
    assert harness.pipeline.stats.dead_letters == {}
    assert harness.pipeline.stats.consumed == 1


def test_negative_production_event_reaches_spf_only() -> None:
    """A P/NEGATIVE event goes to surveillance only (tracing recipients take positives)."""
    harness = Harness()
    outputs = harness.pipeline.process(harness.record(harness.encode(_event(result="NEGATIVE"))))
    assert [o.topic for o in outputs] == ["surveillance.spf.results.v1"]


def _bad_nir(nir: str) -> str:
    """The same NIR with its last two digits changed to a wrong key."""
    wrong = nir_key(nir[:13]) % 97 + 1
    return nir[:13] + f"{wrong:02d}"


def _bad_inputs(harness: Harness) -> dict[str, tuple[bytes | None, str]]:
    """Bad ingress values and the exact dead-letter code each must get."""
    event = _event()
    good = harness.encode(event)
    birth_future = FIXED // MS_PER_DAY + 10
    return {
        "random": (bytes([0x8F]) + random.Random(5).randbytes(60), "not_framed"),
        "short": (b"\x00\x01", "truncated_header"),
        "none": (None, "empty_payload"),
        "wrong_magic": (b"\x01" + good[1:], "bad_magic"),
        "unknown_id": (frame(4242, good[5:]), "unknown_schema_id"),
        "bad_nir": (harness.encode({**event, "nir": _bad_nir(event["nir"])}), "invalid_nir"),
        "unknown_commune": (harness.encode({**event, "commune_code": "97501"}), "unknown_commune"),
        "birth_future": (harness.encode({**event, "birth_date": birth_future}), "out_of_range_date"),
        "oversized_field": (harness.encode({**event, "city": "S" * 600}), "oversized_field"),
        "oversized_payload": (good + b"\x00" * MAX_PAYLOAD, "oversized_payload"),
        "trailing": (good + b"\x00", "trailing_bytes"),
    }


BAD_CASES = list(_bad_inputs(Harness()))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_yields_one_complete_dead_letter(case: str) -> None:
    """Each bad input gives exactly one DLQ record: exact code and every dlq header readable, the raw key,
    value and original headers sealed to the operators (not in the record), and exactly them once opened."""
    harness = Harness()
    value, code = _bad_inputs(harness)[case]
    record = harness.record(value, (("trace-id", b"abc"),))
    outputs = harness.pipeline.process(record)
    assert len(outputs) == 1
    (out,) = outputs
    assert out.dead_letter
    assert out.topic == DLQ_TOPIC
    assert out.key is None and "trace-id" not in _headers(out)
    raw = open_letter(harness.pipeline, out)
    assert (raw.key, raw.value, raw.headers) == (record.key, value, (("trace-id", b"abc"),))
    headers = _headers(out)
    assert headers["dlq.reason.code"] == code.encode()
    assert headers["dlq.reason"]
    assert headers["dlq.stage"] in {b"decode", b"validate"}
    assert headers["dlq.source.topic"] == INGRESS_TOPIC.encode()
    assert headers["dlq.source.partition"] == b"4"
    assert headers["dlq.source.offset"] == b"1234"
    assert headers["dlq.time"] == FIXED_ISO
    assert headers["dlq.processor.version"] == __version__.encode()
    assert "dlq.replay.count" not in headers  # the replay ledger says which dead letters are replays
    assert headers["dlq.value.bytes"] == (b"null" if value is None else str(len(value)).encode())
    assert headers["dlq.headers"] == b"1" and headers["dlq.sealed.key_id"]
    assert harness.pipeline.stats.dead_letters == {code: 1}
    assert harness.pipeline.stats.produced == {}


@pytest.mark.parametrize("case", BAD_CASES)
def test_dead_letter_headers_never_contain_identifiers(case: str) -> None:
    """No DLQ header (name or value, reason included) contains the NIR, name, phone or email."""
    harness = Harness()
    event = _event()
    value, _ = _bad_inputs(harness)[case]
    (out,) = harness.pipeline.process(harness.record(value))
    assert _leaks(out, event) == []
    assert _leaks(out, {**event, "nir": _bad_nir(event["nir"])}) == []


def test_validation_failures_are_staged_validate() -> None:
    """Business-rule rejections name the validate stage; framing rejections the decode stage."""
    harness = Harness()
    cases = _bad_inputs(harness)
    stage = {
        name: _headers(harness.pipeline.process(harness.record(value))[0])["dlq.stage"]
        for name, (value, _) in cases.items()
    }
    assert stage["bad_nir"] == stage["unknown_commune"] == stage["birth_future"] == b"validate"
    assert stage["random"] == stage["unknown_id"] == stage["oversized_payload"] == b"decode"


def test_producer_set_dlq_headers_are_dropped_and_the_pipeline_writes_its_own_once() -> None:
    """Incoming dlq.* headers (a forged dlq.replay.count: 99, old reasons, anything) never reach the DLQ record."""
    harness = Harness()
    forged = tuple((name, b"old") for name in DLQ_HEADERS)
    headers = (("trace-id", b"abc"), *forged, ("dlq.replay.count", b"99"), ("dlq.replay.of", b"x:0:0"), ("dlq.x", b"1"))
    (out,) = harness.pipeline.process(harness.record(b"\x07not-framed", headers))
    got = _headers(out)
    assert got["dlq.reason.code"] == b"not_framed"
    assert got["dlq.time"] == FIXED_ISO
    assert open_letter(harness.pipeline, out).headers == (("trace-id", b"abc"),)
    assert b"old" not in got.values()
    assert not {"dlq.replay.count", "dlq.replay.of", "dlq.x"} & set(got)
    assert [k for k, _ in out.headers if k.startswith("dlq.")] == list(DLQ_HEADERS)


def test_topic_prefix_applies_to_outputs_and_dead_letters() -> None:
    """With topic_prefix "t1.", every output topic and the DLQ topic carry the prefix."""
    harness = Harness(Settings(topic_prefix="t1."))
    outputs = harness.pipeline.process(harness.record(harness.encode(_event())))
    assert len(outputs) == 3
    assert all(o.topic.startswith("t1.") for o in outputs)
    assert "t1.tracing.cnam.results.v1" in {o.topic for o in outputs}
    (dead,) = harness.pipeline.process(harness.record(b"\x09junk"))
    assert dead.topic == "t1." + DLQ_TOPIC
    assert _headers(dead)["dlq.source.topic"] == b"t1." + INGRESS_TOPIC.encode()


class ExplodingMinimiser(Minimiser):
    """A minimiser with a bug: apply raises an exception whose text quotes the NIR."""

    def apply(self, record: Mapping[str, Any]) -> Any:
        """Fail the way a buggy operator would, leaking data into the message."""
        raise ValueError(f"cannot pseudonymise {record['nir']} for {record['last_name']}")


def test_internal_error_is_dead_lettered_without_the_exception_text() -> None:
    """An unexpected exception becomes internal_error at its stage; its message is not copied."""
    settings = Settings()
    registry = InMemorySchemaRegistry()
    keys = StaticKeyRing(generate_keys(AGENCIES))
    policy_set = POLICY_SET
    minimiser = ExplodingMinimiser(policy_set.policies, policy_set.input_schema, keys, DEFAULT_GEOGRAPHY)
    encoders: dict[str, ViewEncoder] = {
        a.agency: register_encoder(registry, subject_for(a.topic), output_schema(a.policy, policy_set.input_schema))
        for a in minimiser.agencies
    }
    schemas = {p.recipient: output_schema(p, policy_set.input_schema) for p in policy_set.policies}
    pipeline = Pipeline(
        EventDecoder(registry, policy_set.input_schema),
        EventValidator(DEFAULT_GEOGRAPHY, lambda: FIXED),
        minimiser,
        encoders,
        settings.dlq_topic,
        lambda: FIXED,
        sealers=build_sealers(settings, minimiser, schemas, public_key_ring(), FIXED),
        letters=build_letter_sealer(settings, public_key_ring(), FIXED),
    )
    event = _event()
    value = event_encoder(registry, settings.ingress_topic).encode(event)
    (out,) = pipeline.process(InputRecord(settings.ingress_topic, 0, 7, None, value))
    headers = _headers(out)
    assert headers["dlq.reason.code"] == b"internal_error"
    assert headers["dlq.stage"] == b"minimise"
    assert b"ValueError" in headers["dlq.reason"]
    assert b"pseudonymise" not in headers["dlq.reason"]
    assert open_letter(pipeline, out).value == value
    assert _leaks(out, event) == []


def test_process_many_returns_every_output_grouped_by_topic() -> None:
    """process_many returns every record's outputs, grouped by topic, then the key record of the operators'
    data key its dead letter is sealed under, and counts every input."""
    harness = Harness()
    records = [
        harness.record(b"\x05bad"),
        harness.record(harness.encode(_event(result="NEGATIVE"))),
        harness.record(harness.encode(_event(mode="T"))),
    ]
    outputs = harness.pipeline.process_many(records)
    assert [o.topic for o in outputs] == [DLQ_TOPIC, "surveillance.spf.results.v1", "screening.results.dlq.keys.v1"]
    assert harness.pipeline.stats.consumed == 3
    assert harness.pipeline.stats.produced == {"surveillance.spf.results.v1": 1, "screening.results.dlq.keys.v1": 1}


def test_no_source_timestamp_header_and_record_times_are_days() -> None:
    """No output carries the ingress time; each agency record's time is the processing day (UTC)."""
    harness = Harness()
    value = harness.encode(_event())
    stamped = InputRecord(INGRESS_TOPIC, 0, 1, None, value, (), timestamp_ms=1_598_000_000_123)
    outputs = harness.pipeline.process(stamped)
    assert len(outputs) == 3
    for out in outputs:
        assert [k for k, _ in out.headers] == ["policy.recipient", "policy.agency", "policy.version"]
        assert out.timestamp_ms == FIXED // MS_PER_DAY * MS_PER_DAY
    assert harness.pipeline.process(harness.record(b"\x05bad"))[0].timestamp_ms is None


# --- registry outages and floods (issue 8, item 3) ------------------------------------------------


class CountingRegistry(InMemorySchemaRegistry):
    """The in-memory registry that counts lookups and can be switched off like a stopped server."""

    def __init__(self) -> None:
        """Start empty and up."""
        super().__init__()
        self.lookups = 0
        self.down = False

    def get_schema(self, schema_id: int) -> str:
        """Count, then answer or fail like an unreachable registry."""
        self.lookups += 1
        if self.down:
            raise RegistryUnavailable("connection refused")
        return super().get_schema(schema_id)


def _counting_harness() -> tuple[Harness, CountingRegistry, ViewEncoder]:
    """A pipeline whose registry counts lookups, and a v2 encoder whose id the pipeline never saw."""
    harness = Harness()
    registry = CountingRegistry()
    harness.registry = registry
    harness.pipeline = build_pipeline(
        harness.settings,
        registry,
        harness.keys,
        clock_ms=lambda: FIXED,
        policy_set=POLICY_SET,
        public_keys=public_key_ring(),
    )
    harness.encoder = event_encoder(registry, harness.settings.ingress_topic)
    # A producer registers v2 straight with the registry: the pipeline's resolver has not seen it.
    return harness, registry, event_encoder(registry, harness.settings.ingress_topic, 2)


def _v2_event() -> dict[str, Any]:
    event = next(iter(generate_events(1, GeneratorSettings(seed=5, schema_version=2))))
    return {**event, "processing_mode": "P", "result": "POSITIVE", "commune_code": "75056"}


def test_registry_outage_raises_retriable_error_and_dead_letters_nothing() -> None:
    """An unseen writer id while the registry is down: RegistryUnavailable, no dead letter, nothing counted."""
    harness, registry, v2 = _counting_harness()
    registry.down = True
    record = harness.record(v2.encode(_v2_event()))
    with pytest.raises(RegistryUnavailable):
        harness.pipeline.process(record)
    with pytest.raises(RegistryUnavailable):
        harness.pipeline.process_each([record])
    assert harness.pipeline.stats.dead_letters == {}
    assert harness.pipeline.stats.consumed == 0
    registry.down = False
    work = harness.pipeline.process_each([record])
    assert sorted(o.topic for _, outs in work for o in outs if o.topic.endswith(".results.v1")) == sorted(
        ["tracing.cnam.results.v1", "surveillance.spf.results.v1", "tracing.ars.11.results.v1"]
    )


def test_any_registry_error_but_not_found_is_infrastructure() -> None:
    """A registry refusing with another error (e.g. HTTP 401) is retriable too: never internal_error."""
    harness, registry, v2 = _counting_harness()

    def refuse(schema_id: int) -> str:
        raise RegistryError("HTTP 401 unauthorised")

    registry.get_schema = refuse  # type: ignore[method-assign]
    with pytest.raises(RegistryUnavailable):
        harness.pipeline.process(harness.record(v2.encode(_v2_event())))
    assert harness.pipeline.stats.dead_letters == {}


def test_flood_of_unknown_ids_and_json_costs_one_lookup_per_distinct_id() -> None:
    """2 000 records of one unknown id + 2 000 JSON payloads: one lookup in all, every one dead-lettered."""
    harness, registry, _ = _counting_harness()
    before = registry.lookups
    unknown = frame(987_654, b"\x00" * 40)
    json_payload = json.dumps({"event_id": "x", "nir": "1"}).encode()
    records = [harness.record(unknown) for _ in range(2000)] + [harness.record(json_payload) for _ in range(2000)]
    harness.pipeline.prefetch(records)
    outputs = harness.pipeline.process_many(records)
    assert registry.lookups - before == 1
    codes = [dict(o.headers)["dlq.reason.code"] for o in outputs if o.dead_letter]
    assert codes.count(b"unknown_schema_id") == 2000
    assert codes.count(b"not_framed") == 2000
    # 4 000 sealed letters, one operators' data key: one key record (one HPKE seal), not one per letter
    assert [o.topic for o in outputs if not o.dead_letter] == ["screening.results.dlq.keys.v1"]


def test_bad_magic_payload_costs_no_lookup_even_without_prefetch() -> None:
    """A payload whose first byte is not 0 never reaches the registry, whatever its next four bytes are."""
    harness, registry, _ = _counting_harness()
    before = registry.lookups
    outputs = harness.pipeline.process(harness.record(b'{"event_id": "0000-1111"}'))
    assert registry.lookups == before
    assert dict(outputs[0].headers)["dlq.reason.code"] == b"not_framed"


def test_prefetch_looks_each_unseen_id_up_once_then_the_pass_needs_none() -> None:
    """prefetch resolves the batch's unseen ids; afterwards nothing is left to look up."""
    harness, registry, v2 = _counting_harness()
    records = [harness.record(v2.encode(_v2_event())) for _ in range(50)]
    assert harness.pipeline.needs_prefetch(records)
    before = registry.lookups
    harness.pipeline.prefetch(records)
    assert registry.lookups - before == 1
    assert not harness.pipeline.needs_prefetch(records)
    harness.pipeline.process_many(records)
    assert registry.lookups - before == 1


# --- order within a transaction (issue 8, items 6 and 7) ------------------------------------------


def test_transaction_order_groups_topics_and_sorts_by_partition_key() -> None:
    """Within a batch each topic's records follow their partition key; one person's keep input order."""
    harness = Harness()
    events = [_event(event_id=f"00000000-0000-4000-8000-{i:012d}") for i in range(40)]
    person = events[3]
    events[20] = {**events[20], "nir": person["nir"]}  # a re-test of the same person later in the batch
    records = [InputRecord(INGRESS_TOPIC, 0, i, None, harness.encode(e)) for i, e in enumerate(events)]
    work = [(source, out) for source, outs in harness.pipeline.process_each(records) for out in outs]
    work = [(source, out) for source, out in work if out.topic.endswith(".results.v1")]  # not the key records
    outputs = [out for _, out in work]
    topics = [o.topic for o in outputs]
    assert topics == sorted(topics)
    for topic in set(topics):
        keys = [o.route_key for o in outputs if o.topic == topic]
        assert keys == sorted(keys)
    for topic in ("tracing.cnam.results.v1", "surveillance.spf.results.v1"):
        mine = [source.offset for source, o in work if o.topic == topic and source.offset in (3, 20)]
        assert mine == [3, 20]  # same key, stable: the person's results stay in order


def test_process_batch_keeps_audit_indices_pointing_at_the_same_outputs() -> None:
    """Reordering a batch remaps each audit draft's output index to the output it drafted."""
    from streams.audit.keys import AuditKeys

    harness = Harness()
    audited = build_pipeline(
        harness.settings,
        harness.registry,
        harness.keys,
        clock_ms=lambda: FIXED,
        policy_set=POLICY_SET,
        public_keys=public_key_ring(),
        audit_keys=AuditKeys(b"a" * 32),
    )
    events = [_event(event_id=f"00000000-0000-4000-8000-{i:012d}") for i in range(30)]
    records = [InputRecord(INGRESS_TOPIC, 0, i, None, harness.encode(e)) for i, e in enumerate(events)]
    batch = audited.process_batch(records)
    views = [o for o in batch.outputs if o.topic.endswith(".results.v1")]
    assert [o.topic for o in views] == sorted(o.topic for o in views)
    pointed = 0
    for audit in batch.audits:
        for decision in audit.decisions:
            if decision.output is not None:
                out = batch.outputs[decision.output]
                assert dict(out.headers)["policy.agency"] == (decision.agency or "").encode()
                pointed += 1
    assert pointed == len(views) == 90


def test_pending_partitions_names_only_the_partitions_waiting_for_a_lookup() -> None:
    """A slow lookup of an unseen id holds its partition only; JSON on another partition never waits."""
    import threading

    harness, registry, v2 = _counting_harness()
    gate = threading.Event()
    answer = registry.get_schema

    def slow(schema_id: int) -> str:
        gate.wait(5)
        return answer(schema_id)

    registry.get_schema = slow  # type: ignore[method-assign]
    records = [
        InputRecord(INGRESS_TOPIC, 1, 0, None, v2.encode(_v2_event())),
        InputRecord(INGRESS_TOPIC, 2, 0, None, b'{"json": true}'),
        InputRecord(INGRESS_TOPIC, 3, 0, None, harness.encode(_event())),
    ]
    assert harness.pipeline.pending_partitions(records, wait_s=0.01) == {(INGRESS_TOPIC, 1)}
    gate.set()
    assert harness.pipeline.pending_partitions(records, wait_s=5) == set()
    assert not harness.pipeline.needs_prefetch(records)
