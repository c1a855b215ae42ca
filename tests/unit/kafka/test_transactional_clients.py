"""Unit tests of the runner's client configuration and error classes (streams.kafka.clients)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from streams.kafka.clients import (
    consumer_config,
    is_permanent,
    producer_config,
    producer_max_message_bytes,
    transactional_id,
)
from streams.settings import DLQ_HEADROOM_BYTES, Settings


def test_consumer_reads_committed_with_offsets_only_through_transactions() -> None:
    """read_committed (also require_stable offset fetches), no auto commit or store, cooperative assignment."""
    config = consumer_config(Settings(topic_prefix="t.", session_timeout_ms=6000))
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["group.id"] == "t.screening-streams"
    assert config["session.timeout.ms"] == 6000 and config["heartbeat.interval.ms"] == 2000
    assert "group.instance.id" not in config, "dynamic membership unless an instance id is set"


def test_static_membership_sets_instance_and_transactional_ids() -> None:
    """An instance id gives group.instance.id and a stable transactional.id <group>-<instance>."""
    settings = Settings(instance_id="w7")
    assert consumer_config(settings)["group.instance.id"] == "w7"
    assert producer_config(settings, transactional=True)["transactional.id"] == "screening-streams-w7"
    assert transactional_id(settings) == transactional_id(settings)


def test_without_instance_id_each_process_gets_a_fresh_transactional_id() -> None:
    """Two dynamic workers never share a transactional.id (they would fence each other)."""
    settings = Settings()
    assert transactional_id(settings) != transactional_id(settings)


def test_producer_accepts_a_dead_letter_of_the_largest_ingress_record() -> None:
    """message.max.bytes is above the DLQ topic's limit, itself above the ingress limit."""
    settings = Settings(ingress_max_message_bytes=1_048_588)
    config = producer_config(settings, transactional=True)
    assert config["message.max.bytes"] == producer_max_message_bytes(settings) > settings.dlq_max_message_bytes
    assert settings.dlq_max_message_bytes > settings.ingress_max_message_bytes
    assert config["transaction.timeout.ms"] == settings.transaction_timeout_ms
    assert config["enable.idempotence"] is True and config["acks"] == "all"


def test_at_least_once_producer_is_not_transactional() -> None:
    """The at_least_once producer is idempotent but has no transactional.id."""
    config = producer_config(Settings(), transactional=False)
    assert "transactional.id" not in config and config["enable.idempotence"] is True


def test_permanent_errors_are_told_from_transient_ones() -> None:
    """Too large, invalid record and authorisation are permanent; timeouts and leader moves are not."""
    for code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.TOPIC_AUTHORIZATION_FAILED):
        assert is_permanent(KafkaError(code))
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._TRANSPORT):
        assert not is_permanent(KafkaError(code))


def test_topic_specs_size_the_dlq_above_the_ingress() -> None:
    """New ingress and DLQ topics carry max.message.bytes: the DLQ's leaves room for the dlq.* headers."""
    from streams.kafka.topics import topic_specs

    settings = Settings(ingress_max_message_bytes=2_000_000)
    specs = {spec.name: spec for spec in topic_specs(settings, [])}
    assert specs[settings.ingress_topic].configs["max.message.bytes"] == "2000000"
    assert specs[settings.dlq_topic].configs["max.message.bytes"] == str(2_000_000 + DLQ_HEADROOM_BYTES)


def test_record_limits_check_refuses_a_dlq_too_small_for_the_ingress() -> None:
    """A DLQ topic (or producer) that cannot take the largest ingress record plus headers fails fast, naming it."""
    import pytest

    from streams.kafka.topics import TopicError, check_record_limits

    settings = Settings()
    ok = {settings.ingress_topic: 1_048_588, settings.dlq_topic: 1_048_588 + DLQ_HEADROOM_BYTES}
    check_record_limits(settings, ok, producer_max_message_bytes(settings))
    too_small = {**ok, settings.dlq_topic: 1_048_588}
    with pytest.raises(TopicError, match=r"screening\.results\.dlq\.v1 accepts records up to 1048588"):
        check_record_limits(settings, too_small, producer_max_message_bytes(settings))
    bigger_ingress = {settings.ingress_topic: 4_000_000, settings.dlq_topic: 5_000_000}
    with pytest.raises(TopicError, match="SCREENING_INGRESS_MAX_MESSAGE_BYTES"):
        check_record_limits(settings, bigger_ingress, producer_max_message_bytes(settings))
