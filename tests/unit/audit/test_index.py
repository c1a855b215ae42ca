"""Unit tests of the audit index (streams.audit.index): each query against an independent count."""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from streams.audit.chain import ChainHead
from streams.audit.decisions import DEAD_LETTERED, HOUR_MS
from streams.audit.index import AuditIndex, AuditIndexError
from streams.pipeline import InputRecord

FIXED_HOUR = 1_601_510_400_000  # the conftest clock's hour


@pytest.fixture(scope="module")
def indexed(trail: Any, make_events: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2 000 events plus 3 garbage records through the auditing pipeline, ingested into an index file."""
    events = make_events(2_000, seed=40)
    inputs = trail.inputs(events)
    ingress = trail.settings.ingress_topic
    garbage = [InputRecord(ingress, 0, 10_000 + i, None, b"not avro at all %d" % i) for i in range(3)]
    batch = trail.pipeline.process_batch([*inputs, *garbage])
    locations = trail.produce(batch)
    values, _ = trail.writer.chain((trail.writer.record(a, locations) for a in batch.audits), ChainHead())
    path = tmp_path_factory.mktemp("audit") / "index.sqlite"
    index = AuditIndex(path)
    records = [(offset, trail.writer.decode(v)) for offset, v in enumerate(values)]
    assert index.ingest(0, records) == len(values)
    return {"index": index, "path": path, "events": events, "batch": batch, "records": records}


def test_index_file_is_private(indexed: dict[str, Any]) -> None:
    """The index file is created readable by its owner only."""
    mode = stat.S_IMODE(os.stat(indexed["path"]).st_mode)
    assert mode & 0o077 == 0


def test_who_received_lists_exactly_the_agencies_that_got_the_person(indexed: dict[str, Any], trail: Any) -> None:
    """For 100 people, who_received equals the agencies whose outputs carry that person's events."""
    expected: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for event, draft in zip(indexed["events"], indexed["batch"].audits, strict=False):
        for d in draft.decisions:
            if d.delivered:
                out = indexed["batch"].outputs[d.output]
                expected[str(event["nir"])].add((dict(out.headers)["policy.agency"].decode(), ",".join(d.fields)))
    people = sorted(expected)[:100]
    assert len(people) == 100
    for nir in people:
        got = {(d.agency, ",".join(d.fields)) for d in indexed["index"].who_received(trail.audit_keys.person(nir))}
        assert got == expected[nir]
    assert indexed["index"].who_received(trail.audit_keys.person("199999999999999")) == []


def test_event_returns_the_whole_fate_of_one_event(indexed: dict[str, Any], trail: Any) -> None:
    """event(ref) gives every recipient's decision for that event, matching its draft."""
    event, draft = indexed["events"][7], indexed["batch"].audits[7]
    [fate] = indexed["index"].event(trail.audit_keys.event_ref(str(event["event_id"])))
    assert fate["outcome"] == draft.outcome
    assert [(r["recipient"], r["delivered"], r["reason"]) for r in fate["recipients"]] == sorted(
        (d.recipient, d.delivered, d.reason) for d in draft.decisions
    )


def test_undelivered_lists_exactly_the_dead_letters_and_unreached_production_events(indexed: dict[str, Any]) -> None:
    """The three garbage records (and only unreached production events) are undelivered, with why."""
    rows = indexed["index"].undelivered(FIXED_HOUR - HOUR_MS)
    expected = {
        d.audit_ref
        for d in indexed["batch"].audits
        if d.outcome == DEAD_LETTERED or (d.outcome == "NOT_DELIVERED" and d.processing_mode == "P")
    }
    assert {r["audit_ref"] for r in rows} == expected
    assert sum(1 for r in rows if r["why"] == "not_framed") == 3
    assert indexed["index"].undelivered(FIXED_HOUR + HOUR_MS) == []


def test_exposure_counts_people_records_and_fields_like_an_independent_count(indexed: dict[str, Any]) -> None:
    """exposure('cnam'), exposure('ars') and exposure('ars.11') match a count over the outputs themselves."""
    batch = indexed["batch"]
    for name in ("cnam", "ars", "spf", "ars.11"):
        people, records, fields = set(), 0, set()
        for event, draft in zip(indexed["events"], batch.audits, strict=False):
            for d in draft.decisions:
                if d.delivered and (d.recipient == name or d.agency == name):
                    people.add(event["nir"])
                    records += 1
                    fields.update(d.fields)
        got = indexed["index"].exposure(name, FIXED_HOUR, FIXED_HOUR + HOUR_MS)
        assert (got.people, got.records, set(got.fields)) == (len(people), records, fields), name
    assert indexed["index"].exposure("cnam", FIXED_HOUR + HOUR_MS, FIXED_HOUR + 2 * HOUR_MS).records == 0


def test_summary_counts_delivered_filtered_and_dead_lettered_per_recipient(indexed: dict[str, Any]) -> None:
    """summary() adds up to one decision per record per recipient."""
    summary = indexed["index"].summary(FIXED_HOUR)
    n = len(indexed["records"])
    for recipient, row in summary.items():
        assert sum(row.values()) == n, recipient
        assert row["dead_lettered"] == 3
    assert summary["spf"]["delivered"] == sum(
        1 for d in indexed["batch"].audits for x in d.decisions if x.recipient == "spf" and x.delivered
    )


def test_reingesting_the_same_offsets_changes_nothing(indexed: dict[str, Any], tmp_path: Path) -> None:
    """Ingest is idempotent per offset, and a rebuilt index answers the same as the original."""
    index = indexed["index"]
    before = index.summary(0)
    assert index.ingest(0, indexed["records"]) == 0
    assert index.summary(0) == before
    rebuilt = AuditIndex(tmp_path / "rebuilt.sqlite")
    half = len(indexed["records"]) // 2
    rebuilt.ingest(0, indexed["records"][:half])
    rebuilt.ingest(0, indexed["records"])  # resumes after the stored position
    assert rebuilt.summary(0) == before
    assert rebuilt.positions() == {0: len(indexed["records"])}


def test_two_refreshes_of_one_file_never_add_a_record_twice(indexed: dict[str, Any], tmp_path: Path) -> None:
    """Two processes (here: two connections in threads) ingesting the same records into one index
    file at once: the read position is read inside the write lock, so every row is there once."""
    import threading

    path = tmp_path / "shared.sqlite"
    records = indexed["records"][:300]
    AuditIndex(path).close()
    start = threading.Barrier(2)
    added: list[int] = []
    errors: list[BaseException] = []

    def refresh() -> None:
        index = AuditIndex(path)  # a connection of its own, as a second process would have
        start.wait()
        try:
            for i in range(0, len(records), 20):
                added.append(index.ingest(0, records[: i + 20]))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            index.close()

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(added) == len(records)
    first = AuditIndex(path)
    one = AuditIndex(tmp_path / "one.sqlite")
    one.ingest(0, records)
    assert first.summary(0) == one.summary(0)
    (rows,) = first._db.execute("SELECT COUNT(*) FROM decisions").fetchone()
    (expected,) = one._db.execute("SELECT COUNT(*) FROM decisions").fetchone()
    assert rows == expected


def test_an_index_built_with_another_secret_refuses_to_open(indexed: dict[str, Any], tmp_path: Path) -> None:
    """The first chunk whose MACs verified binds the index to its secret's fingerprint: another
    secret's queries would answer "nothing" (other pseudonyms), so opening it with that secret
    fails, naming both. Opening alone binds nothing (a wrong secret cannot lock the right one out)."""
    path = tmp_path / "index.sqlite"
    AuditIndex(path, "bbbb1111bbbb1111").close()  # a wrong secret first: refused later by refresh, binds nothing
    index = AuditIndex(path, "aaaa0000aaaa0000")
    assert not index.bound
    index.ingest(0, indexed["records"][:3], verified=True)
    assert index.bound
    index.close()
    assert AuditIndex(path, "aaaa0000aaaa0000").bound  # the same secret opens it again
    with pytest.raises(AuditIndexError, match=r"another audit secret.*aaaa0000aaaa0000.*bbbb1111bbbb1111"):
        AuditIndex(path, "bbbb1111bbbb1111")


def test_an_unreadable_record_only_moves_the_read_position(indexed: dict[str, Any], tmp_path: Path) -> None:
    """A None record (it could not be decoded) is not indexed, and is not read again."""
    index = AuditIndex(tmp_path / "index.sqlite")
    records = indexed["records"][:5]
    assert index.ingest(0, [records[0], (1, None), *records[2:]]) == 4
    assert index.positions() == {0: 5}
    (rows,) = index._db.execute("SELECT COUNT(*) FROM records").fetchone()
    assert rows == 4


def test_an_index_with_duplicate_rows_from_an_older_version_says_to_rebuild(tmp_path: Path) -> None:
    """An index an older version wrote with duplicate decision rows cannot take the unique index:
    opening it names the cure (``audit index --rebuild``) instead of a bare SQLite error."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE decisions (partition INTEGER NOT NULL, offset INTEGER NOT NULL, recipient TEXT NOT NULL, "
        "agency TEXT, delivered INTEGER NOT NULL, reason TEXT NOT NULL, fields TEXT NOT NULL, key_id TEXT, "
        "policy_version TEXT NOT NULL, sealed_location BLOB, person TEXT, hour INTEGER NOT NULL)"
    )
    row = (0, 1, "cnam", "cnam", 1, "delivered", "nir", None, "v1", None, "p", 0)
    db.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [row, row])
    db.commit()
    db.close()
    with pytest.raises(AuditIndexError, match="--rebuild"):
        AuditIndex(path)
