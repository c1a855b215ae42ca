"""The ACL matrix on the real broker: every principal × every topic × {read, write, describe}, every group, every
transactional-id prefix; only the cells the plan allows succeed (issue 9).

Each principal connects with its own SCRAM credentials (made by ``broker up``), after ``acl apply``
for a fresh topic prefix. A cell is *tried*, not looked up: a real produce, a real fetch, a real
metadata request, a real offset fetch for a group, a real ``init_transactions``. The expected
outcome comes from :func:`streams.kafka.acl.acl_plan` (Kafka's implications: READ, WRITE and
DESCRIBE_CONFIGS... imply DESCRIBE). Also: a client without credentials is not let in at all, and
``acl apply`` removes a rule the policies no longer imply while leaving other prefixes alone.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.assembly import agency_names, hold_topics, load_policy_set, output_topics
from streams.credentials import OPERATOR, PROCESSOR, PRODUCER, KafkaAuth, agency_user, load_credentials_file
from streams.kafka.acl import AclBinding, acl_plan
from streams.kafka.acl_apply import apply_plan
from streams.kafka.topics import create_topics
from streams.settings import Settings
from streams.stack import lifecycle
from streams.stack.settings import Endpoints, StackSettings

pytestmark = pytest.mark.integration

DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


def _auth(user: str) -> KafkaAuth:
    state = StackSettings.from_env(os.environ).state_dir
    return load_credentials_file(state / "credentials" / f"{user}.json")


def _conf(settings: Settings, auth: KafkaAuth, **extra: object) -> dict[str, object]:
    return {"bootstrap.servers": settings.bootstrap_servers, **auth.librdkafka(), **extra}


def _allowed(plan: Iterable[AclBinding], principal: str, kind: str, name: str, operation: str) -> bool:
    """Whether the plan lets ``principal`` do ``operation`` (READ, WRITE, DESCRIBE) on a resource."""
    implies = {"DESCRIBE": {"DESCRIBE", "READ", "WRITE", "DELETE", "ALTER", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"}}
    wanted = implies.get(operation, {operation})
    for b in plan:
        if b.principal != principal or b.resource_type != kind or b.operation not in wanted:
            continue
        if (b.pattern == "LITERAL" and b.name == name) or (b.pattern == "PREFIXED" and name.startswith(b.name)):
            return True
    return False


def _write_outcomes(settings: Settings, auth: KafkaAuth, topics: list[str]) -> dict[str, bool]:
    """Produce one record to each topic as ``auth``: True delivered, False refused by the ACLs."""
    outcome: dict[str, bool] = {}
    producer = Producer(
        _conf(settings, auth, **{"enable.idempotence": False, "acks": "1", "message.timeout.ms": 15_000, "retries": 0})
    )

    def report(err: KafkaError | None, msg: object) -> None:
        topic = msg.topic()  # type: ignore[attr-defined]
        if err is None:
            outcome[topic] = True
        elif err.code() in DENIED:
            outcome[topic] = False
        else:
            raise AssertionError(f"write to {topic}: unexpected {err}")

    for topic in topics:
        producer.produce(topic, key=b"acl-matrix", value=b"x", partition=0, on_delivery=report)
    producer.flush(30)
    assert set(outcome) == set(topics), f"no delivery report for {sorted(set(topics) - set(outcome))}"
    return outcome


def _read_outcomes(settings: Settings, auth: KafkaAuth, topics: list[str]) -> dict[str, bool]:
    """Fetch partition 0 of each topic, where the admin left a sentinel record: True it was read.

    The broker leaves a fetch it does not authorise unanswered for that partition (librdkafka
    surfaces no error per partition), so "denied" is "the sentinel never came" within a quiet
    period after the last record read; an allowed topic that returns nothing fails the matrix.
    """
    import time

    outcome = dict.fromkeys(topics, False)
    consumer = Consumer(
        _conf(settings, auth, **{"group.id": f"unused-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    try:
        consumer.assign([TopicPartition(t, 0, 0) for t in topics])
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3.0 and not all(outcome.values()):
            for msg in consumer.consume(100, 0.2):
                err, topic = msg.error(), msg.topic()
                if err is None and topic in outcome and not outcome[topic]:
                    outcome[topic] = True
                    quiet_since = time.monotonic()
                elif err is not None and err.code() not in DENIED and err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"read {topic}: unexpected {err}")
    finally:
        consumer.close()
    return outcome


def _describe_outcomes(settings: Settings, auth: KafkaAuth, topics: list[str]) -> dict[str, bool]:
    """Ask for each topic's metadata: True described, False refused (authorisation error)."""
    admin = AdminClient(_conf(settings, auth))
    metadata = admin.list_topics(timeout=30)
    outcome = {}
    for topic in topics:
        found = metadata.topics.get(topic)
        outcome[topic] = found is not None and found.error is None
        if found is not None and found.error is not None:
            assert found.error.code() in DENIED, f"describe {topic}: unexpected {found.error}"
    # Without DESCRIBE a topic is simply absent from the full listing: ask for each one by name too.
    for topic in topics:
        if not outcome[topic]:
            one = admin.list_topics(topic=topic, timeout=30).topics[topic]
            assert one.error is not None and one.error.code() in DENIED, f"describe {topic}: {one.error}"
    return outcome


