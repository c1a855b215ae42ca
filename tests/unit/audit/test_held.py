"""Unit tests of the audit records of small-cell holds (streams.audit.held) and of the evolved contract:
a held decision, its lineage token, the release and suppression records, their chain, and the index's answers."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest

from streams.assembly import audit_schema
from streams.audit.chain import AuditWriter, ChainHead, verify_chain
from streams.audit.decisions import DELIVERED, HOUR_MS, NOT_DELIVERED, PendingAudit, PendingDecision
from streams.audit.held import HELD_REASON, HeldAudit
from streams.audit.index import AuditIndex
from streams.audit.keys import AuditKeys, AuditSealError
from streams.contracts.schemas import strip_logical_types
from streams.contracts.wire import frame

SECRET = bytes(range(32))
HOUR = 1_601_510_400_000
INGRESS = "screening.results.v1"
FIELDS = ("event_ref", "pseudonym", "department", "region", "sampled_on", "sampled_week", "collective_housing")


def _previous_contract() -> dict[str, Any]:
    """The audit contract as it was before ``small_cell`` (the field removed: nothing else changed)."""
    schema = audit_schema()
    return {**schema, "fields": [f for f in schema["fields"] if f["name"] != "small_cell"]}


def _draft(offset: int, *, cnam: bool) -> PendingAudit:
    spf = PendingDecision("spf", "spf", True, "delivered", FIELDS, "k1", "spf-v1", 1)
    other = PendingDecision(
        "cnam", "cnam" if cnam else None, cnam, "delivered" if cnam else "filtered out", (), None, "c"
    )
    person = f"person-{offset}"
    return PendingAudit((INGRESS, 3, offset), f"ref-{offset}", person, "P", DELIVERED, None, (other, spf), HOUR + 5)


def _writer(keys: AuditKeys) -> AuditWriter:
    return AuditWriter(keys, audit_schema(), frame(9, b""))


def test_a_held_decision_is_not_delivered_and_the_record_outcome_follows() -> None:
    """held(): the guarded recipient's decision says held (no fields, its output, the hold record, kept);
    the record stays DELIVERED when another recipient got it, becomes NOT_DELIVERED when none did."""
    both, alone = _draft(0, cnam=True), _draft(1, cnam=False)
    marked = HeldAudit.held(both, "spf")
    spf = marked.decisions[1]
    assert (spf.delivered, spf.reason, spf.fields, spf.output) == (False, HELD_REASON, (), 1)
    assert marked.decisions[0] == both.decisions[0] and marked.outcome == DELIVERED
    assert HeldAudit.held(alone, "spf").outcome == NOT_DELIVERED


def test_the_lineage_token_opens_only_with_the_audit_secret_and_holds_no_reference_in_clear() -> None:
    """The token round-trips the held decision's lineage; it shows neither the audit reference nor the
    person in clear, and another secret cannot open it."""
    keys = AuditKeys(SECRET)
    held = HeldAudit(keys)
    draft = _draft(4, cnam=True)
    lineage = held.lineage(draft, draft.decisions[1])
    token = held.seal(lineage)
    assert held.open(token) == lineage
    assert b"ref-4" not in token and b"person-4" not in token
    with pytest.raises(AuditSealError):
        HeldAudit(AuditKeys(bytes(32))).open(token)


def test_release_and_suppression_records_name_the_original_decision_and_chain() -> None:
    """A release at step 2 delivers the fields the step does not withhold, to its output; a suppression
    delivers nothing, reason small_cell; both carry the held view's source, reference and person, are
    chained after the batch's own records and verify."""
    keys = AuditKeys(SECRET)
    writer = _writer(keys)
    lineage = HeldAudit(keys).lineage(_draft(7, cnam=True), _draft(7, cnam=True).decisions[1])
    released = HeldAudit.released(lineage, HOUR, 2, ("department", "sampled_on"), 0, HOUR + 2 * HOUR_MS + 9)
    suppressed = HeldAudit.suppressed(lineage, HOUR, "small_cell", HOUR + 2 * HOUR_MS)
    assert released.source == suppressed.source == (INGRESS, 3, 7)
    (decision,) = released.decisions
    assert decision.delivered and decision.output == 0 and decision.reason == "released: small-cell step 2"
    assert "department" not in decision.fields and "region" in decision.fields
    assert released.processed_hour == HOUR + 2 * HOUR_MS and released.outcome == DELIVERED
    assert suppressed.outcome == NOT_DELIVERED and suppressed.decisions[0].reason == "suppressed: small_cell"
    first = HeldAudit.held(_draft(8, cnam=True), "spf")
    records = [writer.record(d, [("spf.topic", 0, 41), ("hold", 3, 5)]) for d in (first, released, suppressed)]
    values, head = writer.chain(records, ChainHead())
    assert head.next_seq == 3 and verify_chain(writer, 3, enumerate(values)) == (3, [])
    decoded = [writer.decode(v) for v in values]
    assert decoded[0]["small_cell"] is None
    assert decoded[1]["small_cell"] == {
        "released": True,
        "window": HOUR,
        "step": 2,
        "withheld": ["department", "sampled_on"],
        "reason": None,
    }
    assert decoded[2]["small_cell"]["reason"] == "small_cell" and decoded[2]["small_cell"]["step"] is None
    where = keys.unseal(decoded[1]["recipients"][0]["sealed_location"], b"ref-7|spf")
    assert where == "spf.topic:0:41"
    assert keys.unseal(decoded[1]["sealed_source"], b"ref-7|source") == f"{INGRESS}:3:7"


