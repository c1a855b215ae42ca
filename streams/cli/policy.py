"""``screening-streams policy ...``: check, explain, matrix, dry-run and contracts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import click

from streams.assembly import PolicySet, agency_names, load_policy_set
from streams.contracts.schemas import schema_dir, to_readable, to_wire
from streams.errors import ConfigError
from streams.settings import settings_from_env


def _load(policy_dir: Path | None) -> PolicySet:
    return load_policy_set(settings_from_env().with_(policy_dir=policy_dir))


_policy_dir = click.option(
    "--policy-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="SCREENING_POLICY_DIR",
    help="Folder of policy YAML files.",
)


@click.group()
def policy() -> None:
    """Inspect the minimisation policies (what each recipient receives, and why)."""


@policy.command("check")
@_policy_dir
def check(policy_dir: Path | None) -> None:
    """Validate every policy against the input schema and check derived contracts are current."""
    from streams.policy.outputs import stale_contracts

    policy_set = _load(policy_dir)
    for p in policy_set.policies:
        click.echo(f"ok  {p.recipient:<8} {len(p.emitted):>2} fields  {p.topic}  ({p.path.name}, version {p.version})")
    stale = stale_contracts(policy_set.policies, policy_set.input_schema, schema_dir())
    if stale:
        raise ConfigError(
            "derived output contracts are stale: "
            + ", ".join(map(str, stale))
            + " (run `screening-streams policy contracts --write`)"
        )


@policy.command("explain")
@click.argument("recipient", envvar="SCREENING_RECIPIENT")
@_policy_dir
def explain(recipient: str, policy_dir: Path | None) -> None:
    """Show what RECIPIENT receives: each field, its operator, its condition and its purpose."""
    from streams.policy.explain import explain_policy

    policies = {p.recipient: p for p in _load(policy_dir).policies}
    if recipient not in policies:
        raise ConfigError(f"no policy for recipient {recipient!r} (known: {', '.join(sorted(policies))})")
    click.echo(explain_policy(policies[recipient]))


@policy.command("matrix")
@click.option(
    "--html",
    "html_out",
    type=click.Path(path_type=Path),
    envvar="SCREENING_MATRIX_HTML",
    help="Also write the matrix as an HTML page.",
)
@_policy_dir
def matrix(html_out: Path | None, policy_dir: Path | None) -> None:
    """Print the input field × recipient matrix (what each recipient sees, how)."""
    from streams.policy.explain import matrix_html, matrix_text

    policy_set = _load(policy_dir)
    click.echo(matrix_text(policy_set.policies, policy_set.input_schema))
    if html_out:
        html_out.write_text(matrix_html(policy_set.policies, policy_set.input_schema), encoding="utf-8")
        click.echo(f"\nwrote {html_out}")


@policy.command("dry-run")
@click.argument("event_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_policy_dir
def dry_run(event_file: Path, policy_dir: Path | None) -> None:
    """Show which recipients one event (JSON, first line of JSONL, or .avro) reaches, with what."""
    from streams.domain.geography import DEFAULT_GEOGRAPHY
    from streams.domain.validation import EventValidator
    from streams.errors import RecordRejected
    from streams.policy.engine import Minimiser
    from streams.policy.outputs import output_schema
    from streams.policy.pseudonyms import StaticKeyRing, generate_keys

    policy_set = _load(policy_dir)
    event = to_wire(_read_event(event_file), policy_set.input_schema)
    missing = [f["name"] for f in policy_set.input_schema["fields"] if f["name"] not in event and "default" not in f]
    if missing:
        raise ConfigError(f"{event_file}: event lacks fields {missing}")
    for field in policy_set.input_schema["fields"]:
        event.setdefault(field["name"], field.get("default"))
    try:
        EventValidator(DEFAULT_GEOGRAPHY).check(event)
        click.echo("validation: ok")
    except RecordRejected as exc:
        click.echo(f"validation: REJECTED -> dead-letter topic ({exc.code}: {exc})")
        return
    agencies = agency_names(policy_set)
    # Throw-away keys: a dry run shows shapes, never real pseudonyms.
    keyring = StaticKeyRing(generate_keys(agencies), source="dry-run throw-away keys")
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, keyring, DEFAULT_GEOGRAPHY)
    schemas = {p.recipient: output_schema(p, policy_set.input_schema) for p in policy_set.policies}
    for decision in minimiser.explain(event):
        mark = "->" if decision.delivered else "xx"
        where = f" {decision.topic}" if decision.topic else ""
        click.echo(f"\n{mark} {decision.recipient}{where}: {decision.reason}")
        if decision.view is not None:
            click.echo(
                json.dumps(to_readable(decision.view, schemas[decision.recipient]), indent=2, ensure_ascii=False)
            )


def _read_event(path: Path) -> dict[str, Any]:
    if path.suffix == ".avro":
        import fastavro

        with path.open("rb") as handle:
            for record in fastavro.reader(handle, return_record_name=False):
                return dict(cast(dict[str, Any], record))
        raise ConfigError(f"{path}: no record in the file")
    text = path.read_text(encoding="utf-8").strip()
    try:
        data = json.loads(text.splitlines()[0] if path.suffix == ".jsonl" else text)
    except (json.JSONDecodeError, IndexError) as exc:
        raise ConfigError(f"{path}: not a JSON event: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


@policy.command("contracts")
@click.option("--write/--check", default=False, help="Rewrite schemas/out/*.avsc, or fail if stale.")
@_policy_dir
def contracts(write: bool, policy_dir: Path | None) -> None:
    """Derive each recipient's output Avro contract from its policy (schemas/out/)."""
    from streams.policy.outputs import stale_contracts, write_contracts

    policy_set = _load(policy_dir)
    if write:
        for path in write_contracts(policy_set.policies, policy_set.input_schema, schema_dir()):
            click.echo(f"wrote {path}")
        return
    stale = stale_contracts(policy_set.policies, policy_set.input_schema, schema_dir())
    if stale:
        raise ConfigError("stale output contracts: " + ", ".join(map(str, stale)))
    click.echo("output contracts are current")
