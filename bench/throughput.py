"""End-to-end throughput and latency of real worker processes on the real local broker.

Starts (or reuses) the local Kafka broker and Apicurio registry (``lifecycle.up``), creates
fresh topics under a new prefix (``bench<unix time>.``) and throw-away keys, and then:

* ``--mode backlog`` (default): PRE-LOADS ``--events`` events into the ingress topic, then
  starts ``--workers`` processes (``python -m streams.cli worker``, one state dir each) and
  samples the group's committed lag every ~0.5 s (``streams.kafka.offsets.wait_for_lag_zero``) until zero.
  Reports the steady drain rate (consumed 10 % → 90 % of the backlog, start-up excluded), the
  rate from worker start to lag zero (the first-output and outputs/s rates need output arrival
  times: live mode only). Latencies of a backlog are queueing time, not processing time. Lag
  zero is seen up to ~1.5 s late (faust commits every second), which the "→ lag zero" rates include.
* ``--mode live``: starts the workers, drains a 500-event warm-up, waits until every worker has
  joined the group, then publishes at a fixed ``--rate`` for ``--duration`` seconds: the
  latency percentiles are then the real end-to-end processing latency.

Latency (live mode) = when a ``read_committed`` reader running during the run first sees an
output − when the bench sent its event. Output records carry no ingress time (that would be an
exact join key between agencies' records, and their record times are truncated to the day), so
the bench maps each output key to its event with the same keys the workers use (an in-process
Pipeline). Backlog latencies are queueing time and are not reported. Outputs are read back with
kafka-python and checked: per-topic counts and an order-independent digest of (key, value)
against the in-process Pipeline built with the same keys and registry (``--verify full``), or
only SPF count == production-mode events (``--verify spf``). Dead letters should be 0.

Workers are stopped with SIGTERM; bench topics and the consumer group are deleted at the end
unless ``--keep-topics`` (registry subjects are left). The broker and registry keep running.

``--small-cells on`` (default) runs the shipped policies, SPF under small-cell protection (its
views held until their class has k members in the window; the SPF check is then released + still
held == production-mode events, from the hold topic's records); ``off`` runs a copy of the policies
without the ``k_anonymity`` option; ``both`` runs the same backlog without, then with, in one
invocation and prints the two drain rates side by side. ``--verify full`` needs ``off``.

With the option on, an INDEPENDENT k-check (``bench/_kcheck.py``: its own ``read_committed``
consumer over the SPF and hold topics, not the worker's counters) runs after the workers stop:
every released SPF record must lie in a class of at least k within its window at its released
detail; it prints the classes checked, violations, duplicates, released per ladder step (0 = full
detail), suppressed, still held, and lost = production views − released − suppressed − still held
(0), and records no event explains (the SPF ``event_ref`` of every event, computed in-process with
the same keys). ``--kanon-window-s N`` shortens the window to N seconds for the workers
(``SCREENING_KANON_WINDOW_S``, grace ``--kanon-grace-s``, default 2), so windows close during the
run; after lag zero the bench then keeps the workers running until every window has closed (the
workers' ``small cells:`` lines, every 10 s, count every SPF view released or suppressed) before
the check, which then also needs still held = 0. The drain rates stop at lag zero either way.

Run: ``python bench/throughput.py [--events 100000] [--workers 1] [--mode backlog|live]
[--rate 2000] [--duration 30] [--verify full|spf] [--guarantee G] [--small-cells on|off|both]
[--kanon-window-s N] [--kanon-grace-s S] [--keep-topics]``; the 1.4 M backlog benchmark with the
issue-12 check: ``python bench/throughput.py --events 1400000 --verify spf --small-cells both
--kanon-window-s 60``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _common import framed_stream, percentiles, table
from _kcheck import KReport, k_check
from _setup import cleanup, prepare
from _stack import (
    MASK,
    Expected,
    LiveReader,
    Raw,
    cpu_seconds,
    digest,
    paced_publish,
    read_all,
    start_workers,
    stop_workers,
    wait_members,
)

from streams.assembly import output_topics
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import wait_for_lag_zero
from streams.kafka.publish import publish_raw
from streams.pipeline import H_CODE, InputRecord
from streams.policy.engine import Minimiser
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings

WARMUP = 500  # live mode: events drained before timing, so workers have joined and warmed up
STATS = re.compile(r"small cells: held=\d+ released_by_step=\{([^}]*)\} suppressed=(\d+)")


@dataclass
class Result:
    """One run's drain rates (events/s) and, under small-cell protection, the independent k-check."""

    steady: float
    to_lag_zero: float
    kcheck: KReport | None = None


