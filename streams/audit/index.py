"""The materialised audit index: the audit stream in an embedded SQLite database, and its queries.

SQLite (Python's standard library, a maintained embedded store with real indexes and range
queries) rather than a faust table: the queries are by person, by event and by time range,
which a key-value changelog cannot answer without scanning. The index holds exactly what the
topic holds (audit pseudonyms, audit references, sealed coordinates), never an identifier;
its file is created 0600. Each ingested batch and the next offset of its partition are written
in one SQLite transaction, so an index rebuilt after a crash or from an empty file (``audit
index`` re-reads the topic from the stored offsets, or from the beginning) ends the same.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.audit.decisions import DEAD_LETTERED, DELIVERED, HOUR_MS, NOT_DELIVERED
from streams.audit.held import HELD_REASON
from streams.errors import ScreeningStreamsError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  partition INTEGER NOT NULL, offset INTEGER NOT NULL, audit_ref TEXT NOT NULL, person TEXT,
  hour INTEGER NOT NULL, outcome TEXT NOT NULL, dead_letter_code TEXT, mode TEXT,
  PRIMARY KEY (partition, offset));
CREATE TABLE IF NOT EXISTS decisions (
  partition INTEGER NOT NULL, offset INTEGER NOT NULL, recipient TEXT NOT NULL, agency TEXT,
  delivered INTEGER NOT NULL, reason TEXT NOT NULL, fields TEXT NOT NULL, key_id TEXT,
  policy_version TEXT NOT NULL, sealed_location BLOB, person TEXT, hour INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS progress (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS records_ref ON records (audit_ref);
CREATE INDEX IF NOT EXISTS records_hour ON records (hour);
CREATE INDEX IF NOT EXISTS decisions_person ON decisions (person, delivered);
CREATE INDEX IF NOT EXISTS decisions_recipient ON decisions (recipient, hour);
CREATE INDEX IF NOT EXISTS decisions_agency ON decisions (agency, hour);
CREATE UNIQUE INDEX IF NOT EXISTS decisions_one ON decisions (partition, offset, recipient);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS small_cell (
  partition INTEGER NOT NULL, offset INTEGER NOT NULL, audit_ref TEXT NOT NULL, recipient TEXT NOT NULL,
  released INTEGER NOT NULL, window INTEGER NOT NULL, step INTEGER, withheld TEXT NOT NULL, reason TEXT,
  hour INTEGER NOT NULL, PRIMARY KEY (partition, offset));
CREATE INDEX IF NOT EXISTS small_cell_ref ON small_cell (audit_ref, recipient);
"""


class AuditIndexError(ScreeningStreamsError):
    """The audit index cannot be opened or written."""


@dataclass(frozen=True)
class Delivery:
    """One recipient that received one record: which fields, when (hour), under which policy and key."""

    recipient: str
    agency: str
    fields: tuple[str, ...]
    hour_ms: int
    policy_version: str
    key_id: str | None
    audit_ref: str
    #: A view small-cell protection held, released later: the ladder step (0: full detail), else None.
    step: int | None = None


@dataclass(frozen=True)
class HeldView:
    """A view small-cell protection held, and what became of it: released (at a step, an hour) or suppressed."""

    recipient: str
    audit_ref: str
    held_hour_ms: int
    fate: str  # released | suppressed | held (its window has not closed yet)
    step: int | None
    withheld: tuple[str, ...]
    decided_hour_ms: int | None


@dataclass(frozen=True)
class Exposure:
    """What a recipient's store held over a window: distinct people, records, and fields."""

    recipient: str
    people: int
    records: int
    fields: tuple[str, ...]


#: The keys of every :meth:`AuditIndex.summary` row.
SUMMARY_KINDS = ("delivered", "filtered", "dead_lettered", "held", "suppressed")


def floor_hour(ms: int) -> int:
    """Truncate epoch milliseconds to the hour (the audit's resolution)."""
    return ms - ms % HOUR_MS


