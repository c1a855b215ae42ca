"""Unit tests of runtime settings (streams.settings), read from an injected environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import (
    AUDIT_TOPIC,
    BROKER_DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_BOOTSTRAP,
    DEFAULT_REGISTRY,
    DLQ_HEADROOM_BYTES,
    DLQ_TOPIC,
    INGRESS_TOPIC,
    Settings,
    env_var,
    settings_from_env,
)


def test_public_topic_names() -> None:
    """The internal topic names are the product's public contract (shared/domain.md)."""
    assert (INGRESS_TOPIC, DLQ_TOPIC, AUDIT_TOPIC) == (
        "screening.results.v1",
        "screening.results.dlq.v1",
        "screening.audit.v1",
    )


def test_empty_environment_gives_defaults() -> None:
    """With no variables set, settings are the documented defaults (local stack endpoints)."""
    settings = settings_from_env({})
    assert settings == Settings()
    assert settings.bootstrap_servers == DEFAULT_BOOTSTRAP == "127.0.0.1:19092"
    assert settings.registry_url == DEFAULT_REGISTRY
    assert settings.topic_prefix == ""
    assert settings.policy_dir is None and settings.keys_file is None
    assert (settings.ingress_partitions, settings.output_partitions) == (6, 3)
    assert settings.batch_size == 500
    assert settings.ingress_topic == INGRESS_TOPIC
    assert settings.dlq_topic == DLQ_TOPIC
    assert settings.group_id == "screening-streams"


def test_environment_overrides_every_kind_of_field() -> None:
    """String, int, float and path fields are read from their variables and converted."""
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker:9092",
        "SCHEMA_REGISTRY_URL": "http://registry:8081",
        "SCREENING_TOPIC_PREFIX": "staging.",
        "SCREENING_POLICY_DIR": "/etc/screening/policies",
        "SCREENING_KEYS_FILE": "/run/secrets/keys.json",
        "SCREENING_OUTPUT_PARTITIONS": "12",
        "SCREENING_BATCH_SIZE": "50",
        "SCREENING_BATCH_WITHIN_S": "0.5",
        "SCREENING_LOG_LEVEL": "info",
        "UNRELATED": "ignored",
    }
    settings = settings_from_env(environ)
    assert settings.bootstrap_servers == "broker:9092"
    assert settings.registry_url == "http://registry:8081"
    assert settings.topic_prefix == "staging."
    assert settings.policy_dir == Path("/etc/screening/policies")
    assert settings.keys_file == Path("/run/secrets/keys.json")
    assert settings.output_partitions == 12
    assert settings.batch_size == 50
    assert settings.batch_within_s == 0.5
    assert settings.log_level == "info"
    assert settings.ingress_partitions == 6  # not set: default kept


def test_empty_variable_keeps_the_default() -> None:
    """A variable set to the empty string counts as unset."""
    assert settings_from_env({"SCREENING_BATCH_SIZE": "", "KAFKA_BOOTSTRAP_SERVERS": ""}) == Settings()


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("SCREENING_BATCH_SIZE", "many"),
        ("SCREENING_INGRESS_PARTITIONS", "6.5"),
        ("SCREENING_REPLICATION_FACTOR", "three"),
        ("SCREENING_BATCH_WITHIN_S", "soon"),
    ],
)
def test_bad_number_is_config_error_naming_the_variable(variable: str, raw: str) -> None:
    """A value that does not parse fails with ConfigError naming the variable and the type."""
    with pytest.raises(ConfigError, match=variable) as caught:
        settings_from_env({variable: raw})
    assert "expected" in str(caught.value)


@pytest.mark.parametrize(
    "variable", ["SCREENING_BATCH_SIZE", "SCREENING_INGRESS_PARTITIONS", "SCREENING_OUTPUT_PARTITIONS"]
)
def test_zero_counts_are_rejected(variable: str) -> None:
    """A batch size or partition count below 1 is refused at load time."""
    with pytest.raises(ConfigError, match="at least 1"):
        settings_from_env({variable: "0"})


def test_prefix_applies_to_every_derived_topic_and_group() -> None:
    """topic_prefix prefixes the ingress, dead-letter and audit topics and the consumer group."""
    settings = Settings(topic_prefix="t1.")
    assert settings.ingress_topic == "t1.screening.results.v1"
    assert settings.dlq_topic == "t1.screening.results.dlq.v1"
    assert settings.audit_topic == "t1.screening.audit.v1"
    assert settings.group_id == "t1.screening-streams"


def test_with_changes_fields_and_ignores_none() -> None:
    """with_ returns a changed copy; None values (unset CLI flags) leave fields as they are."""
    base = Settings(bootstrap_servers="a:1")
    changed = base.with_(bootstrap_servers=None, topic_prefix="x.", batch_size=7)
    assert changed.bootstrap_servers == "a:1"
    assert changed.topic_prefix == "x." and changed.batch_size == 7
    assert base.topic_prefix == ""  # the original is unchanged (frozen)


def test_env_var_names_the_variable_of_a_field() -> None:
    """env_var gives the variable behind a field, for CLI envvar= fallbacks."""
    assert env_var("bootstrap_servers") == "KAFKA_BOOTSTRAP_SERVERS"
    assert env_var("topic_prefix") == "SCREENING_TOPIC_PREFIX"
    with pytest.raises(KeyError):
        env_var("no_such_field")


def test_runner_settings_from_the_environment() -> None:
    """Static membership, session and transaction timeouts and the ingress size limit have variables."""
    settings = settings_from_env(
        {
            "SCREENING_INSTANCE_ID": "worker-3",
            "SCREENING_SESSION_TIMEOUT_MS": "6000",
            "SCREENING_TRANSACTION_TIMEOUT_MS": "10000",
            "SCREENING_INGRESS_MAX_MESSAGE_BYTES": "2097152",
        }
    )
    assert settings.instance_id == "worker-3"
    assert (settings.session_timeout_ms, settings.transaction_timeout_ms) == (6000, 10000)
    assert settings.ingress_max_message_bytes == 2_097_152
    assert env_var("instance_id") == "SCREENING_INSTANCE_ID"


def test_runner_defaults_are_dynamic_membership_and_the_broker_size_limit() -> None:
    """No instance id unless configured (two workers on one host must not share one); 1 MiB + 12 ingress."""
    settings = Settings()
    assert settings.instance_id is None
    assert settings.ingress_max_message_bytes == BROKER_DEFAULT_MAX_MESSAGE_BYTES == 1_048_588


def test_dead_letter_limit_leaves_room_for_the_dlq_headers() -> None:
    """The DLQ topic accepts the largest ingress record plus DLQ_HEADROOM_BYTES of headers."""
    settings = Settings(ingress_max_message_bytes=1_000_000)
    assert settings.dlq_max_message_bytes == 1_000_000 + DLQ_HEADROOM_BYTES
    assert DLQ_HEADROOM_BYTES >= 16 * 1024


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("SCREENING_SESSION_TIMEOUT_MS", "10"),
        ("SCREENING_TRANSACTION_TIMEOUT_MS", "0"),
        ("SCREENING_INGRESS_MAX_MESSAGE_BYTES", "100"),
    ],
)
def test_runner_limits_out_of_range_are_config_errors(variable: str, raw: str) -> None:
    """Timeouts under a second and an ingress limit under 1 KiB are refused, naming the variable."""
    with pytest.raises(ConfigError, match=variable):
        settings_from_env({variable: raw})
