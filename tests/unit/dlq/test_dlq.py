"""Unit tests of dead-letter inspection and replay planning (streams.dlq), on records built by the pipeline."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from streams.crypto.envelope import FieldEncryptor
from streams.crypto.letters import LetterOpener, LetterSealer
from streams.dlq.ledger import Ledger, Replay, entry, ledger_topic, read_ledger
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
from streams.dlq.replay import plan_replay, replay_record
from streams.kafka.offsets import ReadRecord
from streams.pipeline import InputRecord, OutputRecord, dead_letter
from tests.conftest import private_key_ring, public_key_ring

DLQ = "screening.results.dlq.v1"
INGRESS = "screening.results.v1"
T0 = int(dt.datetime(2021, 9, 1, 8, 0, tzinfo=dt.UTC).timestamp() * 1000)
NIR = "185077512345678"
NAME = "DUPONTEL"
# A framed record (magic 0, schema id 7) whose body holds identifying text, as a real event does.
RAW = b"\x00\x00\x00\x00\x07" + f"{NIR}\x10{NAME}\x0c0612345678 97501 rue des Pecheurs".encode()
KEY = b"5f0c7c52-0a8e-4d4e-9d3b-1f7c2d1e9a11"
SEALER = LetterSealer(FieldEncryptor(public_key_ring()), DLQ)
OPENER = LetterOpener(private_key_ring("operators"))


def _dead(source: InputRecord, code: str, reason: str, stage: str, dlq: str, at_ms: int) -> OutputRecord:
    """The pipeline's sealed dead letter of ``source``; its data key's record goes to the test's opener."""
    out, key = dead_letter(source, code, reason, stage, dlq, at_ms, SEALER)
    OPENER.add_key_record(key.record.value())
    return out


def _read(record: ReadRecord, ledger: Ledger | None = None) -> DeadLetter:
    """Parse a DLQ record and open it with the operators' key (what ``dlq show --private-key`` does)."""
    return opened(parse(record, ledger), OPENER)


def _letter(
    code: str = "unknown_commune",
    *,
    stage: str = "validate",
    partition: int = 0,
    offset: int = 0,
    source_partition: int = 2,
    source_offset: int = 40,
    headers: tuple[tuple[str, bytes], ...] = (("trace-id", b"t-1"),),
    at_ms: int = T0,
    value: bytes | None = RAW,
    ledger: Ledger | None = None,
) -> DeadLetter:
    """A dead letter exactly as the pipeline writes it, read back at DLQ coordinates (partition, offset), opened."""
    source = InputRecord(INGRESS, source_partition, source_offset, KEY, value, headers)
    out = _dead(source, code, "commune code's department maps to no region (not guessed)", stage, DLQ, at_ms)
    return _read(ReadRecord(DLQ, partition, offset, out.key, out.value, tuple(out.headers)), ledger)


def _ledger(*replays: tuple[str, str, int | None]) -> Ledger:
    """A ledger of (ingress coordinates, DLQ coordinates replayed, count) entries."""
    return Ledger({at: Replay(at, of, count) for at, of, count in replays})


def test_parse_decodes_every_pipeline_header() -> None:
    """Reason, stage, source coordinates, time, version and replay count are read from the dlq.* headers."""
    letter = _letter(partition=3, offset=17)
    assert (letter.code, letter.stage, letter.source_topic) == ("unknown_commune", "validate", INGRESS)
    assert (letter.source_partition, letter.source_offset) == (2, 40)
    assert letter.time.startswith("2021-09-01T08:00:00") and letter.processor_version
    assert letter.replay_count == 0 and letter.replay_of is None
    assert letter.coordinates == f"{DLQ}:3:17"


def test_parse_tolerates_missing_headers() -> None:
    """A record without dlq headers reads as code '?', unknown source, an original failure (count 0)."""
    bare = parse(ReadRecord(DLQ, 0, 5, None, b"x", ()))
    assert (bare.code, bare.stage, bare.source_partition, bare.replay_count, bare.replay_of) == (
        "?",
        "?",
        None,
        0,
        None,
    )


