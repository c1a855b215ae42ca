"""The worker's small-cell stage without a broker: held views become hold records in place, released classes
come out whole, windows close into generalised records, the hold log reads back into the same state, and
the checkpoint shares the committed offset metadata with the audit chain head."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from streams.assembly import PolicySet, hold_topics
from streams.audit.chain import ChainHead
from streams.audit.decisions import PendingAudit, PendingDecision
from streams.audit.held import HELD_REASON
from streams.audit.keys import AuditKeys
from streams.contracts.registry import InMemorySchemaRegistry
from streams.errors import ConfigError
from streams.kafka.acl import PROCESSOR, acl_plan
from streams.kafka.audit_io import committed_head, head_metadata
from streams.kafka.batches import Batch, Work
from streams.kafka.smallcell_audit import StageAudit
from streams.kafka.smallcell_io import (
    H_AUDIT,
    H_ENTRY,
    H_STEP,
    REPLAY_MARGIN_MS,
    RawRecord,
    SmallCellStage,
    ViewCodec,
    build_small_cells,
    check_hold_partitions,
    join_metadata,
    metadata_part,
)
from streams.kafka.topics import topic_specs
from streams.pipeline import InputRecord, OutputRecord
from streams.policy.model import Policy
from streams.policy.outputs import output_schema
from streams.policy.smallcell import Checkpoint, HoldLogError, Ladder
from streams.settings import Settings

DAY = 86_400_000
INGRESS = "screening.results.v1"
SPF = "surveillance.spf.results.v1"
HOLD = "screening.spf.hold.v1"


class Clock:
    """An injected wall clock (epoch ms)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class LogReader:
    """A hold partition in memory: the records a committed transaction left, from an instant on."""

    def __init__(self, records: list[OutputRecord]) -> None:
        self.records_ = records
        self.asked: list[tuple[str, int, int]] = []

    def records(self, topic: str, partition: int, from_ms: int, timeout_s: float) -> Iterator[RawRecord]:
        self.asked.append((topic, partition, from_ms))
        for r in self.records_:
            if r.topic == topic and r.partition == partition and (r.timestamp_ms or 0) >= from_ms:
                yield r.key, r.value, r.headers, r.timestamp_ms or 0


def _spf(policy_set: PolicySet) -> Policy:
    return next(p for p in policy_set.policies if p.recipient == "spf")


def _stage(
    policy_set: PolicySet,
    clock: Clock,
    reader: LogReader | None = None,
    k: int | None = None,
    audit: StageAudit | None = None,
) -> SmallCellStage:
    policy = _spf(policy_set)
    assert policy.k_anonymity is not None
    option = policy.k_anonymity
    if k is not None:
        from dataclasses import replace

        option = replace(option, k=k)
    codec = ViewCodec(output_schema(policy, policy_set.input_schema), 7)
    return SmallCellStage(
        policy,
        Ladder.of(option, grace_ms=600_000),
        topic=SPF,
        hold_topic=HOLD,
        ingress_topic=INGRESS,
        codec=codec,
        reader=reader or LogReader([]),
        clock_ms=clock,
        audit=audit,
    )


def _view(i: int, dept: str = "75", region: str = "11", day: int = 18_500, house: str = "NONE") -> dict[str, Any]:
    return {
        "event_ref": f"ref-{i}",
        "pseudonym": f"p-{i}",
        "age_band": "30-39",
        "sex": "F",
        "department": dept,
        "region": region,
        "test_kind": "RT_PCR",
        "sampled_on": day,
        "sampled_week": "2020-W35",
        "result": "NEGATIVE",
        "symptomatic": None,
        "collective_housing": house,
    }


def _work(stage: SmallCellStage, views: list[tuple[int, dict[str, Any]]], partition: int = 0) -> Work:
    work: Work = []
    for offset, view in views:
        source = InputRecord(INGRESS, partition, offset, None, b"x")
        spf = OutputRecord(
            SPF,
            view["event_ref"].encode(),
            stage.codec.encoder.encode(view),
            (("policy.recipient", b"spf"),),
            b"route-" + view["event_ref"].encode(),
            False,
            DAY,
            view=view,
        )
        other = OutputRecord("tracing.cnam.results.v1", b"c", b"cnam", (), b"c")
        work.append((source, [other, spf]))
    return work


