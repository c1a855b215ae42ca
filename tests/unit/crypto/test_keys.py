"""Agency key files: exclusive creation, modes, ids bound to keys, private keys never taken as public."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from streams.crypto.errors import KeyFileError
from streams.crypto.keys import (
    AgencyPublicKey,
    format_instant,
    generate_key_pair,
    key_id_of,
    load_private_key_file,
    load_public_key_file,
    parse_instant,
    write_key_pair,
)

from .conftest import T0, YEAR_END


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_0600_private_and_a_0644_public_file_named_by_key_id(tmp_path: Path) -> None:
    """The private file is owner-only whatever the umask; both files are named <agency>.<key id>."""
    old = os.umask(0)
    try:
        private_path, public_path = write_key_pair(tmp_path / "keys", generate_key_pair("ars.11", T0, YEAR_END))
    finally:
        os.umask(old)
    assert _mode(private_path) == 0o600 and _mode(public_path) == 0o644
    public = load_public_key_file(public_path)
    private = load_private_key_file(private_path)
    assert public == private.public and public.agency == "ars.11"
    assert private_path.name == f"ars.11.{public.key_id}.private.json"
    assert public.key_id == key_id_of(public.public_raw) and len(public.key_id) == 16
    assert "private_key" not in public_path.read_text()


def test_key_files_are_never_overwritten(tmp_path: Path) -> None:
    """Writing a key pair whose files exist fails and leaves the existing private key intact."""
    pair = generate_key_pair("cnam", T0, YEAR_END)
    private_path, _ = write_key_pair(tmp_path, pair)
    before = private_path.read_bytes()
    with pytest.raises(KeyFileError, match="never overwritten"):
        write_key_pair(tmp_path, pair)
    assert private_path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_private_key_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Like ssh: a private key file that others may read or write is not used."""
    private_path, _ = write_key_pair(tmp_path, generate_key_pair("cnam", T0, YEAR_END))
    private_path.chmod(mode)
    with pytest.raises(KeyFileError, match="only its owner"):
        load_private_key_file(private_path)


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_public_key_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A public key someone else could replace would let them read what is encrypted to it."""
    _, public_path = write_key_pair(tmp_path, generate_key_pair("cnam", T0, YEAR_END))
    public_path.chmod(mode)
    with pytest.raises(KeyFileError, match="could replace"):
        load_public_key_file(public_path)


def test_a_private_key_file_is_refused_where_a_public_key_is_expected(tmp_path: Path) -> None:
    """The processor must never hold a private key: importing one by mistake fails loudly."""
    private_path, _ = write_key_pair(tmp_path, generate_key_pair("cnam", T0, YEAR_END))
    with pytest.raises(KeyFileError, match="PRIVATE key"):
        load_public_key_file(private_path)


def test_a_public_key_file_is_refused_as_private_key(tmp_path: Path) -> None:
    """Giving the client a public key file says so instead of failing later."""
    _, public_path = write_key_pair(tmp_path, generate_key_pair("cnam", T0, YEAR_END))
    public_path.chmod(0o600)
    with pytest.raises(KeyFileError, match="format"):
        load_private_key_file(public_path)


def test_a_key_id_that_is_not_the_hash_of_the_key_is_refused(tmp_path: Path) -> None:
    """An edited file cannot claim another key's id (ids name exactly one public key)."""
    _, public_path = write_key_pair(tmp_path, generate_key_pair("cnam", T0, YEAR_END))
    other = generate_key_pair("cnam", T0, YEAR_END).public
    doc = json.loads(public_path.read_text())
    doc["key_id"] = other.key_id
    forged = tmp_path / "forged.public.json"
    forged.write_text(json.dumps(doc))
    forged.chmod(0o644)
    with pytest.raises(KeyFileError, match="not the id of this public key"):
        load_public_key_file(forged)


def test_a_private_key_that_does_not_match_its_public_half_is_refused(tmp_path: Path) -> None:
    """Swapping the private bytes of a file for another key's is detected at load."""
    private_path, _ = write_key_pair(tmp_path / "a", generate_key_pair("cnam", T0, YEAR_END))
    other_path, _ = write_key_pair(tmp_path / "b", generate_key_pair("cnam", T0, YEAR_END))
    doc = json.loads(private_path.read_text())
    doc["private_key"] = json.loads(other_path.read_text())["private_key"]
    private_path.chmod(0o600)
    private_path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="does not match"):
        load_private_key_file(private_path)


@pytest.mark.parametrize(
    "change",
    [
        {"algorithm": "RSA"},
        {"public_key": "zz"},
        {"public_key": "00" * 31},
        {"valid_until": "2025-01-01"},
        {"valid_from": "2026-01-01T00:00:00"},
        {"agency": "CNAM!"},
        {"format": "something-else"},
    ],
)
def test_malformed_public_key_documents_are_refused(tmp_path: Path, change: dict[str, str]) -> None:
    """Each broken property (algorithm, key bytes, period, time zone, agency, format) fails at load."""
    _, public_path = write_key_pair(tmp_path, generate_key_pair("cnam", T0, YEAR_END))
    doc = {**json.loads(public_path.read_text()), **change}
    public_path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError):
        load_public_key_file(public_path)


def test_instants_are_dates_at_utc_midnight_or_zoned_date_times() -> None:
    """``YYYY-MM-DD`` is 00:00 UTC; a date-time needs a zone; formatting round-trips."""
    assert parse_instant("2026-01-01") == 1_767_225_600_000
    assert parse_instant("2026-01-01T01:00:00+01:00") == 1_767_225_600_000
    assert format_instant(parse_instant("2026-03-04T05:06:07Z")) == "2026-03-04T05:06:07Z"
    for bad in ("2026-13-01", "yesterday", "2026-01-01T00:00:00"):
        with pytest.raises(KeyFileError):
            parse_instant(bad)


def test_an_empty_or_reversed_period_is_refused() -> None:
    """A key valid for no instant is a mistake."""
    pair = generate_key_pair("cnam", T0, YEAR_END)
    with pytest.raises(KeyFileError, match="before valid_until"):
        AgencyPublicKey("cnam", pair.key_id, pair.public.public_raw, YEAR_END, YEAR_END)
