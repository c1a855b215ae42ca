"""Bounded, traceable replays of dead letters, planned from the replay ledger.

A replay record carries the raw key and value unchanged and the original non-``dlq.*`` headers,
unsealed with the operators' private key (:mod:`streams.crypto.letters`)
(nothing a producer could imitate: the pipeline drops ``dlq.*`` headers anyway). Its rank and
origin are written to the ledger (:mod:`streams.dlq.ledger`) under the ingress coordinates the
broker gives it, which is how a replay that fails again is recognised. :func:`plan_replay`
refuses a letter once its count reaches ``max_replays`` (unless forced) and skips DLQ records
the ledger says were already sent back (unless asked again).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

from streams.dlq.letters import DeadLetter
from streams.pipeline import DLQ_PREFIX

#: Default bound on how often one input may be replayed.
DEFAULT_MAX_REPLAYS = 3


@dataclass(frozen=True)
class ReplayRecord:
    """One record to publish to the ingress topic, the DLQ record it replays and its replay count."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
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
    """The ingress record replaying ``letter``: raw key/value, original non-``dlq.*`` headers, count + 1.

    ``letter`` must be opened (:func:`~streams.dlq.letters.opened`): its raw record is sealed to
    the operators' key. The count is the ledger's count for ``letter`` plus one (an unknown count
    restarts at 1).
    """
    if letter.raw is None:
        raise ValueError(f"dead letter {letter.coordinates} is not opened: replaying needs the operators' key")
    count = (letter.replay_count or 0) + 1
    kept = tuple((k, v) for k, v in letter.raw.headers if not k.startswith(DLQ_PREFIX))
    return ReplayRecord(letter.raw.key, letter.raw.value, kept, letter.coordinates, count)


def plan_replay(
    letters: Sequence[DeadLetter],
    *,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    force: bool = False,
    replayed: Set[str] = frozenset(),
    again: bool = False,
) -> ReplayPlan:
    """Decide which selected dead letters to replay.

    A dead letter whose replay count (from the ledger) is ``>= max_replays`` or unknown is
    refused unless ``force``; one whose coordinates are in ``replayed`` (the ledger's
    :attr:`~streams.dlq.ledger.Ledger.replayed`) is skipped unless ``again``.
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
