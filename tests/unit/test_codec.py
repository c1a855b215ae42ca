"""Unit tests of the event decoder and view encoder (streams.codec) with the real contracts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.codec import EventDecoder, ViewEncoder, is_readable_by, register_encoder
from streams.contracts import canonical_json, input_schema
from streams.errors import RecordRejected
from streams.generate import GeneratorSettings, generate_events
from streams.registry import InMemorySchemaRegistry
from streams.wire import frame, unframe

SUBJECT = "screening.results.v1-value"
V2_FIELDS = ("variant_screening", "vaccination_status")


def _event(version: int = 1, seed: int = 3, **changes: Any) -> dict[str, Any]:
    settings = GeneratorSettings(seed=seed, schema_version=version)
    event = dict(next(iter(generate_events(1, settings))))
    event.update(changes)
    return event


def _encoder(registry: InMemorySchemaRegistry, version: int) -> ViewEncoder:
    return register_encoder(registry, SUBJECT, input_schema(version))


def _rejection(decoder: EventDecoder, data: bytes) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        decoder.decode(data)
    return caught.value


def test_v1_round_trip() -> None:
    """A v1 event encoded with the v1 contract decodes to the same dict and its writer id."""
    registry = InMemorySchemaRegistry()
    encoder = _encoder(registry, 1)
    event = _event()
    schema_id, decoded = EventDecoder(registry, input_schema(1)).decode(encoder.encode(event))
    assert schema_id == encoder.schema_id
    assert decoded == event


def test_v2_written_event_decodes_with_v1_reader() -> None:
    """A v2 producer's event is accepted by the v1 reader; v1 fields are intact, v2 extras pass."""
    registry = InMemorySchemaRegistry()
    event = _event(version=2)
    _, decoded = EventDecoder(registry, input_schema(1)).decode(_encoder(registry, 2).encode(event))
    v1_names = [f["name"] for f in input_schema(1)["fields"]]
    assert {n: decoded[n] for n in v1_names} == {n: event[n] for n in v1_names}
    assert {n: decoded[n] for n in V2_FIELDS} == {n: event[n] for n in V2_FIELDS}


def test_v1_written_event_gets_v2_defaults_only_with_v2_reader() -> None:
    """Fields missing from the writer are filled with the reader's defaults, and only then."""
    registry = InMemorySchemaRegistry()
    data = _encoder(registry, 1).encode(_event())
    _, with_v2_reader = EventDecoder(registry, input_schema(2)).decode(data)
    _, with_v1_reader = EventDecoder(registry, input_schema(1)).decode(data)
    defaults = {"variant_screening": None, "vaccination_status": None}
    assert {n: with_v2_reader[n] for n in V2_FIELDS} == defaults
    assert not set(V2_FIELDS) & set(with_v1_reader)


def test_v1_and_v2_are_compatible_both_ways() -> None:
    """Per the Avro spec, v2 data reads as v1 and v1 data reads as v2 (v2 adds defaulted fields)."""
    v1, v2 = input_schema(1), input_schema(2)
    assert is_readable_by(v1, v2) == (True, "")
    assert is_readable_by(v2, v1) == (True, "")


def test_unrelated_record_schema_is_incompatible_schema() -> None:
    """A registered record that cannot be read as the screening event is rejected (and stays so)."""
    registry = InMemorySchemaRegistry()
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    other_id = registry.register("other-value", canonical_json(other))
    decoder = EventDecoder(registry, input_schema(1))
    data = frame(other_id, b"\x02")
    assert _rejection(decoder, data).code == "incompatible_schema"
    assert _rejection(decoder, data).code == "incompatible_schema"


def test_non_json_writer_schema_is_incompatible_schema() -> None:
    """A registry entry that is not a JSON object is rejected as incompatible, not as a crash."""
    registry = InMemorySchemaRegistry()
    bad_id = registry.register("junk-value", "not json at all")
    rejection = _rejection(EventDecoder(registry, input_schema(1)), frame(bad_id, b""))
    assert rejection.code == "incompatible_schema"


