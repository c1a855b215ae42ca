"""The worker's CPU path per event, in process: what one exactly-once batch costs the runner thread.

Runs, on the same pre-generated framed events and in batches of ``--batch`` (the worker's
``SCREENING_BATCH_SIZE``), the steps the runner thread takes between ``consume`` and
``commit_transaction`` (``streams.kafka.transactional.Runner._handle``), with the worker's own
assembly: the shipped policies (encryption on: throw-away agency key pairs), the audit on
(``build_audit_writer`` + ``AuditSink``) and small-cell protection on (``build_small_cells``,
every partition rebuilt empty), and a stand-in for librdkafka's producer whose ``produce`` only
counts and hands out offsets (so the audit records get their coordinates):

1. ``pipeline.process_each``: decode, validate, minimise, encrypt, encode, audit drafts;
2. ``SmallCellStage.apply``: hold or release the SPF views, lineage tokens, hold records;
3. ``produce_all``: one ``produce`` call per output (the partition chosen, the headers listed);
4. ``AuditSink.values``: the decision records sealed and chained; then the offsets' metadata.

It prints CPU µs per event for each step (median of ``--rounds``, fresh stages each round),
the events per CPU-second of the whole path, and with ``--profile`` the top functions by own
time (cProfile). No Kafka, no faust: the figures are the floor of the worker's Python, the part
``bench/backlog.py`` cannot separate from the broker and librdkafka.

``--gc worker`` (default) tunes the collector as the worker does (``streams.ops.memory.tune_gc``);
``--gc default`` keeps Python's thresholds (the worker before that tuning).

Run: ``python bench/hotpath.py [--events 20000] [--batch 500] [--rounds 3] [--gc worker|default] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import os
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from _common import framed_stream, table

from streams.assembly import agency_names, build_audit_writer, build_pipeline, key_holders, load_policy_set
from streams.audit.keys import AuditKeys
from streams.contracts.registry import InMemorySchemaRegistry
from streams.crypto.keys import generate_key_pair
from streams.crypto.ring import PublicKeyRing
from streams.kafka.audit_io import AuditSink
from streams.kafka.batches import Batch, produce_all
from streams.kafka.smallcell_io import SmallCellStage, build_small_cells
from streams.ops.memory import tune_gc
from streams.pipeline import InputRecord, Pipeline
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings

STEPS = ("process_each", "small cells", "produce", "audit chain")


class CountingProducer:
    """librdkafka's ``produce`` reduced to handing out the next offset of each partition."""

    def __init__(self) -> None:
        """Start every partition at offset 0."""
        self.offsets: Counter[tuple[str, int]] = Counter()
        self._pending: list[tuple[Callable[..., None], str, int, int]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kw: Any) -> None:
        """Take the record: its delivery report comes at :meth:`flush` (offset assigned now)."""
        partition = kw.get("partition", 0)
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] = offset + 1
        self._pending.append((kw["on_delivery"], topic, partition, offset))

    def flush(self, timeout: float = -1) -> int:
        """Serve the delivery reports of every record produced since the last flush."""
        for callback, topic, partition, offset in self._pending:
            callback(None, _Delivered(topic, partition, offset))
        self._pending.clear()
        return 0

    def poll(self, timeout: float = 0) -> int:
        """Nothing to serve between flushes."""
        return 0


class _Delivered:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class NoReader:
    """Hold-topic reader of a stage whose partitions start empty (never asked for records)."""

    def records(self, topic: str, partition: int, start_ms: int, timeout_s: float) -> list[Any]:
        """No hold entries to replay."""
        return []


