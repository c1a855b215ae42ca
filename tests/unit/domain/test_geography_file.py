"""Unit tests of the geography override file (streams.domain.geography_file) and its setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.domain.geography import DEFAULT_GEOGRAPHY, REGIONS
from streams.domain.geography_file import is_department_code, load_geography_file, parse_overrides
from streams.errors import ConfigError
from streams.settings import env_var, settings_from_env


def _write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "geography.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_file_adds_an_unmapped_department_to_a_known_region(tmp_path: Path) -> None:
    """Saint-Pierre-et-Miquelon (975) mapped to 28 routes 97501 to region 28; the rest is unchanged."""
    geography = load_geography_file(_write(tmp_path, {"departments": {"975": "28"}}))
    assert DEFAULT_GEOGRAPHY.region_of("97501") is None
    assert geography.region_of("97501") == "28"
    assert geography.region_of("75056") == "11"
    assert len(geography.department_region) == len(DEFAULT_GEOGRAPHY.department_region) + 1
    assert dict(geography.region_names) == REGIONS


def test_restating_a_known_department_with_its_own_region_is_accepted(tmp_path: Path) -> None:
    """An entry that agrees with the built-in table is harmless and accepted."""
    geography = load_geography_file(_write(tmp_path, {"departments": {"75": "11", "975": "01"}}))
    assert geography.region_of("75056") == "11" and geography.region_of("97502") == "01"


def test_empty_departments_change_nothing(tmp_path: Path) -> None:
    """A file with no departments yields the same table."""
    geography = load_geography_file(_write(tmp_path, {"departments": {}}))
    assert dict(geography.department_region) == dict(DEFAULT_GEOGRAPHY.department_region)


@pytest.mark.parametrize("region", ["99", "1", "", 28, None])
def test_unknown_region_fails_fast_naming_file_and_department(tmp_path: Path, region: object) -> None:
    """A region outside the 18 known codes (or not a string) is a ConfigError naming the file and department."""
    path = _write(tmp_path, {"departments": {"975": region}})
    with pytest.raises(ConfigError) as err:
        load_geography_file(path)
    assert str(path) in str(err.value) and "department 975" in str(err.value)


def test_remapping_a_known_department_is_refused(tmp_path: Path) -> None:
    """Moving Paris (75) to Normandie would send its residents' data to another agency: refused."""
    path = _write(tmp_path, {"departments": {"75": "28"}})
    with pytest.raises(ConfigError, match=r"department 75 already belongs to region 11"):
        load_geography_file(path)


@pytest.mark.parametrize("department", ["9750", "9", "97", "980", "2C", "75 ", "٧٥"])
def test_malformed_department_fails_fast(tmp_path: Path, department: str) -> None:
    """A key no commune code can yield as department is a ConfigError naming the file."""
    path = _write(tmp_path, {"departments": {department: "28"}})
    with pytest.raises(ConfigError, match=r"is not a department code") as err:
        load_geography_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [[], {"departments": []}, {"departments": {"975": "28"}, "regions": {}}, {"departements": {}}, "null"],
)
def test_wrong_shape_fails_fast(tmp_path: Path, content: object) -> None:
    """Anything but an object with exactly a 'departments' mapping is a ConfigError naming the file."""
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_geography_file(path)
    assert str(path) in str(err.value)


def test_unreadable_or_invalid_json_fails_fast(tmp_path: Path) -> None:
    """A missing file or broken JSON is a ConfigError naming the file, not an OSError or ValueError."""
    missing = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match=r"absent\.json"):
        load_geography_file(missing)
    broken = _write(tmp_path, '{"departments": {"975": "28"')
    with pytest.raises(ConfigError, match=r"not valid JSON"):
        load_geography_file(broken)


def test_parse_overrides_names_its_source() -> None:
    """The pure parser returns the entries and uses the given source name in its errors."""
    assert parse_overrides({"departments": {"975": "28"}}, "inline") == {"975": "28"}
    with pytest.raises(ConfigError, match=r"^geography file inline: "):
        parse_overrides({"departments": {"975": "00"}}, "inline")


def test_department_codes_are_those_department_of_can_yield() -> None:
    """2 digits (not 97), 2A/2B and 97x are department codes; other shapes are not."""
    assert all(is_department_code(c) for c in ("01", "75", "2A", "2B", "971", "975", "978"))
    assert not any(is_department_code(c) for c in ("97", "980", "2a", "7", "0975", "AB"))


def test_setting_comes_from_screening_geography_file() -> None:
    """SCREENING_GEOGRAPHY_FILE sets Settings.geography_file; unset means no override."""
    assert env_var("geography_file") == "SCREENING_GEOGRAPHY_FILE"
    assert settings_from_env({}).geography_file is None
    assert settings_from_env({"SCREENING_GEOGRAPHY_FILE": "/etc/geo.json"}).geography_file == Path("/etc/geo.json")
