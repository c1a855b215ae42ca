"""Unit tests of the local stack's storage, deletion and file-mode settings (no java, no network)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.stack import lifecycle
from streams.stack.settings import StackSettings


def _flags(settings: StackSettings, bootstrap: str = "127.0.0.1:29092") -> dict[str, str]:
    pairs = (flag.removeprefix("-D").split("=", 1) for flag in lifecycle.render_registry_flags(settings, bootstrap))
    return dict(pairs)


def _settings(tmp_path: Path, **env: str) -> StackSettings:
    return StackSettings.from_env({"HOME": str(tmp_path), "SCREENING_STREAMS_STATE": str(tmp_path / "state"), **env})


def test_registry_keeps_its_schemas_in_the_broker(tmp_path: Path) -> None:
    """kafkasql storage on the stack's own broker, in the journal topic created with unlimited retention."""
    flags = _flags(_settings(tmp_path), "127.0.0.1:29092")
    assert flags["apicurio.storage.kind"] == "kafkasql"
    assert flags["apicurio.kafkasql.bootstrap.servers"] == "127.0.0.1:29092"
    assert flags["apicurio.kafkasql.topic"] == lifecycle.REGISTRY_TOPICS[0]
    assert flags["apicurio.kafkasql.snapshots.topic"] == lifecycle.REGISTRY_TOPICS[1]
    assert lifecycle.REGISTRY_TOPIC_CONFIGS["retention.ms"] == "-1"
    assert lifecycle.REGISTRY_TOPIC_CONFIGS["retention.bytes"] == "-1"
    assert flags["quarkus.http.host"] == "127.0.0.1"
    # artifact rules do not survive a 3.0.9 kafkasql restart: the configured default rule does
    assert flags["apicurio.rules.global.compatibility"] == "FORWARD_TRANSITIVE"


def test_registry_deletion_is_off_and_cannot_be_switched_on_at_run_time(tmp_path: Path) -> None:
    """By default every delete flag is false, not dynamically changeable, and HTTP DELETE is denied."""
    flags = _flags(_settings(tmp_path))
    for what in ("group", "artifact", "artifact-version"):
        assert flags[f"apicurio.rest.deletion.{what}.enabled"] == "false"
        assert flags[f"apicurio.rest.deletion.{what}.enabled.dynamic.allow"] == "false"
    assert flags["quarkus.http.auth.permission.nodelete.methods"] == "DELETE"
    assert flags["quarkus.http.auth.permission.nodelete.policy"] == "deny"
    assert flags["quarkus.http.auth.permission.nodelete.paths"] == "/*"


def test_registry_deletion_on_when_asked(tmp_path: Path) -> None:
    """SCREENING_REGISTRY_ALLOW_DELETE=1 turns the delete endpoints on (and drops the DELETE deny)."""
    flags = _flags(_settings(tmp_path, SCREENING_REGISTRY_ALLOW_DELETE="1"))
    assert all(
        flags[f"apicurio.rest.deletion.{w}.enabled"] == "true" for w in ("group", "artifact", "artifact-version")
    )
    assert not any(key.startswith("quarkus.http.auth.permission.nodelete") for key in flags)


@pytest.mark.parametrize(("raw", "expected"), [("", False), ("0", False), ("no", False), ("1", True), ("true", True)])
def test_allow_delete_flag_parsing(tmp_path: Path, raw: str, expected: bool) -> None:
    """The flag reads 1/true/yes/on and 0/false/no/off; unset is off."""
    assert _settings(tmp_path, SCREENING_REGISTRY_ALLOW_DELETE=raw).registry_allow_delete is expected


def test_allow_delete_flag_rejects_garbage(tmp_path: Path) -> None:
    """A value that is not a boolean fails the load, naming the variable."""
    with pytest.raises(ConfigError, match="SCREENING_REGISTRY_ALLOW_DELETE"):
        _settings(tmp_path, SCREENING_REGISTRY_ALLOW_DELETE="maybe")


def test_make_private_fixes_dirs_and_files(tmp_path: Path) -> None:
    """Directories become 0700 and files 0600 below the state dir, whatever they were."""
    root = tmp_path / "state"
    segments = root / "kafka-data" / "screening.results.v1-0"
    segments.mkdir(parents=True)
    log = segments / "00000000000000000000.log"
    log.write_bytes(b"raw nir inside")
    log.chmod(0o644)
    segments.chmod(0o755)
    root.chmod(0o755)
    lifecycle.make_private(root)
    for path in (root, root / "kafka-data", segments):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_launcher_starts_services_with_umask_077(tmp_path: Path) -> None:
    """What a spawned service creates is private: the launcher sets umask 077 before starting it."""
    out = tmp_path / "made-by-child"
    log = tmp_path / "child.log"
    script = f"open({str(out)!r}, 'w').write('x'); import os; os.mkdir({str(tmp_path / 'dir')!r})"
    done = subprocess.run(
        [sys.executable, "-c", lifecycle._LAUNCHER, str(log), str(tmp_path), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    pid = int(done.stdout.strip())
    deadline = time.monotonic() + 20
    while not (out.exists() and (tmp_path / "dir").exists()) and time.monotonic() < deadline:
        os.sched_yield()  # the detached child writes within milliseconds
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # re-parented: not our child
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o700
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_state_files_written_by_the_stack_are_private(tmp_path: Path) -> None:
    """server.properties and pid files are written 0600 even when they existed with wider modes."""
    target = tmp_path / "server.properties"
    target.write_text("old")
    target.chmod(0o644)
    lifecycle._write_private(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
