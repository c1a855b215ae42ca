"""Unit tests of keyed pseudonyms and key rings (streams.policy.pseudonyms)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.policy.pseudonyms import (
    KEY_BYTES,
    StaticKeyRing,
    generate_keys,
    make_pseudonymiser,
    write_key_file,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
NIR = "277110608825140"


def test_same_key_and_value_give_same_pseudonym() -> None:
    """Pseudonyms are deterministic: the same key, domain and value always give the same result."""
    first = make_pseudonymiser(KEY_A, "nir")
    second = make_pseudonymiser(KEY_A, "nir")
    assert first(NIR) == first(NIR) == second(NIR)


def test_pseudonym_is_truncated_hmac_sha256_with_domain_prefix() -> None:
    """The pseudonym is base64url of the first 15 bytes of HMAC-SHA-256(key, domain NUL value)."""
    mac = hmac.new(KEY_A, b"nir\x00" + NIR.encode(), hashlib.sha256).digest()
    assert make_pseudonymiser(KEY_A, "nir")(NIR) == base64.urlsafe_b64encode(mac[:15]).decode()


def test_different_agency_keys_give_different_pseudonyms() -> None:
    """Two agencies' keys give unrelated pseudonyms for one person (no join across agencies)."""
    keys = generate_keys(["ars.11", "spf"])
    ars = make_pseudonymiser(keys["ars.11"], "nir")(NIR)
    spf = make_pseudonymiser(keys["spf"], "nir")(NIR)
    assert ars != spf
    assert make_pseudonymiser(KEY_A, "nir")(NIR) != make_pseudonymiser(KEY_B, "nir")(NIR)


def test_domains_are_separated() -> None:
    """The same value under domain "nir" and "event_id" gives different pseudonyms."""
    value = "0a5d2f34-6baa-4455-a3e7-0682c2094cac"
    assert make_pseudonymiser(KEY_A, "nir")(value) != make_pseudonymiser(KEY_A, "event_id")(value)


def test_domain_and_value_boundary_cannot_be_shifted() -> None:
    """Moving characters between domain and value changes the pseudonym (NUL separator)."""
    assert make_pseudonymiser(KEY_A, "ab")("c") != make_pseudonymiser(KEY_A, "a")("bc")


@pytest.mark.parametrize("value", ["", NIR, "é" * 100, "x" * 10_000])
def test_pseudonym_is_20_base64url_characters(value: str) -> None:
    """Every pseudonym is 20 characters of the RFC 4648 URL-safe base64 alphabet, without padding."""
    pseudonym = make_pseudonymiser(KEY_A, "nir")(value)
    assert len(pseudonym) == 20
    assert set(pseudonym) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_generate_keys_makes_one_distinct_key_per_agency() -> None:
    """generate_keys gives each agency its own 32-byte key, from the injected token source."""
    counter = iter(range(1, 100))
    keys = generate_keys(["cnam", "spf"], token=lambda n: bytes([next(counter)]) * n)
    assert keys == {"cnam": b"\x01" * KEY_BYTES, "spf": b"\x02" * KEY_BYTES}
    random_keys = generate_keys(["a", "b"])
    assert random_keys["a"] != random_keys["b"]
    assert {len(k) for k in random_keys.values()} == {KEY_BYTES}


def test_key_file_round_trip_and_owner_only_mode(tmp_path: Path) -> None:
    """write_key_file writes hex JSON with mode 0600 that StaticKeyRing.from_file reads back."""
    path = tmp_path / "sub" / "keys.json"
    keys = {"cnam": KEY_A, "ars.11": KEY_B}
    write_key_file(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"ars.11": KEY_B.hex(), "cnam": KEY_A.hex()}
    ring = StaticKeyRing.from_file(path)
    assert ring.key_for("cnam") == KEY_A
    assert ring.key_for("ars.11") == KEY_B
    assert ring.source == str(path)


def test_writing_a_key_file_never_overwrites_one(tmp_path: Path) -> None:
    """An existing key file (or a symlink, even dangling) is never replaced without force: ConfigError, file intact."""
    path = tmp_path / "keys.json"
    write_key_file(path, {"cnam": KEY_A, "spf": KEY_B})
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"keys\.json already exists"):
        write_key_file(path, {"cnam": KEY_B, "spf": KEY_A})
    assert path.read_bytes() == before
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ConfigError, match=r"link\.json already exists"):
        write_key_file(link, {"cnam": KEY_A})
    assert not (tmp_path / "elsewhere.json").exists()


