"""Small-cell protection: a record leaves only once k records of its class have been seen in its window.

**What is guaranteed.** Under a policy's ``k_anonymity`` option (:class:`~streams.policy.model.KAnonymity`)
every record the worker releases lies, within its processing window, in a class of at least ``k``
records released at the same detail: the same values of the counted fields (the
quasi-identifiers, and the coarser fields the ladder puts in place of withheld ones), the same
ladder step, the same window. Nothing is lost: each view is released exactly once or suppressed
exactly once (with the reason code :data:`SUPPRESSED_SMALL_CELL`).

**Algorithm** (per ingress partition, pure; the clock is injected by the caller):

* Windows are by processing time: ``[n·W, (n+1)·W)`` in epoch milliseconds, so a 1-day window
  is a UTC day. A view is admitted to the window of ``max(now, end of the last closed window)``,
  never to a closed one (a new owner whose clock lags its predecessor's is moved forward).
* A view whose class (its counted fields at full detail) has fewer than ``k`` members seen so far
  in the window is **held**. When the class reaches ``k``, all its held members are **released at
  once** at full detail, and later members of that class in the window are released immediately.
* When a window **closes** (the clock passes its end plus a grace), the views still held climb the
  ladder: at step ``j`` the fields of steps ``1..j`` are withheld (cumulatively) and the leftovers
  are grouped by what is still shown; groups of at least ``k`` are released at that step, the
  others go on; what is left after the last step is **suppressed**.

Counting per ingress partition is conservative: a class of ``k`` in one partition is a class of at
least ``k`` overall (a global class size is the sum of the per-partition ones), and partitions stay
independent, so each worker decides alone for the partitions it owns, as it processes them.
Class sizes split across partitions are smaller, so more is held, generalised or suppressed than
a global count would need; that is the price of needing no coordination between workers.

**Latency.** A record of a class that reaches ``k`` waits until its ``k``-th member arrives; one
that never does waits for the window's end plus the grace (up to a day and ten minutes for SPF),
then leaves generalised or is suppressed. Releasing at a coarser level at once (no waiting) would
bound latency by the batch, but the first members of every class would always go out generalised
and small classes at the coarsest level would still have to be held or suppressed: waiting keeps
full detail for every class that is big enough by the end of its window.

**State and durability.** The guard keeps, per window, the counted-field combinations with a
count and, for classes still below ``k``, their held items (the caller's opaque values: for SPF
the views exactly as the SPF topic would receive them). It describes what must be made durable as
:data:`Entry` values (:class:`Hold`, :class:`Open`, :class:`Close`), numbered per partition; the
worker writes them to the hold topic in the transaction of the batch that made them, and a new
owner rebuilds the partition by replaying them (:meth:`SmallCellGuard.replay`) up to the number
the committed :meth:`SmallCellGuard.checkpoint` names. Immediate releases need no entry: the
:class:`Open` entry of their class already says it reached ``k``. An aborted transaction must not
leave its changes: a caller either brackets them with :meth:`~SmallCellGuard.begin` /
:meth:`~SmallCellGuard.commit` / :meth:`~SmallCellGuard.rollback` (an undo journal), or, as the
worker does, drops the partitions the transaction touched and rebuilds them from the log (the
journal's objects, kept alive per batch, make Python's collector rescan the held views: 3 times
the cost of an admission).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streams.errors import ConfigError, ScreeningStreamsError
from streams.policy.model import KAnonymity

T = TypeVar("T")
#: The counted fields' values of one view at full detail, in the order of ``KAnonymity.columns``.
Cell = tuple[Any, ...]
#: Reason code of a view suppressed because its class stayed below k at every ladder step.
SUPPRESSED_SMALL_CELL = "small_cell"
#: Default grace after a window's end before it closes (``SCREENING_KANON_GRACE_S``).
DEFAULT_GRACE_MS = 600_000
CHECKPOINT_VERSION = "kanon1"


class HoldLogError(ScreeningStreamsError):
    """The hold log of a partition does not continue its committed checkpoint (a gap or a second writer)."""


@dataclass(frozen=True, slots=True)
class Ladder:
    """The option compiled: which columns each step shows, which output fields it withholds."""

    k: int
    window_ms: int
    grace_ms: int
    columns: tuple[str, ...]
    shown: tuple[tuple[int, ...], ...]  # per step 0..n: indexes of the columns still shown
    withheld: tuple[tuple[str, ...], ...]  # per step 0..n: the output fields set to null

    @classmethod
    def of(cls, option: KAnonymity, *, window_ms: int | None = None, grace_ms: int = DEFAULT_GRACE_MS) -> Ladder:
        """Compile ``option``; ``window_ms`` may only shorten the policy's window (a narrowing)."""
        window = option.window_ms if window_ms is None else window_ms
        if not 1000 <= window <= option.window_ms:
            raise ConfigError(
                f"small-cell window of {window} ms: at least 1 s and at most the policy's "
                f"{option.describe_window()} (a longer window would release more than the policy allows)"
            )
        if grace_ms < 0:
            raise ConfigError(f"small-cell grace of {grace_ms} ms: must not be negative")
        columns = option.columns
        shown: list[tuple[int, ...]] = [tuple(range(len(columns)))]
        withheld: list[tuple[str, ...]] = [()]
        hidden: list[str] = []
        for step in option.ladder:
            hidden.append(step.field)
            shown.append(tuple(i for i, name in enumerate(columns) if name not in hidden))
            withheld.append(tuple(hidden))
        return cls(option.k, window, grace_ms, columns, tuple(shown), tuple(withheld))

    @property
    def steps(self) -> int:
        """Number of ladder steps (step 0, full detail, not counted)."""
        return len(self.shown) - 1

    def cell(self, view: Mapping[str, Any]) -> Cell:
        """The counted fields' values of ``view`` (a record of the recipient's output fields)."""
        return tuple(view[name] for name in self.columns)

    def key(self, cell: Cell, step: int) -> Cell:
        """What ``cell`` shows at ``step``: its class there."""
        return tuple(cell[i] for i in self.shown[step])

    def window_of(self, at_ms: int) -> int:
        """Start of the window holding instant ``at_ms``."""
        return at_ms // self.window_ms * self.window_ms

    def closes_at(self, window: int) -> int:
        """When the window starting at ``window`` closes: its end plus the grace."""
        return window + self.window_ms + self.grace_ms


