"""Unit tests of the synthetic screening-event generator (streams.domain.generate)."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import COMMUNES, REGIONS, department_of, region_of
from streams.domain.nir import nir_problem
from streams.errors import ConfigError

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
COUNT = 5_000
DAY_MS = 86_400_000
COMMUNE_CODES = {c.insee_code for c in COMMUNES}


def load_schema(version: int) -> dict[str, Any]:
    """Read the raw .avsc of a version."""
    text = (SCHEMAS / f"screening_event.v{version}.avsc").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def strip_logical_types(node: Any) -> Any:
    """Replace every {"type": X, "logicalType": ...} by X, recursively."""
    if isinstance(node, list):
        return [strip_logical_types(item) for item in node]
    if isinstance(node, dict):
        if "logicalType" in node:
            return strip_logical_types(node["type"])
        return {key: strip_logical_types(value) for key, value in node.items()}
    return node


@pytest.fixture(scope="module")
def events() -> list[dict[str, object]]:
    """5 000 v1 events of seed 7."""
    return list(generate_events(COUNT, GeneratorSettings(seed=7)))


@pytest.fixture(scope="module")
def events_v2() -> list[dict[str, object]]:
    """2 000 v2 events of seed 8."""
    return list(generate_events(2_000, GeneratorSettings(seed=8, schema_version=2)))


@pytest.mark.parametrize("version", [1, 2])
def test_events_validate_against_the_contract(
    version: int, events: list[dict[str, object]], events_v2: list[dict[str, object]]
) -> None:
    """Every event is a valid datum of its .avsc (logical types kept), with no extra key."""
    schema = fastavro.parse_schema(load_schema(version))
    for event in events if version == 1 else events_v2:
        assert validate(event, schema, strict=True)


@pytest.mark.parametrize("version", [1, 2])
def test_events_are_wire_native(
    version: int, events: list[dict[str, object]], events_v2: list[dict[str, object]]
) -> None:
    """Events round-trip unchanged through the schema with logical types stripped."""
    raw = load_schema(version)
    stripped = fastavro.parse_schema(strip_logical_types(raw))
    names = [field["name"] for field in raw["fields"]]
    for event in (events if version == 1 else events_v2)[:1_000]:
        assert list(event) == names
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, stripped, event)
        buffer.seek(0)
        assert fastavro.schemaless_reader(buffer, stripped) == event


def test_same_seed_same_events_other_seed_other_events() -> None:
    """Generation is deterministic for a seed and differs between seeds."""
    first = list(generate_events(300, GeneratorSettings(seed=42)))
    again = list(generate_events(300, GeneratorSettings(seed=42)))
    other = list(generate_events(300, GeneratorSettings(seed=43)))
    assert first == again
    assert [e["event_id"] for e in first] != [e["event_id"] for e in other]


def test_event_ids_are_unique_uuid4(events: list[dict[str, object]]) -> None:
    """event_id is a distinct version-4 UUID string."""
    ids = [str(e["event_id"]) for e in events]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_nir_is_valid_and_consistent_with_sex_and_birth_date(
    events: list[dict[str, object]],
) -> None:
    """The NIR key is right, its sex digit matches sex and its year/month match birth_date."""
    for event in events:
        nir = str(event["nir"])
        assert nir_problem(nir) is None, event
        assert {"1": "M", "2": "F"}[nir[0]] == event["sex"]
        born = date(1970, 1, 1) + timedelta(days=int(str(event["birth_date"])))
        assert nir[1:5] == f"{born.year % 100:02d}{born.month:02d}"
        place = nir[5:10]
        assert place in COMMUNE_CODES or (place.startswith("99") and place.isdigit())


def test_birth_places_include_abroad_corsica_and_overseas(
    events: list[dict[str, object]],
) -> None:
    """Some people are born abroad (99), in Corsica (2A/2B) and overseas (97x)."""
    departments = Counter(str(e["nir"])[5:7] for e in events)
    assert departments["99"] > 0 and departments["97"] > 0
    assert departments["2A"] + departments["2B"] > 0


def test_ages_range_from_0_to_100_skewed_to_adults(events: list[dict[str, object]]) -> None:
    """Ages at sampling are 0-100 and mostly adults."""
    ages = []
    for event in events:
        sampled = date(1970, 1, 1) + timedelta(milliseconds=int(str(event["sampled_at"])))
        born = date(1970, 1, 1) + timedelta(days=int(str(event["birth_date"])))
        ages.append((sampled - born).days / 365.2425)
    assert min(ages) >= 0 and max(ages) < 102
    assert sum(age >= 18 for age in ages) / len(ages) > 0.7


def test_communes_route_to_all_18_regions(events: list[dict[str, object]]) -> None:
    """Every commune maps to a region; 5 000 events reach all 18; postcode/city match it."""
    by_code = {c.insee_code: c for c in COMMUNES}
    regions = set()
    for event in events:
        commune = by_code[str(event["commune_code"])]
        assert (event["postcode"], event["city"]) == (commune.postcode, commune.name)
        region = region_of(commune.insee_code)
        assert region is not None
        regions.add(region)
    assert regions == set(REGIONS)


def test_times_are_ordered_and_within_the_window(events: list[dict[str, object]]) -> None:
    """sampled_at < validated_at < emitted_at, samples within start_ms + days."""
    settings = GeneratorSettings()
    end = settings.start_ms + settings.days * DAY_MS
    for event in events:
        sampled, validated, emitted = (int(str(event[k])) for k in ("sampled_at", "validated_at", "emitted_at"))
        assert settings.start_ms <= sampled < end
        assert sampled < validated <= sampled + 72 * 3_600_000
        assert validated < emitted


def test_symptom_onset_only_when_symptomatic_and_before_sampling(
    events: list[dict[str, object]],
) -> None:
    """An onset date is set only for symptomatic people, 0-7 days before the sampling day."""
    assert {e["symptomatic"] for e in events} == {True, False, None}
    onsets = 0
    for event in events:
        onset = event["symptom_onset_date"]
        if onset is None:
            continue
        onsets += 1
        assert event["symptomatic"] is True
        sampled_day = int(str(event["sampled_at"])) // DAY_MS
        assert 0 <= sampled_day - int(str(onset)) <= 7
    assert onsets > 0


def test_prescriber_is_all_or_nothing_about_70_percent(events: list[dict[str, object]]) -> None:
    """Prescriber fields are all set (~70%, RPPS 11 digits, FINESS 9 chars) or all None."""
    present = [e for e in events if e["prescriber_rpps"] is not None]
    assert 0.65 < len(present) / len(events) < 0.75
    for event in present:
        rpps = str(event["prescriber_rpps"])
        assert len(rpps) == 11 and rpps.isdigit()
        assert len(str(event["prescriber_org_finess"])) == 9
        assert event["prescriber_last_name"] and event["prescriber_first_name"]
    for event in events:
        if event["prescriber_rpps"] is None:
            assert all(v is None for k, v in event.items() if k.startswith("prescriber_"))


def test_contact_and_lab_fields_look_real(events: list[dict[str, object]]) -> None:
    """Lab FINESS has 9 chars; phones are 10 digits, mostly mobile; e-mail sometimes absent."""
    assert all(len(str(e["lab_finess"])) == 9 for e in events)
    phones = [str(e["phone"]) for e in events if e["phone"] is not None]
    assert all(len(p) == 10 and p.isdigit() and p[0] == "0" for p in phones)
    assert sum(p[:2] in ("06", "07") for p in phones) / len(phones) > 0.7
    emails = [e["email"] for e in events]
    assert None in emails and any(emails)
    assert all(e["address_lines"] and e["last_name"] and e["first_names"] for e in events)


def test_shares_follow_the_settings(events: list[dict[str, object]]) -> None:
    """~15% positive, ~1% indeterminate, ~2% T/D modes, collective housing mostly NONE."""
    results = Counter(e["result"] for e in events)
    assert 0.13 < results["POSITIVE"] / COUNT < 0.17
    assert 0.004 < results["INDETERMINATE"] / COUNT < 0.02
    modes = Counter(e["processing_mode"] for e in events)
    assert 0.01 < (modes["T"] + modes["D"]) / COUNT < 0.03
    housing = Counter(e["collective_housing"] for e in events)
    assert 0.9 < housing["NONE"] / COUNT < 0.99
    assert housing["NURSING_HOME"] > 0
    kinds = Counter(e["test_kind"] for e in events)
    assert (kinds["RT_PCR"] + kinds["ANTIGEN"]) / COUNT > 0.9


def test_custom_shares_are_honoured() -> None:
    """positive_share=0.5 and non_production_share=0 change the mix accordingly."""
    settings = GeneratorSettings(seed=1, positive_share=0.5, non_production_share=0.0)
    events = list(generate_events(2_000, settings))
    positives = sum(e["result"] == "POSITIVE" for e in events) / len(events)
    assert 0.45 < positives < 0.55
    assert all(e["processing_mode"] == "P" for e in events)


def test_v2_fields_are_mostly_set(events_v2: list[dict[str, object]]) -> None:
    """schema_version=2 adds variant_screening and vaccination_status, mostly non-null."""
    for field in ("variant_screening", "vaccination_status"):
        values = [e[field] for e in events_v2]
        assert sum(v is not None for v in values) / len(values) > 0.8


def test_v1_events_have_no_v2_fields(events: list[dict[str, object]]) -> None:
    """Version 1 events carry no v2 key."""
    assert all("variant_screening" not in e and "vaccination_status" not in e for e in events)


def test_departments_of_events_are_known(events: list[dict[str, object]]) -> None:
    """Every event's commune code has a department (the routing key is well formed)."""
    assert all(department_of(str(e["commune_code"])) is not None for e in events)


@pytest.mark.parametrize(
    "overrides",
    [
        {"positive_share": -0.1},
        {"positive_share": 1.0},
        {"non_production_share": 1.5},
        {"schema_version": 3},
        {"days": 0},
    ],
)
def test_invalid_settings_raise_config_error(overrides: dict[str, Any]) -> None:
    """Settings that cannot make a sensible stream are rejected at construction."""
    with pytest.raises(ConfigError):
        GeneratorSettings(**overrides)


def test_negative_count_raises_at_call() -> None:
    """A negative count is rejected when generate_events is called, not on iteration."""
    with pytest.raises(ConfigError):
        generate_events(-1)
    assert list(generate_events(0)) == []
