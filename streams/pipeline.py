"""One input record in, the records to produce out: decode → validate → minimise → encode.

Pure with respect to Kafka: the worker hands in :class:`InputRecord` values and produces the
returned :class:`OutputRecord` values. Any per-record failure becomes one dead-letter record
carrying the reason, the stage, the source coordinates, the time and the processor version;
only infrastructure errors (registry unreachable, missing key) propagate.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams import __version__
from streams.audit.decisions import Auditor, PendingAudit
from streams.contracts.codec import EventDecoder, ViewEncoder
from streams.crypto.envelope import DataKey
from streams.crypto.errors import KeyUnavailable
from streams.crypto.views import ViewSealer
from streams.domain.validation import EventValidator, wall_clock_ms
from streams.errors import ConfigError, RecordRejected
from streams.policy.engine import Minimiser, View

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
DLQ_HEADERS = (H_CODE, H_REASON, H_STAGE, H_TOPIC, H_PARTITION, H_OFFSET, H_TIME, H_VERSION)
#: The dead-letter machinery's header namespace: an ingress record's headers under it are dropped.
DLQ_PREFIX = "dlq."

# Output record headers.
H_RECIPIENT = "policy.recipient"
H_POLICY_VERSION = "policy.version"
H_AGENCY = "policy.agency"
#: Ingress record timestamp (ms), so consumers and benchmarks can measure end-to-end latency.
H_SOURCE_TS = "source.timestamp-ms"


@dataclass(frozen=True)
class InputRecord:
    """One consumed record, with the coordinates a dead letter must cite."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class OutputRecord:
    """One record to produce; ``route_key`` chooses the partition (stable per event)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    route_key: bytes
    dead_letter: bool = False


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
    ) -> None:
        """Wire the stages; ``encoders`` maps each agency name to its output encoder.

        With an ``auditor``, :meth:`process_batch` also drafts one decision record per input.
        ``sealers`` maps each agency whose policy encrypts fields to its :class:`ViewSealer`; an
        agency that encrypts without one is a :class:`ConfigError` (nothing is sent in clear).
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
        self._sealers = {a.agency: sealers.get(a.agency) for a in minimiser.agencies}
        self.key_topics = sorted({s.key_topic for s in sealers.values()})
        self.auditor = auditor
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

    def process(self, record: InputRecord) -> list[OutputRecord]:
        """Return the outputs of one input record (views, or a single dead letter)."""
        return self._process(record).outputs

    def process_batch(self, records: Iterable[InputRecord]) -> Batch:
        """Process records in order: their outputs, and one audit draft per record if auditing.

        A draft's delivered entries index the batch's ``outputs``, so the runner can seal the
        produced coordinates into the audit record it commits in the same transaction.
        """
        batch = Batch([], [])
        keys: dict[bytes, DataKey] = {}
        for record in records:
            result = self._process(record)
            if self.auditor is not None:
                batch.audits.append(self._audit(record, result, len(batch.outputs)))
            batch.outputs.extend(result.outputs)
            keys.update((k.key_id, k) for k in result.keys)
        batch.outputs.extend(self._key_records(keys.values()))
        return batch

    def _key_records(self, keys: Iterable[DataKey]) -> list[OutputRecord]:
        """One key-topic record per data key the batch used, so the batch's transaction holds them.

        A data key is re-published with every batch that uses it: a duplicate in a compacted topic
        is harmless, and a record is never committed without the sealed key that opens it.
        """
        outputs = []
        for key in keys:
            sealer = self._sealers[key.agency]
            assert sealer is not None
            record, headers = key.record, ((H_AGENCY, key.agency.encode()),)
            outputs.append(OutputRecord(sealer.key_topic, record.key, record.value(), headers, record.key))
            self.stats.produced[sealer.key_topic] += 1
        return outputs

    def _audit(self, record: InputRecord, result: _Result, first_output: int) -> PendingAudit:
        assert self.auditor is not None
        source = (record.topic, record.partition, record.offset)
        now = self.clock_ms()
        if result.code is not None:
            return self.auditor.dead_lettered(source, result.code, result.event, now)
        assert result.event is not None
        return self.auditor.delivered(source, result.event, result.views, first_output, now)

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
            trace = ((H_SOURCE_TS, str(record.timestamp_ms).encode()),) if record.timestamp_ms is not None else ()
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
                outputs.append(OutputRecord(topic, key, encoder.encode(values), headers + trace, key or b""))
        except KeyUnavailable:
            raise  # no key in force: infrastructure; the batch must not be acknowledged
        except RecordRejected as rejection:
            letter = self._dead_letter(record, rejection.code, str(rejection), rejection.stage)
            return _Result([letter], event, (), rejection.code)
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
            letter = self._dead_letter(
                record, "internal_error", f"unexpected {type(exc).__name__} while processing", stage
            )
            return _Result([letter], event, (), "internal_error")
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

    def process_each(self, records: Iterable[InputRecord]) -> list[tuple[InputRecord, list[OutputRecord]]]:
        """Each record with its own outputs; the batch's key records are appended to the last record's.

        For runners that attribute delivery failures to their source record: committing all the
        returned outputs together commits every data key they need with them.
        """
        work: list[tuple[InputRecord, list[OutputRecord]]] = []
        keys: dict[bytes, DataKey] = {}
        for record in records:
            result = self._process(record)
            work.append((record, list(result.outputs)))
            keys.update((k.key_id, k) for k in result.keys)
        if keys:
            work[-1][1].extend(self._key_records(keys.values()))
        return work

    def _dead_letter(self, record: InputRecord, code: str, reason: str, stage: str) -> OutputRecord:
        self.stats.dead_letters[code] += 1
        log.warning("dead-lettered %s[%d]@%d: %s (%s)", record.topic, record.partition, record.offset, code, stage)
        return dead_letter(record, code, reason, stage, self.dlq_topic, self.clock_ms())


def _encrypts(rules: Iterable[Any]) -> bool:
    return any(rule.op == "encrypt" for rule in rules)


def dead_letter(record: InputRecord, code: str, reason: str, stage: str, dlq_topic: str, now_ms: int) -> OutputRecord:
    """Build the dead-letter record of ``record``: its raw key and value, and why it failed.

    The original headers are kept, except any under ``dlq.``: a producer could forge them (e.g.
    a replay count), so only the pipeline's own are written. Whether the record was a replay
    is the replay ledger's to say (``streams.dlq.ledger``), from the source coordinates.
    """
    kept = [(k, v) for k, v in record.headers if not k.startswith(DLQ_PREFIX)]
    when = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
    headers = [
        *kept,
        (H_CODE, code.encode()),
        (H_REASON, reason.encode()),
        (H_STAGE, stage.encode()),
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
        (H_TIME, when.encode()),
        (H_VERSION, __version__.encode()),
    ]
    route = f"{record.topic}:{record.partition}".encode()
    return OutputRecord(dlq_topic, record.key, record.value, headers, route, dead_letter=True)