# ---------------------------------------------------------------------- what the log holds
@dataclass(frozen=True, slots=True)
class Hold(Generic[T]):
    """A view held: its class is below k in its window so far."""

    partition: int

    seq: int
    window: int
    cell: Cell
    item: T
    at_ms: int


@dataclass(frozen=True, slots=True)
class Open:
    """The class ``cell`` reached k in ``window``: its held views were released (and later ones are)."""

    partition: int

    seq: int
    window: int
    cell: Cell
    at_ms: int


@dataclass(frozen=True, slots=True)
class Close:
    """``window`` closed: ``released[j - 1]`` views left at ladder step j, ``suppressed`` were suppressed."""

    partition: int

    seq: int
    window: int
    released: tuple[int, ...]
    suppressed: int
    at_ms: int


Entry = Hold[T] | Open | Close


# ---------------------------------------------------------------------- what the caller emits
@dataclass(frozen=True, slots=True)
class Release(Generic[T]):
    """Views to release now, at ``step`` (0: full detail) of ``window``; all share their class there."""

    partition: int

    window: int
    step: int
    items: tuple[T, ...]


@dataclass(frozen=True, slots=True)
class Suppress(Generic[T]):
    """Views never released (``reason`` is a code, e.g. :data:`SUPPRESSED_SMALL_CELL`)."""

    partition: int

    window: int
    items: tuple[T, ...]
    reason: str


