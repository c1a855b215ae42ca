"""Keyed pseudonyms: HMAC-SHA-256 with one secret per agency, memoised in a bounded cache.

Two agencies hold different keys, so their pseudonyms for one person cannot be joined, and
nobody without a key can reverse a pseudonym by hashing every possible NIR.
Keys never sit in the repository: they come from a key file or the environment. A key ring
refuses two agencies sharing a key; a key file must be its owner's alone (no group or other
permission bit) and is never overwritten unless asked (``force``, then atomically, 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from streams.errors import ConfigError

KEY_BYTES = 32
PSEUDONYM_BYTES = 15  # 120 bits -> 20 base64url characters (no padding: 15 = 5 × 3)


class KeyRing(Protocol):
    """Gives the secret of one agency (e.g. ``cnam``, ``ars.11``, ``spf``)."""

    def key_for(self, agency: str) -> bytes:
        """Return the agency's secret key; raise :class:`ConfigError` when it has none."""
        ...


class StaticKeyRing:
    """Keys held in memory: loaded from a file, from the environment, or given by a test."""

    def __init__(self, keys: Mapping[str, bytes], source: str = "<memory>") -> None:
        """Hold ``keys`` (agency -> secret); ``source`` names where they came from in errors."""
        self._keys = dict(keys)
        self.source = source
        owners: dict[bytes, str] = {}
        for agency, key in sorted(self._keys.items()):
            if len(key) < 16:
                raise ConfigError(f"{source}: key for agency {agency!r} is shorter than 16 bytes")
            if key in owners:
                raise ConfigError(
                    f"{source}: agencies {owners[key]!r} and {agency!r} share one key "
                    "(their pseudonyms could be joined): give each agency its own"
                )
            owners[key] = agency

    def key_for(self, agency: str) -> bytes:
        """Return the key of ``agency`` or fail naming the key source and the agency."""
        try:
            return self._keys[agency]
        except KeyError:
            raise ConfigError(f"{self.source}: no pseudonymisation key for agency {agency!r}") from None

    @classmethod
    def from_file(cls, path: Path) -> StaticKeyRing:
        """Load a JSON object ``{agency: hex key}`` (see :func:`write_key_file`) from an owner-only file."""
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"{path}: cannot load pseudonymisation keys: {exc}") from exc
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path}: cannot load pseudonymisation keys: not a regular file")
        if mode & 0o077:
            raise ConfigError(
                f"{path}: key file has mode 0{stat.S_IMODE(mode):o}, open to group or others: "
                f"refused (run `chmod 600 {path}`)"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            keys = {str(k): bytes.fromhex(str(v)) for k, v in raw.items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: cannot load pseudonymisation keys: {exc}") from exc
        return cls(keys, source=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StaticKeyRing:
        """Load keys from ``SCREENING_KEYS_FILE``, or from ``SCREENING_KEY_<AGENCY>`` variables.

        In variable names the agency's dots become underscores: ``SCREENING_KEY_ARS_11``.
        """
        env = os.environ if environ is None else environ
        path = env.get("SCREENING_KEYS_FILE")
        if path:
            return cls.from_file(Path(path))
        keys = {}
        for name, value in env.items():
            if name.startswith("SCREENING_KEY_"):
                agency = name.removeprefix("SCREENING_KEY_").lower().replace("_", ".")
                try:
                    keys[agency] = bytes.fromhex(value)
                except ValueError as exc:
                    raise ConfigError(f"environment {name}: key is not hex") from exc
        if not keys:
            raise ConfigError(
                "no pseudonymisation keys: set SCREENING_KEYS_FILE (JSON {agency: hex}) "
                "or SCREENING_KEY_<AGENCY> variables; `screening-streams keys generate` makes a file"
            )
        return cls(keys, source="environment")


def generate_keys(agencies: Iterable[str], token: Callable[[int], bytes] = secrets.token_bytes) -> dict[str, bytes]:
    """Make one fresh random key per agency (for demos and tests; production keys come from a KMS)."""
    return {agency: token(KEY_BYTES) for agency in agencies}


def write_key_file(path: Path, keys: Mapping[str, bytes], *, force: bool = False) -> None:
    """Write keys as JSON ``{agency: hex}``, mode 0600 from creation; never overwrite unless ``force``.

    Without ``force`` the file is created exclusively (``O_EXCL``: an existing file or symlink,
    even dangling, is refused). With ``force`` a new 0600 file is written beside it and renamed
    over it, so the old file is replaced, never rewritten in place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps({k: v.hex() for k, v in sorted(keys.items())}, indent=1)
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} already exists: not overwritten (--force replaces it)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write the key file: {exc}") from exc
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        return
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot replace the key file: {exc}") from exc


def make_pseudonymiser(key: bytes, domain: str, cache_size: int = 1 << 16) -> Callable[[str], str]:
    """Return ``f(value) -> pseudonym`` for one agency key and one input domain (e.g. ``nir``).

    The domain is mixed into the MAC so that pseudonyms of different fields never collide.
    Results are memoised in a bounded LRU cache (a hit costs ~0.04 µs instead of ~2 µs);
    ``cache_size=0`` disables it for values that never repeat (event ids).
    """
    base = hmac.new(key, domain.encode() + b"\x00", hashlib.sha256)

    def pseudonymise(value: str) -> str:
        mac = base.copy()
        mac.update(value.encode())
        return base64.urlsafe_b64encode(mac.digest()[:PSEUDONYM_BYTES]).decode("ascii")

    return lru_cache(maxsize=cache_size)(pseudonymise) if cache_size else pseudonymise


def make_partition_hasher(key: bytes, cache_size: int = 1 << 16) -> Callable[[str], bytes]:
    """Return ``f(person) -> 16 bytes``: the agency's keyed hash choosing a person's output partition.

    HMAC-SHA-256 of ``b"partition|" + person`` under the agency's key: a derivation distinct
    from every pseudonym (those MAC ``<domain> 0x00 <value>``), so a partition number says
    nothing a pseudonym would not, and two agencies' partitions of one person are unrelated.
    """
    base = hmac.new(key, b"partition|", hashlib.sha256)

    def partition_hash(person: str) -> bytes:
        mac = base.copy()
        mac.update(person.encode())
        return mac.digest()[:16]

    return lru_cache(maxsize=cache_size)(partition_hash) if cache_size else partition_hash
