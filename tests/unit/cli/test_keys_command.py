"""Unit tests of ``screening-streams keys generate`` (streams.cli.main): exclusive, private, no env fallback."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import click
from click.testing import CliRunner

from streams.cli.main import main
from streams.policy.pseudonyms import StaticKeyRing


def test_generate_writes_a_private_key_file_the_worker_can_load(tmp_path: Path) -> None:
    """keys generate --out F creates F with mode 0600, one distinct key per agency, loadable as a key ring."""
    out = tmp_path / "keys.json"
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    keys = json.loads(out.read_text())
    assert {"cnam", "spf", "ars.11"} <= set(keys) and len(set(keys.values())) == len(keys)
    assert StaticKeyRing.from_file(out).key_for("spf").hex() == keys["spf"]


def test_generate_never_overwrites_an_existing_key_file_unless_forced(tmp_path: Path) -> None:
    """A second run fails (exit 2, naming the file) and leaves the keys intact; --force replaces them."""
    out = tmp_path / "keys.json"
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", "--out", str(out)]).exit_code == 0
    first = out.read_text()
    again = runner.invoke(main, ["keys", "generate", "--out", str(out)])
    assert again.exit_code == 2 and f"{out} already exists" in again.output
    assert out.read_text() == first
    forced = runner.invoke(main, ["keys", "generate", "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert out.read_text() != first and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_the_output_path_never_comes_from_the_environment(tmp_path: Path) -> None:
    """SCREENING_KEYS_FILE (the worker's key source) is not a fallback for --out: it would overwrite live keys."""
    live = tmp_path / "live.json"
    result = CliRunner().invoke(main, ["keys", "generate"], env={"SCREENING_KEYS_FILE": str(live)})
    assert result.exit_code == 2 and "--out" in result.output
    assert not live.exists()
    command = main.commands["keys"]
    assert isinstance(command, click.Group)
    for param in command.commands["generate"].params:
        assert not getattr(param, "envvar", None), param.name