@dataclass
class Timing:
    """What happened while the workers ran (monotonic and wall-clock seconds)."""

    started: float = 0.0
    started_wall: float = 0.0
    done: float = 0.0
    done_wall: float = 0.0
    live_from_ms: int = 0
    sent_ms: list[float] = field(default_factory=list)  # live mode: send time of each timed event
    samples: list[tuple[float, int]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def mark_start(self) -> None:
        """Start the clock (worker start in backlog mode, publishing start in live mode)."""
        self.started, self.started_wall = time.monotonic(), time.time()
        self.live_from_ms = int(self.started_wall * 1000)


@dataclass
class Outputs:
    """What the workers produced, read back from the broker."""

    got: Counter[str] = field(default_factory=Counter)
    sums: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    latencies: list[int] = field(default_factory=list)
    first_ms: int = 1 << 62
    last_ms: int = 0
    hold_kinds: Counter[str] = field(default_factory=Counter)  # small-cell hold topic: hold / open / close


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Drain rate between consuming 10 % and 90 % of ``total`` (lag samples (time, lag))."""
    done = [(t, total - lag) for t, lag in samples]
    a = next(((t, c) for t, c in done if c >= 0.1 * total), None)
    b = next(((t, c) for t, c in done if c >= 0.9 * total), None)
    return (b[1] - a[1]) / (b[0] - a[0]) if a and b and b[0] > a[0] else float("nan")


def collect(
    settings: Settings,
    topics: list[str],
    sent_ms: list[float],
    keys_of: list[list[tuple[str, bytes | None]]],
    arrived: dict[tuple[str, bytes | None], float],
    sealed: set[str],
    holds: list[str] = [],  # noqa: B006 - read only
) -> Outputs:
    """Read every output and dead letter back; time the live events (``keys_of[i]``: event i's outputs)."""
    out = Outputs()
    for r in read_all(settings.bootstrap_servers, [*topics, settings.dlq_topic, *holds], auth=settings.kafka_auth):
        headers = dict(r.headers)
        if r.topic == settings.dlq_topic:
            out.reasons[headers.get(H_CODE, b"?").decode()] += 1
            continue
        if r.topic in holds:
            out.hold_kinds[headers.get("smallcell.entry", b"?").decode()] += 1
            continue
        out.got[r.topic] += 1
        out.sums[r.topic] = (out.sums[r.topic] + digest(r.key, None if r.topic in sealed else r.value)) & MASK
    for sent, keys in zip(sent_ms, keys_of, strict=False):
        for key in keys:
            seen = arrived.get(key)
            if seen is not None:
                out.first_ms, out.last_ms = min(out.first_ms, int(seen)), max(out.last_ms, int(seen))
                out.latencies.append(int(seen - sent))
    return out


def verify_table(settings: Settings, mode: str, out: Outputs, expected: Expected) -> str:
    """Produced vs expected records per topic (ARS topics summed), and dead letters."""
    rows: dict[str, list[int]] = {}
    topics = sorted({*out.got, *expected.counts})
    ars = [t for t in topics if ".tracing.ars." in t]
    for topic in topics:
        name = f"tracing.ars.* ({len(ars)} topics)" if topic in ars else topic
        row = rows.setdefault(name, [0, 0, 1])
        got, want = out.got[topic], expected.counts[topic]
        row[0] += got
        row[1] += want
        row[2] &= got == want and out.sums[topic] == expected.sums[topic]
    body: list[tuple[object, ...]] = [
        (name, g, e, "yes" if ok else "NO") if mode == "full" else (name, g, "-", "-")
        for name, (g, e, ok) in rows.items()
    ]
    dead = sum(out.reasons.values())
    verdict = f"NO {dict(out.reasons)}" if dead else "yes"
    body.append((f"{settings.dlq_topic} (dead letters)", dead, 0, verdict))
    title = (
        "expected = in-process Pipeline on the same events with the same keys; match = "
        "same count and (key, value) digest (key only where fields are encrypted: random nonces)"
        if mode == "full"
        else "expected: skipped (--verify spf)"
    )
    return table(("topic", "produced", "expected", "match"), body, title=title)


def parse_args() -> argparse.Namespace:
    """Command-line flags (see module docstring)."""
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    p.add_argument("--mode", choices=("backlog", "live"), default="backlog")
    p.add_argument("--events", type=int, default=100_000, help="backlog size (backlog mode)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rate", type=float, default=2000.0, help="events/s published (live mode)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of publishing (live mode)")
    p.add_argument("--v2-share", type=float, default=0.0, help="share of events written as v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=60, help="days the samples spread over (the generator's 60)")
    p.add_argument("--verify", choices=("full", "spf"), default="full")
    p.add_argument("--timeout", type=float, default=3600.0, help="max seconds to wait for lag zero")
    p.add_argument(
        "--guarantee",
        choices=("at_least_once", "exactly_once"),
        help="SCREENING_PROCESSING_GUARANTEE for the workers (default: theirs)",
    )
    p.add_argument("--small-cells", choices=("on", "off", "both"), default="on", help="SPF small-cell protection")
    p.add_argument(
        "--kanon-window-s",
        type=int,
        help="small-cell window in seconds for the workers (SCREENING_KANON_WINDOW_S): windows close during the run",
    )
    p.add_argument("--kanon-grace-s", type=int, default=2, help="with --kanon-window-s: SCREENING_KANON_GRACE_S")
    p.add_argument("--keep-topics", action="store_true")
    args = p.parse_args()
    if args.kanon_window_s is not None and args.small_cells == "off":
        p.error("--kanon-window-s needs --small-cells on or both")
    if args.kanon_window_s is not None and args.mode != "backlog":
        p.error("--kanon-window-s: backlog mode only")
    if args.verify == "full" and args.small_cells != "off":
        p.error("--verify full compares every view with the in-process pipeline: it needs --small-cells off")
    return args


def main() -> None:
    """Run the benchmark once per small-cell setting asked for; with ``both``, compare the drain rates."""
    args = parse_args()
    results: dict[str, Result] = {}
    for state in ("off", "on") if args.small_cells == "both" else (args.small_cells,):
        print(f"\n===== small-cell protection {state} =====")
        results[state] = run(args, small_cells=state == "on")
    if len(results) == 2:
        window = f"{args.kanon_window_s} s window" if args.kanon_window_s else "the policy's window"
        print(
            "\n"
            + table(
                ("small-cell protection", "events/s, steady", "events/s, start → lag zero"),
                [(state, r.steady, r.to_lag_zero) for state, r in results.items()],
                title=f"one invocation, {args.events:,} events, {args.workers} worker(s), {window}:",
            )
        )
    checked = [r.kcheck for r in results.values() if r.kcheck is not None]
    if checked and not (checked[0].ok and not (args.kanon_window_s and checked[0].still_held)):
        raise SystemExit("the independent small-cell check FAILED (see its table)")


def wait_all_closed(logs: list[Path], views: int, timeout_s: float) -> int:
    """Block until the workers' last ``small cells:`` lines (every 10 s, one per worker log) count ``views``
    views released or suppressed, or ``timeout_s`` passed; return the count seen last."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while True:
        seen = 0
        for path in logs:
            lines = STATS.findall(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else []
            if lines:
                steps, suppressed = lines[-1]
                seen += sum(int(pair.split(":")[1]) for pair in steps.split(",") if pair) + int(suppressed)
        if seen >= views or time.monotonic() > deadline:
            return seen
        time.sleep(2)


def run(args: argparse.Namespace, *, small_cells: bool) -> Result:
    """Set up, run the workers, read back, report, clean up; return the drain rates and the k-check."""
    os.environ.pop("SCREENING_POLICY_DIR", None)  # the shipped policies, or the copy set below
    window = args.kanon_window_s if small_cells else None
    if args.kanon_window_s:  # both runs alike: the wait for the windows reads the workers' info lines
        os.environ["SCREENING_LOG_LEVEL"] = "info"
    for name, value in (
        ("SCREENING_KANON_WINDOW_S", window),
        ("SCREENING_KANON_GRACE_S", window and args.kanon_grace_s),
    ):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)  # inherited by the workers
    if args.guarantee:
        os.environ["SCREENING_PROCESSING_GUARANTEE"] = args.guarantee  # inherited by the workers
    bench = prepare("bench", small_cells=small_cells)
    settings, prefix, run_dir, policy_set = bench.settings, bench.prefix, bench.run_dir, bench.policy_set
    holds, keys, keys_file, parts, registry = bench.holds, bench.keys, bench.keys_file, bench.parts, bench.registry
    reference = bench.reference()
    live = args.mode == "live"
    guarded = next((p for p in policy_set.policies if p.k_anonymity is not None), None)
    # The k-check's reference: the guarded recipient's event_ref of every event, in-process, same keys.
    checker = (
        Minimiser((guarded,), policy_set.input_schema, StaticKeyRing(keys), DEFAULT_GEOGRAPHY) if guarded else None
    )
    refs: set[bytes] = set()
    # Encrypted views differ run to run (random nonces): their topics are matched on keys only.
    agencies = reference.minimiser.agencies
    sealed = {prefix + a.topic for a in agencies if any(r.op == "encrypt" for r in a.policy.emitted)}
    count = WARMUP + int(args.rate * args.duration) if live else args.events
    expected = Expected()
    keys_of: list[list[tuple[str, bytes | None]]] = []  # live mode: each timed event's output keys
    guarantee = os.environ.get("SCREENING_PROCESSING_GUARANTEE", "worker default")
    print(
        f"{args.mode}: {count:,} events, {args.workers} worker(s) ({guarantee}), prefix {prefix}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; state {run_dir}"
    )

    def feed() -> Iterator[Raw]:
        stream = framed_stream(count, settings, registry, seed=args.seed, v2_share=args.v2_share, days=args.days)
        for i, (key, value, event) in enumerate(stream):
            expected.production += event["processing_mode"] == "P"
            if checker is not None:
                refs.update(v.record["event_ref"].encode() for v in checker.apply(dict(event)))
            if args.verify == "full" or (live and i >= WARMUP):
                outputs = reference.process(InputRecord(settings.ingress_topic, 0, i, key, value))
                if args.verify == "full":
                    for r in outputs:
                        expected.add(r.topic, r.key, None if r.topic in sealed else r.value)
                if live and i >= WARMUP:
                    keys_of.append([(r.topic, r.key) for r in outputs if not r.dead_letter])
            yield key, value, ()

    def publish(records: list[Raw] | Iterator[Raw]) -> None:
        topic = settings.ingress_topic
        asyncio.run(publish_raw(settings.bootstrap_servers, topic, records, parts[topic], auth=settings.kafka_auth))

    broker_pid = bench.broker_pid
    workers: list[subprocess.Popen[bytes]] = []
    timing = Timing()
    try:
        t0 = time.monotonic()
        records = list(feed()) if live else []
        publish(records[:WARMUP] if live else feed())
        what = f"generated {count:,} events, pre-loaded {WARMUP}" if live else f"pre-loaded {count:,}"
        print(f"{what} events in {time.monotonic() - t0:.1f} s")
        timing.mark_start()
        workers = start_workers(args.workers, settings, keys_file, run_dir)
        base = {w.pid: 0.0 for w in workers}
        if live:
            wait_for_lag_zero(
                settings.bootstrap_servers,
                settings.group_id,
                settings.ingress_topic,
                auth=settings.kafka_auth,
                timeout_s=args.timeout,
            )
            wait_members(settings, args.workers)
            print(
                f"workers ready after {time.monotonic() - timing.started:.1f} s; publishing "
                f"{count - WARMUP:,} events at {args.rate:,.0f}/s"
            )
            base = {w.pid: cpu_seconds(w.pid) for w in workers}
            timing.mark_start()
        cpu0 = (cpu_seconds(broker_pid), time.process_time())
        if live:
            partitions = parts[settings.ingress_topic]
            outputs_now = [prefix + t for t in output_topics(policy_set)]
            reader = LiveReader(settings.bootstrap_servers, outputs_now, auth=settings.kafka_auth)
            took = asyncio.run(paced_publish(settings, records[WARMUP:], partitions, args.rate, timing.sent_ms))
            print(f"published {count - WARMUP:,} events in {took:.1f} s = {(count - WARMUP) / took:,.0f}/s")

        def sample(lag: int) -> None:
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker exited early; see {run_dir}/worker*/worker.log")
            timing.samples.append((time.monotonic(), lag))

        wait_for_lag_zero(
            settings.bootstrap_servers,
            settings.group_id,
            settings.ingress_topic,
            auth=settings.kafka_auth,
            timeout_s=args.timeout,
            sleep=lambda _s: time.sleep(0.4),
            on_progress=sample,
        )
        timing.done, timing.done_wall = time.monotonic(), time.time()
        timing.cpu = {f"worker {i} (pid {w.pid})": cpu_seconds(w.pid) - base[w.pid] for i, w in enumerate(workers)}
        timing.cpu["kafka broker"] = cpu_seconds(broker_pid) - cpu0[0]
        timing.cpu["this bench process"] = time.process_time() - cpu0[1]
        if live:
            reader.stop()
        print(f"lag zero {timing.done - timing.started:.1f} s after {'publishing started' if live else 'worker start'}")
        if guarded is not None and window:
            wait_s = window + args.kanon_grace_s + 300.0
            logs = [run_dir / f"worker{i}" / "worker.log" for i in range(len(workers))]
            seen = wait_all_closed(logs, len(refs), wait_s)
            print(
                f"windows closed: the workers count {seen:,} of {len(refs):,} SPF views released or suppressed, "
                f"{time.monotonic() - timing.done:.1f} s after lag zero"
            )
        codes = stop_workers(workers)
        print(f"workers stopped, exit codes {codes}")
        topics = [prefix + t for t in output_topics(policy_set)]
        outputs = collect(settings, topics, timing.sent_ms, keys_of, reader.arrived if live else {}, sealed, holds)
        kreport = None
        if guarded is not None:
            t1 = time.monotonic()
            kreport = k_check(
                settings.bootstrap_servers,
                guarded,
                policy_set.input_schema,
                prefix + guarded.topic,
                settings.hold_topic(guarded.recipient),
                auth=settings.kafka_auth,
                expected_keys=refs,
            )
            print(f"independent k-check read the SPF and hold topics in {time.monotonic() - t1:.1f} s")
        steady, to_zero = report(args, settings, count - WARMUP if live else count, timing, outputs, expected, kreport)
        return Result(steady, to_zero, kreport)
    finally:
        stop_workers(workers)
        if not args.keep_topics:
            cleanup(settings, bench.bench_topics(), policy_set)


def report(
    args: argparse.Namespace,
    settings: Settings,
    n: int,
    timing: Timing,
    out: Outputs,
    expected: Expected,
    kreport: KReport | None = None,
) -> tuple[float, float]:
    """Print rates, latency, CPU and the verification tables; return (steady, start → lag zero) events/s.

    With small-cell protection (``kreport``), SPF released + suppressed + still held (from the hold
    topic, see ``_kcheck.HoldSummary.still_held``) must equal the production-mode events.
    """
    wall = timing.done - timing.started
    n_out = len(out.latencies)
    span = max(out.last_ms - out.first_ms, 1) / 1000
    first = out.first_ms / 1000 - timing.started_wall
    rows: list[tuple[object, ...]] = [
        ("events: drain, steady (10%→90% of backlog)", steady_rate(timing.samples, n), "start-up excluded")
        if args.mode == "backlog"
        else ("events: offered rate", args.rate, f"for {args.duration:.0f} s"),
        ("events: start → lag zero", n / wall, f"{wall:.1f} s"),
    ]
    if n_out:  # output arrival times: only timed (live) events have them
        rows += [
            (
                "events: first output → lag zero",
                n / max(timing.done_wall - out.first_ms / 1000, 1e-3),
                f"first output {first:+.1f} s after start",
            ),
            ("outputs: first → last output", n_out / span, f"{n_out:,} outputs in {span:.1f} s"),
        ]
    print()
    print(table(("rate", "per second", "note"), rows))
    pct = percentiles(out.latencies)
    print()
    heads = ("end-to-end latency (seen by a reader − sent)", "outputs", "p50 ms", "p95 ms", "p99 ms")
    print(
        table(
            (*heads, "max ms"),
            [
                (
                    "live events" if args.mode == "live" else "backlog: not timed (queueing)",
                    len(out.latencies),
                    pct["p50"],
                    pct["p95"],
                    pct["p99"],
                    pct["max"],
                )
            ],
        )
    )
    print()
    print(
        table(
            ("process", "CPU s", "of wall"),
            [(k, v, f"{v / wall:.0%}") for k, v in timing.cpu.items()],
            title=f"CPU over {wall:.1f} s (at most {os.cpu_count()} × 100 %):",
        )
    )
    print()
    print(verify_table(settings, args.verify, out, expected))
    total = n + (WARMUP if args.mode == "live" else 0)
    n_out = sum(out.got.values())
    spf = sum(c for t, c in out.got.items() if t.endswith("surveillance.spf.results.v1"))
    held = kreport.still_held + kreport.hold.suppressed if kreport else 0
    released = f"SPF records {spf:,}" + (
        f" + suppressed {kreport.hold.suppressed:,} + still held {kreport.still_held:,}" if kreport else ""
    )
    print(
        f"\noutputs per event {n_out / total:.3f}; {released} == production-mode events "
        f"{expected.production:,}: {'yes' if spf + held == expected.production else 'NO'}"
        + (f" (hold topic: {dict(out.hold_kinds)})" if kreport else "")
    )
    if kreport is not None:
        print()
        title = "independent k-check over the SPF topic (read_committed, bench/_kcheck.py): "
        checks, ok = (
            kreport.rows(bool(args.kanon_window_s)),
            kreport.ok and not (args.kanon_window_s and kreport.still_held),
        )
        print(table(("check", "count", "verdict"), checks, title=title + ("PASS" if ok else "FAIL")))
    steady = steady_rate(timing.samples, n) if args.mode == "backlog" else float("nan")
    return steady, n / wall


if __name__ == "__main__":
    main()
