"""The audit-only secret and what is derived from it: person and event references, the chain MAC, sealing.

One 32-byte secret, held by the processor and the operators who answer audit queries, never by
an agency. Four independent sub-keys are derived from it (HMAC-SHA-256 with a label), so the
audit pseudonym of a person shares nothing with any agency's pseudonym (agency keys differ) and
the chain key cannot be used to forge references.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.domain.nir import normalise_nir
from streams.errors import ConfigError, ScreeningStreamsError
from streams.policy.pseudonyms import make_pseudonymiser

SECRET_BYTES = 32
NONCE_BYTES = 12
#: Key name inside an audit key file (``{"audit": "<64 hex>"}``).
FILE_KEY = "audit"


class AuditSealError(ScreeningStreamsError):
    """A sealed audit value does not open with this secret (wrong secret, altered, or moved)."""


def _subkey(secret: bytes, label: str) -> bytes:
    return hmac.new(secret, b"screening-streams/audit/" + label.encode(), hashlib.sha256).digest()


class AuditKeys:
    """Everything keyed with the audit secret; cheap to call on the hot path."""

    def __init__(self, secret: bytes, nonce: Callable[[int], bytes] = os.urandom) -> None:
        """Derive the sub-keys of ``secret`` (32 bytes); ``nonce`` is injectable for tests."""
        if len(secret) != SECRET_BYTES:
            raise ConfigError(f"the audit secret must be {SECRET_BYTES} bytes, got {len(secret)}")
        self._person = make_pseudonymiser(_subkey(secret, "person"), "nir")
        self._event = make_pseudonymiser(_subkey(secret, "event"), "event_id", cache_size=0)
        self._coordinates = make_pseudonymiser(_subkey(secret, "coordinates"), "ingress", cache_size=0)
        self._chain = hmac.new(_subkey(secret, "chain"), digestmod=hashlib.sha256)
        self._aead = AESGCM(_subkey(secret, "seal"))
        self._nonce = nonce
        self._fingerprint = _subkey(secret, "fingerprint")[:8].hex()

    def person(self, nir: str) -> str:
        """The audit pseudonym of a person (NIR normalised as the pseudonymise operator does)."""
        return self._person(normalise_nir(nir))

    def event_ref(self, event_id: str) -> str:
        """The audit reference of an event id."""
        return self._event(event_id)

    def coordinates_ref(self, topic: str, partition: int, offset: int) -> str:
        """The audit reference of an ingress record that could not be decoded (no event id)."""
        return self._coordinates(f"{topic}:{partition}:{offset}")

    def chain_mac(self, prev_mac: bytes, body: bytes) -> bytes:
        """HMAC-SHA-256 chaining ``body`` to the previous record's MAC."""
        mac = self._chain.copy()
        mac.update(prev_mac)
        mac.update(body)
        return mac.digest()

    def fingerprint(self) -> str:
        """A short public identifier of this secret (an index remembers which secret built it)."""
        return self._fingerprint

    def seal(self, text: str, aad: bytes) -> bytes:
        """AES-256-GCM of ``text`` bound to ``aad``: ``nonce ‖ ciphertext ‖ tag``."""
        nonce = self._nonce(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, text.encode(), aad)

    def unseal(self, blob: bytes, aad: bytes) -> str:
        """Open a value made by :meth:`seal` with the same ``aad``; :class:`AuditSealError` otherwise."""
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad).decode()
        except (InvalidTag, ValueError) as exc:
            raise AuditSealError("sealed audit value does not open with this secret (altered or moved)") from exc


def generate_secret() -> bytes:
    """A fresh random audit secret."""
    return secrets.token_bytes(SECRET_BYTES)


def write_secret(path: Path, secret: bytes, *, force: bool = False) -> None:
    """Write the secret as ``{"audit": hex}``, mode 0600, refusing to overwrite unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path}: audit key file exists; refusing to overwrite it (use --force)") from exc
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({FILE_KEY: secret.hex()}, handle)


def load_secret(path: Path) -> bytes:
    """Read an audit key file, refusing one that group or others can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the audit key file: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: audit key file is readable by group or others (mode {mode & 0o777:o}); chmod 600")
    try:
        secret = bytes.fromhex(json.loads(text)[FILE_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f'{path}: expected {{"{FILE_KEY}": "<{2 * SECRET_BYTES} hex digits>"}}') from exc
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"{path}: the audit secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return secret
