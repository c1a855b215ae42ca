"""The agency's side of a record: decode it with its writer contract, decrypt it, render it.

:class:`AgencyRecordReader` turns one framed agency record (Confluent framing, Avro body) into
exactly the policy's fields, decrypted, with ISO dates: what the reference client writes. It
fails with :class:`~streams.crypto.errors.DecryptionError` naming the record (topic, partition,
offset) and the field, never with a partial or garbled record, and never quoting a value.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro

from streams.contracts.registry import SchemaRegistryClient
from streams.contracts.schemas import Schema, strip_logical_types, to_readable
from streams.contracts.wire import unframe
from streams.crypto.envelope import DataKeyStore
from streams.crypto.errors import DecryptionError
from streams.crypto.views import RecordOpener, plaintext_schema
from streams.errors import RecordRejected


@dataclass(frozen=True)
class _Writer:
    schema: Schema
    parsed: Any
    readable: Schema  # the plaintext view of the contract, for ISO rendering


def where(topic: str, partition: int, offset: int) -> str:
    """How errors name a record: ``topic[partition]@offset``."""
    return f"{topic}[{partition}]@{offset}"


class AgencyRecordReader:
    """Decodes and decrypts records of one agency's topic (see module docstring)."""

    def __init__(self, registry: SchemaRegistryClient, store: DataKeyStore) -> None:
        """Read writer contracts from ``registry``; open values with the data keys of ``store``."""
        self.registry = registry
        self.store = store
        self.opener = RecordOpener(store)
        self._writers: dict[int, _Writer] = {}

    def _writer(self, schema_id: int) -> _Writer:
        writer = self._writers.get(schema_id)
        if writer is None:
            schema = json.loads(self.registry.get_schema(schema_id))
            parsed = fastavro.parse_schema(strip_logical_types(schema))
            writer = self._writers[schema_id] = _Writer(schema, parsed, plaintext_schema(schema))
        return writer

    def decode(self, value: bytes | None, at: str) -> tuple[int, dict[str, Any]]:
        """(schema id, record with encrypted fields still bytes); ``malformed`` when it does not decode."""
        try:
            schema_id, body = unframe(value)
        except RecordRejected:
            raise DecryptionError("malformed", f"{at}: not a Confluent-framed Avro record") from None
        writer = self._writer(schema_id)
        buffer = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(buffer, writer.parsed, None)
        except Exception as exc:  # fastavro raises many types on corrupt bodies
            raise DecryptionError("malformed", f"{at}: body does not decode ({type(exc).__name__})") from None
        if buffer.tell() != len(body) or not isinstance(record, dict):
            raise DecryptionError("malformed", f"{at}: trailing bytes after the record")
        return schema_id, record

    def missing_keys(self, value: bytes | None, at: str) -> set[bytes]:
        """Data-key ids this record needs that the store lacks (read more of the key topic, then retry)."""
        schema_id, record = self.decode(value, at)
        return self.opener.missing_keys(record, schema_id, self._writer(schema_id).schema)

    def sealed_to(self, value: bytes | None, at: str) -> str:
        """The public key id the record's first encrypted value needs (``?`` when it cannot say)."""
        schema_id, record = self.decode(value, at)
        for data_key_id in self.opener.data_keys(record, schema_id, self._writer(schema_id).schema):
            key = self.store.record_of(data_key_id)
            if key is not None:
                return key.public_key_id
        return "?"

    def read(self, topic: str, partition: int, offset: int, value: bytes | None) -> dict[str, Any]:
        """Exactly the contract's fields, decrypted, dates and timestamps as ISO strings."""
        at = where(topic, partition, offset)
        schema_id, record = self.decode(value, at)
        writer = self._writer(schema_id)
        opened = self.opener.open(record, schema_id, writer.schema, topic, at)
        return to_readable(opened, writer.readable)
