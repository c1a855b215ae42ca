"""Decode framed input events and encode framed views, with fastavro on the hot path.

Schemas are parsed once per schema id. Logical types are stripped for decoding and encoding,
so dates stay int days and timestamps int epoch millis (see ``contracts.strip_logical_types``).
Writer schemas are checked once, with the ``avro`` package's implementation of the Avro
spec's resolution rules, against the reader contract: a v2 producer is accepted, an unrelated
record is rejected.

fastavro reads a negative enum or union index through Python's negative indexing (index -3
of ``P, T, D`` reads as ``P``) and any non-zero boolean byte as true, so a corrupt body can
decode to plausible values. After fastavro has read a body, a small walker compiled once per
writer schema checks exactly those bytes (and integer widths) and rejects the record as
``undecodable``; it costs about half a fastavro decode.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import avro.compatibility
import avro.errors
import avro.schema
import fastavro

from streams.contracts.registry import SchemaNotFound, SchemaRegistryClient
from streams.contracts.schemas import Schema, canonical_json, iter_fields, strip_logical_types
from streams.contracts.wire import HEADER_SIZE, frame, unframe
from streams.errors import RecordRejected, SchemaError

Record = dict[str, Any]


class _BrokenRule(Exception):
    """A body breaks an Avro encoding rule that fastavro does not enforce."""


_Walk = Callable[[bytes, int], int]
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read the zig-zag varint at ``pos``; return (value, next position). At most 64 bits."""
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if n >> 64:
                raise _BrokenRule
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift >= 70:
            raise _BrokenRule


def _skip_null(data: bytes, pos: int) -> int:
    return pos


def _skip_boolean(data: bytes, pos: int) -> int:
    if data[pos] > 1:
        raise _BrokenRule
    return pos + 1


def _skip_long(data: bytes, pos: int) -> int:
    if data[pos] < 0x80:
        return pos + 1
    return _varint(data, pos)[1]


def _skip_int(data: bytes, pos: int) -> int:
    if data[pos] < 0x80:
        return pos + 1
    value, pos = _varint(data, pos)
    if not _INT_MIN <= value <= _INT_MAX:
        raise _BrokenRule
    return pos


def _skip_bytes(data: bytes, pos: int) -> int:
    b = data[pos]
    if b < 0x80 and not b & 1:
        return pos + 1 + (b >> 1)
    size, pos = _varint(data, pos)
    if size < 0:
        raise _BrokenRule
    return pos + size


def _fixed(size: int) -> _Walk:
    return lambda data, pos: pos + size


_PRIMITIVE_WALKS: dict[str, _Walk] = {
    "null": _skip_null,
    "boolean": _skip_boolean,
    "int": _skip_int,
    "long": _skip_long,
    "float": _fixed(4),
    "double": _fixed(8),
    "bytes": _skip_bytes,
    "string": _skip_bytes,
}


