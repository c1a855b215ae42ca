"""The worker's collector tuning: start-up objects frozen, young collections less often, cycles still collected."""

from __future__ import annotations

import gc

from streams.ops.memory import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_start_up_and_still_collects_cycles() -> None:
    """After tune_gc the thresholds are the worker's, what existed is frozen, and a new cycle is collected."""
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