def _group_outcome(settings: Settings, auth: KafkaAuth, group: str) -> bool:
    """Fetch a group's committed offsets as ``auth``: True answered, False refused (group READ/DESCRIBE)."""
    from kafka.errors import GroupAuthorizationFailedError

    from streams.kafka.topics import admin_client

    admin = admin_client(settings.bootstrap_servers, auth=auth)
    try:
        admin.list_group_offsets(group)
        return True
    except GroupAuthorizationFailedError:
        return False
    finally:
        admin.close()


def _txn_outcome(settings: Settings, auth: KafkaAuth, txn_id: str) -> bool:
    """``init_transactions`` with ``txn_id`` as ``auth``: True allowed, False refused."""
    producer = Producer(
        _conf(settings, auth, **{"transactional.id": txn_id, "transaction.timeout.ms": 10_000, "log_level": 0})
    )
    try:
        producer.init_transactions(20)
        return True
    except KafkaException as exc:
        code = exc.args[0].code()
        assert code in DENIED, f"transactional id {txn_id}: unexpected {exc}"
        return False


@pytest.fixture(scope="module")
def deployment(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[AclBinding]]:
    """A fresh prefix: topics made and ACLs applied by the admin; a sentinel record in every topic."""
    admin = lifecycle.admin_auth(StackSettings.from_env(os.environ))
    if not admin.sasl:
        pytest.fail("the local stack must run with SASL (broker up makes the admin's credentials)")
    settings = Settings(
        bootstrap_servers=stack.bootstrap_servers,
        registry_url=stack.registry_url,
        topic_prefix=f"acl{uuid.uuid4().hex[:6]}.",
        state_dir=tmp_path_factory.mktemp("acl"),
        kafka_auth=admin,
    )
    policy_set = load_policy_set(settings)
    create_topics(settings, output_topics(policy_set), hold_topics(settings, policy_set))
    change = apply_plan(settings, policy_set)
    assert change.added and not change.removed
    topics = sorted(_topics(settings))
    assert all(_write_outcomes(settings, admin, topics).values())  # the super user writes the sentinels
    return settings, acl_plan(settings, policy_set)


def _topics(settings: Settings) -> set[str]:
    admin = AdminClient(_conf(settings, settings.kafka_auth))
    return {t for t in admin.list_topics(timeout=30).topics if t.startswith(settings.topic_prefix)}


def _principals(settings: Settings) -> list[str]:
    return [PROCESSOR, PRODUCER, OPERATOR, *(agency_user(a) for a in agency_names(load_policy_set(settings)))]


def test_every_principal_can_do_exactly_what_the_plan_allows_on_every_topic(
    deployment: tuple[Settings, list[AclBinding]],
) -> None:
    """Every (principal, topic, read|write|describe) cell behaves as the plan says; 0 unexpected cells."""
    settings, plan = deployment
    topics = sorted(_topics(settings))
    tested = allowed = denied = 0
    unexpected: list[str] = []
    for user in _principals(settings):
        auth, principal = _auth(user), f"User:{user}"
        for op, outcomes in (
            ("WRITE", _write_outcomes(settings, auth, topics)),
            ("READ", _read_outcomes(settings, auth, topics)),
            ("DESCRIBE", _describe_outcomes(settings, auth, topics)),
        ):
            for topic, ok in outcomes.items():
                want = _allowed(plan, principal, "TOPIC", topic, op)
                tested += 1
                allowed += ok
                denied += not ok
                if ok != want:
                    unexpected.append(
                        f"{principal} {op} {topic}: {'allowed' if ok else 'denied'}, plan says "
                        f"{'allow' if want else 'deny'}"
                    )
    print(
        f"ACL matrix (topics): {tested} cells tested, {allowed} allowed, {denied} denied, {len(unexpected)} unexpected"
    )
    assert not unexpected, "\n".join(unexpected[:30])
    assert allowed and denied


def test_groups_and_transactional_ids_are_each_principals_own(deployment: tuple[Settings, list[AclBinding]]) -> None:
    """The workers' group and transactional-id prefix are the processor's alone; each agency's group is its own."""
    settings, plan = deployment
    agencies = agency_names(load_policy_set(settings))
    groups = [settings.group_id, *(f"{settings.topic_prefix}agency-{a}-reader" for a in agencies[:3])]
    txn_ids = [f"{settings.group_id}-worker-1", f"{settings.topic_prefix}other-txn"]
    users = [PROCESSOR, PRODUCER, OPERATOR, *(agency_user(a) for a in agencies[:3])]
    unexpected: list[str] = []
    tested = 0
    for user in users:
        auth, principal = _auth(user), f"User:{user}"
        for group in groups:
            ok = _group_outcome(settings, auth, group)
            tested += 1
            if ok != _allowed(plan, principal, "GROUP", group, "READ"):
                unexpected.append(f"{principal} group {group}: {'allowed' if ok else 'denied'}")
        for txn in txn_ids:
            ok = _txn_outcome(settings, auth, txn)
            tested += 1
            if ok != _allowed(plan, principal, "TRANSACTIONAL_ID", txn, "WRITE"):
                unexpected.append(f"{principal} transactional id {txn}: {'allowed' if ok else 'denied'}")
    print(f"ACL matrix (groups, transactional ids): {tested} cells tested, {len(unexpected)} unexpected")
    assert not unexpected, "\n".join(unexpected)


