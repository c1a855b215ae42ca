"""The README's main job, run as a test: its summary counts what really reached each topic."""

from __future__ import annotations

import re

from streams.cli.demo import run_demo
from streams.domain.generate import GeneratorSettings, generate_events
from streams.stack.settings import Endpoints


def test_demo_summary_counts_records_and_dead_letters(stack: Endpoints) -> None:
    """The demo's per-topic counts: SPF records released plus those small-cell protection holds equal the
    production events, and the DLQ holds the 4 poison records."""
    lines: list[str] = []
    run_demo(count=2_000, seed=3, keep_running=True, echo=lines.append)
    text = "\n".join(lines)
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)(?: \([a-z ]+\))?\s+(\d+)$", text, re.M)}
    production = sum(1 for e in generate_events(2_000, GeneratorSettings(seed=3)) if e["processing_mode"] == "P")
    assert counts["screening.results.v1"] == 2_004
    # Small-cell protection: SPF views of classes below k are held until their window closes.
    held = counts["screening.spf.hold.v1"]
    assert 0 < held <= production and counts["surveillance.spf.results.v1"] + held == production
    assert counts["screening.results.dlq.v1"] == 4
    assert "dead-letter reasons: bad_magic=1, not_framed=1, undecodable=1, unknown_schema_id=1" in text
    assert "worker stopped (exit 0)" in text
