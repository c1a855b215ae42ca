"""``screening-streams agency ...``: agency key pairs and the agencies' reference client.

Agency side: ``keygen`` makes a key pair (the private key never leaves the agency) and
``consume`` reads, decrypts and writes the agency's records. Processor side: ``import-key`` adds
an agency's public key to ``SCREENING_PUBLIC_KEYS_DIR``; ``keys`` lists them with their periods.
Every flag falls back to an environment variable (``SCREENING_AGENCY_*``).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import IO, Any

import click

from streams.cli.options import common_options
from streams.cli.options import settings as _settings
from streams.credentials import agency_user
from streams.errors import ConfigError
from streams.settings import Settings, env_var

_recipient = click.option(
    "--recipient",
    "agency",
    envvar="SCREENING_AGENCY",
    required=True,
    help="The agency: cnam, spf, or ars.<region> (e.g. ars.11); keygen also takes operators (dead letters).",
)
_keys_dir = click.option(
    "--public-keys-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar=env_var("public_keys_dir"),
    required=True,
    help="The processor's directory of agency public keys.",
)


@click.group()
def agency() -> None:
    """Agency key pairs (X25519) and the agencies' reference client for encrypted fields."""


@agency.command("keygen")
@_recipient
@click.option("--valid-from", envvar="SCREENING_AGENCY_VALID_FROM", required=True, help="YYYY-MM-DD (UTC) or ISO time.")
@click.option("--valid-until", envvar="SCREENING_AGENCY_VALID_UNTIL", required=True, help="End of validity (excluded).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="SCREENING_AGENCY_KEYS_OUT",
    required=True,
    help="Directory for the new key files (created 0700); existing files are never overwritten.",
)
def keygen(agency: str, valid_from: str, valid_until: str, out: Path) -> None:
    """(Agency side) make a key pair: a 0600 private key file that stays here, and a public key file."""
    from streams.crypto.keys import generate_key_pair, parse_instant, write_key_pair

    pair = generate_key_pair(
        agency, parse_instant(valid_from, "--valid-from"), parse_instant(valid_until, "--valid-until")
    )
    private_path, public_path = write_key_pair(out, pair)
    click.echo(f"key {pair.key_id} of agency {agency}, valid {pair.public.period()}")
    click.echo(f"private key (keep it here, mode 0600): {private_path}")
    click.echo(f"public key (hand it to the processor: screening-streams agency import-key FILE): {public_path}")


def _agencies_and_topics(settings: Settings) -> dict[str, str]:
    from streams.assembly import agency_names, load_policy_set, output_topics

    policy_set = load_policy_set(settings)
    return dict(zip(agency_names(policy_set), output_topics(policy_set), strict=True))


@agency.command("throwaway")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="SCREENING_AGENCY_KEYS_OUT",
    required=True,
    help="Where the private key files go (agency side).",
)
@_keys_dir
@click.option("--days", type=int, default=365, show_default=True, envvar="SCREENING_AGENCY_DAYS")
def throwaway(out: Path, public_keys_dir: Path, days: int) -> None:
    """(Demos and tests) a key pair for every agency whose policy encrypts and for the operators (dead
    letters); public halves imported."""
    import time

    from streams.assembly import key_holders, load_policy_set
    from streams.crypto.ring import throwaway_key_pairs

    holders = key_holders(load_policy_set(_settings()))
    made = throwaway_key_pairs(holders, out, public_keys_dir, int(time.time() * 1000), days)
    click.echo(
        f"throw-away key pairs for {len(made) - 1} agencies and the operators: private keys in {out}, "
        f"public keys in {public_keys_dir}"
    )


@agency.command("import-key")
@click.argument(
    "file", type=click.Path(path_type=Path, dir_okay=False, exists=True), envvar="SCREENING_AGENCY_KEY_FILE"
)
@_keys_dir
def import_key(file: Path, public_keys_dir: Path) -> None:
    """(Processor side) add an agency's (or the operators') public key file to the key directory (validated first)."""
    from streams.crypto.letters import OPERATORS
    from streams.crypto.ring import PublicKeyRing, import_public_key

    known = [*_agencies_and_topics(_settings()), OPERATORS]  # the operators: dead letters are sealed to them
    key, added = import_public_key(public_keys_dir, file, known_agencies=known)
    if not added:
        click.echo(f"key {key.key_id} of agency {key.agency} is already imported; nothing changed")
        return
    start, end = PublicKeyRing.from_directory(public_keys_dir).effective_period(key)
    from streams.crypto.keys import format_instant

    click.echo(
        f"imported key {key.key_id} of agency {key.agency}, valid {key.period()}, "
        f"current {format_instant(start)}..{format_instant(end)}"
    )


@agency.command("keys")
@_keys_dir
def list_keys(public_keys_dir: Path) -> None:
    """(Processor side) list the public keys: agency, id, validity, when each is current."""
    import time

    from streams.crypto.keys import format_instant
    from streams.crypto.ring import PublicKeyRing

    ring = PublicKeyRing.from_directory(public_keys_dir)
    now = int(time.time() * 1000)
    for name in ring.agencies:
        for key in ring.keys_of(name):
            start, end = ring.effective_period(key)
            mark = "  <- current" if ring.current(name, now) == key else ""
            click.echo(
                f"{name:<8} {key.key_id}  valid {key.period()}  current {format_instant(start)}.."
                f"{format_instant(end)}{mark}"
            )


