"""Avro codec micro-benchmark: fastavro vs the pure-Python ``avro`` package, per event.

Measures decode and encode of

* the 29-field screening event (``schemas/screening_event.v1.avsc``), and
* the 10-field SPF view (``surveillance.spf.results.v1``, the output contract derived from
  ``policies/spf.yaml``), built from the same events by the real policy engine,

with logical types stripped exactly as on the hot path (``streams.contracts.schemas.strip_logical_types``):

* fastavro ``schemaless_reader`` / ``schemaless_writer`` on a parsed schema,
* ``avro`` 1.12 ``DatumReader`` / ``DatumWriter`` with ``BinaryDecoder`` / ``BinaryEncoder``,
* for reference, the project's own path: ``streams.contracts.codec.EventDecoder.decode`` (unframing,
  writer-schema cache, trailing-byte check) and ``ViewEncoder.encode`` (framed output).

Every call is timed on its own with ``perf_counter_ns`` (the timer itself costs ~0.1 µs, shown
as the "timer floor" row). ``µs/event`` is the median over ``--runs`` runs of the mean per run;
percentiles pool the per-call samples of all runs. This justifies "fastavro on the hot path".

Run: ``python bench/codecs.py [--events 2000] [--runs 7] [--seed 0]``
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import avro.io
import avro.schema
import fastavro
from _common import percentiles, table

from streams.assembly import agency_names, load_policy_set
from streams.contracts.codec import EventDecoder, ViewEncoder
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.schemas import Schema, strip_logical_types
from streams.contracts.wire import frame
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.engine import Minimiser
from streams.policy.outputs import output_schema
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings

Case = tuple[str, str, Callable[[Any], Any], Sequence[Any]]


def fastavro_codec(schema: Schema) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    """Return (decode, encode) functions of fastavro for ``schema`` (logical types stripped)."""
    parsed = fastavro.parse_schema(strip_logical_types(schema))

    def decode(body: bytes) -> Any:
        return fastavro.schemaless_reader(io.BytesIO(body), parsed, None)

    def encode(record: Any) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, record)
        return buffer.getvalue()

    return decode, encode


def avro_codec(schema: Schema) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    """Return (decode, encode) functions of the ``avro`` package for ``schema``."""
    parsed = avro.schema.parse(json.dumps(strip_logical_types(schema)))
    reader = avro.io.DatumReader(parsed, parsed)
    writer = avro.io.DatumWriter(parsed)

    def decode(body: bytes) -> Any:
        return reader.read(avro.io.BinaryDecoder(io.BytesIO(body)))

    def encode(record: Any) -> bytes:
        buffer = io.BytesIO()
        writer.write(record, avro.io.BinaryEncoder(buffer))
        return buffer.getvalue()

    return decode, encode


def time_case(fn: Callable[[Any], Any], items: Sequence[Any], runs: int) -> tuple[float, list[float]]:
    """Return (median over runs of mean µs per call, every per-call sample in µs)."""
    for item in items:  # warm-up pass
        fn(item)
    clock = time.perf_counter_ns
    means: list[float] = []
    samples: list[float] = []
    for _ in range(runs):
        gc.collect()
        run: list[int] = []
        for item in items:
            t0 = clock()
            fn(item)
            run.append(clock() - t0)
        means.append(sum(run) / len(run) / 1000)
        samples += [ns / 1000 for ns in run]
    return statistics.median(means), samples


def build_inputs(count: int, seed: int) -> tuple[Schema, list[dict[str, Any]], Schema, list[dict[str, Any]]]:
    """Events and the SPF views the real Minimiser builds from them (throw-away keys)."""
    settings = Settings()
    policy_set = load_policy_set(settings)
    schema = policy_set.input_schema
    events = list(generate_events(count, GeneratorSettings(seed=seed)))
    keys = StaticKeyRing(generate_keys(agency_names(policy_set)))
    minimiser = Minimiser(policy_set.policies, schema, keys, DEFAULT_GEOGRAPHY)
    spf = next(p for p in policy_set.policies if p.recipient == "spf")
    views = [v.record for e in events for v in minimiser.apply(e) if v.agency.agency == "spf"]
    return schema, events, output_schema(spf, schema), views


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, run every case and print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="distinct events per run")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    event_schema, events, view_schema, views = build_inputs(args.events, args.seed)
    fa_dec, fa_enc = fastavro_codec(event_schema)
    av_dec, av_enc = avro_codec(event_schema)
    fv_dec, fv_enc = fastavro_codec(view_schema)
    avv_dec, avv_enc = avro_codec(view_schema)
    bodies = [fa_enc(e) for e in events]
    view_bodies = [fv_enc(v) for v in views]

    registry = InMemorySchemaRegistry()
    schema_id = registry.register("bench-value", json.dumps(event_schema))
    decoder = EventDecoder(registry, event_schema)
    framed = [frame(schema_id, b) for b in bodies]
    view_encoder = ViewEncoder(view_schema, registry.register("bench-view-value", json.dumps(view_schema)))

    same = (
        all(av_dec(b) == fa_dec(b) == e for b, e in zip(bodies[:200], events[:200], strict=True))
        and all(av_enc(e) == b for e, b in zip(events[:200], bodies[:200], strict=True))
        and all(avv_dec(b) == fv_dec(b) for b in view_bodies[:200])
    )
    size, view_size = statistics.mean(map(len, bodies)), statistics.mean(map(len, view_bodies))
    sizes = f"event {size:.0f} B, view {view_size:.0f} B"

    cases: list[Case] = [
        ("timer floor (no-op call)", "-", lambda x: None, bodies),
        ("event 29 fields: decode", "fastavro", fa_dec, bodies),
        ("event 29 fields: decode", "avro", av_dec, bodies),
        ("event 29 fields: decode", "streams EventDecoder", decoder.decode, framed),
        ("event 29 fields: encode", "fastavro", fa_enc, events),
        ("event 29 fields: encode", "avro", av_enc, events),
        ("SPF view 10 fields: decode", "fastavro", fv_dec, view_bodies),
        ("SPF view 10 fields: decode", "avro", avv_dec, view_bodies),
        ("SPF view 10 fields: encode", "fastavro", fv_enc, views),
        ("SPF view 10 fields: encode", "avro", avv_enc, views),
        ("SPF view 10 fields: encode", "streams ViewEncoder", view_encoder.encode, views),
    ]
    rows = []
    baseline: dict[str, float] = {}
    for name, lib, fn, items in cases:
        median_us, samples = time_case(fn, items, args.runs)
        if lib == "fastavro":
            baseline[name] = median_us
        ratio = median_us / baseline[name] if name in baseline else None
        pct = percentiles(samples)
        rows.append(
            (
                name,
                lib,
                median_us,
                1e6 / median_us if median_us else 0.0,
                pct["p50"],
                pct["p95"],
                pct["p99"],
                pct["max"],
                f"{ratio:.1f}x" if ratio else "-",
            )
        )
    print(
        f"fastavro {fastavro.__version__}, avro {getattr(avro, '__version__', '?')}; "
        f"{len(events)} events / {len(views)} SPF views per run, {args.runs} runs; "
        f"mean size {sizes}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"both libraries decode to identical dicts and encode identical bytes: {'yes' if same else 'NO'}\n")
    print(
        table(
            (
                "case",
                "library",
                "µs/event",
                "events/s",
                "p50 µs",
                "p95 µs",
                "p99 µs",
                "max µs",
                "vs fastavro",
            ),
            rows,
            left=2,
        )
    )


if __name__ == "__main__":
    main()