def test_the_contract_change_is_compatible_both_ways() -> None:
    """Forward (the registry's FORWARD_TRANSITIVE): a reader of the previous contract reads a release record
    (the new field ignored). Backward: a record of the previous contract in the same chain is read by its
    writer schema (the frame's id, looked up), gets small_cell null, and the mixed chain verifies."""
    keys = AuditKeys(SECRET)
    old = _previous_contract()
    lineage = HeldAudit(keys).lineage(_draft(1, cnam=True), _draft(1, cnam=True).decisions[1])
    new_writer = _writer(keys)
    release = new_writer.record(HeldAudit.released(lineage, HOUR, 1, ("department",), 0, HOUR), [("s", 0, 1)])
    (value,), head = new_writer.chain([release], ChainHead())
    parsed_old = fastavro.parse_schema(strip_logical_types(old))
    parsed_new = fastavro.parse_schema(strip_logical_types(audit_schema()))
    read = fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed_new, parsed_old)
    assert isinstance(read, dict) and "small_cell" not in read and read["seq"] == 0
    old_writer = AuditWriter(keys, old, frame(8, b""))
    legacy = old_writer.record(_draft(2, cnam=True), [("s", 0, 2), ("s", 0, 3)])
    legacy.pop("small_cell")
    (old_value,), _ = old_writer.chain([legacy], head)
    reader = AuditWriter(keys, audit_schema(), b"", {8: json.dumps(old), 9: json.dumps(audit_schema())}.__getitem__)
    assert reader.decode(old_value)["small_cell"] is None and reader.decode(old_value)["seq"] == 1
    assert verify_chain(reader, 0, enumerate([value, old_value])) == (2, [])


def test_the_index_answers_how_a_held_view_finally_left(tmp_path: Any) -> None:
    """who_received lists a released held view once, at its release hour, with its step and released fields;
    held() gives each held view's fate (released at a step, suppressed, still held); summary counts each
    view once; undelivered names a suppressed view that no other recipient got."""
    keys = AuditKeys(SECRET)
    writer = _writer(keys)
    drafts = [HeldAudit.held(_draft(i, cnam=i != 2), "spf") for i in range(3)]
    lineages = [HeldAudit(keys).lineage(_draft(i, cnam=True), _draft(i, cnam=True).decisions[1]) for i in range(3)]
    later = HOUR + 3 * HOUR_MS
    fates = [
        HeldAudit.released(lineages[0], HOUR, 1, ("department",), 3, later),
        HeldAudit.suppressed(lineages[2], HOUR, "small_cell", later),
    ]
    locations = [("cnam", 0, 0), ("hold", 3, 0), ("cnam", 0, 1), ("spf", 0, 0)]
    values, _ = writer.chain((writer.record(d, locations) for d in [*drafts, *fates]), ChainHead())
    index = AuditIndex(tmp_path / "i.sqlite")
    index.ingest(3, [(o, writer.decode(v)) for o, v in enumerate(values)])
    spf = [d for d in index.who_received("person-0") if d.recipient == "spf"]
    assert [(d.step, d.hour_ms) for d in spf] == [(1, later)] and "department" not in spf[0].fields
    assert not [d for d in index.who_received("person-2") if d.recipient == "spf"]
    fates_by_person = {p: [(h.fate, h.step) for h in index.held(f"person-{p}")] for p in range(3)}
    assert fates_by_person == {0: [("released", 1)], 1: [("held", None)], 2: [("suppressed", None)]}
    assert index.summary(HOUR)["spf"] == {"delivered": 1, "filtered": 0, "dead_lettered": 0, "held": 1, "suppressed": 1}
    (lost,) = index.undelivered(HOUR)
    assert lost["audit_ref"] == "ref-2" and lost["why"] == "suppressed: small_cell"
    story = index.event("ref-0")
    assert [r["small_cell"] is not None for r in story] == [False, True]


def test_a_registry_outage_stops_the_read_instead_of_guessing_the_shape() -> None:
    """Review finding: a writer-schema lookup failing for an outage raises RegistryUnavailable (verify, index and
    the worker's tail rebuild then stop or retry) and is not remembered: once the registry answers, the same
    record of the previous contract reads by its writer schema."""
    import pytest

    from streams.errors import RegistryUnavailable

    keys = AuditKeys(SECRET)
    old = _previous_contract()
    old_writer = AuditWriter(keys, old, frame(8, b""))
    legacy = old_writer.record(_draft(2, cnam=True), [("s", 0, 2), ("s", 0, 3)])
    legacy.pop("small_cell")
    (old_value,), _ = old_writer.chain([legacy], ChainHead())
    down = [True]

    def lookup(schema_id: int) -> str:
        if down[0]:
            raise RegistryUnavailable("registry down")
        return json.dumps(old)

    reader = AuditWriter(keys, audit_schema(), b"", lookup)
    with pytest.raises(RegistryUnavailable):
        reader.decode(old_value)
    with pytest.raises(RegistryUnavailable):
        verify_chain(reader, 0, enumerate([old_value]))
    down[0] = False
    assert reader.decode(old_value)["small_cell"] is None
    assert verify_chain(reader, 0, enumerate([old_value])) == (1, [])