def _start(text: str) -> Any:
    from streams.crypto.keys import parse_instant
    from streams.kafka.agency_reader import StartAt

    if text in ("beginning", "end"):
        return StartAt(text)
    return StartAt("time", parse_instant(text, "--from"))


class _Output:
    """Writes decrypted records as JSON lines or CSV (header from the first record's fields)."""

    def __init__(self, handle: IO[str], fmt: str) -> None:
        self.handle = handle
        self.fmt = fmt
        self._csv: csv.DictWriter[str] | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        if self._csv is None:
            self._csv = csv.DictWriter(self.handle, fieldnames=list(record), extrasaction="raise")
            self._csv.writeheader()
        cells = {k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v for k, v in record.items()}
        self._csv.writerow(cells)


@agency.command("consume")
@_recipient
@click.option(
    "--private-key",
    "private_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="SCREENING_AGENCY_PRIVATE_KEYS",
    required=True,
    help="The agency's private key file (0600); repeat for the keys of earlier periods.",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", envvar="SCREENING_AGENCY_FORMAT")
@click.option(
    "--from",
    "start",
    default="beginning",
    show_default=True,
    envvar="SCREENING_AGENCY_FROM",
    help="beginning, end (only new records) or a date (records are stamped with their UTC processing day).",
)
@click.option(
    "--skip-shredded/--stop-at-shredded",
    default=False,
    envvar="SCREENING_AGENCY_SKIP_SHREDDED",
    help="Skip (and count) records sealed to a key not supplied (a destroyed period); other errors still stop.",
)
@click.option("--max", "limit", type=int, envvar="SCREENING_AGENCY_MAX", help="Stop after N records.")
@click.option(
    "--timeout",
    type=float,
    default=5.0,
    show_default=True,
    envvar="SCREENING_AGENCY_TIMEOUT",
    help="Stop after S seconds without a new record.",
)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), envvar="SCREENING_AGENCY_OUT", help="Default: stdout."
)
@common_options
def consume(
    agency: str,
    private_keys: tuple[Path, ...],
    fmt: str,
    start: str,
    limit: int | None,
    skip_shredded: bool,
    timeout: float,
    out: Path | None,
    bootstrap_servers: str | None,
    registry_url: str | None,
    topic_prefix: str | None,
) -> None:
    """(Agency side) read its topic read_committed, decrypt, and write exactly the policy's fields.

    A record that does not decrypt (wrong key, altered, moved, missing data key) stops the read
    with an error naming it (topic, partition, offset); nothing of it is written.
    """
    from streams.contracts.registry import HttpSchemaRegistry
    from streams.crypto.envelope import DataKeyStore
    from streams.crypto.errors import DecryptionError
    from streams.crypto.reader import AgencyRecordReader, where
    from streams.crypto.ring import PrivateKeyRing
    from streams.crypto.views import key_topic
    from streams.kafka.agency_reader import AgencyTopicReader

    settings = _settings(
        agency_user(agency), bootstrap_servers=bootstrap_servers, registry_url=registry_url, topic_prefix=topic_prefix
    )
    topics = _agencies_and_topics(settings)
    if agency not in topics:
        raise ConfigError(f"--recipient {agency!r} is not an agency of the policies")
    first = _start(start)
    store = DataKeyStore(agency, PrivateKeyRing.from_files(private_keys, agency))
    topic = settings.topic_prefix + topics[agency]
    reader = AgencyTopicReader(settings.bootstrap_servers, topic, key_topic(topic), auth=settings.kafka_auth)
    decoder = AgencyRecordReader(HttpSchemaRegistry(settings.registry_url), store)

    def load_keys() -> None:
        for record in reader.read_keys():
            try:
                store.add(record.value)
            except DecryptionError as exc:
                raise DecryptionError(
                    exc.code, f"{where(record.topic, record.partition, record.offset)}: {exc}"
                ) from None

    handle: IO[str] = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    written = 0
    shredded: dict[str, int] = {}  # public key id -> records skipped
    try:
        load_keys()
        reader.seek(first)
        output = _Output(handle, fmt)
        for record in reader.records(timeout):
            at = where(record.topic, record.partition, record.offset)
            if decoder.missing_keys(record.value, at):
                load_keys()  # committed with the record: it is there now
            try:
                row = decoder.read(record.topic, record.partition, record.offset, record.value)
            except DecryptionError as exc:
                if not (skip_shredded and exc.code == "no_private_key"):
                    raise
                needed = decoder.sealed_to(record.value, at)
                shredded[needed] = shredded.get(needed, 0) + 1
                continue
            output.write(row)
            written += 1
            if limit is not None and written >= limit:
                break
    finally:
        reader.close()
        handle.flush()
        if out:
            handle.close()
        click.echo(f"{written} records of {topic} written", err=True)
        for key_id, count in sorted(shredded.items()):
            click.echo(
                f"{count} records skipped: sealed to public key {key_id}, whose private key was not given", err=True
            )
