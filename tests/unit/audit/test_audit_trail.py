"""Unit tests of the audit trail (streams.audit): drafts, chained records, tamper evidence, no identifiers."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import pytest

from streams.assembly import audit_schema, load_policy_set
from streams.audit.chain import AuditWriter, ChainHead, head_of, location_text, verify_chain
from streams.audit.decisions import DEAD_LETTERED, DELIVERED, NOT_DELIVERED
from streams.audit.keys import AuditKeys, AuditSealError
from streams.contracts.wire import frame
from streams.crypto.views import is_key_topic
from streams.pipeline import InputRecord
from streams.settings import Settings

FIXED = 1_601_510_400_000 + 1_234_567  # the conftest's clock
POLICY_SET = load_policy_set(Settings())
IDENTIFYING = ("nir", "last_name", "first_names", "phone", "email", "postcode", "city")


def test_one_decision_record_per_input_with_one_entry_per_recipient(trail: Any, make_events: Any) -> None:
    """Every input gets exactly one draft naming every recipient, delivered or not."""
    events = make_events(300)
    batch = trail.pipeline.process_batch(trail.inputs(events))
    assert len(batch.audits) == len(events)
    recipients = sorted(p.recipient for p in POLICY_SET.policies)
    for draft in batch.audits:
        assert sorted(d.recipient for d in draft.decisions) == recipients


def test_delivered_entries_point_at_their_own_outputs_and_list_only_fields_with_a_value(
    trail: Any, make_events: Any
) -> None:
    """A delivered entry indexes the output of its agency; its fields are the view's non-null fields."""
    batch = trail.pipeline.process_batch(trail.inputs(make_events(300, seed=2)))
    delivered = 0
    for draft in batch.audits:
        for d in draft.decisions:
            if not d.delivered:
                assert d.output is None and d.fields == ()
                continue
            delivered += 1
            assert d.output is not None
            out = batch.outputs[d.output]
            assert dict(out.headers)["policy.agency"].decode() == d.agency
            assert d.agency is not None and d.agency.split(".")[0] == d.recipient
    views = [o for o in batch.outputs if not o.dead_letter and not is_key_topic(o.topic)]
    assert delivered == len(views) > 0  # every view is accounted for (key records are no views)


def test_filtered_recipients_name_the_rule_that_excluded_them(trail: Any, make_events: Any) -> None:
    """A negative production result is filtered out of CNAM by its result rule, named in the reason."""
    events = [e for e in make_events(400, seed=3) if e["result"] == "NEGATIVE" and e["processing_mode"] == "P"][:20]
    batch = trail.pipeline.process_batch(trail.inputs(events))
    for draft in batch.audits:
        assert draft.outcome == DELIVERED  # SPF receives every production result
        cnam = next(d for d in draft.decisions if d.recipient == "cnam")
        assert not cnam.delivered and cnam.reason == "filtered out: requires result in {POSITIVE}"


def test_test_mode_events_are_not_delivered_and_dead_letters_carry_their_code(trail: Any, make_events: Any) -> None:
    """A mode T event reaches nobody (NOT_DELIVERED); garbage is DEAD_LETTERED with its code for everyone."""
    test_mode = next(e for e in make_events(400, seed=4) if e["processing_mode"] == "T")
    records = [*trail.inputs([test_mode]), InputRecord(trail.settings.ingress_topic, 0, 99, None, b"garbage")]
    batch = trail.pipeline.process_batch(records)
    assert batch.audits[0].outcome == NOT_DELIVERED
    assert batch.audits[1].outcome == DEAD_LETTERED and batch.audits[1].dead_letter_code == "not_framed"
    assert batch.audits[1].person is None
    assert {d.reason for d in batch.audits[1].decisions} == {"dead-lettered: not_framed"}


def test_audit_values_hold_no_identifying_value_and_no_agency_identifier(trail: Any, make_events: Any) -> None:
    """No NIR, name, contact value, agency pseudonym or agency event_ref appears in any audit value."""
    events = make_events(1_000, seed=5)
    values, _, batch = trail.audit_values(events)
    blob = b"\n".join(values)
    needles: set[bytes] = set()
    for e in events:
        needles.update(str(e[f]).encode() for f in IDENTIFYING if e.get(f))
        needles.update(str(line).encode() for line in (e.get("address_lines") or []))  # type: ignore[attr-defined]
        needles.add(str(e["event_id"]).encode())
    for out in batch.outputs:
        if out.key:
            needles.add(out.key)  # event_ref of that agency
    needles = {n for n in needles if len(n) >= 6}  # shorter values would match random bytes
    assert len(needles) > 5 * len(events)
    leaked = [n for n in needles if n in blob]
    assert not leaked, leaked[:3]
    for record in (trail.writer.decode(v) for v in values):
        assert record["person"] is None or len(record["person"]) == 20


