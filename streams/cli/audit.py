"""``screening-streams audit ...``: who received what, from the audit topic, keyed with the audit secret.

Every query first brings the SQLite index (``--index``, default ``<state dir>/audit.sqlite``)
up to date with the audit topic (``--no-refresh`` to skip), then answers from the index. The
index holds what the topic holds (audit pseudonyms, references, sealed coordinates); it can be
deleted at any time and is rebuilt from the topic (``audit index --rebuild``).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from streams.assembly import audit_schema, load_policy_set
from streams.audit.chain import AuditWriter, mac_matches, verify_chain
from streams.audit.index import SUMMARY_KINDS, AuditIndex
from streams.audit.keys import AuditKeys, generate_secret, load_secret, write_secret
from streams.cli.options import common_options, settings
from streams.contracts.registry import HttpSchemaRegistry
from streams.credentials import OPERATOR
from streams.domain.nir import nir_problem, normalise_nir
from streams.errors import ConfigError, RegistryUnavailable
from streams.kafka.offsets import beginning_offsets, end_offsets, iter_from
from streams.policy.explain import table
from streams.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
KEY_ENV = "SCREENING_AUDIT_KEY_FILE"
INDEX_ENV = "SCREENING_AUDIT_INDEX"


def _audit_options(func: F) -> F:
    options = [
        click.option(
            "--audit-key-file",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar=KEY_ENV,
            required=True,
            help="The audit secret (made by `audit keygen`).",
        ),
        click.option(
            "--index",
            "index_path",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar=INDEX_ENV,
            help="The SQLite audit index [default: <state dir>/audit.sqlite].",
        ),
        click.option("--no-refresh", is_flag=True, envvar="SCREENING_AUDIT_NO_REFRESH", help="Query the index as is."),
        click.option("--json", "as_json", is_flag=True, envvar="SCREENING_AUDIT_JSON", help="Print JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return common_options(func)


def _writer(key_file: Path, cfg: Settings) -> AuditWriter:
    """The audit secret's writer; records of an earlier contract version are read by their writer schema
    (from the registry, by the frame's id; the current shape when it does not answer)."""
    registry = HttpSchemaRegistry(cfg.registry_url, timeout_s=5.0, compatibility=None)
    return AuditWriter(AuditKeys(load_secret(key_file)), audit_schema(), b"", registry.get_schema)


def _index_path(cfg: Settings, given: Path | None) -> Path:
    return given or cfg.state_dir / "audit.sqlite"


@dataclass
class Refreshed:
    """What one refresh read: records added, unreadable ones, and ones whose MAC does not verify."""

    added: int = 0
    unreadable: int = 0
    unverified: int = 0


#: Records of one partition ingested per SQLite transaction (memory stays bounded on a 1.4 M topic).
CHUNK = 5_000


def refresh(cfg: Settings, writer: AuditWriter, index: AuditIndex, topic: str | None = None) -> Refreshed:
    """Bring ``index`` up to date with the audit topic, streaming it in chunks.

    Unreadable records are skipped (counted; `audit verify` names them). Records whose MAC does
    not verify are indexed and counted. An index no record ever verified into is bound to no
    secret yet: a chunk in which nothing verifies then means a wrong secret, and nothing is
    indexed (:class:`ConfigError`) instead of queries answering "nothing"; the first verified
    chunk binds the index to the secret's fingerprint.
    """
    topic = topic or cfg.audit_topic
    ends = end_offsets(cfg.bootstrap_servers, [topic], auth=cfg.kafka_auth)
    if not ends:
        raise ConfigError(f"topic {topic} does not exist: run `screening-streams topics`")
    starts = beginning_offsets(cfg.bootstrap_servers, [topic], auth=cfg.kafka_auth)
    done = index.positions()
    pending = {
        tp: max(done.get(tp.partition, 0), starts.get(tp, 0))
        for tp, end in ends.items()
        if max(done.get(tp.partition, 0), starts.get(tp, 0)) < end
    }
    out = Refreshed()
    if not pending:
        return out
    chunks: dict[int, list[tuple[int, dict[str, Any] | None]]] = defaultdict(list)
    verified: dict[int, int] = defaultdict(int)  # per partition, in the pending chunk

    def flush(partition: int) -> None:
        ok = verified.pop(partition, 0) > 0
        if not ok and not index.bound and out.unverified > 0:  # nothing ever verified with this secret
            raise ConfigError(
                f"none of the {out.unverified} audit records read verifies with this audit secret "
                f"(fingerprint {writer.keys.fingerprint()}): wrong --audit-key-file? (nothing indexed)"
            )
        out.added += index.ingest(partition, chunks.pop(partition, []), verified=ok)

    for r in iter_from(cfg.bootstrap_servers, pending, idle_timeout_s=30.0, complete=True, auth=cfg.kafka_auth):
        if r.value is None:
            continue
        try:
            record: dict[str, Any] | None = writer.decode(r.value)
        except RegistryUnavailable:
            raise  # the index stops where it is (nothing ingested past it) until the registry answers
        except Exception:  # any decoding failure: skipped here, named by `audit verify`
            record, out.unreadable = None, out.unreadable + 1
        if record is not None:
            if mac_matches(writer, r.value, record):
                verified[r.partition] += 1
            else:
                out.unverified += 1
        chunks[r.partition].append((r.offset, record))
        if len(chunks[r.partition]) >= CHUNK:
            flush(r.partition)
    for partition in sorted(chunks):
        flush(partition)
    return out


def _time(text: str, name: str) -> int:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an ISO date or time (e.g. 2020-07-01 or 2020-07-01T12:00Z)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _hour(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:00Z")


def _step(step: int | None) -> str:
    """How a delivery left under small-cell protection: at once (-), or held then released at a ladder step."""
    return "-" if step is None else f"held, released at step {step}"


def _emit(as_json: bool, payload: Any, headers: list[str], rows: list[list[str]], footer: str = "") -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=1, sort_keys=True, default=lambda b: b.hex()))
        return
    click.echo(table(headers, rows) if rows else "(nothing)")
    if footer:
        click.echo(footer)


