"""The runner's batch bookkeeping: records of one transaction, their offsets, failed deliveries, producing.

Split from :mod:`streams.kafka.transactional` (the loop and its error paths) so each module
stays one job: this one knows how a batch's outputs are produced and where they landed.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.audit.chain import ChainHead
from streams.audit.decisions import Location, PendingAudit
from streams.errors import RegistryUnavailable, ScreeningStreamsError
from streams.kafka.audit_io import AuditSink, head_metadata
from streams.kafka.clients import PURGED, ProducerLike, describe, error_of, is_permanent
from streams.kafka.dispatch import partition_for
from streams.pipeline import InputRecord, OutputRecord

log = logging.getLogger("streams.kafka.transactional")  # the runner's log, as before the split

TP = tuple[str, int]
Work = list[tuple[InputRecord, list[OutputRecord]]]


#: Process exit status of a worker stopped by :class:`RunnerFatal` (EX_SOFTWARE).
EXIT_FATAL = 70


class RunnerFatal(ScreeningStreamsError):
    """The runner cannot go on without losing or duplicating data; the worker must stop."""


class ConsumerFailed(Exception):
    """The consumer raised a fatal error (no transaction is open when it surfaces)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.name())
        self.error = error


@dataclass
class RunnerStats:
    """What the runner did (printed at exit and every report; the nemesis test reads them)."""

    transactions: int = 0
    aborts: int = 0
    fenced: int = 0
    producers: int = 0
    rebalances: int = 0
    registry_retries: int = 0
    deferred: int = 0  # partitions set aside while their writer schemas were being looked up
    records: int = 0

    def line(self) -> str:
        """``k=v`` pairs for a log line."""
        return " ".join(f"{k}={v}" for k, v in vars(self).items())


@dataclass
class Batch:
    """Records of one transaction and, per partition, the first and next offsets."""

    records: list[InputRecord] = field(default_factory=list)
    first: dict[TP, int] = field(default_factory=dict)
    next: dict[TP, int] = field(default_factory=dict)
    audits: list[PendingAudit] = field(default_factory=list)
    #: ``consumer_group_metadata()`` taken right after the consume() that returned the records
    #: (see :meth:`streams.kafka.transactional.Runner._poll`); None for a batch built otherwise.
    group_metadata: Any = None

    def positions(
        self, heads: Mapping[int, ChainHead] | None = None, extra: Mapping[int, str] | None = None
    ) -> list[TopicPartition]:
        """The offsets to commit: one past the last record of each partition, with its metadata: the
        audit head and any ``extra`` part (the small-cell checkpoint), space-separated."""
        heads, extra = heads or {}, extra or {}
        out = []
        for (t, p), o in self.next.items():
            parts = [head_metadata(heads[p])] if p in heads else []
            parts += [extra[p]] if p in extra else []
            out.append(TopicPartition(t, p, o, " ".join(parts)) if parts else TopicPartition(t, p, o))
        return out


@dataclass(frozen=True)
class Failure:
    """A failed delivery: which output of which input, and why."""

    source: InputRecord
    topic: str
    partition: int
    error: KafkaError


def produce_all(
    producer: ProducerLike,
    work: Work,
    failures: list[Failure],
    partitions: Mapping[str, int],
    locations: list[Location | None] | None = None,
) -> None:
    """Produce every output; with ``locations``, record where each landed (by output position)."""
    position = 0
    for source, outputs in work:
        for out in outputs:
            if locations is None:
                on_delivery = functools.partial(_delivery_failed, failures, source)
            else:
                locations.append(None)
                on_delivery = functools.partial(_delivered_at, failures, source, locations, position)
            position += 1
            partition = partition_for(out, partitions)
            stamp = getattr(out, "timestamp_ms", None) or 0
            while True:
                try:
                    producer.produce(
                        out.topic,
                        value=out.value,
                        key=out.key,
                        partition=partition,
                        on_delivery=on_delivery,
                        timestamp=stamp,
                        headers=list(out.headers),
                    )
                    break
                except BufferError:  # local queue full: serve delivery reports, then retry
                    producer.poll(0.05)
                except KafkaException as exc:
                    error = error_of(exc)
                    if error is not None and is_permanent(error):
                        failures.append(Failure(source, out.topic, partition, error))
                    raise


