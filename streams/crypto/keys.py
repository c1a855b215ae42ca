"""Agency key pairs (X25519) and their files: made by the agency, public half imported by the processor.

A key pair belongs to one agency (``cnam``, ``ars.11``...) and one validity period
``[valid_from, valid_until)``; its id is a short hash of the public key, so an id names exactly
one public key and a file cannot claim another key's id. Files are JSON:

* ``<agency>.<key id>.private.json`` (agency side only): mode 0600, created exclusively, never
  overwritten; loading refuses a file that the group or others may read or write;
* ``<agency>.<key id>.public.json``: what the agency hands to the processor (``agency import-key``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from streams.crypto.errors import KeyFileError

PUBLIC_FORMAT = "screening-streams.agency-public-key.v1"
PRIVATE_FORMAT = "screening-streams.agency-private-key.v1"
ALGORITHM = "X25519"
KEY_ID_HEX = 16  # 64 bits of SHA-256: ids name keys, they are not a security boundary
RAW_KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 64 * 1024
#: ``cnam``, ``spf``, ``ars.11``: a recipient, optionally with its region.
AGENCY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[0-9A-Za-z]{1,3})?$")
_ID_LABEL = b"screening-streams/agency-key/v1\x00"


def key_id_of(public_raw: bytes) -> str:
    """The id of a raw X25519 public key: 16 hex characters of a labelled SHA-256."""
    return hashlib.sha256(_ID_LABEL + public_raw).hexdigest()[:KEY_ID_HEX]


def parse_instant(text: str, what: str = "instant") -> int:
    """Epoch milliseconds of ``YYYY-MM-DD`` (00:00 UTC) or an ISO date-time with a time zone."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            day = dt.date.fromisoformat(raw)
            return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
        instant = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise KeyFileError(f"{what} {text!r} is neither YYYY-MM-DD nor an ISO date-time") from exc
    if instant.tzinfo is None:
        raise KeyFileError(f"{what} {text!r} has no time zone (write Z or +01:00)")
    return int(instant.timestamp() * 1000)


def format_instant(ms: int) -> str:
    """``2026-01-01T00:00:00Z`` (seconds precision, UTC)."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class AgencyPublicKey:
    """One agency public key with its id and validity period ``[valid_from_ms, valid_until_ms)``."""

    agency: str
    key_id: str
    public_raw: bytes
    valid_from_ms: int
    valid_until_ms: int
    source: str = field(default="<memory>", compare=False)
    key: X25519PublicKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Check the fields and build the X25519 key once."""
        where = self.source
        if not isinstance(self.agency, str) or not AGENCY_PATTERN.match(self.agency):
            raise KeyFileError(f"{where}: agency {self.agency!r} is not an agency name such as cnam or ars.11")
        if len(self.public_raw) != RAW_KEY_BYTES:
            raise KeyFileError(f"{where}: an X25519 public key has {RAW_KEY_BYTES} bytes, got {len(self.public_raw)}")
        if key_id_of(self.public_raw) != self.key_id:
            raise KeyFileError(f"{where}: key id {self.key_id!r} is not the id of this public key")
        if self.valid_from_ms >= self.valid_until_ms:
            raise KeyFileError(f"{where}: valid_from must be before valid_until")
        object.__setattr__(self, "key", X25519PublicKey.from_public_bytes(self.public_raw))

    def valid_at(self, ms: int) -> bool:
        """True when ``ms`` lies in ``[valid_from, valid_until)``."""
        return self.valid_from_ms <= ms < self.valid_until_ms

    def period(self) -> str:
        """``2026-01-01T00:00:00Z..2027-01-01T00:00:00Z``."""
        return f"{format_instant(self.valid_from_ms)}..{format_instant(self.valid_until_ms)}"

    def document(self) -> dict[str, Any]:
        """The public key file's content."""
        return {
            "format": PUBLIC_FORMAT,
            "agency": self.agency,
            "key_id": self.key_id,
            "algorithm": ALGORITHM,
            "public_key": self.public_raw.hex(),
            "valid_from": format_instant(self.valid_from_ms),
            "valid_until": format_instant(self.valid_until_ms),
        }

    def file_name(self) -> str:
        """``<agency>.<key id>.public.json``."""
        return f"{self.agency}.{self.key_id}.public.json"


