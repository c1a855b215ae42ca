"""Side-by-side backlog benchmark (issue 11): the worker against a bare transactional passthrough, then live latency.

One invocation, on the local stack (``lifecycle.up``, or reused), under a fresh prefix
``backlog<unix time>.``, with the SHIPPED policies (small-cell protection on, encryption on:
throw-away agency key pairs), throw-away pseudonym keys, the ACL plan applied, and an audit
secret (``<run dir>/audit.key``, ``SCREENING_AUDIT_KEY_FILE``): the worker audits every event.

1. Pre-loads ``--events`` framed events into the ingress topic (progress every ~2 s).
2. Contender A, the worker: ONE ``python -m streams.cli worker`` process (exactly once, its
   defaults, as the processor principal). Every ~0.5 s: its group's committed lag, its RSS
   (``VmRSS``) and CPU seconds, until lag zero; then SIGTERM.
3. Contender B, the passthrough: ONE ``python bench/_passthrough.py`` process (aiokafka, as the
   admin) copying the SAME records (key, value, headers) of the same ingress topic to
   ``<prefix>bench.passthrough.v1`` (same partition) with one transaction per
   ``getmany(max_records=500)`` (``send_offsets_to_transaction``, ``read_committed``): what an
   exactly-once consume → produce loop in Python costs without any processing. Sampled the same way.
4. Ratio = worker / passthrough, steady (10 % → 90 % of the backlog, start-up excluded) and
   process start → lag zero (start-up included; lag zero is seen up to ~1.5 s late).
5. Live: one worker again (same group, now at the end of the ingress), a 500-event warm-up
   drained and the group Stable, then for each ``--rates`` rate ``--live-duration`` s of
   publishing at that rate. Latency = when a ``read_committed`` reader first sees an output −
   when the bench sent its event. Agency records carry no ingress time (by design), so the bench
   maps each event to its output keys with an in-process Pipeline with the same keys (the audit
   changes no key). Percentiles are over the CNAM and ARS outputs (``tracing.*``: emitted at
   once); SPF views under small-cell protection may be HELD until their class has k members, so
   SPF is reported apart (views released during the phase, and their latency, hold time included).
6. Reads back (after all timing) the agency, audit, dead-letter and passthrough sink topics:
   outputs and audit records per event, dead letters (must be 0), sink records (must equal the events).
7. Writes ``backlog-throughput.png`` (events/s over time of both contenders, ~2 s smoothing, RSS on
   the right axis) and ``live-latency.png`` (latency CDF per rate, p50/p99 marked) to
   ``--plots-dir``, prints the tables, and with ``--json FILE`` every figure as JSON.

Bench topics, both groups and the ACLs are deleted at the end unless ``--keep-topics``; the
broker and registry keep running.

Run: ``python bench/backlog.py [--events 1400000] [--live-duration 30] [--rates 1000,5000]
[--plots-dir docs/bench] [--json FILE] [--keep-topics]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _plots
from _common import framed_stream, percentiles, table
from _drain import MIB, Drain, drain, rss_bytes
from _passthrough import auth_environment
from _setup import BenchRun, cleanup, prepare
from _stack import CREDENTIAL_VARIABLES, LiveReader, Raw, cpu_seconds, paced_publish, start_workers, stop_workers
from _stack import wait_members as wait_worker_members
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as ConfluentPartition

from streams.audit.keys import generate_secret, write_secret
from streams.kafka.offsets import wait_for_lag_zero
from streams.kafka.publish import publish_raw
from streams.kafka.topics import TopicSpec, admin_client, ensure_topics
from streams.pipeline import InputRecord, Pipeline

WARMUP = 500
SINK = "bench.passthrough.v1"
PASSTHROUGH_GROUP = "bench-passthrough"
Keys = list[tuple[str, bytes | None]]


@dataclass
class Live:
    """One live rate: what was published, and per recipient (cnam, ars, spf) the outputs expected, seen, timed."""

    rate: float
    events: int
    published_s: float
    worker_cpu: float
    worker_rss: float  # MiB, at the end of the phase
    ready_s: float  # the live worker's start → warm-up drained and group Stable
    caught_up_s: float  # publishing done → lag zero (long: the worker could not keep up with the rate)
    expected: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def timed(self) -> list[float]:
        """Latencies (ms) of the CNAM and ARS outputs: the percentiles' population."""
        return [*self.latencies.get("cnam", []), *self.latencies.get("ars", [])]

    def summary(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        return {
            "rate": self.rate,
            "events": self.events,
            "published_s": self.published_s,
            "achieved_rate": self.events / self.published_s,
            "worker_cpu_s": self.worker_cpu,
            "worker_rss_mib_at_end": self.worker_rss,
            "worker_ready_s": self.ready_s,
            "lag_zero_after_publishing_s": self.caught_up_s,
            "expected": dict(self.expected),
            "seen": dict(self.seen),
            "latency_ms_cnam_ars": percentiles(self.timed),
            "latency_ms_spf_released": percentiles(self.latencies.get("spf", [])),
        }


def policies(args: argparse.Namespace) -> str:
    """What the worker ran, for titles."""
    return "shipped policies (small cells, encryption)" if args.small_cells == "on" else "policies without small cells"


def recipient(topic: str) -> str:
    """``cnam``, ``ars`` or ``spf`` for an agency topic (with the prefix)."""
    return "cnam" if ".tracing.cnam." in topic else "ars" if ".tracing.ars." in topic else "spf"


def parse_args() -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_400_000, help="backlog size")
    p.add_argument("--live-duration", type=float, default=30.0, help="seconds of publishing per live rate")
    p.add_argument("--rates", default="1000,5000", help="live rates, events/s, comma-separated")
    p.add_argument("--plots-dir", type=Path, default=Path("docs/bench"))
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="max seconds to wait for lag zero")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument(
        "--small-cells",
        choices=("on", "off"),
        default="on",
        help="on: the shipped policies; off: the same without k_anonymity (what memory the held views take)",
    )
    args = p.parse_args()
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--rates: comma-separated numbers, got {args.rates!r}")
    if args.events < 10 or not args.rates or min(args.rates) <= 0 or args.live_duration <= 0:
        p.error("need --events >= 10, positive --rates and --live-duration")
    return args


