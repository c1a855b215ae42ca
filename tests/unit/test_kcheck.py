"""The independent small-cell checker of bench/_kcheck.py (shared by bench/throughput.py and the integration
test) finds what it must: a class below k, a duplicate, withheld fields not matching the step, a lost view."""

from __future__ import annotations

from typing import Any

from streams.assembly import load_policy_set
from streams.contracts.codec import ViewEncoder
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.engine import Minimiser
from streams.policy.outputs import output_schema
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings
from tests.conftest import bench_module

kcheck = bench_module("_kcheck")
POLICIES = load_policy_set(Settings())
SPF = next(p for p in POLICIES.policies if p.recipient == "spf")
ENCODER = ViewEncoder(output_schema(SPF, POLICIES.input_schema), 1)
WINDOW = b"1767225600000"


def _view() -> dict[str, Any]:
    keys = StaticKeyRing(generate_keys([SPF.recipient]))
    minimiser = Minimiser((SPF,), POLICIES.input_schema, keys, DEFAULT_GEOGRAPHY)
    for event in generate_events(50, GeneratorSettings(seed=3)):
        for view in minimiser.apply(dict(event)):
            return dict(view.record)
    raise AssertionError("no SPF view")


VIEW = _view()


def _message(key: bytes, step: int = 0, view: dict[str, Any] | None = None) -> tuple[bytes, bytes, dict[str, bytes]]:
    record = dict(VIEW if view is None else view)
    assert SPF.k_anonymity is not None
    for s in SPF.k_anonymity.ladder[:step]:
        record[s.field] = None
    headers = {"smallcell.window": WINDOW, "smallcell.step": str(step).encode()}
    return key, ENCODER.encode(record), headers


def test_a_class_of_k_passes_and_one_of_k_minus_one_is_a_violation() -> None:
    """Five records of one class at full detail pass; four at step 1 are a class below k."""
    messages = [_message(b"a%d" % i) for i in range(5)] + [_message(b"b%d" % i, step=1) for i in range(4)]
    report = kcheck.check_released(SPF, POLICIES.input_schema, messages)
    assert report.classes == 2 and report.smallest_class == 4
    assert len(report.below_k) == 1 and not report.ok
    assert dict(report.released_by_step) == {0: 5, 1: 4}


def test_duplicates_malformed_unexpected_and_lost_are_counted() -> None:
    """A key twice, a step-1 record still showing its department, a key no event explains, a view missing."""
    shown = _message(b"m")  # full detail...
    shown[2]["smallcell.step"] = b"1"  # ...under a step-1 header: the department should be withheld
    messages = [_message(b"a%d" % i) for i in range(5)] + [_message(b"a0"), (b"m", shown[1], shown[2])]
    report = kcheck.check_released(SPF, POLICIES.input_schema, messages, {b"a%d" % i for i in range(6)})
    assert report.duplicates == 1
    assert report.malformed == 1
    assert report.unexpected == 1  # b"m"
    report.views = 9  # 7 released, none suppressed nor held: 2 lost
    assert report.lost == 2 and not report.ok


def test_still_held_from_the_hold_topic() -> None:
    """Six holds, one open (k - 1 = 4 of them released), one close deciding one more: one still held."""
    close = (None, b'{"released":[1,0,0],"suppressed":0}', {"smallcell.entry": b"close"})
    entries = [(None, b"", {"smallcell.entry": b"hold"})] * 6 + [(None, b"{}", {"smallcell.entry": b"open"}), close]
    hold = kcheck.hold_summary(entries)
    assert hold.still_held(5) == 1 and dict(hold.released_by_step) == {1: 1}