class AuditIndex:
    """An audit index file (or ``:memory:``), with ingest and the queries of ``screening-streams audit``."""

    def __init__(self, path: Path | str, fingerprint: str | None = None) -> None:
        """Open (creating 0600 if needed) the index at ``path``.

        ``fingerprint`` (:meth:`AuditKeys.fingerprint`) binds the index to one audit secret: a
        new index records it, an index built with another secret refuses to open (its
        pseudonyms would answer every query with "nothing").
        """
        if str(path) != ":memory:":
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not target.exists():
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
        self._fingerprint = fingerprint
        try:
            # Autocommit: ingest takes the write lock itself (BEGIN IMMEDIATE); others wait 60 s.
            self._db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
            self._db.executescript(_SCHEMA)
            found = self._db.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
        except sqlite3.IntegrityError as exc:  # duplicate rows an older version could write
            raise AuditIndexError(
                f"the audit index {path} holds duplicate rows from an older version: "
                "rebuild it (`screening-streams audit index --rebuild`)"
            ) from exc
        except sqlite3.Error as exc:
            raise AuditIndexError(f"cannot open the audit index {path}: {exc}") from exc
        stored = found[0] if found else None
        if fingerprint is not None and stored is not None and stored != fingerprint:
            self._db.close()
            raise AuditIndexError(
                f"the audit index {path} was built with another audit secret (fingerprint {stored}, "
                f"this secret's {fingerprint}): use that secret, or another --index-path"
            )
        #: Whether a secret's records verified into this index (its fingerprint is stored).
        self.bound = stored is not None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def positions(self) -> dict[int, int]:
        """The next offset to read per audit partition."""
        return dict(self._db.execute("SELECT partition, next_offset FROM progress").fetchall())

    def ingest(
        self, partition: int, records: Iterable[tuple[int, Mapping[str, Any] | None]], *, verified: bool = False
    ) -> int:
        """Add decoded ``(offset, record)`` pairs of one partition in offset order; skip offsets
        already indexed. A None record (unreadable) only moves the read position past it.

        One write transaction (``BEGIN IMMEDIATE``) reads the position and writes the rows, so two
        refreshes of one index file never add a record twice. ``verified`` (some of these records'
        MACs verified with the secret) binds the index to the secret's fingerprint, in the same
        transaction."""
        records = list(records)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = self._ingest_locked(partition, records)
                if verified and self._fingerprint is not None and not self.bound:
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (self._fingerprint,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditIndexError(f"cannot write the audit index: {exc}") from exc
        self.bound = self.bound or (verified and self._fingerprint is not None)
        return added

    def _ingest_locked(self, partition: int, records: list[tuple[int, Mapping[str, Any] | None]]) -> int:
        rows, decisions, cells, last = [], [], [], None
        found = self._db.execute("SELECT next_offset FROM progress WHERE partition = ?", (partition,)).fetchone()
        done = found[0] if found else 0
        for offset, r in records:
            if offset < done:
                continue
            last = offset
            if r is None:
                continue
            rows.append(
                (
                    partition,
                    offset,
                    r["audit_ref"],
                    r["person"],
                    r["processed_hour"],
                    r["outcome"],
                    r["dead_letter_code"],
                    r["processing_mode"],
                )
            )
            fate = r.get("small_cell")
            if fate is not None:
                decided = r["recipients"][0]["recipient"] if r["recipients"] else ""
                cells.append(
                    (
                        partition,
                        offset,
                        r["audit_ref"],
                        decided,
                        int(fate["released"]),
                        fate["window"],
                        fate["step"],
                        ",".join(fate["withheld"]),
                        fate["reason"],
                        r["processed_hour"],
                    )
                )
            for d in r["recipients"]:
                decisions.append(
                    (
                        partition,
                        offset,
                        d["recipient"],
                        d["agency"],
                        int(d["delivered"]),
                        d["reason"],
                        ",".join(d["fields"]),
                        d["key_id"],
                        d["policy_version"],
                        d["sealed_location"],
                        r["person"],
                        r["processed_hour"],
                    )
                )
        if last is None:
            return 0
        self._db.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?)", rows)
        self._db.executemany("INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", decisions)
        self._db.executemany("INSERT OR REPLACE INTO small_cell VALUES (?,?,?,?,?,?,?,?,?,?)", cells)
        self._db.execute("INSERT OR REPLACE INTO progress VALUES (?, ?)", (partition, last + 1))
        return len(rows)

    # ------------------------------------------------------------------ queries
    def who_received(self, person: str) -> list[Delivery]:
        """Every delivery of that person's data: recipient, fields, hour, policy version, key."""
        rows = self._db.execute(
            "SELECT d.recipient, d.agency, d.fields, d.hour, d.policy_version, d.key_id, r.audit_ref, s.step "
            "FROM decisions d JOIN records r ON r.partition = d.partition AND r.offset = d.offset "
            "LEFT JOIN small_cell s ON s.partition = d.partition AND s.offset = d.offset "
            "WHERE d.person = ? AND d.delivered = 1 ORDER BY d.hour, d.recipient",
            (person,),
        ).fetchall()
        return [Delivery(r[0], r[1], _fields(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def held(self, person: str) -> list[HeldView]:
        """That person's views small-cell protection held, each with its fate (released at a step, suppressed,
        or still held), from the held decision and the later record of the same event and recipient."""
        rows = self._db.execute(
            "SELECT d.recipient, r.audit_ref, d.hour, s.released, s.step, s.withheld, s.hour "
            "FROM decisions d JOIN records r ON r.partition = d.partition AND r.offset = d.offset "
            "LEFT JOIN small_cell s ON s.audit_ref = r.audit_ref AND s.recipient = d.recipient "
            "WHERE d.person = ? AND d.delivered = 0 AND d.reason = ? ORDER BY d.hour, r.audit_ref",
            (person, HELD_REASON),
        ).fetchall()
        return [
            HeldView(
                recipient,
                ref,
                hour,
                "held" if released is None else "released" if released else "suppressed",
                step,
                _fields(withheld or ""),
                decided,
            )
            for recipient, ref, hour, released, step, withheld, decided in rows
        ]

    def event(self, audit_ref: str) -> list[dict[str, Any]]:
        """Every audit record of one event (a replayed dead letter has several), with its decisions."""
        out = []
        for partition, offset, person, hour, outcome, code, mode in self._db.execute(
            "SELECT partition, offset, person, hour, outcome, dead_letter_code, mode FROM records "
            "WHERE audit_ref = ? ORDER BY hour, partition, offset",
            (audit_ref,),
        ).fetchall():
            decisions = self._db.execute(
                "SELECT recipient, agency, delivered, reason, fields, key_id, policy_version, sealed_location "
                "FROM decisions WHERE partition = ? AND offset = ? ORDER BY recipient",
                (partition, offset),
            ).fetchall()
            cell = self._db.execute(
                "SELECT released, window, step, withheld, reason FROM small_cell WHERE partition = ? AND offset = ?",
                (partition, offset),
            ).fetchone()
            out.append(
                {
                    "audit_partition": partition,
                    "audit_offset": offset,
                    "person": person,
                    "hour_ms": hour,
                    "outcome": outcome,
                    "dead_letter_code": code,
                    "processing_mode": mode,
                    "small_cell": None
                    if cell is None
                    else {
                        "released": bool(cell[0]),
                        "window": cell[1],
                        "step": cell[2],
                        "withheld": list(_fields(cell[3])),
                        "reason": cell[4],
                    },
                    "recipients": [
                        {
                            "recipient": d[0],
                            "agency": d[1],
                            "delivered": bool(d[2]),
                            "reason": d[3],
                            "fields": list(_fields(d[4])),
                            "key_id": d[5],
                            "policy_version": d[6],
                            "sealed_location": d[7],
                        }
                        for d in decisions
                    ],
                }
            )
        return out

    def undelivered(self, since_ms: int) -> list[dict[str, Any]]:
        """Records since ``since_ms`` that reached none of their intended recipients, and why.

        Dead-lettered records, and production (mode P) events no recipient's filter accepted,
        unless a later audit record of the same event (a successful replay) delivered it.
        """
        rows = self._db.execute(
            "SELECT r.audit_ref, r.hour, r.outcome, r.dead_letter_code, r.mode, "
            "(SELECT c.reason FROM small_cell c WHERE c.audit_ref = r.audit_ref AND c.released = 0 LIMIT 1), "
            "EXISTS (SELECT 1 FROM decisions h WHERE h.partition = r.partition AND h.offset = r.offset "
            "AND h.reason = ?) FROM records r "
            "WHERE r.hour >= ? AND (r.outcome = ? OR (r.outcome = ? AND r.mode = 'P')) "
            "AND NOT EXISTS (SELECT 1 FROM records later WHERE later.audit_ref = r.audit_ref AND later.outcome = ?) "
            "AND NOT EXISTS (SELECT 1 FROM small_cell c WHERE c.partition = r.partition AND c.offset = r.offset) "
            "ORDER BY r.hour, r.audit_ref",
            (HELD_REASON, floor_hour(since_ms), DEAD_LETTERED, NOT_DELIVERED, DELIVERED),
        ).fetchall()
        return [
            {
                "audit_ref": ref,
                "hour_ms": hour,
                "outcome": outcome,
                "why": code
                if outcome == DEAD_LETTERED
                else f"suppressed: {suppressed}"
                if suppressed
                else HELD_REASON
                if held
                else "no recipient's filter accepted it",
                "processing_mode": mode,
            }
            for ref, hour, outcome, code, mode, suppressed, held in rows
        ]

    def exposure(self, recipient: str, from_ms: int, to_ms: int) -> Exposure:
        """If ``recipient`` (``cnam``, ``ars`` or one agency such as ``ars.11``) leaked over the window."""
        column = "agency" if "." in recipient else "recipient"
        people, records = self._db.execute(
            f"SELECT COUNT(DISTINCT person), COUNT(*) FROM decisions WHERE {column} = ? AND delivered = 1 "
            "AND hour >= ? AND hour <= ?",
            (recipient, floor_hour(from_ms), to_ms),
        ).fetchone()
        fields: set[str] = set()
        for (text,) in self._db.execute(
            f"SELECT DISTINCT fields FROM decisions WHERE {column} = ? AND delivered = 1 AND hour >= ? AND hour <= ?",
            (recipient, floor_hour(from_ms), to_ms),
        ):
            fields.update(_fields(text))
        return Exposure(recipient, int(people), int(records), tuple(sorted(fields)))

    def summary(self, since_ms: int) -> dict[str, dict[str, int]]:
        """Per recipient since ``since_ms``: delivered, filtered, dead-lettered, and under small-cell protection
        held (still) and suppressed; a held view released later counts once, as delivered."""
        out: dict[str, dict[str, int]] = {}
        for recipient, key, count in self._db.execute(
            "SELECT d.recipient, CASE WHEN d.delivered = 1 THEN 'delivered' "
            "WHEN d.reason LIKE 'dead-lettered:%' THEN 'dead_lettered' WHEN d.reason = ? THEN 'held' "
            "WHEN d.reason LIKE 'suppressed:%' THEN 'suppressed' ELSE 'filtered' END AS kind, COUNT(*) "
            "FROM decisions d JOIN records r ON r.partition = d.partition AND r.offset = d.offset "
            "WHERE d.hour >= ? AND NOT (d.reason = ? AND EXISTS "
            "(SELECT 1 FROM small_cell s WHERE s.audit_ref = r.audit_ref AND s.recipient = d.recipient)) "
            "GROUP BY d.recipient, kind",
            (HELD_REASON, floor_hour(since_ms), HELD_REASON),
        ):
            row = out.setdefault(recipient, dict.fromkeys(SUMMARY_KINDS, 0))
            row[key] += int(count)
        return dict(sorted(out.items()))


def _fields(text: str) -> tuple[str, ...]:
    return tuple(text.split(",")) if text else ()
