"""Kafka credentials: where a process's principal comes from, how each client library is given it, secrets kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.credentials import KafkaAuth, auth_from_env, load_credentials_file, write_credentials_file
from streams.errors import ConfigError


def _auth() -> KafkaAuth:
    return KafkaAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "screening-processor", "s3cret-pw")


def test_each_client_library_gets_the_same_principal() -> None:
    """librdkafka, kafka-python and Java settings name the same protocol, mechanism and user."""
    auth = _auth()
    assert auth.librdkafka() == {
        "security.protocol": "sasl_plaintext",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "screening-processor",
        "sasl.password": "s3cret-pw",
    }
    assert auth.kafka_python()["sasl_plain_username"] == "screening-processor"
    assert auth.kafka_python()["security_protocol"] == "SASL_PLAINTEXT"
    jaas = auth.java_properties()["sasl.jaas.config"]
    assert "ScramLoginModule" in jaas and 'username="screening-processor"' in jaas
    assert auth.principal == "User:screening-processor"


def test_the_password_is_never_in_the_repr_nor_in_errors(tmp_path: Path) -> None:
    """repr() hides the password; a refused file names the file, not its content."""
    assert "s3cret-pw" not in repr(_auth())
    path = tmp_path / "c.json"
    write_credentials_file(path, _auth())
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_credentials_file(path)
    assert str(path) in str(caught.value) and "s3cret-pw" not in str(caught.value)


def test_a_credentials_file_is_written_0600_and_read_back(tmp_path: Path) -> None:
    """The file round-trips and is private to its user."""
    path = tmp_path / "creds" / "p.json"
    write_credentials_file(path, _auth())
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_credentials_file(path) == _auth()


def test_environment_wins_over_file_which_wins_over_the_stack_fallback(tmp_path: Path) -> None:
    """Order: SCREENING_KAFKA_USERNAME/PASSWORD, then SCREENING_KAFKA_CREDENTIALS_FILE, then the fallback."""
    named, fallback = tmp_path / "named.json", tmp_path / "fallback.json"
    write_credentials_file(named, KafkaAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "from-file", "pw1"))
    write_credentials_file(fallback, KafkaAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "from-stack", "pw2"))
    env = {
        "SCREENING_KAFKA_USERNAME": "from-env",
        "SCREENING_KAFKA_PASSWORD": "pw0",
        "SCREENING_KAFKA_CREDENTIALS_FILE": str(named),
    }
    assert auth_from_env(env, fallback).username == "from-env"
    del env["SCREENING_KAFKA_USERNAME"], env["SCREENING_KAFKA_PASSWORD"]
    assert auth_from_env(env, fallback).username == "from-file"
    assert auth_from_env({}, fallback).username == "from-stack"
    assert not auth_from_env({}, tmp_path / "absent.json").sasl


def test_incomplete_or_unknown_settings_fail_at_load(tmp_path: Path) -> None:
    """A SASL protocol without a password, an unknown mechanism or key: ConfigError naming the source."""
    with pytest.raises(ConfigError, match="needs a user name and a password"):
        auth_from_env({"SCREENING_KAFKA_USERNAME": "only-user"})
    with pytest.raises(ConfigError, match="mechanism"):
        KafkaAuth("SASL_PLAINTEXT", "GSSAPI", "u", "p")
    path = tmp_path / "bad.json"
    path.write_text('{"username": "u", "password": "p", "extra": "x"}')
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="unknown keys"):
        load_credentials_file(path)