def _batch(work: Work) -> Batch:
    batch = Batch(records=[source for source, _ in work])
    for source in batch.records:
        batch.first.setdefault((source.topic, source.partition), source.offset)
        batch.next[(source.topic, source.partition)] = source.offset + 1
    return batch


def _run(stage: SmallCellStage, work: Work, log: list[OutputRecord] | None = None) -> tuple[Batch, Work]:
    """One committed batch: rebuild the partitions if needed, guard, commit; the hold records go to ``log``."""
    batch = _batch(work)
    for p in stage.missing(p for _, p in batch.next):
        stage.rebuild(p, 0, None)
    out = stage.apply(batch, work)
    stage.committed(batch)
    if log is not None:
        log += [r for _, outputs in out for r in outputs if r.topic == HOLD]
    return batch, out


def _headers(record: OutputRecord) -> dict[str, bytes]:
    return dict(record.headers)


def _flat(out: Work) -> list[OutputRecord]:
    return [r for _, rs in out for r in rs]


def _draft(offset: int, output: int) -> PendingAudit:
    """An audit draft whose SPF decision points at output position ``output``."""
    decision = PendingDecision("spf", "spf", True, "delivered", ("event_ref",), None, "v", output)
    return PendingAudit((INGRESS, 2, offset), f"a{offset}", None, "P", "DELIVERED", None, (decision,), 0)


def test_held_views_go_to_the_hold_topic_and_the_class_leaves_whole(policy_set: PolicySet) -> None:
    """k=5: four views of one class leave the batch's outputs for hold records on the input's hold
    partition (same bytes and key as the SPF record), after the batch's own outputs, and the audit drafts
    point at them; the fifth is released in place and the four held ones are appended after an open
    record; other recipients' outputs are untouched."""
    clock = Clock(10 * DAY + 1000)
    stage = _stage(policy_set, clock)
    work = _work(stage, [(i, _view(i)) for i in range(4)], partition=2)
    batch = _batch(work)
    batch.audits = [_draft(i, 2 * i + 1) for i in range(4)]  # the SPF output of input i is at 2i + 1
    stage.rebuild(2, 0, None)
    out = _flat(stage.apply(batch, work))
    stage.committed(batch)
    assert [r.topic for r in out] == ["tracing.cnam.results.v1"] * 4 + [HOLD] * 4
    assert [d.decisions[0].output for d in batch.audits] == [4, 5, 6, 7]
    hold = out[4]
    assert hold.partition == 2 and hold.key == b"ref-0" and hold.timestamp_ms == clock.now
    assert _headers(hold)[H_ENTRY] == b"hold" and _headers(hold)["policy.recipient"] == b"spf"
    assert [_headers(r)["smallcell.seq"] for r in out[4:]] == [b"1", b"2", b"3", b"4"]
    assert stage.codec.decode(hold.value or b"")["event_ref"] == "ref-0"
    _, out2 = _run(stage, _work(stage, [(4, _view(4))], partition=2))
    flat = _flat(out2)
    assert flat[1].topic == SPF and flat[1].key == b"ref-4" and _headers(flat[1])[H_STEP] == b"0"
    assert [_headers(r)[H_ENTRY] for r in flat if r.topic == HOLD] == [b"open"]
    assert [r.key for r in flat[3:]] == [b"ref-0", b"ref-1", b"ref-2", b"ref-3"]
    assert stage.stats.held == 4 and stage.stats.released[0] == 5
    _, out3 = _run(stage, _work(stage, [(5, _view(5))], partition=2))
    assert [r.topic for r in _flat(out3)] == ["tracing.cnam.results.v1", SPF]


