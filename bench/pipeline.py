"""In-process pipeline benchmark: the real Pipeline, no Kafka, no faust.

Builds the pipeline exactly as the worker does (``streams.assembly.build_pipeline``) but with
an ``InMemorySchemaRegistry`` and throw-away keys (``generate_keys`` / ``StaticKeyRing``),
pre-generates N framed ingress events (Confluent framing; ``--v2-share`` of them written with
the v2 contract), then measures

1. ``pipeline.process(record)`` per event: events/s and per-event latency percentiles, plus
   outputs per event, outputs per topic and dead letters;
2. a per-stage breakdown, running the pipeline's parts directly on the same events:
   ``decoder.decode``, ``validator.check``, ``minimiser.apply`` and the output encoders
   (``ViewEncoder.encode`` of every view); "rest" is process() minus the four stages
   (record/headers construction, stats, try/except);
3. with ``--profile``, a cProfile of ``process`` over the events (top functions by own time).

Run: ``python bench/pipeline.py [--events 100000] [--v2-share 0.3] [--seed 0] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import time
from collections.abc import Sequence

from _common import framed_stream, percentiles, table

from streams.assembly import agency_names, build_pipeline, load_policy_set, subject_for
from streams.contracts.codec import ViewEncoder, register_encoder
from streams.contracts.registry import InMemorySchemaRegistry
from streams.pipeline import InputRecord, Pipeline, PipelineStats
from streams.policy.outputs import output_schema
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings

STAGES = ("decode", "validate", "minimise", "encode")


def build(
    settings: Settings, registry: InMemorySchemaRegistry
) -> tuple[Pipeline, dict[str, ViewEncoder]]:
    """The real pipeline plus the per-agency encoders it uses (same registry, same schema ids)."""
    policy_set = load_policy_set(settings)
    keys = StaticKeyRing(generate_keys(agency_names(policy_set)))
    pipeline = build_pipeline(settings, registry, keys, policy_set=policy_set)
    schemas = {p.recipient: output_schema(p, policy_set.input_schema) for p in policy_set.policies}
    encoders = {
        a.agency: register_encoder(
            registry, subject_for(settings.topic_prefix + a.topic), schemas[a.recipient]
        )
        for a in pipeline.minimiser.agencies
    }
    return pipeline, encoders


def time_process(
    pipeline: Pipeline, records: Sequence[InputRecord]
) -> tuple[float, list[float], int]:
    """Return (wall seconds, per-event µs, outputs) of ``pipeline.process`` over ``records``."""
    clock = time.perf_counter_ns
    process = pipeline.process
    lat: list[float] = []
    outputs = 0
    started = time.perf_counter()
    for record in records:
        t0 = clock()
        outputs += len(process(record))
        lat.append((clock() - t0) / 1000)
    return time.perf_counter() - started, lat, outputs


def time_stages(
    pipeline: Pipeline, encoders: dict[str, ViewEncoder], values: Sequence[bytes]
) -> dict[str, list[float]]:
    """Per-event µs of each stage, calling the pipeline's parts directly (valid events only)."""
    clock = time.perf_counter_ns
    decode, check, apply = (
        pipeline.decoder.decode,
        pipeline.validator.check,
        pipeline.minimiser.apply,
    )
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for value in values:
        t0 = clock()
        _, event = decode(value)
        t1 = clock()
        check(event)
        t2 = clock()
        views = apply(event)
        t3 = clock()
        for view in views:
            encoders[view.agency.agency].encode(view.record)
        t4 = clock()
        for stage, ns in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            out[stage].append(ns / 1000)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, run the measurements and print the tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--v2-share", type=float, default=0.0, help="share of events written with the v2 contract"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile", action="store_true", help="also profile process() with cProfile"
    )
    parser.add_argument("--top", type=int, default=15, help="profile rows to print")
    args = parser.parse_args(argv)

    settings = Settings()
    registry = InMemorySchemaRegistry()
    t0 = time.perf_counter()
    now_ms = time.time_ns() // 1_000_000
    records: list[InputRecord] = []
    v2 = 0
    for i, (key, value, event) in enumerate(
        framed_stream(args.events, settings, registry, seed=args.seed, v2_share=args.v2_share)
    ):
        records.append(
            InputRecord(
                settings.ingress_topic, i % settings.ingress_partitions, i, key, value, (), now_ms
            )
        )
        v2 += "vaccination_status" in event
    warmup = [
        InputRecord(settings.ingress_topic, 0, i, k, v, (), now_ms)
        for i, (k, v, _) in enumerate(
            framed_stream(2000, settings, registry, seed=args.seed + 100, v2_share=args.v2_share)
        )
    ]
    print(
        f"generated {len(records):,} framed events ({v2:,} v2) "
        f"in {time.perf_counter() - t0:.1f} s; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )

    # Each measurement gets a fresh pipeline (fresh keys, so cold pseudonym caches), warmed on
    # 2,000 other events (writer-schema cache, code paths).
    pipeline, _ = build(settings, registry)
    pipeline.process_many(warmup)
    pipeline.stats = PipelineStats()
    gc.collect()
    seconds, lat, outputs = time_process(pipeline, records)
    pct = percentiles(lat)
    n = len(records)
    print()
    print(
        table(
            (
                "measure",
                "events",
                "seconds",
                "events/s",
                "µs/event",
                "p50 µs",
                "p95 µs",
                "p99 µs",
                "max µs",
            ),
            [
                (
                    "pipeline.process",
                    n,
                    seconds,
                    n / seconds,
                    seconds / n * 1e6,
                    pct["p50"],
                    pct["p95"],
                    pct["p99"],
                    pct["max"],
                )
            ],
        )
    )
    stats = pipeline.stats
    print(
        f"\noutputs: {outputs:,} = {outputs / n:.3f} per event; dead letters: "
        f"{sum(stats.dead_letters.values())} {dict(stats.dead_letters) or ''}"
    )
    by_recipient: dict[str, int] = {}
    for topic, count in stats.produced.items():
        group = "tracing.ars.*" if topic.startswith("tracing.ars.") else topic
        by_recipient[group] = by_recipient.get(group, 0) + count
    print(
        table(
            ("topic", "records", "per event"),
            [(t, c, c / n) for t, c in sorted(by_recipient.items())],
        )
    )

    fresh, encoders = build(settings, registry)
    fresh.process_many(warmup)
    gc.collect()
    valid = [r.value for r in records if r.value is not None]
    stages = time_stages(fresh, encoders, valid)
    total = sum(map(sum, stages.values())) / len(valid)
    rows: list[tuple[object, ...]] = []
    for stage in STAGES:
        p = percentiles(stages[stage])
        mean = sum(stages[stage]) / len(valid)
        rows.append(
            (
                stage,
                mean,
                f"{mean / (seconds / n * 1e6):.0%}",
                p["p50"],
                p["p95"],
                p["p99"],
                p["max"],
            )
        )
    rest = seconds / n * 1e6 - total
    rows.append(("rest of process()", rest, f"{rest / (seconds / n * 1e6):.0%}", "", "", "", ""))
    print()
    print(
        table(
            ("stage", "mean µs", "of process", "p50 µs", "p95 µs", "p99 µs", "max µs"),
            rows,
            title="per-stage breakdown (each stage timed separately on the same events):",
        )
    )

    if args.profile:
        profiled, _ = build(settings, registry)
        profiled.process_many(warmup)
        profiler = cProfile.Profile()
        profiler.enable()
        profiled.process_many(records)
        profiler.disable()
        print(f"\ncProfile of process() over {n:,} events, top {args.top} by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
