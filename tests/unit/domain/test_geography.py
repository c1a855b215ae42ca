"""Unit tests of regions, departments and the commune table (streams.domain.geography)."""

from __future__ import annotations

import dataclasses

import pytest

from streams.domain.geography import (
    COMMUNES,
    DEFAULT_GEOGRAPHY,
    DEPARTMENT_REGION,
    REGIONS,
    Commune,
    Geography,
    department_of,
    region_of,
)


def test_eighteen_regions_and_all_their_departments() -> None:
    """The 18 ARS regions and their 101 departments (incl. 2A/2B and 971-974, 976) are mapped."""
    assert len(REGIONS) == 18
    assert len(DEPARTMENT_REGION) == 101
    assert set(DEPARTMENT_REGION.values()) == set(REGIONS)
    assert DEPARTMENT_REGION["2A"] == DEPARTMENT_REGION["2B"] == "94"
    overseas = {d: DEPARTMENT_REGION[d] for d in ("971", "972", "973", "974", "976")}
    assert overseas == {"971": "01", "972": "02", "973": "03", "974": "04", "976": "06"}
    assert "20" not in DEPARTMENT_REGION and "975" not in DEPARTMENT_REGION


@pytest.mark.parametrize(
    ("code", "department"),
    [
        ("75056", "75"),
        ("01053", "01"),
        ("2A004", "2A"),
        ("2B033", "2B"),
        ("97105", "971"),
        ("97411", "974"),
        ("97611", "976"),
        ("98735", "98"),
    ],
)
def test_department_of_well_formed_codes(code: str, department: str) -> None:
    """The department is the first 2 chars, or the first 3 digits for 97x."""
    assert department_of(code) == department


@pytest.mark.parametrize(
    "code",
    ["", "7505", "750566", "2C004", "2a004", "2A0O4", "AB123", "2A 04", "７５０５６", "7505٦"],
)
def test_department_of_malformed_codes_is_none(code: str) -> None:
    """Codes that are not 5 ASCII digits (or 2A/2B + 3 digits) have no department."""
    assert department_of(code) is None


@pytest.mark.parametrize(
    ("code", "region"),
    [("75056", "11"), ("13055", "93"), ("2A004", "94"), ("97209", "02"), ("97611", "06")],
)
def test_region_of_known_communes(code: str, region: str) -> None:
    """region_of follows the commune code's department to its region."""
    assert region_of(code) == region


@pytest.mark.parametrize("code", ["97501", "98735", "20000", "00001", "bad"])
def test_region_of_unmapped_or_malformed_is_none(code: str) -> None:
    """A commune whose department maps to no region is not guessed (None)."""
    assert region_of(code) is None


def test_replacing_the_table_without_touching_the_default() -> None:
    """A Geography built from a mapping (or extended) is used instead of the default one."""
    fixed = DEFAULT_GEOGRAPHY.with_departments({"975": "99"})
    assert fixed.region_of("97502") == "99"
    assert region_of("97502", fixed) == "99"
    assert region_of("97502") is None
    assert DEFAULT_GEOGRAPHY.region_of("97502") is None
    only_paris = Geography.from_mapping({"75": "11"})
    assert region_of("75056", only_paris) == "11"
    assert region_of("13055", only_paris) is None
    assert only_paris.region_of_department("75") == "11"
    assert only_paris.region_names["11"] == "Île-de-France"


def test_geography_copies_and_freezes_its_table() -> None:
    """Mutating the source mapping afterwards, or the exposed table, cannot change a Geography."""
    source = {"75": "11"}
    geography = Geography.from_mapping(source)
    source["13"] = "93"
    assert geography.region_of("13055") is None
    with pytest.raises(TypeError):
        geography.department_region["13"] = "93"  # type: ignore[index]


def test_every_commune_agrees_with_department_of_and_region_of() -> None:
    """Each commune's written department and region match what its INSEE code routes to."""
    for commune in COMMUNES:
        assert department_of(commune.insee_code) == commune.department, commune
        assert region_of(commune.insee_code) == commune.region, commune
        assert DEPARTMENT_REGION[commune.department] == commune.region, commune


def test_communes_cover_every_region_and_department() -> None:
    """The table holds at least one commune (the prefecture) per department, so all 18 regions."""
    assert {c.region for c in COMMUNES} == set(REGIONS)
    assert {c.department for c in COMMUNES} == set(DEPARTMENT_REGION)


def test_commune_rows_are_well_formed() -> None:
    """INSEE codes are unique; postcodes are 5 digits; weights are positive."""
    codes = [c.insee_code for c in COMMUNES]
    assert len(codes) == len(set(codes))
    for commune in COMMUNES:
        assert len(commune.postcode) == 5 and commune.postcode.isdigit(), commune
        assert commune.weight > 0 and commune.name, commune


@pytest.mark.parametrize(
    ("code", "postcode", "name"),
    [
        ("75056", "75001", "Paris"),
        ("13055", "13001", "Marseille"),
        ("69123", "69001", "Lyon"),
        ("2A004", "20000", "Ajaccio"),
        ("2B033", "20200", "Bastia"),
        ("97411", "97400", "Saint-Denis"),
        ("97611", "97600", "Mamoudzou"),
        ("97302", "97300", "Cayenne"),
        ("97209", "97200", "Fort-de-France"),
        ("97105", "97100", "Basse-Terre"),
    ],
)
def test_reference_communes(code: str, postcode: str, name: str) -> None:
    """Well-known communes carry their real INSEE code and postcode."""
    commune = next(c for c in COMMUNES if c.insee_code == code)
    assert (commune.postcode, commune.name) == (postcode, name)


def test_commune_is_frozen() -> None:
    """Commune rows cannot be modified."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        COMMUNES[0].name = "x"  # type: ignore[misc]
    assert isinstance(COMMUNES[0], Commune)
