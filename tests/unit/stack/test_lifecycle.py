"""Unit tests of the pure parts of streams.stack.lifecycle (no java, no network, no processes)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from streams.credentials import KafkaAuth
from streams.errors import ConfigError, LocalStackError
from streams.stack import fetch, lifecycle
from streams.stack.settings import Endpoints, StackSettings, endpoints_for


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


#: A throw-away admin credential for rendering server.properties (never a real password).
_ADMIN = KafkaAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "admin", "not-a-real-password")


def _fake_tool(directory: Path, name: str) -> None:
    tool = directory / name
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_settings_defaults_live_under_home_cache() -> None:
    """With no variables set, jars cache in ~/.cache/screening-streams and state in its run/."""
    settings = StackSettings.from_env({"HOME": "/home/tester"})
    assert settings.cache_dir == Path("/home/tester/.cache/screening-streams")
    assert settings.state_dir == Path("/home/tester/.cache/screening-streams/run")
    assert (settings.kafka_version, settings.registry_version) == ("4.4.0", "3.0.9")
    assert (settings.kafka_port, settings.registry_port) == (19092, 18081)
    assert settings.external_bootstrap is None and settings.external_registry is None
    assert settings.start_timeout_s == 90.0


def test_settings_overrides_from_env() -> None:
    """Every SCREENING_* variable overrides its default; state defaults to <cache>/run."""
    settings = StackSettings.from_env(
        {
            "HOME": "/home/tester",
            "SCREENING_STREAMS_CACHE": "/srv/cache",
            "SCREENING_KAFKA_VERSION": "4.1.0",
            "SCREENING_REGISTRY_VERSION": "3.0.6",
            "SCREENING_KAFKA_PORT": "29092",
            "SCREENING_REGISTRY_PORT": "28081",
            "SCREENING_START_TIMEOUT_S": "12.5",
        }
    )
    assert settings.cache_dir == Path("/srv/cache")
    assert settings.state_dir == Path("/srv/cache/run")
    assert (settings.kafka_version, settings.registry_version) == ("4.1.0", "3.0.6")
    assert (settings.kafka_port, settings.registry_port) == (29092, 28081)
    assert settings.start_timeout_s == 12.5


def test_settings_state_dir_and_tilde_expand() -> None:
    """SCREENING_STREAMS_STATE is honoured and a leading ~/ expands against HOME."""
    settings = StackSettings.from_env(
        {
            "HOME": "/home/tester",
            "SCREENING_STREAMS_CACHE": "~/jars",
            "SCREENING_STREAMS_STATE": "/tmp/state",
        }
    )
    assert settings.cache_dir == Path("/home/tester/jars")
    assert settings.state_dir == Path("/tmp/state")


def test_settings_external_services_and_empty_values() -> None:
    """KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL are taken; empty strings count as unset."""
    settings = StackSettings.from_env(
        {
            "HOME": "/h",
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
            "SCHEMA_REGISTRY_URL": "",
        }
    )
    assert settings.external_bootstrap == "kafka:9092"
    assert settings.external_registry is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCREENING_KAFKA_PORT", "abc"),
        ("SCREENING_REGISTRY_PORT", "70000"),
        ("SCREENING_KAFKA_PORT", "65535"),
        ("SCREENING_START_TIMEOUT_S", "soon"),
    ],
)
def test_settings_reject_bad_numbers(name: str, value: str) -> None:
    """A non-numeric or out-of-range port/timeout is a ConfigError naming the variable(s)."""
    with pytest.raises(ConfigError, match=f"^{name}="):
        StackSettings.from_env({"HOME": "/h", name: value})


def test_server_properties_single_node_kraft() -> None:
    """server.properties is a one-node broker+controller on loopback, replication factors 1."""
    settings = StackSettings.from_env({"HOME": "/h", "SCREENING_STREAMS_STATE": "/s"})
    props = _props(lifecycle.render_server_properties(settings, _ADMIN))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:19092"
    assert props["listener.security.protocol.map"] == "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    scram_login = props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert scram_login.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
    assert 'username="admin"' in scram_login and 'password="not-a-real-password"' in scram_login
    plain_login = props["listener.name.controller.plain.sasl.jaas.config"]
    assert plain_login.startswith("org.apache.kafka.common.security.plain.PlainLoginModule required")
    assert 'user_admin="not-a-real-password"' in plain_login
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == "/s/kafka-data"
    assert props["auto.create.topics.enable"] == "false"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key


def test_server_properties_follow_port_setting() -> None:
    """The controller listens on kafka_port + 1 and nothing still names the default ports."""
    settings = StackSettings.from_env({"HOME": "/h", "SCREENING_KAFKA_PORT": "29092"})
    text = lifecycle.render_server_properties(settings, _ADMIN)
    assert "SASL_PLAINTEXT://127.0.0.1:29092" in text
    assert "CONTROLLER://127.0.0.1:29093" in text and "1@127.0.0.1:29093" in text
    assert "1909" not in text


def test_server_properties_enforce_authorisation() -> None:
    """The broker authenticates every connection and authorises every request: the KRaft standard
    authorizer, nothing allowed without an ACL, the admin the one super user, no PLAINTEXT listener."""
    settings = StackSettings.from_env({"HOME": "/h", "SCREENING_STREAMS_STATE": "/s"})
    props = _props(lifecycle.render_server_properties(settings, _ADMIN))
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    listeners = props["listeners"].split(",") + props["advertised.listeners"].split(",")
    assert not [listener for listener in listeners if listener.startswith("PLAINTEXT://")]
    protocols = [pair.split(":", 1)[1] for pair in props["listener.security.protocol.map"].split(",")]
    assert protocols and all(protocol.startswith("SASL_") for protocol in protocols)
    assert "PLAINTEXT:PLAINTEXT" not in props["listener.security.protocol.map"]


def test_pom_lists_kafka_and_log4j_binding() -> None:
    """The throw-away pom pulls kafka_2.13 at the chosen version plus a log4j2 slf4j binding."""
    pom = fetch.render_pom("4.4.0")
    assert "<artifactId>kafka_2.13</artifactId><version>4.4.0</version>" in pom
    assert "log4j-slf4j-impl" in pom and "log4j-core" in pom


def test_cluster_id_is_22_char_base64url() -> None:
    """Generated cluster ids have KRaft's shape and never start with '-'."""
    ids = {lifecycle.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def test_local_endpoints_use_ccompat_url() -> None:
    """Local endpoints are loopback ports and the registry URL is the ccompat v7 base."""
    ends = endpoints_for(StackSettings.from_env({"HOME": "/h"}))
    assert ends.bootstrap_servers == "127.0.0.1:19092"
    assert ends.registry_url == "http://127.0.0.1:18081/apis/ccompat/v7"
    assert ends.managed is True


def test_external_services_need_no_start(tmp_path: Path) -> None:
    """With both services external, up() returns them unmanaged and touches no disk/process."""
    settings = StackSettings.from_env(
        {
            "HOME": str(tmp_path),
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
            "SCHEMA_REGISTRY_URL": "http://registry:8081/apis/ccompat/v7/",
        }
    )
    lines: list[str] = []
    ends = lifecycle.up(settings, echo=lines.append)
    assert ends == Endpoints("kafka:9092", "http://registry:8081/apis/ccompat/v7", managed=False)
    assert not settings.cache_dir.exists() and not settings.state_dir.exists()
    assert len(lines) == 2 and all("external" in line for line in lines)


def test_one_external_service_keeps_stack_managed() -> None:
    """External broker but local registry: endpoints mix both and the stack is still managed."""
    settings = StackSettings.from_env({"HOME": "/h", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    ends = endpoints_for(settings)
    assert ends.bootstrap_servers == "k:9092"
    assert ends.registry_url.startswith("http://127.0.0.1:18081")
    assert ends.managed is True


def test_check_tools_names_missing_java(tmp_path: Path) -> None:
    """Without java on PATH the error says so and how to install a JDK 17."""
    _fake_tool(tmp_path, "mvn")
    with pytest.raises(LocalStackError) as info:
        lifecycle.check_tools(path=str(tmp_path))
    assert str(info.value) == (
        "java not found on PATH: install a JDK 17+ (e.g. apt-get install openjdk-17-jre-headless)"
    )


def test_check_tools_names_missing_mvn(tmp_path: Path) -> None:
    """With java but no mvn on PATH the error names mvn and the maven package."""
    _fake_tool(tmp_path, "java")
    with pytest.raises(LocalStackError, match=r"^mvn not found on PATH: .*apt-get install maven"):
        lifecycle.check_tools(path=str(tmp_path))


def test_check_tools_passes_when_both_present(tmp_path: Path) -> None:
    """With both tools on PATH check_tools() returns quietly."""
    _fake_tool(tmp_path, "java")
    _fake_tool(tmp_path, "mvn")
    lifecycle.check_tools(path=str(tmp_path))


def test_log_tail_keeps_last_lines(tmp_path: Path) -> None:
    """log_tail returns only the last N lines, and '' for a missing log."""
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    assert lifecycle.log_tail(log, 3) == "line 47\nline 48\nline 49"
    assert lifecycle.log_tail(tmp_path / "missing.log") == ""


def test_status_and_down_without_state(tmp_path: Path) -> None:
    """With no state dir, status() reports both down and down() is a quiet no-op."""
    settings = StackSettings.from_env({"HOME": str(tmp_path)})
    assert lifecycle.status(settings) == {"kafka": "down", "registry": "down"}
    lines: list[str] = []
    lifecycle.down(settings, echo=lines.append)
    assert lines == ["nothing to stop"] and not settings.state_dir.exists()
