"""The direct audit encoder writes exactly fastavro's bytes, and is used only when it does."""

from __future__ import annotations

import hashlib
import io
import itertools
from typing import Any

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.assembly import audit_schema
from streams.audit.chain import AuditWriter, ChainHead, verify_chain
from streams.audit.decisions import (
    DEAD_LETTERED,
    DELIVERED,
    NOT_DELIVERED,
    PendingAudit,
    PendingDecision,
    SmallCellFate,
)
from streams.audit.encoding import MEMO_SIZE, AuditEncoder, long_bytes
from streams.audit.keys import AuditKeys
from streams.contracts.schemas import strip_logical_types

PREFIX = b"\x00\x00\x00\x00\x07"
SECRET = hashlib.sha256(b"encoding test").digest()
text = st.text(max_size=12)
maybe = st.none() | text


def _writer(schema: dict[str, Any] | None = None) -> AuditWriter:
    counter = itertools.count()
    keys = AuditKeys(SECRET, nonce=lambda n: next(counter).to_bytes(n, "big"))  # same nonces on both paths
    return AuditWriter(keys, schema or audit_schema(), PREFIX)


decisions = st.builds(
    PendingDecision,
    text,
    maybe,
    st.booleans(),
    text,
    st.lists(text, max_size=4).map(tuple),
    maybe,
    text,
    st.none() | st.integers(0, 3),
)
fates = st.none() | st.builds(
    SmallCellFate,
    st.booleans(),
    st.integers(-(1 << 62), 1 << 62),
    st.none() | st.integers(-(1 << 31), (1 << 31) - 1),
    st.lists(text, max_size=3).map(tuple),
    maybe,
)
drafts = st.builds(
    PendingAudit,
    st.tuples(text, st.integers(0, 1000), st.integers(0, 1 << 40)),
    text,
    maybe,
    maybe,
    st.sampled_from((DELIVERED, NOT_DELIVERED, DEAD_LETTERED)),
    maybe,
    st.lists(decisions, max_size=5).map(tuple),
    st.integers(-(1 << 62), 1 << 62),
    fates,
)
locations = st.lists(st.none() | st.tuples(text, st.integers(0, 50), st.integers(0, 1 << 40)), min_size=4, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(drafts, max_size=6), locations, st.integers(0, 1 << 40), st.binary(min_size=32, max_size=32))
def test_direct_encoding_is_fastavros_byte_for_byte(
    batch: list[PendingAudit], where: list, seq: int, mac: bytes
) -> None:
    """Over random drafts (every union branch, outcome, empty and full arrays, big and negative
    longs, non-ASCII text), chain_drafts returns the values record + chain (fastavro) return."""
    fast, slow = _writer(), _writer()
    assert fast._fast is not None
    slow._fast = None
    head = ChainHead(seq, mac)
    assert fast.chain_drafts(batch, where, head) == slow.chain_drafts(batch, where, head)


def test_direct_values_verify_and_decode() -> None:
    """Records written by the direct encoder decode with fastavro and pass the chain check."""
    writer = _writer()
    d = PendingDecision("cnam", "cnam", True, "delivered", ("nir", "name"), "k", "v1", 0)
    draft = PendingAudit(("ingress", 2, 9), "ref", "person", "P", DELIVERED, None, (d,), 3_600_000)
    values, head = writer.chain_drafts([draft, draft], [("cnam.topic", 1, 5)], ChainHead())
    checked, problems = verify_chain(writer, 2, enumerate(values))
    assert (checked, problems, head.next_seq) == (2, [], 2)
    assert writer.decode(values[1])["recipients"][0]["fields"] == ["nir", "name"]


def test_another_contract_keeps_fastavro() -> None:
    """A contract the direct encoder does not write (here without small_cell) is encoded by fastavro."""
    schema = audit_schema()
    older = {**schema, "fields": [f for f in schema["fields"] if f["name"] != "small_cell"]}
    writer = _writer(older)
    assert writer._fast is None
    draft = PendingAudit(("ingress", 0, 1), "ref", None, None, DEAD_LETTERED, "undecodable", (), 0)
    (value,), _ = writer.chain_drafts([draft], [], ChainHead())
    parsed = fastavro.parse_schema(strip_logical_types(older))
    assert fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed, None)["dead_letter_code"] == "undecodable"


def test_long_bytes_matches_avro_zigzag() -> None:
    """The varint of small, large and negative longs is Avro's (checked against fastavro)."""
    for n in (0, 1, -1, 63, 64, -64, -65, 1 << 31, -(1 << 63), (1 << 63) - 1):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, "long", n)
        assert long_bytes(n) == buffer.getvalue(), n


def test_decision_memo_is_bounded() -> None:
    """The memo of decision encodings never grows past MEMO_SIZE entries."""
    encoder = AuditEncoder()
    for i in range(MEMO_SIZE + 10):
        d = PendingDecision(f"r{i}", None, False, "filtered out", (), None, "v")
        encoder.body(PendingAudit(("t", 0, 0), "r", None, None, NOT_DELIVERED, None, (d,), 0), [None], b"", 0, b"")
    assert 0 < len(encoder._memo) <= MEMO_SIZE


def test_filtered_decisions_follow_their_condition_even_when_ids_are_reused() -> None:
    """The Auditor's memo of filtered-out decisions is keyed by the live condition: conditions
    built afresh for each event (ids reused once freed) still get their own reason."""
    from streams.audit.decisions import Auditor
    from streams.policy.model import Condition

    policy = type("P", (), {"recipient": "ars", "version": "v1"})()

    class Fresh:
        policies = (policy,)

        def excluded_by(self, _policy: object, event: dict[str, Any]) -> Condition:
            return Condition("result", frozenset({event["want"]}), False)

    auditor = Auditor(AuditKeys(SECRET), Fresh())  # type: ignore[arg-type]
    for i in range(50):
        decision = auditor._filtered(policy, Fresh().excluded_by(policy, {"want": f"R{i}"}))  # type: ignore[arg-type]
        assert f"R{i}" in decision.reason


def test_remapped_keeps_the_small_cell_fate_and_returns_an_unmoved_draft_itself() -> None:
    """remapped() moves delivered entries, keeps small_cell, and returns the same draft when nothing moves."""
    from streams.pipeline import remapped

    fate = SmallCellFate(True, 0, 1, ("department",))
    d = PendingDecision("spf", "spf", True, "released at step 1", ("a",), None, "v", 2)
    draft = PendingAudit(("t", 0, 1), "r", "p", "P", DELIVERED, None, (d,), 0, fate)
    moved = remapped(draft, {2: 5})
    assert moved.small_cell == fate and moved.decisions[0].output == 5
    assert remapped(draft, {2: 2}) is draft
