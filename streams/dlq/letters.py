"""Dead letters that help: parse, summarise, select and show records of the dead-letter topic.

Pure functions over records already read from Kafka (:class:`~streams.kafka.offsets.ReadRecord`);
``streams.cli.dlq`` does the reading and publishing. A dead letter seals the raw input, which
holds identifying data, to the operators' public key (:mod:`streams.crypto.letters`): its
``dlq.*`` headers (reason, stage, coordinates, sizes, framing) are readable by anyone who may
read the topic, the raw key, value and headers only once :func:`opened` with the operators'
private key. Nothing here ever decodes the value to fields or returns it as text: :func:`render`
prints sizes (and, only when asked and opened, a hex preview of the first 16 bytes).

The DLQ is read only up to the end offsets taken when a command starts (:func:`within`), so
a replay (:mod:`streams.dlq.replay`) never sees, let alone replays, the dead letters its own
output produces. Whether a dead letter is a failed replay, and of which rank, comes from the
replay ledger (:mod:`streams.dlq.ledger`), never from its headers: a producer may forge those.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from streams.crypto.letters import H_SEALED, LetterOpener, RawLetter
from streams.dlq.ledger import Ledger, coordinates
from streams.kafka.offsets import ReadRecord
from streams.pipeline import (
    DLQ_PREFIX,
    H_CODE,
    H_FRAMING,
    H_HEADER_COUNT,
    H_KEY_BYTES,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_STAGE,
    H_TIME,
    H_TOPIC,
    H_VALUE_BYTES,
    H_VERSION,
)
from streams.policy.explain import table

#: How many bytes of the raw value ``show --hex`` may print.
HEX_PREVIEW_BYTES = 16

Header = tuple[str, bytes]


@dataclass(frozen=True)
class DeadLetter:
    """One DLQ record with its ``dlq.*`` headers decoded (the raw value stays bytes).

    ``replay_count`` is how many times its input had been replayed when it failed, per the
    ledger (0: an original failure; None: a ledger entry of unknown rank); ``replay_of`` the
    DLQ coordinates of the dead letter that replay came from. ``raw`` is the sealed ingress
    record (raw key, value, original headers) once :func:`opened`; None until then.
    """

    record: ReadRecord
    code: str
    reason: str
    stage: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    time: str
    processor_version: str
    replay_count: int | None
    replay_of: str | None
    raw: RawLetter | None = None

    @property
    def sealed_to(self) -> str | None:
        """The operators' public key id the raw record is sealed to (None: not a sealed letter)."""
        value = dict(self.record.headers).get(H_SEALED)
        return None if value is None else text(value)

    @property
    def coordinates(self) -> str:
        """Where this dead letter sits: ``<dlq topic>:<partition>:<offset>``."""
        return f"{self.record.topic}:{self.record.partition}:{self.record.offset}"


def text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


def _int(value: bytes | None) -> int | None:
    try:
        return int(text(value)) if value else None
    except ValueError:
        return None


def parse(record: ReadRecord, ledger: Ledger | None = None) -> DeadLetter:
    """Decode the pipeline's ``dlq.*`` headers of one DLQ record (missing headers read as empty).

    Replay count and origin come from ``ledger`` (matched on the source coordinates), so a
    record nobody replayed is an original failure whatever headers its producer set.
    """
    headers = dict(record.headers)
    source_topic = text(headers.get(H_TOPIC)) or "?"
    source_partition, source_offset = _int(headers.get(H_PARTITION)), _int(headers.get(H_OFFSET))
    replay = (ledger or Ledger()).replay_at(coordinates(source_topic, source_partition, source_offset))
    return DeadLetter(
        record=record,
        code=text(headers.get(H_CODE)) or "?",
        reason=text(headers.get(H_REASON)),
        stage=text(headers.get(H_STAGE)) or "?",
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        time=text(headers.get(H_TIME)),
        processor_version=text(headers.get(H_VERSION)),
        replay_count=0 if replay is None else replay.count,
        replay_of=None if replay is None else replay.of,
    )


