"""Exactly-once processing: consume → minimise → produce in Kafka transactions (KIP-447).

**Mechanism: one transactional producer per worker, fenced by consumer-group generation.**
The runner uses confluent-kafka (librdkafka) and sends each batch's offsets with
``send_offsets_to_transaction(offsets, group_metadata)``, the member id and generation
taken when the batch was polled (librdkafka rejoins in its own thread), so the coordinator
refuses a zombie's offsets (a worker paused past its session, its partitions given to another
member): its transaction can only abort. And because the consumer reads with
``isolation.level=read_committed``, librdkafka fetches committed offsets with
``require_stable``: a new owner waits while a transaction holding its partitions' offsets is
still open, instead of reading the old offset and processing the batch a second time.

Why not aiokafka's per-partition producers (before): its ``TxnOffsetCommit`` carries no
generation, so only ``transactional.id`` fenced, and the nemesis found that broken (see the
CHANGELOG); KIP-447 needs one producer per worker and librdkafka's produce path is cheaper.

**Loop** (one thread, blocking calls; :mod:`streams.worker` starts and stops it inside faust):
rebalance callbacks run only inside ``consume()``, and no transaction is open across a
``consume()`` call, so a revocation never meets a half-done batch. Each batch: decode and
minimise every record first (a registry outage raises before anything is produced: rewind,
back off, retry), then ``begin → produce all views and dead letters → send offsets →
commit``. Errors of the transaction path:

* abortable (``txn_requires_abort``, e.g. a zombie's offsets refused by generation, a record
  timing out while the broker restarts): abort, seek the batch's partitions back, retry;
* retriable on commit or send-offsets (timeouts): the same call is retried, then aborted;
* fatal (``fatal()``, e.g. the producer fenced because the coordinator timed its transaction
  out while the process was stopped), or an error with none of the three flags: the producer
  is dropped without further use and a new one initialised (its own ``transactional.id``,
  so this fences nobody else), the batch rewound;
* a permanent produce error (record too large, invalid record, authorisation: see
  :data:`~streams.kafka.clients.PERMANENT_PRODUCE_ERRORS`): abort and raise
  :class:`RunnerFatal` naming the topic, partition, offset and cause — the worker exits
  non-zero instead of retrying forever;
* a fatal consumer error (librdkafka reports a static member fenced also when it rejoins
  after its session expired, e.g. across a broker restart): the consumer is closed and a new
  one joins; more than :data:`MAX_CONSUMER_FENCES` within :data:`FENCE_WINDOW_S` mean another
  live process uses this worker's ``group.instance.id``: :class:`RunnerFatal`.

``at_least_once`` runs the same loop with an idempotent producer: produce, flush, then commit
the offsets; a crash between flush and commit delivers the batch again.

Small-cell protection (:mod:`streams.kafka.smallcell_io`) holds or releases views and closes
windows inside these transactions; an idle close still sends its partitions' offsets (fenced).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.audit.chain import ChainHead
from streams.errors import ConfigError, RegistryError
from streams.kafka.audit_io import AuditSink
from streams.kafka.batches import (
    AUTHORIZATION_ERRORS,
    TP,
    Batch,
    BoundedCalls,
    ConsumerFailed,
    Failure,
    RunnerFatal,
    RunnerStats,
    Work,
    close_consumer,
    consumer_error,
    heads_problem,
    owned_lags,
    pausing,
    permanent_message,
    produce_all,
    produce_audited,
    refused_message,
    retrying,
)
from streams.kafka.clients import (
    FENCE_WINDOW_S,
    FENCED,
    GROUP_REFUSALS,
    MAX_CONSUMER_FENCES,
    RETIRE_AFTER_FAILURES,
    ConsumerFactory,
    ConsumerLike,
    NoListener,
    ProducerFactory,
    ProducerLike,
    RunnerListener,
    confluent_consumer,
    confluent_producer,
    consumer_config,
    describe,
    error_of,
    group_generation,
    is_permanent,
    producer_config,
    transactional_id,
)
from streams.kafka.rebalance import RebalanceTracking
from streams.kafka.smallcell_io import SmallCellStage
from streams.pipeline import InputRecord, OutputRecord, Pipeline
from streams.settings import Settings

log = logging.getLogger(__name__)


class Runner(RebalanceTracking):
    """Runs the pipeline over the ingress topic, one transaction per batch (see module doc)."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        partitions: Mapping[str, int],
        *,
        consumer_factory: ConsumerFactory = confluent_consumer,
        producer_factory: ProducerFactory = confluent_producer,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_backoff_s: float = 5.0,
        listener: RunnerListener | None = None,
        audit: AuditSink | None = None,
        small_cells: SmallCellStage | None = None,
    ) -> None:
        """Process ``settings.ingress_topic``; ``partitions`` gives each output topic's count.

        ``sleep`` defaults to waiting on the stop event, so :meth:`stop` cuts any backoff short.
        """
        self.settings = settings
        self.pipeline = pipeline
        self.partitions = dict(partitions)
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.stats = RunnerStats()
        self.listener: RunnerListener = listener or NoListener()
        self.audit = audit
        if audit is not None and not self.exactly_once:
            # Audit records and chain heads are atomic with the outputs only inside a transaction.
            raise ConfigError("the audit trail needs SCREENING_PROCESSING_GUARANTEE=exactly_once")
        self.small_cells = small_cells
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        self._clock = clock
        self._consumer_fences: list[float] = []
        # How long one poll waits for a first record (then it takes whatever is already fetched,
        # up to batch_size): a batch never waits to fill, so latency stays one commit round trip.
        self._poll_timeout_s = max(0.01, settings.batch_within_s)
        self._max_backoff_s = max_backoff_s
        self._max_batch = max(1, settings.batch_size)
        self._txn_timeout_s = settings.transaction_timeout_ms / 1000
        self._principal = settings.kafka_auth.principal
        self._producer: ProducerLike | None = None
        self._owned: set[TP] = set()
        self._revoked_in_poll, self._needs_reset = set[TP](), set[TP]()
        self._backoff_s, self._failed_in_row = 0.0, 0
        self._calls = BoundedCalls()
        self._last_group: Any = None  # the group metadata of the last poll
        self._txn_id = transactional_id(settings)  # one per runner: each new producer fences the last
        self._held: dict[TP, list[InputRecord]] = {}  # partitions paused while their writer schemas are looked up

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish its batch and return (thread-safe)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def run(self) -> None:
        """Consume until :meth:`stop`; raise :class:`RunnerFatal` when going on would break a guarantee."""
        self._producer = self._open_producer()
        if self._producer is None:
            return
        consumer = self._new_consumer()
        try:
            while not self.stopping:
                if self._producer is None:
                    self._producer = self._open_producer()
                    continue
                self._resume_ready(consumer)
                try:
                    batch = self._poll(consumer)
                except ConsumerFailed as failed:
                    consumer = self._replace_consumer(consumer, failed.error)
                    continue
                self.listener.polled()
                if batch is not None:
                    self._handle(consumer, batch)
                elif self.small_cells is not None and self.small_cells.due(p for _, p in self._owned):
                    self._close_idle(consumer)
        finally:
            self._close(consumer)
            log.info("runner stopped: %s", self.stats.line())

    def _new_consumer(self) -> ConsumerLike:
        """A consumer subscribed to the ingress, its rebalances reported to the runner."""
        config = consumer_config(self.settings)
        config.setdefault("statistics.interval.ms", 5000)
        config.setdefault("stats_cb", self._statistics)
        consumer = self._consumer_factory(config)
        consumer.subscribe(
            [self.settings.ingress_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    def _replace_consumer(self, consumer: ConsumerLike, error: KafkaError | None) -> ConsumerLike:
        """A fatal consumer error: close it (no transaction is open) and join again with a new one.

        librdkafka raises ``FENCED_INSTANCE_ID`` as fatal also when a static member rejoins after
        its session expired (e.g. across a broker restart), so one fence is recovered; repeated
        fences within :data:`FENCE_WINDOW_S` mean another live process uses this instance id.
        """
        now = self._clock()
        self._consumer_fences = [t for t in self._consumer_fences if now - t < FENCE_WINDOW_S] + [now]
        if len(self._consumer_fences) > MAX_CONSUMER_FENCES:
            raise RunnerFatal(
                f"consumer fenced or failed fatally {len(self._consumer_fences)} times in "
                f"{FENCE_WINDOW_S:.0f} s: {describe(error)}; is another live worker using "
                f"group.instance.id {self.settings.instance_id!r}?"
            )
        log.warning("consumer failed fatally (%s); closing it and joining the group again", describe(error))
        close_consumer(consumer)
        lost = [TopicPartition(t, p) for t, p in sorted(self._owned)]
        if lost:
            self._release(lost, "lost")
        self._back_off()
        return self._new_consumer()

    def _close(self, consumer: ConsumerLike) -> None:
        close_consumer(consumer)
        if self._producer is not None:
            self._producer.flush(5.0)
            self._producer = None

    def _open_producer(self) -> ProducerLike | None:
        """A new producer, its transactions initialised (aborting what its id left open)."""
        while not self.stopping:
            config = producer_config(self.settings, transactional=self.exactly_once, txn_id=self._txn_id)
            if self.audit is not None:  # the audit seals where each output landed: report every delivery
                config["delivery.report.only.error"] = False
            producer = self._producer_factory(config)
            if not self.exactly_once:
                self.stats.producers += 1
                return producer
            try:
                producer.init_transactions(self._txn_timeout_s)
            except KafkaException as exc:
                error = error_of(exc)
                if error is not None and error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                    raise RunnerFatal(
                        refused_message(self._principal, f"use transactional id {self._txn_id}", error)
                    ) from exc
                log.warning("initialising the transactional producer failed (%s); retrying", describe(error))
                self._back_off()
                continue
            self.stats.producers += 1
            return producer
        return None

    def _statistics(self, text: str) -> None:
        """librdkafka's statistics (JSON, every 5 s, from within consume()): lag per owned partition."""
        lags = owned_lags(text, self.settings.ingress_topic, self._owned)
        if lags is not None:
            self.listener.lagged(lags)

    # ------------------------------------------------------------------ consume
    def _poll(self, consumer: ConsumerLike) -> Batch | None:
        """The next batch: wait for one record, then take what is already fetched."""
        self._revoked_in_poll = set()
        try:
            messages = list(consumer.consume(1, self._poll_timeout_s))
            if messages and self._max_batch > 1:
                messages += consumer.consume(self._max_batch - 1, 0)
            # Fenced by the generation the records were read in (librdkafka rejoins in its own thread;
            # a later generation's metadata could commit them after their partitions moved).
            group = self._last_group = consumer.consumer_group_metadata()
        except KafkaException as exc:
            consumer_error(error_of(exc) or KafkaError(KafkaError._FATAL, str(exc)), self._principal)
            return None
        batch = Batch()
        for message in messages:
            error = message.error()
            if error is not None:
                consumer_error(error, self._principal)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            tp = (topic, partition)
            if tp not in self._owned or tp in self._revoked_in_poll or tp in self._needs_reset:
                continue
            kind, stamp = message.timestamp()
            record = InputRecord(
                topic,
                partition,
                offset,
                message.key(),
                message.value(),
                tuple(message.headers() or ()),
                stamp if kind else None,
            )
            batch.records.append(record)
            batch.first.setdefault(tp, offset)
            batch.next[tp] = offset + 1
        self._reset_reassigned(consumer)
        batch.group_metadata = group
        return batch if batch.records else None

    # ------------------------------------------------------------------ process and produce
    def _handle(self, consumer: ConsumerLike, batch: Batch) -> None:
        try:
            self._defer_waiting(consumer, batch)
            if not batch.records:
                return
            # With the key records of the batch's data keys, and one audit draft per record if auditing.
            if self.audit is None:
                work = self.pipeline.process_each(batch.records)
            else:
                work = self.pipeline.process_each(batch.records, batch.audits)
        except RegistryError as exc:
            # Infrastructure, not the records' fault: nothing was produced; go back and wait.
            self.stats.registry_retries += 1
            log.warning("schema registry unavailable (%s); batch retried after backoff", type(exc).__name__)
            self._rewind(consumer, batch)
            self._back_off()
            return
        if self.small_cells is not None:
            guarded = self._guarded(consumer, batch, work)
            if guarded is None:  # checkpoints unreadable: rewound, retried
                return
            work = guarded
        if self.exactly_once:
            self._transact(consumer, batch, work)
        else:
            self._deliver(consumer, batch, work)

    def _defer_waiting(self, consumer: ConsumerLike, batch: Batch) -> None:
        """Set aside the partitions whose records wait for a writer-schema lookup still under way.

        The lookups go on in the background; those partitions are sought back to their first
        record and nothing is committed for them, so a flood of unknown schema ids on some
        partitions does not hold up the others. A registry that does not answer raises
        ``RegistryUnavailable`` (handled as an outage by the caller).
        """
        waiting = self.pipeline.pending_partitions(batch.records, wait_s=0.05)
        if not waiting:
            return
        self.stats.deferred += len(waiting)
        deferred = Batch(first={tp: batch.first[tp] for tp in waiting if tp in batch.first})
        for tp in waiting:
            batch.first.pop(tp, None)
            batch.next.pop(tp, None)
            self._held[tp] = [r for r in batch.records if (r.topic, r.partition) == tp]
        batch.records = [r for r in batch.records if (r.topic, r.partition) not in waiting]
        self._rewind(consumer, deferred)
        # Paused, not re-fetched: re-reading them every poll would crowd the ready partitions out.
        pausing(consumer, sorted(waiting), pause=True)

    def _resume_ready(self, consumer: ConsumerLike) -> None:
        """Resume the set-aside partitions whose lookups have ended (all of them if the registry is down)."""
        if not self._held:
            return
        try:
            still = self.pipeline.pending_partitions([r for rs in self._held.values() for r in rs], wait_s=0)
        except RegistryError:
            still = set()  # an outage: the normal path rewinds, backs off and retries
        ready = sorted(tp for tp in self._held if tp not in still)
        for tp in ready:
            del self._held[tp]
        pausing(consumer, ready, pause=False)

    def _guarded(self, consumer: ConsumerLike, batch: Batch, work: Work) -> Work | None:
        """Small cells: rebuild newly owned partitions, close due windows, hold or release the views."""
        assert self.small_cells is not None
        try:
            return self.small_cells.guard_batch(consumer, [p for _, p in self._owned], batch, work, self._txn_timeout_s)
        except KafkaException as exc:  # committed offsets unavailable: nothing was produced
            log.warning("reading small-cell checkpoints failed (%s); retrying", describe(error_of(exc)))
            self._rewind(consumer, batch)
            self._back_off()
            return None

    def _close_idle(self, consumer: ConsumerLike) -> None:
        """No record came: close the due windows in a transaction sending their partitions' offsets."""
        assert self.small_cells is not None
        batch = Batch(group_metadata=self._last_group)  # fenced by the empty poll's generation
        work = self._guarded(consumer, batch, [])
        if work:
            self._transact(consumer, batch, work)
        elif work is not None:
            self.small_cells.committed(batch)  # a rebuild only: nothing to commit

    def _transact(
        self, consumer: ConsumerLike, batch: Batch, work: list[tuple[InputRecord, list[OutputRecord]]]
    ) -> None:
        producer = self._producer
        assert producer is not None
        failures: list[Failure] = []
        heads: dict[int, ChainHead] = {}
        group = batch.group_metadata if batch.group_metadata is not None else consumer.consumer_group_metadata()
        if not self._may_commit(consumer, batch, group):
            return
        try:
            cells = self.small_cells
            extra = {p: cells.metadata(p) for _, p in batch.next} if cells is not None else None
            positions = batch.positions(None, extra)
            producer.begin_transaction()
            if self.audit is None:
                produce_all(producer, work, failures, self.partitions)
            else:
                heads = produce_audited(
                    self.audit, producer, batch, work, failures, self.partitions, self._txn_timeout_s
                )
                if failures:
                    self._failed(consumer, batch, producer, failures[0].error, failures)
                    return
                positions = batch.positions({**self.audit.heads_for(p for _, p in batch.next), **heads}, extra)

            # send_offsets never repeated (librdkafka cannot resume it); both bounded (BoundedCalls)
            def finish(abandoned: threading.Event) -> None:
                producer.send_offsets_to_transaction(positions, group, self._txn_timeout_s)
                if not abandoned.is_set():  # given up on meanwhile: never commit behind the new producer
                    retrying(lambda: producer.commit_transaction(self._txn_timeout_s))

            self._calls.run(finish, 2 * self._txn_timeout_s)
        except KafkaException as exc:
            self._failed(consumer, batch, producer, error_of(exc), failures)
            return
        if self.audit is not None:
            self.audit.committed(heads)
        if self.small_cells is not None:
            self.small_cells.committed(batch)
        self._done(batch, work)

    def _may_commit(self, consumer: ConsumerLike, batch: Batch, group: Any) -> bool:
        """Read in a generation (-1 would not be fenced: see group_generation) and, auditing, the
        chain heads known; otherwise nothing is begun: rewind, back off, read again."""
        why = "read outside any group generation" if (group_generation(group) or 0) < 0 else None
        if why is None and self.audit is not None:
            why = heads_problem(self.audit, consumer, self.settings.ingress_topic, batch, self._txn_timeout_s)
        if why is not None:
            log.warning("batch of %d records not begun (%s); read again", len(batch.records), why)
            if self.small_cells is not None:  # the guard admitted this batch already: undo it
                self.small_cells.aborted()
            self._rewind(consumer, batch)
            self._back_off()
        return why is None

    def _done(self, batch: Batch, work: list[tuple[InputRecord, list[OutputRecord]]]) -> None:
        self.stats.transactions += 1
        self.stats.records += len(batch.records)
        self._backoff_s, self._failed_in_row = 0.0, 0
        self.listener.committed(batch.records, [out for _, outputs in work for out in outputs])

    def _failed(
        self,
        consumer: ConsumerLike,
        batch: Batch,
        producer: ProducerLike,
        error: KafkaError | None,
        failures: list[Failure],
    ) -> None:
        """A transaction failed: abort and rewind, or drop the producer and restart the batch's partitions
        from their committed offsets (the outcome is unknown); back off; stop on permanent errors."""
        if self.small_cells is not None:
            self.small_cells.aborted()
        self.stats.aborts += 1
        self.listener.aborted()
        with contextlib.suppress(KafkaException, RuntimeError):
            producer.poll(0)  # serve the delivery reports that explain the failure
        permanent = next((f for f in failures if is_permanent(f.error)), None)
        # A failed delivery (its report carries no transaction flags) leaves the transaction abortable.
        abortable = error is not None and (error.txn_requires_abort() or error.retriable() or bool(failures))
        usable = error is not None and not error.fatal() and abortable
        cause = error  # what refused the batch, kept if the abort fails in turn
        if usable:
            try:
                producer.abort_transaction(self._txn_timeout_s)
            except KafkaException as exc:
                usable = False
                error = error_of(exc) or error
        if permanent is not None:
            raise RunnerFatal(permanent_message(permanent))
        if cause is not None and cause.code() in AUTHORIZATION_ERRORS:
            raise RunnerFatal(refused_message(self._principal, "write this batch's outputs or offsets", cause))
        if not usable:
            if error is not None and error.code() in FENCED:
                self.stats.fenced += 1
                self.listener.fenced()
            log.warning(
                "transaction failed fatally for this producer (%s); a new producer takes over, "
                "the batch of %d records is processed again",
                describe(error),
                len(batch.records),
            )
            self._producer, self._failed_in_row = None, 0  # never used again; the loop initialises a new one
            # Its transaction may still commit (a commit timed out, a call left blocked): these
            # partitions restart from the committed offsets, read once that transaction has ended.
            unknown = {tp for tp in batch.first if tp in self._owned}
            self._needs_reset |= unknown
            self._forget_state(unknown)
            self._back_off()
            return
        else:
            log.warning(
                "transaction aborted (%s); the batch of %d records is processed again",
                describe(error),
                len(batch.records),
            )
            if error is None or error.code() not in GROUP_REFUSALS:
                self._failed_in_row += 1
            if self._failed_in_row >= RETIRE_AFTER_FAILURES:  # e.g. a coordinator link stuck since a broker restart
                log.warning(
                    "%d transactions in a row failed: this producer retires, a new one connects afresh",
                    RETIRE_AFTER_FAILURES,
                )
                self._producer, self._failed_in_row = None, 0
        self._rewind(consumer, batch)
        self._back_off()

    def _deliver(
        self, consumer: ConsumerLike, batch: Batch, work: list[tuple[InputRecord, list[OutputRecord]]]
    ) -> None:
        """At least once (never audited: see __init__): produce, wait for every delivery, commit."""
        producer = self._producer
        assert producer is not None
        failures: list[Failure] = []
        try:
            produce_all(producer, work, failures, self.partitions)
            left = producer.flush(self._txn_timeout_s)
        except KafkaException as exc:
            left, failures = -1, failures or []
            log.warning("produce failed: %s", describe(error_of(exc)))
        permanent = next((f for f in failures if is_permanent(f.error)), None)
        if permanent is not None:
            raise RunnerFatal(permanent_message(permanent))
        if left != 0 or failures:
            self.stats.aborts += 1
            self.listener.aborted()
            log.warning("%d deliveries failed; the batch is sent again", len(failures) or abs(left))
            self._rewind(consumer, batch)
            self._back_off()
            return
        try:
            consumer.commit(offsets=batch.positions(), asynchronous=False)
        except KafkaException as exc:  # e.g. the partitions moved: their next owner re-delivers them
            log.warning("offset commit failed (%s); the batch may be delivered again", describe(error_of(exc)))
            self.stats.aborts += 1
            return  # not counted as committed (metrics move on commit only)
        self._done(batch, work)

    # ------------------------------------------------------------------ recovery
    def _rewind(self, consumer: ConsumerLike, batch: Batch) -> None:
        """Seek each still-owned partition of the batch back to its first record."""
        for (topic, partition), offset in batch.first.items():
            if (topic, partition) not in self._owned:
                continue  # its next owner starts from the committed offset
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.info("seek of %s[%d] skipped: %s", topic, partition, describe(error_of(exc)))

    def _back_off(self) -> None:
        self._backoff_s = min(max(self._backoff_s * 2, 0.1), self._max_backoff_s)
        self._sleep(self._backoff_s)