def test_a_closing_window_releases_generalised_records_and_suppresses_the_rest(policy_set: PolicySet) -> None:
    """k=2: departments 75 and 77 (both in region 11) each alone → released at step 1 with the department
    null and the region kept; a lone view in 2A → suppressed. The idle close adds the partition at its
    committed offset (so the transaction is fenced) and writes one close record with the counts."""
    clock = Clock(10 * DAY)
    stage = _stage(policy_set, clock, k=2)
    _run(stage, _work(stage, [(0, _view(0, "75")), (1, _view(1, "77")), (2, _view(2, "2A", "94"))]))
    clock.now = 11 * DAY + 600_000
    idle = Batch()
    out = stage.apply(idle, [])
    assert idle.next == {(INGRESS, 0): 3}
    records = _flat(out)
    released = [r for r in records if r.topic == SPF]
    assert [r.key for r in released] == [b"ref-0", b"ref-1"]
    for record in released:
        view = stage.codec.decode(record.value or b"")
        assert view["department"] is None and view["region"] == "11" and view["sampled_on"] == 18_500
        assert _headers(record)[H_STEP] == b"1" and _headers(record)["smallcell.window"] == str(10 * DAY).encode()
    (close,) = [r for r in records if r.topic == HOLD]
    assert _headers(close)[H_ENTRY] == b"close" and close.value == b'{"released":[2,0,0],"suppressed":1}'
    stage.committed(idle)
    assert stage.stats.released[1] == 2 and stage.stats.suppressed == 1 and stage.guard.held_count() == 0


def test_an_aborted_batch_is_rebuilt_from_the_committed_log(policy_set: PolicySet) -> None:
    """apply then aborted(): the partitions it touched are forgotten (the others kept), the stats count
    nothing, and the rebuild from the committed hold records and checkpoint restores the state before it."""
    clock = Clock(10 * DAY)
    log: list[OutputRecord] = []
    stage = _stage(policy_set, clock, LogReader(log))
    _run(stage, _work(stage, [(0, _view(0))]), log)
    _run(stage, _work(stage, [(0, _view(9))], partition=1), log)
    before, metadata = stage.guard.snapshot(0), stage.metadata(0)
    work = _work(stage, [(i, _view(i)) for i in range(1, 5)])
    stage.apply(_batch(work), work)
    stage.aborted()
    assert stage.missing([0, 1]) == [0] and stage.stats.held == 2 and stage.stats.released[0] == 0
    stage.rebuild(0, 1, metadata)
    assert stage.guard.snapshot(0) == before


def test_a_new_owner_rebuilds_from_the_hold_log_and_decides_the_same(policy_set: PolicySet) -> None:
    """Hold records of committed batches, read back from the checkpoint's oldest open window (minus the
    margin), give a new stage the same state; the class then opens at the same member with the same views."""
    clock = Clock(10 * DAY + 5000)
    first = _stage(policy_set, clock)
    log: list[OutputRecord] = []
    for i in range(3):
        _run(first, _work(first, [(i, _view(i)), (100 + i, _view(100 + i, "13", "93"))]), log)
    metadata = join_metadata(head_metadata(ChainHead()), first.metadata(0))
    reader = LogReader(log)
    second = _stage(policy_set, clock, reader)
    second.rebuild(0, 6, metadata)
    assert second.guard.snapshot(0) == first.guard.snapshot(0)
    assert reader.asked == [(HOLD, 0, 10 * DAY - REPLAY_MARGIN_MS)]
    outs = []
    for stage in (first, second):
        work = _work(stage, [(6, _view(6)), (7, _view(7))])
        _, out = _run(stage, work)
        outs.append([(r.topic, r.key, r.value, _headers(r).get(H_STEP)) for _, rs in out for r in rs])
    assert outs[0] == outs[1]
    assert [key for topic, key, _, _ in outs[1] if topic == SPF] == [b"ref-7", b"ref-0", b"ref-1", b"ref-2", b"ref-6"]