def test_replay_counts_come_from_the_ledger_never_from_headers() -> None:
    """dlq.replay.* headers on a DLQ record mean nothing; a ledger entry at its source coordinates gives its rank."""
    forged = ((b"dlq.replay.count", b"99"), (b"dlq.replay.of", f"{DLQ}:0:1".encode()))
    headers = tuple((k.decode(), v) for k, v in forged)
    source = InputRecord(INGRESS, 2, 40, KEY, RAW, headers)
    out = _dead(source, "unknown_commune", "no region", "validate", DLQ, T0)
    record = ReadRecord(DLQ, 0, 7, out.key, out.value, (*out.headers, *headers))  # even if they reached the DLQ
    assert (parse(record).replay_count, parse(record).replay_of) == (0, None)
    elsewhere = _ledger((f"{INGRESS}:2:41", f"{DLQ}:0:1", 2))
    assert parse(record, elsewhere).replay_count == 0
    here = _ledger((f"{INGRESS}:2:40", f"{DLQ}:0:1", 2))
    assert (parse(record, here).replay_count, parse(record, here).replay_of) == (2, f"{DLQ}:0:1")
    unknown = _ledger((f"{INGRESS}:2:40", f"{DLQ}:0:1", None))
    assert parse(record, unknown).replay_count is None


def test_a_producer_forging_a_replay_count_of_99_cannot_stop_its_record_being_replayed() -> None:
    """An invalid ingress record with dlq.replay.count: 99 is dead-lettered without it and replay plans it (count 1)."""
    forged = (("dlq.replay.count", b"99"), ("dlq.replay.of", f"{DLQ}:0:0".encode()), ("trace-id", b"t"))
    out = _dead(InputRecord(INGRESS, 1, 5, KEY, RAW, forged), "unknown_commune", "no region", "validate", DLQ, T0)
    assert [k for k, _ in out.headers if k.startswith("dlq.replay")] == []
    letter = _read(ReadRecord(DLQ, 3, 9, out.key, out.value, tuple(out.headers)), _ledger((f"{INGRESS}:0:0", "x", 3)))
    plan = plan_replay([letter], replayed=frozenset({f"{DLQ}:0:0"}))
    assert [(r.of, r.count) for r in plan.records] == [(f"{DLQ}:3:9", 1)]
    assert plan.skipped == 0
    assert plan.records[0].headers == (("trace-id", b"t"),)


def test_summary_counts_per_code_stage_and_source_topic_with_time_range() -> None:
    """The summary counts per code, stage, source topic and row, counts failed replays, and spans dlq.time."""
    failed_again = replay_record(_letter(offset=9))
    again = _dead(
        InputRecord(INGRESS, 1, 99, failed_again.key, failed_again.value, failed_again.headers),
        "unknown_commune",
        "no region",
        "validate",
        DLQ,
        T0 + 7_200_000,
    )
    ledger = _ledger((f"{INGRESS}:1:99", failed_again.of, failed_again.count))
    letters = [
        _letter(offset=0),
        _letter(offset=1, at_ms=T0 + 3_600_000),
        _letter("not_framed", stage="decode", offset=2, at_ms=T0 - 60_000),
        _read(ReadRecord(DLQ, 1, 0, again.key, again.value, tuple(again.headers)), ledger),
    ]
    summary = summarise(letters)
    assert summary.total == 4
    assert summary.by_code == {"unknown_commune": 3, "not_framed": 1}
    assert summary.by_stage == {"validate": 3, "decode": 1}
    assert summary.by_source_topic == {INGRESS: 4}
    assert summary.replays == {("unknown_commune", "validate", INGRESS): 1}
    assert summary.first == dt.datetime(2021, 9, 1, 7, 59, tzinfo=dt.UTC)
    assert summary.last == dt.datetime(2021, 9, 1, 10, 0, tzinfo=dt.UTC)
    text = render_summary(summary, DLQ)
    assert text.splitlines()[0].startswith(f"{DLQ}: 4 dead letters, 2021-09-01T07:59:00+00:00")
    rows = [line.split() for line in text.splitlines()[4:]]
    assert rows == [["unknown_commune", "validate", INGRESS, "3", "1"], ["not_framed", "decode", INGRESS, "1", "0"]]


def test_summary_of_nothing_says_so() -> None:
    """An empty DLQ (or an empty selection) renders as one line, with no time range."""
    summary = summarise([])
    assert summary.total == 0 and summary.first is None
    assert render_summary(summary, DLQ) == f"{DLQ}: no dead letters"


def test_select_by_code_dlq_coordinates_and_source_range() -> None:
    """Selection criteria combine (all must hold) and results come in DLQ partition/offset order."""
    letters = [
        _letter(partition=1, offset=4, source_offset=10),
        _letter("invalid_nir", partition=0, offset=7, source_offset=11),
        _letter(partition=0, offset=3, source_partition=5, source_offset=12),
        _letter(partition=0, offset=1, source_offset=13),
    ]

    def coords(selection: Selection) -> list[tuple[int, int]]:
        return [(d.record.partition, d.record.offset) for d in select(letters, selection)]

    assert coords(Selection()) == [(0, 1), (0, 3), (0, 7), (1, 4)]
    assert coords(Selection(codes=frozenset({"unknown_commune"}))) == [(0, 1), (0, 3), (1, 4)]
    assert coords(Selection(codes=frozenset({"unknown_commune", "invalid_nir"}))) == [(0, 1), (0, 3), (0, 7), (1, 4)]
    assert coords(Selection(partition=0, offset=7)) == [(0, 7)]
    assert coords(Selection(partition=0)) == [(0, 1), (0, 3), (0, 7)]
    assert coords(Selection(source_partition=5)) == [(0, 3)]
    assert coords(Selection(source_from=11, source_to=12)) == [(0, 3), (0, 7)]
    assert coords(Selection(source_from=13)) == [(0, 1)]
    assert coords(Selection(source_to=10, codes=frozenset({"invalid_nir"}))) == []


