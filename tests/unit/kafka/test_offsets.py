"""Waiting for a consumer group: a process that is gone ends the wait at once, with its reason."""

from __future__ import annotations

import pytest

from streams.credentials import NO_AUTH
from streams.kafka.offsets import KafkaIOError, wait_for_members


def test_a_gone_member_ends_the_wait_before_any_broker_call() -> None:
    """``gone`` is asked first each round: its reason is raised at once (no 120 s wait, no broker
    needed: the unreachable address would otherwise be tried)."""
    slept: list[float] = []
    with pytest.raises(KafkaIOError, match="stopped waiting for members: the worker exited with 70"):
        wait_for_members(
            "127.0.0.1:1",
            "g",
            auth=NO_AUTH,
            timeout_s=120,
            sleep=slept.append,
            gone=lambda: "the worker exited with 70",
        )
    assert slept == []
