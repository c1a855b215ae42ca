"""The public key ring's rule (one current key per agency at any instant) and the import command's core."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.crypto.errors import KeyFileError, KeyUnavailable
from streams.crypto.keys import generate_key_pair, load_public_key_file, write_key_pair, write_public_key_file
from streams.crypto.ring import KeyDirectory, PrivateKeyRing, PublicKeyRing, import_public_key

from .conftest import DAY_MS, T0

D = DAY_MS


def test_during_an_overlap_the_newer_key_is_current_and_the_older_never_returns() -> None:
    """A [0, 20) and B [10, 30): A until 10, B from 10 on, nothing from 30; A's effective period ends at 10."""
    a = generate_key_pair("cnam", T0, T0 + 20 * D).public
    b = generate_key_pair("cnam", T0 + 10 * D, T0 + 30 * D).public
    ring = PublicKeyRing([b, a])
    assert ring.current("cnam", T0) == a
    assert ring.current("cnam", T0 + 10 * D - 1) == a
    assert ring.current("cnam", T0 + 10 * D) == b
    assert ring.current("cnam", T0 + 25 * D) == b
    assert ring.current("cnam", T0 + 30 * D) is None
    assert ring.current("cnam", T0 - 1) is None
    assert ring.effective_period(a) == (T0, T0 + 10 * D)
    assert ring.effective_period(b) == (T0 + 10 * D, T0 + 30 * D)
    assert ring.current("ars.11", T0) is None


def test_a_gap_between_keys_has_no_current_key_and_require_says_so() -> None:
    """Between two periods nothing is current: encrypting then fails instead of sending clear text."""
    ring = PublicKeyRing(
        [generate_key_pair("cnam", T0, T0 + D).public, generate_key_pair("cnam", T0 + 2 * D, T0 + 3 * D).public]
    )
    assert ring.current("cnam", T0 + D + 5) is None
    with pytest.raises(KeyUnavailable, match="no public key of agency 'cnam' is in force at 2026-01-02"):
        ring.require("cnam", T0 + D + 5)


def test_two_keys_starting_at_the_same_instant_are_refused() -> None:
    """Which key is current would be ambiguous."""
    with pytest.raises(KeyFileError, match="both start"):
        PublicKeyRing([generate_key_pair("cnam", T0, T0 + D).public, generate_key_pair("cnam", T0, T0 + 2 * D).public])


def test_a_newer_key_that_expires_before_the_older_one_is_refused() -> None:
    """Otherwise the older key would become current again after the newer one expires."""
    with pytest.raises(KeyFileError, match=r"current\s+again"):
        PublicKeyRing(
            [
                generate_key_pair("cnam", T0, T0 + 30 * D).public,
                generate_key_pair("cnam", T0 + D, T0 + 2 * D).public,
            ]
        )


def test_the_same_key_twice_is_refused() -> None:
    """A key id names one key for one agency and one period."""
    key = generate_key_pair("cnam", T0, T0 + D).public
    with pytest.raises(KeyFileError, match="appears twice"):
        PublicKeyRing([key, key])


def test_check_in_force_names_every_agency_without_a_current_key() -> None:
    """The worker refuses to start while an encrypting agency has no key in force."""
    ring = PublicKeyRing([generate_key_pair("cnam", T0, T0 + D).public])
    ring.check_in_force(["cnam"], T0)
    with pytest.raises(KeyUnavailable, match=r"ars\.11, ars\.24"):
        ring.check_in_force(["cnam", "ars.24", "ars.11"], T0)


def test_from_directory_refuses_private_keys_and_a_directory_others_can_write(tmp_path: Path) -> None:
    """The processor's key directory holds public keys only, and only its owner can add one."""
    directory = tmp_path / "public"
    directory.mkdir(mode=0o755)
    pair = generate_key_pair("cnam", T0, T0 + D)
    write_public_key_file(directory / pair.public.file_name(), pair.public)
    assert PublicKeyRing.from_directory(directory).keys_of("cnam") == (pair.public,)
    directory.chmod(0o775)
    with pytest.raises(KeyFileError, match="could add a key"):
        PublicKeyRing.from_directory(directory)
    directory.chmod(0o755)
    write_key_pair(tmp_path / "agency", pair)
    (directory / pair.file_name()).write_bytes((tmp_path / "agency" / pair.file_name()).read_bytes())
    with pytest.raises(KeyFileError, match="public keys only"):
        PublicKeyRing.from_directory(directory)


