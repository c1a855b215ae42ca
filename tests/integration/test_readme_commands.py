"""Every ``screening-streams`` command the README shows runs as written, from a fresh clone.

The commands are extracted from the README itself: its ``bash`` blocks and its inline
`` `screening-streams ...` `` spans. Shorthands are expanded (``broker up | status | down |
wipe`` is four commands; an optional ``[--flag X]`` is run without and with it) and the few
placeholders (``C``, ``P``, ``O``, ``F``, ``OLD``, ``NEW``) get real values. Files and refs the
README expects the reader to bring (an event file, a sample, an old policy folder, a ``v1``
ref) are made first. Anything else in capitals fails the test: a new README command must be
runnable, or this test says why not.

Each command runs with ``bash -c`` in a fresh clone of the repository (the committed tree:
nothing of a previous run, no ``.state`` directory), the clone's code first on ``PYTHONPATH``,
on this session's stack (its ports in the environment, a topic prefix of its own). The worker
is started in the background as written, fed small counts (``generate`` is capped at 200
published or 2 000 written events), drained, then stopped with SIGTERM: it must exit 0.
``broker down`` and ``wipe`` act on a scratch state directory, so the session's stack stays up.
``make`` targets are not run here (``make test`` is this suite, ``make demo`` has test_demo).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka import TopicPartition

from streams.contracts.registry import HttpSchemaRegistry
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.offsets import end_offsets, read_from, wait_for_lag_zero, wait_for_members
from streams.kafka.publish import event_encoder, framed_events, publish_raw
from streams.stack.settings import Endpoints

from .conftest import admin_auth

ROOT = Path(__file__).resolve().parents[2]
PUBLISH_CAP, WRITE_CAP = 200, 2_000
#: Files and refs the README expects the reader to have, and how this test makes them (in the clone).
FIXTURES = {
    "event.json": "screening-streams generate -n 1 --out event.json",
    "old/": "cp -r policies old",
    "v1": "git tag v1",
}


def readme_commands(readme: str) -> list[str]:
    """The ``screening-streams`` commands of the README (bash blocks, then inline spans), expanded, deduplicated."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for raw in block.splitlines():
            line = re.split(r"\s+#\s", " " + raw)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    lines += re.findall(r"`((?:[A-Z_]+=\S+ )*screening-streams [^`]+)`", readme)
    commands: list[str] = []
    for line in lines:
        if not re.search(r"(^|\s)screening-streams\s", line):
            continue  # make targets and other tools
        for command in _expand(line):
            if command not in commands:
                commands.append(command)
    return commands


def _expand(line: str) -> list[str]:
    """``a b x | y | z`` → ``a b x``, ``a b y``, ``a b z``; ``c [--o V]`` → ``c`` and ``c --o V``."""
    if " | " in line:
        head, *alternatives = (part.strip() for part in line.split(" | "))
        stem = head.rsplit(" ", 1)[0]
        return [head, *(f"{stem} {word}" for word in alternatives)]
    if "[" in line:
        without = re.sub(r"\s*\[[^\]]*\]", "", line)
        with_all = re.sub(r"\[([^\]]*)\]", r"\1", line)
        return [without, with_all]
    return [line]


def test_extraction_expands_shorthands_and_finds_every_command_group() -> None:
    """The extractor expands alternatives and optional flags and finds every command group (agency included)."""
    assert _expand("screening-streams broker up | status") == [
        "screening-streams broker up",
        "screening-streams broker status",
    ]
    assert _expand("screening-streams dlq list [--code C]") == [
        "screening-streams dlq list",
        "screening-streams dlq list --code C",
    ]
    commands = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    groups = {re.sub(r"^(\S+=\S+ )*screening-streams ", "", c).split()[0] for c in commands}
    assert {"broker", "topics", "keys", "agency", "worker", "generate", "policy", "dlq", "acl"} <= groups
    assert "screening-streams broker wipe" in commands