def test_unknown_schema_id_is_rejected_and_not_cached() -> None:
    """An unregistered id is unknown_schema_id; once registered, the same bytes decode."""
    registry = InMemorySchemaRegistry(first_id=100)
    decoder = EventDecoder(registry, input_schema(1))
    event = _event()
    body = unframe(ViewEncoder(input_schema(1), 100).encode(event))[1].tobytes()
    assert _rejection(decoder, frame(100, body)).code == "unknown_schema_id"
    assert _encoder(registry, 1).schema_id == 100
    assert decoder.decode(frame(100, body)) == (100, event)


@pytest.mark.parametrize("cut", [1, 2, 10, 40])
def test_truncated_body_is_undecodable(cut: int) -> None:
    """A body cut short anywhere is rejected as undecodable (never as a partial record)."""
    registry = InMemorySchemaRegistry()
    data = _encoder(registry, 1).encode(_event())
    rejection = _rejection(EventDecoder(registry, input_schema(1)), data[:-cut])
    assert rejection.code == "undecodable"
    assert rejection.stage == "decode"


def test_extra_trailing_bytes_are_rejected() -> None:
    """Bytes left over after a complete record are rejected as trailing_bytes."""
    registry = InMemorySchemaRegistry()
    data = _encoder(registry, 1).encode(_event())
    rejection = _rejection(EventDecoder(registry, input_schema(1)), data + b"\x00\x00")
    assert rejection.code == "trailing_bytes"
    assert "2 bytes" in str(rejection)


def test_enum_index_out_of_range_is_undecodable() -> None:
    """An enum index past the symbols (here the last field, result) is rejected as undecodable."""
    registry = InMemorySchemaRegistry()
    data = _encoder(registry, 1).encode(_event(result="POSITIVE"))
    assert data[-1:] == b"\x00"  # zig-zag 0: POSITIVE, the last field of the record
    corrupt = data[:-1] + b"\x0a"  # zig-zag 5: no such symbol
    assert _rejection(EventDecoder(registry, input_schema(1)), corrupt).code == "undecodable"


def test_invalid_utf8_in_string_field_is_undecodable() -> None:
    """String bytes that are not UTF-8 are rejected as undecodable, not passed on."""
    registry = InMemorySchemaRegistry()
    data = _encoder(registry, 1).encode(_event(last_name="Zqzqzq"))
    corrupt = data.replace(b"Zqzqzq", b"\xff" * 6)
    assert corrupt != data
    assert _rejection(EventDecoder(registry, input_schema(1)), corrupt).code == "undecodable"


def test_random_body_is_rejected_without_exception_leak() -> None:
    """Arbitrary bytes under a valid id end as a RecordRejected with a decode-stage code."""
    registry = InMemorySchemaRegistry()
    schema_id = _encoder(registry, 1).schema_id
    rejection = _rejection(EventDecoder(registry, input_schema(1)), frame(schema_id, b"\xff" * 7))
    assert rejection.code in {"undecodable", "trailing_bytes"}


def test_reason_text_does_not_quote_the_data() -> None:
    """The undecodable reason names the exception type only, never bytes of the payload."""
    registry = InMemorySchemaRegistry()
    data = _encoder(registry, 1).encode(_event(last_name="Zqzqzq"))
    corrupt = data.replace(b"Zqzqzq", b"\xff" * 6)
    rejection = _rejection(EventDecoder(registry, input_schema(1)), corrupt)
    assert "Zqzqzq" not in str(rejection) and "\\xff" not in str(rejection)


def test_view_encoder_output_starts_with_magic_and_id() -> None:
    """ViewEncoder frames its output: byte 0, then the 4-byte big-endian schema id."""
    encoder = ViewEncoder(input_schema(1), 0x0A0B0C0D)
    data = encoder.encode(_event())
    assert data[:5] == b"\x00\x0a\x0b\x0c\x0d"
    assert unframe(data)[0] == 0x0A0B0C0D


def test_register_encoder_registers_the_canonical_schema() -> None:
    """register_encoder stores the schema under the subject and encodes with the returned id."""
    registry = InMemorySchemaRegistry(first_id=9)
    encoder = _encoder(registry, 1)
    assert encoder.schema_id == 9
    assert json.loads(registry.get_schema(9)) == input_schema(1)
