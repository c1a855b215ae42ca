"""Encrypted fields of a record: sealed by the processor, opened by the agency, named by the contract.

An output contract marks each encrypted field with an ``encryption`` attribute (its type is
``bytes``; see :func:`contract_attribute`), so both sides derive what to do from the same
contract: :class:`ViewSealer` (processor) encrypts those fields of a view, :class:`RecordOpener`
(agency) decrypts them in a decoded record. A null value stays null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.contracts.schemas import Schema
from streams.crypto.envelope import (
    ALGORITHM,
    DATA_KEY_ID_BYTES,
    HEADER_BYTES,
    KEY_SEALING,
    MAX_FIELDS_PER_VIEW,
    DataKey,
    DataKeyStore,
    FieldEncryptor,
    decrypt_value,
    field_aad_prefix,
    frame_parts,
)
from streams.crypto.errors import DecryptionError
from streams.crypto.plaintext import Decode, Encode, codec_for

ENCRYPTION_ATTRIBUTE = "encryption"
#: Value layout: version 1 (1 byte) | data-key id (16) | nonce (12) | AES-256-GCM ciphertext | tag (16);
#: the plaintext is the Avro binary encoding of the value under ``plaintext_type``.
ENVELOPE = "screening-streams.field.v1"
_RESULTS = ".results."


def key_topic(topic: str) -> str:
    """The compacted key topic of an agency topic: ``tracing.cnam.results.v1`` → ``tracing.cnam.keys.v1``."""
    head, sep, tail = topic.rpartition(_RESULTS)
    if not sep:
        raise ValueError(f"topic {topic!r} does not follow <...>.results.v<N>")
    return f"{head}.keys.{tail}"


def is_key_topic(topic: str) -> bool:
    """True for a name :func:`key_topic` makes (``<...>.keys.v<N>``)."""
    head, sep, tail = topic.rpartition(".keys.")
    return bool(sep and head) and tail.startswith("v") and tail[1:].isdigit()


def contract_attribute(plaintext_type: Any, key_topic_name: str) -> dict[str, Any]:
    """The ``encryption`` attribute of an encrypted field in an output contract (README: Encryption)."""
    return {
        "algorithm": ALGORITHM,
        "envelope": ENVELOPE,
        "plaintext_type": plaintext_type,
        "key_id": f"data-key id = value bytes 1-{DATA_KEY_ID_BYTES}, sealed in {key_topic_name}",
        "key_sealing": KEY_SEALING,
        "additional_data": "topic, field name, data-key id, event_ref",
    }


def encrypted_fields(schema: Schema) -> dict[str, Any]:
    """``{field name: plaintext type}`` of the fields a contract marks as encrypted."""
    out: dict[str, Any] = {}
    for field in schema.get("fields", []):
        attribute = field.get(ENCRYPTION_ATTRIBUTE)
        if isinstance(attribute, Mapping):
            out[field["name"]] = attribute.get("plaintext_type")
    return out


def plaintext_schema(schema: Schema) -> Schema:
    """The contract as the agency reads it once decrypted: encrypted fields get their plaintext type."""
    fields = []
    for field in schema.get("fields", []):
        attribute = field.get(ENCRYPTION_ATTRIBUTE)
        if isinstance(attribute, Mapping):
            plain = attribute.get("plaintext_type")
            nullable = isinstance(field["type"], list) and "null" in field["type"]
            field = {k: v for k, v in field.items() if k != ENCRYPTION_ATTRIBUTE}
            field["type"] = ["null", plain] if nullable else plain
        fields.append(field)
    return {**schema, "fields": fields}


class ViewSealer:
    """Encrypts the marked fields of one agency's views (the processor side)."""

    def __init__(self, agency: str, topic: str, fields: Mapping[str, Any], encryptor: FieldEncryptor) -> None:
        """Seal ``fields`` (name → plaintext type) of views bound for ``topic`` (prefixed) of ``agency``."""
        self.agency = agency
        self.topic = topic
        self.key_topic = key_topic(topic)
        self.encryptor = encryptor
        self._fields: tuple[tuple[str, Encode], ...] = tuple((n, codec_for(t)[0]) for n, t in fields.items())
        if len(self._fields) > MAX_FIELDS_PER_VIEW:
            raise ValueError(f"at most {MAX_FIELDS_PER_VIEW} encrypted fields per view")
        self._prefixes: tuple[bytes, tuple[bytes, ...]] = (b"", ())

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of the fields this sealer encrypts."""
        return tuple(name for name, _ in self._fields)

    def _aad_prefixes(self, key: DataKey) -> tuple[bytes, ...]:
        cached_id, prefixes = self._prefixes
        if cached_id != key.key_id:
            prefixes = tuple(field_aad_prefix(self.topic, name, key.key_id) for name, _ in self._fields)
            self._prefixes = (key.key_id, prefixes)
        return prefixes

    def seal(self, record: Mapping[str, Any], event_ref: str, now_ms: int) -> tuple[dict[str, Any], DataKey | None]:
        """A copy of ``record`` with the marked fields encrypted, and the data key used (None: all null)."""
        if all(record.get(name) is None for name, _ in self._fields):
            return dict(record), None
        key = self.encryptor.data_key(self.agency, now_ms)
        ref = frame_parts(event_ref.encode())
        out = dict(record)
        encrypt = self.encryptor.encrypt
        for (name, encode), prefix in zip(self._fields, self._aad_prefixes(key), strict=True):
            value = out.get(name)
            if value is not None:
                out[name] = encrypt(key, prefix + ref, encode(value))
        return out, key


class RecordOpener:
    """Decrypts the marked fields of decoded records (the agency side)."""

    def __init__(self, store: DataKeyStore) -> None:
        """Open values with the data keys of ``store``."""
        self.store = store
        self._plans: dict[int, tuple[tuple[str, Decode], ...]] = {}

    def _plan(self, schema_id: int, schema: Schema) -> tuple[tuple[str, Decode], ...]:
        plan = self._plans.get(schema_id)
        if plan is None:
            plan = self._plans[schema_id] = tuple((n, codec_for(t)[1]) for n, t in encrypted_fields(schema).items())
        return plan

    def data_keys(self, record: Mapping[str, Any], schema_id: int, schema: Schema) -> list[bytes]:
        """The data-key ids the record's encrypted values name, in field order."""
        ids = []
        for name, _ in self._plan(schema_id, schema):
            value = record.get(name)
            if isinstance(value, bytes) and len(value) >= HEADER_BYTES:
                ids.append(value[1 : 1 + DATA_KEY_ID_BYTES])
        return ids

    def missing_keys(self, record: Mapping[str, Any], schema_id: int, schema: Schema) -> set[bytes]:
        """Data-key ids the record's encrypted values name that the store does not hold."""
        return {k for k in self.data_keys(record, schema_id, schema) if k not in self.store}

    def open(self, record: Mapping[str, Any], schema_id: int, schema: Schema, topic: str, where: str) -> dict[str, Any]:
        """A copy of ``record`` with its encrypted fields decrypted and decoded.

        Raises :class:`DecryptionError` whose message names ``where`` (topic, partition, offset)
        and the field, and never a value.
        """
        out = dict(record)
        plan = self._plan(schema_id, schema)
        ref = out.get("event_ref")
        if plan and not isinstance(ref, str):
            raise DecryptionError("malformed", f"{where}: record has no event_ref to check its encrypted fields")
        for name, decode in plan:
            value = out.get(name)
            if value is None:
                continue
            try:
                if not isinstance(value, bytes):
                    raise DecryptionError("malformed", "encrypted field is not bytes")
                out[name] = decode(decrypt_value(self.store, topic, name, str(ref), value))
            except DecryptionError as exc:
                raise DecryptionError(exc.code, f"{where}: field {name!r} does not decrypt: {exc}") from None
        return out
