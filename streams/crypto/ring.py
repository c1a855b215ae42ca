"""Keys over time: the processor's public key ring, and an agency's private keys.

**The rule** (validated when a ring is built, so a directory that breaks it stops the worker at
start): per agency, keys have distinct ``valid_from`` instants, and a key that starts later never
expires earlier (``valid_until`` does not decrease as ``valid_from`` increases). The *current* key
at an instant is then the one with the latest ``valid_from`` among those valid at that instant:
exactly one, or none in a gap. Overlaps are how rotation works without downtime: import the next
key before its ``valid_from``; from that instant new records use it, while the old key's period
ends there (its *effective period* is ``[valid_from, min(valid_until, next valid_from))``). Once a
newer key has taken over, an older key is never current again, so destroying the private key of a
period makes exactly that period's records unreadable.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from streams.crypto.errors import KeyFileError, KeyUnavailable
from streams.crypto.keys import (
    AgencyPrivateKey,
    AgencyPublicKey,
    format_instant,
    generate_key_pair,
    load_private_key_file,
    load_public_key_file,
    write_key_pair,
    write_public_key_file,
)

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".public.json"


class PublicKeyRing:
    """The public keys the processor encrypts to, per agency, validated by the module's rule."""

    def __init__(self, keys: Iterable[AgencyPublicKey], source: str = "<memory>") -> None:
        """Index ``keys`` and enforce the rule; ``source`` names where they came from in errors."""
        self.source = source
        self._by_id: dict[str, AgencyPublicKey] = {}
        by_agency: dict[str, list[AgencyPublicKey]] = {}
        for key in keys:
            other = self._by_id.get(key.key_id)
            if other is not None:
                raise KeyFileError(f"{source}: key {key.key_id} appears twice ({other.source} and {key.source})")
            self._by_id[key.key_id] = key
            by_agency.setdefault(key.agency, []).append(key)
        self._keys: dict[str, tuple[AgencyPublicKey, ...]] = {}
        for agency, listed in by_agency.items():
            ordered = sorted(listed, key=lambda k: k.valid_from_ms)
            for older, newer in itertools.pairwise(ordered):
                if newer.valid_from_ms == older.valid_from_ms:
                    raise KeyFileError(
                        f"{source}: agency {agency!r}: keys {older.key_id} and {newer.key_id} both start at "
                        f"{format_instant(newer.valid_from_ms)}; which one is current would be ambiguous"
                    )
                if newer.valid_until_ms < older.valid_until_ms:
                    raise KeyFileError(
                        f"{source}: agency {agency!r}: key {newer.key_id} ({newer.period()}) starts after and "
                        f"ends before key {older.key_id} ({older.period()}): the older key would become current "
                        "again; give the newer key a later valid_until"
                    )
            self._keys[agency] = tuple(ordered)

    @property
    def agencies(self) -> tuple[str, ...]:
        """Agencies with at least one key."""
        return tuple(sorted(self._keys))

    def keys_of(self, agency: str) -> tuple[AgencyPublicKey, ...]:
        """An agency's keys, oldest ``valid_from`` first."""
        return self._keys.get(agency, ())

    def by_id(self, key_id: str) -> AgencyPublicKey | None:
        """The key with this id, if the ring holds it."""
        return self._by_id.get(key_id)

    def effective_period(self, key: AgencyPublicKey) -> tuple[int, int]:
        """``[start, end)`` in ms during which ``key`` is its agency's current key."""
        keys = self._keys[key.agency]
        index = keys.index(key)
        end = key.valid_until_ms
        if index + 1 < len(keys):
            end = min(end, keys[index + 1].valid_from_ms)
        return key.valid_from_ms, end

    def current(self, agency: str, at_ms: int) -> AgencyPublicKey | None:
        """The agency's current key at ``at_ms`` (see the module's rule), or None in a gap."""
        found = None
        for key in self._keys.get(agency, ()):
            if key.valid_from_ms > at_ms:
                break
            if at_ms < key.valid_until_ms:
                found = key
        return found

    def require(self, agency: str, at_ms: int) -> AgencyPublicKey:
        """The current key, or :class:`KeyUnavailable` naming the agency and the instant."""
        key = self.current(agency, at_ms)
        if key is None:
            periods = ", ".join(f"{k.key_id} {k.period()}" for k in self._keys.get(agency, ())) or "none"
            raise KeyUnavailable(
                f"{self.source}: no public key of agency {agency!r} is in force at {format_instant(at_ms)} "
                f"(keys: {periods}); import the agency's next key with `screening-streams agency import-key`. "
                "Nothing is sent in clear."
            )
        return key

    def check_in_force(self, agencies: Iterable[str], at_ms: int, warn_within_ms: int = 7 * 86_400_000) -> None:
        """Fail (:class:`KeyUnavailable`) unless every agency has a current key; warn of ones expiring soon."""
        missing = [a for a in agencies if self.current(a, at_ms) is None]
        if missing:
            raise KeyUnavailable(
                f"{self.source}: no public key in force at {format_instant(at_ms)} for agencies "
                f"{', '.join(sorted(missing))}, whose policies encrypt fields: each agency runs "
                "`screening-streams agency keygen` and the processor `agency import-key` its public key"
            )
        for agency in agencies:
            key = self.require(agency, at_ms)
            _, end = self.effective_period(key)
            successor = self.current(agency, end)
            if successor is None and end - at_ms < warn_within_ms:
                log.warning(
                    "agency %s: its current key %s ends at %s and no key follows: import the next one",
                    agency,
                    key.key_id,
                    format_instant(end),
                )

    @classmethod
    def from_directory(cls, directory: Path) -> PublicKeyRing:
        """Load every ``*.public.json`` of ``directory``; refuse private keys and unsafe modes."""
        try:
            info = directory.stat()
        except OSError as exc:
            raise KeyFileError(f"public key directory {directory}: {exc.strerror}") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise KeyFileError(f"public key directory {directory} is not a directory")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o022:
            raise KeyFileError(
                f"public key directory {directory} has mode {mode:04o}: group or others could add a key (chmod 755)"
            )
        keys = []
        for path in sorted(directory.iterdir()):
            if path.name.endswith(".private.json"):
                raise KeyFileError(f"{path} is a private key: the processor holds public keys only; remove it")
            if path.name.endswith(PUBLIC_SUFFIX):
                key = load_public_key_file(path)
                if path.name != key.file_name():
                    raise KeyFileError(f"{path}: holds key {key.file_name()}; file name and content disagree")
                keys.append(key)
        return cls(keys, source=str(directory))


