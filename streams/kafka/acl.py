"""Kafka ACLs derived from the policies: each agency reads its own topic and nothing else.

Pure: produces :class:`AclBinding` values and ``kafka-acls.sh`` command lines; applying them
(with kafka-python's admin client on a SASL-enabled cluster) is the next step of the roadmap.
Principals: the screening system writes the ingress; the processor reads it and writes agency
topics, dead letters (sealed to the operators' key) with their data keys and the audit; operators
read dead letters and their data keys and replay to the ingress, and
alone read, write (and create) the replay ledger, where replay counts come from (so nobody else
can make a dead letter look replayed, or not); each agency (``ars.11``, ``cnam``, ``spf``...)
reads exactly its topic. The small-cell hold topics are the processor's alone (read and write).
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.assembly import PolicySet, agency_names, hold_topics, output_topics
from streams.credentials import OPERATOR as OPERATOR_USER
from streams.credentials import PROCESSOR as PROCESSOR_USER
from streams.credentials import PRODUCER as PRODUCER_USER
from streams.credentials import agency_user
from streams.crypto.letters import dlq_key_topic
from streams.crypto.views import key_topic
from streams.domain.geography import DEFAULT_GEOGRAPHY, Geography
from streams.settings import Settings

PROCESSOR = f"User:{PROCESSOR_USER}"
PRODUCER = f"User:{PRODUCER_USER}"
OPERATOR = f"User:{OPERATOR_USER}"
#: Every agency principal starts so (``User:agency-cnam``, ``User:agency-ars.11``...).
AGENCY_PREFIX = "User:agency-"


@dataclass(frozen=True, order=True)
class AclBinding:
    """One ALLOW rule: ``principal`` may ``operation`` on a resource (literal or prefixed name)."""

    principal: str
    resource_type: str  # TOPIC | GROUP | TRANSACTIONAL_ID
    name: str
    operation: str  # READ | WRITE | CREATE | DESCRIBE | DESCRIBE_CONFIGS
    pattern: str = "LITERAL"  # or PREFIXED

    def command(self, bootstrap: str) -> str:
        """The equivalent ``kafka-acls.sh`` invocation."""
        flag = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}[self.resource_type]
        return (
            f"kafka-acls.sh --bootstrap-server {bootstrap} --add --allow-principal {self.principal} "
            f"--operation {''.join(w.capitalize() for w in self.operation.split('_'))} {flag} {self.name} "
            f"--resource-pattern-type {self.pattern.lower()}"
        )


def agency_principal(agency: str) -> str:
    """The SASL principal of one agency, e.g. ``User:agency-ars.11``."""
    return f"User:{agency_user(agency)}"


def agency_users(policy_set: PolicySet, geography: Geography = DEFAULT_GEOGRAPHY) -> list[str]:
    """The SCRAM user name of every agency the policies deliver to."""
    return [agency_user(agency) for agency in agency_names(policy_set, geography)]


def acl_plan(settings: Settings, policy_set: PolicySet, geography: Geography = DEFAULT_GEOGRAPHY) -> list[AclBinding]:
    """Every ALLOW rule the deployment needs; anything not listed is denied by the broker."""
    prefix = settings.topic_prefix
    outputs = [prefix + t for t in output_topics(policy_set, geography)]
    rules = [
        AclBinding(PRODUCER, "TOPIC", settings.ingress_topic, "WRITE"),
        AclBinding(PROCESSOR, "TOPIC", settings.ingress_topic, "READ"),
        AclBinding(PROCESSOR, "GROUP", settings.group_id, "READ"),
        # The audit tail and hold rebuild readers only assign(), but librdkafka still finds their
        # groups' coordinator, which needs the group ACL (streams.kafka.audit_io, smallcell_io).
        AclBinding(PROCESSOR, "GROUP", f"{settings.group_id}-audit-tail", "READ"),
        AclBinding(PROCESSOR, "GROUP", f"{settings.group_id}-hold-rebuild", "READ"),
        AclBinding(PROCESSOR, "TRANSACTIONAL_ID", f"{settings.group_id}-", "WRITE", "PREFIXED"),
        AclBinding(PROCESSOR, "TOPIC", settings.dlq_topic, "WRITE"),
        # The worker checks at start that every accepted ingress record fits the DLQ (max.message.bytes).
        AclBinding(PROCESSOR, "TOPIC", settings.ingress_topic, "DESCRIBE_CONFIGS"),
        AclBinding(PROCESSOR, "TOPIC", settings.dlq_topic, "DESCRIBE_CONFIGS"),
        # Dead letters are sealed to the operators' key; their data keys go to the DLQ key topic.
        AclBinding(PROCESSOR, "TOPIC", dlq_key_topic(settings.dlq_topic), "WRITE"),
        AclBinding(OPERATOR, "TOPIC", dlq_key_topic(settings.dlq_topic), "READ"),
        AclBinding(PROCESSOR, "TOPIC", settings.audit_topic, "WRITE"),
        # The processor reads an audit partition's tail only to rebuild a chain head its
        # committed offsets lost (streams.kafka.audit_io); the records hold no identifier.
        AclBinding(PROCESSOR, "TOPIC", settings.audit_topic, "READ"),
        AclBinding(OPERATOR, "TOPIC", settings.dlq_topic, "READ"),
        # The audit's other readers: the operators (audit verify, index and queries), nobody else.
        AclBinding(OPERATOR, "TOPIC", settings.audit_topic, "READ"),
        AclBinding(OPERATOR, "TOPIC", settings.ingress_topic, "WRITE"),
        AclBinding(OPERATOR, "TOPIC", settings.replay_ledger_topic, "READ"),
        AclBinding(OPERATOR, "TOPIC", settings.replay_ledger_topic, "WRITE"),
        AclBinding(OPERATOR, "TOPIC", settings.replay_ledger_topic, "CREATE"),  # `dlq replay` creates it once
    ]
    rules += [AclBinding(PROCESSOR, "TOPIC", topic, "WRITE") for topic in outputs]
    for agency, topic in zip(agency_names(policy_set, geography), outputs, strict=True):
        principal = agency_principal(agency)
        rules += [
            AclBinding(principal, "TOPIC", topic, "READ"),
            AclBinding(principal, "TOPIC", key_topic(topic), "READ"),  # its sealed data keys
            AclBinding(principal, "GROUP", f"{prefix}agency-{agency}", "READ", "PREFIXED"),
        ]
    rules += [AclBinding(PROCESSOR, "TOPIC", key_topic(topic), "WRITE") for topic in outputs]
    # Small-cell hold topics hold views like the agency topics: the processor alone writes and reads
    # them back (to rebuild a partition's open windows); no agency and no operator reads them.
    for topic in hold_topics(settings, policy_set):
        rules += [AclBinding(PROCESSOR, "TOPIC", topic, "WRITE"), AclBinding(PROCESSOR, "TOPIC", topic, "READ")]
    return sorted(rules)