class _Query:
    """The open index of one query command, refreshed from the topic unless asked not to."""

    def __init__(self, kw: dict[str, Any]) -> None:
        self.cfg = settings(
            OPERATOR,
            bootstrap_servers=kw.pop("bootstrap_servers"),
            registry_url=kw.pop("registry_url"),
            topic_prefix=kw.pop("topic_prefix"),
        )
        self.writer = _writer(kw.pop("audit_key_file"), self.cfg)
        self.index = AuditIndex(_index_path(self.cfg, kw.pop("index_path")), self.writer.keys.fingerprint())
        self.as_json = bool(kw.pop("as_json"))
        started = time.monotonic()
        no_refresh = bool(kw.pop("no_refresh"))
        if no_refresh and not self.index.bound:
            raise ConfigError(
                "this audit index holds no record verified with a secret yet: refresh it (no --no-refresh)"
            )
        self.refreshed = Refreshed() if no_refresh else refresh(self.cfg, self.writer, self.index)
        self.refresh_s = time.monotonic() - started
        if self.refreshed.unreadable or self.refreshed.unverified:
            click.echo(
                f"warning: {self.refreshed.unreadable} unreadable and {self.refreshed.unverified} unverified "
                "audit records: run `screening-streams audit verify`",
                err=True,
            )

    @property
    def keys(self) -> AuditKeys:
        return self.writer.keys


@click.group()
def audit() -> None:
    """Who received what: decision records of the audit topic, an index, and its queries."""


@audit.command("keygen")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Key file to create.")
@click.option("--force", is_flag=True, help="Replace an existing key file.")
def keygen(out: Path, force: bool) -> None:
    """Make the audit secret (0600; never overwrites unless --force). Keep it away from agencies."""
    write_secret(out, generate_secret(), force=force)
    click.echo(f"wrote the audit secret to {out} (mode 0600)")


@audit.command("index")
@_audit_options
@click.option("--rebuild", is_flag=True, help="Delete the index and rebuild it from the topic.")
def index_(rebuild: bool, **kw: Any) -> None:
    """Bring the audit index up to date with the topic (or rebuild it from scratch)."""
    cfg = settings(OPERATOR, bootstrap_servers=kw["bootstrap_servers"], topic_prefix=kw["topic_prefix"])
    path = _index_path(cfg, kw["index_path"])
    if rebuild:
        path.unlink(missing_ok=True)
    kw["no_refresh"] = False
    query = _Query(kw)
    click.echo(f"indexed {query.refreshed.added} audit records in {query.refresh_s:.1f} s into {path}")