class KeyDirectory:
    """The processor's key directory, re-read when its content changes: keys are rotated without a restart.

    :meth:`refresh` looks (at most every ``interval_s``) at the names, sizes and times of its
    ``*.public.json`` files; when they changed, it loads the directory again. A directory that
    no longer satisfies the rule is logged and ignored: the last good ring stays in force.
    """

    def __init__(self, path: Path, interval_s: float = 30.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        """Load ``path`` now (failing fast); check it again at most every ``interval_s`` seconds."""
        self.path = path
        self.interval_s = interval_s
        self._monotonic = monotonic
        self._stamp = self._stamp_now()
        self.ring = PublicKeyRing.from_directory(path)
        self._next_check = monotonic() + interval_s
        self.reloads = 0

    def _stamp_now(self) -> tuple[tuple[str, int, int], ...]:
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
            return tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries)
        except OSError:
            return ()

    def refresh(self) -> bool:
        """Reload the ring if the directory changed since the last look; True when a new ring is in place."""
        now = self._monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.interval_s
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            ring = PublicKeyRing.from_directory(self.path)
        except KeyFileError as exc:
            log.error("public key directory changed but is refused; the previous keys stay in force: %s", exc)
            return False
        self.ring = ring
        self.reloads += 1
        log.warning(
            "public key directory %s reloaded: %d keys", self.path, sum(len(ring.keys_of(a)) for a in ring.agencies)
        )
        return True


def import_public_key(
    directory: Path, path: Path, known_agencies: Iterable[str] | None = None
) -> tuple[AgencyPublicKey, bool]:
    """Add the public key file ``path`` to the processor's ``directory``; return (key, newly added).

    The ring with the new key must satisfy the rule (checked before anything is written), and the
    agency must be one the policies know. Re-importing the same key changes nothing.
    """
    key = load_public_key_file(path)
    if known_agencies is not None:
        known = set(known_agencies)
        if key.agency not in known:
            raise KeyFileError(f"{path}: agency {key.agency!r} is not an agency of the policies ({len(known)} known)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    ring = PublicKeyRing.from_directory(directory)
    existing = ring.by_id(key.key_id)
    if existing is not None:
        if existing == key:
            return key, False
        raise KeyFileError(f"{path}: key {key.key_id} is already imported with another agency or period")
    PublicKeyRing([*(k for a in ring.agencies for k in ring.keys_of(a)), key], source=str(directory))
    target = directory / key.file_name()
    write_public_key_file(target, key)
    os.chmod(target, 0o644)
    return key, True


class PrivateKeyRing:
    """An agency's private keys, by key id (the agency side: the reference client)."""

    def __init__(self, keys: Iterable[AgencyPrivateKey], agency: str | None = None) -> None:
        """Hold ``keys``; with ``agency``, refuse a key of another agency."""
        self._by_id: dict[str, AgencyPrivateKey] = {}
        for key in keys:
            if agency is not None and key.public.agency != agency:
                raise KeyFileError(f"{key.public.source}: a key of agency {key.public.agency!r}, not {agency!r}")
            self._by_id[key.key_id] = key
        self.agency = agency

    def get(self, key_id: str) -> AgencyPrivateKey | None:
        """The private key of public key ``key_id``, if supplied."""
        return self._by_id.get(key_id)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of the supplied keys."""
        return tuple(sorted(self._by_id))

    @classmethod
    def from_files(cls, paths: Iterable[Path], agency: str | None = None) -> PrivateKeyRing:
        """Load private key files (each 0600 or stricter)."""
        return cls([load_private_key_file(p) for p in paths], agency)


def ring_of(pairs: Mapping[str, AgencyPrivateKey] | Iterable[AgencyPrivateKey]) -> PublicKeyRing:
    """The public ring of some key pairs (tests and the demo)."""
    values = pairs.values() if isinstance(pairs, Mapping) else pairs
    return PublicKeyRing([p.public for p in values])


def throwaway_key_pairs(
    agencies: Iterable[str], private_dir: Path, public_dir: Path, now_ms: int, days: int = 365
) -> dict[str, Path]:
    """Demos and tests only: a key pair per agency valid from a day before ``now_ms`` for ``days``.

    Private halves go to ``private_dir`` (0600 files), public halves are imported into the
    processor's ``public_dir``; returns each agency's private key file. Real agencies run
    ``agency keygen`` themselves and hand over only the public file.
    """
    private_keys = {}
    for agency in agencies:
        pair = generate_key_pair(agency, now_ms - 86_400_000, now_ms + days * 86_400_000)
        private_keys[agency], public = write_key_pair(private_dir, pair)
        import_public_key(public_dir, public)
    return private_keys
