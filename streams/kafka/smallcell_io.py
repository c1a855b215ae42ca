"""The worker's side of small-cell protection: the guard over each batch, the hold topic, rebuilds.

:class:`SmallCellStage` sits between the pipeline and the transaction. For each batch it closes
the due windows of the partitions this worker owns, then passes every output to the guarded
recipient's topic through :class:`~streams.policy.smallcell.SmallCellGuard`: a view released now
stays in its place (with ``smallcell.step`` and ``smallcell.window`` headers), a held view is
replaced, in the same place, by its hold record; views released with it (its class reaching k)
and window-close releases are appended after the batch's own outputs, so audit drafts, which
index the batch's outputs, keep pointing at the right records.

**Hold topic** (``screening.<recipient>.hold.v1``, one partition per ingress partition, written
only by the owner of that ingress partition, in the batch's transaction; the processor alone
reads and writes it): a ``hold`` record carries the view exactly as the agency topic would
receive it (same bytes, headers, key), plus its window, its counted fields (JSON) and its entry
number; ``open`` (a class reached k) and ``close`` (a window closed: counts per ladder step and
suppressed) records carry only counted-field values and counts. Its records have the processing
instant as timestamp, never before their window's start.

**Checkpoint.** Every transaction commits, with each ingress offset, the partition's
:class:`~streams.policy.smallcell.Checkpoint` (last entry number, end of the last closed window,
start of the oldest open one) in the offset metadata, next to the audit chain head
(space-separated parts). A new owner reads it with the committed offset (``require_stable``
under ``read_committed``: after any transaction holding that partition's offsets has ended),
then reads the hold partition ``read_committed`` from the oldest open window's start (minus
:data:`REPLAY_MARGIN_MS` for clock skew; ``offsets_for_times``) until it has replayed the entry
the checkpoint names, so it neither misses a committed entry nor applies an aborted one. A
window-close transaction with no ingress record still sends the partition's unchanged offset: a
zombie's close is then refused by the group generation, like any batch of a zombie.

**Audit** (an auditing worker, :mod:`streams.kafka.smallcell_audit`): a held view's decision says
held, its lineage rides sealed in its hold record (:data:`H_AUDIT`), and its release or suppression
gets its own chained audit record in the transaction that decides it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import fastavro
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.assembly import PolicySet, guarded_policies, subject_for
from streams.audit.keys import AuditKeys
from streams.contracts.codec import ViewEncoder, register_encoder
from streams.contracts.registry import SchemaRegistryClient
from streams.contracts.schemas import Schema, strip_logical_types
from streams.contracts.wire import HEADER_SIZE
from streams.credentials import NO_AUTH, KafkaAuth
from streams.domain.validation import wall_clock_ms
from streams.errors import ConfigError
from streams.kafka.batches import Batch, Work
from streams.kafka.smallcell_audit import StageAudit, Suppressed
from streams.kafka.topics import check_one_partition_per_ingress
from streams.pipeline import InputRecord, OutputRecord, remapped
from streams.policy.model import Policy
from streams.policy.outputs import output_schema
from streams.policy.smallcell import (
    CHECKPOINT_VERSION,
    Checkpoint,
    Close,
    Effects,
    Entry,
    Hold,
    HoldLogError,
    Ladder,
    Open,
    SmallCellGuard,
)
from streams.settings import Settings

log = logging.getLogger(__name__)

H_ENTRY = "smallcell.entry"  # hold | open | close
H_SEQ = "smallcell.seq"
H_WINDOW = "smallcell.window"  # window start, epoch ms
H_CELL = "smallcell.cell"  # the counted fields' values, JSON list in KAnonymity.columns order
H_ROUTE = "smallcell.route"  # the released record's route key, hex
H_TIME = "smallcell.time"  # the released record's Kafka timestamp (the agency's grain), epoch ms
H_AUDIT = "smallcell.audit"  # the held view's audit lineage, sealed under the audit secret (if auditing)
#: On released agency records: the ladder step (0 = full detail) and the window start (epoch ms).
H_STEP = "smallcell.step"
H_RELEASE_WINDOW = "smallcell.window"
#: Replays start this much before the oldest open window (clock skew between successive owners).
REPLAY_MARGIN_MS = 3_600_000
#: How long a rebuild waits for the entry its checkpoint names (transaction markers in flight).
REPLAY_TIMEOUT_S = 30.0

_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with arguments builds one per call
RawRecord = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]], int]  # key, value, headers, ms


def metadata_part(metadata: str | None, prefix: str) -> str | None:
    """The space-separated part of committed offset metadata that starts with ``prefix``."""
    return next((part for part in (metadata or "").split() if part.startswith(prefix)), None)


def join_metadata(*parts: str | None) -> str | None:
    """Offset metadata made of several parts (the audit head, the small-cell checkpoint)."""
    text = " ".join(p for p in parts if p)
    return text or None


class HoldReader(Protocol):
    """Reads one hold partition ``read_committed`` from an instant on (a fake in unit tests)."""

    def records(self, topic: str, partition: int, from_ms: int, timeout_s: float) -> Iterator[RawRecord]:
        """Committed records from the first at or after ``from_ms``; ends after ``timeout_s`` without one."""
        ...


def hold_rebuild_group(group_id: str) -> str:
    """The consumer group the hold rebuild reader names (librdkafka looks its coordinator up: an ACL needs it)."""
    return f"{group_id}-hold-rebuild"


class ConfluentHoldReader:
    """:class:`HoldReader` with a group-less confluent-kafka consumer (``read_committed``)."""

    def __init__(self, bootstrap_servers: str, auth: KafkaAuth = NO_AUTH, group_id: str = "screening-streams") -> None:
        """Read from ``bootstrap_servers`` as ``auth``'s principal (consumer group ``<group_id>-hold-rebuild``)."""
        self.bootstrap_servers = bootstrap_servers
        self.auth = auth
        self.group_id = hold_rebuild_group(group_id)

    def records(self, topic: str, partition: int, from_ms: int, timeout_s: float) -> Iterator[RawRecord]:
        """See :class:`HoldReader`; ends early when the start lies past the partition's last record."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                **self.auth.librdkafka(),
                "group.id": self.group_id,  # never joins nor commits (assign() only), but the ACLs see it
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        try:
            (start,) = consumer.offsets_for_times([TopicPartition(topic, partition, max(0, from_ms))], timeout_s)
            if start.error is not None:
                raise HoldLogError(f"cannot find where to read {topic}[{partition}]: {start.error}")
            if start.offset < 0:
                return  # nothing at or after from_ms
            consumer.assign([TopicPartition(topic, partition, start.offset)])
            idle = 0.0
            while idle < timeout_s:
                messages = consumer.consume(1000, 0.5)
                if not messages:
                    idle += 0.5
                    continue
                idle = 0.0
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise HoldLogError(f"reading {topic}[{partition}]: {error.name()}")
                        continue
                    listed = message.headers() or []
                    pairs = listed.items() if isinstance(listed, dict) else listed
                    headers = [(str(k), v) for k, v in pairs if isinstance(v, bytes)]
                    yield message.key(), message.value(), headers, message.timestamp()[1]
        except KafkaException as exc:
            raise HoldLogError(f"reading {topic}[{partition}] failed: {exc}") from exc
        finally:
            consumer.close()


class ViewCodec:
    """Encode and decode one recipient's views (Confluent framing, its registered contract)."""

    def __init__(self, schema: Schema, schema_id: int) -> None:
        """Use ``schema`` registered as ``schema_id``."""
        self.encoder = ViewEncoder(schema, schema_id)
        self._parsed = fastavro.parse_schema(strip_logical_types(schema))

    def decode(self, value: bytes) -> dict[str, Any]:
        """The view a record of this codec's writer schema holds (the 5-byte header skipped)."""
        import io

        record = fastavro.schemaless_reader(io.BytesIO(value[HEADER_SIZE:]), self._parsed, None)
        assert isinstance(record, dict)
        return record