def _compile_walk(schema: Any, named: dict[str, Any]) -> _Walk:
    """Compile a walker of the binary encoding of a parsed ``schema`` (``named``: its named types).

    The walker returns the position after the datum and raises :class:`_BrokenRule` on a
    negative or too large enum or union index, a boolean byte other than 0 or 1, a negative
    length, a varint longer than 10 bytes or an ``int`` outside 32 bits.
    """
    walks: dict[str, _Walk] = {}

    def build(node: Any) -> _Walk:
        if isinstance(node, list):
            return union([build(branch) for branch in node])
        if isinstance(node, str):
            if node in _PRIMITIVE_WALKS:
                return _PRIMITIVE_WALKS[node]
            # A named type: a record registers itself before its fields, so recursion resolves.
            return walks[node] if node in walks else build(named[node])
        kind = node["type"]
        if kind in ("record", "error"):
            fields: list[_Walk] = []

            def record(data: bytes, pos: int) -> int:
                for walk in fields:
                    pos = walk(data, pos)
                return pos

            walks[node["name"]] = record
            fields.extend(build(f["type"]) for f in node["fields"])
            return record
        if kind == "enum":
            walks[node["name"]] = walk = index_below(len(node["symbols"]))
            return walk
        if kind == "fixed":
            walks[node["name"]] = walk = _fixed(node["size"])
            return walk
        if kind == "array":
            return blocks(build(node["items"]))
        if kind == "map":
            value = build(node["values"])
            return blocks(lambda data, pos: value(data, _skip_bytes(data, pos)))
        return build(kind)  # a primitive written as {"type": ...} (e.g. with a logical type)

    def index_below(count: int) -> _Walk:
        def index(data: bytes, pos: int) -> int:
            b = data[pos]
            if b < 0x80 and not b & 1 and b >> 1 < count:
                return pos + 1
            value, pos = _varint(data, pos)
            if not 0 <= value < count:
                raise _BrokenRule
            return pos

        return index

    def union(branches: list[_Walk]) -> _Walk:
        count = len(branches)

        def walk(data: bytes, pos: int) -> int:
            b = data[pos]
            if b < 0x80 and not b & 1 and b >> 1 < count:
                return branches[b >> 1](data, pos + 1)
            value, pos = _varint(data, pos)
            if not 0 <= value < count:
                raise _BrokenRule
            return branches[value](data, pos)

        return walk

    def blocks(item: _Walk) -> _Walk:
        def walk(data: bytes, pos: int) -> int:
            while True:
                count, pos = _varint(data, pos)
                if count == 0:
                    return pos
                if count < 0:  # a block that also gives its size in bytes
                    count = -count
                    pos = _varint(data, pos)[1]
                for _ in range(count):
                    pos = item(data, pos)

        return walk

    return build(schema)


@dataclass(frozen=True)
class _Writer:
    parsed: Any
    defaults: tuple[tuple[str, Any], ...]
    #: Walks a whole frame from byte 5; returns the end position or raises on a broken rule.
    check: _Walk


def is_readable_by(reader: Schema, writer: Schema) -> tuple[bool, str]:
    """Tell whether data written with ``writer`` can be read with ``reader`` (Avro spec rules)."""
    try:
        parsed_reader = avro.schema.parse(json.dumps(reader))
        parsed_writer = avro.schema.parse(json.dumps(writer))
    except (avro.errors.AvroException, ValueError, TypeError) as exc:
        return False, f"schema does not parse: {exc}"
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(parsed_reader, parsed_writer)
    ok = result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible
    return ok, "; ".join(sorted(result.messages)) if not ok else ""


