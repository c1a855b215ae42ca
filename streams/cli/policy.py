"""``screening-streams policy ...``: check, explain, matrix, dry-run, contracts, lock, diff and risk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import click

from streams.assembly import PolicySet, agency_names, load_policy_set
from streams.contracts.schemas import schema_dir, to_readable, to_wire
from streams.errors import ConfigError
from streams.policy.model import Policy
from streams.settings import settings_from_env


def _load(policy_dir: Path | None) -> PolicySet:
    return load_policy_set(settings_from_env().with_(policy_dir=policy_dir))


_policy_dir = click.option(
    "--policy-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="SCREENING_POLICY_DIR",
    help="Folder of policy YAML files.",
)
_lock_file = click.option(
    "--lock",
    "lock_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SCREENING_ACCESS_LOCK",
    help="Access lock file (default: access.lock in the policy folder).",
)


@click.group()
def policy() -> None:
    """Inspect the minimisation policies (what each recipient receives, and why)."""


@policy.command("check")
@_policy_dir
@_lock_file
def check(policy_dir: Path | None, lock_file: Path | None) -> None:
    """Validate the policies, check derived contracts are current, and that no access exceeds the lock."""
    from streams.policy.outputs import stale_contracts

    policy_set = _load(policy_dir)
    for p in policy_set.policies:
        click.echo(f"ok  {p.recipient:<8} {len(p.emitted):>2} fields  {p.topic}  ({p.path.name}, version {p.version})")
    problems = []
    stale = stale_contracts(policy_set.policies, policy_set.input_schema, schema_dir())
    if stale:
        problems.append(
            "derived output contracts are stale: "
            + ", ".join(map(str, stale))
            + " (run `screening-streams policy contracts --write`)"
        )
    problems += _check_lock(policy_set, _lock_path(policy_dir, lock_file))
    if problems:
        raise ConfigError("\n".join(problems))


def _lock_path(policy_dir: Path | None, lock_file: Path | None) -> Path:
    from streams.policy.lock import lock_path

    return lock_file or lock_path(_policy_dir_of(policy_dir))


def _policy_dir_of(policy_dir: Path | None) -> Path:
    from streams.policy.model import default_policy_dir

    return settings_from_env().with_(policy_dir=policy_dir).policy_dir or default_policy_dir()


def _check_lock(policy_set: PolicySet, path: Path) -> list[str]:
    """Problems that fail `policy check` (access beyond the lock); prints a stale-lock notice."""
    from streams.policy.access import access_of
    from streams.policy.diff import compare, gains
    from streams.policy.lock import parse_lock, render_lock

    if not path.exists():
        return [f"no access lock {path}: run `screening-streams policy lock --write` and commit it"]
    text = path.read_text(encoding="utf-8")
    current = access_of(policy_set.policies, policy_set.input_schema)
    changes = compare(parse_lock(text, str(path)), current)
    gained = gains(changes)
    if gained:
        return [
            f"the policies grant access that the lock {path} does not list:\n"
            + "\n".join("  " + c.describe() for c in gained)
            + "\nif this widening is intended, run `screening-streams policy lock --write` and have the diff reviewed"
        ]
    if changes or text != render_lock(current):
        click.echo(
            f"lock is stale ({len(changes)} narrowing or purpose change(s), no gain): "
            "run `screening-streams policy lock --write`"
        )
        for change in changes:
            click.echo("  " + change.describe())
    else:
        click.echo(f"access lock {path.name} is current")
    return []


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


@policy.command("lock")
@click.option(
    "--write/--check",
    default=False,
    envvar="SCREENING_LOCK_WRITE",
    help="Rewrite the access lock from the policies, or show what would change (exit 1 if stale).",
)
@_policy_dir
@_lock_file
def lock(write: bool, policy_dir: Path | None, lock_file: Path | None) -> None:
    """State in the access lock everything each recipient receives (policies/access.lock)."""
    from streams.policy.access import access_of
    from streams.policy.diff import compare, diff_table
    from streams.policy.lock import parse_lock, render_lock

    policy_set = _load(policy_dir)
    path = _lock_path(policy_dir, lock_file)
    current = access_of(policy_set.policies, policy_set.input_schema)
    text = render_lock(current)
    if write:
        path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}")
        return
    if not path.exists():
        click.echo(f"no access lock {path}: run `screening-streams policy lock --write`")
        raise SystemExit(1)
    existing = path.read_text(encoding="utf-8")
    if existing == text:
        click.echo(f"access lock {path} is current")
        return
    click.echo(f"access lock {path} is stale; `policy lock --write` would record:")
    click.echo(diff_table(compare(parse_lock(existing, str(path)), current)))
    raise SystemExit(1)


@policy.command("diff")
@click.argument("old", required=False, envvar="SCREENING_DIFF_OLD")
@click.argument("new", required=False, envvar="SCREENING_DIFF_NEW")
@click.option("--json", "as_json", is_flag=True, envvar="SCREENING_DIFF_JSON", help="Print JSON instead of a table.")
@_policy_dir
def diff(old: str | None, new: str | None, as_json: bool, policy_dir: Path | None) -> None:
    """Compare what each recipient receives between OLD and NEW (exit 1 when any recipient gains access).

    Each side is a directory of policies or a git ref (the policy files of that commit).
    Default OLD: HEAD (the last commit); default NEW: the policy folder as it is now.
    """
    from streams.assembly import INPUT_VERSION
    from streams.cli.revisions import load_side
    from streams.contracts.schemas import input_schema
    from streams.domain.geography import DEFAULT_GEOGRAPHY
    from streams.policy.access import access_of
    from streams.policy.diff import compare, diff_json, diff_table, gains

    directory = _policy_dir_of(policy_dir)
    schema = input_schema(INPUT_VERSION)
    regions = frozenset(DEFAULT_GEOGRAPHY.region_names)
    old_label, old_policies = load_side(old or "HEAD", directory, schema, regions)
    new_label, new_policies = load_side(new or str(directory), directory, schema, regions)
    changes = compare(access_of(old_policies, schema), access_of(new_policies, schema))
    if as_json:
        click.echo(diff_json(changes, old_label, new_label))
    else:
        click.echo(f"{old_label} → {new_label}")
        click.echo(diff_table(changes))
    if gains(changes):
        raise SystemExit(1)


@policy.command("risk")
@click.argument("recipient", envvar="SCREENING_RECIPIENT")
@click.option(
    "--events",
    "events_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    envvar="SCREENING_RISK_EVENTS",
    help="Events as written by `generate --out` (.jsonl or .avro).",
)
@click.option("--k", type=int, default=5, show_default=True, envvar="SCREENING_RISK_K", help="Minimum class size.")
@click.option("--region", envvar="SCREENING_RISK_REGION", help="Routed recipients: one region only (default: all).")
@click.option(
    "--png",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SCREENING_RISK_PNG",
    help="Also write the class-size histogram as a PNG.",
)
@click.option("--json", "as_json", is_flag=True, envvar="SCREENING_RISK_JSON", help="Print JSON instead of tables.")
@_policy_dir
def risk(
    recipient: str,
    events_file: Path,
    k: int,
    region: str | None,
    png: Path | None,
    as_json: bool,
    policy_dir: Path | None,
) -> None:
    """Measure re-identification risk: equivalence classes of RECIPIENT's quasi-identifiers on a sample."""
    from streams.domain.geography import DEFAULT_GEOGRAPHY
    from streams.policy.risk import assess, one_step, quasi_identifiers, risk_json, risk_table

    policy_set = _load(policy_dir)
    policies = {p.recipient: p for p in policy_set.policies}
    if recipient not in policies:
        raise ConfigError(f"no policy for recipient {recipient!r} (known: {', '.join(sorted(policies))})")
    chosen = policies[recipient]
    if region is not None and (chosen.route != "region" or region not in DEFAULT_GEOGRAPHY.region_names):
        raise ConfigError(f"--region {region!r}: {recipient!r} is not routed by region, or no such region")
    events, records = _views(policy_set, chosen, events_file, region)
    fields = quasi_identifiers(chosen, policy_set.input_schema)
    steps = {}
    for rule in chosen.emitted:
        step = one_step(rule, policy_set.input_schema, DEFAULT_GEOGRAPHY)
        if rule.name in fields and step is not None:
            steps[rule.name] = step
    scope = f"region {region}" if region else ("all regions together" if chosen.route else "")
    report = assess(records, fields, k, steps=steps, recipient=recipient, scope=scope, events=events)
    click.echo(risk_json(report) if as_json else risk_table(report))
    if png is not None:
        from streams.cli.riskplot import write_histogram

        write_histogram(report, png)
        if not as_json:
            click.echo(f"\nwrote {png}")


