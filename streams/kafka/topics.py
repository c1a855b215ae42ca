"""Topic layout and creation with kafka-python's admin client.

Retention is part of the privacy design: the ingress and the dead-letter topic hold raw data
and keep it for days, not a year; agency topics keep what the agencies have not yet read for
two weeks; only the audit topic, which holds no identifying data, keeps a year.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.credentials import KafkaAuth
from streams.crypto.letters import dlq_key_topic
from streams.crypto.views import key_topic
from streams.errors import ConfigError, ScreeningStreamsError
from streams.settings import Settings

DAY_MS = 86_400_000


class TopicError(ScreeningStreamsError):
    """Topics could not be listed or created."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: partitions and topic-level configs."""

    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings, output_topics: Iterable[str], hold_topics: Iterable[str] = ()) -> list[TopicSpec]:
    """Every topic the processor reads or writes, with its partitions and retention.

    ``hold_topics`` (with the prefix) are the small-cell hold topics: one partition per ingress
    partition (written by its owner only), kept as long as the agency topics (they hold the same
    views, until their window closes).
    """
    raw_data = {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete"}
    # Sizes end to end: the dead-letter topic takes the largest record the ingress accepts
    # plus the dlq.* headers, so a rejected record is always dead-lettered whole.
    ingress = {**raw_data, "max.message.bytes": str(settings.ingress_max_message_bytes)}
    dlq = {**raw_data, "retention.ms": str(14 * DAY_MS), "max.message.bytes": str(settings.dlq_max_message_bytes)}
    specs = [
        TopicSpec(settings.ingress_topic, settings.ingress_partitions, ingress),
        TopicSpec(settings.dlq_topic, settings.ingress_partitions, dlq),
        # The dead letters' data keys, sealed to the operators' public keys (streams.crypto.letters):
        # compacted, like the agencies' key topics (a record is useless without its data key).
        TopicSpec(dlq_key_topic(settings.dlq_topic), 1, {"cleanup.policy": "compact"}),
        # One audit partition per ingress partition: its owner is the only writer of that chain.
        TopicSpec(
            settings.audit_topic,
            settings.ingress_partitions,
            {"retention.ms": str(settings.audit_retention_days * DAY_MS)},
        ),
    ]
    specs += [
        TopicSpec(t, settings.ingress_partitions, {"retention.ms": str(14 * DAY_MS), "cleanup.policy": "delete"})
        for t in hold_topics
    ]
    outputs = list(output_topics)
    specs += [
        TopicSpec(settings.topic_prefix + t, settings.output_partitions, {"retention.ms": str(14 * DAY_MS)})
        for t in outputs
    ]
    # Each agency topic's sealed data keys (streams.crypto): compacted, kept as long as any record.
    specs += [TopicSpec(settings.topic_prefix + key_topic(t), 1, {"cleanup.policy": "compact"}) for t in outputs]
    return specs


def admin_client(bootstrap_servers: str, *, auth: KafkaAuth) -> KafkaAdminClient:
    """Connect kafka-python's admin client as ``auth``'s principal, wrapping connection failures."""
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="screening-streams-admin",
            request_timeout_ms=30_000,
            **auth.kafka_python(),
        )
    except KafkaError as exc:
        raise TopicError(f"cannot reach Kafka at {bootstrap_servers} as {auth.principal}: {exc}") from exc


def durability_configs(replication: int) -> dict[str, str]:
    """``min.insync.replicas`` for topics of ``replication`` copies: 2 from 3 copies (one broker may be
    down and an ``acks=all`` write still lands on two), 1 below (a single copy cannot require more)."""
    return {"min.insync.replicas": "2"} if replication >= 3 else {}


