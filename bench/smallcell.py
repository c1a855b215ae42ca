"""In-process cost of small-cell protection: the real pipeline with and without the SPF guard, no Kafka.

Builds the pipeline as the worker does (``bench/pipeline.py``'s ``build``: in-memory registry,
throw-away keys and agency key pairs) and the worker's :class:`~streams.kafka.smallcell_io.SmallCellStage`
for SPF (the shipped option, an injected clock), pre-generates N framed events spread over the
ingress partitions, then, in alternating rounds on fresh pipelines and stages, times batches of
``--batch`` records through

* ``process_each`` alone (what the runner does without the option), and
* ``process_each`` + ``stage.apply`` + ``stage.committed`` (with it: the hold records built, the
  views held or released),

reporting events per CPU-second (steadier on a shared machine) and wall-clock events/s; then
advances the clock past the window and times the close pass (every held view climbing the
ladder), printing how many views were released at each ladder step and suppressed.

Run: ``python bench/smallcell.py [--events 100000] [--days 60] [--batch 500] [--rounds 3] [--seed 0]``
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Sequence

from _common import framed_stream, table
from pipeline import build

from streams.assembly import load_policy_set
from streams.contracts.registry import InMemorySchemaRegistry
from streams.kafka.batches import Batch
from streams.kafka.smallcell_io import SmallCellStage, build_small_cells
from streams.pipeline import InputRecord, Pipeline
from streams.settings import Settings

DAY_MS = 86_400_000


class Clock:
    """The stage's injected wall clock."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _batch(records: Sequence[InputRecord]) -> Batch:
    batch = Batch(records=list(records))
    for r in records:
        batch.first.setdefault((r.topic, r.partition), r.offset)
        batch.next[(r.topic, r.partition)] = r.offset + 1
    return batch


def run(pipeline: Pipeline, stage: SmallCellStage | None, records: Sequence[InputRecord], size: int) -> float:
    """CPU seconds of the batches through the pipeline (and the stage)."""
    if stage is not None:
        for p in {r.partition for r in records}:
            stage.rebuild(p, 0, None)
    cpu = time.process_time()
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        work = pipeline.process_each(chunk)
        if stage is not None:
            batch = _batch(chunk)
            stage.apply(batch, work)
            stage.committed(batch)
    return time.process_time() - cpu


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=60, help="days the samples spread over (generator)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    settings = Settings()
    registry = InMemorySchemaRegistry()
    now = 1_767_225_600_000 + 3_600_000  # 2026-01-01T01:00Z: a fixed instant of one UTC day
    stream = framed_stream(args.events, settings, registry, seed=args.seed, days=args.days)
    records = [
        InputRecord(settings.ingress_topic, i % settings.ingress_partitions, i // settings.ingress_partitions, k, v)
        for i, (k, v, _) in enumerate(stream)
    ]
    print(f"{len(records):,} events over {args.days} sampling days; load average {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    last: SmallCellStage | None = None
    clock = Clock(now)
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            pipeline, _, _ = build(settings, registry)
            stage = (
                build_small_cells(settings, registry, load_policy_set(settings), clock_ms=clock)
                if mode == "on"
                else None
            )
            gc.collect()
            wall = time.perf_counter()
            cpu = run(pipeline, stage, records, args.batch)
            rates[mode].append(len(records) / cpu)
            wall = time.perf_counter() - wall
            print(f"  {mode}: {len(records) / cpu:,.0f} events/CPU-s, {len(records) / wall:,.0f}/s wall")
            last = stage or last
    assert last is not None
    held = last.guard.held_count()
    clock.now = now + DAY_MS + last.ladder.grace_ms
    cpu = time.process_time()
    closing = Batch()
    last.apply(closing, [])
    last.committed(closing)
    close_s = time.process_time() - cpu
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print()
    print(
        table(
            ("measure (median)", "without the option", "with it", "cost"),
            [
                ("events per CPU-second", off, on, f"{(1 / on - 1 / off) * 1e6:+.1f} µs/event ({on / off - 1:+.1%})"),
            ],
            title=f"{args.rounds} alternating rounds, batches of {args.batch}:",
        )
    )
    stats = last.stats
    print(
        f"\nclose pass: {held:,} held views climbed the ladder in {close_s:.2f} CPU-s; "
        f"released at step 0 (class reached k): {stats.released[0]:,}, "
        + ", ".join(f"step {s}: {stats.released[s]:,}" for s in range(1, last.ladder.steps + 1))
        + f", suppressed: {stats.suppressed:,}"
    )


if __name__ == "__main__":
    main()