def test_a_rebuild_that_misses_committed_entries_fails(policy_set: PolicySet) -> None:
    """If the hold log ends before the entry the checkpoint names (lost records), the rebuild refuses."""
    clock = Clock(10 * DAY)
    first = _stage(policy_set, clock)
    log: list[OutputRecord] = []
    _run(first, _work(first, [(0, _view(0)), (1, _view(1))]), log)
    second = _stage(policy_set, clock, LogReader(log[:1]))
    with pytest.raises(HoldLogError, match="replay ended at entry 1"):
        second.rebuild(0, 2, first.metadata(0))


def test_hold_records_read_back_exactly(policy_set: PolicySet) -> None:
    """Each kind of hold record parses back into the entry it was written from; the held view keeps its
    bytes, key, route key, agency headers and agency timestamp."""
    clock = Clock(10 * DAY)
    stage = _stage(policy_set, clock, k=2)
    log: list[OutputRecord] = []
    _run(stage, _work(stage, [(0, _view(0)), (1, _view(1)), (2, _view(2, "2A", "94"))]), log)
    clock.now = 12 * DAY
    idle = Batch()
    log += [r for _, rs in stage.apply(idle, []) for r in rs if r.topic == HOLD]
    stage.committed(idle)
    kinds = [_headers(r)[H_ENTRY] for r in log]
    assert kinds == [b"hold", b"open", b"hold", b"close"]
    entries = [stage.parse(0, (r.key, r.value, r.headers, r.timestamp_ms or 0)) for r in log]
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    held = entries[0].item  # type: ignore[union-attr]
    assert held.topic == SPF and held.key == b"ref-0" and held.route_key == b"route-ref-0"
    assert held.timestamp_ms == DAY and dict(held.headers) == {"policy.recipient": b"spf"}
    with pytest.raises(HoldLogError, match="unknown kind"):
        stage.parse(0, (None, b"{}", [(H_ENTRY, b"odd"), ("smallcell.seq", b"1"), ("smallcell.window", b"0")], 0))
    with pytest.raises(HoldLogError):
        stage.parse(0, (None, b"x", [(H_ENTRY, b"open")], 0))


def test_the_checkpoint_and_the_audit_head_share_the_offset_metadata() -> None:
    """Batch.positions joins the audit head and the checkpoint; each side reads back its own part."""
    head = ChainHead(12, b"\x01" * 32)
    batch = Batch(next={(INGRESS, 0): 5, (INGRESS, 1): 9})
    positions = batch.positions(
        {0: head}, {0: Checkpoint(3, None, DAY).render(), 1: Checkpoint(0, None, None).render()}
    )
    by_partition = {tp.partition: tp for tp in positions}
    assert committed_head(by_partition[0].metadata) == head
    assert Checkpoint.parse(metadata_part(by_partition[0].metadata, "kanon1:")) == Checkpoint(3, None, DAY)
    assert by_partition[1].metadata == "kanon1:0::" and committed_head(by_partition[1].metadata) is None
    assert batch.positions()[0].metadata is None or batch.positions()[0].metadata == ""
    assert isinstance(positions[0], TopicPartition)


def test_the_hold_topic_is_the_processors_alone_and_partitioned_like_the_ingress(policy_set: PolicySet) -> None:
    """ACL: only the processor reads and writes the hold topic; it has one partition per ingress partition
    and the agency topics' retention; the worker refuses a hold topic with fewer partitions."""
    settings = Settings(topic_prefix="t.", ingress_partitions=4)
    (hold,) = hold_topics(settings, policy_set)
    assert hold == "t.screening.spf.hold.v1"
    rules = [r for r in acl_plan(settings, policy_set) if r.name == hold]
    assert {(r.principal, r.operation) for r in rules} == {(PROCESSOR, "READ"), (PROCESSOR, "WRITE")}
    spec = next(s for s in topic_specs(settings, [], [hold]) if s.name == hold)
    assert spec.partitions == 4 and spec.configs["retention.ms"] == str(14 * DAY)
    stage = build_small_cells(settings, InMemorySchemaRegistry(), policy_set)
    assert stage is not None
    with pytest.raises(ConfigError, match="one partition per ingress partition"):
        check_hold_partitions(stage, {settings.ingress_topic: 4, hold: 3})
    check_hold_partitions(stage, {settings.ingress_topic: 4, hold: 4})