def _views(
    policy_set: PolicySet, chosen: Policy, events_file: Path, region: str | None
) -> tuple[int, list[dict[str, Any]]]:
    """Apply one recipient's policy to every valid event of the file (throw-away keys)."""
    from streams.domain.geography import DEFAULT_GEOGRAPHY
    from streams.domain.validation import EventValidator
    from streams.errors import RecordRejected
    from streams.policy.engine import Minimiser
    from streams.policy.pseudonyms import StaticKeyRing, generate_keys

    single = PolicySet((chosen,), policy_set.input_schema)
    keyring = StaticKeyRing(generate_keys(agency_names(single)), source="risk throw-away keys")
    minimiser = Minimiser(single.policies, single.input_schema, keyring, DEFAULT_GEOGRAPHY)
    validator = EventValidator(DEFAULT_GEOGRAPHY)
    records, events = [], 0
    for event in _read_events(events_file, policy_set.input_schema):
        events += 1
        try:
            validator.check(event)
            views = minimiser.apply(event)
        except RecordRejected:
            continue  # the pipeline would dead-letter it: no recipient sees it
        records += [v.record for v in views if region is None or v.agency.region == region]
    return events, records


def _read_events(path: Path, schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Events of a .avro container or a .jsonl file, as wire-native records with defaults filled in."""
    defaults = {f["name"]: f.get("default") for f in schema["fields"] if "default" in f}
    if path.suffix == ".avro":
        import fastavro

        with path.open("rb") as handle:
            for record in fastavro.reader(handle):
                yield {**defaults, **to_wire(cast(dict[str, Any], record), schema)}
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not a JSON event: {exc}") from exc
            yield {**defaults, **to_wire(data, schema)}
