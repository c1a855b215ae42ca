"""The faust worker: a thin agent that decodes, minimises and sends, batch by batch.

faust acks and skips a message whose agent raised (faust-streaming #315), so nothing here
may raise out of the loop: per-record failures are dead letters (see ``pipeline``), delivery
failures are retried by the :class:`~streams.kafka.dispatch.Dispatcher` before the batch is acked.
Offsets are committed by faust only for acked events, after flushing the producer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import faust
from faust.app.base import BootStrategy

from streams.kafka.dispatch import Dispatcher, outputs_with_retry
from streams.kafka.transactional import TransactionalRunner
from streams.pipeline import InputRecord, Pipeline
from streams.settings import Settings

log = logging.getLogger(__name__)


def _quiet_framework_loggers(level: int = logging.WARNING) -> None:
    """Keep faust, mode and aiokafka above DEBUG, whatever the worker's level.

    Their hot-path logging is costly, and it is identifying: aiokafka's producer logs every
    record's key and value at DEBUG ("Sending (key=%s value=%s) to %s"), i.e. the raw DLQ
    payloads and the contact-tracing views, with NIRs, names and phones. Never lower this cap
    (tests/integration/test_logs.py fails if it is removed).
    """
    for name in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def build_app(settings: Settings, pipeline: Pipeline, partitions: Mapping[str, int]) -> faust.App:
    """Create the faust app running ``pipeline``; topics must already exist.

    ``exactly_once`` (default) hosts the :class:`TransactionalRunner` as a faust task;
    ``at_least_once`` uses a plain faust agent with batched sends (faster, may duplicate
    records after a crash).
    """
    exactly_once = settings.processing_guarantee == "exactly_once"
    app = faust.App(
        # In exactly-once mode the runner owns the consumer group; faust's own consumer must
        # not join it (different assignor), so the faust app gets an id of its own.
        f"{settings.group_id}.host" if exactly_once else settings.group_id,
        id_format="{id}",
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        datadir=str(settings.state_dir / "faust"),
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
    )
    if exactly_once:
        # faust hosts the runner (lifecycle, signals, logging, timers) but runs no Kafka
        # client of its own: the runner's consumer and transactional producers do the I/O.
        app.boot_strategy = BootStrategy(app, enable_kafka_consumer=False, enable_kafka_producer=False)
        runner = TransactionalRunner(settings, pipeline, partitions)

        @app.task  # type: ignore[untyped-decorator]
        async def transactional() -> None:
            await _or_die(runner.run())

        counters: Callable[[], str] = lambda: f"transactions={runner.transactions} aborts={runner.aborts}"  # noqa: E731
    else:
        counters = _install_agent(app, settings, pipeline, partitions)

    started = time.monotonic()

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        stats = pipeline.stats
        elapsed = max(time.monotonic() - started, 1e-9)
        log.info(
            "consumed=%d (%.0f/s) produced=%d dead_letters=%s %s",
            stats.consumed,
            stats.consumed / elapsed,
            sum(stats.produced.values()),
            dict(stats.dead_letters),
            counters(),
        )

    return app


async def _or_die(work: Awaitable[None]) -> None:
    """Await ``work``; on anything but cancellation, exit the process without acknowledging.

    Returning normally would let faust ack (and skip) the batch in flight; exiting leaves its
    offsets uncommitted, so it is consumed again after the restart.
    """
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        log.critical("unrecoverable %s in the processing loop; exiting without ack", type(exc).__name__)
        os._exit(70)


def _install_agent(
    app: faust.App, settings: Settings, pipeline: Pipeline, partitions: Mapping[str, int]
) -> Callable[[], str]:
    """The at-least-once path: a faust agent over batches, acked after delivery."""
    ingress = app.topic(settings.ingress_topic, key_type=bytes, value_type=bytes, internal=False)

    def send(
        topic: str, key: bytes | None, value: bytes | None, partition: int, headers: Sequence[tuple[str, bytes]]
    ) -> Awaitable[Awaitable[Any]]:
        return app.producer.send(topic, key, value, partition, None, list(headers))

    dispatcher = Dispatcher(send, partitions)

    async def handle(records: list[InputRecord]) -> None:
        await dispatcher.dispatch(await outputs_with_retry(pipeline, records))

    @app.agent(ingress, name="minimise")
    async def minimise(stream: faust.StreamT[bytes]) -> None:
        batches = stream.take_events(settings.batch_size, within=settings.batch_within_s)  # type: ignore[attr-defined]
        async for events in batches:
            records = [
                InputRecord(
                    m.topic,
                    m.partition,
                    m.offset,
                    m.key,
                    m.value,
                    tuple(m.headers or ()),
                    int(m.timestamp * 1000) if m.timestamp else None,
                )
                for m in (event.message for event in events)
            ]
            # Shielded: a shutdown waits for the batch to be handed to the producer, whose
            # flush precedes faust's offset commit. Pipeline errors never escape (dead letters).
            await asyncio.shield(_or_die(handle(records)))

    return lambda: f"retries={dispatcher.retries}"


def run_worker(app: faust.App, loglevel: str = "warning") -> None:
    """Run the faust worker in this process until SIGTERM/SIGINT (blocks)."""
    _quiet_framework_loggers(getattr(logging, loglevel.upper(), logging.WARNING))
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
