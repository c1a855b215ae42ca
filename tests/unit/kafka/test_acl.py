"""ACLs derived from the policies: agencies read only their own topic; raw data stays inside."""

from __future__ import annotations

from click.testing import CliRunner

from streams.assembly import PolicySet, agency_names, output_topics
from streams.cli.main import main
from streams.crypto.views import key_topic
from streams.kafka.acl import OPERATOR, PROCESSOR, PRODUCER, acl_plan, agency_principal
from streams.settings import Settings


def test_each_agency_reads_exactly_its_own_topic(policy_set: PolicySet) -> None:
    """Every agency principal reads its own topic and its own key topic only, and writes nothing."""
    rules = acl_plan(Settings(), policy_set)
    for agency, topic in zip(agency_names(policy_set), output_topics(policy_set), strict=True):
        mine = [r for r in rules if r.principal == agency_principal(agency)]
        topics = {(r.resource_type, r.name) for r in mine if r.resource_type == "TOPIC"}
        assert topics == {("TOPIC", topic), ("TOPIC", key_topic(topic))}
        assert all(r.operation == "READ" for r in mine)


def test_the_audit_is_read_by_operators_and_the_processor_and_written_by_the_processor_only(
    policy_set: PolicySet,
) -> None:
    """Audit topic: READ for operators and the processor (which rebuilds lost chain heads from its
    tail), WRITE for the processor alone; no agency reads it."""
    settings = Settings()
    rules = [r for r in acl_plan(settings, policy_set) if r.name == settings.audit_topic]
    assert {(r.principal, r.operation) for r in rules} == {
        (OPERATOR, "READ"),
        (PROCESSOR, "READ"),
        (PROCESSOR, "WRITE"),
    }


def test_the_dlq_key_topic_is_written_by_the_processor_and_read_by_operators_only(policy_set: PolicySet) -> None:
    """The sealed dead letters' data keys: the processor writes them, the operators alone read them (no agency)."""
    settings = Settings(topic_prefix="stg.")
    rules = [r for r in acl_plan(settings, policy_set) if r.name == "stg.screening.results.dlq.keys.v1"]
    assert {(r.principal, r.operation) for r in rules} == {(PROCESSOR, "WRITE"), (OPERATOR, "READ")}


def test_only_processor_and_operator_read_raw_data(policy_set: PolicySet) -> None:
    """The ingress is read only by the processor, the DLQ only by operators; the screening system only writes."""
    settings = Settings()
    rules = acl_plan(settings, policy_set)
    readers = {
        topic: {r.principal for r in rules if r.name == topic and r.operation == "READ"}
        for topic in (settings.ingress_topic, settings.dlq_topic)
    }
    assert readers == {settings.ingress_topic: {PROCESSOR}, settings.dlq_topic: {OPERATOR}}
    assert {r.operation for r in rules if r.principal == PRODUCER} == {"WRITE"}


def test_transactional_ids_are_granted_by_prefix(policy_set: PolicySet) -> None:
    """The processor may use the per-partition transactional ids of its group, by prefix."""
    settings = Settings(topic_prefix="stg.")
    rules = acl_plan(settings, policy_set)
    txn = [r for r in rules if r.resource_type == "TRANSACTIONAL_ID"]
    assert [(r.principal, r.name, r.pattern) for r in txn] == [(PROCESSOR, "stg.screening-streams-", "PREFIXED")]


def test_acl_plan_command_prints_kafka_acls_lines() -> None:
    """`acl plan` prints one kafka-acls.sh line per rule, including the Corsican agency's read."""
    result = CliRunner().invoke(main, ["acl", "plan", "--bootstrap-servers", "kafka:9092"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(line.startswith("kafka-acls.sh --bootstrap-server kafka:9092 --add") for line in lines)
    assert any("User:agency-ars.94" in line and "tracing.ars.94.results.v1" in line for line in lines)


def test_the_replay_ledger_is_the_operators_alone(policy_set: PolicySet) -> None:
    """Operators read, write and create the replay ledger (the source of replay counts); nobody else has a rule."""
    settings = Settings(topic_prefix="stg.")
    ledger = settings.replay_ledger_topic
    assert ledger == "stg.screening.results.dlq.replays.v1"
    on_ledger = {(r.principal, r.operation) for r in acl_plan(settings, policy_set) if r.name == ledger}
    assert on_ledger == {(OPERATOR, "READ"), (OPERATOR, "WRITE"), (OPERATOR, "CREATE")}
    line = next(
        r.command("k:9092") for r in acl_plan(settings, policy_set) if r.name == ledger and r.operation == "CREATE"
    )
    assert f"--operation Create --topic {ledger} --resource-pattern-type literal" in line