@audit.command("verify")
@_audit_options
@click.option("--topic", envvar="SCREENING_AUDIT_VERIFY_TOPIC", help="Verify this topic (e.g. a copy) instead.")
def verify(topic: str | None, **kw: Any) -> None:
    """Check every partition's hash chain; name each removed, reordered or altered record."""
    cfg = settings(
        OPERATOR,
        bootstrap_servers=kw["bootstrap_servers"],
        registry_url=kw["registry_url"],
        topic_prefix=kw["topic_prefix"],
    )
    writer = _writer(kw["audit_key_file"], cfg)
    name = topic or cfg.audit_topic
    ends = end_offsets(cfg.bootstrap_servers, [name], auth=cfg.kafka_auth)
    if not ends:
        raise ConfigError(f"topic {name} does not exist")
    starts = beginning_offsets(cfg.bootstrap_servers, [name], auth=cfg.kafka_auth)
    pending = {tp: starts.get(tp, 0) for tp, end in ends.items() if starts.get(tp, 0) < end}
    checked, problems = 0, []
    for tp in sorted(pending, key=lambda t: t.partition):  # one partition at a time, streamed in offset order
        records = iter_from(
            cfg.bootstrap_servers, {tp: pending[tp]}, idle_timeout_s=30.0, complete=True, auth=cfg.kafka_auth
        )
        stream = ((r.offset, r.value) for r in records)
        n, found = verify_chain(writer, tp.partition, stream)
        checked += n
        problems += found
    defects = [p for p in problems if p.kind != "start"]
    rows = [[str(p.partition), str(p.offset), p.kind, p.detail] for p in problems]
    payload = {"topic": name, "checked": checked, "problems": [p.__dict__ for p in problems], "ok": not defects}
    _emit(
        kw["as_json"],
        payload,
        ["partition", "offset", "problem", "detail"],
        rows,
        f"{checked} records checked in {len(ends)} partitions of {name}: "
        + ("chain intact" if not defects else f"{len(defects)} defect(s)"),
    )
    if defects:
        raise SystemExit(1)


@audit.command("who-received")
@_audit_options
@click.option(
    "--nir",
    required=True,
    envvar="SCREENING_AUDIT_NIR",
    help="The person's NIR, or - to read it from stdin (a command line is visible to other local users "
    "in ps; stdin and the environment variable are not). Never logged or stored.",
)
def who_received(nir: str, **kw: Any) -> None:
    """For breach notification: every recipient and field set that person's data reached, when, under which policy."""
    if nir == "-":
        nir = click.get_text_stream("stdin").readline().strip()
    problem = nir_problem(normalise_nir(nir))
    if problem is not None:  # a mistyped NIR would silently answer "nobody": refuse it (never echo it)
        hint = "give all 15 characters, key included"
        raise click.BadParameter(f"not a valid NIR ({problem}); {hint}", param_hint="--nir")
    query = _Query(kw)
    started = time.monotonic()
    person = query.keys.person(nir)
    deliveries = query.index.who_received(person)
    held = query.index.held(person)
    took_ms = (time.monotonic() - started) * 1000
    rows = [
        [_hour(d.hour_ms), d.agency, ", ".join(d.fields), d.policy_version, d.key_id or "-", _step(d.step)]
        for d in deliveries
    ]
    _emit(
        query.as_json,
        {"deliveries": [d.__dict__ for d in deliveries], "held": [h.__dict__ for h in held], "query_ms": took_ms},
        ["hour", "agency", "fields", "policy", "key", "small cells"],
        rows,
        f"{len(deliveries)} deliveries ({took_ms:.1f} ms)",
    )
    if held and not query.as_json:  # views small-cell protection held: what became of each
        click.echo(
            table(
                ["held at", "recipient", "fate", "step", "withheld", "decided at"],
                [
                    [
                        _hour(h.held_hour_ms),
                        h.recipient,
                        h.fate,
                        "-" if h.step is None else str(h.step),
                        ", ".join(h.withheld) or "-",
                        "-" if h.decided_hour_ms is None else _hour(h.decided_hour_ms),
                    ]
                    for h in held
                ],
            )
        )


