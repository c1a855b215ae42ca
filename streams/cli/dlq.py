"""``screening-streams dlq ...``: list, show and replay the dead letters of the ingress.

The dead-letter topic holds raw input (identifying data) sealed to the operators' public key
(:mod:`streams.crypto.letters`): ``list`` and ``show`` read the readable ``dlq.*`` headers without
any key; ``show --private-key`` opens the letters (sizes, header names, ``--hex`` preview) and
``replay`` needs the key to send the raw records back. These commands print reason codes,
coordinates and sizes, never a raw value. See :mod:`streams.dlq.replay` for the rules of a replay
and :mod:`streams.dlq.ledger` for where replay counts come from (never from record headers).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from kafka import TopicPartition

from streams.cli.options import common_options, settings
from streams.credentials import OPERATOR, KafkaAuth
from streams.crypto.letters import OPERATORS, LetterOpener, dlq_key_topic
from streams.crypto.ring import PrivateKeyRing
from streams.dlq.ledger import Ledger, coordinates, entry, ledger_topic, read_ledger
from streams.dlq.letters import (
    DeadLetter,
    Selection,
    opened,
    parse,
    render,
    render_summary,
    select,
    summarise,
    within,
)
from streams.dlq.replay import DEFAULT_MAX_REPLAYS, ReplayPlan, ReplayRecord, plan_replay
from streams.errors import ScreeningStreamsError
from streams.kafka.offsets import ReadRecord, beginning_offsets, end_offsets, read_from
from streams.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
DAY_MS = 86_400_000


class DlqError(ScreeningStreamsError):
    """A dead-letter command cannot do what it was asked."""


def _selection_options(func: F) -> F:
    options = [
        click.option(
            "--code",
            "codes",
            multiple=True,
            envvar="SCREENING_DLQ_CODE",
            help="Only this reason code (repeatable), e.g. unknown_commune.",
        ),
        click.option("--partition", type=int, envvar="SCREENING_DLQ_PARTITION", help="DLQ partition."),
        click.option("--offset", type=int, envvar="SCREENING_DLQ_OFFSET", help="DLQ offset (with --partition)."),
        click.option(
            "--source-partition", type=int, envvar="SCREENING_DLQ_SOURCE_PARTITION", help="Source (ingress) partition."
        ),
        click.option("--source-from", type=int, envvar="SCREENING_DLQ_SOURCE_FROM", help="Lowest source offset."),
        click.option("--source-to", type=int, envvar="SCREENING_DLQ_SOURCE_TO", help="Highest source offset."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _selection(
    codes: tuple[str, ...],
    partition: int | None,
    offset: int | None,
    source_partition: int | None,
    source_from: int | None,
    source_to: int | None,
) -> Selection:
    if offset is not None and partition is None:
        raise click.UsageError("--offset needs --partition (the record's DLQ partition)")
    return Selection(frozenset(codes), source_partition, source_from, source_to, partition, offset)


def _read_topic(settings: Settings, topic: str) -> list[ReadRecord]:
    """Every record of ``topic`` below the end offsets taken now (nothing if it does not exist)."""
    bootstrap_servers, auth = settings.bootstrap_servers, settings.kafka_auth
    ends = end_offsets(bootstrap_servers, [topic], auth=auth)
    starts = beginning_offsets(bootstrap_servers, [topic], auth=auth) if ends else {}
    pending = {tp: starts.get(tp, 0) for tp, end in ends.items() if starts.get(tp, 0) < end}
    records = read_from(bootstrap_servers, pending, auth=auth) if pending else []
    return within(records, {(tp.topic, tp.partition): end for tp, end in ends.items()})


_private_key = click.option(
    "--private-key",
    "private_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="SCREENING_DLQ_PRIVATE_KEY",
    help="The operators' private key file (repeatable; the env var takes several, space-separated): "
    "dead letters are sealed to the operators' public key.",
)


def _opener(settings: Settings, private_keys: tuple[Path, ...]) -> LetterOpener:
    """A :class:`~streams.crypto.letters.LetterOpener` holding the DLQ key topic's data keys."""
    opener = LetterOpener(PrivateKeyRing.from_files(private_keys, OPERATORS))
    for record in _read_topic(settings, dlq_key_topic(settings.dlq_topic)):
        opener.add_key_record(record.value)
    return opener


def _open_all(settings: Settings, letters: list[DeadLetter], private_keys: tuple[Path, ...]) -> list[DeadLetter]:
    """``letters`` opened with the operators' keys; the first that does not open stops the command, named."""
    if not letters:
        return letters
    opener = _opener(settings, private_keys)
    return [opened(letter, opener) for letter in letters]


