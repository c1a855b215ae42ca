"""Decode framed input events and encode framed views, with fastavro on the hot path.

Schemas are parsed once per schema id. Logical types are stripped for decoding and encoding,
so dates stay int days and timestamps int epoch millis (see ``streams.contracts.schemas.strip_logical_types``).
A writer schema is accepted once per id, in this order, each step refusing it as
``incompatible_schema`` with a reason: within the text and shape budgets and free of recursive
types and zero-width array or map items (:mod:`streams.contracts.budget`, before avro or
fastavro parse it); readable by the reader contract under the Avro spec's resolution rules
(the ``avro`` package's checker): a v2 producer is accepted, an unrelated record is rejected.

Before fastavro reads a body, a walker compiled once per writer schema
(:mod:`streams.contracts.walker`) checks every length, block count, index and boolean byte,
and the record's item budget, rejecting the record as ``undecodable`` (or ``trailing_bytes``):
fastavro never sees a body that would make it misread (negative indices read through Python's
negative indexing), crash or loop long. The walk costs about half a fastavro decode.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

import avro.compatibility
import avro.errors
import avro.schema
import fastavro

from streams.contracts.budget import DEFAULT_BUDGET, Budget, SchemaRefused, parse_writer_text, shape_of
from streams.contracts.registry import SchemaNotFound, SchemaRegistryClient
from streams.contracts.schemas import Schema, canonical_json, iter_fields, strip_logical_types
from streams.contracts.walker import BrokenRule, Check, compile_check
from streams.contracts.wire import HEADER_SIZE, frame, unframe
from streams.errors import RecordRejected, SchemaError

Record = dict[str, Any]
#: How a body is read once vetted: ``fastavro.schemaless_reader`` (injectable for tests).
BodyReader = Callable[[IO[bytes], Any, Any], Any]


@dataclass(frozen=True)
class _Writer:
    parsed: Any
    defaults: tuple[tuple[str, Any], ...]
    #: Walks a whole frame from byte 5; returns the end position or raises :class:`BrokenRule`.
    check: Check


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

    def __init__(
        self,
        registry: SchemaRegistryClient,
        reader: Schema,
        *,
        budget: Budget = DEFAULT_BUDGET,
        read_body: BodyReader = fastavro.schemaless_reader,
    ) -> None:
        """Decode against ``reader`` (the input contract) using ids resolved through ``registry``.

        ``budget`` bounds writer schemas and record bodies; ``read_body`` reads a vetted body.
        """
        self._registry = registry
        self._reader = reader
        self._budget = budget
        self._read_body = read_body
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
        parsed: Any = None
        try:
            writer = parse_writer_text(text, self._budget)
            shape = shape_of(writer, self._budget)  # before avro or fastavro parse it
            ok, why = is_readable_by(self._reader, writer)
            if ok:
                parsed = fastavro.parse_schema(strip_logical_types(writer))
        except SchemaRefused as refused:
            ok, why = False, refused.reason
        except Exception as exc:  # fastavro refuses what the avro package accepted
            ok, why = False, f"fastavro cannot parse it ({type(exc).__name__})"
        if not ok:
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
        entry = _Writer(parsed, defaults, compile_check(shape, self._budget))
        self._writers[schema_id] = entry
        return entry

    def decode(self, data: bytes | None) -> tuple[int, Record]:
        """Return (writer schema id, record); reject framing, unknown ids and bad bodies."""
        try:
            schema_id, _ = unframe(data)
        except RecordRejected as rejection:
            if rejection.code == "bad_magic" and data is not None:
                raise self._classify_bad_magic(data) from None
            raise
        writer = self._writer(schema_id)
        record = self._read(writer, schema_id, cast(bytes, data))
        for name, default in writer.defaults:
            record.setdefault(name, default)
        return schema_id, record

    def _read(self, writer: _Writer, schema_id: int, data: bytes) -> Record:
        """Vet the body of ``data`` (a whole frame) with the writer's walker, then read it with fastavro."""
        try:
            end = writer.check(data, HEADER_SIZE)
        except BrokenRule as broken:
            raise RecordRejected(
                "undecodable", f"Avro body breaks an encoding rule or budget (schema {schema_id}): {broken}"
            ) from None
        except IndexError:
            raise RecordRejected("undecodable", f"Avro body is truncated (schema {schema_id})") from None
        if end < len(data):
            raise RecordRejected(
                "trailing_bytes",
                f"{len(data) - end} bytes left after the record (schema {schema_id}): wrong schema id or corrupt body",
            )
        if end > len(data):
            raise RecordRejected("undecodable", f"Avro body is truncated (schema {schema_id})")
        buffer = io.BytesIO(memoryview(data)[HEADER_SIZE:])
        try:
            record = cast(Record, self._read_body(buffer, writer.parsed, None))
        except Exception as exc:  # fastavro raises many types on corrupt input (e.g. bad UTF-8)
            raise RecordRejected(
                "undecodable",
                f"Avro body does not decode with writer schema {schema_id} ({type(exc).__name__})",
            ) from None
        if buffer.tell() != len(data) - HEADER_SIZE:
            raise RecordRejected("undecodable", f"fastavro and the walker disagree on the body (schema {schema_id})")
        return record

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
            try:
                self._read(writer, schema_id, data)
                complete = True
            except RecordRejected:
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
