"""The local Apicurio registry's configuration and the broker preparation it needs.

Kept apart from :mod:`streams.stack.lifecycle` (processes) so that what the registry is told,
and what the broker is given before it starts (users, topics, ACLs), are each in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from streams.credentials import REGISTRY, KafkaAuth
from streams.errors import LocalStackError
from streams.stack.security import (
    SERVICE_USERS,
    apply_registry_acls,
    credentials,
    ensure_users,
    registry_client_properties,
)
from streams.stack.settings import LOOPBACK, StackSettings

#: Topics of the registry's kafkasql storage (journal of every change, and its snapshots).
REGISTRY_TOPICS = ("_apicurio-kafkasql-journal", "_apicurio-kafkasql-snapshots", "_apicurio-registry-events")
#: Unlimited retention: the journal *is* the registry's storage.
REGISTRY_TOPIC_CONFIGS = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


def render_registry_flags(settings: StackSettings, bootstrap_servers: str) -> list[str]:
    """The ``-D`` flags of the local Apicurio 3.0.x registry (names checked against 3.0.9).

    * ``apicurio.storage.kind=kafkasql``: schemas live in the journal topic on the broker at
      ``bootstrap_servers`` and are replayed at start, so ids survive a restart. The topics
      are created beforehand with unlimited retention (:data:`REGISTRY_TOPICS`).
    * ``apicurio.rules.global.compatibility=FORWARD_TRANSITIVE``: the default rule of every
      subject (see :data:`streams.contracts.registry.COMPATIBILITY`), from configuration, so it
      holds after a restart even though 3.0.9 loses artifact rules then.
    * ``apicurio.rest.deletion.{group,artifact,artifact-version}.enabled``: false unless
      ``SCREENING_REGISTRY_ALLOW_DELETE`` asks for them; their ``.dynamic.allow=false`` keeps
      anyone from switching them on at run time through the admin API.
    """
    journal, snapshots, events = REGISTRY_TOPICS
    deletion = "true" if settings.registry_allow_delete else "false"
    props = {
        "quarkus.http.port": str(settings.registry_port),
        "quarkus.http.host": LOOPBACK,
        "apicurio.storage.kind": "kafkasql",
        "apicurio.kafkasql.bootstrap.servers": bootstrap_servers,
        "apicurio.kafkasql.topic": journal,
        "apicurio.kafkasql.snapshots.topic": snapshots,
        "apicurio.events.kafka.topic": events,
        "apicurio.storage.snapshot.location": str(settings.state_dir / "registry-snapshots"),
        "apicurio.import.work-dir": str(settings.state_dir / "registry-import"),
        "quarkus.http.access-log.enabled": "false",  # one log line per request: a flood fills the disk
        # Apicurio 3.0.9's kafkasql storage does not bring artifact rules back after a restart
        # (tests/integration/test_registry_restart.py): the default global rule, from this
        # configuration rather than storage, keeps every subject FORWARD_TRANSITIVE regardless.
        "apicurio.rules.global.compatibility": "FORWARD_TRANSITIVE",
    }
    for what in ("group", "artifact", "artifact-version"):
        props[f"apicurio.rest.deletion.{what}.enabled"] = deletion
        props[f"apicurio.rest.deletion.{what}.enabled.dynamic.allow"] = "false"
    if not settings.registry_allow_delete:
        # The Confluent-compatible API ignores the flags above (3.0.9: DELETE
        # /subjects/<s>?permanent=true removes the schema and its id): deny DELETE outright.
        # Configuring any HTTP permission turns Quarkus' checks on: every other request is permitted.
        props["quarkus.http.auth.permission.nodelete.paths"] = "/*"
        props["quarkus.http.auth.permission.nodelete.methods"] = "DELETE"
        props["quarkus.http.auth.permission.nodelete.policy"] = "deny"
        props["quarkus.http.auth.permission.others.paths"] = "/*"
        props["quarkus.http.auth.permission.others.policy"] = "permit"
    return [f"-D{key}={value}" for key, value in props.items()]


def prepare_broker(
    bootstrap_servers: str, admin_auth: KafkaAuth, state_dir: Path, users: Iterable[str], timeout_s: float = 30.0
) -> None:
    """As the admin: create the stack's SCRAM users, the registry's topics and the registry's ACLs.

    The kafkasql topics get unlimited retention (the broker's default is 7 days). Every step is
    idempotent, so this runs at each ``broker up``.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="localstack",
            request_timeout_ms=int(timeout_s * 1000),
            **admin_auth.kafka_python(),
        )
    except KafkaError as exc:
        raise LocalStackError(
            f"cannot reach kafka at {bootstrap_servers} as {admin_auth.principal} to prepare it: {exc}"
        ) from exc
    try:
        if admin_auth.sasl:
            ensure_users(admin, state_dir, [*SERVICE_USERS, *users])
            apply_registry_acls(admin, REGISTRY_TOPICS)
        existing = set(admin.list_topics())
        missing = [
            NewTopic(t, 1, 1, topic_configs=dict(REGISTRY_TOPIC_CONFIGS)) for t in REGISTRY_TOPICS if t not in existing
        ]
        if missing:
            with suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    except KafkaError as exc:
        raise LocalStackError(f"cannot create the registry topics {REGISTRY_TOPICS}: {exc}") from exc
    finally:
        admin.close()


def write_registry_config(state_dir: Path, sasl: bool) -> Path:
    """Write the registry's Kafka credentials where Quarkus reads them; return its working directory.

    Quarkus reads ``config/application.properties`` under its working directory: the password
    stays in a 0600 file instead of the command line (which ``ps`` shows to every user).
    """
    run = state_dir / "registry-run"
    for folder in (run, run / "config"):
        folder.mkdir(mode=0o700, exist_ok=True)  # parents=True would create it 0755
        folder.chmod(0o700)  # an older stack's may be 0755
    props = registry_client_properties(credentials(state_dir, REGISTRY)) if sasl else {}
    text = "".join(f"{key}={_escape(value)}\n" for key, value in props.items())
    target = run / "config" / "application.properties"
    target.touch(mode=0o600, exist_ok=True)
    target.chmod(0o600)
    target.write_text(text, encoding="utf-8")
    return run


def _escape(value: str) -> str:
    """A Java properties value (backslashes, and ``=``/``:`` kept literal)."""
    return value.replace("\\", "\\\\").replace("=", "\\=").replace(":", "\\:")
