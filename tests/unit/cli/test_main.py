"""Unit tests of the command line (streams.cli.main) through click's CliRunner, without Kafka."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import fastavro
from click.testing import CliRunner, Result

from streams.assembly import load_policy_set
from streams.cli.main import main
from streams.contracts.schemas import input_schema, to_readable, to_wire
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.settings import Settings

# Variables that would change what the commands read or write: cleared for every run.
_CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in (
        "SCREENING_POLICY_DIR",
        "SCREENING_SCHEMA_DIR",
        "SCREENING_RECIPIENT",
        "SCREENING_MATRIX_HTML",
        "SCREENING_GENERATE_OUT",
        "SCREENING_GENERATE_PUBLISH",
        "SCREENING_GENERATE_COUNT",
        "SCREENING_GENERATE_SEED",
        "SCREENING_GENERATE_SCHEMA_VERSION",
        "SCREENING_POSITIVE_SHARE",
        "SCREENING_TOPIC_PREFIX",
    )
}
POLICIES = {p.recipient: p for p in load_policy_set(Settings()).policies}


def _run(*args: str) -> Result:
    return CliRunner(env=_CLEAN_ENV).invoke(main, list(args), catch_exceptions=False)


def _event(result: str = "POSITIVE", mode: str = "P") -> dict[str, Any]:
    event = dict(next(iter(generate_events(1, GeneratorSettings(seed=8)))))
    event.update(result=result, processing_mode=mode)
    return event


def _columns(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Split a plain-text table into its headers and rows, using the dashed rule for widths."""
    lines = text.splitlines()
    rule_at = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans, start = [], 0
    for dashes in lines[rule_at].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    headers = [lines[rule_at - 1][a:b].strip() for a, b in spans]
    rows = []
    for line in lines[rule_at + 1 :]:
        if not line.strip():
            break
        rows.append({h: line[a:b].strip() for h, (a, b) in zip(headers, spans, strict=True)})
    return headers, rows


def test_policy_check_lists_the_three_recipients() -> None:
    """`policy check` succeeds and prints one ok line per recipient with its topic."""
    result = _run("policy", "check")
    assert result.exit_code == 0, result.output
    ok_lines = [line for line in result.output.splitlines() if line.startswith("ok ")]
    assert [line.split()[1] for line in ok_lines] == ["ars", "cnam", "spf"]
    assert "surveillance.spf.results.v1" in result.output
    assert "tracing.ars.{region}.results.v1" in result.output


def test_policy_explain_spf_shows_every_output_field_and_default_deny() -> None:
    """`policy explain spf` has one row per field spf receives and says 'default deny'."""
    result = _run("policy", "explain", "spf")
    assert result.exit_code == 0, result.output
    _, rows = _columns(result.output)
    assert [row["field"] for row in rows] == [rule.name for rule in POLICIES["spf"].emitted]
    assert "default deny" in result.output
    assert "surveillance.spf.results.v1" in result.output


def test_policy_explain_unknown_recipient_is_one_line_error() -> None:
    """`policy explain nobody` exits 2 with a single error line naming the known recipients."""
    result = _run("policy", "explain", "nobody")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "nobody" in lines[0] and "ars, cnam, spf" in lines[0]


def test_policy_matrix_has_one_row_per_input_field() -> None:
    """`policy matrix` lists the 29 input fields once each, with one column per recipient."""
    result = _run("policy", "matrix")
    assert result.exit_code == 0, result.output
    headers, rows = _columns(result.output)
    assert headers == ["input field", "class", "ars", "cnam", "spf"]
    assert [row["input field"] for row in rows] == [f["name"] for f in input_schema(1)["fields"]]
    assert len(rows) == 29