@dataclass(frozen=True)
class AgencyPrivateKey:
    """An agency's private key with its public half (never leaves the agency)."""

    public: AgencyPublicKey
    private: X25519PrivateKey = field(repr=False, compare=False)

    @property
    def key_id(self) -> str:
        """The id of the public half."""
        return self.public.key_id

    def document(self) -> dict[str, Any]:
        """The private key file's content."""
        raw = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {**self.public.document(), "format": PRIVATE_FORMAT, "private_key": raw.hex()}

    def file_name(self) -> str:
        """``<agency>.<key id>.private.json``."""
        return f"{self.public.agency}.{self.key_id}.private.json"


def generate_key_pair(agency: str, valid_from_ms: int, valid_until_ms: int) -> AgencyPrivateKey:
    """Make a fresh X25519 key pair for ``agency`` valid in ``[valid_from_ms, valid_until_ms)``."""
    private = X25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    public = AgencyPublicKey(agency, key_id_of(raw), raw, valid_from_ms, valid_until_ms, source=f"new key of {agency}")
    return AgencyPrivateKey(public, private)


def _write_exclusive(path: Path, document: dict[str, Any], mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists: key files are never overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror}") from exc
    os.fchmod(fd, mode)  # whatever the umask
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")


def write_public_key_file(path: Path, key: AgencyPublicKey) -> None:
    """Write a public key file (mode 0644), refusing to overwrite any file."""
    _write_exclusive(path, key.document(), 0o644)


def write_key_pair(directory: Path, pair: AgencyPrivateKey) -> tuple[Path, Path]:
    """Write the private (0600) and public (0644) files of ``pair`` into ``directory``; never overwrite."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = directory / pair.file_name()
    public_path = directory / pair.public.file_name()
    if public_path.exists():
        raise KeyFileError(f"{public_path} already exists: key files are never overwritten")
    _write_exclusive(private_path, pair.document(), 0o600)
    write_public_key_file(public_path, pair.public)
    return private_path, public_path


def _read_document(path: Path, *, private: bool) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise KeyFileError(f"{path}: private key file has mode {mode:04o}; only its owner may read it (chmod 600)")
        if not private and mode & 0o022:
            raise KeyFileError(
                f"{path}: public key file has mode {mode:04o}; group or others could replace the key (chmod 644)"
            )
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a JSON key file") from exc
    if not isinstance(document, dict):
        raise KeyFileError(f"{path}: not a JSON key file")
    return document


def _hex_field(document: dict[str, Any], name: str, source: str) -> bytes:
    value = document.get(name)
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raise KeyFileError(f"{source}: {name} is not hex") from None


def public_key_from_document(document: dict[str, Any], source: str) -> AgencyPublicKey:
    """Validate a public key document (a private key's document also carries one)."""
    if document.get("algorithm") != ALGORITHM:
        raise KeyFileError(f"{source}: algorithm must be {ALGORITHM}")
    for name in ("agency", "key_id", "valid_from", "valid_until"):
        if not isinstance(document.get(name), str):
            raise KeyFileError(f"{source}: missing {name}")
    return AgencyPublicKey(
        document["agency"],
        document["key_id"],
        _hex_field(document, "public_key", source),
        parse_instant(document["valid_from"], f"{source}: valid_from"),
        parse_instant(document["valid_until"], f"{source}: valid_until"),
        source=source,
    )


def load_public_key_file(path: Path) -> AgencyPublicKey:
    """Load a public key file; a private key file is refused (the processor holds public keys only)."""
    document = _read_document(path, private=False)
    if document.get("format") == PRIVATE_FORMAT or "private_key" in document:
        raise KeyFileError(f"{path} holds a PRIVATE key: it must stay with the agency; import its .public.json instead")
    if document.get("format") != PUBLIC_FORMAT:
        raise KeyFileError(f"{path}: format must be {PUBLIC_FORMAT}")
    return public_key_from_document(document, str(path))


def load_private_key_file(path: Path) -> AgencyPrivateKey:
    """Load a private key file (mode 0600 or stricter); its public half must match its id."""
    document = _read_document(path, private=True)
    if document.get("format") != PRIVATE_FORMAT:
        raise KeyFileError(f"{path}: format must be {PRIVATE_FORMAT} (is this a public key file?)")
    public = public_key_from_document(document, str(path))
    raw = _hex_field(document, "private_key", str(path))
    if len(raw) != RAW_KEY_BYTES:
        raise KeyFileError(f"{path}: an X25519 private key has {RAW_KEY_BYTES} bytes")
    private = X25519PrivateKey.from_private_bytes(raw)
    if private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != public.public_raw:
        raise KeyFileError(f"{path}: the private key does not match the public key {public.key_id} it names")
    return AgencyPrivateKey(public, private)