@dataclass
class Clone:
    """A fresh clone of the repository and the environment its commands run in."""

    path: Path
    env: dict[str, str]
    scratch_env: dict[str, str]
    prefix: str
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def run(self, command: str, *, scratch: bool = False, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run one command line with bash in the clone; keep its result."""
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.path,
            env=self.scratch_env if scratch else self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.results[command] = done
        return done


def _fresh_clone(target: Path) -> Path:
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(target)], check=True, timeout=120)
    else:  # an exported tree: copy it without local state, as one commit (`policy diff` reads git)
        ignore = shutil.ignore_patterns(".venv", ".state", "__pycache__", ".pytest_cache", ".mypy_cache", "*.egg-info")
        shutil.copytree(ROOT, target, ignore=ignore)
        identity = ["-c", "user.name=readme-test", "-c", "user.email=readme-test@localhost"]
        for args in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "-m", "snapshot"]):
            subprocess.run(["git", *args], cwd=target, check=True, timeout=120, capture_output=True)
    return target


def _concrete(command: str, dlq_coordinates: tuple[int, int]) -> str:
    """Fill the README's placeholders and cap event counts."""
    partition, offset = dlq_coordinates
    words = command.split()
    out: list[str] = []
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        value = {"C": "unknown_commune", "P": str(partition), "O": str(offset), "OLD": "HEAD", "NEW": "policies"}.get(
            word
        )
        if word == "F":
            value = {"--html": "matrix.html", "--png": "risk.png"}.get(before)
        if before == "-n" and "generate" in words:
            value = str(min(int(word), PUBLISH_CAP if "--publish" in words else WRITE_CAP))
        out.append(value if value is not None else word)
    concrete = " ".join(out)
    leftover = [w for w in re.findall(r"(?<![\w=/.-])[A-Z][A-Z_]*(?![\w=])", concrete) if w != "HEAD"]
    assert not leftover, f"README command {command!r} has placeholders this test cannot fill: {leftover}"
    return concrete


@pytest.fixture(scope="module")
def readme_run(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    """Run every README command in a fresh clone, in an order a reader would (stack, worker, then the rest)."""
    base = tmp_path_factory.mktemp("readme")
    path = _fresh_clone(base / "clone")
    prefix = f"it.readme.{uuid.uuid4().hex[:8]}."
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SCREENING_", "KAFKA_", "SCHEMA_"))}
    stack_vars = {k: v for k, v in os.environ.items() if k in ("SCREENING_KAFKA_PORT", "SCREENING_REGISTRY_PORT")}
    stack_vars |= {k: v for k, v in os.environ.items() if k in ("SCREENING_STREAMS_STATE", "SCREENING_STREAMS_CACHE")}
    common = {
        **inherited,
        **stack_vars,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(path),
        "SCREENING_TOPIC_PREFIX": prefix,
        "SCREENING_OUTPUT_PARTITIONS": "1",
        "SCREENING_INGRESS_PARTITIONS": "2",
    }
    env = {**common, "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers, "SCHEMA_REGISTRY_URL": stack.registry_url}
    # The broker commands find a stack this session manages by its ports; an external one by its URLs.
    env_broker = common if stack.managed else env
    scratch = {**common, "SCREENING_STREAMS_STATE": str(base / "scratch-state")}
    clone = Clone(path, env, scratch, prefix)
    commands = readme_commands((path / "README.md").read_text(encoding="utf-8"))
    where = clone.run('python -c "import streams, sys; print(streams.__file__)"')
    assert where.stdout.strip() == str(path / "streams" / "__init__.py"), where.stdout + where.stderr

    def is_broker(command: str) -> bool:
        return command.startswith("screening-streams broker ")

    def is_worker(command: str) -> bool:
        return bool(re.fullmatch(r"(\S+=\S+ )*screening-streams worker", command))

    order = [c for c in commands if is_broker(c) and c.split()[-1] in ("up", "status")]
    # Keys before the worker: pseudonymisation keys, the agencies' key pairs (public halves imported), the audit secret.
    # Topics and ACLs too: the worker (the processor) neither creates topics nor uses one without an ACL.
    order += [
        c
        for c in commands
        if c.startswith(
            (
                "screening-streams topics",
                "screening-streams acl apply",
                "screening-streams keys",
                "screening-streams agency throwaway",
                "screening-streams audit keygen",
            )
        )
    ]
    worker_command = next(c for c in commands if is_worker(c) and "=" in c)
    for command in order:
        clone.env = env_broker if is_broker(command) else env
        clone.run(command, timeout=300)
    clone.env = env
    log_path = base / "worker.log"
    with log_path.open("wb") as log:
        # `VAR=x exec cmd`: bash becomes the worker, so SIGTERM and the exit code are the worker's own.
        exec_form = re.sub(r"^((?:\S+=\S+ )*)", r"\1exec ", worker_command)
        worker = subprocess.Popen(["bash", "-c", exec_form], cwd=path, env=env, stdout=log, stderr=log)
    group = prefix + "screening-streams"
    admin = admin_auth()
    try:
        wait_for_members(stack.bootstrap_servers, group, auth=admin, timeout_s=120)
        for command in [c for c in commands if c.startswith("screening-streams generate")]:
            clone.run(_concrete(command, (0, 0)))
        _publish_stray(stack, prefix)
        wait_for_lag_zero(stack.bootstrap_servers, group, prefix + "screening.results.v1", auth=admin, timeout_s=180)
        coordinates = _first_dead_letter(stack, prefix + "screening.results.dlq.v1")
        for name, make in FIXTURES.items():
            if any(re.search(rf"(^|\s){re.escape(name)}(\s|$)", c) for c in commands):
                clone.run(make)
        done = {*order, worker_command, *(c for c in commands if c.startswith("screening-streams generate"))}
        for command in commands:
            if command in done or (is_worker(command) and "=" not in command):
                continue  # the inline `screening-streams worker` is the worker above, without its key file
            if is_broker(command):
                clone.run(command, scratch=True)
            else:
                clone.run(_concrete(command, coordinates))
        alive = worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
    clone.results["worker (SIGTERM)"] = subprocess.CompletedProcess(worker_command, code, log_path.read_text(), "")
    clone.results["worker alive before SIGTERM"] = subprocess.CompletedProcess("", 0 if alive else 1, "", "")
    yield clone


def _publish_stray(stack: Endpoints, prefix: str) -> None:
    """One event from Saint-Pierre-et-Miquelon (commune 97501, no region): the dead letter the dlq commands show."""
    event = dict(next(iter(generate_events(1, GeneratorSettings(seed=97)))), commune_code="97501", processing_mode="P")
    encoder = event_encoder(HttpSchemaRegistry(stack.registry_url), prefix + "screening.results.v1", 1)
    topic = prefix + "screening.results.v1"
    asyncio.run(publish_raw(stack.bootstrap_servers, topic, framed_events([event], encoder), 2, auth=admin_auth()))


def _first_dead_letter(stack: Endpoints, dlq: str) -> tuple[int, int]:
    admin = admin_auth()
    ends = end_offsets(stack.bootstrap_servers, [dlq], auth=admin)
    records = read_from(stack.bootstrap_servers, {tp: 0 for tp, end in ends.items() if end}, auth=admin)
    assert records, f"no dead letter in {dlq}"
    first = min(records, key=lambda r: (r.partition, r.offset))
    assert TopicPartition(dlq, first.partition) in ends
    return first.partition, first.offset


def test_every_readme_command_exits_0(readme_run: Clone) -> None:
    """Each command of the README, as written (placeholders filled), exits 0 in a fresh clone."""
    failed = {
        command: f"exit {done.returncode}: {(done.stderr or done.stdout)[-600:]}"
        for command, done in readme_run.results.items()
        if done.returncode != 0
    }
    assert failed == {}
    assert len(readme_run.results) >= 25


def test_the_worker_runs_from_a_fresh_clone_and_stops_cleanly(readme_run: Clone) -> None:
    """The README's worker line starts in a fresh clone (no FileNotFoundError on .state), drains, exits 0."""
    log = readme_run.results["worker (SIGTERM)"].stdout
    assert "FileNotFoundError" not in log and "Traceback" not in log, log[-3000:]
    assert readme_run.results["worker alive before SIGTERM"].returncode == 0
    assert stat_mode(readme_run.path / ".state") == 0o700


def stat_mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return path.stat().st_mode & 0o777


def test_commands_that_report_do_report(readme_run: Clone) -> None:
    """Some outputs are checked too: keys written 0600, events published, a dead letter listed and shown, ACLs."""
    out = {command: done.stdout for command, done in readme_run.results.items()}
    keys = next(v for k, v in out.items() if k.startswith("screening-streams keys generate"))
    assert "wrote keys for" in keys and stat_mode(readme_run.path / "keys.json") == 0o600
    published = next(v for k, v in out.items() if "--publish" in k)
    assert f"published {PUBLISH_CAP} events" in published
    listed = out["screening-streams dlq list"]
    assert "unknown_commune" in listed
    shown = next(v for k, v in out.items() if k.startswith("screening-streams dlq show --partition"))
    assert "dead letter " in shown and "unknown_commune" in shown
    assert "kafka-acls.sh" in out["screening-streams acl plan"]