def opened(letter: DeadLetter, opener: LetterOpener) -> DeadLetter:
    """``letter`` with its raw record unsealed by ``opener``.

    Raises :class:`~streams.crypto.errors.DecryptionError` naming the DLQ record
    (``topic[partition]@offset``) when it does not open: wrong or missing key, altered or moved.
    """
    r = letter.record
    return replace(letter, raw=opener.open(r.topic, r.partition, r.offset, r.value, r.headers))


def within(records: Iterable[ReadRecord], ends: Mapping[tuple[str, int], int]) -> list[ReadRecord]:
    """Keep the records below the end offsets snapshot ``ends`` (``(topic, partition) -> end``).

    This is what bounds a replay: records appended after the snapshot (such as the dead
    letters of a replay that failed again) are never considered by the same run.
    """
    return [r for r in records if r.offset < ends.get((r.topic, r.partition), 0)]


# ---------------------------------------------------------------- summary
def _parse_time(text: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Summary:
    """Counts of dead letters per (reason code, stage, source topic), and their time range."""

    rows: Mapping[tuple[str, str, str], int]
    replays: Mapping[tuple[str, str, str], int]
    first: dt.datetime | None
    last: dt.datetime | None

    @property
    def total(self) -> int:
        """How many dead letters were summarised."""
        return sum(self.rows.values())

    def _by(self, index: int) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for key, count in self.rows.items():
            counts[key[index]] += count
        return dict(counts)

    @property
    def by_code(self) -> dict[str, int]:
        """Dead letters per reason code."""
        return self._by(0)

    @property
    def by_stage(self) -> dict[str, int]:
        """Dead letters per stage (decode, validate, minimise, encode)."""
        return self._by(1)

    @property
    def by_source_topic(self) -> dict[str, int]:
        """Dead letters per source topic."""
        return self._by(2)


def summarise(letters: Iterable[DeadLetter]) -> Summary:
    """Count dead letters per reason code / stage / source topic and find their time range.

    ``replays`` counts, per row, the dead letters that are themselves failed replays.
    """
    rows: Counter[tuple[str, str, str]] = Counter()
    replays: Counter[tuple[str, str, str]] = Counter()
    times: list[dt.datetime] = []
    for letter in letters:
        key = (letter.code, letter.stage, letter.source_topic)
        rows[key] += 1
        if letter.replay_count != 0:
            replays[key] += 1
        when = _parse_time(letter.time)
        if when is not None:
            times.append(when)
    return Summary(dict(rows), dict(replays), min(times, default=None), max(times, default=None))


def render_summary(summary: Summary, dlq_topic: str) -> str:
    """The ``dlq list`` table: one row per (code, stage, source topic), biggest first."""
    if not summary.total:
        return f"{dlq_topic}: no dead letters"
    span = ""
    if summary.first and summary.last:
        span = f", {summary.first.isoformat(timespec='seconds')} … {summary.last.isoformat(timespec='seconds')}"
    rows = [
        [code, stage, topic, str(count), str(summary.replays.get((code, stage, topic), 0))]
        for (code, stage, topic), count in sorted(summary.rows.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    head = f"{dlq_topic}: {summary.total} dead letters{span}"
    return head + "\n\n" + table(["reason code", "stage", "source topic", "records", "failed replays"], rows)


# ---------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selection:
    """Which dead letters a command works on; every given criterion must match.

    ``codes`` empty means any code; source offsets are an inclusive range; ``partition`` and
    ``offset`` are the coordinates of the record in the DLQ itself.
    """

    codes: frozenset[str] = frozenset()
    source_partition: int | None = None
    source_from: int | None = None
    source_to: int | None = None
    partition: int | None = None
    offset: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` meets every criterion of this selection."""
        if self.codes and letter.code not in self.codes:
            return False
        if self.partition is not None and letter.record.partition != self.partition:
            return False
        if self.offset is not None and letter.record.offset != self.offset:
            return False
        if self.source_partition is not None and letter.source_partition != self.source_partition:
            return False
        if self.source_from is None and self.source_to is None:
            return True
        if letter.source_offset is None:
            return False
        low = self.source_from if self.source_from is not None else letter.source_offset
        high = self.source_to if self.source_to is not None else letter.source_offset
        return low <= letter.source_offset <= high


def select(letters: Iterable[DeadLetter], selection: Selection) -> list[DeadLetter]:
    """The dead letters matching ``selection``, in DLQ (partition, offset) order."""
    chosen = [letter for letter in letters if selection.matches(letter)]
    return sorted(chosen, key=lambda letter: (letter.record.partition, letter.record.offset))


# ---------------------------------------------------------------- show
def render(letter: DeadLetter, *, hex_preview: bool = False) -> str:
    """Describe one dead letter for ``dlq show`` without ever printing its raw value.

    Shows every ``dlq.*`` header decoded (sizes and framing of the raw record among them), the
    source coordinates and the replay rank (from the ledger); once :func:`opened`, the sizes of
    the raw key and value and only the *names* and sizes of the original headers, and with
    ``hex_preview`` the first 16 bytes of the raw value in hex. Unopened, it says the raw record
    is sealed and to which key.
    """
    record = letter.record
    lines = [f"dead letter {letter.coordinates}"]
    dlq_headers = [(k, v) for k, v in record.headers if k.startswith(DLQ_PREFIX)]
    width = max([len(k) for k, _ in dlq_headers] + [len("source")])
    lines += [f"  {name.ljust(width)}  {text(value)}" for name, value in dlq_headers]
    source = f"{letter.source_topic} partition {_or_q(letter.source_partition)} offset {_or_q(letter.source_offset)}"
    lines.append(f"  {'source'.ljust(width)}  {source}")
    if letter.replay_of is None:
        replay = "0 (an original failure)"
    else:
        replay = f"{_or_q(letter.replay_count)} (a replay of {letter.replay_of}, per the replay ledger)"
    lines.append(f"  {'replay'.ljust(width)}  {replay}")
    raw = letter.raw
    if raw is None:
        headers = dict(record.headers)
        sealed = f"sealed to the operators' key {letter.sealed_to}" if letter.sealed_to else "not sealed"
        lines.append(f"  {'key'.ljust(width)}  {_declared(headers.get(H_KEY_BYTES))} ({sealed})")
        framing = text(headers.get(H_FRAMING))
        lines.append(
            f"  {'value'.ljust(width)}  {_declared(headers.get(H_VALUE_BYTES))}"
            + (f", framing {framing}" if framing else "")
            + f" ({sealed})"
        )
        count = text(headers.get(H_HEADER_COUNT))
        if count and count != "0":
            lines.append(f"  {'headers'.ljust(width)}  {count} original headers ({sealed})")
        if hex_preview:
            lines.append(f"  {'hex'.ljust(width)}  (sealed: give the operators' private key, --private-key)")
        return "\n".join(lines)
    lines.append(f"  {'key'.ljust(width)}  {_size(raw.key)} (unsealed, not shown)")
    lines.append(f"  {'value'.ljust(width)}  {_size(raw.value)}{_framing(raw.value)} (unsealed, not shown: raw input)")
    others = [f"{k} ({len(v or b'')} B)" for k, v in raw.headers]
    if others:
        lines.append(f"  {'headers'.ljust(width)}  " + ", ".join(others))
    if hex_preview:
        head = (raw.value or b"")[:HEX_PREVIEW_BYTES]
        lines.append(f"  {'hex'.ljust(width)}  {head.hex(' ')}  (first {len(head)} bytes)")
    return "\n".join(lines)


def _declared(value: bytes | None) -> str:
    size = text(value)
    if not size:
        return "? bytes"
    return "null" if size == "null" else f"{size} bytes"


def _or_q(value: int | None) -> str:
    return "?" if value is None else str(value)


def _size(value: bytes | None) -> str:
    return "null" if value is None else f"{len(value)} bytes"


def _framing(value: bytes | None) -> str:
    if value is None or len(value) < 5:
        return ""
    if value[0] != 0:
        return f", first byte 0x{value[0]:02x} (not Confluent framing)"
    return f", Confluent framing, schema id {int.from_bytes(value[1:5], 'big')}"