@dataclass(slots=True)
class Effects(Generic[T]):
    """What one call decided: entries to make durable, views to release, views suppressed."""

    entries: list[Entry[T]] = field(default_factory=list)
    releases: list[Release[T]] = field(default_factory=list)
    suppressions: list[Suppress[T]] = field(default_factory=list)

    def extend(self, other: Effects[T]) -> None:
        """Append ``other``'s decisions after these."""
        self.entries += other.entries
        self.releases += other.releases
        self.suppressions += other.suppressions


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a new owner needs to rebuild a partition: the last entry number, closed-window bound, oldest open
    window and the number of its first entry (a replay that does not reach it lost entries to retention)."""

    seq: int
    closed_through: int | None
    oldest_open: int | None
    first_open_entry: int | None = None

    def render(self) -> str:
        """The compact text committed with the partition's offset (``kanon1:<seq>:<closed>:<open>[:<first>]``)."""
        closed = "" if self.closed_through is None else str(self.closed_through)
        oldest = "" if self.oldest_open is None else str(self.oldest_open)
        first = "" if self.first_open_entry is None else f":{self.first_open_entry}"
        return f"{CHECKPOINT_VERSION}:{self.seq}:{closed}:{oldest}{first}"

    @classmethod
    def parse(cls, text: str | None) -> Checkpoint | None:
        """Read :meth:`render`'s text; None for no checkpoint (an empty or foreign offset metadata)."""
        if not text or not text.startswith(CHECKPOINT_VERSION + ":"):
            return None
        try:
            _, seq, closed, oldest, *rest = text.split(":")
            first = int(rest[0]) if rest and rest[0] else None
            if len(rest) > 1:
                raise ValueError(text)
            return cls(int(seq), int(closed) if closed else None, int(oldest) if oldest else None, first)
        except ValueError as exc:
            raise HoldLogError(f"unreadable small-cell checkpoint {text!r}") from exc


# ---------------------------------------------------------------------- state
@dataclass(slots=True)
class _Class(Generic[T]):
    count: int
    held: list[T] | None  # None once the class reached k (its views are released on arrival)


@dataclass(slots=True)
class _Window(Generic[T]):
    start: int
    classes: dict[Cell, _Class[T]] = field(default_factory=dict)  # insertion order: first arrival
    first_seq: int | None = None  # number of the window's first entry


@dataclass(slots=True)
class _Partition(Generic[T]):
    windows: dict[int, _Window[T]] = field(default_factory=dict)
    closed_through: int | None = None  # end of the latest closed window
    seq: int = 0  # number of the last entry made for this partition


