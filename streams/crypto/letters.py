"""Dead letters at rest: the raw input of a rejected record, sealed to the operators' public key.

A dead letter holds raw input (NIRs, names, phones...), so the broker must not hold it in clear.
The operators are one more key holder of the key directory (agency name ``operators``, made with
``agency keygen --recipient operators``) and the same envelope machinery as the agencies' fields
serves them (:mod:`streams.crypto.envelope`):

* per key epoch the worker makes one data key for ``operators``, sealed **once** with HPKE to the
  operators' current public key; its key record goes to the DLQ key topic
  (:func:`dlq_key_topic`, compacted) in the same transaction as the dead letters it opens;
* each dead letter's value is ``version (1) ‖ data-key id (16) ‖ nonce (12) ‖ AES-256-GCM
  ciphertext ‖ tag (16)`` of its raw key, raw value and original (non ``dlq.*``) headers
  (:func:`encode_raw`); the additional data binds the DLQ topic, the data-key id and every
  ``dlq.*`` header of the letter (reason, stage, source topic/partition/offset, time, version,
  sizes, sealing key): a sealed value moved to another record, or a header altered, fails to open;
* the ``dlq.*`` headers stay readable, so a letter is listed and counted without any key.

One AES-GCM call per letter (a few µs), not one HPKE seal: a poison flood of 100 000 letters
costs one HPKE operation per epoch. Only the operators' private key opens a letter
(:class:`LetterOpener`): ``dlq show --private-key`` and ``dlq replay --private-key``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from streams.crypto.envelope import DataKey, DataKeyStore, FieldEncryptor, frame_parts, split_value
from streams.crypto.errors import DecryptionError, KeyUnavailable
from streams.crypto.keys import format_instant
from streams.crypto.ring import KeyDirectory, PrivateKeyRing, PublicKeyRing

#: The key holder dead letters are sealed to (a name of the key directory like an agency's).
OPERATORS = "operators"
#: The DLQ header naming the operators' public key a letter is sealed to (its presence marks a sealed letter).
H_SEALED = "dlq.sealed.key_id"
_AAD_LABEL = b"screening-streams/dead-letter/v1"
_PLAINTEXT_LABEL = b"screening-streams.dead-letter.v1\x00"

Header = tuple[str, bytes | None]


def dlq_key_topic(dlq_topic: str) -> str:
    """The DLQ's key topic: ``screening.results.dlq.v1`` → ``screening.results.dlq.keys.v1``."""
    head, sep, version = dlq_topic.rpartition(".v")
    if not sep or not head or not version.isdigit():
        raise ValueError(f"topic {dlq_topic!r} does not end in .v<N>")
    return f"{head}.keys.v{version}"


@dataclass(frozen=True)
class RawLetter:
    """What a dead letter seals: the ingress record's raw key, raw value and original headers."""

    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()


def _optional(data: bytes | None) -> bytes:
    return b"\x00" if data is None else b"\x01" + len(data).to_bytes(4, "big") + data


