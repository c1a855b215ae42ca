"""`policy check|lock|diff|risk` through click's CliRunner: the privacy regression gate, end to end without Kafka."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from click.testing import CliRunner, Result

from streams.cli.main import main
from streams.contracts.schemas import input_schema, schema_dir, to_readable
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.model import default_policy_dir

_VARIABLES = (
    "SCREENING_POLICY_DIR",
    "SCREENING_SCHEMA_DIR",
    "SCREENING_ACCESS_LOCK",
    "SCREENING_LOCK_WRITE",
    "SCREENING_DIFF_OLD",
    "SCREENING_DIFF_NEW",
    "SCREENING_DIFF_JSON",
    "SCREENING_RECIPIENT",
    "SCREENING_RISK_EVENTS",
    "SCREENING_RISK_K",
    "SCREENING_RISK_REGION",
    "SCREENING_RISK_PNG",
    "SCREENING_RISK_JSON",
)
Edit = Callable[[Path], None]


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


class Workspace:
    """A copy of the shipped policies and contracts, with a lock written for that copy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = root / "policies"
        self.schemas = root / "schemas"
        self.policies.mkdir()
        for path in default_policy_dir().glob("*.yaml"):
            shutil.copy(path, self.policies / path.name)
        shutil.copytree(schema_dir(), self.schemas)

    def run(self, *args: str, **env: str) -> Result:
        """Run ``screening-streams ARGS`` against this workspace."""
        variables: dict[str, str | None] = {name: None for name in _VARIABLES}
        variables.update(SCREENING_POLICY_DIR=str(self.policies), SCREENING_SCHEMA_DIR=str(self.schemas), **env)
        return CliRunner(env=variables).invoke(main, list(args), catch_exceptions=False)

    def snapshot(self, name: str) -> Path:
        """A copy of the policy folder as it is now (a directory side for `policy diff`)."""
        target = self.root / name
        shutil.copytree(self.policies, target)
        return target


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A workspace whose contracts and lock match its policies."""
    workspace = Workspace(tmp_path)
    assert workspace.run("policy", "contracts", "--write").exit_code == 0
    assert workspace.run("policy", "lock", "--write").exit_code == 0
    return workspace


def _add_nir_to_spf(policies: Path) -> None:
    with (policies / "spf.yaml").open("a", encoding="utf-8") as handle:
        handle.write("  - name: nir\n    op: keep\n    purpose: Identify every person tested, for no reason.\n")


def _ars_birth_year_keep(policies: Path) -> None:
    _replace(policies / "ars.yaml", "op: birth_year", "op: keep")


def _drop_ars_phone_condition(policies: Path) -> None:
    text = (policies / "ars.yaml").read_text(encoding="utf-8")
    start = text.index("  - name: phone\n")
    block = text[start:]
    condition = "    when: {collective_housing: {not_in: [NONE]}}\n"
    assert condition in block
    (policies / "ars.yaml").write_text(text[:start] + block.replace(condition, "", 1), encoding="utf-8")


def _widen_cnam_filter(policies: Path) -> None:
    _replace(policies / "cnam.yaml", "  result: [POSITIVE]\n", "  result: [POSITIVE, NEGATIVE]\n")


GAINS: list[tuple[Edit, str, str, str]] = [
    (_add_nir_to_spf, "spf", "nir", "field gained"),
    (_ars_birth_year_keep, "ars", "birth_year", "operator finer"),
    (_drop_ars_phone_condition, "ars", "phone", "condition removed"),
    (_widen_cnam_filter, "cnam", "result", "filter widened"),
]


@pytest.mark.parametrize(("edit", "recipient", "field", "kind"), GAINS, ids=[g[1] + "-" + g[2] for g in GAINS])
def test_a_widening_fails_check_naming_recipient_and_field_until_the_lock_is_rewritten(
    ws: Workspace, edit: Edit, recipient: str, field: str, kind: str
) -> None:
    """Each widening of the issue fails `policy check` (exit 2) naming recipient and field; `policy diff`
    names it with exit 1; after `policy lock --write` the check passes and the lock lists the new access."""
    before = ws.snapshot("before")
    edit(ws.policies)
    assert ws.run("policy", "contracts", "--write").exit_code == 0  # contracts are not what is tested here
    failed = ws.run("policy", "check")
    assert failed.exit_code == 2
    assert f"recipient {recipient!r}, field {field!r}: {kind}" in failed.output
    assert "policy lock --write" in failed.output
    diff = ws.run("policy", "diff", str(before), str(ws.policies))
    assert diff.exit_code == 1, diff.output
    gain_rows = [line.split() for line in diff.output.splitlines() if " GAIN" in f"{line} "]
    assert [(row[0], row[1]) for row in gain_rows] == [(recipient, field)]
    assert ws.run("policy", "lock").exit_code == 1  # stale: the lock does not say what the policies grant
    assert ws.run("policy", "lock", "--write").exit_code == 0
    passed = ws.run("policy", "check")
    assert passed.exit_code == 0, passed.output
    assert "access lock access.lock is current" in passed.output
    assert ws.run("policy", "diff", str(before), str(ws.policies)).exit_code == 1  # the diff still shows the gain


def test_narrowing_passes_check_but_says_the_lock_is_stale(ws: Workspace) -> None:
    """SPF department → region and day → ISO week: check exits 0 with a stale-lock notice; `policy lock` exits 1
    showing the change; after --write everything is current; `policy diff` exits 0."""
    before = ws.snapshot("before")
    _replace(ws.policies / "spf.yaml", "    op: department\n", "    op: region\n")
    _replace(ws.policies / "spf.yaml", "from: sampled_at\n    op: day\n", "from: sampled_at\n    op: iso_week\n")
    assert ws.run("policy", "contracts", "--write").exit_code == 0
    check = ws.run("policy", "check")
    assert check.exit_code == 0, check.output
    assert "lock is stale (2 narrowing or purpose change(s), no gain)" in check.output
    assert "recipient 'spf', field 'department': operator coarser: department → region" in check.output
    stale = ws.run("policy", "lock")
    assert stale.exit_code == 1 and "operator_coarser" in stale.output
    diff = ws.run("policy", "diff", str(before), str(ws.policies))
    assert diff.exit_code == 0 and "GAIN" not in diff.output
    assert ws.run("policy", "lock", "--write").exit_code == 0
    assert ws.run("policy", "lock").output.strip().endswith("is current")


def test_check_without_a_lock_fails(ws: Workspace) -> None:
    """No lock file, no pass: the gate cannot be skipped by deleting it."""
    (ws.policies / "access.lock").unlink()
    result = ws.run("policy", "check")
    assert result.exit_code == 2 and "no access lock" in result.output


def test_lock_path_falls_back_to_an_env_var(ws: Workspace, tmp_path: Path) -> None:
    """SCREENING_ACCESS_LOCK names the lock file for check and lock; SCREENING_LOCK_WRITE=1 writes it."""
    elsewhere = tmp_path / "elsewhere.lock"
    assert ws.run("policy", "check", SCREENING_ACCESS_LOCK=str(elsewhere)).exit_code == 2
    written = ws.run("policy", "lock", SCREENING_ACCESS_LOCK=str(elsewhere), SCREENING_LOCK_WRITE="1")
    assert written.exit_code == 0 and elsewhere.exists()
    assert ws.run("policy", "check", SCREENING_ACCESS_LOCK=str(elsewhere)).exit_code == 0


# ------------------------------------------------------------------ diff between git revisions
def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_diff_between_git_refs_and_the_working_tree(ws: Workspace) -> None:
    """Default OLD is HEAD, NEW the working tree; refs on both sides; a gain exits 1, its reverse exits 0."""
    _git(ws.root, "init", "-q")
    _git(ws.root, "add", "policies")
    _git(ws.root, "commit", "-q", "-m", "policies")
    clean = ws.run("policy", "diff")
    assert clean.exit_code == 0 and "no change in what any recipient receives" in clean.output
    _add_nir_to_spf(ws.policies)
    worktree = ws.run("policy", "diff")
    assert worktree.exit_code == 1
    assert worktree.output.splitlines()[0] == f"git HEAD → {ws.policies}"
    assert any(line.split()[:3] == ["spf", "nir", "field_gained"] for line in worktree.output.splitlines())
    _git(ws.root, "commit", "-q", "-am", "spf gets the nir")
    assert ws.run("policy", "diff", "HEAD~1", "HEAD").exit_code == 1
    back = ws.run("policy", "diff", "HEAD", "HEAD~1", "--json")
    assert back.exit_code == 0
    doc = json.loads(back.output)
    assert doc["old"] == "git HEAD" and doc["new"] == "git HEAD~1" and doc["gain"] is False
    assert [(c["recipient"], c["field"], c["kind"]) for c in doc["changes"]] == [("spf", "nir", "field_lost")]
    unknown = ws.run("policy", "diff", "no-such-ref")
    assert unknown.exit_code == 2 and "no-such-ref" in unknown.output


def test_diff_flags_fall_back_to_env_vars(ws: Workspace) -> None:
    """SCREENING_DIFF_OLD / _NEW / _JSON stand for the arguments and --json."""
    before = ws.snapshot("before")
    _widen_cnam_filter(ws.policies)
    result = ws.run(
        "policy",
        "diff",
        SCREENING_DIFF_OLD=str(before),
        SCREENING_DIFF_NEW=str(ws.policies),
        SCREENING_DIFF_JSON="1",
    )
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["recipients"] == {"cnam": {"gain": True, "changes": 1}}
    assert doc["changes"][0]["kind"] == "filter_widened"


# ------------------------------------------------------------------ risk
@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    """600 generated events as JSONL and as an Avro container (what `generate --out` writes)."""
    folder = tmp_path_factory.mktemp("events")
    schema = input_schema(1)
    batch = list(generate_events(600, GeneratorSettings(seed=5, positive_share=0.4)))
    jsonl, avro = folder / "events.jsonl", folder / "events.avro"
    jsonl.write_text("".join(json.dumps(to_readable(e, schema)) + "\n" for e in batch), encoding="utf-8")
    with avro.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), batch)
    return jsonl, avro, batch


def test_risk_counts_the_recipient_records_in_both_file_formats(
    ws: Workspace, events: tuple[Path, Path, list[dict[str, Any]]]
) -> None:
    """SPF receives every production event; JSONL and Avro give the same report; the classes sum to the records."""
    jsonl, avro, batch = events
    production = sum(1 for e in batch if e["processing_mode"] == "P")
    reports = []
    for path in (jsonl, avro):
        result = ws.run("policy", "risk", "spf", "--events", str(path), "--json")
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.output))
    assert reports[0] == reports[1]
    report = reports[0]
    assert report["events"] == 600 and report["records"] == production
    assert sum(int(size) * n for size, n in report["sizes"].items()) == production
    assert report["k"] == 5 and report["min_k"] >= 1
    assert report["quasi_identifiers"][0] == "age_band" and "sampled_on" in report["quasi_identifiers"]
    assert {d["field"] for d in report["drivers"]} == set(report["quasi_identifiers"])


Events = tuple[Path, Path, list[dict[str, Any]]]


def test_risk_png_is_a_valid_png(ws: Workspace, events: Events, tmp_path: Path) -> None:
    """--png writes a PNG: signature, an IHDR chunk of a sensible size; the table says where."""
    png = tmp_path / "risk.png"
    result = ws.run("policy", "risk", "spf", "--events", str(events[0]), "--png", str(png))
    assert result.exit_code == 0, result.output
    assert "minimum k:" in result.output and f"wrote {png}" in result.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 450)
    assert data[-8:-4] == b"IEND"


def test_risk_flags_fall_back_to_env_vars_and_region_limits_routed_recipients(
    ws: Workspace, events: tuple[Path, Path, list[dict[str, Any]]]
) -> None:
    """SCREENING_RECIPIENT / _RISK_EVENTS / _RISK_K / _RISK_REGION / _RISK_JSON: ARS of region 11 only, k = 3."""
    jsonl, _, batch = events
    in_region = sum(
        1
        for e in batch
        if e["processing_mode"] == "P"
        and e["result"] == "POSITIVE"
        and DEFAULT_GEOGRAPHY.region_of(e["commune_code"]) == "11"
    )
    result = ws.run(
        "policy",
        "risk",
        SCREENING_RECIPIENT="ars",
        SCREENING_RISK_EVENTS=str(jsonl),
        SCREENING_RISK_K="3",
        SCREENING_RISK_REGION="11",
        SCREENING_RISK_JSON="true",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["k"] == 3 and report["scope"] == "region 11" and report["records"] == in_region > 0
    assert ws.run("policy", "risk", "spf", "--events", str(jsonl), "--region", "11").exit_code == 2


def test_risk_of_an_unknown_recipient_fails(ws: Workspace, events: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    """An unknown recipient exits 2 naming the known ones."""
    result = ws.run("policy", "risk", "nobody", "--events", str(events[0]))
    assert result.exit_code == 2 and "known: ars, cnam, spf" in result.output
