"""The local stack's authentication: SCRAM principals, the broker's SASL listeners, the registry's client.

The local broker accepts SASL only (SCRAM-SHA-512 on the client listener, PLAIN on the
controller listener, both on loopback) and runs the standard KRaft authorizer with nothing
allowed by default (``allow.everyone.if.no.acl.found=false``); ``User:admin`` is the one super
user. The admin's credential is bootstrapped into the storage at format time
(``StorageTool format --add-scram``); every other principal is created through the admin API
(kafka-python ≥ 3.0, ``alter_user_scram_credentials``) once the broker answers. Passwords are
random, made at ``broker up`` and kept as one credentials file per principal under
``<state>/credentials`` (0600): the files clients are given (see :mod:`streams.credentials`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path

from streams.credentials import (
    ADMIN,
    OPERATOR,
    PROCESSOR,
    PRODUCER,
    REGISTRY,
    KafkaAuth,
    load_credentials_file,
    stack_credentials_file,
    write_credentials_file,
)
from streams.errors import LocalStackError

#: The principals every local stack has (agencies come from the policies: ``broker up`` adds them).
SERVICE_USERS = (PROCESSOR, PRODUCER, OPERATOR, REGISTRY)
MECHANISM = "SCRAM-SHA-512"
#: How long an authenticated connection lives before it must authenticate again (KIP-368).
REAUTH_MS = 300_000
_SCRAM_ITERATIONS = 8192
_PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
_SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule"


def credentials(state_dir: Path, user: str) -> KafkaAuth:
    """The stack's credentials of ``user``: read from its file, or made (random password) and written 0600."""
    path = stack_credentials_file(state_dir, user)
    if path.exists():
        return load_credentials_file(path)
    auth = KafkaAuth("SASL_PLAINTEXT", MECHANISM, user, secrets.token_urlsafe(24), source=str(path))
    write_credentials_file(path, auth)
    return auth


def sasl_server_properties(port: int, controller_port: int, loopback: str, admin: KafkaAuth) -> dict[str, str]:
    """The ``server.properties`` entries of a single-node broker+controller that authenticates everyone."""
    scram_login = f'{_SCRAM} required username="{ADMIN}" password="{admin.password}";'
    plain_login = f'{_PLAIN} required username="{ADMIN}" password="{admin.password}" user_{ADMIN}="{admin.password}";'
    return {
        "listeners": f"SASL_PLAINTEXT://{loopback}:{port},CONTROLLER://{loopback}:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://{loopback}:{port}",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config": scram_login,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain_login,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{ADMIN}",
        # Live connections re-authenticate every 5 minutes: a deleted user or a changed password
        # takes effect on connections already open, not only on new ones.
        "connections.max.reauth.ms": str(REAUTH_MS),
    }


def format_scram_arguments(admin: KafkaAuth) -> list[str]:
    """``StorageTool format`` arguments that store the admin's SCRAM credential in the new cluster."""
    return ["--add-scram", f"{MECHANISM}=[name={admin.username},password={admin.password}]"]


def redact_scram(text: str) -> str:
    """``text`` (a tool's output) without any line that carries SCRAM material (salts, keys, passwords)."""
    lines = text.splitlines()
    hidden = ("scram", "salt", "password", "iterations")
    return "\n".join(
        "(a line about SCRAM credentials, not shown)" if any(h in ln.lower() for h in hidden) else ln for ln in lines
    )


def ensure_users(admin_client: object, state_dir: Path, users: Iterable[str]) -> list[str]:
    """Create or refresh the SCRAM credential of every user (its password from its file); return them.

    Upserting is idempotent, so ``broker up`` runs it every time: a principal added to the
    policies (a new agency) gets its credential on the next ``broker up``.
    """
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    names = sorted(set(users) - {ADMIN})
    upserts = []
    for user in names:
        auth = credentials(state_dir, user)
        upserts.append(
            UserScramCredentialUpsertion(
                user, ScramMechanism.SCRAM_SHA_512, auth.password, iterations=_SCRAM_ITERATIONS
            )
        )
    if not upserts:
        return []
    try:
        outcome = admin_client.alter_user_scram_credentials(upserts)  # type: ignore[attr-defined]
    except Exception as exc:  # kafka-python raises many types
        raise LocalStackError(f"cannot create the stack's SCRAM users: {type(exc).__name__}") from exc
    failed = {user: error for user, error in dict(outcome).items() if error}
    if failed:
        raise LocalStackError(
            f"the broker refused SCRAM credentials for {sorted(failed)}: {sorted(set(failed.values()))}"
        )
    return names


def registry_acls(registry_topics: Iterable[str]) -> list[tuple[str, str, str, str]]:
    """The registry principal's rules ``(resource type, name, operation, pattern)``: its topics, any group.

    Apicurio's kafkasql consumers join a fresh random group at every start, hence READ on every group.
    """
    rules = [("GROUP", "*", "READ", "LITERAL")]
    for topic in registry_topics:
        rules += [("TOPIC", topic, op, "LITERAL") for op in ("READ", "WRITE", "DESCRIBE")]
    return rules


def apply_registry_acls(admin_client: object, registry_topics: Iterable[str]) -> None:
    """Allow the registry principal its rules (creating an existing ACL is a no-op on the broker)."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    acls = [
        ACL(
            f"User:{REGISTRY}",
            "*",
            ACLOperation[op],
            ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType[kind], name, ACLResourcePatternType[pattern]),
        )
        for kind, name, op, pattern in registry_acls(registry_topics)
    ]
    try:
        result = admin_client.create_acls(acls)  # type: ignore[attr-defined]
    except Exception as exc:
        raise LocalStackError(f"cannot allow the registry its topics: {type(exc).__name__}: {exc}") from exc
    if result.get("failed"):
        raise LocalStackError(f"the broker refused the registry's ACLs: {result['failed']}")


def registry_client_properties(auth: KafkaAuth) -> dict[str, str]:
    """Kafka client settings Apicurio passes to its kafkasql producer, consumer and admin client."""
    return {f"apicurio.kafka.common.{key}": value for key, value in auth.java_properties().items()}
