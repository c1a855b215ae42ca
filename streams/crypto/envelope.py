"""Envelope encryption: data keys sealed to an agency's public key, fields under the data key.

* A **data key** (32 random bytes, id = 16 random bytes) serves one agency during one *slot*: the
  intersection of a key epoch (a UTC day by default) and the effective period of the agency's
  current public key (:mod:`streams.crypto.ring`). It is sealed **once** to that public key with
  HPKE (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM), the ``info``
  binding the agency, the data-key id, the public key id and the slot; the sealed key is a small
  JSON record of the agency's compacted key topic (:func:`key_record`).
* Each **field value** is ``version (1) ‖ data-key id (16) ‖ nonce (12) ‖ AES-256-GCM ciphertext
  and tag (16)``, the additional data binding the topic, the field name, the data-key id and the
  record's ``event_ref``: a value copied to another record, field or topic fails to decrypt.
  Nonces count up per data key (a data key never leaves the process that made it, so they never
  repeat); after 2²³ views (at most 2³¹ values) a fresh data key is made.
* Only the agency's private key unseals a data key: the processor, the broker's disks and their
  operators hold ciphertext and public keys. Destroying the private key of a period makes its data
  keys, hence its records, unreadable in every copy (crypto-shredding).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.crypto.errors import DecryptionError
from streams.crypto.keys import format_instant
from streams.crypto.ring import KeyDirectory, PrivateKeyRing, PublicKeyRing

VERSION = 1
DATA_KEY_BYTES = 32
DATA_KEY_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + DATA_KEY_ID_BYTES + NONCE_BYTES
#: Smallest encrypted value: an empty plaintext still has its header and tag.
MIN_VALUE_BYTES = HEADER_BYTES + TAG_BYTES
ALGORITHM = "AES-256-GCM"
KEY_SEALING = "HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"
KEY_RECORD_FORMAT = "screening-streams.data-key.v1"
DAY_MS = 86_400_000
MAX_VALUES_PER_KEY = 1 << 32  # counter nonces of 96 bits; far below, the bounds below retire a key
MAX_FIELDS_PER_VIEW = 256
MAX_VIEWS_PER_KEY = 1 << 23  # × MAX_FIELDS_PER_VIEW < MAX_VALUES_PER_KEY: a fresh key before any wrap
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_VERSION_BYTE = bytes([VERSION])


def frame_parts(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two part lists give the same bytes."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def seal_info(agency: str, data_key_id: bytes, public_key_id: str, not_before_ms: int, not_after_ms: int) -> bytes:
    """HPKE ``info`` of a sealed data key: agency, data-key id, public key id and slot."""
    return frame_parts(
        b"screening-streams/data-key/v1",
        agency.encode(),
        data_key_id,
        public_key_id.encode(),
        str(not_before_ms).encode(),
        str(not_after_ms).encode(),
    )


def field_aad_prefix(topic: str, field_name: str, data_key_id: bytes) -> bytes:
    """The constant part of a field's additional data (the ``event_ref`` follows, framed)."""
    return frame_parts(b"screening-streams/field/v1", topic.encode(), field_name.encode(), data_key_id)


def field_aad(topic: str, field_name: str, data_key_id: bytes, event_ref: str) -> bytes:
    """The additional data of one field value: topic, field name, data-key id, event_ref."""
    return field_aad_prefix(topic, field_name, data_key_id) + frame_parts(event_ref.encode())