def test_a_renamed_public_key_file_is_refused(tmp_path: Path) -> None:
    """A file named after one key but holding another is a mistake or a substitution."""
    directory = tmp_path / "public"
    directory.mkdir(mode=0o755)
    a = generate_key_pair("cnam", T0, T0 + D).public
    write_public_key_file(directory / f"cnam.{'0' * 16}.public.json", a)
    with pytest.raises(KeyFileError, match="disagree"):
        PublicKeyRing.from_directory(directory)


def test_import_adds_a_key_once_and_checks_the_rule_before_writing(tmp_path: Path) -> None:
    """Import is idempotent for the same key, refuses a key breaking the rule and leaves the directory as it was."""
    agency_dir, processor_dir = tmp_path / "agency", tmp_path / "processor"
    first = generate_key_pair("cnam", T0, T0 + 20 * D)
    _, first_public = write_key_pair(agency_dir, first)
    key, added = import_public_key(processor_dir, first_public, known_agencies=["cnam", "spf"])
    assert added and key == first.public
    assert import_public_key(processor_dir, first_public) == (first.public, False)
    bad = generate_key_pair("cnam", T0 + D, T0 + 2 * D)
    _, bad_public = write_key_pair(agency_dir, bad)
    before = sorted(p.name for p in processor_dir.iterdir())
    with pytest.raises(KeyFileError, match=r"current\s+again"):
        import_public_key(processor_dir, bad_public)
    assert sorted(p.name for p in processor_dir.iterdir()) == before
    imported = load_public_key_file(processor_dir / first.public.file_name())
    assert imported == first.public


def test_import_refuses_an_agency_the_policies_do_not_know(tmp_path: Path) -> None:
    """A typo in the agency name would otherwise create a key nobody encrypts to."""
    _, public_path = write_key_pair(tmp_path / "agency", generate_key_pair("cnma", T0, T0 + D))
    with pytest.raises(KeyFileError, match="not an agency of the policies"):
        import_public_key(tmp_path / "processor", public_path, known_agencies=["cnam"])


def test_a_private_ring_refuses_another_agencys_key() -> None:
    """An agency's client loads its own keys only."""
    with pytest.raises(KeyFileError, match="not 'cnam'"):
        PrivateKeyRing([generate_key_pair("spf", T0, T0 + D)], "cnam")


def test_a_key_directory_picks_up_an_imported_key_without_a_restart(tmp_path: Path) -> None:
    """After import-key, the next look (interval elapsed) loads the new key; before the interval nothing is re-read."""
    tick = [0.0]
    agency_dir, processor_dir = tmp_path / "agency", tmp_path / "processor"
    _, first = write_key_pair(agency_dir, generate_key_pair("cnam", T0, T0 + 20 * D))
    import_public_key(processor_dir, first)
    directory = KeyDirectory(processor_dir, interval_s=5, monotonic=lambda: tick[0])
    nxt = generate_key_pair("cnam", T0 + 10 * D, T0 + 30 * D)
    import_public_key(processor_dir, write_key_pair(agency_dir, nxt)[1])
    assert not directory.refresh() and directory.ring.current("cnam", T0 + 11 * D) != nxt.public
    tick[0] = 5.0
    assert directory.refresh() and directory.reloads == 1
    assert directory.ring.current("cnam", T0 + 11 * D) == nxt.public
    tick[0] = 10.0
    assert not directory.refresh()  # unchanged: not re-read


def test_a_broken_directory_keeps_the_last_good_ring(tmp_path: Path) -> None:
    """A file dropped in by mistake (here a private key) is refused while running; the keys in force stay."""
    tick = [0.0]
    pair = generate_key_pair("cnam", T0, T0 + D)
    processor_dir = tmp_path / "processor"
    import_public_key(processor_dir, write_key_pair(tmp_path / "agency", pair)[1])
    directory = KeyDirectory(processor_dir, interval_s=1, monotonic=lambda: tick[0])
    (processor_dir / pair.file_name()).write_bytes((tmp_path / "agency" / pair.file_name()).read_bytes())
    tick[0] = 2.0
    assert not directory.refresh()
    assert directory.ring.current("cnam", T0) == pair.public