def test_forced_rewrite_replaces_the_file_privately(tmp_path: Path) -> None:
    """With force, an existing world-readable file is replaced (not rewritten in place) by a 0600 one."""
    path = tmp_path / "keys.json"
    path.write_text("{}")
    path.chmod(0o644)
    old_inode = path.stat().st_ino
    write_key_file(path, {"cnam": KEY_A, "spf": KEY_B}, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != old_inode  # a new file: the old one's readers never see the new keys
    write_key_file(path, {"cnam": KEY_B}, force=True)
    assert StaticKeyRing.from_file(path).key_for("cnam") == KEY_B
    with pytest.raises(ConfigError):
        StaticKeyRing.from_file(path).key_for("spf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]  # no temporary file left behind


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o700 | 0o044])
def test_key_file_open_to_group_or_others_is_refused_at_load(tmp_path: Path, mode: int) -> None:
    """A key file any group or other permission bit is set on fails the load, naming the file and the fix."""
    path = tmp_path / "keys.json"
    write_key_file(path, {"cnam": KEY_A})
    path.chmod(mode)
    with pytest.raises(ConfigError, match=rf"keys\.json.*mode 0{mode:o}.*chmod 600") as caught:
        StaticKeyRing.from_file(path)
    assert KEY_A.hex() not in str(caught.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_key_files_load(tmp_path: Path, mode: int) -> None:
    """Modes 0600 and 0400 are accepted."""
    path = tmp_path / "keys.json"
    write_key_file(path, {"cnam": KEY_A})
    path.chmod(mode)
    assert StaticKeyRing.from_file(path).key_for("cnam") == KEY_A


def test_two_agencies_with_one_key_fail_the_load(tmp_path: Path) -> None:
    """Agencies sharing a key could join their pseudonyms: refused from memory, a file or the environment."""
    with pytest.raises(ConfigError, match=r"agencies 'ars\.11' and 'spf' share one key") as caught:
        StaticKeyRing({"cnam": KEY_A, "spf": KEY_B, "ars.11": KEY_B})
    assert KEY_B.hex() not in str(caught.value)
    path = tmp_path / "keys.json"
    write_key_file(path, {"cnam": KEY_A, "spf": KEY_A})
    with pytest.raises(ConfigError, match=r"keys\.json: agencies 'cnam' and 'spf' share one key"):
        StaticKeyRing.from_file(path)
    with pytest.raises(ConfigError, match="environment: agencies 'cnam' and 'spf' share one key"):
        StaticKeyRing.from_env({"SCREENING_KEY_CNAM": KEY_A.hex(), "SCREENING_KEY_SPF": KEY_A.hex()})


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    """A key path that is a directory fails with ConfigError naming it."""
    with pytest.raises(ConfigError, match="not a regular file"):
        StaticKeyRing.from_file(tmp_path)


@pytest.mark.parametrize("content", ["not json", '{"cnam": "zz"}', "[1, 2]"])
def test_unreadable_key_file_is_config_error(tmp_path: Path, content: str) -> None:
    """A key file that is not a JSON object of hex keys fails with ConfigError naming the file."""
    path = tmp_path / "keys.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"keys\.json: cannot load pseudonymisation keys"):
        StaticKeyRing.from_file(path)


def test_missing_key_file_is_config_error(tmp_path: Path) -> None:
    """A key file that does not exist fails with ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"absent\.json"):
        StaticKeyRing.from_file(tmp_path / "absent.json")


def test_from_env_maps_variable_names_to_agencies() -> None:
    """SCREENING_KEY_ARS_11 gives agency "ars.11"; SCREENING_KEY_CNAM gives "cnam"."""
    environ = {"SCREENING_KEY_ARS_11": KEY_A.hex(), "SCREENING_KEY_CNAM": KEY_B.hex(), "HOME": "/x"}
    ring = StaticKeyRing.from_env(environ)
    assert ring.key_for("ars.11") == KEY_A
    assert ring.key_for("cnam") == KEY_B
    assert ring.source == "environment"


def test_from_env_prefers_the_key_file(tmp_path: Path) -> None:
    """SCREENING_KEYS_FILE, when set, is the key source (the variables are ignored)."""
    path = tmp_path / "keys.json"
    write_key_file(path, {"spf": KEY_A})
    environ = {"SCREENING_KEYS_FILE": str(path), "SCREENING_KEY_SPF": KEY_B.hex()}
    ring = StaticKeyRing.from_env(environ)
    assert ring.key_for("spf") == KEY_A


def test_from_env_without_keys_is_config_error() -> None:
    """An environment with no key variables fails with a ConfigError saying how to provide keys."""
    with pytest.raises(ConfigError, match="SCREENING_KEYS_FILE"):
        StaticKeyRing.from_env({"PATH": "/bin"})


def test_from_env_non_hex_key_is_config_error_without_the_value() -> None:
    """A variable that is not hex fails naming the variable, not echoing its secret value."""
    with pytest.raises(ConfigError, match="SCREENING_KEY_SPF") as caught:
        StaticKeyRing.from_env({"SCREENING_KEY_SPF": "secret-not-hex-value"})
    assert "secret-not-hex-value" not in str(caught.value)


def test_missing_agency_key_is_config_error_naming_it() -> None:
    """Asking a key ring for an agency it lacks raises ConfigError naming the agency and source."""
    ring = StaticKeyRing({"cnam": KEY_A}, source="test ring")
    with pytest.raises(ConfigError, match=r"ars\.93") as caught:
        ring.key_for("ars.93")
    assert "test ring" in str(caught.value)


@pytest.mark.parametrize("length", [0, 1, 15])
def test_short_key_is_rejected(length: int) -> None:
    """A key shorter than 16 bytes is refused when the ring is built, naming the agency."""
    with pytest.raises(ConfigError, match="spf"):
        StaticKeyRing({"cnam": KEY_A, "spf": b"k" * length})


def test_short_key_from_env_is_rejected() -> None:
    """A short key given through the environment is refused too."""
    with pytest.raises(ConfigError, match="16 bytes"):
        StaticKeyRing.from_env({"SCREENING_KEY_CNAM": "00" * 8})


def test_sixteen_byte_key_is_accepted() -> None:
    """A 16-byte key is the shortest accepted."""
    assert StaticKeyRing({"cnam": b"k" * 16}).key_for("cnam") == b"k" * 16


def test_uncached_pseudonymiser_gives_the_same_pseudonyms_without_a_cache() -> None:
    """cache_size=0 (for never-repeating event ids) keeps the values and holds no cache."""
    cached = make_pseudonymiser(KEY_A, "event_id")
    uncached = make_pseudonymiser(KEY_A, "event_id", cache_size=0)
    assert uncached("e-1") == cached("e-1") and uncached("e-2") == cached("e-2")
    assert hasattr(cached, "cache_info") and not hasattr(uncached, "cache_info")
