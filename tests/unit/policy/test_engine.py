"""The minimiser: filters, routing by region, conditional fields, and dry-run explanations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streams.domain.generate import GeneratorSettings, generate_events
from streams.errors import RecordRejected
from streams.policy.engine import Minimiser


def _event(**overrides: Any) -> dict[str, Any]:
    event = dict(next(iter(generate_events(1, GeneratorSettings(seed=7)))))
    event.update({"processing_mode": "P", "result": "POSITIVE", "commune_code": "75056", "collective_housing": "NONE"})
    event.update(overrides)
    return event


def _topics(minimiser: Minimiser, event: dict[str, Any]) -> set[str]:
    return {v.agency.topic for v in minimiser.apply(event)}


def test_positive_production_event_reaches_all_three_recipients(minimiser: Minimiser) -> None:
    """A positive P event in Paris goes to CNAM, the Île-de-France ARS and SPF."""
    assert _topics(minimiser, _event()) == {
        "tracing.cnam.results.v1",
        "tracing.ars.11.results.v1",
        "surveillance.spf.results.v1",
    }


def test_negative_event_reaches_only_surveillance(minimiser: Minimiser) -> None:
    """Negative results are not traced: only SPF receives them."""
    assert _topics(minimiser, _event(result="NEGATIVE")) == {"surveillance.spf.results.v1"}


@pytest.mark.parametrize("mode", ["T", "D"])
def test_test_and_debug_events_reach_nobody(minimiser: Minimiser, mode: str) -> None:
    """Processing modes T and D never reach a production recipient."""
    assert minimiser.apply(_event(processing_mode=mode)) == []


@pytest.mark.parametrize(("commune", "region"), [("2A004", "94"), ("97411", "04"), ("97611", "06"), ("13055", "93")])
def test_regional_routing_uses_the_commune_code(minimiser: Minimiser, commune: str, region: str) -> None:
    """Corsica, La Réunion, Mayotte and Marseille route to their own regional agency."""
    assert f"tracing.ars.{region}.results.v1" in _topics(minimiser, _event(commune_code=commune))


def test_unroutable_commune_is_rejected_not_guessed(minimiser: Minimiser) -> None:
    """A commune whose department has no region raises unknown_commune for a routed recipient."""
    with pytest.raises(RecordRejected) as info:
        minimiser.apply(_event(commune_code="97501"))
    assert info.value.code == "unknown_commune"


def _ars_view(minimiser: Minimiser, event: dict[str, Any]) -> dict[str, Any]:
    return next(v.record for v in minimiser.apply(event) if v.agency.recipient == "ars")


def test_names_and_phone_reach_ars_only_for_collective_housing(minimiser: Minimiser) -> None:
    """ARS sees name and phone for a nursing-home resident, and null otherwise."""
    event = _event(phone="0612345678")
    home = _ars_view(minimiser, {**event, "collective_housing": "NURSING_HOME"})
    assert home["last_name"] == event["last_name"] and home["phone"] == "0612345678"
    alone = _ars_view(minimiser, event)
    assert alone["last_name"] is None and alone["first_names"] is None and alone["phone"] is None


def test_pseudonyms_differ_between_agencies_and_are_stable_within_one(minimiser: Minimiser) -> None:
    """One person gets one pseudonym per agency, different at SPF and at the ARS."""
    event = _event()
    views = {v.agency.recipient: v.record for v in minimiser.apply(event)}
    again = {
        v.agency.recipient: v.record for v in minimiser.apply(_event(event_id="00000000-0000-4000-8000-000000000000"))
    }
    assert views["spf"]["pseudonym"] == again["spf"]["pseudonym"]
    assert views["spf"]["pseudonym"] != views["ars"]["pseudonym"]
    assert views["spf"]["event_ref"] != again["spf"]["event_ref"]


def test_explain_gives_a_reason_for_every_recipient(minimiser: Minimiser) -> None:
    """A dry run of a negative event says why CNAM and ARS do not receive it."""
    decisions = {d.recipient: d for d in minimiser.explain(_event(result="NEGATIVE"))}
    assert decisions["spf"].delivered
    assert not decisions["cnam"].delivered and "result in {POSITIVE}" in decisions["cnam"].reason
    assert not decisions["ars"].delivered


def test_explain_names_fields_withheld_by_a_condition(minimiser: Minimiser) -> None:
    """The ARS decision lists the conditional fields it withholds."""
    ars = next(d for d in minimiser.explain(_event()) if d.recipient == "ars")
    assert ars.delivered and "last_name" in ars.reason and "phone" in ars.reason


def test_agencies_cover_every_region_once(minimiser: Minimiser) -> None:
    """There is one ARS agency, with its own topic, per region of the table (18)."""
    ars = [a for a in minimiser.agencies if a.recipient == "ars"]
    assert len(ars) == 18 and len({a.topic for a in ars}) == 18


def _events(n: int) -> Iterator[dict[str, Any]]:
    return generate_events(n, GeneratorSettings(seed=3))


def test_output_keys_are_exactly_the_policy_fields(minimiser: Minimiser) -> None:
    """Each view has exactly its policy's emitted field names (explicit drops excluded)."""
    for event in _events(300):
        for view in minimiser.apply(event):
            assert list(view.record) == [r.name for r in view.agency.policy.emitted]


