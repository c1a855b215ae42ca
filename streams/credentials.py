"""Kafka client credentials: one principal's SASL settings, and how each client library takes them.

Every Kafka client the project makes (librdkafka through confluent-kafka, kafka-python's admin
and consumers) gets its security settings from one :class:`KafkaAuth`, so a principal is
configured once per process. Where it comes from, in order:

1. ``SCREENING_KAFKA_USERNAME`` / ``SCREENING_KAFKA_PASSWORD`` (with
   ``SCREENING_KAFKA_SECURITY_PROTOCOL``, ``SCREENING_KAFKA_SASL_MECHANISM``,
   ``SCREENING_KAFKA_CA_FILE`` for SASL_SSL);
2. ``SCREENING_KAFKA_CREDENTIALS_FILE``, a JSON file (mode 0600) ``{"username", "password",
   "mechanism", "security_protocol", "ca_file"}`` as ``broker up`` writes for each principal;
3. for commands run against the local stack, the file of the command's own principal in the
   stack's state directory (``credentials/<principal>.json``);
4. none: PLAINTEXT (a cluster without authentication).

The password is never part of a ``repr`` or an error message. Imports only :mod:`streams.errors`,
so the local stack can use it too.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import ConfigError

PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
DEFAULT_MECHANISM = "SCRAM-SHA-512"

#: The principals of a deployment (SCRAM user names; the ACL principal is ``User:<name>``).
ADMIN = "admin"
PROCESSOR = "screening-processor"
PRODUCER = "screening-system"
OPERATOR = "screening-operator"
REGISTRY = "schema-registry"


def agency_user(agency: str) -> str:
    """The SCRAM user name of one agency, e.g. ``agency-ars.11``."""
    return f"agency-{agency}"


@dataclass(frozen=True)
class KafkaAuth:
    """One principal's security settings; ``username`` None means no SASL (PLAINTEXT or SSL only)."""

    security_protocol: str = "PLAINTEXT"
    mechanism: str = DEFAULT_MECHANISM
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    source: str = field(default="none", compare=False)  # where it came from, for messages (never the secret)

    def __post_init__(self) -> None:
        if self.security_protocol not in PROTOCOLS:
            raise ConfigError(
                f"{self.source}: security protocol {self.security_protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.mechanism not in MECHANISMS:
            raise ConfigError(f"{self.source}: SASL mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if self.sasl and not (self.username and self.password):
            raise ConfigError(f"{self.source}: {self.security_protocol} needs a user name and a password")

    @property
    def sasl(self) -> bool:
        """Whether the protocol authenticates with SASL."""
        return self.security_protocol.startswith("SASL_")

    @property
    def principal(self) -> str:
        """The broker-side principal (``User:<name>``), or ``User:ANONYMOUS`` without SASL."""
        return f"User:{self.username}" if self.sasl else "User:ANONYMOUS"

    def librdkafka(self) -> dict[str, Any]:
        """The settings for a confluent-kafka (librdkafka) client."""
        config: dict[str, Any] = {"security.protocol": self.security_protocol.lower()}
        if self.sasl:
            config.update(
                {"sasl.mechanism": self.mechanism, "sasl.username": self.username, "sasl.password": self.password}
            )
        if self.ca_file is not None:
            config["ssl.ca.location"] = str(self.ca_file)
        return config

    def kafka_python(self) -> dict[str, Any]:
        """The keyword arguments for a kafka-python client (admin, consumer, producer)."""
        config: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl:
            config.update(
                {
                    "sasl_mechanism": self.mechanism,
                    "sasl_plain_username": self.username,
                    "sasl_plain_password": self.password,
                }
            )
        if self.ca_file is not None:
            config["ssl_cafile"] = str(self.ca_file)
        return config

    def java_properties(self) -> dict[str, str]:
        """The settings for a Java client (``sasl.jaas.config`` and the rest)."""
        props = {"security.protocol": self.security_protocol}
        if self.sasl:
            module = (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if self.mechanism == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            props["sasl.mechanism"] = self.mechanism
            props["sasl.jaas.config"] = f'{module} required username="{self.username}" password="{self.password}";'
        return props

    def to_json(self) -> str:
        """The credentials file form (holds the password: write it 0600)."""
        body: dict[str, Any] = {
            "security_protocol": self.security_protocol,
            "mechanism": self.mechanism,
            "username": self.username,
            "password": self.password,
        }
        if self.ca_file is not None:
            body["ca_file"] = str(self.ca_file)
        return json.dumps(body, indent=2) + "\n"


NO_AUTH = KafkaAuth()


def load_credentials_file(path: Path) -> KafkaAuth:
    """Read a credentials file; refused when others may read it or it is malformed (naming the file)."""
    try:
        mode = path.stat().st_mode
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the Kafka credentials file: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: the Kafka credentials file is readable by others (chmod 600 it)")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON (line {exc.lineno})") from exc
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise ConfigError(f"{path}: expected a JSON object")
    unknown = set(body) - {"security_protocol", "mechanism", "username", "password", "ca_file"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    for key in body:
        if body[key] is not None and not isinstance(body[key], str):
            raise ConfigError(f"{path}: {key!r} must be a string")
    return KafkaAuth(
        security_protocol=body.get("security_protocol") or "SASL_PLAINTEXT",
        mechanism=body.get("mechanism") or DEFAULT_MECHANISM,
        username=body.get("username"),
        password=body.get("password"),
        ca_file=Path(body["ca_file"]) if body.get("ca_file") else None,
        source=str(path),
    )


def write_credentials_file(path: Path, auth: KafkaAuth) -> None:
    """Write ``auth`` to ``path`` with mode 0600 (created private, never world-readable in between)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(auth.to_json())


def stack_credentials_file(state_dir: Path, user: str) -> Path:
    """Where the local stack keeps the credentials of ``user``."""
    return state_dir / "credentials" / f"{user}.json"


def auth_from_env(environ: Mapping[str, str], fallback: Path | None = None) -> KafkaAuth:
    """The process's credentials from the environment (see the module docstring for the order).

    ``fallback`` is the local stack's file of the command's principal, used when the environment
    names none and the file exists.
    """
    user, password = environ.get("SCREENING_KAFKA_USERNAME"), environ.get("SCREENING_KAFKA_PASSWORD")
    protocol = environ.get("SCREENING_KAFKA_SECURITY_PROTOCOL") or None
    mechanism = environ.get("SCREENING_KAFKA_SASL_MECHANISM") or DEFAULT_MECHANISM
    ca = Path(environ["SCREENING_KAFKA_CA_FILE"]) if environ.get("SCREENING_KAFKA_CA_FILE") else None
    if user or password:
        return KafkaAuth(
            protocol or "SASL_PLAINTEXT",
            mechanism,
            user or None,
            password or None,
            ca,
            source="SCREENING_KAFKA_USERNAME/SCREENING_KAFKA_PASSWORD",
        )
    if file := environ.get("SCREENING_KAFKA_CREDENTIALS_FILE"):
        return load_credentials_file(Path(file))
    if fallback is not None and fallback.exists():
        return load_credentials_file(fallback)
    return KafkaAuth(protocol or "PLAINTEXT", mechanism, ca_file=ca, source="SCREENING_KAFKA_SECURITY_PROTOCOL")
