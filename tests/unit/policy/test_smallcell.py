"""The small-cell guard by hand: hold below k, release a class at once when it reaches k, climb the ladder
when the window closes, suppress the rest; windows by processing time; rollback; rebuild from the log."""

from __future__ import annotations

from typing import Any

import pytest

from streams.errors import ConfigError
from streams.policy.model import KAnonymity, LadderStep
from streams.policy.smallcell import (
    SUPPRESSED_SMALL_CELL,
    Checkpoint,
    Close,
    Entry,
    Hold,
    HoldLogError,
    Ladder,
    Open,
    SmallCellGuard,
    items_of,
)

MINUTE = 60_000
#: Toy option: counted (dept, day, house); dept -> region, day -> week, house -> any.
OPTION = KAnonymity(
    3,
    MINUTE,
    ("dept", "day", "house"),
    (LadderStep("dept", "region"), LadderStep("day", "week"), LadderStep("house", None)),
)


def _cell(dept: int, day: int, house: str) -> tuple[Any, ...]:
    """Cell in column order (dept, day, house, region, week): region = dept // 10, week = day // 7."""
    return (dept, day, house, dept // 10, day // 7)


def _guard(k: int = 3, grace_ms: int = 0) -> SmallCellGuard[str]:
    option = KAnonymity(k, OPTION.window_ms, OPTION.quasi_identifiers, OPTION.ladder)
    return SmallCellGuard(Ladder.of(option, grace_ms=grace_ms))


def test_ladder_compiles_cumulative_steps() -> None:
    """Columns are the counted fields then the coarser ones; step j withholds the fields of steps 1..j."""
    ladder = Ladder.of(OPTION)
    assert ladder.columns == ("dept", "day", "house", "region", "week")
    assert ladder.withheld == ((), ("dept",), ("dept", "day"), ("dept", "day", "house"))
    cell = _cell(75, 3, "PRISON")
    assert ladder.key(cell, 0) == cell
    assert ladder.key(cell, 1) == (3, "PRISON", 7, 0)
    assert ladder.key(cell, 3) == (7, 0)
    assert ladder.cell({"dept": 75, "day": 3, "house": "PRISON", "region": 7, "week": 0, "other": 1}) == cell


def test_the_window_may_only_be_shortened() -> None:
    """A settings override may shorten the policy's window (a narrowing), never lengthen it."""
    assert Ladder.of(OPTION, window_ms=1000).window_ms == 1000
    with pytest.raises(ConfigError, match="at most the policy's 1m"):
        Ladder.of(OPTION, window_ms=2 * MINUTE)
    with pytest.raises(ConfigError, match="grace"):
        Ladder.of(OPTION, grace_ms=-1)


def test_held_below_k_then_released_at_once_and_later_members_immediately() -> None:
    """k=3: two views held (a Hold entry each), the third releases all three at full detail with an Open
    entry; a fourth of the class is released on arrival with no entry at all."""
    guard = _guard()
    a = _cell(75, 3, "NONE")
    first = guard.admit(0, 1000, a, "v1")
    second = guard.admit(0, 2000, a, "v2")
    assert first.releases == [] and second.releases == []
    assert [type(e) for e in first.entries + second.entries] == [Hold, Hold]
    assert [e.seq for e in first.entries + second.entries] == [1, 2]
    third = guard.admit(0, 3000, a, "v3")
    assert [(r.window, r.step, r.items) for r in third.releases] == [(0, 0, ("v1", "v2", "v3"))]
    assert third.entries == [Open(0, 3, 0, a, 3000)]
    fourth = guard.admit(0, 4000, a, "v4")
    assert [(r.step, r.items) for r in fourth.releases] == [(0, ("v4",))] and fourth.entries == []
    assert guard.held_count() == 0


def test_a_closing_window_climbs_the_ladder_and_suppresses_the_rest() -> None:
    """k=3 over one window, each class below 3 at full detail:
    (75|76, day 3, NONE): 1 + 2 share region 7, day 3, NONE → 3 released at step 1;
    (81, day 1|2, NONE) + (82, day 5, NONE): region 8, week 0, NONE → 3 released at step 2;
    (91, day 1, PRISON) + (92, day 2, NURSING): region 9, week 0, any housing → 2 of them, plus
    (93, day 3, OTHER) → 3 released at step 3; (11, day 9, NONE): alone → suppressed."""
    guard = _guard()
    views = [
        (_cell(75, 3, "NONE"), "a1"),
        (_cell(76, 3, "NONE"), "a2"),
        (_cell(76, 3, "NONE"), "a3"),
        (_cell(81, 1, "NONE"), "b1"),
        (_cell(81, 2, "NONE"), "b2"),
        (_cell(82, 5, "NONE"), "b3"),
        (_cell(91, 1, "PRISON"), "c1"),
        (_cell(92, 2, "NURSING_HOME"), "c2"),
        (_cell(93, 3, "OTHER"), "c3"),
        (_cell(11, 9, "NONE"), "d1"),
    ]
    for i, (cell, item) in enumerate(views):
        assert guard.admit(0, 1000 + i, cell, item).releases == []
    assert guard.due(MINUTE - 1) == [] and guard.due(MINUTE) == [(0, 0)]
    effects = guard.close_due(MINUTE)
    assert [(r.step, sorted(r.items)) for r in effects.releases] == [
        (1, ["a1", "a2", "a3"]),
        (2, ["b1", "b2", "b3"]),
        (3, ["c1", "c2", "c3"]),
    ]
    ((suppressed),) = effects.suppressions
    assert suppressed.items == ("d1",) and suppressed.reason == SUPPRESSED_SMALL_CELL
    assert effects.entries == [Close(0, 11, 0, (3, 3, 3), 1, MINUTE)]
    assert guard.partitions == {0} and guard.due(10 * MINUTE) == [] and guard.held_count() == 0


def test_the_grace_delays_the_close() -> None:
    """With a 10 s grace a 1-minute window closes at 70 s, not 60 s."""
    guard = _guard(grace_ms=10_000)
    guard.admit(0, 5, _cell(1, 1, "NONE"), "x")
    assert guard.due(MINUTE + 9_999) == [] and guard.next_close_ms() == MINUTE + 10_000
    assert guard.close_due(MINUTE + 10_000).suppressions[0].items == ("x",)


def test_a_view_is_never_admitted_to_a_closed_window() -> None:
    """Once window [0, 60 s) closed, a view at 59 s (a lagging clock) goes to [60 s, 120 s) instead."""
    guard = _guard()
    guard.admit(0, 1000, _cell(1, 1, "NONE"), "x")
    guard.close_due(MINUTE)
    late = guard.admit(0, 59_000, _cell(1, 1, "NONE"), "y")
    (hold,) = late.entries
    assert isinstance(hold, Hold) and hold.window == MINUTE and hold.at_ms == MINUTE


def test_partitions_are_independent() -> None:
    """Two members of one class in partition 0 and one in partition 1 never make k=3: counts are per partition."""
    guard = _guard()
    a = _cell(75, 3, "NONE")
    guard.admit(0, 1, a, "p0-1")
    guard.admit(0, 2, a, "p0-2")
    assert guard.admit(1, 3, a, "p1-1").releases == []
    before = guard.snapshot(1)
    assert [r.items for r in guard.admit(0, 4, a, "p0-3").releases] == [("p0-1", "p0-2", "p0-3")]
    assert guard.snapshot(1) == before and guard.held_count(1) == 1


def test_rollback_restores_the_state_exactly() -> None:
    """An aborted batch (admissions, a release, a close) leaves the guard as begin() saw it."""
    guard = _guard()
    a, b = _cell(75, 3, "NONE"), _cell(11, 1, "NONE")
    guard.begin()
    guard.admit(0, 1, a, "a1")
    guard.admit(0, 2, a, "a2")
    guard.commit()
    before = guard.snapshot(0)
    guard.begin()
    guard.admit(0, 3, a, "a3")  # opens the class
    guard.admit(0, 4, b, "b1")
    guard.admit(2, 5, b, "new partition")
    guard.close_due(MINUTE)
    guard.admit(0, MINUTE + 1, b, "b2")
    guard.rollback()
    assert guard.snapshot(0) == before and guard.partitions == {0}
    assert [r.items for r in guard.admit(0, 6, a, "a3 again").releases] == [("a1", "a2", "a3 again")]


def _replayed(log: list[Entry[str]], checkpoint: Checkpoint) -> SmallCellGuard[str]:
    rebuilt = _guard()
    rebuilt.resume(0, checkpoint)
    for entry in log:
        rebuilt.replay(entry)
    rebuilt.resumed(0, checkpoint)
    return rebuilt


def test_rebuild_from_the_log_restores_the_state() -> None:
    """Replaying the entries up to the checkpoint gives the same state, so the same later decisions."""
    guard = _guard()
    log: list[Entry[str]] = []
    a, b = _cell(75, 3, "NONE"), _cell(11, 1, "NONE")
    for i, (t, cell) in enumerate([(1, a), (2, b), (3, a), (4, a), (5, a), (MINUTE + 1, b)]):
        log += guard.close_due(t).entries
        log += guard.admit(0, t, cell, f"v{i}").entries
    checkpoint = guard.checkpoint(0)
    first = next(e.seq for e in log if e.window == MINUTE)
    assert checkpoint == Checkpoint(len(log), MINUTE, MINUTE, first)
    rebuilt = _replayed(log, checkpoint)
    assert rebuilt.snapshot(0) == guard.snapshot(0)
    assert list(items_of(rebuilt.admit(0, MINUTE + 2, b, "x").releases)) == []
    assert [r.items for r in rebuilt.admit(0, MINUTE + 3, b, "y").releases] == [("v5", "x", "y")]


def test_a_gap_or_a_short_log_fails_the_rebuild() -> None:
    """A missing entry (retention, a second writer) or a log that stops short of the checkpoint is refused."""
    guard = _guard()
    log: list[Entry[str]] = []
    for i in range(4):
        log += guard.admit(0, i, _cell(i, 1, "NONE"), f"v{i}").entries
    checkpoint = guard.checkpoint(0)
    with pytest.raises(HoldLogError, match="entry 3 follows entry 1"):
        _replayed([log[0], log[2], log[3]], checkpoint)
    with pytest.raises(HoldLogError, match="replay ended at entry 3"):
        _replayed(log[:3], checkpoint)


def test_a_log_whose_oldest_open_entries_expired_fails_the_rebuild() -> None:
    """The checkpoint names the oldest open window's first entry: a replay whose first entries of that
    window are gone (retention shorter than window + grace) is refused instead of losing held views."""
    guard = _guard()
    log: list[Entry[str]] = []
    for i in range(4):
        log += guard.admit(0, i, _cell(i, 1, "NONE"), f"v{i}").entries
    checkpoint = guard.checkpoint(0)
    assert checkpoint.first_open_entry == 1 and _replayed(log, checkpoint).snapshot(0) == guard.snapshot(0)
    with pytest.raises(HoldLogError, match="first entry 1 was not replayed"):
        _replayed(log[2:], checkpoint)
    legacy = Checkpoint(checkpoint.seq, checkpoint.closed_through, checkpoint.oldest_open)  # before the field
    assert _replayed(log[2:], legacy).held_count() == 2  # what an old checkpoint could not tell


def test_no_replay_is_needed_when_no_window_is_open() -> None:
    """A checkpoint without an open window resumes with its numbering and closed bound, reading nothing."""
    rebuilt = _replayed([], Checkpoint(41, 2 * MINUTE, None))
    assert rebuilt.checkpoint(0) == Checkpoint(41, 2 * MINUTE, None)
    (hold,) = rebuilt.admit(0, MINUTE, _cell(1, 1, "NONE"), "x").entries
    assert hold.seq == 42 and hold.window == 2 * MINUTE


def test_entries_of_windows_closed_before_the_replay_start_are_ignored() -> None:
    """A replay started late may meet Hold entries of a window whose Close it did not read: the
    checkpoint's closed bound drops them."""
    stale = Hold(0, 7, 0, _cell(1, 1, "NONE"), "old", 10)
    rebuilt = _replayed([stale], Checkpoint(7, MINUTE, None))
    assert rebuilt.held_count() == 0 and rebuilt.checkpoint(0) == Checkpoint(7, MINUTE, None)


def test_checkpoint_text_round_trips() -> None:
    """The committed text is short, versioned and read back exactly; foreign metadata is no checkpoint."""
    for checkpoint in (Checkpoint(0, None, None), Checkpoint(12, 86_400_000, 86_400_000), Checkpoint(9, 0, 60, 4)):
        assert Checkpoint.parse(checkpoint.render()) == checkpoint
    assert Checkpoint(3, None, 60_000).render() == "kanon1:3::60000"
    assert Checkpoint(3, None, 60_000, 2).render() == "kanon1:3::60000:2"
    assert Checkpoint.parse("") is None and Checkpoint.parse(None) is None and Checkpoint.parse("other") is None
    with pytest.raises(HoldLogError):
        Checkpoint.parse("kanon1:x::")