# --- partition keys and timestamp grain (issue 8, items 6 and 7) ---------------------------------


def _views(minimiser: Minimiser, event: dict[str, Any]) -> dict[str, Any]:
    return {v.agency.recipient: v for v in minimiser.apply(event)}


def test_one_persons_records_share_a_partition_key_per_agency(minimiser: Minimiser) -> None:
    """Two tests of one person (another event, another day, NIR spelled with spaces) get the same key."""
    first = _event()
    nir = first["nir"]
    spaced = " ".join([nir[:1], nir[1:3], nir[3:5], nir[5:7], nir[7:10], nir[10:13], nir[13:]])
    retest = _event(
        event_id="ffffffff-ffff-4fff-bfff-ffffffffffff", nir=spaced, sampled_at=first["sampled_at"] + 86_400_000
    )
    a, b = _views(minimiser, first), _views(minimiser, retest)
    for recipient in ("cnam", "spf", "ars"):
        assert a[recipient].route_key == b[recipient].route_key
        assert len(a[recipient].route_key) == 16
        assert a[recipient].record["event_ref"] != b[recipient].record["event_ref"]


def test_partition_keys_differ_across_agencies_and_people(minimiser: Minimiser) -> None:
    """One person's keys at CNAM, SPF and ARS are unrelated; two people's keys at one agency differ."""
    events = list(generate_events(200, GeneratorSettings(seed=3)))
    seen: dict[str, set[bytes]] = {"cnam": set(), "spf": set()}
    for event in events:
        views = _views(minimiser, {**event, "processing_mode": "P", "result": "POSITIVE"})
        assert len({v.route_key for v in views.values()}) == len(views)
        for recipient in seen:
            seen[recipient].add(views[recipient].route_key)
    people = len({e["nir"] for e in events})
    assert len(seen["cnam"]) == len(seen["spf"]) == people


def test_partition_key_is_not_a_pseudonym_nor_unkeyed(minimiser: Minimiser) -> None:
    """The key is not the agency's pseudonym bytes nor a plain hash of the NIR (keyed, distinct derivation)."""
    import base64
    import hashlib

    event = _event()
    spf = _views(minimiser, event)["spf"]
    assert base64.urlsafe_b64decode(spf.record["pseudonym"]) != spf.route_key[:15]
    assert spf.route_key != hashlib.sha256(event["nir"].encode()).digest()[:16]


def test_clock_grain_is_a_day_for_the_shipped_policies(minimiser: Minimiser) -> None:
    """SPF and ARS release days and CNAM milliseconds: every agency's record time is a UTC day."""
    from streams.policy.engine import DAY_MS

    assert {a.clock_grain_ms for a in minimiser.agencies} == {DAY_MS}


def test_clock_grain_is_a_week_when_the_policy_releases_time_only_by_week() -> None:
    """Rules releasing only an ISO week, or no point in time at all, get week-truncated record times."""
    from streams.policy.engine import DAY_MS, WEEK_MS, clock_grain_ms
    from streams.policy.model import FieldRule

    kinds = {"sampled_at": "timestamp-millis", "sex": "enum", "birth_date": "date"}

    def rules(*pairs: tuple[str, str]) -> list[FieldRule]:
        return [FieldRule(f"f{i}", (src,), op, {}, "test") for i, (op, src) in enumerate(pairs)]

    assert clock_grain_ms(rules(("iso_week", "sampled_at"), ("keep", "sex")), kinds) == WEEK_MS
    assert clock_grain_ms(rules(("keep", "sex"), ("birth_year", "birth_date")), kinds) == WEEK_MS
    assert clock_grain_ms(rules(("day", "sampled_at")), kinds) == DAY_MS
    assert clock_grain_ms(rules(("keep", "sampled_at"), ("iso_week", "sampled_at")), kinds) == DAY_MS


def test_truncate_to_day_and_to_monday() -> None:
    """Days start at 00:00 UTC; weeks on Monday 00:00 UTC (2026-01-01 is a Thursday)."""
    import datetime as dt

    from streams.policy.engine import DAY_MS, WEEK_MS, truncate_ms

    thursday_noon = int(dt.datetime(2026, 1, 1, 12, 34, 56, 789000, tzinfo=dt.UTC).timestamp() * 1000)
    assert truncate_ms(thursday_noon, DAY_MS) == int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    monday = dt.datetime.fromtimestamp(truncate_ms(thursday_noon, WEEK_MS) / 1000, tz=dt.UTC)
    assert monday == dt.datetime(2025, 12, 29, tzinfo=dt.UTC)
