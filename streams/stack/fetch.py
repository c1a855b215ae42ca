"""Fetch the local stack's distributions once with ``mvn`` into a cache outside the repository.

Downloads land in a temporary folder that is renamed into place and marked complete only when
everything succeeded, so an interrupted run never leaves a half-installed broker behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from streams.errors import LocalStackError
from streams.stack.settings import StackSettings

Echo = Callable[[str], None]
LOG_TAIL_LINES = 20
MARKER = ".complete"
LOG4J_VERSION = "2.24.3"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render_pom(kafka_version: str) -> str:
    """Render the throw-away pom.xml whose runtime dependencies form the broker classpath."""
    deps = [
        ("org.apache.kafka", "kafka_2.13", kafka_version),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ]
    body = "".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>\n"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion><groupId>local.screening</groupId>\n"
        "  <artifactId>kafka-runtime</artifactId><version>1</version>"
        f"<packaging>pom</packaging>\n  <dependencies>\n{body}  </dependencies>\n</project>\n"
    )


def run_tool(cmd: list[str], what: str, cwd: Path | None = None, redact: Callable[[str], str] | None = None) -> None:
    """Run a tool; on failure raise with its output's tail (passed through ``redact`` first)."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise LocalStackError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        output = done.stdout + done.stderr
        tail = "\n".join((redact(output) if redact else output).splitlines()[-LOG_TAIL_LINES:])
        raise LocalStackError(f"{what} failed (exit {done.returncode}):\n{tail}")


@contextmanager
def _fresh_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir next to ``final``; on success mark it complete and rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by interrupted runs
        owner = stale.name.rsplit("-", 1)[-1]
        if not (owner.isdigit() and _pid_alive(int(owner))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text("ok\n")
        if final.exists() and not (final / MARKER).exists():
            shutil.rmtree(final)  # half-finished leftovers of an older layout
        if not final.exists():
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_kafka(settings: StackSettings, echo: Echo = print) -> Path:
    """Download the Kafka runtime jars once with mvn; return the ``libs`` directory."""
    home = settings.cache_dir / f"kafka-{settings.kafka_version}"
    if not (home / MARKER).exists():
        echo(f"fetching kafka {settings.kafka_version} jars with mvn…")
        started = time.monotonic()
        with _fresh_dir(home) as tmp:
            (tmp / "pom.xml").write_text(render_pom(settings.kafka_version))
            run_tool(
                [
                    "mvn",
                    "-B",
                    "-q",
                    "-f",
                    str(tmp / "pom.xml"),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={tmp / 'libs'}",
                ],
                "mvn fetch of kafka jars",
            )
        echo(f"fetched kafka {settings.kafka_version} in {time.monotonic() - started:.1f} s")
    return home / "libs"


def fetch_registry(settings: StackSettings, echo: Echo = print) -> Path:
    """Download and unpack the Apicurio registry once with mvn; return its runnable jar."""
    version = settings.registry_version
    home = settings.cache_dir / f"apicurio-{version}"
    if not (home / MARKER).exists():
        echo(f"fetching apicurio registry {version} with mvn…")
        started = time.monotonic()
        with _fresh_dir(home) as tmp:
            run_tool(
                [
                    "mvn",
                    "-B",
                    "-q",
                    "dependency:copy",
                    f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                    f"-DoutputDirectory={tmp}",
                ],
                "mvn fetch of apicurio registry",
                cwd=tmp,
            )
            archives = list(tmp.glob("*.tar.gz"))
            if not archives:
                raise LocalStackError(f"mvn fetched no apicurio archive into {tmp}")
            try:
                with tarfile.open(archives[0]) as tar:
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                        tar.extractall(tmp, filter="data")
                    else:
                        tar.extractall(tmp)  # our own pinned artifact
            except (OSError, tarfile.TarError) as exc:
                raise LocalStackError(f"cannot unpack {archives[0].name}: {exc}") from exc
            archives[0].unlink()
        echo(f"fetched apicurio registry {version} in {time.monotonic() - started:.1f} s")
    return _registry_jar(home)


def _registry_jar(home: Path) -> Path:
    for pattern in ("quarkus-run.jar", "*-runner.jar"):
        found = sorted(home.rglob(pattern), key=lambda p: len(p.parts))
        if found:
            return found[0]
    raise LocalStackError(f"no quarkus-run.jar or *-runner.jar under {home}")
