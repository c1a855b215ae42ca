"""Bring a real local Kafka broker (KRaft) and Apicurio schema registry up and down.

No Docker: the jars are fetched once with ``mvn`` into a cache outside the repository and
run with ``java`` as detached processes on loopback, with pid files in the state dir.
Setting ``KAFKA_BOOTSTRAP_SERVERS`` / ``SCHEMA_REGISTRY_URL`` uses external services instead.

The registry keeps its schemas in the broker itself (Apicurio's ``kafkasql`` storage: a journal
topic with unlimited retention, replayed at start), so ids survive a registry restart, the
way Confluent's registry keeps ``_schemas``. Its delete endpoints are off unless
``SCREENING_REGISTRY_ALLOW_DELETE=1``, and cannot be switched on at run time. The state dir
and everything in it is private to the user (directories 0700, files 0600): the ingress and
dead-letter segments hold raw NIRs.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from streams.credentials import ADMIN, NO_AUTH, KafkaAuth, auth_from_env, stack_credentials_file
from streams.errors import LocalStackError
from streams.stack.fetch import fetch_kafka, fetch_registry, run_tool
from streams.stack.registry import (  # noqa: F401  (REGISTRY_TOPICS, render_registry_flags: re-exported)
    REGISTRY_TOPIC_CONFIGS,
    REGISTRY_TOPICS,
    prepare_broker,
    render_registry_flags,
    write_registry_config,
)
from streams.stack.security import credentials, format_scram_arguments, redact_scram, sasl_server_properties
from streams.stack.settings import LOOPBACK, Endpoints, StackSettings, endpoints_for

Echo = Callable[[str], None]

STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 20
_KAFKA_MAIN = "kafka.Kafka"
_REGISTRY_MARK = "apicurio-"  # in the cache dir name of the jar
PRIVATE_DIR, PRIVATE_FILE, PRIVATE_UMASK = 0o700, 0o600, 0o077

# Runs as ``python -c``: starts argv[3:] in its own session, logging to argv[1], in cwd
# argv[2], prints the pid and exits, so the service is re-parented and outlives this process.
# umask 077: whatever the service writes (segments, logs) is readable by its user only.
_LAUNCHER = """import os, subprocess, sys
os.umask(0o077)
with open(sys.argv[1], "wb") as log:
    child = subprocess.Popen(sys.argv[3:], cwd=sys.argv[2], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
print(child.pid)
"""

_LOG4J2_YAML = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
"""


def render_server_properties(settings: StackSettings, admin: KafkaAuth) -> str:
    """Render the single-node (broker+controller) KRaft ``server.properties``: SASL only, ACLs enforced."""
    port, ctl = settings.kafka_port, settings.kafka_port + 1
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{ctl}",
        "controller.listener.names": "CONTROLLER",
        **sasl_server_properties(port, ctl, LOOPBACK, admin),
        "log.dirs": str(settings.state_dir / "kafka-data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def new_cluster_id() -> str:
    """Return a random 22-character base64url KRaft cluster id (never starting with '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def check_tools(path: str | None = None) -> None:
    """Raise :class:`LocalStackError` unless ``java`` and ``mvn`` are on ``path`` (or $PATH)."""
    hints = {
        "java": "a JDK 17+ (e.g. apt-get install openjdk-17-jre-headless)",
        "mvn": "Maven (e.g. apt-get install maven)",
    }
    for tool, hint in hints.items():
        if shutil.which(tool, path=path) is None:
            raise LocalStackError(f"{tool} not found on PATH: install {hint}")


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``log`` ('' when it does not exist)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def make_private(root: Path) -> None:
    """Create ``root`` if needed and make it and everything under it private (dirs 0700, files 0600).

    Files the services create later are private too (their launcher sets umask 077); this
    also fixes a state dir left by an older version with group- or world-readable segments.
    """
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(PRIVATE_DIR)
    for top, dirs, files in os.walk(root):
        for name in dirs:
            with suppress(FileNotFoundError):
                (Path(top) / name).chmod(PRIVATE_DIR)
        for name in files:
            path = Path(top) / name
            with suppress(FileNotFoundError):
                if not path.is_symlink() and path.stat().st_mode & 0o177:
                    path.chmod(PRIVATE_FILE)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (also when the file already exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


@dataclass
class _Service:
    name: str  # "kafka" or "registry": key in status() and pid/log file stem
    label: str  # for humans, with the version
    where: str  # address clients use
    marker: str  # substring of the command line that identifies our process
    probe: Callable[[], bool]  # True when the service answers a real request
    state_dir: Path
    external: bool
    pid: int = 0
    began: float = 0.0
    fresh: bool = False  # started by this call (vs. reused)

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.state_dir / f"{self.name}.log"


def admin_auth(settings: StackSettings) -> KafkaAuth:
    """How this module talks to the broker: the local stack's admin, or the environment's principal."""
    if settings.external_bootstrap:
        return auth_from_env(os.environ)
    exists = stack_credentials_file(settings.state_dir, ADMIN).exists()
    return credentials(settings.state_dir, ADMIN) if exists else NO_AUTH


def _services(settings: StackSettings) -> tuple[_Service, _Service]:
    ends, state = endpoints_for(settings), settings.state_dir
    local_port = None if settings.external_bootstrap else settings.kafka_port
    kafka = _Service(
        "kafka",
        f"kafka {settings.kafka_version}",
        ends.bootstrap_servers,
        _KAFKA_MAIN,
        lambda: _kafka_answers(ends.bootstrap_servers, admin_auth(settings), local_port),
        state,
        bool(settings.external_bootstrap),
    )
    registry = _Service(
        "registry",
        f"apicurio registry {settings.registry_version}",
        ends.registry_url,
        _REGISTRY_MARK,
        lambda: _registry_answers(ends.registry_url),
        state,
        bool(settings.external_registry),
    )
    return kafka, registry


def _alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs (not a zombie) and, where /proc exists, its cmdline has marker.

    An empty cmdline means the process is exiting: still alive, its ports may be bound.
    """
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or someone else's process reusing the pid
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return not cmdline or marker in cmdline
    except (OSError, IndexError):
        return False


def _running_pid(svc: _Service) -> int | None:
    try:
        pid = int(svc.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid, svc.marker) else None


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _spawn(svc: _Service, cmd: list[str], cwd: Path) -> None:
    """Start ``cmd`` detached (re-parented, own session) logging to ``svc.log``; record its pid."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(svc.log), str(cwd), *cmd],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        pid = int(done.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise LocalStackError(f"cannot start {svc.name} ({cmd[0]}): {exc}") from exc
    tmp = svc.pid_file.with_suffix(".pid.tmp")
    _write_private(tmp, f"{pid}\n")
    tmp.replace(svc.pid_file)
    svc.pid, svc.began, svc.fresh = pid, time.monotonic(), True


def _kafka_answers(bootstrap: str, auth: KafkaAuth, local_port: int | None = None, timeout_s: float = 3.0) -> bool:
    """True when a real Kafka metadata request to ``bootstrap`` succeeds."""
    if local_port is not None and _port_open(local_port) is False:
        return False  # cheap pre-check while a local broker boots
    from kafka import KafkaAdminClient

    wanted = {
        "bootstrap_servers": bootstrap,
        "request_timeout_ms": int(timeout_s * 1000),
        "bootstrap_timeout_ms": int(timeout_s * 1000),
        "api_version_auto_timeout_ms": int(timeout_s * 1000),
        "client_id": "localstack",
        **auth.kafka_python(),
    }
    config = {k: v for k, v in wanted.items() if k in KafkaAdminClient.DEFAULT_CONFIG}
    quiet = logging.getLogger("kafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # connection-refused noise while the broker boots
    try:
        admin = KafkaAdminClient(**config)
        try:
            admin.list_topics()
        finally:
            admin.close()
        return True
    except Exception:  # kafka-python raises many types; any failure means "not yet"
        return False
    finally:
        quiet.setLevel(level)


def _registry_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET ``url``/subjects answers 200 and the registry's storage is ready.

    Apicurio (kafkasql) serves requests while it still replays its journal; ``/health/ready``
    says 503 until it is done (404, no such endpoint, counts as ready: another registry).
    """
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s) as resp:
            if int(resp.status) != 200:
                return False
    except (OSError, urllib.error.URLError, ValueError):
        return False
    try:
        with urllib.request.urlopen(f"{url.split('/apis/', 1)[0]}/health/ready", timeout=timeout_s) as resp:
            return int(resp.status) == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    except (OSError, urllib.error.URLError, ValueError):
        return False


@contextmanager
def _locked(settings: StackSettings) -> Iterator[None]:
    """Serialise up/down/wipe across processes sharing one state dir."""
    settings.state_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    settings.state_dir.chmod(PRIVATE_DIR)
    lock = os.open(settings.state_dir / ".lock", os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    with os.fdopen(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_free(ports: tuple[int, ...], hint: str) -> None:
    for port in (p for p in ports if _port_open(p)):
        raise LocalStackError(f"port {port} is in use by a process this module does not own; stop it or set {hint}")


def _spawn_kafka(settings: StackSettings, svc: _Service, libs: Path, echo: Echo) -> None:
    state = settings.state_dir
    props, log4j = state / "server.properties", state / "log4j2.yaml"
    formatted = (state / "kafka-data" / "meta.properties").exists()
    if formatted and not stack_credentials_file(state, ADMIN).exists():
        raise LocalStackError(
            f"{state / 'kafka-data'} was formatted without SASL credentials (an older stack): "
            "`screening-streams broker wipe` deletes it (and its topics) so the next `broker up` starts afresh"
        )
    admin = credentials(state, ADMIN)
    _write_private(props, render_server_properties(settings, admin))
    _write_private(log4j, _LOG4J2_YAML)
    classpath = f"{libs}/*"
    if not formatted:
        echo("formatting kafka storage (admin SCRAM credential bootstrapped)…")
        run_tool(
            [
                "java",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                new_cluster_id(),
                "-c",
                str(props),
                *format_scram_arguments(admin),
            ],
            "kafka storage format",
            redact=redact_scram,
        )
        make_private(state)  # the format tool ran with this process's umask
    echo(f"starting kafka {settings.kafka_version}…")
    _spawn(
        svc,
        [
            "java",
            "-Xms256m",
            "-Xmx768m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath,
            _KAFKA_MAIN,
            str(props),
        ],
        state,
    )


def _spawn_registry(settings: StackSettings, svc: _Service, jar: Path, echo: Echo) -> None:
    echo(f"starting apicurio registry {settings.registry_version}…")
    bootstrap = endpoints_for(settings).bootstrap_servers
    for name in ("registry-snapshots", "registry-import"):
        (settings.state_dir / name).mkdir(mode=PRIVATE_DIR, exist_ok=True)
    flags = render_registry_flags(settings, bootstrap)
    workdir = write_registry_config(settings.state_dir, sasl=admin_auth(settings).sasl)
    _spawn(svc, ["java", "-Xmx384m", *flags, "-jar", str(jar)], workdir)


def _wait_one(svc: _Service, timeout_s: float, echo: Echo, abort: threading.Event) -> None:
    """Poll ``svc`` until it answers; fail fast if it dies or passes its deadline."""
    while not svc.probe():
        if abort.is_set():
            return
        took = time.monotonic() - svc.began
        if not _alive(svc.pid, svc.marker):
            problem = f"{svc.name} (pid {svc.pid}) exited during startup"
        elif took > timeout_s:
            problem = f"{svc.name} did not answer on {svc.where} within {took:.1f} s"
        else:
            time.sleep(0.25)
            continue
        tail = log_tail(svc.log) or "(log is empty)"
        raise LocalStackError(f"{problem}; last lines of {svc.log}:\n{tail}")
    if svc.fresh:
        echo(f"{svc.label} up on {svc.where} in {time.monotonic() - svc.began:.1f} s")


def _wait_all(services: list[_Service], timeout_s: float, echo: Echo) -> None:
    """Wait for all services at once (one thread each); raise the first failure promptly."""
    abort = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        futures = [pool.submit(_wait_one, svc, timeout_s, echo, abort) for svc in services]
        wait(futures, return_when=FIRST_EXCEPTION)
        abort.set()
    for future in futures:
        future.result()


def up(settings: StackSettings, *, echo: Echo = print, users: Iterable[str] = ()) -> Endpoints:
    """Start (or reuse) the local broker and registry; return where clients connect.

    Services with an external address configured are not started. Jars are fetched first
    (one mvn at a time: they share ~/.m2), then both processes are started, then both
    awaited. On failure, processes started by this call are stopped again. Once the local
    broker answers, the admin gives every principal (the stack's own, and ``users``, e.g. one
    per agency) its SCRAM credential, with its credentials file under ``<state>/credentials``.
    """
    ends = endpoints_for(settings)
    kafka, registry = _services(settings)
    for svc in (kafka, registry):
        if svc.external:
            echo(f"using external {svc.name} at {svc.where}")
    if not ends.managed:
        return ends
    check_tools()
    local = [svc for svc in (kafka, registry) if not svc.external]
    with _locked(settings):
        try:
            for svc in local:
                if (pid := _running_pid(svc)) is not None:
                    echo(f"{svc.label} already running (pid {pid}) on {svc.where}")
                    svc.pid, svc.began = pid, time.monotonic()
            jar = fetch_registry(settings, echo) if registry in local and not registry.pid else None
            libs = fetch_kafka(settings, echo) if kafka in local and not kafka.pid else None
            if libs is not None:
                _check_free(
                    (settings.kafka_port, settings.kafka_port + 1), "SCREENING_KAFKA_PORT / KAFKA_BOOTSTRAP_SERVERS"
                )
            if jar is not None:
                _check_free((settings.registry_port,), "SCREENING_REGISTRY_PORT / SCHEMA_REGISTRY_URL")
            make_private(settings.state_dir)
            if libs is not None:
                _spawn_kafka(settings, kafka, libs, echo)
            if kafka in local:
                # Users, the registry's topics and ACLs first: the registry's storage is on the broker.
                _wait_all([kafka], settings.start_timeout_s, echo)
                prepare_broker(ends.bootstrap_servers, admin_auth(settings), settings.state_dir, users)
            if jar is not None:
                _spawn_registry(settings, registry, jar, echo)
            _wait_all(local, settings.start_timeout_s, echo)
        except BaseException:
            _stop([svc for svc in local if svc.fresh], echo=lambda _line: None)
            raise
    return ends


def _stop(services: list[_Service], echo: Echo) -> None:
    """SIGTERM every running service, wait up to STOP_TIMEOUT_S, then SIGKILL; drop pid files."""
    running = [(svc, pid) for svc in services if (pid := _running_pid(svc)) is not None]
    began = time.monotonic()
    for svc, pid in running:
        echo(f"stopping {svc.name} (pid {pid})…")
        with suppress(ProcessLookupError):  # _alive() already ruled out foreign pids
            os.kill(pid, signal.SIGTERM)
    for svc, pid in running:
        while _alive(pid, svc.marker) and time.monotonic() - began < STOP_TIMEOUT_S:
            time.sleep(0.2)
        if _alive(pid, svc.marker):
            echo(f"{svc.name} ignored SIGTERM for {STOP_TIMEOUT_S:g} s; killing it")
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid, svc.marker) and time.monotonic() - began < STOP_TIMEOUT_S + 5:
                time.sleep(0.1)
            if _alive(pid, svc.marker):
                raise LocalStackError(f"{svc.name} (pid {pid}) survived SIGKILL; stop it by hand")
        echo(f"{svc.name} stopped in {time.monotonic() - began:.1f} s")
    for svc in services:
        svc.pid_file.unlink(missing_ok=True)


def down(settings: StackSettings, *, echo: Echo = print, only: str | None = None) -> None:
    """Stop the local broker and registry recorded in the state dir; keep the jar cache.

    ``only="kafka"`` (or ``"registry"``) stops just that one, e.g. for broker- or
    registry-restart tests: the registry's schemas are in the broker and survive both.
    """
    if not settings.state_dir.exists():
        echo("nothing to stop")
        return
    with _locked(settings):
        services = [svc for svc in _services(settings) if only is None or svc.name == only]
        if not any(_running_pid(svc) is not None for svc in services):
            echo("nothing running")
        _stop(services, echo)


def status(settings: StackSettings) -> dict[str, str]:
    """Describe each service: ``up (pid N) addr``, ``starting …``, ``external …`` or ``down``."""
    report: dict[str, str] = {}
    for svc in _services(settings):
        if svc.external:
            answering = "answering" if svc.probe() else "not answering"
            report[svc.name] = f"external {svc.where} ({answering})"
        elif (pid := _running_pid(svc)) is None:
            report[svc.name] = "down"
        else:
            report[svc.name] = f"{'up' if svc.probe() else 'starting'} (pid {pid}) {svc.where}"
    return report


def wipe(settings: StackSettings) -> None:
    """Stop everything and delete broker data (with the registry's schemas), logs and configs; keep the jars."""
    down(settings, echo=lambda _line: None)
    for name in (
        "kafka-data",
        "server.properties",
        "log4j2.yaml",
        "kafka.log",
        "registry.log",
        "registry-snapshots",
        "registry-import",
        "registry-run",
        "credentials",
    ):
        target = settings.state_dir / name
        try:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        except OSError as exc:
            raise LocalStackError(f"cannot delete {target}: {exc}") from exc
