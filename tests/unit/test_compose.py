"""The operators' compose stack is valid Compose, authenticates everyone, and observes what the workers export.

No Docker needed (none on this project's machines): the file is read as data, and the kafka
service's entrypoint script (docker/kafka/start.sh) is run with ``--print-properties`` to see the
server.properties the image would render from the service's environment.

The Compose Specification's JSON schema comes from its reference implementation's module on the
Go module proxy (``github.com/compose-spec/compose-go/v2``, ``schema/compose-spec.json``),
downloaded once into the stack cache, as the broker jars are from Maven Central.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import urllib.request
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from streams.credentials import ADMIN, PROCESSOR, PRODUCER, REGISTRY, KafkaAuth
from streams.ops.metrics import WorkerMetrics
from streams.stack.security import SERVICE_USERS, sasl_server_properties
from tests.conftest import module_from_file

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_GO = "v2.10.0"
SCHEMA_URL = f"https://proxy.golang.org/github.com/compose-spec/compose-go/v2/@v/{COMPOSE_GO}.zip"


def _compose_spec_schema() -> dict[str, Any]:
    home = Path(os.environ.get("HOME") or Path.home())
    cache = Path(os.environ.get("SCREENING_STREAMS_CACHE") or home / ".cache" / "screening-streams")
    path = cache / "compose-spec" / f"compose-spec-{COMPOSE_GO}.json"
    if not path.exists():
        with urllib.request.urlopen(SCHEMA_URL, timeout=60) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
        [name] = [n for n in archive.namelist() if n.endswith("/schema/compose-spec.json")]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(archive.read(name))
    return dict(json.loads(path.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker/compose.yaml as Compose reads it (anchors and merge keys resolved)."""
    return dict(yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8")))


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    """jsonschema validation of docker/compose.yaml against compose-spec.json (every error listed)."""
    schema = _compose_spec_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_the_schema_check_rejects_an_invalid_file(compose: dict[str, Any]) -> None:
    """The validation can fail: an unknown service key and a wrong type are reported."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["replicas_typo"] = 3
    broken["services"]["worker"]["healthcheck"] = "yes"  # an object is required
    errors = list(jsonschema.Draft7Validator(_compose_spec_schema()).iter_errors(broken))
    assert len(errors) >= 2


def test_workers_scale_and_are_observed(compose: dict[str, Any]) -> None:
    """Workers: no container name nor host port (so --scale works), a web port Prometheus scrapes, a healthcheck."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    port = worker["environment"]["SCREENING_WEB_PORT"]
    assert "/healthz" in " ".join(worker["healthcheck"]["test"]) and port in " ".join(worker["healthcheck"]["test"])
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    [job] = prometheus["scrape_configs"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and str(sd["port"]) == port and job["metrics_path"] == "/metrics"
    assert worker["environment"]["SCREENING_AUDIT_KEY_FILE"] == "/keys/audit.key"
    for name in ("prometheus", "grafana"):
        ports = compose["services"][name]["ports"]
        assert all(str(p).startswith("127.0.0.1:") for p in ports), name  # loopback only


def test_every_dashboard_query_uses_series_the_workers_export() -> None:
    """Each metric named in the Grafana dashboard exists in the worker's exposition (no dead panel)."""
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "screening-streams.json").read_text())
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)", WorkerMetrics(["cnam"]).render().decode(), re.M))
    names = set()
    for metric, kind in exported:
        names.add(metric)
        if kind == "counter":
            names.add(metric + "_total")
        if kind == "histogram":
            names.update({metric + "_bucket", metric + "_count", metric + "_sum"})
    used = {
        m
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for m in re.findall(r"\b(screening_[a-z_]+)", target["expr"])
    }
    assert used and used <= names, sorted(used - names)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("per recipient", "lag", "dead letters", "latency"):
        assert topic in titles
    datasource = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# ---------------------------------------------------------------- security (issue 9 item 1)
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}")
TEST_PASSWORDS = {
    "SCREENING_KAFKA_ADMIN_PASSWORD": "admin-test-password-0000",
    "SCREENING_KAFKA_PROCESSOR_PASSWORD": "processor-test-password-1",
    "SCREENING_KAFKA_SYSTEM_PASSWORD": "system-test-password-22",
    "SCREENING_KAFKA_OPERATOR_PASSWORD": "operator-test-password-3",
    "SCREENING_KAFKA_REGISTRY_PASSWORD": "registry-test-password-4",
}