def _delivered_at(
    failures: list[Failure],
    source: InputRecord,
    locations: list[Location | None],
    position: int,
    error: KafkaError | None,
    msg: Any,
) -> None:
    if error is None:
        locations[position] = (msg.topic(), msg.partition(), msg.offset())
    else:
        _delivery_failed(failures, source, error, msg)


def _delivery_failed(failures: list[Failure], source: InputRecord, error: KafkaError | None, msg: Any) -> None:
    if error is None or error.code() in PURGED:
        return
    partition = msg.partition()
    failures.append(Failure(source, msg.topic() or "?", -1 if partition is None else partition, error))


def pausing(consumer: Any, tps: list[TP], *, pause: bool) -> None:
    """Pause (or resume) ingress partitions; one revoked meanwhile is skipped (its next owner starts over)."""
    if not tps:
        return
    partitions = [TopicPartition(t, p) for t, p in tps]
    try:
        (consumer.pause if pause else consumer.resume)(partitions)
    except KafkaException as exc:
        what = "pause" if pause else "resume"
        log.info("%s of %d partitions skipped: %s", what, len(tps), describe(error_of(exc)))


def retrying(call: Callable[[], None], attempts: int = 3) -> None:
    """Call; repeat a retriable failure (the operation goes on in the background) a few times."""
    for attempt in range(attempts):
        try:
            call()
            return
        except KafkaException as exc:
            error = error_of(exc)
            if error is None or not error.retriable() or error.txn_requires_abort() or attempt == attempts - 1:
                raise
            log.warning("retriable transaction error (%s); retrying", describe(error))


class BoundedCalls:
    """Runs librdkafka transaction calls on a helper thread and gives up on one that never returns.

    ``send_offsets_to_transaction`` can block far past its timeout when the group coordinator
    went away (librdkafka issues #5456 and #5511; seen here: stuck 10 min after a broker
    restart). A call still running ``grace_s`` after its own deadline is abandoned (its
    ``abandoned`` event set, so it commits nothing more) and a *fatal* ``_TIMED_OUT`` is
    raised: the runner drops that producer unused and a new one with the same
    ``transactional.id`` fences it. Each call gets its own daemon thread, so a stuck one never
    holds up the process's exit.
    """

    def __init__(self, grace_s: float = 10.0) -> None:
        """Calls get their deadline plus ``grace_s``."""
        self._grace_s = grace_s

    def run(self, call: Callable[[threading.Event], None], deadline_s: float) -> None:
        """Run ``call(abandoned)``; re-raise what it raises; raise a fatal KafkaException if it is still running."""
        abandoned, outcome = threading.Event(), []

        def target() -> None:
            try:
                call(abandoned)
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        thread = threading.Thread(target=target, name="txn-call", daemon=True)
        thread.start()
        thread.join(deadline_s + self._grace_s)
        if thread.is_alive():
            abandoned.set()
            seconds = deadline_s + self._grace_s
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, f"transaction call still blocked after {seconds:.0f} s", fatal=True)
            )
        if outcome:
            raise outcome[0]


#: Consumer errors that say "this principal may not": no retry cures them, the worker stops.
AUTHORIZATION_ERRORS = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)
# Not authentication failures: librdkafka reports a transport blip during a SASL handshake (every
# re-authentication) as _AUTHENTICATION too, so they are logged and retried, never a stop.


def refused_message(principal: str, operation: str, error: KafkaError) -> str:
    """The stop message of an authorisation error: who, what it tried, the broker's words (topic, group)."""
    return (
        f"{principal} may not {operation}: {describe(error)}; stopping the worker (no retry can succeed: "
        "the ACLs must change; `screening-streams acl plan` says what the processor needs, `acl apply` applies it)"
    )