def build(settings: Settings, registry: InMemorySchemaRegistry) -> tuple[Pipeline, SmallCellStage, AuditSink]:
    """The worker's pipeline, small-cell stage and audit sink, as ``screening-streams worker`` builds them."""
    policy_set = load_policy_set(settings)
    keys = StaticKeyRing(generate_keys(agency_names(policy_set)))
    now = time.time_ns() // 1_000_000
    ring = PublicKeyRing(
        [generate_key_pair(a, now - 86_400_000, now + 365 * 86_400_000).public for a in key_holders(policy_set)]
    )
    audit_keys = AuditKeys(hashlib.sha256(b"bench audit secret").digest())
    pipeline = build_pipeline(settings, registry, keys, policy_set=policy_set, public_keys=ring, audit_keys=audit_keys)
    stage = build_small_cells(settings, registry, policy_set, reader=NoReader(), audit_keys=audit_keys)
    assert stage is not None, "the shipped policies guard SPF"
    for partition in range(settings.ingress_partitions):
        stage.rebuild(partition, 0, None)
    sink = AuditSink(build_audit_writer(settings, registry, audit_keys), settings.audit_topic)
    return pipeline, stage, sink


def run(
    pipeline: Pipeline, stage: SmallCellStage, sink: AuditSink, records: Sequence[InputRecord], size: int
) -> dict[str, float]:
    """CPU seconds of each step over ``records`` in batches of ``size``."""
    spent = dict.fromkeys(STEPS, 0.0)
    clock = time.process_time
    producer = CountingProducer()
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        batch = Batch(records=list(chunk))
        for r in chunk:
            batch.first.setdefault((r.topic, r.partition), r.offset)
            batch.next[(r.topic, r.partition)] = r.offset + 1
        t0 = clock()
        work = pipeline.process_each(batch.records, batch.audits)
        t1 = clock()
        work = stage.apply(batch, work)
        t2 = clock()
        locations: list[Any] = []
        produce_all(producer, work, [], _AllPartitions(), locations)
        producer.flush()
        t3 = clock()
        _, heads = sink.values(batch.audits, locations)
        extra = {p: stage.metadata(p) for _, p in batch.next}
        batch.positions({**sink.heads_for(p for _, p in batch.next), **heads}, extra)
        sink.committed(heads)
        stage.committed(batch)
        t4 = clock()
        for step, seconds in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[step] += seconds
    return spent


class _AllPartitions(dict[str, int]):
    """Every topic has 6 partitions (outputs without an explicit partition are hashed over them)."""

    def get(self, topic: str, default: Any = None) -> int:  # type: ignore[override]
        """Six partitions, whatever the topic."""
        return 6


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--days", type=int, default=60, help="days the samples spread over: fewer days, denser classes, more releases"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--gc", choices=("worker", "default"), default="worker", help="the worker's collector tuning, or Python's"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    registry = InMemorySchemaRegistry()
    now_ms = int(time.time() * 1000)
    records = [
        InputRecord(settings.ingress_topic, i % settings.ingress_partitions, i // 6, k, v, (), now_ms)
        for i, (k, v, _) in enumerate(framed_stream(args.events, settings, registry, seed=args.seed, days=args.days))
    ]
    print(
        f"{len(records):,} events, batches of {args.batch}, collector: {args.gc}; load average {os.getloadavg()[0]:.2f}"
    )
    rounds: dict[str, list[float]] = {step: [] for step in (*STEPS, "total")}
    for _ in range(args.rounds):
        pipeline, stage, sink = build(settings, registry)
        run(pipeline, stage, sink, records[:1000], args.batch)  # warm-up: caches, first keys
        pipeline, stage, sink = build(settings, registry)
        if args.gc == "worker":
            tune_gc()  # what the worker does once its app is built (streams.ops.memory)
        else:
            gc.unfreeze()
            gc.set_threshold(700, 10, 10)
            gc.collect()
        spent = run(pipeline, stage, sink, records, args.batch)
        for step, seconds in spent.items():
            rounds[step].append(seconds * 1e6 / len(records))
        rounds["total"].append(sum(spent.values()) * 1e6 / len(records))
    rows = [(step, statistics.median(v), min(v), max(v)) for step, v in rounds.items()]
    print(table(("step", "CPU µs/event (median)", "min", "max"), rows))
    total = statistics.median(rounds["total"])
    print(f"whole path: {1e6 / total:,.0f} events per CPU-second (the runner thread's ceiling)")
    if args.profile:
        pipeline, stage, sink = build(settings, registry)
        profiler = cProfile.Profile()
        profiler.enable()
        run(pipeline, stage, sink, records, args.batch)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