def live_feed(bench: BenchRun, reference: Pipeline, counts: list[int], seed: int) -> tuple[list[Raw], list[Keys]]:
    """The warm-up and live events (seed ``seed``, other ids than the backlog's), and each live event's output keys."""
    topic, outputs = bench.settings.ingress_topic, set(bench.outputs)
    records: list[Raw] = []
    keys_of: list[Keys] = []
    stream = framed_stream(WARMUP + sum(counts), bench.settings, bench.registry, seed=seed)
    for i, (key, value, _event) in enumerate(stream):
        records.append((key, value, ()))
        if i >= WARMUP:
            out = reference.process(InputRecord(topic, 0, i, key, value))
            keys_of.append([(r.topic, r.key) for r in out if not r.dead_letter and r.topic in outputs])
    return records, keys_of


def preload(bench: BenchRun, count: int, seed: int) -> float:
    """Publish ``count`` framed events to the ingress topic (progress every ~2 s); return the seconds taken."""
    topic = bench.settings.ingress_topic
    t0 = last = time.monotonic()
    done = 0

    def progress(sent: int) -> None:
        nonlocal last, done
        now = time.monotonic()
        if (now - last >= 2 or sent == count) and sent != done:
            last, done = now, sent
            print(f"pre-load {sent:,}/{count:,} ({sent / max(now - t0, 1e-3):,.0f} ev/s)", flush=True)

    records = ((key, value, ()) for key, value, _ in framed_stream(count, bench.settings, bench.registry, seed=seed))
    auth = bench.settings.kafka_auth
    asyncio.run(
        publish_raw(bench.settings.bootstrap_servers, topic, records, bench.parts[topic], auth=auth, progress=progress)
    )
    return time.monotonic() - t0