def test_audit_person_reference_differs_from_every_agency_pseudonym(trail: Any, make_events: Any) -> None:
    """The audit pseudonym of a person is not any agency's pseudonym of them (no shared identifier)."""
    events = make_events(200, seed=6)
    values, _, batch = trail.audit_values(events)
    agency_pseudonyms: set[str] = set()
    for out in batch.outputs:
        if out.value:
            agency_pseudonyms.update(s for s in _strings(out.value) if len(s) == 20)
    persons = {trail.writer.decode(v)["person"] for v in values}
    assert persons and not persons & agency_pseudonyms


def _strings(value: bytes) -> list[str]:
    """Printable runs of 20+ characters in an Avro body (enough to find base64url pseudonyms)."""
    out, run = [], bytearray()
    for byte in value:
        if 33 <= byte < 127:
            run.append(byte)
            continue
        if len(run) >= 20:
            out.extend(bytes(run[i : i + 20]).decode() for i in range(len(run) - 19))
        run.clear()
    if len(run) >= 20:
        out.extend(bytes(run[i : i + 20]).decode() for i in range(len(run) - 19))
    return out


def test_sealed_locations_open_only_with_the_audit_secret_and_their_own_context(trail: Any, make_events: Any) -> None:
    """A delivered location unseals to the produced coordinates; another secret or context fails."""
    values, _, _ = trail.audit_values(make_events(50, seed=7))
    record = next(r for r in map(trail.writer.decode, values) if r["outcome"] == DELIVERED)
    entry = next(r for r in record["recipients"] if r["delivered"])
    aad = record["audit_ref"].encode() + b"|" + entry["recipient"].encode()
    text = trail.audit_keys.unseal(entry["sealed_location"], aad)
    topic, partition, offset = text.rsplit(":", 2)
    assert topic.endswith(".results.v1") and int(partition) == 0 and int(offset) >= 0
    with pytest.raises(AuditSealError):
        AuditKeys(hashlib.sha256(b"other").digest()).unseal(entry["sealed_location"], aad)
    with pytest.raises(AuditSealError):
        trail.audit_keys.unseal(entry["sealed_location"], aad + b"x")
    assert location_text(("t", 1, 2)) == "t:1:2"


def test_processing_time_is_kept_to_the_hour(trail: Any, make_events: Any) -> None:
    """The audit stores the processing hour, not the millisecond."""
    values, _, _ = trail.audit_values(make_events(5, seed=8))
    hours = {trail.writer.decode(v)["processed_hour"] for v in values}
    assert hours == {FIXED - FIXED % 3_600_000}


