"""Complete audit drafts into chained, sealed records, and verify a partition's chain.

Each audit partition has one writer at a time (the owner of the ingress partition of the same
number, fenced by the transactional producer), so its records form one chain: record ``n``
carries ``seq = n``, the MAC of record ``n - 1`` and its own MAC, an HMAC-SHA-256 under the
audit chain key over ``prev_mac`` and the record's Avro body encoded with an empty ``mac``.
Because ``mac`` is the contract's last field, that body is the stored value minus its last
33 bytes (length byte + 32-byte MAC) plus one zero byte: verification needs no re-encoding.

:func:`verify_chain` names each removed (a gap in ``seq``), reordered (``seq`` going back) or
altered (MAC or link mismatch) record by partition and offset. Records that expired by
retention are told apart from removed ones: a chain may start at any ``seq``; its first
record's link is unverifiable and is reported as such. Truncating the tail is not detectable
from the topic alone (compare the last ``seq`` with an exported checkpoint for that).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro

from streams.audit.decisions import Location, PendingAudit, SmallCellFate
from streams.audit.encoding import SAMPLES, AuditEncoder
from streams.audit.keys import AuditKeys
from streams.contracts.schemas import Schema, strip_logical_types
from streams.contracts.wire import MAGIC, unframe
from streams.errors import RegistryUnavailable

MAC_BYTES = 32
GENESIS = bytes(MAC_BYTES)
_MAC_TAIL = bytes([MAC_BYTES * 2])  # zig-zag varint of the length 32


@dataclass(frozen=True)
class ChainHead:
    """Where a partition's chain stands: the next ``seq`` and the last record's MAC."""

    next_seq: int = 0
    mac: bytes = GENESIS


def location_text(location: Location) -> str:
    """``topic:partition:offset``, the plaintext of a sealed location."""
    return f"{location[0]}:{location[1]}:{location[2]}"


class AuditWriter:
    """Encodes drafts as chained audit records (pure: the caller produces and commits them)."""

    def __init__(
        self,
        keys: AuditKeys,
        schema: Schema,
        frame_prefix: bytes,
        writer_schemas: Callable[[int], str] | None = None,
    ) -> None:
        """``frame_prefix`` is the Confluent header (magic byte + schema id) of the audit subject.

        ``writer_schemas`` (e.g. a registry's ``get_schema``) gives the schema a stored record was
        written with, by its frame's id: records of an earlier version of the contract (before a
        field was added) are then read by Avro schema resolution instead of as the current shape.
        Without it (or when a lookup fails) every record is read as the current shape.
        """
        self.keys = keys
        self._parsed = fastavro.parse_schema(strip_logical_types(schema))
        self._prefix = frame_prefix
        self._lookup = writer_schemas
        own = int.from_bytes(frame_prefix[1:5], "big") if len(frame_prefix) == 5 else None
        self._writers: dict[int, Any] = {} if own is None else {own: None}  # id -> parsed writer (None: current)
        self._fast = self._direct_encoder()

    def record(self, draft: PendingAudit, locations: Sequence[Location | None]) -> dict[str, Any]:
        """The audit record of ``draft``, with delivered coordinates sealed (chain fields left empty)."""
        sealed, source = self._seals(draft, locations)
        return _as_dict(draft, sealed, source)

    def _seals(self, draft: PendingAudit, locations: Sequence[Location | None]) -> tuple[list[bytes | None], bytes]:
        """Each decision's sealed delivery coordinates (None: not delivered), and the sealed source."""
        aad = draft.audit_ref.encode()
        seal = self.keys.seal
        sealed: list[bytes | None] = []
        for d in draft.decisions:
            where = locations[d.output] if d.output is not None else None
            sealed.append(seal(location_text(where), aad + b"|" + d.recipient.encode()) if where else None)
        return sealed, seal(location_text(draft.source), aad + b"|source")

    def chain(self, records: Iterable[dict[str, Any]], head: ChainHead) -> tuple[list[bytes], ChainHead]:
        """Encode ``records`` in order as the continuation of ``head``; return the values and the new head.

        ``head`` is not changed: the caller adopts the returned head only once the transaction
        holding these values has committed (an aborted batch is chained again from the old head).
        """
        values = []
        seq, prev = head.next_seq, head.mac
        for record in records:
            record["seq"], record["prev_mac"], record["mac"] = seq, prev, b""
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, self._parsed, record)
            body = buffer.getvalue()
            mac = self.keys.chain_mac(prev, body)
            values.append(self._prefix + body[:-1] + _MAC_TAIL + mac)
            seq, prev = seq + 1, mac
        return values, ChainHead(seq, prev)

    def chain_drafts(
        self, drafts: Iterable[PendingAudit], locations: Sequence[Location | None], head: ChainHead
    ) -> tuple[list[bytes], ChainHead]:
        """:meth:`record` then :meth:`chain`, with the direct encoder when it writes this contract.

        Byte for byte what the two would return (with the same nonces), in about a third of the time.
        """
        fast = self._fast
        if fast is None:
            return self.chain((self.record(d, locations) for d in drafts), head)
        values = []
        seq, prev = head.next_seq, head.mac
        for draft in drafts:
            sealed, source = self._seals(draft, locations)
            body = fast.body(draft, sealed, source, seq, prev)
            mac = self.keys.chain_mac(prev, body)
            values.append(self._prefix + body[:-1] + _MAC_TAIL + mac)
            seq, prev = seq + 1, mac
        return values, ChainHead(seq, prev)

    def _direct_encoder(self) -> AuditEncoder | None:
        """The direct encoder if it writes exactly what fastavro writes with this schema, else None."""
        encoder = AuditEncoder()
        for draft, sealed in SAMPLES:
            record = _as_dict(draft, list(sealed), b"s" * 28)
            record["seq"], record["prev_mac"], record["mac"] = 1 << 33, b"m" * 32, b""
            buffer = io.BytesIO()
            try:
                fastavro.schemaless_writer(buffer, self._parsed, record)
            except Exception:  # a contract the samples do not fit: keep fastavro
                return None
            if encoder.body(draft, sealed, b"s" * 28, 1 << 33, b"m" * 32) != buffer.getvalue():
                return None
        return AuditEncoder()  # a fresh memo: the samples' decisions are not real ones

    def decode(self, value: bytes) -> dict[str, Any]:
        """Decode one stored audit value (framed) back into a record of the current contract."""
        schema_id, body = unframe(value)
        writer = self._writer(schema_id)
        if writer is None:
            return dict(fastavro.schemaless_reader(io.BytesIO(body), self._parsed, None))  # type: ignore[arg-type]
        return dict(fastavro.schemaless_reader(io.BytesIO(body), writer, self._parsed))  # type: ignore[arg-type]

    def _writer(self, schema_id: int) -> Any:
        """The parsed writer schema of ``schema_id``; None for the current one (or none known)."""
        if self._lookup is None:
            return None
        if schema_id not in self._writers:
            try:
                text = self._lookup(schema_id)
                parsed = fastavro.parse_schema(strip_logical_types(json.loads(text)))
            except RegistryUnavailable:
                raise  # transient: never read a record by a guessed shape, never remember the failure
            except Exception:  # unknown id: read it as the current shape (as without a lookup)
                parsed = None
            self._writers[schema_id] = None if parsed == self._parsed else parsed
        return self._writers[schema_id]


