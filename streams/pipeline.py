"""One input record in, the records to produce out: decode → validate → minimise → encode.

Pure with respect to Kafka: the worker hands in :class:`InputRecord` values and produces the
returned :class:`OutputRecord` values. Any per-record failure becomes one dead-letter record
carrying the reason, the stage, the source coordinates, the time and the processor version;
only infrastructure errors propagate: a registry that does not answer raises
:class:`~streams.errors.RegistryUnavailable` (never a dead letter: the caller retries the batch).

What two agencies' records of one event share is limited to the fields both policies name:
no header is common to them but the policy ones; each record's Kafka timestamp is the
processing time truncated to the agency's grain (a UTC day); its partition key is the
agency's keyed hash of the person; and within a batch each topic's records are ordered by
that key (:func:`transaction_order`), so their order lines up with no other topic's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from streams import __version__
from streams.audit.decisions import Auditor, PendingAudit, PendingDecision
from streams.contracts.codec import EventDecoder, ViewEncoder
from streams.contracts.registry import SchemaResolver
from streams.contracts.wire import HEADER_SIZE, MAGIC
from streams.crypto.envelope import DataKey
from streams.crypto.errors import KeyUnavailable
from streams.crypto.letters import H_SEALED, OPERATORS, LetterSealer, RawLetter
from streams.crypto.views import ViewSealer
from streams.domain.validation import EventValidator, wall_clock_ms
from streams.errors import ConfigError, RecordRejected, RegistryError, RegistryUnavailable
from streams.policy.engine import Minimiser, View, truncate_ms

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
#: Largest ingress payload accepted (bytes); a screening event is ~300 B.
MAX_PAYLOAD = 64 * 1024

# Dead-letter header names (public contract of screening.results.dlq.v1).
H_CODE = "dlq.reason.code"
H_REASON = "dlq.reason"
H_STAGE = "dlq.stage"
H_TOPIC = "dlq.source.topic"
H_PARTITION = "dlq.source.partition"
H_OFFSET = "dlq.source.offset"
H_TIME = "dlq.time"
H_VERSION = "dlq.processor.version"
# Sizes and framing of the sealed raw record (readable without the operators' key).
H_KEY_BYTES = "dlq.key.bytes"
H_VALUE_BYTES = "dlq.value.bytes"
H_FRAMING = "dlq.value.framing"
H_HEADER_COUNT = "dlq.headers"
DLQ_HEADERS = (
    H_CODE,
    H_REASON,
    H_STAGE,
    H_TOPIC,
    H_PARTITION,
    H_OFFSET,
    H_TIME,
    H_VERSION,
    H_KEY_BYTES,
    H_VALUE_BYTES,
    H_FRAMING,
    H_HEADER_COUNT,
    H_SEALED,
)
#: The dead-letter machinery's header namespace: an ingress record's headers under it are dropped.
DLQ_PREFIX = "dlq."

# Output record headers.
H_RECIPIENT = "policy.recipient"
H_POLICY_VERSION = "policy.version"
H_AGENCY = "policy.agency"


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One consumed record, with the coordinates a dead letter must cite."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One record to produce; ``route_key`` chooses the partition (stable per person and agency).

    ``timestamp_ms`` is the Kafka record time to produce with (``None``: the producer's
    clock, dead letters only): for agency records, the processing time truncated to the
    agency's grain, never finer than its policy allows.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    route_key: bytes
    dead_letter: bool = False
    timestamp_ms: int | None = None
    #: An explicit partition (internal topics partitioned like the ingress); None: by ``route_key``.
    partition: int | None = None
    #: The agency view this record encodes (small-cell protection reads its quasi-identifiers);
    #: in memory only, never printed (it may hold identifying fields for other agencies).
    view: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    #: A view held under small-cell protection: its sealed audit lineage (streams.audit.held), if auditing.
    lineage: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Batch:
    """The outputs of a batch of inputs, and their audit drafts (empty when not auditing)."""

    outputs: list[OutputRecord]
    audits: list[PendingAudit]


@dataclass(frozen=True)
class _Result:
    outputs: list[OutputRecord]
    event: dict[str, Any] | None
    views: Sequence[View]
    code: str | None  # the dead-letter code, when rejected
    keys: tuple[DataKey, ...] = ()  # data keys the outputs were encrypted under


@dataclass
class PipelineStats:
    """Counters of one pipeline: inputs, outputs per topic, dead letters per reason code."""

    consumed: int = 0
    produced: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)


class Pipeline:
    """Turns ingress records into agency records and dead letters."""

    def __init__(
        self,
        decoder: EventDecoder,
        validator: EventValidator,
        minimiser: Minimiser,
        encoders: Mapping[str, ViewEncoder],
        dlq_topic: str,
        clock_ms: Callable[[], int] = wall_clock_ms,
        topic_prefix: str = "",
        auditor: Auditor | None = None,
        sealers: Mapping[str, ViewSealer] | None = None,
        schemas: SchemaResolver | None = None,
        letters: LetterSealer | None = None,
    ) -> None:
        """Wire the stages; ``encoders`` maps each agency name to its output encoder.

        With an ``auditor``, :meth:`process_batch` also drafts one decision record per input.
        ``sealers`` maps each agency whose policy encrypts fields to its :class:`ViewSealer`; an
        agency that encrypts without one is a :class:`ConfigError` (nothing is sent in clear).
        ``schemas`` (the decoder's registry front) lets :meth:`prefetch` look writer schemas up
        before the CPU-bound pass, and keeps records that are not framed from costing a lookup.
        ``letters`` seals dead letters to the operators' public key; without it the pipeline is
        refused (:class:`ConfigError`): a dead letter holds raw input and is never written in clear.
        """
        sealers = dict(sealers or {})
        unsealed = sorted(
            a.agency for a in minimiser.agencies if a.agency not in sealers and _encrypts(a.policy.emitted)
        )
        if unsealed:
            named = ", ".join(unsealed[:3]) + (f" and {len(unsealed) - 3} more" if len(unsealed) > 3 else "")
            raise ConfigError(
                f"the policies encrypt fields for {named} but no public key ring was given "
                "(SCREENING_PUBLIC_KEYS_DIR): nothing would be sent in clear, so nothing is sent"
            )
        if letters is None:
            raise ConfigError(
                "no operators' public key ring was given (SCREENING_PUBLIC_KEYS_DIR): dead letters hold raw "
                "input and are sealed to the operators' key, never written in clear"
            )
        self.letters = letters
        self._sealers = {a.agency: sealers.get(a.agency) for a in minimiser.agencies}
        self.key_topics = sorted({s.key_topic for s in sealers.values()} | {letters.key_topic})
        self._key_topic_of = {agency: s.key_topic for agency, s in sealers.items()} | {OPERATORS: letters.key_topic}
        self.auditor = auditor
        self.schemas = schemas
        self.decoder = decoder
        self.validator = validator
        self.minimiser = minimiser
        self.dlq_topic = dlq_topic
        self.clock_ms = clock_ms
        self.stats = PipelineStats()
        self._routes = {
            a.agency: (
                topic_prefix + a.topic,
                encoders[a.agency],
                (
                    (H_RECIPIENT, a.recipient.encode()),
                    (H_AGENCY, a.agency.encode()),
                    (H_POLICY_VERSION, a.policy.version.encode()),
                ),
            )
            for a in minimiser.agencies
        }

    def prefetch(self, records: Iterable[InputRecord]) -> None:
        """Look up the writer schemas of these records' framed payloads (blocking: run it off any event loop).

        Raises :class:`~streams.errors.RegistryUnavailable` while the registry does not answer;
        unknown ids are negatively cached, so the pass that follows makes no request.
        """
        if self.schemas is not None:
            self.schemas.resolve(framed_schema_ids(records))

    def pending_partitions(self, records: Sequence[InputRecord], wait_s: float = 0.1) -> set[tuple[str, int]]:
        """The (topic, partition) pairs whose records wait for a writer schema lookup still under way.

        Looks unseen ids up in the background and waits at most ``wait_s``: a runner defers the
        partitions returned (seeks them back, commits nothing for them) and processes the rest,
        so a flood of unknown ids on some partitions does not hold up the others. Raises
        :class:`~streams.errors.RegistryUnavailable` when the registry does not answer.
        """
        if self.schemas is None:
            return set()
        ids = [framed_schema_ids((r,)) for r in records]
        pending = self.schemas.resolve_within([x for found in ids for x in found], wait_s)
        return {(r.topic, r.partition) for r, found in zip(records, ids, strict=True) if pending.intersection(found)}

    def needs_prefetch(self, records: Iterable[InputRecord]) -> bool:
        """True when some framed record's writer schema id is not yet known either way (no I/O)."""
        return self.schemas is not None and self.schemas.needs_lookup(framed_schema_ids(records))

    def _scope(self, records: Sequence[InputRecord]) -> AbstractContextManager[None]:
        """Registry lookups allowed during a pass: only for the ids of framed records."""
        return nullcontext() if self.schemas is None else self.schemas.only(framed_schema_ids(records))

    def process(self, record: InputRecord) -> list[OutputRecord]:
        """Return the outputs of one input record (views, or a single dead letter)."""
        with self._scope((record,)):
            return self._process(record).outputs

    def process_batch(self, records: Iterable[InputRecord]) -> Batch:
        """Process records in order: their outputs, and one audit draft per record if auditing.

        Outputs come in :func:`transaction_order` (each topic ordered by its partition key), then
        the key records. A draft's delivered entries index the batch's ``outputs``, so the runner
        can seal the produced coordinates into the audit record it commits in the same transaction.
        """
        records = list(records)
        batch = Batch([], [])
        keys: dict[bytes, DataKey] = {}
        with self._scope(records):
            for record in records:
                result = self._process(record)
                if self.auditor is not None:
                    batch.audits.append(self._audit(record, result, len(batch.outputs)))
                batch.outputs.extend(result.outputs)
                keys.update((k.key_id, k) for k in result.keys)
        order = transaction_order(batch.outputs)
        moved = {old: new for new, old in enumerate(order)}
        audits = [remapped(a, moved) for a in batch.audits]
        return Batch([batch.outputs[i] for i in order] + self._key_records(keys.values()), audits)

    def _key_records(self, keys: Iterable[DataKey]) -> list[OutputRecord]:
        """One key-topic record per data key the batch used, so the batch's transaction holds them.

        A data key is re-published with every batch that uses it: a duplicate in a compacted topic
        is harmless, and a record is never committed without the sealed key that opens it.
        """
        outputs = []
        for key in keys:
            topic = self._key_topic_of[key.agency]  # an agency's key topic, or the DLQ's (operators)
            record, headers = key.record, ((H_AGENCY, key.agency.encode()),)
            outputs.append(OutputRecord(topic, record.key, record.value(), headers, record.key))
            self.stats.produced[topic] += 1
        return outputs

    def _audit(self, record: InputRecord, result: _Result, first_output: int) -> PendingAudit:
        assert self.auditor is not None
        source = (record.topic, record.partition, record.offset)
        now = self.clock_ms()
        if result.code is not None:
            return self.auditor.dead_lettered(source, result.code, result.event, now)
        assert result.event is not None
        key_ids = {k.agency: k.public_key_id for k in result.keys}
        return self.auditor.delivered(source, result.event, result.views, first_output, now, key_ids)

    def _process(self, record: InputRecord) -> _Result:
        self.stats.consumed += 1
        stage = "decode"
        event: dict[str, Any] | None = None
        try:
            if record.value is not None and len(record.value) > MAX_PAYLOAD:
                raise RecordRejected("oversized_payload", f"payload of {len(record.value)} bytes exceeds {MAX_PAYLOAD}")
            _, decoded = self.decoder.decode(record.value)
            event = decoded
            stage = "validate"
            self.validator.check(event)
            stage = "minimise"
            views = self.minimiser.apply(event)
            stage = "encode"
            outputs = []
            used: list[DataKey] = []
            now = self.clock_ms()
            for view in views:
                topic, encoder, headers = self._routes[view.agency.agency]
                ref = view.record.get("event_ref")
                key = ref.encode() if isinstance(ref, str) else None
                values = view.record
                sealer = self._sealers[view.agency.agency]
                if sealer is not None:
                    stage = "encrypt"
                    if not isinstance(ref, str):
                        raise TypeError("an encrypted view needs its event_ref")
                    values, data_key = sealer.seal(values, ref, self.clock_ms())
                    if data_key is not None:
                        used.append(data_key)
                    stage = "encode"
                stamp = truncate_ms(now, view.agency.clock_grain_ms)
                route = view.route_key or key or b""
                outputs.append(
                    OutputRecord(topic, key, encoder.encode(values), headers, route, False, stamp, view=view.record)
                )
        except KeyUnavailable:
            raise  # no key in force: infrastructure; the batch must not be acknowledged
        except RegistryError as exc:
            # Not the record's fault: the registry did not answer. Propagate, never dead-letter.
            self.stats.consumed -= 1
            if isinstance(exc, RegistryUnavailable):
                raise
            raise RegistryUnavailable(f"schema registry failed at stage {stage}: {type(exc).__name__}") from exc
        except RecordRejected as rejection:
            letter, letter_key = self._dead_letter(record, rejection.code, str(rejection), rejection.stage)
            return _Result([letter], event, (), rejection.code, (letter_key,))
        except Exception as exc:  # a bug must not lose or skip the record: dead-letter it
            # The exception text may quote data: log and dead-letter only its type.
            log.error(
                "internal error at stage %s on %s[%d]@%d: %s",
                stage,
                record.topic,
                record.partition,
                record.offset,
                type(exc).__name__,
            )
            letter, letter_key = self._dead_letter(
                record, "internal_error", f"unexpected {type(exc).__name__} while processing", stage
            )
            return _Result([letter], event, (), "internal_error", (letter_key,))
        for out in outputs:
            self.stats.produced[out.topic] += 1
        return _Result(outputs, event, views, None, tuple(used))

    def process_many(self, records: Iterable[InputRecord]) -> list[OutputRecord]:
        """Process records in order and concatenate their outputs, then the batch's key records.

        :meth:`process` returns one record's own outputs only; whatever commits outputs uses this,
        :meth:`process_each` or :meth:`process_batch`, which add the key record of every data key
        the batch used.
        """
        return [out for _, outputs in self.process_each(records) for out in outputs]

    def process_each(
        self, records: Iterable[InputRecord], audits: list[PendingAudit] | None = None
    ) -> list[tuple[InputRecord, list[OutputRecord]]]:
        """A batch's outputs in :func:`transaction_order`, each with the input it came from.

        For runners that attribute delivery failures to their source record; produce the pairs
        in the order given (one output per pair, the batch's key records with the last one):
        committing all the returned outputs together commits every data key they need with them.
        Writer schemas are looked up first (:meth:`prefetch`), so a registry outage raises
        :class:`~streams.errors.RegistryUnavailable` before anything is produced.

        With an auditor and an ``audits`` list, one draft per input is appended to it, its
        delivered entries indexing the outputs in the order the pairs list them.
        """
        records = list(records)
        self.prefetch(records)
        pairs: list[tuple[InputRecord, OutputRecord]] = []
        drafts: list[PendingAudit] = []
        keys: dict[bytes, DataKey] = {}
        with self._scope(records):
            for record in records:
                result = self._process(record)
                if self.auditor is not None and audits is not None:
                    drafts.append(self._audit(record, result, len(pairs)))
                pairs.extend((record, out) for out in result.outputs)
                keys.update((k.key_id, k) for k in result.keys)
        order = transaction_order([out for _, out in pairs])
        work = [(pairs[i][0], [pairs[i][1]]) for i in order]
        if drafts and audits is not None:
            moved = {old: new for new, old in enumerate(order)}
            audits.extend(remapped(a, moved) for a in drafts)
        if keys:
            work[-1][1].extend(self._key_records(keys.values()))
        return work

    def _dead_letter(self, record: InputRecord, code: str, reason: str, stage: str) -> tuple[OutputRecord, DataKey]:
        # Sealed first: with no operators' key in force, KeyUnavailable propagates (nothing in clear).
        letter = dead_letter(record, code, reason, stage, self.dlq_topic, self.clock_ms(), self.letters)
        self.stats.dead_letters[code] += 1
        log.warning("dead-lettered %s[%d]@%d: %s (%s)", record.topic, record.partition, record.offset, code, stage)
        return letter


def _encrypts(rules: Iterable[Any]) -> bool:
    return any(rule.op == "encrypt" for rule in rules)


def framed_schema_ids(records: Iterable[InputRecord]) -> list[int]:
    """Writer schema ids of the records framed in the Confluent wire format (magic byte 0).

    Only these are ever looked up in the registry: a payload with another first byte (JSON,
    a foreign framing) costs no request, whatever its next four bytes say.
    """
    ids = []
    for record in records:
        value = record.value
        if value is not None and HEADER_SIZE <= len(value) <= MAX_PAYLOAD and value[0] == MAGIC:
            ids.append(int.from_bytes(value[1:HEADER_SIZE], "big"))
    return ids


def remapped(draft: PendingAudit, moved: Mapping[int, int]) -> PendingAudit:
    """``draft`` with its delivered entries pointing at the outputs' new positions (itself if none moved)."""
    if all(d.output is None or moved[d.output] == d.output for d in draft.decisions):
        return draft
    decisions = tuple(
        d
        if d.output is None
        else PendingDecision(
            d.recipient, d.agency, d.delivered, d.reason, d.fields, d.key_id, d.policy_version, moved[d.output]
        )
        for d in draft.decisions
    )
    return PendingAudit(
        draft.source,
        draft.audit_ref,
        draft.person,
        draft.processing_mode,
        draft.outcome,
        draft.dead_letter_code,
        decisions,
        draft.processed_hour,
        draft.small_cell,
    )


def transaction_order(outputs: Sequence[OutputRecord]) -> list[int]:
    """The order to produce a batch's outputs in: by topic, then by partition key (stable).

    Within a topic, records follow the agency's keyed hash of the person, so one person's
    records keep their input order (same key, stable sort), while the order of one agency's
    records says nothing about another agency's: their keys are unrelated. Dead letters keep
    their input order.
    """
    return sorted(
        range(len(outputs)),
        key=lambda i: (outputs[i].topic, b"" if outputs[i].dead_letter else outputs[i].route_key, i),
    )


def dead_letter(
    record: InputRecord, code: str, reason: str, stage: str, dlq_topic: str, now_ms: int, sealer: LetterSealer
) -> tuple[OutputRecord, DataKey]:
    """Build the sealed dead-letter record of ``record`` and the operators' data key it is sealed under.

    Its value seals the raw key, raw value and original headers (:mod:`streams.crypto.letters`);
    its own key is null and its headers are the pipeline's ``dlq.*`` ones only: why it failed,
    where from, sizes, framing and the operators' public key id, all readable without the key and
    all bound to the sealed value. Incoming ``dlq.`` headers are dropped (a producer could forge
    them, e.g. a replay count): whether the record was a replay is the replay ledger's to say
    (``streams.dlq.ledger``), from the source coordinates.
    """
    kept = tuple((k, v) for k, v in record.headers if not k.startswith(DLQ_PREFIX))
    key = sealer.data_key(now_ms)
    when = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
    headers: list[tuple[str, bytes]] = [
        (H_CODE, code.encode()),
        (H_REASON, reason.encode()),
        (H_STAGE, stage.encode()),
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
        (H_TIME, when.encode()),
        (H_VERSION, __version__.encode()),
        (H_KEY_BYTES, _size(record.key)),
        (H_VALUE_BYTES, _size(record.value)),
        (H_FRAMING, framing(record.value).encode()),
        (H_HEADER_COUNT, str(len(kept)).encode()),
        (H_SEALED, key.public_key_id.encode()),
    ]
    value = sealer.seal(key, RawLetter(record.key, record.value, kept), headers)
    route = f"{record.topic}:{record.partition}".encode()
    return OutputRecord(dlq_topic, None, value, headers, route, dead_letter=True), key


def _size(value: bytes | None) -> bytes:
    return b"null" if value is None else str(len(value)).encode()


def framing(value: bytes | None) -> str:
    """What the first bytes of a raw value say (no data): Confluent framing and schema id, or the first byte."""
    if value is None:
        return "null"
    if len(value) < HEADER_SIZE:
        return "none (shorter than a Confluent header)" if value else "none (empty)"
    if value[0] != MAGIC:
        return f"none (first byte 0x{value[0]:02x})"
    return f"Confluent, schema id {int.from_bytes(value[1:HEADER_SIZE], 'big')}"