def test_a_client_without_credentials_gets_nothing(deployment: tuple[Settings, list[AclBinding]]) -> None:
    """PLAINTEXT to the SASL listener: the broker disconnects, so no metadata at all comes back."""
    settings, _ = deployment
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "socket.timeout.ms": 3000})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)


def test_acl_apply_removes_what_the_policies_no_longer_imply_within_its_prefix(
    deployment: tuple[Settings, list[AclBinding]], tmp_path: Path
) -> None:
    """A rule added by hand for an agency on its own prefix is removed by the next apply; another prefix's stay."""
    settings, _ = deployment
    from streams.kafka.acl_apply import to_acl
    from streams.kafka.topics import admin_client

    stray = AclBinding("User:agency-cnam", "TOPIC", settings.ingress_topic, "READ")
    elsewhere = AclBinding("User:agency-cnam", "TOPIC", "zz-other-prefix.screening.results.v1", "READ")
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        assert not admin.create_acls([to_acl(stray), to_acl(elsewhere)]).get("failed")
    finally:
        admin.close()
    assert _read_outcomes(settings, _auth("agency-cnam"), [settings.ingress_topic]) == {settings.ingress_topic: True}
    change = apply_plan(settings, load_policy_set(settings))
    assert change.removed == [stray] and not change.added and not change.foreign  # removed: not "foreign"
    assert _read_outcomes(settings, _auth("agency-cnam"), [settings.ingress_topic]) == {settings.ingress_topic: False}
    leftover = apply_plan(settings.with_(topic_prefix="zz-other-prefix."), load_policy_set(settings), dry_run=True)
    assert elsewhere in leftover.removed  # in scope there, untouched by the first prefix's apply


def test_a_worker_refused_a_write_stops_naming_its_principal_instead_of_retrying(
    stack: Endpoints, tmp_path: Path
) -> None:
    """The processor's WRITE on the audit topic revoked (READ kept, so it starts): exit 70 within the first batches,
    the log names the principal and the refusal; never a loop of aborted transactions (attack review F3)."""
    import subprocess

    from streams.kafka.acl_apply import _exact
    from streams.kafka.topics import admin_client

    from .conftest import Worker, make_env, publish_events

    env = make_env(stack, tmp_path, "acl-refused")
    audit_key = tmp_path / "audit.key"
    subprocess.run(
        [sys.executable, "-m", "streams.cli", "audit", "keygen", "--out", str(audit_key)],
        env=env.process_env(),
        check=True,
        capture_output=True,
    )
    s = env.settings
    admin = admin_client(s.bootstrap_servers, auth=s.kafka_auth)
    try:
        admin.delete_acls([_exact(AclBinding("User:screening-processor", "TOPIC", s.audit_topic, "WRITE"))])
    finally:
        admin.close()
    publish_events(env, 200, seed=5)
    worker = Worker(env, tmp_path / "worker.log", {"SCREENING_AUDIT_KEY_FILE": str(audit_key)})
    try:
        worker.process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker kept running without its WRITE ACL; its log ends:\n{worker.log()[-2000:]}")
    finally:
        worker.stop()
    log = worker.log()
    assert worker.process.returncode == 70, log[-2000:]
    assert "User:screening-processor may not" in log and "AUTHORIZATION_FAILED" in log, log[-2000:]
    # librdkafka may first report the refused AddPartitions as an erroneous state at the offsets'
    # commit (_STATE: the cause not yet known), so a batch or two can abort before the refusal itself
    # surfaces; the loop this pins against aborted 16 times in 60 s and never stopped.
    assert log.count("transaction aborted") <= 3, "aborted transactions repeated instead of stopping"


def test_acl_apply_names_rules_outside_the_plan_that_still_grant_access(
    deployment: tuple[Settings, list[AclBinding]],
) -> None:
    """A wildcard-principal READ on the DLQ: `acl apply` leaves it (not its rule) but names it (review F2)."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    from streams.kafka.acl_apply import _exact
    from streams.kafka.topics import admin_client

    settings, _ = deployment
    wildcard = ACL(
        "User:*",
        "*",
        ACLOperation.READ,
        ACLPermissionType.ALLOW,
        ResourcePattern(ResourceType.TOPIC, settings.dlq_topic, ACLResourcePatternType.LITERAL),
    )
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        assert not admin.create_acls([wildcard]).get("failed")
        change = apply_plan(settings, load_policy_set(settings))
        assert any("User:*" in f and settings.dlq_topic in f for f in change.foreign), change.foreign
    finally:
        admin.delete_acls([_exact(AclBinding("User:*", "TOPIC", settings.dlq_topic, "READ"))])
        admin.close()
    assert not apply_plan(settings, load_policy_set(settings), dry_run=True).foreign