def _as_dict(draft: PendingAudit, sealed: Sequence[bytes | None], sealed_source: bytes) -> dict[str, Any]:
    """The audit record of ``draft`` as fastavro takes it (chain fields left empty)."""
    recipients = [
        {
            "recipient": d.recipient,
            "agency": d.agency,
            "delivered": d.delivered,
            "reason": d.reason,
            "fields": list(d.fields),
            "key_id": d.key_id,
            "policy_version": d.policy_version,
            "sealed_location": where,
        }
        for d, where in zip(draft.decisions, sealed, strict=True)
    ]
    return {
        "audit_ref": draft.audit_ref,
        "person": draft.person,
        "processed_hour": draft.processed_hour,
        "outcome": draft.outcome,
        "dead_letter_code": draft.dead_letter_code,
        "processing_mode": draft.processing_mode,
        "recipients": recipients,
        "sealed_source": sealed_source,
        "small_cell": None if draft.small_cell is None else _fate(draft.small_cell),
        "seq": 0,
        "prev_mac": b"",
        "mac": b"",
    }


def _fate(fate: SmallCellFate) -> dict[str, Any]:
    return {
        "released": fate.released,
        "window": fate.window,
        "step": fate.step,
        "withheld": list(fate.withheld),
        "reason": fate.reason,
    }


