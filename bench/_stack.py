"""Helpers of ``throughput.py``: worker processes, paced publishing, reading outputs back.

Not a benchmark itself; see ``throughput.py``. The bench process itself talks to Kafka as the
stack's admin (``settings.kafka_auth``); the workers get no credentials from it and authenticate as
the processor through the stack's credentials files, so they run under the ACL plan like a deployment.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from streams.credentials import KafkaAuth
from streams.kafka.offsets import wait_for_members
from streams.kafka.publish import aiokafka_auth
from streams.settings import Settings
from streams.stack.settings import StackSettings

Raw = tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]
MASK = (1 << 64) - 1
#: Credentials a worker must not inherit from the bench: it would then not run as the processor.
CREDENTIAL_VARIABLES = ("SCREENING_KAFKA_USERNAME", "SCREENING_KAFKA_PASSWORD", "SCREENING_KAFKA_CREDENTIALS_FILE")


class Expected:
    """Expected outputs per topic: a count and an order-independent digest of (key, value)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sums: Counter[str] = Counter()
        self.production = 0  # events with processing_mode P (= expected SPF records)

    def add(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Account for one output record."""
        self.counts[topic] += 1
        self.sums[topic] = (self.sums[topic] + digest(key, value)) & MASK


def digest(key: bytes | None, value: bytes | None) -> int:
    """64-bit hash of one record's key and value."""
    h = hashlib.blake2b(key or b"", digest_size=8)
    h.update(b"\x00" + (value or b""))
    return int.from_bytes(h.digest(), "big")


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of a live process (0 when unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def start_workers(count: int, settings: Settings, keys: Path, run_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` worker processes, each with its own state dir and log file.

    With the local stack they authenticate as the processor (its credentials file in the stack's
    state dir); only against an external broker do they keep the environment's credentials.
    """
    stack = StackSettings.from_env(os.environ)
    inherited = dict(os.environ)
    if not stack.external_bootstrap:
        for name in CREDENTIAL_VARIABLES:
            inherited.pop(name, None)
    workers = []
    for i in range(count):
        state = run_dir / f"worker{i}"
        state.mkdir(parents=True, exist_ok=True)
        env = {
            **inherited,
            "SCREENING_STREAMS_STATE": str(stack.state_dir),
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": settings.registry_url,
            "SCREENING_KEYS_FILE": str(keys),
            "SCREENING_TOPIC_PREFIX": settings.topic_prefix,
            "SCREENING_STATE_DIR": str(state),
        }
        with (state / "worker.log").open("ab") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM every worker, wait up to 60 s each, kill the stragglers; return exit codes."""
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
    return [w.returncode for w in workers]


def wait_members(settings: Settings, count: int, timeout_s: float = 120) -> None:
    """Block until the worker group is Stable with ``count`` members."""
    wait_for_members(
        settings.bootstrap_servers, settings.group_id, auth=settings.kafka_auth, timeout_s=timeout_s, count=count
    )


async def paced_publish(
    settings: Settings, records: list[Raw], partitions: int, rate: float, sent_ms: list[float] | None = None
) -> float:
    """Send ``records`` at ``rate`` per second (5 ms ticks); return the seconds taken.

    ``sent_ms`` (if given) receives each record's wall-clock send time in ms, in order.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        **aiokafka_auth(settings.kafka_auth),
        acks="all",
        linger_ms=2,
        enable_idempotence=True,
    )
    await producer.start()
    try:
        start, sent, pending = time.monotonic(), 0, []
        while sent < len(records):
            due = min(len(records), int((time.monotonic() - start) * rate) + 1)
            for key, value, headers in records[sent:due]:
                if sent_ms is not None:
                    sent_ms.append(time.time() * 1000)
                pending.append(
                    await producer.send(
                        settings.ingress_topic,
                        value,
                        key=key,
                        partition=zlib.crc32(key) % partitions,
                        headers=list(headers),
                    )
                )
            sent = due
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        return time.monotonic() - start
    finally:
        await producer.stop()


class LiveReader:
    """Reads topics (``read_committed``) in a thread from their current end, noting when each record arrives.

    ``arrived[(topic, key)]`` is the wall-clock ms at which this reader first saw the record:
    end-to-end latency is that minus the event's publish time. Output records carry no
    ingress time (an exact join key between agencies), so the benchmark times its own events.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str], *, auth: KafkaAuth) -> None:
        """Assign every partition of ``topics`` at its end offset (call before publishing); read as ``auth``."""
        self.arrived: dict[tuple[str, bytes | None], float] = {}
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            **auth.kafka_python(),
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
        )
        tps = [TopicPartition(t, p) for t in topics for p in sorted(self._consumer.partitions_for_topic(t) or ())]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:
            self._consumer.position(tp)  # resolve the end offsets now, before anything is published
        self._thread = threading.Thread(target=self._run, name="live-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._consumer.poll(timeout_ms=100, max_records=10_000)
            now = time.time() * 1000
            for records in batch.values():
                for r in records:
                    self.arrived.setdefault((r.topic, r.key), now)

    def stop(self) -> None:
        """Stop reading and close the consumer."""
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def read_all(bootstrap: str, topics: Iterable[str], *, auth: KafkaAuth) -> Iterator[ConsumerRecord]:
    """Every record of ``topics`` from the beginning to the current end (with timestamps), read as ``auth``."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        **auth.kafka_python(),
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        fetch_max_bytes=64 << 20,
    )
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        idle = time.monotonic()
        while left and time.monotonic() - idle < 15:
            batch = consumer.poll(timeout_ms=500, max_records=10_000)
            if batch:
                idle = time.monotonic()
            for records in batch.values():
                yield from records
            left = {tp for tp in left if consumer.position(tp) < ends[tp]}
    finally:
        consumer.close()