class EventDecoder:
    """Turn Confluent-framed bytes into a wire-native dict, or raise :class:`RecordRejected`."""

    def __init__(self, registry: SchemaRegistryClient, reader: Schema) -> None:
        """Decode against ``reader`` (the input contract) using ids resolved through ``registry``."""
        self._registry = registry
        self._reader = reader
        self._writers: dict[int, _Writer] = {}
        self._rejected: dict[int, RecordRejected] = {}

    def _writer(self, schema_id: int) -> _Writer:
        cached = self._writers.get(schema_id)
        if cached is not None:
            return cached
        if schema_id in self._rejected:
            raise self._rejected[schema_id]
        try:
            text = self._registry.get_schema(schema_id)
        except SchemaNotFound:
            # Not cached: the id may be registered a moment later by a new producer.
            raise RecordRejected("unknown_schema_id", f"schema id {schema_id} is not in the registry") from None
        try:
            writer = json.loads(text)
        except json.JSONDecodeError:
            writer = None
        ok, why = (False, "not JSON") if not isinstance(writer, dict) else is_readable_by(self._reader, writer)
        if not ok or not isinstance(writer, dict):
            rejection = RecordRejected(
                "incompatible_schema",
                f"writer schema id {schema_id} cannot be read as the screening event: {why}"[:400],
            )
            self._rejected[schema_id] = rejection
            raise rejection
        writer_fields = {f.name for f in iter_fields(writer)}
        defaults = tuple(
            (f["name"], f.get("default")) for f in self._reader["fields"] if f["name"] not in writer_fields
        )
        named: dict[str, Any] = {}
        parsed = fastavro.parse_schema(strip_logical_types(writer), named_schemas=named)
        entry = _Writer(parsed, defaults, _compile_walk(parsed, named))
        self._writers[schema_id] = entry
        return entry

    def decode(self, data: bytes | None) -> tuple[int, Record]:
        """Return (writer schema id, record); reject framing, unknown ids and bad bodies."""
        try:
            schema_id, body = unframe(data)
        except RecordRejected as rejection:
            if rejection.code == "bad_magic" and data is not None:
                raise self._classify_bad_magic(data) from None
            raise
        writer = self._writer(schema_id)
        buffer = io.BytesIO(body)
        try:
            record = cast(Record, fastavro.schemaless_reader(buffer, writer.parsed, None))
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise RecordRejected(
                "undecodable",
                f"Avro body does not decode with writer schema {schema_id} ({type(exc).__name__})",
            ) from None
        if buffer.tell() != len(body):
            raise RecordRejected(
                "trailing_bytes",
                f"{len(body) - buffer.tell()} bytes left after the record "
                f"(schema {schema_id}): wrong schema id or corrupt body",
            )
        try:
            end = writer.check(cast(bytes, data), HEADER_SIZE)
        except (_BrokenRule, IndexError, RecursionError):
            end = -1
        if end != len(body) + HEADER_SIZE:
            raise RecordRejected(
                "undecodable",
                f"Avro body breaks an encoding rule (schema {schema_id}): negative or out-of-range "
                "enum or union index, boolean byte other than 0 or 1, or an oversized integer",
            )
        for name, default in writer.defaults:
            record.setdefault(name, default)
        return schema_id, record

    def _classify_bad_magic(self, data: bytes) -> RecordRejected:
        """Tell a framed record with a wrong magic byte from bytes that are not framed at all.

        The 4 bytes after the first are looked up as a schema id, like any framed record's.
        """
        schema_id = int.from_bytes(data[1:5], "big")
        try:
            writer: _Writer | None = self._writer(schema_id) if len(data) > 5 else None
        except RecordRejected:
            writer = None
        if writer is not None:
            buffer = io.BytesIO(data[5:])
            try:
                fastavro.schemaless_reader(buffer, writer.parsed, None)
                complete = buffer.tell() == len(data) - 5
            except Exception:
                complete = False
            if complete:
                return RecordRejected(
                    "bad_magic",
                    f"first byte is {data[0]}, not the Confluent magic byte 0, but a valid record of "
                    f"schema {schema_id} follows: the producer uses another framing",
                )
        return RecordRejected(
            "not_framed",
            f"payload is not in the Confluent wire format (first byte {data[0]}, no known schema id and record follow)",
        )


class ViewEncoder:
    """Encode dicts against one registered schema into Confluent-framed bytes."""

    def __init__(self, schema: Schema, schema_id: int) -> None:
        """Parse ``schema`` once (logical types stripped) for the writer id ``schema_id``."""
        try:
            self._parsed = fastavro.parse_schema(strip_logical_types(schema))
        except Exception as exc:
            raise SchemaError(f"cannot parse output schema {schema.get('name')}: {exc}") from exc
        self.schema_id = schema_id
        self._prefix = frame(schema_id, b"")

    def encode(self, record: Record) -> bytes:
        """Return the framed Avro encoding of ``record``."""
        buffer = io.BytesIO()
        buffer.write(self._prefix)
        fastavro.schemaless_writer(buffer, self._parsed, record)
        return buffer.getvalue()


def register_encoder(registry: SchemaRegistryClient, subject: str, schema: Schema) -> ViewEncoder:
    """Register ``schema`` under ``subject`` and return an encoder for it."""
    return ViewEncoder(schema, registry.register(subject, canonical_json(schema)))


EncoderFactory = Callable[[str, Schema], ViewEncoder]