class SmallCellGuard(Generic[T]):
    """Holds, releases and suppresses views per ingress partition (see module docstring)."""

    def __init__(self, ladder: Ladder) -> None:
        """Guard with ``ladder`` (k, window, grace, steps); no partition is known yet."""
        self.ladder = ladder
        self._partitions: dict[int, _Partition[T]] = {}
        self._undo: list[Callable[[], None]] = []
        self._open_txn = False

    # ------------------------------------------------------------------ transactions
    def begin(self) -> None:
        """Start recording changes, so :meth:`rollback` can undo them (one batch's transaction)."""
        self._undo = []
        self._open_txn = True

    def commit(self) -> None:
        """The batch's transaction committed: keep its changes."""
        self._undo = []
        self._open_txn = False

    def rollback(self) -> None:
        """The batch's transaction aborted: restore the state :meth:`begin` saw."""
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        self._open_txn = False

    def _record(self, undo: Callable[[], None]) -> None:
        if self._open_txn:
            self._undo.append(undo)

    # ------------------------------------------------------------------ partitions
    @property
    def partitions(self) -> frozenset[int]:
        """The partitions with state here."""
        return frozenset(self._partitions)

    def drop(self, partition: int) -> None:
        """Forget a partition (revoked: its next owner rebuilds it from the log). Not undoable."""
        self._partitions.pop(partition, None)

    def _state(self, partition: int) -> _Partition[T]:
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition()
            self._record(lambda: _discard(self._partitions, partition))
        return state

    def _next_seq(self, state: _Partition[T]) -> int:
        before = state.seq
        state.seq += 1

        def unnumber() -> None:
            state.seq = before

        self._record(unnumber)
        return state.seq

    def _entry_seq(self, state: _Partition[T], window: _Window[T]) -> int:
        """The next entry number, noted as ``window``'s first if it has none yet."""
        seq = self._next_seq(state)
        if window.first_seq is None:
            window.first_seq = seq

            def unfirst() -> None:
                window.first_seq = None

            self._record(unfirst)
        return seq

    def _window(self, state: _Partition[T], start: int) -> _Window[T]:
        window = state.windows.get(start)
        if window is None:
            window = state.windows[start] = _Window(start)
            self._record(lambda: _discard(state.windows, start))
        return window

    # ------------------------------------------------------------------ admission
    def admit(self, partition: int, now_ms: int, cell: Cell, item: T) -> Effects[T]:
        """Decide one view of ``partition`` at ``now_ms``: hold it, or release it (with its held class)."""
        k = self.ladder.k
        state = self._state(partition)
        start = self.ladder.window_of(max(now_ms, state.closed_through or now_ms))
        window = self._window(state, start)
        at = max(now_ms, start)
        effects: Effects[T] = Effects()
        cls = window.classes.get(cell)
        if cls is None:
            cls = window.classes[cell] = _Class(0, [])
            self._record(lambda: _discard(window.classes, cell))
        if cls.held is None:  # the class already reached k in this window
            effects.releases.append(Release(partition, start, 0, (item,)))
            return effects
        held = cls.held
        before = cls.count
        if before + 1 < k:
            cls.count += 1
            held.append(item)

            def unhold() -> None:
                held.pop()
                cls.count = before

            self._record(unhold)
            effects.entries.append(Hold(partition, self._entry_seq(state, window), start, cell, item, at))
            return effects
        cls.count, cls.held = k, None

        def unopen() -> None:
            cls.count, cls.held = before, held

        self._record(unopen)
        effects.entries.append(Open(partition, self._entry_seq(state, window), start, cell, at))
        effects.releases.append(Release(partition, start, 0, (*held, item)))
        return effects

    # ------------------------------------------------------------------ closing
    def due(self, now_ms: int) -> list[tuple[int, int]]:
        """``(partition, window start)`` of every window that closes by ``now_ms``, oldest first."""
        return sorted(
            (p, start)
            for p, state in self._partitions.items()
            for start in state.windows
            if self.ladder.closes_at(start) <= now_ms
        )

    def next_close_ms(self) -> int | None:
        """When the earliest open window closes (None without any)."""
        closes = [self.ladder.closes_at(s) for state in self._partitions.values() for s in state.windows]
        return min(closes, default=None)

    def close_due(self, now_ms: int, partitions: Iterable[int] | None = None, limit: int | None = None) -> Effects[T]:
        """Close the windows due by ``now_ms`` (of ``partitions``, default all), oldest first, at most ``limit``
        (a caller bounding each transaction: the others stay due for the next call)."""
        wanted = None if partitions is None else set(partitions)
        effects: Effects[T] = Effects()
        due = [(p, start) for p, start in self.due(now_ms) if wanted is None or p in wanted]
        for partition, start in due if limit is None else due[:limit]:
            effects.extend(self.close(partition, start, now_ms))
        return effects

    def close(self, partition: int, start: int, now_ms: int) -> Effects[T]:
        """Close one window: its held views climb the ladder; what no step releases is suppressed."""
        ladder = self.ladder
        state = self._partitions[partition]
        window = state.windows.pop(start)
        closed_before = state.closed_through
        state.closed_through = max(closed_before or 0, start + ladder.window_ms)

        def reopen() -> None:
            state.windows[start] = window
            state.closed_through = closed_before

        self._record(reopen)
        effects: Effects[T] = Effects()
        left: list[tuple[Cell, T]] = [
            (cell, item) for cell, cls in window.classes.items() if cls.held for item in cls.held
        ]
        released = []
        for step in range(1, ladder.steps + 1):
            groups: dict[Cell, list[tuple[Cell, T]]] = {}
            for cell, item in left:
                groups.setdefault(ladder.key(cell, step), []).append((cell, item))
            left = []
            count = 0
            for members in groups.values():
                if len(members) >= ladder.k:
                    effects.releases.append(Release(partition, start, step, tuple(item for _, item in members)))
                    count += len(members)
                else:
                    left += members
            released.append(count)
        if left:
            effects.suppressions.append(
                Suppress(partition, start, tuple(item for _, item in left), SUPPRESSED_SMALL_CELL)
            )
        seq = self._next_seq(state)
        effects.entries.append(Close(partition, seq, start, tuple(released), len(left), max(now_ms, start)))
        return effects

    # ------------------------------------------------------------------ durability
    def checkpoint(self, partition: int) -> Checkpoint:
        """What to commit with the partition's offset so a new owner can rebuild it."""
        state = self._partitions.get(partition) or _Partition()
        oldest = min(state.windows, default=None)
        first = None if oldest is None else state.windows[oldest].first_seq
        return Checkpoint(state.seq, state.closed_through, oldest, first)

    def resume(self, partition: int, checkpoint: Checkpoint | None) -> None:
        """Start rebuilding ``partition`` (its state is replaced) from its committed ``checkpoint``."""
        state = self._partitions[partition] = _Partition()
        if checkpoint is not None:
            state.closed_through = checkpoint.closed_through

    def replay(self, entry: Entry[T]) -> None:
        """Apply one committed entry of ``partition``'s log, in log order (after :meth:`resume`).

        Entries must be numbered consecutively from the first one replayed; a gap (records lost)
        or a repeat (two writers) raises :class:`HoldLogError`.
        """
        partition = entry.partition
        state = self._partitions[partition]
        if state.seq and entry.seq != state.seq + 1:
            raise HoldLogError(
                f"hold log of partition {partition}: entry {entry.seq} follows entry {state.seq} "
                "(entries lost to retention, or written by two owners)"
            )
        state.seq = entry.seq
        if isinstance(entry, Close):
            state.windows.pop(entry.window, None)
            state.closed_through = max(state.closed_through or 0, entry.window + self.ladder.window_ms)
            return
        window = state.windows.setdefault(entry.window, _Window(entry.window))
        if window.first_seq is None:
            window.first_seq = entry.seq
        cls = window.classes.setdefault(entry.cell, _Class(0, []))
        if isinstance(entry, Open):
            cls.count, cls.held = self.ladder.k, None
        elif cls.held is not None:
            cls.count += 1
            cls.held.append(entry.item)

    def resumed(self, partition: int, checkpoint: Checkpoint | None) -> None:
        """Finish rebuilding: the replay must have reached the checkpoint's last entry exactly."""
        state = self._partitions[partition]
        expected = 0 if checkpoint is None else checkpoint.seq
        if state.seq != expected and not (state.seq == 0 and not state.windows and _nothing_open(checkpoint)):
            raise HoldLogError(
                f"hold log of partition {partition}: replay ended at entry {state.seq}, "
                f"the committed checkpoint names entry {expected}"
            )
        first = None if checkpoint is None or checkpoint.oldest_open is None else checkpoint.first_open_entry
        if first is not None:
            assert checkpoint is not None and checkpoint.oldest_open is not None
            found = state.windows.get(checkpoint.oldest_open)
            if found is None or found.first_seq != first:
                raise HoldLogError(
                    f"hold log of partition {partition}: the oldest open window's first entry {first} was not "
                    f"replayed (first found: {None if found is None else found.first_seq}; its records are gone: "
                    "retention shorter than window + grace?)"
                )
        state.seq = expected
        if checkpoint is not None and checkpoint.closed_through is not None:
            closed = checkpoint.closed_through
            for start in [s for s in state.windows if s < closed]:
                del state.windows[start]
            state.closed_through = max(state.closed_through or 0, closed)

    # ------------------------------------------------------------------ inspection
    def held_count(self, partition: int | None = None) -> int:
        """Views held now (in one partition, or all)."""
        states = self._partitions.values() if partition is None else [self._partitions.get(partition) or _Partition()]
        return sum(
            len(cls.held or ()) for state in states for w in state.windows.values() for cls in w.classes.values()
        )

    def snapshot(self, partition: int) -> tuple[Any, ...]:
        """A comparable picture of one partition's state (tests: rollback and rebuild restore it exactly)."""
        state = self._partitions.get(partition) or _Partition()
        windows = tuple(
            (
                start,
                tuple(
                    (cell, cls.count, None if cls.held is None else tuple(cls.held)) for cell, cls in w.classes.items()
                ),
            )
            for start, w in sorted(state.windows.items())
        )
        return (state.seq, state.closed_through, windows)


def _discard(mapping: dict[Any, Any], key: Any) -> None:
    mapping.pop(key, None)


def _nothing_open(checkpoint: Checkpoint | None) -> bool:
    """A checkpoint with no open window needs no replay: every entry before it is of closed windows."""
    return checkpoint is None or checkpoint.oldest_open is None


def items_of(releases: Sequence[Release[T]]) -> Iterator[tuple[int, int, T]]:
    """``(window, step, item)`` of every released view, in release order."""
    for release in releases:
        for item in release.items:
            yield release.window, release.step, item
