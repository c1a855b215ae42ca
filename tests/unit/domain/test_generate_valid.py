"""Synthetic events are valid input: the processor's own validator accepts every one."""

from __future__ import annotations

from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.domain.validation import EventValidator

NOW_MS = 1_767_225_600_000  # 2026-01-01


def test_every_generated_event_passes_validation() -> None:
    """60 000 events over several seeds and shares raise no rejection (e.g. no onset before birth)."""
    validator = EventValidator(DEFAULT_GEOGRAPHY, clock_ms=lambda: NOW_MS)
    checked = 0
    for seed, version, count in ((9, 1, 50_000), (5, 2, 10_000)):
        for event in generate_events(count, GeneratorSettings(seed=seed, schema_version=version, positive_share=0.3)):
            validator.check(event)
            checked += 1
    assert checked == 60_000
