"""The replay ledger: which dead letters were sent back to the ingress, where to, and how often.

The only source of replay counts. A producer may set any header on an ingress record, so the
pipeline drops every incoming ``dlq.*`` header and no DLQ record says by itself that it is a
replay. The ledger (a compacted topic written by ``dlq replay`` only; operators alone may
write it, see ``acl plan``) holds one entry per replay, keyed by the ingress coordinates the
broker gave the replayed record (``<ingress topic>:<partition>:<offset>``), valued with the
DLQ coordinates it replays and its replay count. A dead letter whose source coordinates are a
ledger key is that replay failing again; any other dead letter is an original failure (count
0), whatever its producer wrote: offsets are assigned by the broker, so they cannot be forged.
Entries hold coordinates and counts only, never data; a tombstone removes one replay.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.kafka.offsets import ReadRecord
from streams.settings import REPLAY_LEDGER_TOPIC as LEDGER_TOPIC


@dataclass(frozen=True)
class Replay:
    """One ledger entry: the DLQ record ``of`` was replayed as the ingress record ``at``, for the ``count``-th time.

    ``count`` is None when the entry cannot be read (a replay of unknown rank).
    """

    at: str
    of: str
    count: int | None


@dataclass(frozen=True)
class Ledger:
    """What the ledger says: each replay by its ingress coordinates."""

    replays: dict[str, Replay] = field(default_factory=dict)

    @property
    def replayed(self) -> frozenset[str]:
        """The DLQ coordinates of every dead letter already sent back."""
        return frozenset(r.of for r in self.replays.values())

    def replay_at(self, source: str) -> Replay | None:
        """The replay published at ingress coordinates ``source``, if one was."""
        return self.replays.get(source)


def coordinates(topic: str, partition: int | None, offset: int | None) -> str:
    """``<topic>:<partition>:<offset>`` (``?`` for an unknown part)."""
    return f"{topic}:{'?' if partition is None else partition}:{'?' if offset is None else offset}"


def entry(at: str, of: str, count: int, now_ms: int) -> tuple[bytes, bytes, tuple[()]]:
    """The ledger record noting that DLQ record ``of`` was replayed as ingress record ``at`` (replay ``count``)."""
    when = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
    value = {"of": of, "replay_count": count, "replayed_at": when}
    return at.encode(), json.dumps(value, sort_keys=True).encode(), ()


def _replay(at: str, value: bytes) -> Replay | None:
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("of"), str):
        return None  # not an entry of this format
    count = data.get("replay_count")
    valid = isinstance(count, int) and not isinstance(count, bool) and count >= 1
    return Replay(at, data["of"], count if valid else None)


def read_ledger(records: Iterable[ReadRecord]) -> Ledger:
    """Fold the ledger topic's records (in offset order) into a :class:`Ledger`; tombstones remove an entry.

    Records that are not entries of this format (no key, unreadable value, no ``of``) are ignored.
    """
    replays: dict[str, Replay] = {}
    for record in records:
        if record.key is None:
            continue
        at = record.key.decode("utf-8", errors="replace")
        if record.value is None:
            replays.pop(at, None)
            continue
        replay = _replay(at, record.value)
        if replay is not None:
            replays[at] = replay
    return Ledger(replays)


def ledger_topic(topic_prefix: str) -> str:
    """The replay ledger topic, with the prefix."""
    return topic_prefix + LEDGER_TOPIC