def _interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (``$$`` is a literal ``$``)."""

    def one(match: re.Match[str]) -> str:
        name, kind, arg = match.groups()
        if environ.get(name):
            return environ[name]
        if kind == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if kind == "-" else ""

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def _env(service: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, str]:
    return {
        k: _interpolate(str(v), TEST_PASSWORDS if environ is None else environ)
        for k, v in service["environment"].items()
    }


def _setup_module() -> ModuleType:
    return module_from_file(DOCKER / "setup.py", "compose_setup")


def _rendered_broker_properties(compose: dict[str, Any], password: str) -> subprocess.CompletedProcess[str]:
    """docker/kafka/start.sh --print-properties under the kafka service's environment."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    env = _env(compose["services"]["kafka"], {**TEST_PASSWORDS, "SCREENING_KAFKA_ADMIN_PASSWORD": password})
    return subprocess.run(
        [bash, str(DOCKER / "kafka" / "start.sh"), "--print-properties"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_broker_listener_authenticates_and_nothing_is_allowed_by_default(compose: dict[str, Any]) -> None:
    """SASL on every listener (no PLAINTEXT/SSL-only one), SCRAM-SHA-512 for clients, PLAIN for the controller."""
    env = compose["services"]["kafka"]["environment"]
    protocol_map = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocol_map.values()) <= {"SASL_PLAINTEXT", "SASL_SSL"}, protocol_map
    for variable in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"):
        names = {endpoint.split("://")[0] for endpoint in env[variable].split(",")}
        assert names <= set(protocol_map), (variable, names)  # no listener outside the map (PLAINTEXT by name)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in protocol_map
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "SCRAM-SHA-512"
    assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert str(env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"]).lower() == "false"
    assert env["KAFKA_SUPER_USERS"] == f"User:{ADMIN}"
    # The published port stays on loopback, and the healthcheck authenticates (as the admin).
    assert all(str(p).startswith("127.0.0.1:") for p in compose["services"]["kafka"]["ports"])
    assert "--command-config /opt/kafka/config/admin.properties" in " ".join(
        compose["services"]["kafka"]["healthcheck"]["test"]
    )


def test_the_broker_renders_the_same_security_settings_as_the_local_stack(compose: dict[str, Any]) -> None:
    """start.sh's server.properties carry what security.sasl_server_properties gives the no-Docker broker.

    Listener names differ (BROKER/HOST here, SASL_PLAINTEXT there): the listener-independent
    settings must be equal, and every SASL listener must have its login module (the broker's
    one logs in as the admin, the controller's PLAIN one knows only the admin).
    """
    password = TEST_PASSWORDS["SCREENING_KAFKA_ADMIN_PASSWORD"]
    result = _rendered_broker_properties(compose, password)
    assert result.returncode == 0, result.stderr
    rendered = dict(line.split("=", 1) for line in result.stdout.splitlines() if line)
    local = sasl_server_properties(
        9092, 9093, "127.0.0.1", KafkaAuth("SASL_PLAINTEXT", username=ADMIN, password=password)
    )
    for key in (
        "sasl.enabled.mechanisms",
        "sasl.mechanism.inter.broker.protocol",
        "sasl.mechanism.controller.protocol",
        "listener.name.controller.sasl.enabled.mechanisms",
        "listener.name.controller.plain.sasl.jaas.config",
        "authorizer.class.name",
        "allow.everyone.if.no.acl.found",
        "super.users",
    ):
        assert rendered.get(key) == local[key], key
    assert (
        rendered["listener.name.broker.scram-sha-512.sasl.jaas.config"]
        == local["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    )
    protocol_map = dict(pair.split(":") for pair in rendered["listener.security.protocol.map"].split(","))
    for listener in protocol_map:
        mechanism = "plain" if listener == "CONTROLLER" else "scram-sha-512"
        assert f"listener.name.{listener.lower()}.{mechanism}.sasl.jaas.config" in rendered, listener
    assert not any(k.startswith("screening") or "password=" in k for k in rendered)  # no stray variable


def test_the_broker_refuses_a_missing_or_weak_admin_password(compose: dict[str, Any]) -> None:
    """start.sh exits 2 before anything else when the password is short or would break the JAAS quoting."""
    for bad in ("short", 'has"quote-and-long-enough', "x" * 15):
        result = _rendered_broker_properties(compose, bad)
        assert result.returncode == 2, bad
        assert bad not in result.stderr


def test_passwords_are_required_and_never_defaulted(compose: dict[str, Any]) -> None:
    """Every Kafka password is ``${VAR:?...}``: the file holds no secret and no default one."""
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    uses = re.findall(r"\$\{(SCREENING_KAFKA_[A-Z_]*PASSWORD[A-Z_]*)(:.)?", text)
    assert {name for name, _ in uses} == set(TEST_PASSWORDS)
    assert all(kind == ":?" for _, kind in uses), uses
    with pytest.raises(KeyError, match="SCREENING_KAFKA_PROCESSOR_PASSWORD"):
        _env(compose["services"]["worker"], {})


def test_each_client_runs_as_its_own_principal_never_the_admin(compose: dict[str, Any]) -> None:
    """Workers are the processor, the generator the screening system, the registry schema-registry."""
    services = compose["services"]
    expected = {"worker": PROCESSOR, "generator": PRODUCER}
    for name, user in expected.items():
        env = _env(services[name])
        assert env["SCREENING_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert env["SCREENING_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["SCREENING_KAFKA_USERNAME"] == user
        assert env["SCREENING_KAFKA_PASSWORD"] not in ("", TEST_PASSWORDS["SCREENING_KAFKA_ADMIN_PASSWORD"])
    assert _env(services["worker"])["SCREENING_KAFKA_PASSWORD"] == TEST_PASSWORDS["SCREENING_KAFKA_PROCESSOR_PASSWORD"]
    registry = _env(services["registry"])
    assert registry["APICURIO_KAFKA_COMMON_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert registry["APICURIO_KAFKA_COMMON_SASL_MECHANISM"] == "SCRAM-SHA-512"
    jaas = registry["APICURIO_KAFKA_COMMON_SASL_JAAS_CONFIG"]
    assert f'username="{REGISTRY}"' in jaas
    assert f'password="{TEST_PASSWORDS["SCREENING_KAFKA_REGISTRY_PASSWORD"]}";' in jaas
    # Only the broker and the one-shot setup ever see the admin's password.
    admin_users = {
        name
        for name, service in services.items()
        if "SCREENING_KAFKA_ADMIN_PASSWORD" in json.dumps(service.get("environment", {}))
    }
    assert admin_users == {"kafka", "setup"}
    assert _env(services["setup"])["SCREENING_KAFKA_USERNAME"] == ADMIN


def test_setup_prepares_the_broker_before_anything_uses_it(compose: dict[str, Any]) -> None:
    """setup waits for a healthy broker; registry, workers and generator wait for setup to exit 0."""
    services = compose["services"]
    assert "topics" not in services and "registry-topics" not in services  # one setup does it all
    setup = services["setup"]
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert setup["restart"] == "no"
    for name in ("registry", "worker", "generator"):
        assert services[name]["depends_on"]["setup"]["condition"] == "service_completed_successfully", name
    [command] = setup["command"]
    steps = [step.strip() for step in command.split("&&")]
    assert steps == ["python /app/setup.py", "screening-streams topics", "screening-streams acl apply"]
    assert "COPY docker/setup.py /app/setup.py" in (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    # setup is given every service principal's password, and exactly the principals the local stack has.
    module = _setup_module()
    assert set(module.SERVICE_PASSWORDS) == set(SERVICE_USERS)
    assert set(module.SERVICE_PASSWORDS.values()) <= set(setup["environment"])


def test_setup_refuses_a_bad_environment_before_any_connection() -> None:
    """Not the admin, a missing/weak password, or the admin's password reused: exit 2, the secret not shown."""
    module = _setup_module()
    good = {
        "SCREENING_KAFKA_USERNAME": ADMIN,
        "SCREENING_KAFKA_PASSWORD": TEST_PASSWORDS["SCREENING_KAFKA_ADMIN_PASSWORD"],
        **TEST_PASSWORDS,
    }
    admin = module.admin_auth(good)
    creds = module.service_credentials(good, admin)
    assert {u: a.username for u, a in creds.items()} == {u: u for u in SERVICE_USERS}
    assert creds[PROCESSOR].password == TEST_PASSWORDS["SCREENING_KAFKA_PROCESSOR_PASSWORD"]
    assert creds[PROCESSOR].security_protocol == "SASL_PLAINTEXT"
    bad_cases = [
        {**good, "SCREENING_KAFKA_USERNAME": PROCESSOR},
        {k: v for k, v in good.items() if k != "SCREENING_KAFKA_REGISTRY_PASSWORD"},
        {**good, "SCREENING_KAFKA_SYSTEM_PASSWORD": "short"},
        {**good, "SCREENING_KAFKA_OPERATOR_PASSWORD": good["SCREENING_KAFKA_PASSWORD"]},
    ]
    for env in bad_cases:
        assert module.main(env) == 2