def start_passthrough(bench: BenchRun, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start ``_passthrough.py`` as the admin (credentials in its environment), logging to ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env.update(auth_environment(bench.settings.kafka_auth))
    prefix, settings = bench.prefix, bench.settings
    command = [sys.executable, str(Path(__file__).with_name("_passthrough.py"))]
    command += ["--bootstrap", settings.bootstrap_servers, "--source", settings.ingress_topic, "--sink", prefix + SINK]
    command += ["--group", prefix + PASSTHROUGH_GROUP, "--transactional-id", f"{prefix}{PASSTHROUGH_GROUP}-0"]
    with (log_dir / "passthrough.log").open("ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def contend(bench: BenchRun, name: str, args: argparse.Namespace) -> Drain:
    """Start one contender process on the pre-loaded backlog, sample it until lag zero, stop it."""
    settings = bench.settings
    started = time.monotonic()
    if name == "worker":
        proc = start_workers(1, settings, bench.keys_file, bench.run_dir)[0]
        group, log = settings.group_id, bench.run_dir / "worker0" / "worker.log"
    else:
        proc = start_passthrough(bench, bench.run_dir / "passthrough")
        group, log = bench.prefix + PASSTHROUGH_GROUP, bench.run_dir / "passthrough" / "passthrough.log"
    print(f"{name} started (pid {proc.pid}), load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        result = drain(
            name,
            proc,
            started,
            bootstrap=settings.bootstrap_servers,
            group=group,
            topic=settings.ingress_topic,
            auth=settings.kafka_auth,
            total=args.events,
            timeout_s=args.timeout,
            broker_pid=bench.broker_pid,
            log=log,
        )
    finally:
        result_code = stop_workers([proc])[0]
    result.exit_code = result_code
    print(f"{name}: lag zero {result.wall:.1f} s after start; stopped, exit code {result_code}", flush=True)
    return result


def run_live(bench: BenchRun, args: argparse.Namespace, records: list[Raw], keys_of: list[Keys]) -> list[Live]:
    """Restart one worker, drain the warm-up, then time each rate's outputs (see the module docstring)."""
    settings, topic = bench.settings, bench.settings.ingress_topic
    auth, bootstrap = settings.kafka_auth, settings.bootstrap_servers
    asyncio.run(publish_raw(bootstrap, topic, records[:WARMUP], bench.parts[topic], auth=auth))
    started = time.monotonic()
    worker = start_workers(1, settings, bench.keys_file, bench.run_dir / "live")[0]
    results: list[Live] = []
    try:
        wait_for_lag_zero(bootstrap, settings.group_id, topic, auth=auth, timeout_s=args.timeout)
        wait_worker_members(settings, 1)
        ready = time.monotonic() - started
        rss = rss_bytes(worker.pid) / MIB
        print(f"live: worker ready after {ready:.1f} s (warm-up of {WARMUP} drained), RSS {rss:,.0f} MiB", flush=True)
        at = WARMUP
        for rate in args.rates:
            n = int(rate * args.live_duration)
            batch, keys = records[at : at + n], keys_of[at - WARMUP : at - WARMUP + n]
            at += n
            reader = LiveReader(bootstrap, bench.outputs, auth=auth)
            sent_ms: list[float] = []
            cpu0 = cpu_seconds(worker.pid)
            took = asyncio.run(paced_publish(settings, batch, bench.parts[topic], rate, sent_ms))
            caught_up = wait_for_lag_zero(bootstrap, settings.group_id, topic, auth=auth, timeout_s=args.timeout)
            if worker.poll() is not None:
                raise RuntimeError(f"the live worker exited with {worker.returncode}; see {bench.run_dir}/live")
            settle(reader)
            reader.stop()
            live = Live(rate, n, took, cpu_seconds(worker.pid) - cpu0, rss_bytes(worker.pid) / MIB, ready, caught_up)
            for sent, outs in zip(sent_ms, keys, strict=True):
                for out in outs:
                    who = recipient(out[0])
                    live.expected[who] += 1
                    seen = reader.arrived.get(out)
                    if seen is not None:
                        live.seen[who] += 1
                        live.latencies.setdefault(who, []).append(seen - sent)
            pct = percentiles(live.timed)
            print(
                f"live {rate:,.0f} ev/s: {n:,} events in {took:.1f} s; CNAM+ARS outputs "
                f"{live.seen['cnam'] + live.seen['ars']:,}/{live.expected['cnam'] + live.expected['ars']:,} seen, "
                f"p50 {pct['p50']:,.0f} ms, p99 {pct['p99']:,.0f} ms",
                flush=True,
            )
            results.append(live)
    finally:
        stop_workers([worker])
    return results


def settle(reader: LiveReader, quiet_s: float = 1.5, limit_s: float = 15.0) -> None:
    """Wait until the reader has seen nothing new for ``quiet_s`` (at most ``limit_s``)."""
    deadline, seen, since = time.monotonic() + limit_s, len(reader.arrived), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        if len(reader.arrived) != seen:
            seen, since = len(reader.arrived), time.monotonic()


def readback(bench: BenchRun) -> dict[str, int]:
    """Committed records per topic, read: agency topics, audit, dead letters, passthrough sink.

    Read with librdkafka (``read_committed``, values not kept: a 1.4 M backlog leaves ~3 M records
    to count), to each partition's end as it was when the count started (offsets alone over-count:
    transaction markers take offsets too).
    """
    s = bench.settings
    topics = [*bench.outputs, s.audit_topic, s.dlq_topic, bench.prefix + SINK]
    consumer = Consumer(
        {
            "bootstrap.servers": s.bootstrap_servers,
            **s.kafka_auth.librdkafka(),
            "group.id": f"{bench.prefix}bench-readback",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 52_428_800,
        }
    )
    counts: Counter[str] = Counter({t: 0 for t in topics})
    try:
        tps = [ConfluentPartition(t, p, 0) for t in topics for p in range(bench.parts[t])]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, 30)[1] for tp in tps}
        consumer.assign(tps)
        left = {k for k, end in ends.items() if end > 0}
        idle = time.monotonic()
        while left and time.monotonic() - idle < 15:
            messages = consumer.consume(10_000, 0.5)
            if messages:
                idle = time.monotonic()
            for m in messages:
                if m.error() is None:
                    counts[m.topic() or "?"] += 1
            done = consumer.position([ConfluentPartition(t, p) for t, p in left])
            left -= {(tp.topic, tp.partition) for tp in done if tp.offset >= ends[(tp.topic, tp.partition)]}
        if left:
            raise RuntimeError(f"read back stalled: {len(left)} partitions not read to their end")
    finally:
        consumer.close()
    return dict(counts)


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when either is not a number or ``b`` is 0."""
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")


def report(
    args: argparse.Namespace, drains: list[Drain], lives: list[Live], counts: dict[str, int], conditions: dict[str, Any]
) -> dict[str, Any]:
    """Print the summary tables; return every figure (for ``--json``)."""
    worker, passthrough = drains
    steady_ratio = ratio(worker.steady, passthrough.steady)
    zero_ratio = ratio(worker.to_lag_zero, passthrough.to_lag_zero)
    rows: list[tuple[object, ...]] = []
    for d in drains:
        first = d.first
        rows.append(
            (
                d.name,
                d.steady,
                d.to_lag_zero,
                f"{ratio(d.steady, passthrough.steady):.2f} / {ratio(d.to_lag_zero, passthrough.to_lag_zero):.2f}",
                d.wall,
                first.t if first else float("nan"),
                d.rss_start,
                d.rss_end,
                d.rss_max,
                d.cpu,
                f"{d.cpu / d.wall:.0%}",
                d.broker_cpu,
            )
        )
    heads: tuple[str, ...] = ("contender", "ev/s steady", "ev/s start→lag 0", "ratio (steady / →0)", "start→lag 0 s")
    heads += ("1st commit s", "RSS start MiB", "RSS end MiB", "RSS max MiB", "CPU s", "CPU/wall", "broker CPU s")
    title = (
        f"backlog of {args.events:,} events, one process each, exactly once; worker = {policies(args)} "
        "+ audit; passthrough = aiokafka transactional copy of the same bytes"
    )
    print("\n" + table(heads, rows, title=title))
    print(f"ratio worker / passthrough: steady {steady_ratio:.3f}, start → lag zero {zero_ratio:.3f}")
    lrows: list[tuple[object, ...]] = []
    for lv in lives:
        pct, spf = percentiles(lv.timed), percentiles(lv.latencies.get("spf", []))
        tracing = f"{lv.seen['cnam'] + lv.seen['ars']:,}/{lv.expected['cnam'] + lv.expected['ars']:,}"
        lrows.append(
            (
                f"{lv.rate:,.0f}",
                lv.events / lv.published_s,
                lv.caught_up_s,
                tracing,
                pct["p50"],
                pct["p95"],
                pct["p99"],
                pct["max"],
                f"{lv.seen['spf']:,}/{lv.expected['spf']:,}",
                spf["p50"],
                spf["p99"],
                f"{lv.worker_cpu / lv.published_s:.0%}",
                lv.worker_rss,
            )
        )
    lheads: tuple[str, ...] = (
        "rate ev/s",
        "achieved",
        "lag 0 after s",
        "CNAM+ARS seen/exp",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
    )
    lheads += ("SPF released/exp", "SPF p50", "SPF p99", "worker CPU", "RSS MiB")
    ready = lives[0].ready_s if lives else float("nan")
    ltitle = (
        f"live, one worker (ready {ready:.1f} s after its start), {args.live_duration:g} s per rate: latency = "
        "read_committed reader sees the output − bench sent the event;\npercentiles over the CNAM+ARS outputs "
        "(SPF apart: held views wait for k, their release time includes the hold);\nlag 0 after = publishing "
        "done → committed lag zero (well over ~1 s: the worker fell behind the rate, latency is then queueing)"
    )
    print("\n" + table(lheads, lrows, title=ltitle, left=0))
    print("\n" + table(("condition", "value"), list(conditions.items()), title="measuring conditions:"))
    return {
        "conditions": conditions,
        "backlog": {d.name: d.summary() for d in drains},
        "ratio_worker_to_passthrough": {"steady": steady_ratio, "start_to_lag_zero": zero_ratio},
        "live": [lv.summary() for lv in lives],
        "records_read_back": counts,
    }


def conditions_of(
    args: argparse.Namespace, bench: BenchRun, counts: dict[str, int], live_events: int, load: list[float]
) -> dict[str, Any]:
    """CPUs, load averages, events, outputs and audit records per event, dead letters, sink check."""
    s = bench.settings
    total = args.events + WARMUP + live_events
    outputs = sum(counts.get(t, 0) for t in bench.outputs)
    dead = counts.get(s.dlq_topic, 0)
    sink = counts.get(bench.prefix + SINK, 0)
    return {
        "CPUs": os.cpu_count(),
        "load average (1 min) at start / before live / end": " / ".join(f"{x:.2f}" for x in load),
        "python": platform.python_version(),
        "backlog events": args.events,
        "live events (+ warm-up)": f"{live_events:,} (+ {WARMUP})",
        "outputs per event (agency topics, SPF still held not counted)": round(outputs / total, 3),
        "audit records per event": round(counts.get(s.audit_topic, 0) / total, 3),
        "dead letters (must be 0)": f"{dead} ({'ok' if dead == 0 else 'NOT 0'})",
        "passthrough sink records == backlog events": f"{sink:,} ({'yes' if sink == args.events else 'NO'})",
        "ingress partitions": bench.parts[s.ingress_topic],
        "prefix": bench.prefix,
    }


def main() -> None:
    """Run the whole comparison once (see the module docstring)."""
    args = parse_args()
    for name in ("SCREENING_POLICY_DIR", "SCREENING_KANON_WINDOW_S", "SCREENING_KANON_GRACE_S"):
        os.environ.pop(name, None)  # the shipped policies and windows
    os.environ.pop("SCREENING_PROCESSING_GUARANTEE", None)  # the worker's default: exactly once
    load = [os.getloadavg()[0]]
    bench = prepare("backlog", small_cells=args.small_cells == "on")
    settings, run_dir = bench.settings, bench.run_dir
    audit_key = run_dir / "audit.key"
    write_secret(audit_key, generate_secret())
    os.environ["SCREENING_AUDIT_KEY_FILE"] = str(audit_key)  # inherited by the workers: they audit
    sink = bench.prefix + SINK
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        spec = TopicSpec(sink, bench.parts[settings.ingress_topic], {"retention.ms": str(86_400_000)})
        bench.parts.update(ensure_topics(admin, [spec], settings.replication_factor))
    finally:
        admin.close()
    print(
        f"backlog: {args.events:,} events, prefix {bench.prefix}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f}; state {run_dir}",
        flush=True,
    )
    try:
        t0 = time.monotonic()
        counts_live = [int(rate * args.live_duration) for rate in args.rates]
        records, keys_of = live_feed(bench, bench.reference(), counts_live, args.seed + 1)
        print(f"generated {len(records):,} live events and their output keys in {time.monotonic() - t0:.1f} s")
        took = preload(bench, args.events, args.seed)
        print(f"pre-loaded {args.events:,} events in {took:.1f} s", flush=True)
        drains = [contend(bench, "worker", args), contend(bench, "passthrough", args)]
        load.append(os.getloadavg()[0])
        lives = run_live(bench, args, records, keys_of)
        load.append(os.getloadavg()[0])
        t1 = time.monotonic()
        counts = readback(bench)
        print(f"read back {sum(counts.values()):,} records in {time.monotonic() - t1:.1f} s", flush=True)
        figures = report(args, drains, lives, counts, conditions_of(args, bench, counts, sum(counts_live), load))
        plots(args, drains, lives)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        dead, sink = counts.get(settings.dlq_topic, 0), counts.get(bench.prefix + SINK, 0)
        if dead or sink != args.events:  # a rate is only worth quoting when nothing was rejected or lost
            raise SystemExit(f"FAILED: {dead:,} dead letters, passthrough sink {sink:,} of {args.events:,} events")
    finally:
        if not args.keep_topics:
            cleanup(settings, bench.bench_topics(), bench.policy_set, [bench.prefix + PASSTHROUGH_GROUP])


def plots(args: argparse.Namespace, drains: list[Drain], lives: list[Live]) -> None:
    """Write the two PNGs to ``--plots-dir``."""
    args.plots_dir.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count()
    through = args.plots_dir / "backlog-throughput.png"
    _plots.throughput(
        drains,
        through,
        f"Draining a backlog of {args.events:,} events, one process each ({cpus} CPUs):\nthe worker "
        f"({policies(args)}, audit; exactly once) vs a transactional aiokafka passthrough",
    )
    latency = args.plots_dir / "live-latency.png"
    _plots.latency(
        {f"{lv.rate:,.0f} ev/s": lv.timed for lv in lives},
        latency,
        f"Live end-to-end latency, one worker ({cpus} CPUs), {args.live_duration:g} s per rate: CNAM + ARS outputs",
    )
    print(f"wrote {through} and {latency}")


if __name__ == "__main__":
    main()
