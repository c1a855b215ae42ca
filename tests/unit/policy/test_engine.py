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
