"""Settings of the local stack (cache, state, versions, ports, external endpoints), from the environment.

Both sides of the stack import this module: :mod:`streams.stack.fetch` and
:mod:`streams.stack.lifecycle`; it imports neither, so no circle remains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from streams.errors import ConfigError

T = TypeVar("T", int, float)

LOOPBACK = "127.0.0.1"
CCOMPAT_PATH = "/apis/ccompat/v7"


@dataclass(frozen=True)
class Endpoints:
    """Where clients connect; ``managed`` is True when this module owns a local process."""

    bootstrap_servers: str
    registry_url: str
    managed: bool


@dataclass(frozen=True)
class StackSettings:
    """Where to cache jars and keep state, which versions and ports; see :meth:`from_env`."""

    cache_dir: Path
    state_dir: Path
    kafka_version: str = "4.4.0"
    registry_version: str = "3.0.9"
    kafka_port: int = 19092
    registry_port: int = 18081
    external_bootstrap: str | None = None
    external_registry: str | None = None
    start_timeout_s: float = 90.0
    registry_allow_delete: bool = False  # SCREENING_REGISTRY_ALLOW_DELETE=1 turns the delete endpoints on

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StackSettings:
        """Build settings from environment variables, falling back to the defaults.

        Raises :class:`ConfigError` when a port or timeout is not a number or out of range.
        """
        home = Path(environ.get("HOME") or Path.home())
        cache = _path(environ.get("SCREENING_STREAMS_CACHE"), home) or (home / ".cache" / "screening-streams")
        state = _path(environ.get("SCREENING_STREAMS_STATE"), home) or cache / "run"
        kafka_port = _number(environ, "SCREENING_KAFKA_PORT", 19092, int)
        registry_port = _number(environ, "SCREENING_REGISTRY_PORT", 18081, int)
        for name, port, top in (
            ("SCREENING_KAFKA_PORT", kafka_port, 65534),
            ("SCREENING_REGISTRY_PORT", registry_port, 65535),
        ):
            if not 0 < port <= top:  # the controller listens on kafka port + 1
                raise ConfigError(f"{name}={port} is out of range 1..{top}")
        timeout = _number(environ, "SCREENING_START_TIMEOUT_S", 90.0, float)
        return cls(
            cache_dir=cache,
            state_dir=state,
            kafka_version=environ.get("SCREENING_KAFKA_VERSION") or "4.4.0",
            registry_version=environ.get("SCREENING_REGISTRY_VERSION") or "3.0.9",
            kafka_port=kafka_port,
            registry_port=registry_port,
            external_bootstrap=environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            external_registry=environ.get("SCHEMA_REGISTRY_URL") or None,
            start_timeout_s=timeout,
            registry_allow_delete=_flag(environ, "SCREENING_REGISTRY_ALLOW_DELETE"),
        )


def _path(raw: str | None, home: Path) -> Path | None:
    if not raw:
        return None
    return home / raw[2:] if raw.startswith("~/") else Path(raw)


def _flag(environ: Mapping[str, str], name: str) -> bool:
    """A boolean variable: 1/true/yes/on or 0/false/no/off (empty or unset: false)."""
    raw = (environ.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1 or 0)")


def _number(environ: Mapping[str, str], name: str, default: T, kind: Callable[[str], T]) -> T:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc


def endpoints_for(settings: StackSettings) -> Endpoints:
    """Return the endpoints clients should use, local or external, without starting anything."""
    return Endpoints(
        bootstrap_servers=settings.external_bootstrap or f"{LOOPBACK}:{settings.kafka_port}",
        registry_url=(settings.external_registry or f"http://{LOOPBACK}:{settings.registry_port}{CCOMPAT_PATH}").rstrip(
            "/"
        ),
        managed=settings.external_bootstrap is None or settings.external_registry is None,
    )