def ensure_topics(admin: KafkaAdminClient, specs: Iterable[TopicSpec], replication: int = 1) -> dict[str, int]:
    """Create the missing topics; return the partition count of every requested topic."""
    specs = list(specs)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            durable = durability_configs(replication)
            new = [NewTopic(s.name, s.partitions, replication, topic_configs={**durable, **s.configs}) for s in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent worker created it first
                admin.create_topics(new, validate_only=False)
        names = [s.name for s in specs]
        for _ in range(50):  # new topics take a moment to appear in metadata
            counts = partition_counts(admin, names)
            if len(counts) == len(names):
                return counts
            time.sleep(0.1)
        raise TopicError(f"topics not visible after creation: {sorted(set(names) - set(counts))}")
    except KafkaError as exc:
        raise TopicError(f"cannot create topics: {exc}") from exc


def partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Return ``{topic: number of partitions}`` for existing topics."""
    try:
        described = admin.describe_topics(names)
    except KafkaError as exc:
        raise TopicError(f"cannot describe topics: {exc}") from exc
    return {str(t.get("name") or t.get("topic")): len(t["partitions"]) for t in described if t.get("partitions")}


def create_topics(settings: Settings, output_topics: Iterable[str], hold_topics: Iterable[str] = ()) -> dict[str, int]:
    """Create every topic of ``settings``, ``output_topics`` and ``hold_topics`` (idempotent); return counts."""
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        specs = topic_specs(settings, output_topics, hold_topics)
        return ensure_topics(admin, specs, settings.replication_factor)
    finally:
        admin.close()


def require_topics(settings: Settings, output_topics: Iterable[str], hold_topics: Iterable[str] = ()) -> dict[str, int]:
    """The partition count of every topic the processor uses; fail naming those it cannot see.

    The worker never creates topics (its principal has no CREATE): the admin does, with
    ``screening-streams topics``, and ``acl apply`` lets the processor see them.
    """
    names = [spec.name for spec in topic_specs(settings, output_topics, hold_topics)]
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        counts = partition_counts(admin, names)
    finally:
        admin.close()
    missing = sorted(set(names) - set(counts))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TopicError(
            f"{settings.kafka_auth.principal} cannot see {len(missing)} topics it needs ({shown}): they do not exist "
            "or it has no ACL on them; as the admin run `screening-streams topics` then `screening-streams acl apply`"
        )
    return counts


def topic_limits(bootstrap_servers: str, topics: Iterable[str], *, auth: KafkaAuth) -> dict[str, int]:
    """Each topic's effective ``max.message.bytes`` (its own setting or the broker's default)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._config import ConfigResource
    from confluent_kafka.admin._resource import ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **auth.librdkafka()})
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    try:
        futures = admin.describe_configs(resources)
        return {r.name: int(futures[r].result(timeout=30)["max.message.bytes"].value) for r in resources}
    except (KafkaException, KeyError, ValueError) as exc:
        raise TopicError(f"cannot read max.message.bytes of {', '.join(r.name for r in resources)}: {exc}") from exc


def check_record_limits(settings: Settings, limits: Mapping[str, int], producer_limit: int) -> None:
    """Fail fast unless any record the ingress accepts can be dead-lettered whole.

    The dead-letter topic (and the worker's producer) must take the largest ingress record plus
    ``DLQ_HEADROOM_BYTES`` of ``dlq.*`` headers; topics created by this version are sized so,
    older or hand-made ones may not be.
    """
    from streams.settings import DLQ_HEADROOM_BYTES

    ingress, dlq = limits[settings.ingress_topic], limits[settings.dlq_topic]
    needed = ingress + DLQ_HEADROOM_BYTES
    if dlq < needed:
        raise TopicError(
            f"topic {settings.dlq_topic} accepts records up to {dlq} bytes, but a dead letter of the largest "
            f"record {settings.ingress_topic} accepts ({ingress} bytes) needs {needed}: set its "
            f"max.message.bytes to at least {needed}"
        )
    if producer_limit < needed:
        raise TopicError(
            f"the worker's producer limit ({producer_limit} bytes) is below {needed}, the largest dead letter "
            f"of {settings.ingress_topic}: raise SCREENING_INGRESS_MAX_MESSAGE_BYTES to at least {ingress}"
        )


def check_one_partition_per_ingress(topic: str, role: str, ingress_topic: str, partitions: Mapping[str, int]) -> None:
    """Fail fast unless ``topic`` (the ``role`` topic: partition ``p`` serves ingress partition
    ``p``) has at least as many partitions as the ingress; ``partitions`` as :func:`create_topics` gives."""
    have, ingress = partitions.get(topic, 0), partitions.get(ingress_topic, 0)
    if have < ingress:
        raise ConfigError(
            f"topic {topic} has {have} partitions, {ingress_topic} has {ingress}: the {role} topic needs "
            "one partition per ingress partition (add partitions to it first)"
        )