def head_of(writer: AuditWriter, last_value: bytes | None) -> ChainHead:
    """The chain head after the last committed record of a partition (genesis for an empty one)."""
    if last_value is None:
        return ChainHead()
    last = writer.decode(last_value)
    return ChainHead(int(last["seq"]) + 1, bytes(last["mac"]))


def mac_matches(writer: AuditWriter, value: bytes, record: Mapping[str, Any]) -> bool:
    """Whether a stored audit value's MAC is the one ``writer``'s secret gives its content and link."""
    body = value[5 : -(1 + MAC_BYTES)] + b"\x00"
    return value[-(1 + MAC_BYTES)] == _MAC_TAIL[0] and writer.keys.chain_mac(bytes(record["prev_mac"]), body) == bytes(
        record["mac"]
    )


@dataclass(frozen=True)
class ChainProblem:
    """One defect of an audit partition's chain, located by offset."""

    partition: int
    offset: int
    kind: str  # altered | removed | reordered | unreadable | start
    detail: str


def verify_chain(
    writer: AuditWriter, partition: int, records: Iterable[tuple[int, bytes | None]]
) -> tuple[int, list[ChainProblem]]:
    """Check ``(offset, value)`` pairs of one partition in offset order; return (records checked, problems).

    The first record's link cannot be checked when earlier records expired; it is reported as
    kind ``start`` only when its ``seq`` is not 0 (informational, not a defect).
    """
    problems: list[ChainProblem] = []
    expected_seq: int | None = None
    prev_mac: bytes | None = None
    checked = 0
    for offset, value in records:
        checked += 1
        if value is None or len(value) < 5 + 1 + MAC_BYTES or value[0] != MAGIC:
            problems.append(ChainProblem(partition, offset, "unreadable", "not a framed audit record"))
            expected_seq, prev_mac = None, None
            continue
        try:
            record = writer.decode(value)
        except RegistryUnavailable:
            raise  # an outage is not a defect of the chain: the check stops, saying so
        except Exception as exc:  # any decoding failure is a defect to report, not a crash
            problems.append(ChainProblem(partition, offset, "unreadable", f"cannot decode: {type(exc).__name__}"))
            expected_seq, prev_mac = None, None
            continue
        seq, stored_prev, mac = int(record["seq"]), bytes(record["prev_mac"]), bytes(record["mac"])
        if not mac_matches(writer, value, record):
            problems.append(ChainProblem(partition, offset, "altered", f"seq {seq}: MAC does not match its content"))
        if expected_seq is None:
            if seq != 0:
                detail = f"chain starts at seq {seq} (earlier records expired?)"
                problems.append(ChainProblem(partition, offset, "start", detail))
            elif stored_prev != GENESIS:
                problems.append(ChainProblem(partition, offset, "altered", "seq 0 does not link to the genesis MAC"))
        elif seq > expected_seq:
            problems.append(
                ChainProblem(partition, offset, "removed", f"seq {expected_seq}..{seq - 1} missing before seq {seq}")
            )
        elif seq < expected_seq:
            problems.append(ChainProblem(partition, offset, "reordered", f"seq {seq} after seq {expected_seq - 1}"))
        elif stored_prev != prev_mac:
            problems.append(ChainProblem(partition, offset, "altered", f"seq {seq} does not link to seq {seq - 1}"))
        expected_seq, prev_mac = seq + 1, mac
    return checked, problems