@dataclass
class CellStats:
    """What the stage did (committed transactions only): held, released per ladder step, suppressed."""

    held: int = 0
    released: Counter[int] = field(default_factory=Counter)
    suppressed: int = 0
    rebuilt: int = 0  # partitions rebuilt from the hold topic
    replayed: int = 0  # hold-topic entries replayed

    def line(self) -> str:
        """``k=v`` pairs for a log line (counts only)."""
        steps = ",".join(f"{s}:{n}" for s, n in sorted(self.released.items()))
        return f"held={self.held} released_by_step={{{steps}}} suppressed={self.suppressed} rebuilt={self.rebuilt}"


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


def _int(record: OutputRecord, name: str) -> int:
    return int(_header(record.headers, name) or b"")


class SmallCellStage:
    """Applies one recipient's small-cell guard to the runner's batches (see module docstring)."""

    def __init__(
        self,
        policy: Policy,
        ladder: Ladder,
        *,
        topic: str,
        hold_topic: str,
        ingress_topic: str,
        codec: ViewCodec,
        reader: HoldReader,
        clock_ms: Callable[[], int] = wall_clock_ms,
        audit: StageAudit | None = None,
    ) -> None:
        """Guard ``topic`` (the recipient's, with prefix) with ``ladder``, logging to ``hold_topic``;
        with ``audit``, each held view's release or suppression gets its own audit record."""
        self.policy = policy
        self.ladder = ladder
        self.topic = topic
        self.hold_topic = hold_topic
        self.ingress_topic = ingress_topic
        self.codec = codec
        self.reader = reader
        self.clock_ms = clock_ms
        self.audit = audit
        self.guard: SmallCellGuard[OutputRecord] = SmallCellGuard(ladder)
        self.stats = CellStats()
        self._offsets: dict[int, int] = {}  # committed next offset of each rebuilt ingress partition
        self._pending: CellStats = CellStats()
        self._touched: set[int] = set()  # partitions changed by the transaction under way

    # ------------------------------------------------------------------ ownership
    def missing(self, partitions: Iterable[int]) -> list[int]:
        """The owned partitions not rebuilt yet."""
        return sorted(p for p in set(partitions) if p not in self._offsets)

    def sync(self, consumer: Any, partitions: Iterable[int], timeout_s: float) -> None:
        """Rebuild every partition of ``partitions`` not rebuilt yet, from its committed checkpoint."""
        missing = self.missing(partitions)
        if not missing:
            return
        committed = consumer.committed([TopicPartition(self.ingress_topic, p) for p in missing], timeout_s)
        for tp in committed:
            if tp.error is not None:  # never rebuild without the checkpoint: the batch is read again
                raise KafkaException(tp.error)
            self.rebuild(tp.partition, tp.offset, tp.metadata)

    def guard_batch(self, consumer: Any, owned: Iterable[int], batch: Batch, work: Work, timeout_s: float) -> Work:
        """:meth:`sync` the owned partitions, then :meth:`apply`; a hold log that cannot be rebuilt is fatal."""
        try:
            self.sync(consumer, owned, timeout_s)
        except HoldLogError as exc:
            log.critical("small-cell state cannot be rebuilt: %s; stopping", exc)
            raise
        return self.apply(batch, work)

    def rebuild(self, partition: int, offset: int, metadata: str | None) -> None:
        """Rebuild ``partition``'s open windows from the hold topic up to the checkpoint in ``metadata``."""
        checkpoint = Checkpoint.parse(metadata_part(metadata, CHECKPOINT_VERSION + ":"))
        self.guard.resume(partition, checkpoint)
        replayed = 0
        if checkpoint is not None and checkpoint.oldest_open is not None and checkpoint.seq > 0:
            start = checkpoint.oldest_open - REPLAY_MARGIN_MS
            for raw in self.reader.records(self.hold_topic, partition, start, REPLAY_TIMEOUT_S):
                entry = self.parse(partition, raw)
                self.guard.replay(entry)
                replayed += 1
                if entry.seq == checkpoint.seq:
                    break
        self.guard.resumed(partition, checkpoint)
        self._offsets[partition] = offset
        self.stats.rebuilt += 1
        self.stats.replayed += replayed
        log.info(
            "small cells: partition %d rebuilt from %d hold entries (%d views held)",
            partition,
            replayed,
            self.guard.held_count(partition),
        )

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked or lost: drop their state (their next owner rebuilds them)."""
        for p in partitions:
            self.guard.drop(p)
            self._offsets.pop(p, None)

    # ------------------------------------------------------------------ the batch
    def due(self, partitions: Iterable[int]) -> bool:
        """Whether a window of one of ``partitions`` (or one not rebuilt yet) is due now."""
        owned = set(partitions)
        if self.missing(owned):
            return True
        now = self.clock_ms()
        next_close = self.guard.next_close_ms()
        return next_close is not None and next_close <= now and any(p in owned for p, _ in self.guard.due(now))

    def apply(self, batch: Batch, work: Work) -> Work:
        """Close the due windows of rebuilt partitions, then guard the batch's views.

        Returns the outputs to produce: the batch's own (a held view removed, a released one in its
        place), then the hold-topic records in entry order (each hold partition is read back in that
        order), then the views released with others or by a closing window. ``batch.audits`` is
        remapped so a held view's decision points at its hold record (and, auditing, says held);
        the records of held views released or suppressed now are appended to it. Partitions closed
        without a record in the batch are added to ``batch.next`` at their committed offset, so the
        transaction is fenced by the group generation.
        """
        now = self.clock_ms()
        self._pending = CellStats()
        hold: list[OutputRecord] = []
        tail: list[OutputRecord] = []
        suppressed: list[Suppressed] = []
        # One window per transaction: a day of one partition's held views is one bounded transaction.
        closing = self.guard.close_due(now, self._offsets, limit=1)
        self._effects(closing, hold, tail, suppressed)
        for partition in {e.partition for e in closing.entries}:
            batch.next.setdefault((self.ingress_topic, partition), self._offsets[partition])
            self._touched.add(partition)
        placed: Work = []
        moved: dict[int, int] = {}  # old output position -> new one (audit drafts index outputs)
        held_at: dict[int, int] = {}  # old output position -> its hold record's place in ``hold``
        position = placed_count = 0
        audit = self.audit
        by_output = audit.decisions_at(batch.audits) if audit is not None else {}
        for source, outputs in work:
            kept: list[OutputRecord] = []
            for record in outputs:
                if record.topic == self.topic and not record.dead_letter:
                    if record.view is None:
                        raise TypeError("a guarded record without its view")
                    # Held without the view dict (memory: a held view is its encoded bytes; a generalised
                    # release decodes them again).
                    item = OutputRecord(
                        record.topic,
                        record.key,
                        record.value,
                        record.headers,
                        record.route_key,
                        False,
                        record.timestamp_ms,
                        record.partition,
                        lineage=audit.token(batch.audits, by_output, position) if audit is not None else None,
                    )
                    self._touched.add(source.partition)
                    effects = self.guard.admit(source.partition, now, self.ladder.cell(record.view), item)
                    released = self._admitted(effects, item, hold, tail)
                    if released is None:
                        held_at[position] = len(hold) - 1
                        position += 1
                        continue
                    record = released
                moved[position] = placed_count
                kept.append(record)
                position += 1
                placed_count += 1
            placed.append((source, kept))
        moved.update({old: placed_count + at for old, at in held_at.items()})
        if audit is not None:
            audit.mark_held(batch.audits, by_output, held_at)
        if batch.audits:
            batch.audits[:] = [remapped(draft, moved) for draft in batch.audits]
        if audit is not None:
            steps = ((_int(r, H_RELEASE_WINDOW), _int(r, H_STEP), r) for r in tail)
            batch.audits += audit.fates(steps, placed_count + len(hold), suppressed, now)
        source = self._source(batch)
        return placed + [(source, rs) for rs in (hold, tail) if rs]

    def _admitted(
        self, effects: Effects[OutputRecord], record: OutputRecord, hold: list[OutputRecord], tail: list[OutputRecord]
    ) -> OutputRecord | None:
        """``record``'s release (None: held, its hold record last in ``hold``); other effects queued."""
        placed: OutputRecord | None = None
        for release in effects.releases:
            for item in release.items:
                released = self._released(item, release.window, release.step)
                if item is record:
                    placed = released
                else:
                    tail.append(released)
            self._pending.released[release.step] += len(release.items)
        for entry in effects.entries:
            hold.append(self.hold_record(entry))
            if isinstance(entry, Hold):
                self._pending.held += 1
        return placed

    def _effects(
        self,
        effects: Effects[OutputRecord],
        hold: list[OutputRecord],
        tail: list[OutputRecord],
        suppressed: list[Suppressed],
    ) -> None:
        for release in effects.releases:
            tail += [self._released(item, release.window, release.step) for item in release.items]
            self._pending.released[release.step] += len(release.items)
        for suppression in effects.suppressions:
            self._pending.suppressed += len(suppression.items)
            suppressed += [(suppression.window, suppression.reason, item) for item in suppression.items]
        hold += [self.hold_record(entry) for entry in effects.entries]
        for entry in effects.entries:
            if isinstance(entry, Close):
                log.info(
                    "small cells: window %d of partition %d closed: released by ladder step %s, suppressed %d",
                    entry.window,
                    entry.partition,
                    list(entry.released),
                    entry.suppressed,
                )

    def _source(self, batch: Batch) -> InputRecord:
        """The input record named in failure messages of outputs no single input caused."""
        if batch.records:
            return batch.records[-1]
        partition = min((p for _, p in batch.next), default=-1)
        return InputRecord(
            self.ingress_topic, partition, batch.next.get((self.ingress_topic, partition), 0) - 1, None, None
        )

    def _released(self, record: OutputRecord, window: int, step: int) -> OutputRecord:
        """The agency record of a released view: at ``step``, its withheld fields null, re-encoded."""
        marks = ((H_STEP, str(step).encode()), (H_RELEASE_WINDOW, str(window).encode()))
        headers = tuple(record.headers) + marks
        if step == 0:
            r = record
            return OutputRecord(
                r.topic, r.key, r.value, headers, r.route_key, False, r.timestamp_ms, r.partition, lineage=r.lineage
            )
        view = dict(record.view) if record.view is not None else self.codec.decode(record.value or b"")
        for name in self.ladder.withheld[step]:
            view[name] = None
        return replace(record, value=self.codec.encoder.encode(view), headers=headers, view=view)

    # ------------------------------------------------------------------ the transaction
    def metadata(self, partition: int) -> str:
        """The checkpoint text to commit with ``partition``'s offset."""
        return self.guard.checkpoint(partition).render()

    def committed(self, batch: Batch) -> None:
        """The batch's transaction committed: keep the guard's changes, note the new offsets."""
        self._touched = set()
        for (topic, partition), offset in batch.next.items():
            if topic == self.ingress_topic and partition in self._offsets:
                self._offsets[partition] = offset
        pending, self._pending = self._pending, CellStats()
        self.stats.held += pending.held
        self.stats.released.update(pending.released)
        self.stats.suppressed += pending.suppressed

    def aborted(self) -> None:
        """The batch's transaction aborted: forget the partitions it changed, so the next batch rebuilds
        them from the hold log and their committed checkpoint (aborts are rare; an undo journal kept
        for every batch costs more: its objects make Python's collector rescan the held views)."""
        self.forget(self._touched)
        self._touched = set()
        self._pending = CellStats()

    # ------------------------------------------------------------------ the hold topic's records
    def hold_record(self, entry: Entry[OutputRecord]) -> OutputRecord:
        """The hold-topic record of one log entry (explicit partition, the entry's instant as time)."""
        common = ((H_SEQ, str(entry.seq).encode()), (H_WINDOW, str(entry.window).encode()))
        if isinstance(entry, Hold):
            item = entry.item
            headers = (
                *item.headers,
                (H_ENTRY, b"hold"),
                *common,
                (H_CELL, _JSON.encode(list(entry.cell)).encode()),
                (H_ROUTE, item.route_key.hex().encode()),
                *(((H_TIME, str(item.timestamp_ms).encode()),) if item.timestamp_ms is not None else ()),
                *(((H_AUDIT, item.lineage),) if item.lineage is not None else ()),
            )
            return OutputRecord(
                self.hold_topic, item.key, item.value, headers, b"", timestamp_ms=entry.at_ms, partition=entry.partition
            )
        if isinstance(entry, Open):
            body: dict[str, Any] = {"cell": list(entry.cell)}
            kind = b"open"
        else:
            body = {"released": list(entry.released), "suppressed": entry.suppressed}
            kind = b"close"
        value = _JSON.encode(body).encode()
        headers = ((H_ENTRY, kind), *common)
        return OutputRecord(
            self.hold_topic, None, value, headers, b"", timestamp_ms=entry.at_ms, partition=entry.partition
        )

    def parse(self, partition: int, raw: RawRecord) -> Entry[OutputRecord]:
        """The log entry of one hold-topic record (inverse of :meth:`hold_record`)."""
        key, value, headers, at_ms = raw
        try:
            kind = _header(headers, H_ENTRY)
            seq = int(_header(headers, H_SEQ) or b"")
            window = int(_header(headers, H_WINDOW) or b"")
            if kind == b"hold":
                cell = tuple(json.loads(_header(headers, H_CELL) or b""))
                route = bytes.fromhex((_header(headers, H_ROUTE) or b"").decode())
                own = tuple((k, v) for k, v in headers if not k.startswith("smallcell."))
                stamp = _header(headers, H_TIME)
                at = int(stamp) if stamp else None
                item = OutputRecord(self.topic, key, value, own, route, False, at, lineage=_header(headers, H_AUDIT))
                return Hold(partition, seq, window, cell, item, at_ms)
            body = json.loads(value or b"")
            if kind == b"open":
                return Open(partition, seq, window, tuple(body["cell"]), at_ms)
            if kind == b"close":
                return Close(partition, seq, window, tuple(body["released"]), int(body["suppressed"]), at_ms)
        except (ValueError, KeyError, TypeError) as exc:
            raise HoldLogError(f"unreadable record in {self.hold_topic}[{partition}]") from exc
        raise HoldLogError(f"record of unknown kind in {self.hold_topic}[{partition}]")


