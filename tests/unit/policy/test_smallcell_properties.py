"""Properties of the small-cell guard over random streams, with aborts and crashes at random points.

The model runner does what the worker does: per batch, begin → close the due windows → admit the
batch's views → commit (entries appended to the partition's log, checkpoint kept with the offsets),
or abort (rollback), or crash (the process dies before the commit: a new guard rebuilds every
partition from the committed log, starting where the checkpoint's oldest open window starts, as
the worker does with offsets_for_times) and the batch is processed again at the same instants.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.policy.model import KAnonymity, LadderStep
from streams.policy.smallcell import Checkpoint, Entry, Ladder, SmallCellGuard

WINDOW = 10_000
OPTION_STEPS = (LadderStep("dept", "region"), LadderStep("day", "week"), LadderStep("house", None))
FAR = 10**12


def _ladder(k: int, grace: int) -> Ladder:
    return Ladder.of(KAnonymity(k, WINDOW, ("dept", "day", "house"), OPTION_STEPS), grace_ms=grace)


def _cell(code: int) -> tuple[Any, ...]:
    """A small domain so classes collide: 6 departments in 3 regions, 4 days in 2 weeks, 2 housing kinds."""
    dept, day, house = code % 6, (code // 6) % 4, (code // 24) % 2
    return (dept, day, house, dept // 2, day // 2)


@dataclass
class Outcome:
    """What the committed outputs say: releases (partition, window, step, id), suppressions, entries."""

    released: list[tuple[int, int, int, int]] = field(default_factory=list)
    suppressed: list[int] = field(default_factory=list)
    log: dict[int, list[Entry[int]]] = field(default_factory=dict)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    rebuilds: int = 0
    rollbacks: int = 0


Event = tuple[int, int, int]  # (partition, ms since the previous event, cell code)


def _rebuild(ladder: Ladder, outcome: Outcome) -> SmallCellGuard[int]:
    guard: SmallCellGuard[int] = SmallCellGuard(ladder)
    for partition, checkpoint in outcome.checkpoints.items():
        guard.resume(partition, checkpoint)
        if checkpoint.oldest_open is not None:  # offsets_for_times: the first entry at or after it
            log = outcome.log.get(partition, [])
            first = next((i for i, e in enumerate(log) if e.at_ms >= checkpoint.oldest_open), len(log))
            for entry in log[first:]:
                guard.replay(entry)
        guard.resumed(partition, checkpoint)
    outcome.rebuilds += 1
    return guard


def run(
    events: list[Event], k: int, grace: int, sizes: list[int], faults: dict[int, str], ids: list[int] | None = None
) -> Outcome:
    """Process ``events`` in batches of ``sizes``; ``faults[b]`` ("abort" | "crash") hits batch attempt b once."""
    ladder = _ladder(k, grace)
    guard: SmallCellGuard[int] = SmallCellGuard(ladder)
    outcome = Outcome()
    times, now = [], 0
    for _, gap, _ in events:
        now += gap
        times.append(now)
    batches: list[list[int]] = []
    start = 0
    for size in sizes or [len(events)]:
        if start < len(events):
            batches.append(list(range(start, min(len(events), start + size))))
            start += size
    if start < len(events):
        batches.append(list(range(start, len(events))))
    batches.append([])  # the final pass: every window closes
    attempt = 0
    b = 0
    while b < len(batches):
        batch = batches[b]
        clock = FAR if not batch else times[batch[0]]
        before = {partition: guard.snapshot(partition) for partition in guard.partitions}
        guard.begin()
        effects = guard.close_due(clock)
        for i in batch:
            partition, _, code = events[i]
            effects.extend(guard.admit(partition, times[i], _cell(code), i))
        fault = faults.get(attempt)
        attempt += 1
        if fault == "abort":
            guard.rollback()
            assert {partition: guard.snapshot(partition) for partition in guard.partitions} == before
            outcome.rollbacks += 1
            continue
        if fault == "crash":
            guard = _rebuild(ladder, outcome)
            continue
        guard.commit()
        touched = {e.partition for e in effects.entries} | {events[i][0] for i in batch}
        for entry in effects.entries:
            outcome.log.setdefault(entry.partition, []).append(entry)
        for partition in touched:
            outcome.checkpoints[partition] = guard.checkpoint(partition)
        outcome.released += [(r.partition, r.window, r.step, item) for r in effects.releases for item in r.items]
        outcome.suppressed += [item for s in effects.suppressions for item in s.items]
        b += 1
    return outcome


events_st = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 3_000), st.integers(0, 3) | st.integers(0, 47)), max_size=120
)
sizes_st = st.lists(st.integers(1, 12), max_size=30)
faults_st = st.dictionaries(st.integers(0, 25), st.sampled_from(["abort", "crash"]), max_size=8)


def _check_k(outcome: Outcome, events: list[Event], k: int) -> None:
    ladder = _ladder(k, 0)
    classes = Counter(
        (partition, window, step, ladder.key(_cell(events[item][2]), step))
        for partition, window, step, item in outcome.released
    )
    small = {key: n for key, n in classes.items() if n < k}
    assert not small, f"released classes below k={k}: {small}"


@settings(max_examples=300, deadline=None)
@given(events=events_st, k=st.integers(2, 4), grace=st.sampled_from([0, 2_000]), sizes=sizes_st)
def test_every_released_class_has_k_members_at_its_detail_and_nothing_is_lost(
    events: list[Event], k: int, grace: int, sizes: list[int]
) -> None:
    """Over random streams: every (partition, window, step, class at that step) released has >= k views;
    every view is released exactly once or suppressed exactly once."""
    outcome = run(events, k, grace, sizes, {})
    _check_k(outcome, events, k)
    fates = Counter([item for *_, item in outcome.released] + outcome.suppressed)
    assert fates == Counter(range(len(events)))


@settings(max_examples=300, deadline=None)
@given(events=events_st, k=st.integers(2, 4), grace=st.sampled_from([0, 2_000]), sizes=sizes_st, faults=faults_st)
def test_aborts_and_crashes_at_any_point_yield_the_same_releases(
    events: list[Event], k: int, grace: int, sizes: list[int], faults: dict[int, str]
) -> None:
    """Aborted transactions (rollback) and crashes before any commit (rebuild from the committed log, from
    the checkpoint's oldest open window on) give exactly the releases and suppressions of a run without
    faults, in the same order, and the guarantees hold."""
    clean = run(events, k, grace, sizes, {})
    faulty = run(events, k, grace, sizes, faults)
    assert faulty.released == clean.released
    assert faulty.suppressed == clean.suppressed
    assert faulty.log == clean.log and faulty.checkpoints == clean.checkpoints
    _check_k(faulty, events, k)


@settings(max_examples=200, deadline=None)
@given(events=events_st, k=st.integers(2, 4), sizes=sizes_st)
def test_a_rebuilt_guard_has_the_state_of_the_live_one(events: list[Event], k: int, sizes: list[int]) -> None:
    """After any committed prefix, rebuilding from the log gives the live state, partition by partition."""
    outcome = run(events, k, 0, sizes, {})
    live: SmallCellGuard[int] = SmallCellGuard(_ladder(k, 0))
    for entry in (e for log in outcome.log.values() for e in log):
        if entry.partition not in live.partitions:
            live.resume(entry.partition, None)
        live.replay(entry)
    rebuilt = _rebuild(_ladder(k, 0), outcome)
    for partition in outcome.checkpoints:
        # The final pass closed every window, so both are empty and agree on numbering and bounds.
        assert rebuilt.snapshot(partition) == live.snapshot(partition)
        assert rebuilt.checkpoint(partition) == outcome.checkpoints[partition]


@settings(max_examples=200, deadline=None)
@given(events=events_st, k=st.integers(2, 4), sizes=sizes_st)
def test_per_partition_counting_is_conservative_globally(events: list[Event], k: int, sizes: list[int]) -> None:
    """Summed over partitions, every released class (window, step, class) still has >= k views, and a
    partition's releases do not depend on the other partitions' views."""
    outcome = run(events, k, 0, sizes, {})
    ladder = _ladder(k, 0)
    overall = Counter(
        (window, step, ladder.key(_cell(events[item][2]), step)) for _, window, step, item in outcome.released
    )
    assert all(n >= k for n in overall.values())
    for partition in {p for p, _, _ in events}:
        # The other partitions' views changed (same instants, same batches): this partition's releases stay.
        others = [e if e[0] == partition else (e[0], e[1], (e[2] + 7) % 48) for e in events]
        mine = [r for r in outcome.released if r[0] == partition]
        assert [r for r in run(others, k, 0, sizes, {}).released if r[0] == partition] == mine
