"""The operators' compose stack is valid Compose and observes what the workers export (no Docker needed).

The Compose Specification's JSON schema comes from its reference implementation's module on the
Go module proxy (``github.com/compose-spec/compose-go/v2``, ``schema/compose-spec.json``),
downloaded once into the stack cache, as the broker jars are from Maven Central.
"""

from __future__ import annotations

import io
import json
import os
import re
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streams.ops.metrics import WorkerMetrics

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