def test_policy_matrix_marks_what_spf_never_receives() -> None:
    """spf gets '·' for names and contact details and only a pseudonym derived from the NIR."""
    _, rows = _columns(_run("policy", "matrix").output)
    spf = {row["input field"]: row["spf"] for row in rows}
    for name in ("last_name", "first_names", "phone", "email", "address_lines", "prescriber_rpps"):
        assert spf[name] == "·"
    assert spf["nir"] == "pseudonymise→pseudonym"
    cnam = {row["input field"]: row["cnam"] for row in rows}
    assert cnam["nir"] == "encrypt" and cnam["prescriber_rpps"] == "·"


def test_policy_matrix_html_writes_a_table(tmp_path: Path) -> None:
    """`policy matrix --html FILE` also writes an HTML page with the matrix as a table."""
    out = tmp_path / "out.html"
    result = _run("policy", "matrix", "--html", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert page.count("<tr>") == 1 + 29
    assert "<th>spf</th>" in page and '<td class="deny">·</td>' in page
    assert str(out) in result.output


def _dry_run(tmp_path: Path, event: dict[str, Any]) -> Result:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(to_readable(event, input_schema(1))), encoding="utf-8")
    return _run("policy", "dry-run", str(path))


def test_dry_run_of_positive_production_event_reaches_three_recipients(tmp_path: Path) -> None:
    """A P/POSITIVE event reaches cnam, spf and the ARS topic of its commune's region."""
    event = _event()
    region = DEFAULT_GEOGRAPHY.region_of(event["commune_code"])
    result = _dry_run(tmp_path, event)
    assert result.exit_code == 0, result.output
    assert "validation: ok" in result.output
    assert "-> cnam tracing.cnam.results.v1" in result.output
    assert "-> spf surveillance.spf.results.v1" in result.output
    assert f"-> ars tracing.ars.{region}.results.v1" in result.output
    assert "xx " not in result.output


def test_dry_run_of_test_mode_event_reaches_nobody(tmp_path: Path) -> None:
    """A test-mode (T) event is filtered out for every recipient: all decisions are 'xx'."""
    result = _dry_run(tmp_path, _event(mode="T"))
    assert result.exit_code == 0, result.output
    marks = [line.split()[0] for line in result.output.splitlines() if line[:3] in ("-> ", "xx ")]
    assert marks == ["xx", "xx", "xx"]


def test_dry_run_of_invalid_event_says_dead_letter(tmp_path: Path) -> None:
    """A dry run of an event with an unknown commune reports the DLQ code and reaches nobody."""
    result = _dry_run(tmp_path, {**_event(), "commune_code": "97501"})
    assert result.exit_code == 0, result.output
    assert "REJECTED" in result.output and "unknown_commune" in result.output
    assert not [line for line in result.output.splitlines() if line.startswith(("-> ", "xx "))]


def test_generate_jsonl_writes_the_requested_count(tmp_path: Path) -> None:
    """`generate --count 50 --out x.jsonl` writes 50 JSON events with readable dates."""
    out = tmp_path / "x.jsonl"
    result = _run("generate", "--count", "50", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50
    first = json.loads(lines[0])
    assert set(first) == {f["name"] for f in input_schema(1)["fields"]}
    assert isinstance(first["sampled_at"], str) and first["sampled_at"].endswith("Z")


def test_generate_avro_writes_the_requested_count(tmp_path: Path) -> None:
    """`generate --count 50 --out x.avro` writes a container file of 50 events with logical types."""
    out = tmp_path / "x.avro"
    result = _run("generate", "--count", "50", "--out", str(out))
    assert result.exit_code == 0, result.output
    with out.open("rb") as handle:
        records = list(fastavro.reader(handle))
    assert len(records) == 50
    assert isinstance(records[0]["sampled_at"], datetime.datetime)  # the file keeps its logical types
    assert to_wire(records[0], input_schema(1)) == next(iter(generate_events(1)))


def test_generate_without_destination_is_usage_error() -> None:
    """`generate` with neither --out nor --publish is a usage error (exit 2), nothing published."""
    result = _run("generate", "--count", "5")
    assert result.exit_code == 2
    assert "--out" in result.stderr and "--publish" in result.stderr