def encode_raw(raw: RawLetter) -> bytes:
    """The plaintext of a sealed letter: label, key, value, header count, then each header (name, value).

    Byte strings are length-prefixed and a null is told apart from an empty value, so
    :func:`decode_raw` gives back exactly what was sealed.
    """
    parts = [_PLAINTEXT_LABEL, _optional(raw.key), _optional(raw.value), len(raw.headers).to_bytes(4, "big")]
    for name, value in raw.headers:
        encoded = name.encode("utf-8")
        parts += [len(encoded).to_bytes(4, "big"), encoded, _optional(value)]
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise DecryptionError("bad_plaintext", "sealed dead letter ends early")
        out, self.pos = self.data[self.pos : end], end
        return out

    def length(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def optional(self) -> bytes | None:
        flag = self.take(1)
        if flag == b"\x00":
            return None
        if flag != b"\x01":
            raise DecryptionError("bad_plaintext", "sealed dead letter has a bad presence flag")
        return self.take(self.length())


def decode_raw(data: bytes) -> RawLetter:
    """The inverse of :func:`encode_raw`; :class:`DecryptionError` ``bad_plaintext`` on anything else."""
    reader = _Reader(data)
    if reader.take(len(_PLAINTEXT_LABEL)) != _PLAINTEXT_LABEL:
        raise DecryptionError("bad_plaintext", "not a sealed dead letter")
    key, value = reader.optional(), reader.optional()
    headers = []
    for _ in range(reader.length()):
        try:
            name = reader.take(reader.length()).decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("bad_plaintext", "a sealed header name is not UTF-8") from None
        headers.append((name, reader.optional()))
    if reader.pos != len(data):
        raise DecryptionError("bad_plaintext", "trailing bytes after the sealed dead letter")
    return RawLetter(key, value, tuple(headers))


def letter_aad(dlq_topic: str, data_key_id: bytes, dlq_headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    """Additional data of a sealed letter: the DLQ topic, the data-key id, every ``dlq.*`` header in order."""
    parts = [_AAD_LABEL, dlq_topic.encode(), data_key_id]
    for name, value in dlq_headers:
        parts += [name.encode(), value or b""]
    return frame_parts(*parts)


def dlq_headers_of(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """The ``dlq.*`` headers of a record, in order (what the additional data binds)."""
    return [(k, v) for k, v in headers if k.startswith("dlq.")]


class LetterSealer:
    """The processor's side: seals dead letters of ``dlq_topic`` to the operators' current public key."""

    def __init__(self, encryptor: FieldEncryptor, dlq_topic: str) -> None:
        """Use ``encryptor``'s data keys for :data:`OPERATORS` (the agencies' encryptor: one key directory)."""
        self.encryptor = encryptor
        self.dlq_topic = dlq_topic
        self.key_topic = dlq_key_topic(dlq_topic)

    def data_key(self, now_ms: int) -> DataKey:
        """The operators' data key in force at ``now_ms``; :class:`KeyUnavailable` when no public key is."""
        try:
            return self.encryptor.data_key(OPERATORS, now_ms)
        except KeyUnavailable as exc:
            raise KeyUnavailable(f"dead letters cannot be sealed: {exc}") from None

    def seal(self, key: DataKey, raw: RawLetter, dlq_headers: Sequence[tuple[str, bytes | None]]) -> bytes:
        """The sealed value of ``raw`` under ``key``, bound to ``dlq_headers`` (naming ``key``'s public key)."""
        return self.encryptor.encrypt(key, letter_aad(self.dlq_topic, key.key_id, dlq_headers), encode_raw(raw))


def check_operators_key(ring: PublicKeyRing | KeyDirectory, at_ms: int) -> None:
    """Fail (:class:`KeyUnavailable`) unless the operators have a public key in force: no dead letter in clear."""
    keys = ring.ring if isinstance(ring, KeyDirectory) else ring
    if keys.current(OPERATORS, at_ms) is None:
        raise KeyUnavailable(
            f"{keys.source}: no operators' public key in force at {format_instant(at_ms)}: dead letters hold raw "
            "input and are sealed to it, never written in clear. The operators run `screening-streams agency "
            "keygen --recipient operators ...` and the processor `agency import-key` its public key"
        )


def where(topic: str, partition: int, offset: int) -> str:
    """How errors name a DLQ record: ``topic[partition]@offset``."""
    return f"{topic}[{partition}]@{offset}"


class LetterOpener:
    """The operators' side: the DLQ key topic's data keys, unsealed with the operators' private keys."""

    def __init__(self, private_keys: PrivateKeyRing) -> None:
        """Open letters with ``private_keys`` (the operators' key files)."""
        self.store = DataKeyStore(OPERATORS, private_keys)

    def add_key_record(self, value: bytes | None) -> None:
        """Add one record value of the DLQ key topic."""
        self.store.add(value)

    def open(
        self, topic: str, partition: int, offset: int, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]
    ) -> RawLetter:
        """The raw key, value and headers of the DLQ record at ``topic[partition]@offset``.

        Raises :class:`DecryptionError` naming the record (never garbage, never a value) when the
        key is wrong or missing, or the value or a ``dlq.*`` header was altered or moved.
        """
        at = where(topic, partition, offset)
        bound = dlq_headers_of(headers)
        if H_SEALED not in {k for k, _ in bound}:
            raise DecryptionError("malformed", f"{at}: not a sealed dead letter (no {H_SEALED} header)")
        try:
            data_key_id, nonce, ciphertext = split_value(value or b"")
            aead = self.store.aead_for(data_key_id)
            try:
                plaintext = aead.decrypt(nonce, ciphertext, letter_aad(topic, data_key_id, bound))
            except InvalidTag:
                raise DecryptionError(
                    "tampered",
                    "authentication failed: the sealed letter or one of its dlq.* headers was altered, "
                    "or it was moved from another record or topic",
                ) from None
            return decode_raw(plaintext)
        except DecryptionError as exc:
            raise DecryptionError(exc.code, f"dead letter {at} does not open: {exc}") from None
