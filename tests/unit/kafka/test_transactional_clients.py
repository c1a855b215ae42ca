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
from streams.settings import Settings


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