def test_within_keeps_only_records_below_the_end_offsets_snapshot() -> None:
    """Records appended after the snapshot, or on partitions absent from it, are left out (bounded replay)."""
    records = [ReadRecord(DLQ, p, o, None, b"v", ()) for p in (0, 1, 2) for o in range(3)]
    kept = within(records, {(DLQ, 0): 2, (DLQ, 1): 3})
    assert [(r.partition, r.offset) for r in kept] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_show_never_prints_the_raw_value_key_or_other_header_values() -> None:
    """show renders dlq headers, source coordinates and sizes, but no byte of the value's text, the key or headers."""
    letter = _letter(partition=3, offset=17, headers=(("trace-id", b"secret-trace"),))
    text = render(letter)
    for header in (
        "dlq.reason.code",
        "dlq.reason",
        "dlq.stage",
        "dlq.source.topic",
        "dlq.time",
        "replay",
    ):
        assert header in text
    assert "0 (an original failure)" in text
    replayed = render(_letter(source_offset=40, ledger=_ledger((f"{INGRESS}:2:40", f"{DLQ}:0:1", 2))))
    assert f"2 (a replay of {DLQ}:0:1, per the replay ledger)" in replayed
    assert "unknown_commune" in text and f"{DLQ}:3:17" in text
    assert f"{INGRESS} partition 2 offset 40" in text
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines()[1:])
    assert fields["value"] == f"{len(RAW)} bytes, Confluent framing, schema id 7 (unsealed, not shown: raw input)"
    assert fields["key"] == f"{len(KEY)} bytes (unsealed, not shown)" and fields["headers"] == "trace-id (12 B)"
    for secret in (NIR, NAME, "0612345678", "Pecheurs", KEY.decode(), "secret-trace", RAW.hex()):
        assert secret not in text
    assert RAW.decode(errors="replace") not in text


def test_show_hex_preview_is_explicit_and_limited_to_16_bytes() -> None:
    """Only with hex_preview is anything of the value shown: the first 16 bytes in hex, never more."""
    letter = _letter()
    assert RAW[:5].hex(" ") not in render(letter)
    text = render(letter, hex_preview=True)
    assert RAW[:16].hex(" ") + "  (first 16 bytes)" in text
    assert RAW[:17].hex(" ") not in text and RAW[16:].hex() not in text.replace(" ", "")
    assert NIR not in text


def test_show_describes_unframed_and_null_values() -> None:
    """A value that is not Confluent-framed is named by its first byte; a null value is 'null'."""
    assert "first byte 0x8f (not Confluent framing)" in render(_letter(value=b"\x8f" + bytes(40)))
    assert "value" in render(_letter(value=None)) and "null" in render(_letter(value=None))


def test_replay_record_keeps_raw_data_and_original_headers_and_counts_up() -> None:
    """A replay carries the raw key and value unchanged, only non-dlq headers, and the ledger's count + 1."""
    ledger = _ledger((f"{INGRESS}:2:40", f"{DLQ}:0:1", 1))
    letter = _letter(
        partition=4, offset=21, headers=(("trace-id", b"t-1"), ("dlq.replay.of", b"old:0:0")), ledger=ledger
    )
    replay = replay_record(letter)
    assert replay.key == KEY and replay.value == RAW
    assert replay.headers == (("trace-id", b"t-1"),)
    assert (replay.of, replay.count) == (f"{DLQ}:4:21", 2)


