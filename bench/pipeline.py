"""In-process pipeline benchmark: the real Pipeline, no Kafka, no faust.

Builds the pipeline exactly as the worker does (``streams.assembly.build_pipeline``) but with
an ``InMemorySchemaRegistry`` and throw-away keys (``generate_keys`` / ``StaticKeyRing``),
pre-generates N framed ingress events (Confluent framing; ``--v2-share`` of them written with
the v2 contract), then measures

1. ``pipeline.process(record)`` per event: events/s and per-event latency percentiles, plus
   outputs per event, outputs per topic and dead letters; and ``pipeline.process_many`` over
   batches of ``--batch`` events (what the worker calls: it adds the key records of the data
   keys each batch used);
2. a per-stage breakdown, running the pipeline's parts directly on the same events:
   ``decoder.decode``, ``validator.check``, ``minimiser.apply``, the field encryption
   (``ViewSealer.seal``) and the output encoders (``ViewEncoder.encode`` of every view); "rest"
   is process() minus the stages (record/headers construction, stats, try/except);
3. with ``--profile``, a cProfile of ``process`` over the events (top functions by own time).

``--encryption both`` (default) measures 1 with the shipped policies (identifying fields
encrypted for their recipient, throw-away agency key pairs) and again with every ``encrypt``
replaced by ``keep`` (the same fields in clear), in one run; ``on`` or ``off`` measures one.

Run: ``python bench/pipeline.py [--events 100000] [--v2-share 0.3] [--seed 0] [--encryption both|on|off]
[--batch 500] [--rounds 3] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import os
import pstats
import statistics
import time
from collections.abc import Sequence

from _common import framed_stream, percentiles, table

from streams.assembly import (
    PolicySet,
    agency_names,
    build_pipeline,
    build_sealers,
    key_holders,
    load_policy_set,
    subject_for,
)
from streams.contracts.codec import ViewEncoder, register_encoder
from streams.contracts.registry import InMemorySchemaRegistry
from streams.crypto.keys import generate_key_pair
from streams.crypto.ring import PublicKeyRing
from streams.crypto.views import ViewSealer
from streams.pipeline import InputRecord, Pipeline, PipelineStats
from streams.policy.outputs import output_schema
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings

STAGES = ("decode", "validate", "minimise", "encrypt", "encode")


def plaintext(policy_set: PolicySet) -> PolicySet:
    """The policies with every ``encrypt`` replaced by ``keep``: the same fields, in clear."""
    policies = tuple(
        dataclasses.replace(
            p, fields=tuple(dataclasses.replace(r, op="keep") if r.op == "encrypt" else r for r in p.fields)
        )
        for p in policy_set.policies
    )
    return PolicySet(policies, policy_set.input_schema)


def build(
    settings: Settings, registry: InMemorySchemaRegistry, encryption: bool = True
) -> tuple[Pipeline, dict[str, ViewEncoder], dict[str, ViewSealer]]:
    """The real pipeline plus the per-agency encoders (same registry, same schema ids) and sealers.

    With ``encryption``, the shipped policies and throw-away agency key pairs; without, the
    plaintext variant of the policies (output subjects under a ``plain.`` prefix).
    """
    policy_set = load_policy_set(settings)
    if not encryption:
        policy_set = plaintext(policy_set)
        settings = settings.with_(topic_prefix="plain.")
    keys = StaticKeyRing(generate_keys(agency_names(policy_set)))
    now = time.time_ns() // 1_000_000
    ring = PublicKeyRing(
        [generate_key_pair(a, now - 86_400_000, now + 365 * 86_400_000).public for a in key_holders(policy_set)]
    )
    pipeline = build_pipeline(settings, registry, keys, policy_set=policy_set, public_keys=ring)
    schemas = {p.recipient: output_schema(p, policy_set.input_schema) for p in policy_set.policies}
    encoders = {
        a.agency: register_encoder(registry, subject_for(settings.topic_prefix + a.topic), schemas[a.recipient])
        for a in pipeline.minimiser.agencies
    }
    sealers = build_sealers(settings, pipeline.minimiser, schemas, ring, now)
    return pipeline, encoders, sealers


def time_process(pipeline: Pipeline, records: Sequence[InputRecord]) -> tuple[float, list[float], int]:
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


def time_batches(pipeline: Pipeline, records: Sequence[InputRecord], size: int) -> tuple[float, int]:
    """Return (wall seconds, outputs) of ``pipeline.process_many`` over batches of ``size`` records."""
    outputs = 0
    started = time.perf_counter()
    for start in range(0, len(records), size):
        outputs += len(pipeline.process_many(records[start : start + size]))
    return time.perf_counter() - started, outputs


def time_stages(
    pipeline: Pipeline, encoders: dict[str, ViewEncoder], sealers: dict[str, ViewSealer], values: Sequence[bytes]
) -> dict[str, list[float]]:
    """Per-event µs of each stage, calling the pipeline's parts directly (valid events only)."""
    clock = time.perf_counter_ns
    decode, check, apply = (
        pipeline.decoder.decode,
        pipeline.validator.check,
        pipeline.minimiser.apply,
    )
    now = time.time_ns() // 1_000_000
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for value in values:
        t0 = clock()
        _, event = decode(value)
        t1 = clock()
        check(event)
        t2 = clock()
        views = apply(event)
        t3 = clock()
        records = []
        for view in views:
            sealer = sealers.get(view.agency.agency)
            records.append(sealer.seal(view.record, view.record["event_ref"], now)[0] if sealer else view.record)
        t4 = clock()
        for view, record in zip(views, records, strict=True):
            encoders[view.agency.agency].encode(record)
        t5 = clock()
        for stage, ns in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            out[stage].append(ns / 1000)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, run the measurements and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--v2-share", type=float, default=0.0, help="share of events written with the v2 contract")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also profile process() with cProfile")
    parser.add_argument("--top", type=int, default=15, help="profile rows to print")
    parser.add_argument(
        "--encryption",
        choices=("both", "on", "off"),
        default="both",
        help="measure with the shipped policies (on), with encrypt replaced by keep (off), or both in one run",
    )
    parser.add_argument("--batch", type=int, default=500, help="records per process_many call")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds per mode")
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
        records.append(InputRecord(settings.ingress_topic, i % settings.ingress_partitions, i, key, value, (), now_ms))
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
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.encryption]
    n = len(records)
    rows: list[tuple[object, ...]] = []
    rates: dict[tuple[bool, str], list[float]] = {}
    cpu_rates: dict[tuple[bool, str], list[float]] = {}  # events per CPU second: steadier on a shared machine
    stats = PipelineStats()
    outputs = 0
    for turn in range(args.rounds):  # modes alternate, so a load change hits both alike
        for encryption in modes:
            label = "encryption on" if encryption else "encryption off"
            pipeline, _, _ = build(settings, registry, encryption)
            pipeline.process_many(warmup)
            pipeline.stats = PipelineStats()
            gc.collect()
            cpu = time.process_time()
            seconds, lat, produced = time_process(pipeline, records)
            cpu_rates.setdefault((encryption, "process"), []).append(n / (time.process_time() - cpu))
            rates.setdefault((encryption, "process"), []).append(n / seconds)
            if turn == 0:
                pct = percentiles(lat)
                latency = (pct["p50"], pct["p95"], pct["p99"], pct["max"])
                rows.append((f"process ({label})", n, seconds, n / seconds, seconds / n * 1e6, *latency))
            if encryption == modes[0]:
                stats, outputs = pipeline.stats, produced
            batched, _, _ = build(settings, registry, encryption)
            batched.process_many(warmup)
            gc.collect()
            cpu = time.process_time()
            seconds, _ = time_batches(batched, records, args.batch)
            cpu_rates.setdefault((encryption, "batches"), []).append(n / (time.process_time() - cpu))
            rates.setdefault((encryption, "batches"), []).append(n / seconds)
            if turn == 0:
                blank = ("", "", "", "")
                rows.append(
                    (f"process_many/{args.batch} ({label})", n, seconds, n / seconds, seconds / n * 1e6, *blank)
                )
    print()
    print(
        table(
            ("measure", "events", "seconds", "events/s", "µs/event", "p50 µs", "p95 µs", "p99 µs", "max µs"),
            rows,
            title="first round:",
        )
    )
    summary = []
    for (encryption, kind), values in rates.items():
        summary.append(
            (
                f"{'process' if kind == 'process' else f'process_many/{args.batch}'} "
                f"({'encryption on' if encryption else 'encryption off'})",
                len(values),
                statistics.median(values),
                min(values),
                max(values),
                statistics.median(cpu_rates[(encryption, kind)]),
            )
        )
    print()
    print(
        table(
            ("measure", "rounds", "median ev/s", "min ev/s", "max ev/s", "median ev/CPU-s"),
            summary,
            title="all rounds:",
        )
    )
    if len(modes) == 2:
        for kind in ("process", "batches"):
            for name, table_of in (("wall", rates), ("CPU", cpu_rates)):
                on, off = statistics.median(table_of[(True, kind)]), statistics.median(table_of[(False, kind)])
                print(
                    f"encryption cost ({kind}, median {name}): {off:,.0f} → {on:,.0f} events/s "
                    f"({(on - off) / off:+.1%}; {1e6 / on - 1e6 / off:+.1f} µs/event)"
                )
    print(
        f"\noutputs ({'encryption on' if modes[0] else 'encryption off'}, process): {outputs:,} = "
        f"{outputs / n:.3f} per event; dead letters: {sum(stats.dead_letters.values())} "
        f"{dict(stats.dead_letters) or ''}"
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
    seconds = n / statistics.median(rates[(modes[0], "process")])

    fresh, encoders, sealers = build(settings, registry, modes[0])
    fresh.process_many(warmup)
    gc.collect()
    valid = [r.value for r in records if r.value is not None]
    stages = time_stages(fresh, encoders, sealers, valid)
    total = sum(map(sum, stages.values())) / len(valid)
    rows = []
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
        profiled, _, _ = build(settings, registry, modes[0])
        profiled.process_many(warmup)
        profiler = cProfile.Profile()
        profiler.enable()
        profiled.process_many(records)
        profiler.disable()
        print(f"\ncProfile of process() over {n:,} events, top {args.top} by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