@audit.command("event")
@_audit_options
@click.option("--id", "event_id", required=True, envvar="SCREENING_AUDIT_EVENT_ID", help="The screening event id.")
@click.option("--locations", is_flag=True, help="Unseal the output coordinates (topic:partition:offset).")
def event(event_id: str, locations: bool, **kw: Any) -> None:
    """The whole fate of one event: every recipient, delivered or not, and why."""
    query = _Query(kw)
    ref = query.keys.event_ref(event_id)
    fates = query.index.event(ref)
    rows = []
    for fate in fates:
        for r in fate["recipients"]:
            where = "-"
            if locations and r["sealed_location"] is not None:
                where = query.keys.unseal(r["sealed_location"], ref.encode() + b"|" + r["recipient"].encode())
            if not locations:
                r.pop("sealed_location")
            else:
                r["sealed_location"] = where
            rows.append(
                [
                    _hour(fate["hour_ms"]),
                    fate["outcome"],
                    r["recipient"],
                    r["agency"] or "-",
                    "yes" if r["delivered"] else "no",
                    r["reason"],
                    ", ".join(r["fields"]),
                    where,
                ]
            )
    _emit(
        query.as_json,
        {"event": ref, "records": fates},
        ["hour", "outcome", "recipient", "agency", "delivered", "reason", "fields", "where"],
        rows,
    )


@audit.command("undelivered")
@_audit_options
@click.option("--since", required=True, envvar="SCREENING_AUDIT_SINCE", help="ISO date/time (UTC if no zone).")
def undelivered(since: str, **kw: Any) -> None:
    """Events that reached none of their intended recipients since T, with why."""
    query = _Query(kw)
    found = query.index.undelivered(_time(since, "--since"))
    rows = [[_hour(r["hour_ms"]), r["audit_ref"], r["outcome"], r["why"]] for r in found]
    _emit(
        query.as_json,
        {"undelivered": found},
        ["hour", "audit ref", "outcome", "why"],
        rows,
        f"{len(found)} undelivered",
    )


@audit.command("exposure")
@_audit_options
@click.option("--recipient", required=True, envvar="SCREENING_AUDIT_RECIPIENT", help="cnam, spf, ars or ars.<region>.")
@click.option("--from", "from_", required=True, envvar="SCREENING_AUDIT_FROM", help="Window start (ISO).")
@click.option("--to", "to", required=True, envvar="SCREENING_AUDIT_TO", help="Window end (ISO).")
def exposure(recipient: str, from_: str, to: str, **kw: Any) -> None:
    """If that recipient's store leaked over the window: distinct people, records, and which fields."""
    start, end = _time(from_, "--from"), _time(to, "--to")
    if start > end:
        raise click.BadParameter("--from is after --to", param_hint="--from")
    query = _Query(kw)
    known = {p.recipient for p in load_policy_set(query.cfg).policies}
    if recipient.split(".", 1)[0] not in known:  # a typo would answer "no exposure"
        raise click.BadParameter(f"unknown recipient {recipient!r} (known: {', '.join(sorted(known))})")
    found = query.index.exposure(recipient, start, end)
    rows = [[found.recipient, str(found.people), str(found.records), ", ".join(found.fields)]]
    _emit(query.as_json, found.__dict__, ["recipient", "people", "records", "fields"], rows)


@audit.command("summary")
@_audit_options
@click.option("--since", required=True, envvar="SCREENING_AUDIT_SINCE", help="ISO date/time (UTC if no zone).")
def summary(since: str, **kw: Any) -> None:
    """Per recipient since T: delivered, filtered, dead-lettered; small-cell holds still held and suppressed."""
    query = _Query(kw)
    found = query.index.summary(_time(since, "--since"))
    rows = [[r, *(str(c[k]) for k in SUMMARY_KINDS)] for r, c in found.items()]
    _emit(query.as_json, found, ["recipient", "delivered", "filtered", "dead-lettered", "held", "suppressed"], rows)
