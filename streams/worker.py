"""The worker process: faust hosts the :class:`~streams.kafka.transactional.Runner` thread.

faust stays the process host (lifecycle, signals, logging, timers, later the web port) but
runs no Kafka client of its own: the runner's confluent-kafka consumer and producer do the
I/O in one dedicated thread, where the CPU-bound ``Pipeline.process`` and the registry calls
also run, so the event loop never blocks on them. faust starts the thread with the app and,
on SIGTERM/SIGINT, asks it to finish its transaction and waits for it.

Both guarantees use the same loop: ``exactly_once`` (default) commits each batch's outputs and
offsets in one transaction; ``at_least_once`` produces, flushes, then commits the offsets.
A :class:`~streams.kafka.transactional.RunnerFatal` (a permanent produce error, a fenced
static member) stops the process with exit status 70 and a message naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import faust
import faust.web
import mode
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST

from streams.kafka.audit_io import AuditSink
from streams.kafka.batches import EXIT_FATAL, RunnerFatal
from streams.kafka.smallcell_io import SmallCellStage
from streams.kafka.transactional import Runner
from streams.ops.health import Health
from streams.ops.listener import OpsListener
from streams.ops.memory import tune_gc
from streams.ops.metrics import WorkerMetrics
from streams.pipeline import Pipeline
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Prometheus' text format (aiohttp takes the charset apart from the content type: utf-8 is its default).
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")
#: How long a SIGTERM waits for the runner's batch in flight before the process gives up.
STOP_TIMEOUT_S = 60.0


def _quiet_framework_loggers(level: int = logging.WARNING) -> None:
    """Keep faust, mode, aiokafka and librdkafka's logger above DEBUG, whatever the worker's level.

    Their hot-path logging is costly, and aiokafka's is identifying: its producer logs every
    record's key and value at DEBUG ("Sending (key=%s value=%s) to %s"), i.e. the raw DLQ
    payloads and the contact-tracing views, with NIRs, names and phones. Never lower this cap
    (tests/integration/test_logs.py fails if it is removed).
    """
    for name in ("faust", "mode", "aiokafka", "kafka", "streams.kafka.librdkafka"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def run_runner_thread(runner: Runner, exit_process: Callable[[int], object] = os._exit) -> None:
    """The runner thread's body: run until stopped; on a fatal error, exit the process non-zero.

    Exiting (instead of returning) leaves the batch in flight uncommitted, so it is consumed
    again after a restart; the message names the cause without identifying data.
    """
    try:
        runner.run()
    except RunnerFatal as exc:
        log.critical("%s", exc)
        exit_process(EXIT_FATAL)
    except BaseException as exc:
        log.critical("unrecoverable %s in the runner; exiting without commit", type(exc).__name__)
        exit_process(EXIT_FATAL)
    else:
        if not runner.stopping:
            log.critical("the runner returned without being stopped; exiting")
            exit_process(EXIT_FATAL)


def build_app(
    settings: Settings,
    pipeline: Pipeline,
    partitions: Mapping[str, int],
    *,
    recipients: Sequence[str] = (),
    audit: AuditSink | None = None,
    small_cells: SmallCellStage | None = None,
) -> faust.App:
    """Create the faust app hosting the runner over ``pipeline``; topics must already exist.

    With a web port (``SCREENING_WEB_PORT``, e.g. 6066; 0, the default, is off; bound to ``SCREENING_WEB_BIND``,
    loopback by default), faust's web server answers ``/metrics`` (Prometheus), ``/healthz`` and
    ``/readyz`` only: its table and router endpoints are off. With ``audit``, every batch's
    decision records are committed in its transaction; with ``small_cells``, the guarded
    recipient's views are held and released by small-cell protection.
    """
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    app = faust.App(
        # The runner owns the consumer group; faust's app id differs so nothing of faust joins it.
        f"{settings.group_id}.host",
        id_format="{id}",
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=settings.web_port != 0,
        web_port=settings.web_port or 6066,
        web_bind=settings.web_bind,
        web_host=settings.web_bind,
        web_tables_enabled=False,
        web_router_enabled=False,
        datadir=str(settings.state_dir / "faust"),
    )
    app.boot_strategy = BootStrategy(app, enable_kafka_consumer=False, enable_kafka_producer=False)
    metrics = WorkerMetrics(recipients)
    if pipeline.schemas is not None:
        resolver = pipeline.schemas
        metrics.watch_registry(lambda: resolver.lookups)
    health = Health(stale_after_s=max(30.0, settings.transaction_timeout_ms / 1000))
    listener = OpsListener(metrics, health)
    runner = Runner(settings, pipeline, partitions, listener=listener, audit=audit, small_cells=small_cells)
    _install_web(app, metrics, health)

    @app.service
    class RunnerHost(mode.Service):
        """Starts the runner thread with the app; stops and joins it on shutdown."""

        thread: threading.Thread | None = None

        async def on_start(self) -> None:
            tune_gc()  # the app is built: what it holds stays, the hot path's garbage is young
            self.thread = threading.Thread(target=run_runner_thread, args=(runner,), name="runner", daemon=True)
            self.thread.start()

        async def on_stop(self) -> None:
            health.stopping()
            runner.stop()
            if self.thread is not None:
                await asyncio.to_thread(self.thread.join, STOP_TIMEOUT_S)

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
            runner.stats.line(),
        )
        if small_cells is not None:
            log.info("small cells: %s", small_cells.stats.line())

    return app


def _install_web(app: faust.App, metrics: WorkerMetrics, health: Health) -> None:
    """The three pages of the worker's web port (nothing else is served)."""

    @app.page("/metrics")
    class Metrics(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            return self.bytes(metrics.render(), content_type=METRICS_CONTENT_TYPE)

    @app.page("/healthz")
    class Healthz(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            status = health.liveness()
            return self.text(status.reason + "\n", status=status.status)

    @app.page("/readyz")
    class Readyz(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            status = health.readiness()
            return self.text(status.reason + "\n", status=status.status)


def run_worker(app: faust.App, loglevel: str = "warning") -> None:
    """Run the faust worker in this process until SIGTERM/SIGINT (blocks)."""
    _quiet_framework_loggers(getattr(logging, loglevel.upper(), logging.WARNING))
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
