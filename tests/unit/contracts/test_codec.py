"""Unit tests of the event decoder and view encoder (streams.contracts.codec) with the real contracts."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest

from streams.contracts.codec import EventDecoder, ViewEncoder, is_readable_by, register_encoder
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.schemas import canonical_json, input_schema, strip_logical_types
from streams.contracts.wire import HEADER_SIZE, frame, unframe
from streams.domain.generate import GeneratorSettings, generate_events
from streams.errors import RecordRejected

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


# -- encoding rules fastavro does not enforce (negative indices, booleans, integer widths) --------


def _field_span(event: dict[str, Any], name: str, version: int = 1) -> tuple[int, int]:
    """Where field ``name`` starts and ends in the framed encoding of ``event`` (header included)."""
    schema = strip_logical_types(input_schema(version))
    names = [f["name"] for f in schema["fields"]]

    def offset(count: int) -> int:
        buffer = io.BytesIO()
        prefix = {**schema, "fields": schema["fields"][:count]}
        fastavro.schemaless_writer(buffer, fastavro.parse_schema(prefix), event)
        return HEADER_SIZE + len(buffer.getvalue())

    index = names.index(name)
    return offset(index), offset(index + 1)


def _splice(data: bytes, start: int, end: int, replacement: bytes) -> bytes:
    return data[:start] + replacement + data[end:]


def _plain_fastavro(data: bytes, version: int = 1) -> dict[str, Any]:
    """What fastavro alone reads from a framed body (no project checks)."""
    parsed = fastavro.parse_schema(strip_logical_types(input_schema(version)))
    record = fastavro.schemaless_reader(io.BytesIO(data[HEADER_SIZE:]), parsed, None)
    assert isinstance(record, dict)
    return record


# (changes, field, byte offset inside the field, corrupt byte, what plain fastavro reads instead)
SILENT_CORRUPTIONS = {
    "enum index -3 reads D as P": ({"processing_mode": "D"}, "processing_mode", 0, b"\x05", "P"),
    "enum index -3 reads INDETERMINATE as POSITIVE": ({"result": "INDETERMINATE"}, "result", 0, b"\x05", "POSITIVE"),
    "enum index -1": ({"sex": "M"}, "sex", 0, b"\x01", "M"),
    "union index -2 reads null": ({"phone": None}, "phone", 0, b"\x03", None),
    "union index -1 reads the boolean branch": ({"symptomatic": True}, "symptomatic", 0, b"\x01", True),
    "boolean byte 2": ({"health_care_worker": False}, "health_care_worker", 0, b"\x02", True),
    "boolean byte 0xff": ({"health_care_worker": False}, "health_care_worker", 0, b"\xff", True),
    "boolean byte 7 inside a union": ({"symptomatic": False}, "symptomatic", 1, b"\x07", True),
}


@pytest.mark.parametrize("case", list(SILENT_CORRUPTIONS))
def test_corrupt_index_or_boolean_that_fastavro_accepts_is_undecodable(case: str) -> None:
    """A negative enum/union index or a boolean byte other than 0/1 is undecodable, though fastavro reads a value."""
    changes, name, inside, corrupt_byte, fastavro_reads = SILENT_CORRUPTIONS[case]
    registry = InMemorySchemaRegistry()
    event = _event(**changes)
    data = _encoder(registry, 1).encode(event)
    start, _ = _field_span(event, name)
    corrupt = _splice(data, start + inside, start + inside + 1, corrupt_byte)
    assert corrupt != data
    assert _plain_fastavro(corrupt)[name] == fastavro_reads  # the weakness this check covers
    rejection = _rejection(EventDecoder(registry, input_schema(1)), corrupt)
    assert (rejection.code, rejection.stage) == ("undecodable", "decode")


def test_negative_enum_index_inside_a_v2_union_is_undecodable() -> None:
    """A v2 field (nullable enum) with a negative symbol index is rejected, like a v1 one."""
    registry = InMemorySchemaRegistry()
    event = _event(2, vaccination_status="UNKNOWN")
    data = _encoder(registry, 2).encode(event)
    start, end = _field_span(event, "vaccination_status", 2)
    assert data[start:end] == b"\x02\x08"  # branch 1, symbol 4
    corrupt = _splice(data, start, end, b"\x02\x01")  # symbol -1: fastavro reads UNKNOWN
    assert _plain_fastavro(corrupt, 2)["vaccination_status"] == "UNKNOWN"
    assert _rejection(EventDecoder(registry, input_schema(1)), corrupt).code == "undecodable"


def test_integers_wider_than_their_type_are_undecodable() -> None:
    """An int beyond 32 bits or a varint beyond 64 bits (fastavro wraps them) is rejected."""
    registry = InMemorySchemaRegistry()
    event = _event()
    data = _encoder(registry, 1).encode(event)
    decoder = EventDecoder(registry, input_schema(1))
    start, end = _field_span(event, "birth_date")
    wide_int = _splice(data, start, end, b"\x80\x80\x80\x80\x10")  # zig-zag 2**32 -> 2**31
    assert _plain_fastavro(wide_int)["birth_date"] == 2**31
    assert _rejection(decoder, wide_int).code == "undecodable"
    start, end = _field_span(event, "emitted_at")
    wide_long = _splice(data, start, end, b"\xff" * 9 + b"\x7f")  # 70 bits of payload
    assert _rejection(decoder, wide_long).code == "undecodable"
    too_long = _splice(data, start, end, b"\x80" * 10 + b"\x00")  # 11-byte varint
    assert _rejection(decoder, too_long).code == "undecodable"


def test_legal_non_canonical_encodings_still_decode() -> None:
    """Over-long varints and arrays split in blocks (one with a byte size) are valid Avro and decode unchanged."""
    registry = InMemorySchemaRegistry()
    event = _event(last_name="Zqzqzq", address_lines=["12 rue Pasteur", "Bâtiment B"])
    data = _encoder(registry, 1).encode(event)
    decoder = EventDecoder(registry, input_schema(1))
    start, _ = _field_span(event, "last_name")
    assert data[start] == 12  # zig-zag length 6, one byte
    overlong = _splice(data, start, start + 1, b"\x8c\x80\x00")  # length 6 in three bytes
    assert decoder.decode(overlong) == (1, event)
    start, end = _field_span(event, "address_lines")
    first, second = (line.encode() for line in event["address_lines"])
    item = bytes([2 * len(first)]) + first
    rest = bytes([2 * len(second)]) + second
    blocks = b"\x02" + item + b"\x01" + bytes([2 * len(rest)]) + rest + b"\x00"  # counts 1, then -1 with size
    assert decoder.decode(_splice(data, start, end, blocks)) == (1, event)


EXOTIC_EXTRA_FIELDS = [
    {"name": "x_map", "type": {"type": "map", "values": "double"}},
    {"name": "x_fixed", "type": {"type": "fixed", "name": "Tag", "size": 3}},
    {"name": "x_float", "type": "float"},
    {"name": "x_bytes", "type": "bytes"},
    {"name": "x_tag_again", "type": ["null", "Tag"]},
    {
        "name": "x_tree",
        "type": {
            "type": "record",
            "name": "Node",
            "fields": [
                {"name": "mode", "type": "ProcessingMode"},
                {
                    "name": "children",
                    "type": {
                        "type": "array",
                        "items": {
                            "type": "record",
                            "name": "Leaf",
                            "fields": [{"name": "mode", "type": "ProcessingMode"}],
                        },
                    },
                },
            ],
        },
    },
]


def test_compatible_writer_with_every_avro_type_decodes_and_is_checked_too() -> None:
    """A v1-compatible writer with maps, fixed, float, bytes, named, nested types decodes; nested enums are checked."""
    registry = InMemorySchemaRegistry()
    writer = input_schema(1)
    writer = {**writer, "fields": [*writer["fields"], *EXOTIC_EXTRA_FIELDS]}
    schema_id = registry.register(SUBJECT, json.dumps(writer))
    event = _event()
    extra = {
        "x_map": {"a": 1.5, "b": -2.0},
        "x_fixed": b"abc",
        "x_float": 0.5,
        "x_bytes": b"\x00\xff",
        "x_tag_again": b"xyz",
        "x_tree": {"mode": "T", "children": [{"mode": "D"}]},
    }
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(strip_logical_types(writer)), {**event, **extra})
    data = frame(schema_id, buffer.getvalue())
    decoder = EventDecoder(registry, input_schema(1))
    assert decoder.decode(data) == (schema_id, {**event, **extra})
    assert data.endswith(b"\x02\x02\x04\x00")  # x_tree last: mode T, one child of mode D, end of the array
    corrupt = _splice(data, len(data) - 2, len(data) - 1, b"\x05")  # the child's mode index -3
    parsed = fastavro.parse_schema(strip_logical_types(writer))
    misread = fastavro.schemaless_reader(io.BytesIO(corrupt[HEADER_SIZE:]), parsed, None)
    assert isinstance(misread, dict) and misread["x_tree"]["children"] == [{"mode": "P"}]  # fastavro alone
    assert _rejection(decoder, corrupt).code == "undecodable"


def test_recursive_writer_schema_is_refused_before_any_body_is_read() -> None:
    """A v1-compatible writer with a recursive type is incompatible_schema, naming type and field; no body is read."""
    registry = InMemorySchemaRegistry()
    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"], "default": None}]}
    writer = {**input_schema(1), "fields": [*input_schema(1)["fields"], {"name": "x", "type": ["null", node]}]}
    schema_id = registry.register(SUBJECT, json.dumps(writer))
    reads: list[object] = []
    decoder = EventDecoder(registry, input_schema(1), read_body=lambda *args: reads.append(args))
    rejection = _rejection(decoder, frame(schema_id, b"\x02" * 5_000 + b"\x00"))
    assert rejection.code == "incompatible_schema"
    assert "recursive type Node at field x.next" in str(rejection)
    assert reads == []


def test_walker_vets_the_body_before_fastavro_reads_it() -> None:
    """A body the walker refuses never reaches the body reader; a valid one reaches it exactly once."""
    registry = InMemorySchemaRegistry()
    data = _encoder(registry, 1).encode(_event(result="POSITIVE"))
    reads: list[int] = []

    def counting(buffer: io.BytesIO, parsed: Any, reader: Any) -> Any:
        reads.append(1)
        return fastavro.schemaless_reader(buffer, parsed, reader)

    decoder = EventDecoder(registry, input_schema(1), read_body=counting)
    assert _rejection(decoder, data[:-1] + b"\x05").code == "undecodable"
    assert _rejection(decoder, data[:-3]).code == "undecodable"
    assert _rejection(decoder, data + b"\x00").code == "trailing_bytes"
    assert reads == []
    decoder.decode(data)
    assert reads == [1]