def test_the_stage_needs_exactly_once_and_a_window_no_longer_than_the_policy(policy_set: PolicySet) -> None:
    """At least once would count re-delivered views twice: refused. SCREENING_KANON_WINDOW_S shortens the
    window (a 60 s window with a 5 s grace here) but may not lengthen it."""
    registry = InMemorySchemaRegistry()
    with pytest.raises(ConfigError, match="exactly_once"):
        build_small_cells(Settings(processing_guarantee="at_least_once"), registry, policy_set)
    stage = build_small_cells(Settings(kanon_window_s=60, kanon_grace_s=5), registry, policy_set)
    assert stage is not None and stage.ladder.window_ms == 60_000 and stage.ladder.grace_ms == 5000
    with pytest.raises(ConfigError, match="at most the policy's 1d"):
        build_small_cells(Settings(kanon_window_s=2 * 86_400), registry, policy_set)
    unguarded = PolicySet(tuple(p for p in policy_set.policies if p.recipient != "spf"), policy_set.input_schema)
    assert build_small_cells(Settings(), registry, unguarded) is None


def test_one_window_closes_per_transaction(policy_set: PolicySet) -> None:
    """Two partitions' windows due at once close in two transactions (each bounded by one window's views):
    the stage stays due after the first and adds only that partition's offset to the batch."""
    clock = Clock(10 * DAY)
    stage = _stage(policy_set, clock)
    _run(stage, _work(stage, [(0, _view(0))], partition=0))
    _run(stage, _work(stage, [(0, _view(1))], partition=1))
    clock.now = 11 * DAY + 600_000
    first = Batch()
    stage.apply(first, [])
    stage.committed(first)
    assert first.next == {(INGRESS, 0): 1} and stage.due([0, 1])
    second = Batch()
    stage.apply(second, [])
    stage.committed(second)
    assert second.next == {(INGRESS, 1): 1} and not stage.due([0, 1]) and stage.stats.suppressed == 2