def build_small_cells(
    settings: Settings,
    registry: SchemaRegistryClient,
    policy_set: PolicySet,
    *,
    reader: HoldReader | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
    audit_keys: AuditKeys | None = None,
) -> SmallCellStage | None:
    """The stage of the recipient under small-cell protection (None without one); exactly once only.

    Registers (idempotently) the recipient's contract, to re-encode views released one step up.
    With ``audit_keys`` (an auditing worker), held views' releases and suppressions are audited.
    """
    guarded = guarded_policies(policy_set)
    if not guarded:
        return None
    if len(guarded) > 1:
        raise ConfigError(
            f"small-cell protection on {len(guarded)} recipients ({', '.join(p.recipient for p in guarded)}): "
            "one is supported"
        )
    if settings.processing_guarantee != "exactly_once":
        raise ConfigError(
            "small-cell protection needs SCREENING_PROCESSING_GUARANTEE=exactly_once: its hold log and counts "
            "must commit with the outputs (a re-delivered batch would count its views twice)"
        )
    (policy,) = guarded
    assert policy.k_anonymity is not None
    window_ms = None if settings.kanon_window_s is None else settings.kanon_window_s * 1000
    ladder = Ladder.of(policy.k_anonymity, window_ms=window_ms, grace_ms=settings.kanon_grace_s * 1000)
    topic = settings.topic_prefix + policy.topic
    schema = output_schema(policy, policy_set.input_schema)
    encoder = register_encoder(registry, subject_for(topic), schema)
    codec = ViewCodec(schema, encoder.schema_id)
    if ladder.window_ms != policy.k_anonymity.window_ms or settings.kanon_grace_s != Settings().kanon_grace_s:
        log.warning(
            "small cells for %s: window %d s (policy %s), grace %d s",
            policy.recipient,
            ladder.window_ms // 1000,
            policy.k_anonymity.describe_window(),
            ladder.grace_ms // 1000,
        )
    return SmallCellStage(
        policy,
        ladder,
        topic=topic,
        hold_topic=settings.hold_topic(policy.recipient),
        ingress_topic=settings.ingress_topic,
        codec=codec,
        reader=reader or ConfluentHoldReader(settings.bootstrap_servers, settings.kafka_auth, settings.group_id),
        clock_ms=clock_ms,
        audit=StageAudit(audit_keys, policy.recipient, ladder) if audit_keys is not None else None,
    )


def check_hold_partitions(stage: SmallCellStage, partitions: Mapping[str, int]) -> None:
    """Fail fast unless the hold topic has a partition for every ingress partition."""
    check_one_partition_per_ingress(stage.hold_topic, "hold", stage.ingress_topic, partitions)
