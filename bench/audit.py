"""Audit benchmark: events/s with and without the audit trail, and ``who-received`` latency over a large index.

1. In-process, same events, alternating rounds: the pipeline's batch path (``process_each`` in
   batches of 500, as the runner calls it) without the audit, and with it (drafts, then sealed and
   chained records for coordinates a fake producer hands out). Broker costs (the extra flush per
   transaction) are not included: see README "Audit and lineage".
2. The audit records of ``--index-events`` events (default 1 400 000, the breach-sized backlog)
   ingested into a SQLite index, then ``who_received`` timed for 1 000 random people
   (p50/p95/p99/max), and ``exposure``/``summary`` once each.

Run: ``python bench/audit.py [--events 20000] [--rounds 3] [--index-events 1400000]``
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import framed_stream, percentiles, table

from streams.assembly import agency_names, build_audit_writer, build_pipeline, key_holders, load_policy_set
from streams.audit.chain import ChainHead
from streams.audit.decisions import Location, PendingAudit
from streams.audit.index import AuditIndex
from streams.audit.keys import AuditKeys
from streams.contracts.registry import InMemorySchemaRegistry
from streams.crypto.keys import generate_key_pair
from streams.crypto.ring import PublicKeyRing
from streams.pipeline import InputRecord, Pipeline
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings

BATCH = 500


def build(settings: Settings, registry: InMemorySchemaRegistry, audit: AuditKeys | None) -> Pipeline:
    """The real pipeline (shipped policies, throw-away keys), auditing when ``audit`` is given."""
    policy_set = load_policy_set(settings)
    keys = StaticKeyRing(generate_keys(agency_names(policy_set)))
    now = time.time_ns() // 1_000_000
    ring = PublicKeyRing(
        [generate_key_pair(a, now - 86_400_000, now + 365 * 86_400_000).public for a in key_holders(policy_set)]
    )
    return build_pipeline(settings, registry, keys, policy_set=policy_set, public_keys=ring, audit_keys=audit)


def run_batches(pipeline: Pipeline, records: Sequence[InputRecord], writer: object | None) -> list[bytes]:
    """Process in batches of 500; with a writer, complete and chain each batch's drafts."""
    heads: dict[int, ChainHead] = {}
    values: list[bytes] = []
    offsets: dict[tuple[str, int], int] = {}
    for start in range(0, len(records), BATCH):
        drafts: list[PendingAudit] = []
        work = pipeline.process_each(records[start : start + BATCH], drafts if writer is not None else None)
        if writer is None:
            continue
        locations: list[Location | None] = []
        for _, outputs in work:
            for out in outputs:
                n = offsets.get((out.topic, 0), 0)
                offsets[(out.topic, 0)] = n + 1
                locations.append((out.topic, 0, n))
        by_partition: dict[int, list[PendingAudit]] = {}
        for d in drafts:
            by_partition.setdefault(d.source[1], []).append(d)
        for partition, group in by_partition.items():
            chained, heads[partition] = writer.chain(  # type: ignore[attr-defined]
                (writer.record(d, locations) for d in group),  # type: ignore[attr-defined]
                heads.get(partition, ChainHead()),
            )
            values.extend(chained)
    return values


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--index-events", type=int, default=1_400_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = Settings()
    registry = InMemorySchemaRegistry()
    audit_keys = AuditKeys(hashlib.sha256(b"bench audit secret").digest())
    writer = build_audit_writer(settings, registry, audit_keys)
    now_ms = int(time.time() * 1000)
    records = [
        InputRecord(settings.ingress_topic, i % settings.ingress_partitions, i, k, v, (), now_ms)
        for i, (k, v, _) in enumerate(framed_stream(args.events, settings, registry, seed=args.seed))
    ]
    print(f"{len(records):,} events; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rates: dict[str, list[float]] = {"audit off": [], "audit on": []}
    for _ in range(args.rounds):
        for label in rates:
            pipeline = build(settings, registry, audit_keys if label == "audit on" else None)
            run_batches(pipeline, records[:1000], writer if label == "audit on" else None)  # warm-up
            gc.collect()
            cpu = time.process_time()
            run_batches(pipeline, records, writer if label == "audit on" else None)
            rates[label].append(len(records) / (time.process_time() - cpu))
    rows = [[label, statistics.median(v), min(v), max(v)] for label, v in rates.items()]
    print(table(["mode", "median events/CPU-s", "min", "max"], rows, title="\nbatch path, in process"))
    off, on = statistics.median(rates["audit off"]), statistics.median(rates["audit on"])
    print(f"audit cost: {1e6 / on - 1e6 / off:.1f} µs per event ({off:,.0f} → {on:,.0f} events/s)")

    if args.index_events <= 0:
        return
    print(f"\nindex of {args.index_events:,} events (generating, processing, ingesting) ...", flush=True)
    pipeline = build(settings, registry, audit_keys)
    with tempfile.TemporaryDirectory() as tmp:
        index = AuditIndex(Path(tmp) / "audit.sqlite")
        nirs: list[str] = []
        started = time.perf_counter()
        chunk: list[InputRecord] = []
        offset = 0
        from streams.domain.generate import GeneratorSettings, generate_events
        from streams.kafka.publish import event_encoder

        encoder = event_encoder(registry, settings.ingress_topic)
        for i, event in enumerate(generate_events(args.index_events, GeneratorSettings(seed=args.seed + 7))):
            if i % 997 == 0:
                nirs.append(str(event["nir"]))
            chunk.append(InputRecord(settings.ingress_topic, 0, i, None, encoder.encode(event), (), now_ms))
            if len(chunk) == 20_000:
                values = run_batches(pipeline, chunk, writer)
                index.ingest(0, [(offset + j, writer.decode(v)) for j, v in enumerate(values)])
                offset += len(values)
                chunk = []
                print(f"  {offset:,} indexed ({time.perf_counter() - started:.0f} s)", flush=True)
        if chunk:
            values = run_batches(pipeline, chunk, writer)
            index.ingest(0, [(offset + j, writer.decode(v)) for j, v in enumerate(values)])
        size = (Path(tmp) / "audit.sqlite").stat().st_size
        print(f"built in {time.perf_counter() - started:.0f} s; index file {size / 1e6:.0f} MB")
        sample = random.Random(1).choices(nirs, k=1000)
        latencies = []
        found = 0
        for nir in sample:
            t0 = time.perf_counter()
            found += len(index.who_received(audit_keys.person(nir)))
            latencies.append((time.perf_counter() - t0) * 1000)
        p = percentiles(latencies)
        print(
            f"who-received over {args.index_events:,} events, 1 000 people ({found:,} deliveries): "
            f"p50 {p['p50']:.2f} ms, p95 {p['p95']:.2f} ms, p99 {p['p99']:.2f} ms, max {p['max']:.2f} ms"
        )
        for name, call in (
            ("exposure cnam (whole window)", lambda: index.exposure("cnam", 0, 2**62)),
            ("summary (whole window)", lambda: index.summary(0)),
        ):
            t0 = time.perf_counter()
            call()
            print(f"{name}: {(time.perf_counter() - t0) * 1000:.0f} ms")
        index.close()


if __name__ == "__main__":
    sys.exit(main())
