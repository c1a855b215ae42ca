"""Bounded, traceable replays of dead letters and the ledger that records them.

A replay record carries the raw key and value unchanged, the original non-``dlq.*`` headers,
``dlq.replay.count`` incremented and ``dlq.replay.of`` = ``<dlq topic>:<partition>:<offset>``.
:func:`plan_replay` refuses a letter once its count reaches ``max_replays`` (unless forced);
every replayed DLQ record is written to a small compacted ledger topic (:func:`ledger_entry`),
and a later replay skips DLQ records found there unless asked again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

from streams.dlq.letters import DLQ_PREFIX, H_REPLAY_OF, DeadLetter, Header, text
from streams.kafka.offsets import ReadRecord
from streams.pipeline import H_REPLAYS

#: Default bound on how often one input may be replayed.
DEFAULT_MAX_REPLAYS = 3
#: Compacted topic recording which DLQ records were replayed (coordinates only, no data).
LEDGER_TOPIC = "screening.results.dlq.replays.v1"


@dataclass(frozen=True)
class ReplayRecord:
    """One record to publish to the ingress topic, and the DLQ record it replays."""

    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    of: str
    count: int


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay will publish and what it leaves alone, and why."""

    records: tuple[ReplayRecord, ...] = ()
    over_limit: tuple[DeadLetter, ...] = ()
    already_replayed: tuple[DeadLetter, ...] = ()

    @property
    def skipped(self) -> int:
        """How many selected dead letters are not replayed."""
        return len(self.over_limit) + len(self.already_replayed)


def replay_record(letter: DeadLetter) -> ReplayRecord:
    """The ingress record replaying ``letter``: raw key/value, original headers, count + 1.

    Headers under ``dlq.`` are dropped (earlier replay markers included) and replaced by
    ``dlq.replay.count`` (previous count + 1; an unreadable count restarts at 1) and
    ``dlq.replay.of``.
    """
    count = (letter.replay_count or 0) + 1
    kept = tuple((k, v) for k, v in letter.record.headers if not k.startswith(DLQ_PREFIX))
    headers = (*kept, (H_REPLAYS, str(count).encode()), (H_REPLAY_OF, letter.coordinates.encode()))
    return ReplayRecord(letter.record.key, letter.record.value, headers, letter.coordinates, count)


def plan_replay(
    letters: Sequence[DeadLetter],
    *,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    force: bool = False,
    replayed: Set[str] = frozenset(),
    again: bool = False,
) -> ReplayPlan:
    """Decide which selected dead letters to replay.

    A dead letter whose replay count is ``>= max_replays`` (or unreadable) is refused unless
    ``force``; one whose coordinates are in ``replayed`` (the ledger) is skipped unless
    ``again``.
    """
    records: list[ReplayRecord] = []
    over: list[DeadLetter] = []
    done: list[DeadLetter] = []
    for letter in letters:
        if letter.coordinates in replayed and not again:
            done.append(letter)
        elif not force and (letter.replay_count is None or letter.replay_count >= max_replays):
            over.append(letter)
        else:
            records.append(replay_record(letter))
    return ReplayPlan(tuple(records), tuple(over), tuple(done))


def ledger_entry(record: ReplayRecord, ingress_topic: str, now_ms: int) -> tuple[bytes, bytes, tuple[Header, ...]]:
    """The ledger record noting that ``record`` was replayed (coordinates and count only)."""
    when = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
    value = {"replayed_at": when, "replay_count": record.count, "to": ingress_topic}
    return record.of.encode(), json.dumps(value, sort_keys=True).encode(), ()


def replayed_coordinates(ledger: Iterable[ReadRecord]) -> set[str]:
    """The DLQ coordinates the ledger says were replayed (tombstones un-mark a record)."""
    done: set[str] = set()
    for record in ledger:
        if record.key is None:
            continue
        coordinates = text(record.key)
        if record.value is None:
            done.discard(coordinates)
        else:
            done.add(coordinates)
    return done


def ledger_topic(topic_prefix: str) -> str:
    """The replay ledger topic, with the prefix."""
    return topic_prefix + LEDGER_TOPIC
