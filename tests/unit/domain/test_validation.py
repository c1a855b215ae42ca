"""Unit tests of business validation (streams.domain.validation.EventValidator) with an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.domain.nir import nir_key
from streams.domain.validation import (
    EARLIEST_BIRTH_DAY,
    EARLIEST_TEST_MS,
    MAX_STRING,
    MS_PER_DAY,
    EventValidator,
)
from streams.errors import RecordRejected

NOW = 1_601_510_400_000  # 2020-10-01T00:00Z, after every generated event
TODAY = NOW // MS_PER_DAY


def _validator(geography: Any = DEFAULT_GEOGRAPHY) -> EventValidator:
    return EventValidator(geography, clock_ms=lambda: NOW)


def _event(**changes: Any) -> dict[str, Any]:
    event = dict(next(iter(generate_events(1, GeneratorSettings(seed=21)))))
    event.update(changes)
    return event


def _accepts(event: dict[str, Any], validator: EventValidator | None = None) -> bool:
    """Tell whether the validator lets ``event`` through (RecordRejected means no)."""
    try:
        (validator or _validator()).check(event)
    except RecordRejected:
        return False
    return True


def _rejected(event: dict[str, Any], validator: EventValidator | None = None) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        (validator or _validator()).check(event)
    assert caught.value.stage == "validate"
    return caught.value


def test_generated_events_pass() -> None:
    """Synthetic events (valid NIR, real communes, 2020 dates) pass validation."""
    validator = _validator()
    assert all(_accepts(event, validator) for event in generate_events(200, GeneratorSettings(seed=4)))


def test_wrong_nir_key_is_invalid_nir() -> None:
    """A NIR whose last two digits are not its key is rejected as invalid_nir, value not quoted."""
    event = _event()
    nir = event["nir"][:13] + f"{nir_key(event['nir'][:13]) % 97 + 1:02d}"
    rejection = _rejected({**event, "nir": nir})
    assert rejection.code == "invalid_nir"
    assert nir not in str(rejection) and nir[:13] not in str(rejection)


@pytest.mark.parametrize("nir", ["", "1234", "3" + "0" * 14, "1 85 05 78 006 084 91"])
def test_malformed_nir_is_invalid_nir(nir: str) -> None:
    """Short, wrong-sex or unnormalised NIRs are rejected as invalid_nir."""
    assert _rejected(_event(nir=nir)).code == "invalid_nir"


@pytest.mark.parametrize("commune", ["7505", "750560", "ABCDE", "2C004", "75O56", "７５０５６"])
def test_malformed_commune_is_invalid_commune(commune: str) -> None:
    """A commune code that is not 5 chars of an INSEE code is rejected as invalid_commune."""
    assert _rejected(_event(commune_code=commune)).code == "invalid_commune"


@pytest.mark.parametrize("commune", ["97501", "98735", "20004", "00001"])
def test_commune_outside_every_region_is_unknown_commune(commune: str) -> None:
    """A well-formed code whose department maps to no region is unknown_commune (not guessed)."""
    rejection = _rejected(_event(commune_code=commune))
    assert rejection.code == "unknown_commune"
    assert commune not in str(rejection)


def test_extended_geography_accepts_previously_unknown_commune() -> None:
    """Fixing the commune table with with_departments makes the same event valid."""
    event = _event(commune_code="97501")
    assert _rejected(event).code == "unknown_commune"
    fixed = DEFAULT_GEOGRAPHY.with_departments({"975": "01"})
    assert _accepts(event, _validator(fixed))
    assert fixed.region_of("97501") == "01"
    assert DEFAULT_GEOGRAPHY.region_of("97501") is None  # the default table is untouched


@pytest.mark.parametrize("finess", ["", "12345678", "1234567890"])
def test_lab_finess_not_nine_chars_is_invalid_field(finess: str) -> None:
    """A laboratory FINESS that is not 9 characters is rejected as invalid_field."""
    assert _rejected(_event(lab_finess=finess)).code == "invalid_field"


@pytest.mark.parametrize("rpps", ["1234567890", "123456789012", "1234567890A", "١٢٣٤٥٦٧٨٩٠١"])
def test_bad_rpps_is_invalid_field(rpps: str) -> None:
    """An RPPS that is not exactly 11 digits is rejected as invalid_field."""
    rejection = _rejected(_event(prescriber_rpps=rpps))
    assert rejection.code == "invalid_field"
    assert "rpps" in str(rejection)


def test_missing_rpps_is_allowed() -> None:
    """A test without prescription (RPPS null) passes."""
    assert _accepts(_event(prescriber_rpps=None))


@pytest.mark.parametrize(
    "name",
    ["nir", "last_name", "first_names", "phone", "email", "city", "postcode", "prescriber_email"],
)
def test_string_longer_than_limit_is_oversized_field(name: str) -> None:
    """Any identifying string longer than 512 characters is rejected as oversized_field."""
    rejection = _rejected(_event(**{name: "x" * (MAX_STRING + 1)}))
    assert rejection.code == "oversized_field"
    assert name in str(rejection)


def test_string_at_limit_is_not_oversized() -> None:
    """A 512-character string is accepted (the limit is inclusive)."""
    assert _accepts(_event(city="x" * MAX_STRING))


@pytest.mark.parametrize("lines", [["a"] * 9, ["x" * 300, "y" * 213]], ids=["nine_lines", "513_chars"])
def test_address_too_long_is_oversized_field(lines: list[str]) -> None:
    """An address of more than 8 lines or 512 characters in total is oversized_field."""
    assert _rejected(_event(address_lines=lines)).code == "oversized_field"


def _dates(**changes: int) -> dict[str, Any]:
    """A valid event with consistent dates sampled on 2020-09-01, some of them changed."""
    sampled = 1_598_961_600_000  # 2020-09-01T12:00Z
    base = {
        "sampled_at": sampled,
        "validated_at": sampled + 3_600_000,
        "emitted_at": sampled + 7_200_000,
        "birth_date": sampled // MS_PER_DAY - 40 * 365,
        "symptom_onset_date": sampled // MS_PER_DAY - 2,
    }
    base.update(changes)
    return _event(**base)


def test_consistent_dates_pass() -> None:
    """The dates of _dates() are valid, so each rejection below is due to its one change."""
    assert _accepts(_dates())


@pytest.mark.parametrize(
    "changes",
    [
        {"sampled_at": EARLIEST_TEST_MS - 1},
        {"sampled_at": NOW + MS_PER_DAY + 1, "validated_at": NOW + MS_PER_DAY + 2},
        {"validated_at": NOW + 2 * MS_PER_DAY},
        {"emitted_at": NOW + 2 * MS_PER_DAY},
        {"emitted_at": EARLIEST_TEST_MS - 1},
        {"validated_at": 1_598_961_600_000 - 1},
        {"birth_date": EARLIEST_BIRTH_DAY - 1},
        {"birth_date": TODAY + 10},
        {"birth_date": 1_598_961_600_000 // MS_PER_DAY + 1},
        {"symptom_onset_date": 1_598_961_600_000 // MS_PER_DAY - 40 * 365 - 1},
        {"symptom_onset_date": 1_598_961_600_000 // MS_PER_DAY + 2},
    ],
    ids=[
        "sampled_before_2020",
        "sampled_in_future",
        "validated_in_future",
        "emitted_in_future",
        "emitted_before_2020",
        "validated_before_sampled",
        "birth_before_1900",
        "birth_in_future",
        "birth_after_sampling",
        "onset_before_birth",
        "onset_after_validation",
    ],
)
def test_each_date_rule_is_out_of_range_date(changes: dict[str, int]) -> None:
    """Every date rule rejects its violation with code out_of_range_date."""
    assert _rejected(_dates(**changes)).code == "out_of_range_date"


def test_future_limit_follows_the_injected_clock() -> None:
    """A timestamp up to one day ahead of the injected clock passes; later ones are rejected."""
    limit = NOW + MS_PER_DAY
    event = _dates(sampled_at=limit - 10, validated_at=limit, emitted_at=limit)
    assert _accepts(event)
    later = EventValidator(DEFAULT_GEOGRAPHY, clock_ms=lambda: NOW - 1)
    assert _rejected(event, later).code == "out_of_range_date"


def test_boundary_dates_are_accepted() -> None:
    """Sampling at 2020-01-01T00:00Z, birth on 1900-01-01 and onset at validation+1 day pass."""
    start = EARLIEST_TEST_MS
    assert _accepts(
        _dates(
            sampled_at=start,
            validated_at=start,
            emitted_at=start,
            birth_date=EARLIEST_BIRTH_DAY,
            symptom_onset_date=start // MS_PER_DAY + 1,
        )
    )
