"""``acl apply``'s reconciliation: what it adds and removes, and what it never touches."""

from __future__ import annotations

from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

from streams.kafka.acl import OPERATOR, PROCESSOR, AclBinding
from streams.kafka.acl_apply import foreign_grants, managed, plan_changes, to_acl


def _acl(
    principal: str,
    name: str,
    *,
    kind: str = "TOPIC",
    operation: str = "READ",
    pattern: str = "LITERAL",
    host: str = "*",
    allow: bool = True,
) -> ACL:
    permission = ACLPermissionType.ALLOW if allow else ACLPermissionType.DENY
    resource = ResourcePattern(ResourceType[kind], name, ACLResourcePatternType[pattern])
    return ACL(principal, host, ACLOperation[operation], permission, resource)


def test_adds_the_missing_removes_the_stale_and_counts_the_kept() -> None:
    """Plan minus cluster is added; the deployment's rules the plan no longer has are removed."""
    keep = AclBinding(PROCESSOR, "TOPIC", "p.screening.results.v1", "READ")
    new = AclBinding(OPERATOR, "TOPIC", "p.screening.results.dlq.v1", "READ")
    stale = AclBinding("User:agency-cnam", "TOPIC", "p.screening.results.v1", "READ")
    add, remove, kept = plan_changes([keep, new], [keep, stale], "p.")
    assert add == [new] and remove == [stale] and kept == 1


def test_other_prefixes_and_other_principals_are_out_of_scope() -> None:
    """A rule on another prefix, or of a principal the deployment does not own, is never removed."""
    other_prefix = AclBinding(PROCESSOR, "TOPIC", "q.screening.results.v1", "READ")
    registry = AclBinding("User:schema-registry", "TOPIC", "p._apicurio-kafkasql-journal", "WRITE")
    person = AclBinding("User:alice", "TOPIC", "p.screening.results.v1", "READ")
    assert not any(managed(b, "p.") for b in (other_prefix, registry, person))
    assert plan_changes([], [other_prefix, registry, person], "p.") == ([], [], 0)
    assert managed(AclBinding("User:agency-ars.11", "GROUP", "p.agency-ars.11", "READ", "PREFIXED"), "p.")


def test_an_authorisation_error_from_the_consumer_stops_the_worker_naming_the_principal() -> None:
    """TOPIC/GROUP_AUTHORIZATION_FAILED raise RunnerFatal with the principal (no warning loop); others only log."""
    import pytest
    from confluent_kafka import KafkaError

    from streams.kafka.batches import RunnerFatal, consumer_error

    for code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
        with pytest.raises(RunnerFatal, match="User:screening-processor"):
            consumer_error(KafkaError(code, "refused"), "User:screening-processor")
    consumer_error(KafkaError(KafkaError._TRANSPORT, "blip"), "User:screening-processor")  # logged, not fatal


def test_a_prefix_that_begins_another_never_claims_its_rules() -> None:
    """``prod.`` does not manage ``prod.eu.``'s rules, and the empty prefix manages neither (review F1)."""
    nested = [
        AclBinding(PROCESSOR, "TOPIC", "prod.eu.screening.results.v1", "READ"),
        AclBinding(PROCESSOR, "GROUP", "prod.eu.screening-streams", "READ"),
        AclBinding(PROCESSOR, "TRANSACTIONAL_ID", "prod.eu.screening-streams-", "WRITE", "PREFIXED"),
        AclBinding("User:agency-cnam", "TOPIC", "prod.eu.tracing.cnam.results.v1", "READ"),
    ]
    assert not any(managed(b, "prod.") for b in nested)
    assert not any(managed(b, "") for b in nested)
    assert all(managed(b, "prod.eu.") for b in nested)
    assert plan_changes([], nested, "prod.") == ([], [], 0)


def test_rules_outside_the_plan_that_still_grant_access_are_named() -> None:
    """A wildcard principal, the wildcard topic, a short prefixed rule or a per-host rule reaching a planned topic."""
    planned = AclBinding("User:agency-cnam", "TOPIC", "p.tracing.cnam.results.v1", "READ")
    rules = [
        to_acl(planned),
        _acl("User:*", "p.tracing.cnam.results.v1"),
        _acl("User:agency-spf", "*"),
        _acl("User:agency-ars.11", "p.tracing", pattern="PREFIXED"),
        _acl("User:agency-cnam", "p.tracing.cnam.results.v1", host="10.0.0.1"),
        _acl("User:agency-spf", "p.tracing.cnam.results.v1", allow=False),  # a DENY grants nothing
        _acl("User:someone-else", "p.tracing.cnam.results.v1"),  # not a deployment principal
    ]
    found = foreign_grants(rules, [planned])
    assert len(found) == 4
    assert any("User:*" in f for f in found) and any("host 10.0.0.1" in f for f in found)


def test_names_of_another_deployment_whose_prefix_extends_ours_by_a_resource_word_are_not_ours() -> None:
    """Re-review: prefixes ``tracing.``, ``screening.eu.``, ``agency-`` under the empty one are not claimed."""
    theirs = [
        AclBinding("User:agency-cnam", "TOPIC", "tracing.tracing.cnam.results.v1", "READ"),
        AclBinding("User:agency-cnam", "TOPIC", "tracing.tracing.cnam.keys.v1", "READ"),
        AclBinding(PROCESSOR, "TOPIC", "screening.eu.screening.cnam.hold.v1", "WRITE"),
        AclBinding("User:agency-cnam", "GROUP", "agency-agency-cnam", "READ", "PREFIXED"),
    ]
    assert not any(managed(b, "") for b in theirs)
    ours = [
        AclBinding("User:agency-ars.11", "TOPIC", "tracing.ars.11.results.v1", "READ"),
        AclBinding(PROCESSOR, "TOPIC", "screening.spf.hold.v1", "WRITE"),
        AclBinding("User:agency-ars.11", "GROUP", "agency-ars.11", "READ", "PREFIXED"),
    ]
    assert all(managed(b, "") for b in ours)


def test_cluster_grants_and_ids_inside_a_planned_range_are_named() -> None:
    """An agency with ALTER on the cluster, or WRITE on an id inside the processor's prefixed range, is foreign.

    (That a rule ``acl apply`` removes is not also named is pinned on the real broker, in
    tests/integration/test_acl_matrix.py.)"""
    txn = AclBinding(PROCESSOR, "TRANSACTIONAL_ID", "p.screening-streams-", "WRITE", "PREFIXED")
    cluster = _acl("User:agency-cnam", "kafka-cluster", kind="CLUSTER", operation="ALTER")
    inside = _acl("User:agency-spf", "p.screening-streams-0", kind="TRANSACTIONAL_ID", operation="WRITE")
    found = foreign_grants([cluster, inside], [txn])
    assert len(found) == 2 and any("CLUSTER" in f for f in found) and any("screening-streams-0" in f for f in found)
