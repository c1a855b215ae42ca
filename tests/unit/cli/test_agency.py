"""``screening-streams agency keygen | import-key | keys``: key files made and imported as the README says."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner

from streams.cli.main import main
from streams.crypto.ring import PublicKeyRing


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _keygen(out: Path, agency: str, valid_from: str, valid_until: str) -> tuple[Path, Path]:
    code, output = _run(
        "agency",
        "keygen",
        "--recipient",
        agency,
        "--valid-from",
        valid_from,
        "--valid-until",
        valid_until,
        "--out",
        str(out),
    )
    assert code == 0, output
    private = Path(next(line for line in output.splitlines() if "private key" in line).rsplit(" ", 1)[1])
    public = Path(next(line for line in output.splitlines() if "public key" in line).rsplit(" ", 1)[1])
    return private, public


def test_keygen_then_import_then_list(tmp_path: Path) -> None:
    """The agency makes two keys (rotation), the processor imports both publics, `keys` shows who is current when."""
    agency_dir, processor_dir = tmp_path / "cnam-keys", tmp_path / "public-keys"
    old_private, old_public = _keygen(agency_dir, "cnam", "2020-01-01", "2030-01-01")
    _, new_public = _keygen(agency_dir, "cnam", "2025-06-01", "2031-01-01")
    assert stat.S_IMODE(old_private.stat().st_mode) == 0o600 and old_private.name.endswith(".private.json")
    for public in (old_public, new_public):
        code, output = _run("agency", "import-key", str(public), "--public-keys-dir", str(processor_dir))
        assert code == 0 and "imported key" in output, output
    code, output = _run("agency", "import-key", str(new_public), "--public-keys-dir", str(processor_dir))
    assert code == 0 and "already imported" in output
    assert sorted(p.name for p in processor_dir.iterdir()) == sorted([old_public.name, new_public.name])
    ring = PublicKeyRing.from_directory(processor_dir)
    code, output = _run("agency", "keys", "--public-keys-dir", str(processor_dir))
    lines = output.splitlines()
    assert code == 0 and len(lines) == 2
    assert "current 2020-01-01T00:00:00Z..2025-06-01T00:00:00Z" in lines[0]
    assert lines[1].endswith("<- current") and ring.keys_of("cnam")[1].key_id in lines[1]


def test_import_refuses_a_private_key_and_an_unknown_agency(tmp_path: Path) -> None:
    """The processor's directory never receives a private key, nor a key for an agency no policy names."""
    private, _ = _keygen(tmp_path / "a", "cnam", "2020-01-01", "2030-01-01")
    _, stray = _keygen(tmp_path / "b", "ars.99", "2020-01-01", "2030-01-01")
    for path, message in ((private, "PRIVATE key"), (stray, "not an agency of the policies")):
        result = CliRunner().invoke(main, ["agency", "import-key", str(path), "--public-keys-dir", str(tmp_path / "p")])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").iterdir())


def test_keygen_refuses_a_period_without_time_zone_or_reversed(tmp_path: Path) -> None:
    """Bad periods fail with the flag named and write nothing."""
    for valid_from, valid_until, message in (
        ("2020-01-01T00:00:00", "2030-01-01", "--valid-from"),
        ("2030-01-01", "2020-01-01", "before valid_until"),
    ):
        args = ["agency", "keygen", "--recipient", "cnam", "--valid-from", valid_from, "--valid-until", valid_until]
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "k")])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "k").exists()


def test_every_agency_flag_falls_back_to_an_environment_variable(tmp_path: Path) -> None:
    """keygen runs from SCREENING_AGENCY_* variables alone."""
    env = {
        "SCREENING_AGENCY": "ars.11",
        "SCREENING_AGENCY_VALID_FROM": "2026-01-01",
        "SCREENING_AGENCY_VALID_UNTIL": "2027-01-01",
        "SCREENING_AGENCY_KEYS_OUT": str(tmp_path / "env-keys"),
    }
    result = CliRunner().invoke(main, ["agency", "keygen"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "env-keys").glob("ars.11.*.private.json"))) == 1