def _ledger(settings: Settings) -> Ledger:
    """The replay ledger as it stands now (empty when nothing was ever replayed)."""
    return read_ledger(_read_topic(settings, ledger_topic(settings.topic_prefix)))


def _dead_letters(settings: Settings, ledger: Ledger) -> list[DeadLetter]:
    if not end_offsets(settings.bootstrap_servers, [settings.dlq_topic], auth=settings.kafka_auth):
        raise DlqError(f"topic {settings.dlq_topic} does not exist: run `screening-streams topics`")
    return [parse(r, ledger) for r in _read_topic(settings, settings.dlq_topic)]


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (rejected ingress records); raw values are never printed."""


@dlq.command("list")
@common_options
@_selection_options
def list_(
    bootstrap_servers: str | None,
    registry_url: str | None,
    topic_prefix: str | None,
    **criteria: Any,
) -> None:
    """Count dead letters per reason code, stage and source topic, with their time range."""
    cfg = settings(OPERATOR, bootstrap_servers=bootstrap_servers, registry_url=registry_url, topic_prefix=topic_prefix)
    selection = _selection(**criteria)
    letters = select(_dead_letters(cfg, _ledger(cfg)), selection)
    click.echo(render_summary(summarise(letters), cfg.dlq_topic))


@dlq.command("show")
@common_options
@_selection_options
@click.option("--limit", "-n", type=click.IntRange(min=1), default=1, show_default=True, envvar="SCREENING_DLQ_LIMIT")
@click.option(
    "--hex",
    "hex_preview",
    is_flag=True,
    default=False,
    envvar="SCREENING_DLQ_HEX",
    help="Also print the first 16 bytes of the raw value in hex (may hold identifying data; needs --private-key).",
)
@_private_key
def show(
    bootstrap_servers: str | None,
    registry_url: str | None,
    topic_prefix: str | None,
    limit: int,
    hex_preview: bool,
    private_keys: tuple[Path, ...],
    **criteria: Any,
) -> None:
    """Describe dead letters: one by --partition/--offset, or the first N matching --code.

    Without --private-key only the readable dlq.* headers (reason, source, sizes, framing); with
    it, the letters are opened (authenticated) and the original header names and --hex shown.
    """
    cfg = settings(OPERATOR, bootstrap_servers=bootstrap_servers, registry_url=registry_url, topic_prefix=topic_prefix)
    selection = _selection(**criteria)
    if selection.partition is not None and selection.offset is not None:
        tp = TopicPartition(cfg.dlq_topic, selection.partition)
        ends = end_offsets(cfg.bootstrap_servers, [cfg.dlq_topic], auth=cfg.kafka_auth)
        if tp not in ends:
            raise DlqError(f"{cfg.dlq_topic} has no partition {selection.partition}")
        found = (
            read_from(cfg.bootstrap_servers, {tp: selection.offset}, limit=1, auth=cfg.kafka_auth)
            if selection.offset < ends[tp]
            else []
        )
        letters = select((parse(r, _ledger(cfg)) for r in found), selection)
    else:
        letters = select(_dead_letters(cfg, _ledger(cfg)), selection)
    if not letters:
        raise DlqError(f"no dead letter in {cfg.dlq_topic} matches the selection")
    shown = _open_all(cfg, letters[:limit], private_keys) if private_keys else letters[:limit]
    click.echo("\n\n".join(render(letter, hex_preview=hex_preview) for letter in shown))
    if len(letters) > limit:
        click.echo(f"\n({limit} of {len(letters)} matching dead letters shown; --limit N for more)")


@dlq.command("replay")
@common_options
@_selection_options
@click.option("--dry-run", is_flag=True, default=False, envvar="SCREENING_DLQ_DRY_RUN", help="Say what would go.")
@click.option(
    "--max-replays",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_REPLAYS,
    show_default=True,
    envvar="SCREENING_DLQ_MAX_REPLAYS",
    help="Refuse dead letters already replayed this many times.",
)
@click.option("--force", is_flag=True, default=False, envvar="SCREENING_DLQ_FORCE", help="Ignore --max-replays.")
@click.option(
    "--again",
    is_flag=True,
    default=False,
    envvar="SCREENING_DLQ_AGAIN",
    help="Also replay dead letters an earlier replay already sent back (duplicates downstream).",
)
@_private_key
def replay(
    bootstrap_servers: str | None,
    registry_url: str | None,
    topic_prefix: str | None,
    dry_run: bool,
    max_replays: int,
    force: bool,
    again: bool,
    private_keys: tuple[Path, ...],
    **criteria: Any,
) -> None:
    """Send matching dead letters back to the ingress topic, unchanged, up to the DLQ's current end.

    Needs the operators' private key (--private-key): each letter is opened, authenticated, before
    anything is sent; one that does not open stops the replay, naming it, with nothing sent.
    """
    cfg = settings(OPERATOR, bootstrap_servers=bootstrap_servers, registry_url=registry_url, topic_prefix=topic_prefix)
    selection = _selection(**criteria)
    if not private_keys:
        raise click.UsageError(
            "dead letters are sealed to the operators' public key: replay needs --private-key "
            "(or SCREENING_DLQ_PRIVATE_KEY), the operators' private key file"
        )
    ledger = _ledger(cfg)
    letters = select(_dead_letters(cfg, ledger), selection)  # bounded by the end offsets taken now
    letters = _open_all(cfg, letters, private_keys)
    plan = plan_replay(letters, max_replays=max_replays, force=force, replayed=ledger.replayed, again=again)
    if dry_run:
        for record in plan.records:
            click.echo(f"would replay {record.of} as replay {record.count}")
        click.echo(f"dry run: would replay {len(plan.records)} dead letters to {cfg.ingress_topic}")
    else:
        sent = _publish(cfg, plan) if plan.records else 0
        chosen = {r.of for r in plan.records}
        codes = Counter(letter.code for letter in letters if letter.coordinates in chosen)
        detail = f" ({', '.join(f'{c}: {n}' for c, n in sorted(codes.items()))})" if codes else ""
        click.echo(f"replayed {sent} dead letters to {cfg.ingress_topic}{detail}")
    _report_skips(plan, max_replays)


def _report_skips(plan: ReplayPlan, max_replays: int) -> None:
    if plan.over_limit:
        click.echo(
            f"skipped {len(plan.over_limit)} already replayed {max_replays} times or more (--force to replay anyway)"
        )
    if plan.already_replayed:
        click.echo(f"skipped {len(plan.already_replayed)} an earlier replay already sent back (--again to resend)")


def _publish(cfg: Settings, plan: ReplayPlan) -> int:
    from streams.kafka.publish import publish_raw
    from streams.kafka.topics import TopicSpec, admin_client, ensure_topics, partition_counts

    ledger = ledger_topic(cfg.topic_prefix)
    ledger_spec = TopicSpec(ledger, 1, {"cleanup.policy": "compact,delete", "retention.ms": str(14 * DAY_MS)})
    admin = admin_client(cfg.bootstrap_servers, auth=cfg.kafka_auth)
    try:
        ingress_partitions = partition_counts(admin, [cfg.ingress_topic]).get(cfg.ingress_topic)
        ledger_partitions = ensure_topics(admin, [ledger_spec], cfg.replication_factor)[ledger]
    finally:
        admin.close()
    if not ingress_partitions:
        raise DlqError(f"topic {cfg.ingress_topic} does not exist: run `screening-streams topics`")
    placed = asyncio.run(
        _send_replays(cfg.bootstrap_servers, cfg.ingress_topic, plan.records, ingress_partitions, cfg.kafka_auth)
    )
    # Recorded after the replays are acknowledged, under the coordinates the broker gave them: a
    # crash in between replays them again on the next run (at least once; agencies see the
    # duplicate event_ref), never loses one; a replay not yet in the ledger counts as original.
    now_ms = time.time_ns() // 1_000_000
    entries = [entry(at, r.of, r.count, now_ms) for at, r in zip(placed, plan.records, strict=True)]
    asyncio.run(publish_raw(cfg.bootstrap_servers, ledger, entries, ledger_partitions, auth=cfg.kafka_auth))
    return len(placed)


async def _send_replays(
    bootstrap_servers: str, topic: str, records: tuple[ReplayRecord, ...], partitions: int, auth: KafkaAuth
) -> list[str]:
    """Publish replays (partitioned like ``publish_raw``: CRC-32 of the key) as ``auth``; return their coordinates."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from streams.kafka.publish import aiokafka_auth

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, **aiokafka_auth(auth), acks="all", enable_idempotence=True
    )
    try:
        await producer.start()
        sends = [
            await producer.send(
                topic, r.value, key=r.key, partition=zlib.crc32(r.key or b"") % partitions, headers=list(r.headers)
            )
            for r in records
        ]
        placed = await asyncio.gather(*sends)
    except KafkaError as exc:
        raise DlqError(f"replaying to {topic} failed: {exc}") from exc
    finally:
        await producer.stop()
    return [coordinates(topic, md.partition, md.offset) for md in placed]