def test_a_replay_that_fails_again_returns_with_count_plus_one_until_refused() -> None:
    """Replay → ledger entry → dead letter → replay … increments the count each round; at max_replays it is refused."""
    letter = _letter()
    ledger_records: list[ReadRecord] = []
    counts = []
    for round_ in range(5):
        plan = plan_replay([letter], max_replays=3)
        if not plan.records:
            assert plan.over_limit == (letter,) and plan.skipped == 1
            break
        replay = plan.records[0]
        counts.append(replay.count)
        at = f"{INGRESS}:0:{100 + round_}"  # where the broker put the replay
        key, value, _ = entry(at, replay.of, replay.count, T0)
        ledger_records.append(ReadRecord("ledger", 0, round_, key, value, ()))
        failed = _dead(
            InputRecord(INGRESS, 0, 100 + round_, replay.key, replay.value, replay.headers),
            "unknown_commune",
            "no region",
            "validate",
            DLQ,
            T0,
        )
        record = ReadRecord(DLQ, 0, 10 + round_, failed.key, failed.value, tuple(failed.headers))
        letter = _read(record, read_ledger(ledger_records))
        assert letter.replay_of == (f"{DLQ}:0:{10 + round_ - 1}" if round_ else f"{DLQ}:0:0")
        assert letter.raw is not None and letter.raw.value == RAW
    assert counts == [1, 2, 3]
    assert letter.replay_count == 3
    forced = plan_replay([letter], max_replays=3, force=True)
    assert [r.count for r in forced.records] == [4] and forced.skipped == 0


def test_plan_skips_ledgered_records_unless_again_and_unknown_counts_unless_forced() -> None:
    """Records the ledger lists are skipped unless again; an unknown count is refused unless forced."""
    first, second = _letter(offset=1, source_offset=1), _letter(offset=2, source_offset=2)
    odd = _letter(offset=3, source_offset=3, ledger=_ledger((f"{INGRESS}:2:3", f"{DLQ}:0:0", None)))
    plan = plan_replay([first, second, odd], replayed={first.coordinates})
    assert [r.of for r in plan.records] == [second.coordinates]
    assert plan.already_replayed == (first,) and plan.over_limit == (odd,) and plan.skipped == 2
    again = plan_replay([first, second, odd], replayed={first.coordinates}, again=True, force=True)
    assert [(r.of, r.count) for r in again.records] == [
        (first.coordinates, 1),
        (second.coordinates, 1),
        (odd.coordinates, 1),
    ]
    assert plan_replay([first], max_replays=0).over_limit == (first,)


def test_ledger_entries_hold_coordinates_only_and_fold_into_the_ledger() -> None:
    """An entry is keyed by the replay's ingress coordinates, holds no data; tombstones and foreign records drop out."""
    replay = replay_record(_letter(offset=8))
    key, value, headers = entry(f"{INGRESS}:4:77", replay.of, replay.count, T0)
    assert key == f"{INGRESS}:4:77".encode() and headers == ()
    assert json.loads(value) == {"of": f"{DLQ}:0:8", "replay_count": 1, "replayed_at": "2021-09-01T08:00:00.000+00:00"}
    assert RAW not in value and NIR.encode() not in value and KEY not in value
    other = entry(f"{INGRESS}:4:78", f"{DLQ}:0:9", 2, T0)[1]
    ledger = read_ledger(
        [
            ReadRecord("ledger", 0, 0, key, value, ()),
            ReadRecord("ledger", 0, 1, f"{INGRESS}:4:78".encode(), other, ()),
            ReadRecord("ledger", 0, 2, f"{INGRESS}:4:78".encode(), None, ()),  # tombstone
            ReadRecord("ledger", 0, 3, None, value, ()),  # no key
            ReadRecord("ledger", 0, 4, f"{DLQ}:0:5".encode(), b'{"replay_count": 1, "to": "x"}', ()),  # no "of"
            ReadRecord("ledger", 0, 5, b"k", b"not json", ()),
            ReadRecord("ledger", 0, 6, f"{INGRESS}:4:79".encode(), b'{"of": "d:0:1", "replay_count": true}', ()),
        ]
    )
    assert set(ledger.replays) == {f"{INGRESS}:4:77", f"{INGRESS}:4:79"}
    assert ledger.replay_at(f"{INGRESS}:4:77") == Replay(f"{INGRESS}:4:77", f"{DLQ}:0:8", 1)
    assert ledger.replay_at(f"{INGRESS}:4:79") == Replay(f"{INGRESS}:4:79", "d:0:1", None)
    assert ledger.replayed == {f"{DLQ}:0:8", "d:0:1"}
    assert ledger_topic("it.x.") == "it.x.screening.results.dlq.replays.v1"


@pytest.mark.parametrize("max_replays", [1, 2, 3])
def test_max_replays_counts_earlier_replays(max_replays: int) -> None:
    """A dead letter whose input the ledger says was replayed n times is replayable while n < max_replays."""
    for n in range(5):
        ledger = _ledger((f"{INGRESS}:2:40", f"{DLQ}:0:0", n)) if n else None
        letter = _letter(offset=n + 1, ledger=ledger)
        assert letter.replay_count == n
        assert bool(plan_replay([letter], max_replays=max_replays).records) == (n < max_replays)