def test_a_failed_checkpoint_read_never_rebuilds_a_partition_empty(policy_set: PolicySet) -> None:
    """sync() on a per-partition error from committed(): raise (the runner rewinds and retries)
    instead of rebuilding without the checkpoint, which would lose the open windows' held views."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, KafkaException

    stage = _stage(policy_set, Clock(10 * DAY))

    class FailingConsumer:
        def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
            error = KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
            return [
                SimpleNamespace(topic=p.topic, partition=p.partition, offset=-1001, error=error) for p in partitions
            ]

    with pytest.raises(KafkaException):
        stage.sync(FailingConsumer(), [0], 1.0)
    assert stage.missing([0]) == [0], "not rebuilt: still to do"


def _audited(policy_set: PolicySet, **kw: Any) -> tuple[SmallCellStage, AuditKeys]:
    keys = AuditKeys(bytes(range(32)))
    option = _spf(policy_set).k_anonymity
    assert option is not None
    k = kw.get("k") or option.k
    from dataclasses import replace

    ladder = Ladder.of(replace(option, k=k), grace_ms=600_000)
    return _stage(policy_set, audit=StageAudit(keys, "spf", ladder), **kw), keys


def test_an_audited_stage_marks_held_decisions_and_audits_each_release_once(policy_set: PolicySet) -> None:
    """Auditing, k=5: the four held views' decisions say held (pointing at their hold records, which carry the
    sealed lineage); when the fifth opens the class, the batch's drafts gain one release record per held view
    (step 0, the held view's own source and reference) pointing at its released SPF record; the fifth's own
    decision stays delivered at its SPF record. Nothing is audited twice."""
    clock = Clock(10 * DAY + 1000)
    stage, _ = _audited(policy_set, clock=clock)
    work = _work(stage, [(i, _view(i)) for i in range(4)], partition=2)
    batch = _batch(work)
    batch.audits = [_draft(i, 2 * i + 1) for i in range(4)]
    stage.rebuild(2, 0, None)
    out = _flat(stage.apply(batch, work))
    stage.committed(batch)
    assert [(d.decisions[0].delivered, d.decisions[0].reason, d.decisions[0].output) for d in batch.audits] == [
        (False, HELD_REASON, 4 + i) for i in range(4)
    ]
    assert all(_headers(r).get(H_AUDIT) for r in out[4:]) and all(r.topic == HOLD for r in out[4:])
    work2 = _work(stage, [(4, _view(4))], partition=2)
    batch2 = _batch(work2)
    batch2.audits = [_draft(4, 1)]
    out2 = _flat(stage.apply(batch2, work2))
    own, *fates = batch2.audits
    assert own.decisions[0].delivered and out2[own.decisions[0].output or 0].key == b"ref-4"
    assert [f.source for f in fates] == [(INGRESS, 2, i) for i in range(4)]
    assert [f.audit_ref for f in fates] == [f"a{i}" for i in range(4)]
    for fate in fates:
        assert fate.small_cell is not None and fate.small_cell.released and fate.small_cell.step == 0
        (decision,) = fate.decisions
        released = out2[decision.output or 0]
        assert released.topic == SPF and released.key == f"ref-{fate.source[2]}".encode()
        assert _headers(released)[H_STEP] == b"0" and decision.delivered and decision.fields == ("event_ref",)
    stage.committed(batch2)
    work3 = _work(stage, [(5, _view(5))], partition=2)
    batch3 = _batch(work3)
    batch3.audits = [_draft(5, 1)]
    stage.apply(batch3, work3)
    assert len(batch3.audits) == 1 and batch3.audits[0].decisions[0].delivered


def test_a_new_owner_audits_the_close_of_views_held_before_it(policy_set: PolicySet) -> None:
    """Auditing, k=2: views held by a first owner are rebuilt by a second from the hold log (lineage
    included); its idle close writes, in the close's own batch, a step-1 release record for each of the two
    department-alone views (department withheld, pointing at the generalised SPF records) and a
    small_cell suppression record for the lone 2A view, each naming the held view's source."""
    clock = Clock(10 * DAY)
    first, _ = _audited(policy_set, clock=clock, k=2)
    log: list[OutputRecord] = []
    views = [(0, _view(0, "75")), (1, _view(1, "77")), (2, _view(2, "2A", "94"))]
    work = _work(first, views)
    batch = _batch(work)
    batch.audits = [
        PendingAudit((INGRESS, 0, i), f"a{i}", f"p{i}", "P", "DELIVERED", None, d.decisions, 0)
        for i, d in ((i, _draft(i, 2 * i + 1)) for i in range(3))
    ]
    first.rebuild(0, 0, None)
    log += [r for r in _flat(first.apply(batch, work)) if r.topic == HOLD]
    first.committed(batch)
    second, _ = _audited(policy_set, clock=clock, k=2, reader=LogReader(log))
    second.rebuild(0, 3, first.metadata(0))
    clock.now = 11 * DAY + 600_000
    idle = Batch()
    out = _flat(second.apply(idle, []))
    released = [a for a in idle.audits if a.small_cell is not None and a.small_cell.released]
    suppressed = [a for a in idle.audits if a.small_cell is not None and not a.small_cell.released]
    assert len(idle.audits) == 3 and [a.source[2] for a in released] == [0, 1]
    for fate in released:
        assert fate.small_cell is not None and fate.small_cell.step == 1
        assert fate.small_cell.withheld == ("department",) and fate.person == f"p{fate.source[2]}"
        record = out[fate.decisions[0].output or 0]
        assert record.topic == SPF and _headers(record)[H_STEP] == b"1"
        assert record.key == f"ref-{fate.source[2]}".encode()
    (gone,) = suppressed
    assert gone.source == (INGRESS, 0, 2) and gone.decisions[0].output is None
    assert gone.small_cell is not None and gone.small_cell.reason == "small_cell" and gone.outcome == "NOT_DELIVERED"
