"""The runner sets aside partitions whose writer schemas are still being looked up (issue 8, item 3).

A flood of unknown schema ids on some ingress partitions must not hold up the others: the
runner processes and commits the partitions that are ready, seeks the waiting ones back and
pauses them (so they are not re-fetched, crowding the others out), committing nothing for them,
and resumes them once their lookups are done.
"""

from __future__ import annotations

from .test_transactional import IN, Harness


def test_waiting_partition_is_paused_while_the_other_is_committed() -> None:
    """Partition 1 waits: partition 0 is delivered first; partition 1 is paused, resumed, delivered; each once."""
    h = Harness(records=3)
    h.pipeline.waiting = {(IN, 1): 3}
    h.run_until_drained()
    processed = [(r.partition, r.offset) for r in h.pipeline.processed]
    assert processed[:3] == [(0, 0), (0, 1), (0, 2)]
    assert sorted(processed) == [(p, o) for p in (0, 1) for o in range(3)]
    assert max(h.delivered().values()) == 1 and len(h.delivered()) == 12
    assert h.runner.stats.deferred == 1
    assert h.consumer.pauses == [("pause", (IN, 1)), ("resume", (IN, 1))]
    assert (IN, 1, 0) in h.consumer.seeks
    assert h.sleeps == []  # deferral is no outage: no backoff


def test_a_batch_entirely_waiting_commits_nothing_until_ready() -> None:
    """When every partition waits, nothing is processed or committed; all is delivered once ready."""
    h = Harness(records=2)
    h.pipeline.waiting = {(IN, 0): 2, (IN, 1): 2}
    h.run_until_drained()
    assert h.runner.stats.deferred == 2
    assert sorted(tp for what, tp in h.consumer.pauses if what == "pause") == [(IN, 0), (IN, 1)]
    assert len(h.delivered()) == 8 and max(h.delivered().values()) == 1
    assert not h.consumer.paused