def consumer_error(error: KafkaError | None, principal: str = "the worker's principal") -> None:
    """A consumer error: stop on an authorisation one, raise :class:`ConsumerFailed` on a fatal one, log the others.

    An authorisation error raises :class:`RunnerFatal` naming ``principal`` and librdkafka's
    description (the topic or group and the operation refused), instead of a retry loop.
    """
    if error is None:
        return
    if error.code() in AUTHORIZATION_ERRORS:
        raise RunnerFatal(refused_message(principal, "read the ingress or use its consumer group", error))
    if error.fatal() or error.code() == KafkaError._FATAL:
        raise ConsumerFailed(error)
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer error: %s", describe(error))


def close_consumer(consumer: Any) -> None:
    """Close a consumer (a static member keeps its partitions for the session timeout); log a failure."""
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.warning("closing the consumer failed: %s", describe(error_of(exc)))


def owned_lags(text: str, topic: str, owned: set[TP]) -> dict[int, int] | None:
    """Consumer lag per owned partition of ``topic`` from librdkafka's statistics JSON (None if unreadable)."""
    try:
        partitions = json.loads(text)["topics"][topic]["partitions"]
        return {
            int(p): int(v["consumer_lag"])
            for p, v in partitions.items()
            if (topic, int(p)) in owned and v.get("consumer_lag", -1) >= 0
        }
    except (ValueError, KeyError, TypeError):
        return None


def permanent_message(failure: Failure) -> str:
    """The stop message: where the record came from, where it went, and why (never its data)."""
    s = failure.source
    return (
        f"permanent produce error for the output of {s.topic}[{s.partition}]@{s.offset} "
        f"to {failure.topic}[{failure.partition}]: {describe(failure.error)}; "
        "stopping the worker (retrying cannot succeed; fix the topic limits, ACLs or the record)"
    )


def read_heads(sink: AuditSink, consumer: Any, topic: str, batch: Batch, timeout_s: float) -> None:
    """Chain heads of newly owned partitions, from the metadata committed with their offsets."""
    missing = sink.missing(p for t, p in batch.next if t == topic)
    if missing:
        for tp in consumer.committed([TopicPartition(topic, p) for p in missing], timeout_s):
            if tp.error is not None:  # never start a partition's chain afresh on a failed read
                raise KafkaException(tp.error)
            sink.adopt(tp.partition, tp.metadata, tp.offset)


#: Errors reading the chain heads that no retry cures: the worker stops, naming them.
_HEADS_FATAL = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def heads_problem(sink: AuditSink, consumer: Any, topic: str, batch: Batch, timeout_s: float) -> str | None:
    """:func:`read_heads`; a transient failure is returned as a reason (the batch is read again),
    an authorisation or missing-partition error raises :class:`RunnerFatal`."""
    try:
        read_heads(sink, consumer, topic, batch, timeout_s)
    except RegistryUnavailable as exc:  # older records are read by their writer schema
        return f"audit chain heads unreadable: schema registry unavailable ({type(exc).__name__})"
    except KafkaException as exc:
        error = error_of(exc)
        if error is not None and error.code() in _HEADS_FATAL:
            raise RunnerFatal(f"cannot read the audit chain heads of {topic}: {describe(error)}") from exc
        return f"audit chain heads unreadable: {describe(error)}"
    return None


def produce_audited(
    sink: AuditSink,
    producer: ProducerLike,
    batch: Batch,
    work: Work,
    failures: list[Failure],
    partitions: Mapping[str, int],
    timeout_s: float,
) -> dict[int, ChainHead]:
    """Produce the outputs, wait for their coordinates, then produce the chained audit records.

    Returns the chain heads the batch leads to (adopted only once its transaction commits).
    """
    locations: list[Location | None] = []
    produce_all(producer, work, failures, partitions, locations)
    left = producer.flush(timeout_s)
    if failures:
        return {}
    if left or any(loc is None for loc in locations):
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "outputs not delivered before the audit"))
    values, heads = sink.values(batch.audits, locations)
    hour = batch.audits[0].processed_hour if batch.audits else 0
    # A failed audit delivery fails the batch like any output's (a permanent one stops the worker).
    source = batch.records[0] if batch.records else InputRecord(sink.topic, -1, -1, None, None)
    on_delivery = functools.partial(_delivery_failed, failures, source)
    for partition, value in values:
        while True:
            try:
                producer.produce(sink.topic, value=value, partition=partition, timestamp=hour, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    return heads
