"""Runtime settings, read once from the environment (every CLI flag falls back to these)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streams.credentials import NO_AUTH, KafkaAuth, auth_from_env
from streams.errors import ConfigError

INGRESS_TOPIC = "screening.results.v1"
DLQ_TOPIC = "screening.results.dlq.v1"
AUDIT_TOPIC = "screening.audit.v1"
#: Compacted topic of every DLQ replay (coordinates and counts only; see ``streams.dlq.ledger``).
REPLAY_LEDGER_TOPIC = "screening.results.dlq.replays.v1"
#: Internal topic of a recipient under small-cell protection: its held views and decisions.
HOLD_TOPIC = "screening.{recipient}.hold.v1"

GUARANTEES = ("exactly_once", "at_least_once")
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
DEFAULT_REGISTRY = "http://127.0.0.1:18081/apis/ccompat/v7"
#: The broker's default ``message.max.bytes`` (1 MiB + 12 bytes of batch overhead).
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: Room the dead-letter topic keeps above the ingress limit for the ``dlq.*`` headers.
DLQ_HEADROOM_BYTES = 64 * 1024


@dataclass(frozen=True)
class Settings:
    """Where the broker and registry are, what to read, how to write."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    registry_url: str = DEFAULT_REGISTRY
    topic_prefix: str = ""  # isolates tests and staging environments sharing a cluster
    app_id: str = "screening-streams"
    policy_dir: Path | None = None
    keys_file: Path | None = None
    geography_file: Path | None = None  # JSON departments -> region added to the routing table
    public_keys_dir: Path | None = None  # agencies' public keys (streams.crypto); required when policies encrypt
    key_epoch_s: int = 86_400  # a data key serves one agency for at most this long (UTC days by default)
    public_keys_reload_s: float = 30.0  # how often a worker looks for newly imported public keys
    ingress_partitions: int = 6
    output_partitions: int = 3
    replication_factor: int = 1
    batch_size: int = 500
    batch_within_s: float = 0.05
    state_dir: Path = Path(".state")
    log_level: str = "warning"
    processing_guarantee: str = "exactly_once"  # or "at_least_once"
    # The runner's Kafka clients (confluent-kafka); see streams/kafka/transactional.py.
    instance_id: str | None = None  # group.instance.id (static membership); unique per worker
    session_timeout_ms: int = 45_000  # consumer group session
    transaction_timeout_ms: int = 60_000  # the broker aborts a zombie's open transaction after this
    ingress_max_message_bytes: int = BROKER_DEFAULT_MAX_MESSAGE_BYTES  # ingress topic max.message.bytes
    # The audit trail (streams.audit): on when an audit key file is given.
    audit_key_file: Path | None = None  # the audit-only secret (``screening-streams audit keygen``)
    audit_retention_days: int = 366  # retention of the audit topic
    # The worker's web port: /metrics, /healthz, /readyz (0, the default, turns it off; compose sets 6066).
    web_port: int = 0  # off by default: several workers share a host in tests and benches
    web_bind: str = "127.0.0.1"  # loopback unless configured
    # Small-cell protection (streams/policy/smallcell.py): a shorter window than the policy's
    # (tests, staging; never longer) and the grace after a window's end before it closes.
    kanon_window_s: int | None = None
    kanon_grace_s: int = 600
    # The principal every Kafka client of this process authenticates as (streams.credentials).
    kafka_auth: KafkaAuth = NO_AUTH

    @property
    def dlq_max_message_bytes(self) -> int:
        """The dead-letter topic's limit: the largest ingress record plus its ``dlq.*`` headers."""
        return self.ingress_max_message_bytes + DLQ_HEADROOM_BYTES

    @property
    def ingress_topic(self) -> str:
        """The ingress topic, with the prefix."""
        return self.topic_prefix + INGRESS_TOPIC

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic, with the prefix."""
        return self.topic_prefix + DLQ_TOPIC

    @property
    def audit_topic(self) -> str:
        """The audit topic, with the prefix."""
        return self.topic_prefix + AUDIT_TOPIC

    def hold_topic(self, recipient: str) -> str:
        """The small-cell hold topic of ``recipient``, with the prefix."""
        return self.topic_prefix + HOLD_TOPIC.format(recipient=recipient)

    @property
    def replay_ledger_topic(self) -> str:
        """The DLQ replay ledger topic, with the prefix."""
        return self.topic_prefix + REPLAY_LEDGER_TOPIC

    @property
    def group_id(self) -> str:
        """The consumer group of the workers (faust uses the app id)."""
        return self.topic_prefix + self.app_id

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_ENV: dict[str, tuple[str, type]] = {
    "bootstrap_servers": ("KAFKA_BOOTSTRAP_SERVERS", str),
    "registry_url": ("SCHEMA_REGISTRY_URL", str),
    "topic_prefix": ("SCREENING_TOPIC_PREFIX", str),
    "app_id": ("SCREENING_APP_ID", str),
    "policy_dir": ("SCREENING_POLICY_DIR", Path),
    "keys_file": ("SCREENING_KEYS_FILE", Path),
    "geography_file": ("SCREENING_GEOGRAPHY_FILE", Path),
    "public_keys_dir": ("SCREENING_PUBLIC_KEYS_DIR", Path),
    "key_epoch_s": ("SCREENING_KEY_EPOCH_S", int),
    "public_keys_reload_s": ("SCREENING_PUBLIC_KEYS_RELOAD_S", float),
    "ingress_partitions": ("SCREENING_INGRESS_PARTITIONS", int),
    "output_partitions": ("SCREENING_OUTPUT_PARTITIONS", int),
    "replication_factor": ("SCREENING_REPLICATION_FACTOR", int),
    "batch_size": ("SCREENING_BATCH_SIZE", int),
    "batch_within_s": ("SCREENING_BATCH_WITHIN_S", float),
    "state_dir": ("SCREENING_STATE_DIR", Path),
    "log_level": ("SCREENING_LOG_LEVEL", str),
    "processing_guarantee": ("SCREENING_PROCESSING_GUARANTEE", str),
    "instance_id": ("SCREENING_INSTANCE_ID", str),
    "session_timeout_ms": ("SCREENING_SESSION_TIMEOUT_MS", int),
    "transaction_timeout_ms": ("SCREENING_TRANSACTION_TIMEOUT_MS", int),
    "ingress_max_message_bytes": ("SCREENING_INGRESS_MAX_MESSAGE_BYTES", int),
    "audit_key_file": ("SCREENING_AUDIT_KEY_FILE", Path),
    "audit_retention_days": ("SCREENING_AUDIT_RETENTION_DAYS", int),
    "web_port": ("SCREENING_WEB_PORT", int),
    "web_bind": ("SCREENING_WEB_BIND", str),
    "kanon_window_s": ("SCREENING_KANON_WINDOW_S", int),
    "kanon_grace_s": ("SCREENING_KANON_GRACE_S", int),
}


def settings_from_env(environ: Mapping[str, str] | None = None, *, credentials: Path | None = None) -> Settings:
    """Build :class:`Settings` from environment variables, failing fast on bad values.

    ``credentials`` is the credentials file to use when the environment names none (the CLI
    passes the local stack's file of the command's principal; see :mod:`streams.credentials`).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {"kafka_auth": auth_from_env(env, fallback=credentials)}
    for name, (variable, kind) in _ENV.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[name] = kind(raw)
        except ValueError as exc:
            raise ConfigError(f"environment {variable}={raw!r}: expected {kind.__name__}") from exc
    settings = Settings(**values)
    if settings.processing_guarantee not in GUARANTEES:
        raise ConfigError(
            f"environment SCREENING_PROCESSING_GUARANTEE={settings.processing_guarantee!r}: "
            f"expected one of {', '.join(GUARANTEES)}"
        )
    if settings.batch_size < 1 or settings.ingress_partitions < 1 or settings.output_partitions < 1:
        raise ConfigError("batch size and partition counts must be at least 1")
    if settings.session_timeout_ms < 1000 or settings.transaction_timeout_ms < 1000:
        raise ConfigError(
            "environment SCREENING_SESSION_TIMEOUT_MS and SCREENING_TRANSACTION_TIMEOUT_MS: at least 1000 ms"
        )
    if not 60 <= settings.key_epoch_s <= 366 * 86_400:
        raise ConfigError("environment SCREENING_KEY_EPOCH_S: between 60 s and 366 days")
    if not 0 < settings.public_keys_reload_s <= 86_400:
        raise ConfigError("environment SCREENING_PUBLIC_KEYS_RELOAD_S: between 0 (excluded) and 86400 s")
    if settings.ingress_max_message_bytes < 1024:
        raise ConfigError("environment SCREENING_INGRESS_MAX_MESSAGE_BYTES: at least 1024 bytes")
    if settings.audit_retention_days < 1:
        raise ConfigError("environment SCREENING_AUDIT_RETENTION_DAYS: at least 1 day")
    if not 0 <= settings.web_port <= 65535:
        raise ConfigError("environment SCREENING_WEB_PORT: between 0 (off) and 65535")
    if settings.kanon_window_s is not None and not 1 <= settings.kanon_window_s <= 7 * 86_400:
        raise ConfigError("environment SCREENING_KANON_WINDOW_S: between 1 s and 7 days (and not above the policy's)")
    if not 0 <= settings.kanon_grace_s <= 86_400:
        raise ConfigError("environment SCREENING_KANON_GRACE_S: between 0 and 86400 s")
    return settings


def env_var(field_name: str) -> str:
    """The environment variable behind a settings field (for CLI ``envvar=``)."""
    return _ENV[field_name][0]