def _chain(trail: Any, make_events: Any, n: int, seed: int) -> list[bytes]:
    values, _, _ = trail.audit_values(make_events(n // 2, seed=seed))
    more, _, _ = trail.audit_values(make_events(n - n // 2, seed=seed + 100), head_of(trail.writer, values[-1]))
    return values + more


def _verify(trail: Any, values: Sequence[bytes | None]) -> list[tuple[int, str]]:
    _, problems = verify_chain(trail.writer, 0, list(enumerate(values)))
    return [(p.offset, p.kind) for p in problems]


def test_an_intact_chain_across_batches_verifies(trail: Any, make_events: Any) -> None:
    """Two batches chained through head_of(last value) verify with no problem."""
    values = _chain(trail, make_events, 60, seed=10)
    assert _verify(trail, values) == []
    assert [trail.writer.decode(v)["seq"] for v in values] == list(range(60))


def test_a_removed_record_is_named(trail: Any, make_events: Any) -> None:
    """Deleting one record yields a 'removed' problem at the next record's offset."""
    values = _chain(trail, make_events, 40, seed=11)
    tampered = values[:17] + values[18:]
    assert _verify(trail, tampered) == [(17, "removed")]


def test_reordered_records_are_named(trail: Any, make_events: Any) -> None:
    """Swapping two records is detected at the swap."""
    values = _chain(trail, make_events, 40, seed=12)
    tampered = list(values)
    tampered[10], tampered[11] = tampered[11], tampered[10]
    kinds = _verify(trail, tampered)
    assert (10, "removed") in kinds and (11, "reordered") in kinds


@pytest.mark.parametrize("seed", range(5))
def test_any_altered_byte_is_named(trail: Any, make_events: Any, seed: int) -> None:
    """Flipping one byte anywhere after the framing header of one record is caught at that record."""
    values = _chain(trail, make_events, 30, seed=20 + seed)
    rng = random.Random(seed)
    victim = rng.randrange(len(values))
    data = bytearray(values[victim])
    data[rng.randrange(5, len(data))] ^= 1 << rng.randrange(8)
    tampered: list[bytes | None] = list(values)
    tampered[victim] = bytes(data)
    problems = _verify(trail, tampered)
    assert problems and problems[0][0] == victim
    assert problems[0][1] in {"altered", "unreadable", "removed", "reordered"}


def test_a_forged_record_with_a_recomputed_plain_hash_is_rejected(trail: Any, make_events: Any) -> None:
    """Without the audit secret a rewritten record cannot carry a valid MAC."""
    values = _chain(trail, make_events, 10, seed=30)
    record = trail.writer.decode(values[4])
    record["outcome"] = "DEAD_LETTERED"
    forger = AuditWriter(AuditKeys(hashlib.sha256(b"attacker").digest()), audit_schema(), values[4][:5])
    forged, _ = forger.chain([record], ChainHead(record["seq"], bytes(record["prev_mac"])))
    tampered = [*values[:4], forged[0], *values[5:]]
    assert (4, "altered") in _verify(trail, tampered)


def test_an_expired_prefix_is_reported_as_a_start_not_as_tampering(trail: Any, make_events: Any) -> None:
    """A chain whose first records expired starts at seq n: informational 'start' only."""
    values = _chain(trail, make_events, 20, seed=31)
    assert _verify(trail, values[5:]) == [(0, "start")]


def test_an_aborted_batch_is_chained_again_from_the_old_head(trail: Any, make_events: Any) -> None:
    """chain() does not move the head: re-chaining after an abort yields a valid continuation."""
    first, head, _ = trail.audit_values(make_events(5, seed=32))
    _discarded, _, _ = trail.audit_values(make_events(5, seed=33), head)
    again, _, _ = trail.audit_values(make_events(5, seed=33), head)
    assert _verify(trail, first + again) == []


def test_unreadable_values_are_reported_not_raised(trail: Any, make_events: Any) -> None:
    """Tombstones and garbage in the audit topic are problems with their offset, never a crash."""
    values: list[bytes | None] = [*_chain(trail, make_events, 4, seed=34)]
    values.insert(2, None)
    values.insert(3, frame(1, b"\x01\x02"))
    kinds = _verify(trail, values)
    assert (2, "unreadable") in kinds and (3, "unreadable") in kinds


def test_a_lost_chain_head_is_rebuilt_from_the_audit_partitions_tail(trail: Any, make_events: Any) -> None:
    """Offsets committed without the head (a reset, expiry, a worker without the audit secret):
    the sink continues the chain from the partition's last verifying record, so the next batch
    verifies as one unbroken chain instead of restarting at seq 0 (a false "reordered")."""
    from streams.kafka.audit_io import AuditSink, head_metadata

    values, head, _ = trail.audit_values(make_events(30, seed=5), ChainHead())
    tails: list[int] = []

    def tail(partition: int) -> list[bytes]:
        tails.append(partition)
        return values[-5:]

    sink = AuditSink(trail.writer, "audit", tail)
    sink.adopt(0, "", committed=30)  # committed offset without metadata, right after the audited ones
    assert sink.heads_for([0]) == {0: head} and tails == [0] and sink.rebuilt == 1 and sink.gaps == 0
    more, _, _ = trail.audit_values(make_events(10, seed=6), sink.heads_for([0])[0])
    _, problems = verify_chain(trail.writer, 0, list(enumerate([*values, *more])))
    assert problems == []
    sink.adopt(1, "smallcell1:whatever " + head_metadata(head))  # a committed head is used as is
    assert sink.heads_for([1]) == {1: head} and tails == [0]
    empty = AuditSink(trail.writer, "audit", lambda p: [])
    empty.adopt(2, None)  # nothing committed anywhere: genesis
    assert empty.heads_for([2]) == {2: ChainHead()}
    broken = AuditSink(trail.writer, "audit", lambda p: [b"\x00garbage"])
    broken.adopt(3, None)  # an unreadable tail: restart (verify names it), never stall the partition
    assert broken.heads_for([3]) == {3: ChainHead()}


def test_a_forged_tail_record_cannot_set_the_head(trail: Any, make_events: Any) -> None:
    """A decodable record with a huge seq but no valid MAC at the tail is skipped: the head comes
    from the last record whose MAC verifies (otherwise every later record would look 'removed')."""
    from streams.kafka.audit_io import AuditSink

    values, head, _ = trail.audit_values(make_events(20, seed=7), ChainHead())
    forged = dict(trail.writer.decode(values[-1]))
    forged["seq"] = 10**9
    fake, _ = trail.writer.chain([forged], ChainHead(10**9, b"\x00" * 32))
    tampered = fake[0][:-1] + bytes([fake[0][-1] ^ 1])  # a MAC under some other key
    sink = AuditSink(trail.writer, "audit", lambda p: [*values[-3:], tampered])
    sink.adopt(0, None, committed=20)
    assert sink.heads_for([0]) == {0: head}


def test_offsets_committed_past_the_last_audit_record_are_reported_as_a_gap(
    trail: Any, make_events: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The rebuilt head's record audits ingress offset 19; the group committed 50: offsets 20..49
    went through without audit records (a worker without the secret): one gap, logged by offsets."""
    from streams.kafka.audit_io import AuditSink

    values, _, _ = trail.audit_values(make_events(20, seed=8), ChainHead())
    sink = AuditSink(trail.writer, "audit", lambda p: values[-2:])
    with caplog.at_level("WARNING"):
        sink.adopt(0, None, committed=50)
    assert sink.gaps == 1
    assert "offsets 20..49 were committed without audit records" in caplog.text