@dataclass(frozen=True)
class KeyRecord:
    """One record of an agency's key topic: a data key sealed to one of its public keys."""

    agency: str
    data_key_id: bytes
    public_key_id: str
    not_before_ms: int
    not_after_ms: int
    sealed: bytes  # HPKE enc ‖ ciphertext of the 32-byte data key

    def value(self) -> bytes:
        """The record value (JSON; nothing in it is secret)."""
        document = {
            "format": KEY_RECORD_FORMAT,
            "agency": self.agency,
            "data_key_id": self.data_key_id.hex(),
            "public_key_id": self.public_key_id,
            "not_before_ms": self.not_before_ms,
            "not_after_ms": self.not_after_ms,
            "not_before": format_instant(self.not_before_ms),
            "not_after": format_instant(self.not_after_ms),
            "sealing": KEY_SEALING,
            "sealed": base64.b64encode(self.sealed).decode("ascii"),
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @property
    def key(self) -> bytes:
        """The record key: the data-key id in hex (compaction keeps one record per data key)."""
        return self.data_key_id.hex().encode()


def parse_key_record(value: bytes | None) -> KeyRecord:
    """Parse a key topic record value; :class:`DecryptionError` ``bad_key_record`` if malformed."""
    try:
        doc: Any = json.loads(value or b"")
        if not isinstance(doc, dict) or doc.get("format") != KEY_RECORD_FORMAT:
            raise ValueError("format")
        record = KeyRecord(
            str(doc["agency"]),
            bytes.fromhex(str(doc["data_key_id"])),
            str(doc["public_key_id"]),
            int(doc["not_before_ms"]),
            int(doc["not_after_ms"]),
            base64.b64decode(str(doc["sealed"]), validate=True),
        )
    except (ValueError, KeyError, TypeError):
        raise DecryptionError("bad_key_record", "a key topic record is not a data-key record") from None
    if len(record.data_key_id) != DATA_KEY_ID_BYTES:
        raise DecryptionError("bad_key_record", "a key topic record has a data-key id of the wrong size")
    return record


@dataclass
class DataKey:
    """A data key in use by the processor (never written anywhere in clear)."""

    key_id: bytes
    agency: str
    public_key_id: str
    not_before_ms: int
    not_after_ms: int
    record: KeyRecord
    aead: AESGCM = field(repr=False)
    views: int = 0  # views sealed (bounded by MAX_VIEWS_PER_KEY)
    _nonces: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def covers(self, now_ms: int) -> bool:
        """True when ``now_ms`` lies in this key's slot and the key may seal another view."""
        return self.not_before_ms <= now_ms < self.not_after_ms and self.views < MAX_VIEWS_PER_KEY

    def next_nonce(self) -> bytes:
        """The next nonce (a counter); ``OverflowError`` after 2³² values."""
        n = next(self._nonces)
        if n >= MAX_VALUES_PER_KEY:
            raise OverflowError("data key exhausted")
        return n.to_bytes(NONCE_BYTES, "big")


class FieldEncryptor:
    """The processor's side: data keys per agency and slot, and field encryption under them."""

    def __init__(
        self,
        ring: PublicKeyRing | KeyDirectory,
        epoch_ms: int = DAY_MS,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """Encrypt to the keys of ``ring``; a data key lives at most one epoch of ``epoch_ms``.

        With a :class:`~streams.crypto.ring.KeyDirectory`, keys imported while running are taken
        into account (data keys are re-made when the directory changed).
        """
        if epoch_ms < 1000:
            raise ValueError("the key epoch must be at least one second")
        self._directory = ring if isinstance(ring, KeyDirectory) else None
        self.ring = ring.ring if isinstance(ring, KeyDirectory) else ring
        self.epoch_ms = epoch_ms
        self._random = random_bytes
        self._current: dict[str, DataKey] = {}
        self._lock = threading.Lock()
        self.data_keys_made = 0

    def data_key(self, agency: str, now_ms: int) -> DataKey:
        """The agency's data key to seal one view (at most MAX_FIELDS_PER_VIEW values) at ``now_ms``.

        Made and sealed on first use of its slot; raises
        :class:`~streams.crypto.errors.KeyUnavailable` when no public key is in force.
        """
        if self._directory is not None and self._directory.refresh():
            with self._lock:
                self.ring = self._directory.ring
                self._current.clear()  # the periods may have changed: make data keys afresh
        key = self._current.get(agency)
        if key is None or not key.covers(now_ms):
            with self._lock:
                key = self._current.get(agency)
                if key is None or not key.covers(now_ms):
                    key = self._current[agency] = self._new_key(agency, now_ms)  # the old one is forgotten
        key.views += 1
        return key

    def current_key(self, agency: str) -> DataKey | None:
        """The agency's data key made last (None before the first), without making one."""
        return self._current.get(agency)

    def _new_key(self, agency: str, now_ms: int) -> DataKey:
        public = self.ring.require(agency, now_ms)
        start, end = self.ring.effective_period(public)
        epoch_start = now_ms - now_ms % self.epoch_ms
        not_before, not_after = max(start, epoch_start), min(end, epoch_start + self.epoch_ms)
        secret = self._random(DATA_KEY_BYTES)
        key_id = self._random(DATA_KEY_ID_BYTES)
        info = seal_info(agency, key_id, public.key_id, not_before, not_after)
        sealed = SUITE.encrypt(secret, public.key, info=info)
        record = KeyRecord(agency, key_id, public.key_id, not_before, not_after, sealed)
        self.data_keys_made += 1
        return DataKey(key_id, agency, public.key_id, not_before, not_after, record, AESGCM(secret))

    def encrypt(self, key: DataKey, aad: bytes, plaintext: bytes) -> bytes:
        """One field value under ``key`` (``aad`` from :func:`field_aad`)."""
        nonce = key.next_nonce()
        return _VERSION_BYTE + key.key_id + nonce + key.aead.encrypt(nonce, plaintext, aad)


class DataKeyStore:
    """The agency's side: sealed data keys read from its key topic, unsealed on first use."""

    def __init__(self, agency: str, private_keys: PrivateKeyRing) -> None:
        """Hold key records of ``agency``; unseal them with ``private_keys``."""
        self.agency = agency
        self.private_keys = private_keys
        self._records: dict[bytes, list[KeyRecord]] = {}
        self._open: dict[bytes, AESGCM] = {}
        self.foreign = 0  # records of another agency (ignored)

    def add(self, value: bytes | None) -> None:
        """Add one key topic record value."""
        record = parse_key_record(value)
        if record.agency != self.agency:
            self.foreign += 1
            return
        known = self._records.setdefault(record.data_key_id, [])
        if record not in known:
            known.append(record)

    def record_of(self, data_key_id: bytes) -> KeyRecord | None:
        """The (first) key record of a data key, if added."""
        records = self._records.get(data_key_id)
        return records[0] if records else None

    def __contains__(self, data_key_id: object) -> bool:
        """True when a record for this data-key id was added."""
        return data_key_id in self._records

    def aead_for(self, data_key_id: bytes) -> AESGCM:
        """The unsealed data key, or :class:`DecryptionError` saying why it cannot be had."""
        opened = self._open.get(data_key_id)
        if opened is not None:
            return opened
        records = self._records.get(data_key_id)
        if not records:
            raise DecryptionError("unknown_data_key", f"data key {data_key_id.hex()} is not in the agency's key topic")
        error: DecryptionError | None = None
        for record in records:
            private = self.private_keys.get(record.public_key_id)
            if private is None:
                supplied = ", ".join(self.private_keys.key_ids) or "none"
                error = error or DecryptionError(
                    "no_private_key",
                    f"data key {data_key_id.hex()} is sealed to public key {record.public_key_id} "
                    f"(slot {format_instant(record.not_before_ms)}..{format_instant(record.not_after_ms)}), "
                    f"whose private key is not among those supplied ({supplied}): "
                    "wrong key, or that period's key was destroyed",
                )
                continue
            info = seal_info(self.agency, data_key_id, record.public_key_id, record.not_before_ms, record.not_after_ms)
            try:
                secret = SUITE.decrypt(record.sealed, private.private, info=info)
            except (InvalidTag, ValueError):
                error = DecryptionError(
                    "unseal_failed",
                    f"data key {data_key_id.hex()} does not unseal with private key {record.public_key_id}: "
                    "its key record was altered",
                )
                continue
            if len(secret) != DATA_KEY_BYTES:
                error = DecryptionError("unseal_failed", f"data key {data_key_id.hex()} has the wrong size")
                continue
            aead = self._open[data_key_id] = AESGCM(secret)
            return aead
        assert error is not None
        raise error


def split_value(value: bytes) -> tuple[bytes, bytes, bytes]:
    """(data-key id, nonce, ciphertext) of an encrypted value; ``malformed`` if it cannot be one."""
    if not isinstance(value, bytes | bytearray) or len(value) < MIN_VALUE_BYTES:
        raise DecryptionError("malformed", "encrypted value is shorter than its header and tag")
    if value[0] != VERSION:
        raise DecryptionError("malformed", f"unknown envelope version {value[0]}")
    return (
        bytes(value[1 : 1 + DATA_KEY_ID_BYTES]),
        bytes(value[1 + DATA_KEY_ID_BYTES : HEADER_BYTES]),
        bytes(value[HEADER_BYTES:]),
    )


def decrypt_value(store: DataKeyStore, topic: str, field_name: str, event_ref: str, value: bytes) -> bytes:
    """Decrypt one field value; :class:`DecryptionError` (never garbage) when it does not open."""
    data_key_id, nonce, ciphertext = split_value(value)
    aead = store.aead_for(data_key_id)
    try:
        return aead.decrypt(nonce, ciphertext, field_aad(topic, field_name, data_key_id, event_ref))
    except InvalidTag:
        raise DecryptionError(
            "tampered",
            "authentication failed: the value was altered, or moved from another record, field or topic",
        ) from None
