"""Keys over time with an injected clock: rotation without downtime, and crypto-shredding of an expired period."""

from __future__ import annotations

from typing import Any

import pytest

from streams.assembly import agency_names, build_pipeline, key_holders, load_policy_set
from streams.contracts.registry import InMemorySchemaRegistry
from streams.crypto.envelope import DataKeyStore, parse_key_record
from streams.crypto.errors import DecryptionError
from streams.crypto.keys import AgencyPrivateKey, generate_key_pair, parse_instant
from streams.crypto.reader import AgencyRecordReader
from streams.crypto.ring import PrivateKeyRing, PublicKeyRing
from streams.crypto.views import is_key_topic
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.publish import event_encoder
from streams.pipeline import InputRecord, OutputRecord
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings

DAY = 86_400_000
D0 = parse_instant("2026-03-01")
ROTATION = D0 + 10 * DAY  # the new key's valid_from
POLICY_SET = load_policy_set(Settings())
CNAM = "tracing.cnam.results.v1"


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    """Fifteen days of traffic, one batch per day at noon, through one pipeline whose clock moves.

    Every agency has an old key valid [D0, D0+20d) and a new one valid [D0+10d, D0+40d): the
    periods overlap, as a rotation is planned; from D0+10d the new one is current.
    """
    old = {a: generate_key_pair(a, D0, D0 + 20 * DAY) for a in key_holders(POLICY_SET)}
    new = {a: generate_key_pair(a, ROTATION, D0 + 40 * DAY) for a in old}
    ring = PublicKeyRing([p.public for p in (*old.values(), *new.values())])
    clock = [D0 + DAY // 2]
    registry = InMemorySchemaRegistry()
    keys = StaticKeyRing(generate_keys(agency_names(POLICY_SET)))
    pipeline = build_pipeline(
        Settings(), registry, keys, clock_ms=lambda: clock[0], policy_set=POLICY_SET, public_keys=ring
    )
    encoder = event_encoder(registry, Settings().ingress_topic)
    events = [dict(e) for e in generate_events(15 * 20, GeneratorSettings(seed=9, positive_share=0.7))]
    for event in events:
        event.update(result="POSITIVE", processing_mode="P")
    written: list[tuple[int, OutputRecord]] = []  # (processing day, output)
    for day in range(15):
        clock[0] = D0 + day * DAY + DAY // 2
        batch = [
            InputRecord("in", 0, day * 20 + i, None, encoder.encode(e)) for i, e in enumerate(events[day * 20 :][:20])
        ]
        written += [(day, out) for out in pipeline.process_many(batch)]
    return {"old": old, "new": new, "registry": registry, "written": written}


def _reader(run: dict[str, Any], *pairs: AgencyPrivateKey) -> AgencyRecordReader:
    store = DataKeyStore("cnam", PrivateKeyRing(pairs, "cnam"))
    for _, out in run["written"]:
        if out.topic == "tracing.cnam.keys.v1":
            store.add(out.value)
    return AgencyRecordReader(run["registry"], store)


def _cnam(run: dict[str, Any]) -> list[tuple[int, int, OutputRecord]]:
    records = [(day, out) for day, out in run["written"] if out.topic == CNAM]
    return [(day, offset, out) for offset, (day, out) in enumerate(records)]


def test_one_data_key_per_agency_and_day_each_sealed_to_the_key_current_that_day(run: dict[str, Any]) -> None:
    """Fifteen daily CNAM data keys: days 0-9 sealed to the old key, days 10-14 to the new one."""
    records = {}
    for day, out in run["written"]:
        if out.topic == "tracing.cnam.keys.v1":
            record = parse_key_record(out.value)
            records[record.data_key_id] = (day, record)
    assert len(records) == 15
    for day, record in records.values():
        expected = run["old"]["cnam"] if day < 10 else run["new"]["cnam"]
        assert record.public_key_id == expected.key_id
        assert (record.not_before_ms, record.not_after_ms) == (D0 + day * DAY, D0 + (day + 1) * DAY)


def test_rotation_without_downtime_both_keys_read_everything(run: dict[str, Any]) -> None:
    """An agency holding both private keys reads every record, before and after the rotation, in one pass."""
    reader = _reader(run, run["old"]["cnam"], run["new"]["cnam"])
    days = [day for day, offset, out in _cnam(run) if reader.read(CNAM, 0, offset, out.value)["nir"]]
    assert sorted(set(days)) == list(range(15))


def test_after_shredding_the_old_key_its_period_is_unreadable_and_later_ones_are_not(run: dict[str, Any]) -> None:
    """Only the new private key left: every record of days 0-9 fails (naming the record), every later one reads."""
    reader = _reader(run, run["new"]["cnam"])
    readable, unreadable = set(), set()
    for day, offset, out in _cnam(run):
        try:
            record = reader.read(CNAM, 0, offset, out.value)
        except DecryptionError as exc:
            assert exc.code == "no_private_key" and f"{CNAM}[0]@{offset}" in str(exc)
            assert run["old"]["cnam"].key_id in str(exc)
            unreadable.add(day)
        else:
            assert isinstance(record["nir"], str) and len(record["nir"]) == 15
            readable.add(day)
    assert unreadable == set(range(10)) and readable == set(range(10, 15))


def test_the_old_key_alone_cannot_read_records_written_after_the_rotation(run: dict[str, Any]) -> None:
    """New records use the new key from its valid_from: a leaked old key reveals nothing written later."""
    reader = _reader(run, run["old"]["cnam"])
    for day, offset, out in _cnam(run):
        if day >= 10:
            with pytest.raises(DecryptionError) as caught:
                reader.read(CNAM, 0, offset, out.value)
            assert caught.value.code == "no_private_key"


def test_key_records_alone_never_hold_a_usable_data_key(run: dict[str, Any]) -> None:
    """Without any private key the key topic opens nothing: the broker's copy of it is useless to a thief."""
    reader = _reader(run)
    for _, offset, out in _cnam(run)[:20]:
        with pytest.raises(DecryptionError):
            reader.read(CNAM, 0, offset, out.value)
    assert all(is_key_topic(o.topic) or o.topic.endswith(".results.v1") for _, o in run["written"])
