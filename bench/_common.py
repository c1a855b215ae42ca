"""Helpers shared by the benchmarks in this folder (not a benchmark itself).

Percentiles and table printing, and deterministic framed ingress events (v1/v2 mix); the agency
names and output topics come from :mod:`streams.assembly`. Scripts import it as ``_common`` because
``python bench/<name>.py`` puts ``bench/`` first on ``sys.path``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from streams.contracts.codec import ViewEncoder
from streams.contracts.registry import SchemaRegistryClient
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.publish import event_encoder
from streams.settings import Settings

Row = Sequence[object]


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus ``max`` (all 0 for an empty sequence)."""
    if not values:
        return {**{f"p{p:g}": 0.0 for p in points}, "max": 0.0}
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{p:g}": float(ordered[min(n - 1, max(1, math.ceil(p / 100 * n)) - 1)]) for p in points}
    out["max"] = float(ordered[-1])
    return out


def table(headers: Sequence[str], rows: Sequence[Row], title: str | None = None, left: int = 1) -> str:
    """Render rows as a fixed-width text table (the first ``left`` columns left-aligned)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(
            s.ljust(w) if i < left else s.rjust(w) for i, (s, w) in enumerate(zip(items, widths, strict=True))
        )

    parts = [title] if title else []
    parts += [line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    return "\n".join(parts)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value >= 10_000:
            return f"{value:,.0f}"
        return f"{value:,.2f}" if value < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def framed_stream(
    count: int,
    settings: Settings,
    registry: SchemaRegistryClient,
    *,
    seed: int = 0,
    v2_share: float = 0.0,
    days: int = GeneratorSettings.days,
) -> Iterator[tuple[bytes, bytes, dict[str, object]]]:
    """Yield ``(key, framed value, event)`` for ``count`` events, a ``v2_share`` of them v2.

    Deterministic for ``seed``; v1 and v2 events come from two generators (seeds ``seed`` and
    ``seed + 1``), interleaved by a third RNG. The ingress subject is registered for each version.
    Samples spread over ``days`` days (the generator's 60 by default).
    """
    encoders: dict[int, ViewEncoder] = {1: event_encoder(registry, settings.ingress_topic, 1)}
    streams = {1: generate_events(count, GeneratorSettings(seed=seed, days=days))}
    if v2_share > 0:
        encoders[2] = event_encoder(registry, settings.ingress_topic, 2)
        streams[2] = generate_events(count, GeneratorSettings(seed=seed + 1, schema_version=2, days=days))
    pick = random.Random(seed + 2)
    for _ in range(count):
        version = 2 if v2_share > 0 and pick.random() < v2_share else 1
        event = next(streams[version])
        yield str(event["event_id"]).encode(), encoders[version].encode(event), event
