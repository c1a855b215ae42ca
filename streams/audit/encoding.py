"""The Avro binary encoding of ``screening.audit.v1`` records, written directly (the hot path).

fastavro encodes a decision record from a dict in ~20 µs: most of it walking the nested
recipients. Here the body is assembled from bytes: a recipient's decision without its sealed
location (recipient, agency, delivered, reason, fields, key id, policy version) repeats across
records, so its encoding is memoised in a bounded table, and only what changes per record is
encoded each time. :class:`~streams.audit.chain.AuditWriter` uses it only when, at start, it
writes the same bytes as fastavro with the writer's schema for a set of sample records covering
every branch (:data:`SAMPLES`); for any other contract (older, newer) it keeps fastavro. A
property test pins byte equality with fastavro over random drafts.
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.audit.decisions import (
    DEAD_LETTERED,
    DELIVERED,
    NOT_DELIVERED,
    PendingAudit,
    PendingDecision,
    SmallCellFate,
)

#: Enum ``Outcome`` in the contract's order.
_OUTCOME = {DELIVERED: b"\x00", NOT_DELIVERED: b"\x02", DEAD_LETTERED: b"\x04"}
_SMALL = [bytes([(n << 1) & 0xFF]) if n < 64 else b"" for n in range(64)]
_NULL, _SOME = b"\x00", b"\x02"
#: Bound of the memo of decision encodings (reset when full: it refills from the next records).
MEMO_SIZE = 4096


def long_bytes(n: int) -> bytes:
    """Avro ``long``/``int``: zig-zag, then a little-endian base-128 varint."""
    if 0 <= n < 64:
        return _SMALL[n]
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def string_bytes(text: str) -> bytes:
    """Avro ``string``: its UTF-8 length, then the bytes."""
    raw = text.encode()
    return long_bytes(len(raw)) + raw


def raw_bytes(value: bytes) -> bytes:
    """Avro ``bytes``: the length, then the bytes."""
    return long_bytes(len(value)) + value


def optional_string(text: str | None) -> bytes:
    """Union ``["null", "string"]``."""
    return _NULL if text is None else _SOME + string_bytes(text)


def string_array(items: Sequence[str]) -> bytes:
    """Array of strings in one block (an empty array is the single terminating 0)."""
    if not items:
        return _NULL
    return long_bytes(len(items)) + b"".join(string_bytes(s) for s in items) + _NULL


class AuditEncoder:
    """Writes audit bodies; memoises each decision's encoding without its sealed location."""

    def __init__(self) -> None:
        """Start with an empty memo."""
        self._memo: dict[tuple[object, ...], bytes] = {}

    def _decision(self, d: PendingDecision) -> bytes:
        key = (d.recipient, d.agency, d.delivered, d.reason, tuple(d.fields), d.key_id, d.policy_version)
        cached = self._memo.get(key)
        if cached is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            cached = self._memo[key] = b"".join(
                (
                    string_bytes(d.recipient),
                    optional_string(d.agency),
                    b"\x01" if d.delivered else b"\x00",
                    string_bytes(d.reason),
                    string_array(d.fields),
                    optional_string(d.key_id),
                    string_bytes(d.policy_version),
                )
            )
        return cached

    def body(
        self,
        draft: PendingAudit,
        sealed_locations: Sequence[bytes | None],
        sealed_source: bytes,
        seq: int,
        prev_mac: bytes,
    ) -> bytes:
        """The record's body with an empty ``mac`` (what the chain MAC covers), as fastavro writes it.

        ``sealed_locations[i]`` is the sealed location of ``draft.decisions[i]`` (None: not delivered).
        """
        decisions = draft.decisions
        parts = [
            string_bytes(draft.audit_ref),
            optional_string(draft.person),
            long_bytes(draft.processed_hour),
            _OUTCOME[draft.outcome],
            optional_string(draft.dead_letter_code),
            optional_string(draft.processing_mode),
        ]
        if decisions:
            parts.append(long_bytes(len(decisions)))
            for d, sealed in zip(decisions, sealed_locations, strict=True):
                parts.append(self._decision(d))
                parts.append(_NULL if sealed is None else _SOME + raw_bytes(sealed))
        parts.append(_NULL)
        parts.append(raw_bytes(sealed_source))
        fate = draft.small_cell
        if fate is None:
            parts.append(_NULL)
        else:
            parts += (
                _SOME,
                b"\x01" if fate.released else b"\x00",
                long_bytes(fate.window),
                _NULL if fate.step is None else _SOME + long_bytes(fate.step),
                string_array(fate.withheld),
                optional_string(fate.reason),
            )
        parts += (long_bytes(seq), raw_bytes(prev_mac), _NULL)
        return b"".join(parts)


def _samples() -> tuple[tuple[PendingAudit, tuple[bytes | None, ...]], ...]:
    """Drafts (with sealed locations) that exercise every union branch, enum symbol and array shape."""
    src = ("t", 0, 1)
    got = PendingDecision("cnam", "cnam", True, "delivered", ("a", "b\u00e9"), "k1", "v1", 0)
    bare = PendingDecision("ars", None, False, "filtered out", (), None, "v2")
    held = PendingDecision("spf", "spf", False, "held", (), None, "v3", 1)
    fates = (
        SmallCellFate(True, 3_600_000, 2, ("department",)),
        SmallCellFate(False, -5, None, (), "small_cell"),
    )
    return (
        (PendingAudit(src, "r" * 70, "p", "P", DELIVERED, None, (got, bare, held), 1 << 40), (b"x" * 40, None, None)),
        (PendingAudit(src, "", None, None, DEAD_LETTERED, "undecodable", (bare,), 0), (None,)),
        (PendingAudit(src, "r", "p", "T", NOT_DELIVERED, None, (), 7), ()),
        (PendingAudit(src, "r", "p", "P", DELIVERED, None, (got,), 3, fates[0]), (b"y" * 200,)),
        (PendingAudit(src, "r", None, "D", NOT_DELIVERED, None, (bare,), 3, fates[1]), (None,)),
    )


#: Sample drafts and sealed locations for the start-up check against fastavro (every branch).
SAMPLES = _samples()
