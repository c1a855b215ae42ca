"""Unit tests of the NIR rules (streams.domain.nir)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.nir import (
    DEPARTMENT_PROBLEM,
    DIGITS_PROBLEM,
    KEY_PROBLEM,
    LENGTH_PROBLEM,
    MONTH_PROBLEM,
    SEX_PROBLEM,
    YEAR_PROBLEM,
    InvalidNir,
    complete_nir,
    is_valid_nir,
    nir_key,
    nir_problem,
    normalise_nir,
)
from streams.errors import ScreeningStreamsError

# By hand: 1800175056123 = 97 * 18558505733 + 22, so the key is 97 - 22 = 75.
MAINLAND_BODY = "1800175056123"
MAINLAND_NIR = "180017505612375"
# 2A -> 19: 2690519004123 mod 97 = 83, key 14.  2B -> 18: 2690518033045 mod 97 = 72, key 25.
CORSICA_2A_NIR = "269052A00412314"
CORSICA_2B_NIR = "269052B03304525"
# Overseas (La Réunion, 3-digit department + 2-digit commune): 1851297411007 mod 97 = 64.
OVERSEAS_NIR = "185129741100733"


def test_key_of_mainland_body() -> None:
    """The key is 97 minus the 13-digit body modulo 97."""
    assert nir_key(MAINLAND_BODY) == 75


def test_key_substitutes_corsica_departments() -> None:
    """2A counts as 19 and 2B as 18 when computing the key."""
    assert nir_key("269052A004123") == 14
    assert nir_key("269052B033045") == 25


def test_complete_nir_pads_key_to_two_digits() -> None:
    """complete_nir appends the key as two digits (a key below 10 gets a leading 0)."""
    assert complete_nir(MAINLAND_BODY) == MAINLAND_NIR
    body = next(f"18001750561{i:02d}" for i in range(100) if nir_key(f"18001750561{i:02d}") < 10)
    assert complete_nir(body)[13] == "0"


@pytest.mark.parametrize("body", ["", "180017505612", "18001750561234", "1800175X56123", "1800175056١23"])
def test_key_rejects_malformed_body_without_echo(body: str) -> None:
    """nir_key raises InvalidNir (a ValueError of the project root) and never echoes the body."""
    with pytest.raises(InvalidNir) as caught:
        nir_key(body)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ScreeningStreamsError)
    if body:
        assert body not in str(caught.value)


@pytest.mark.parametrize("nir", [MAINLAND_NIR, CORSICA_2A_NIR, CORSICA_2B_NIR, OVERSEAS_NIR])
def test_valid_nirs_have_no_problem(nir: str) -> None:
    """Mainland, Corsican and overseas NIRs with the right key are valid."""
    assert nir_problem(nir) is None
    assert is_valid_nir(nir)


@pytest.mark.parametrize("month", ["20", "42", "50", "99"])
def test_unknown_birth_month_codes_are_accepted(month: str) -> None:
    """Months 20-42 and 50+ (unknown month) are in range."""
    assert nir_problem(complete_nir(f"180{month}75056123")) is None


@pytest.mark.parametrize(
    ("nir", "reason"),
    [
        ("18001750561237", LENGTH_PROBLEM),
        ("1800175056123750", LENGTH_PROBLEM),
        ("1 80 01 75 056 123 75", LENGTH_PROBLEM),
        ("380017505612375", SEX_PROBLEM),
        ("1A0017505612375", YEAR_PROBLEM),
        ("180007505612375", MONTH_PROBLEM),
        ("180137505612375", MONTH_PROBLEM),
        ("180437505612375", MONTH_PROBLEM),
        ("180012C05612375", DEPARTMENT_PROBLEM),
        ("18001750X612375", DIGITS_PROBLEM),
        ("1800175056123XX", DIGITS_PROBLEM),
        ("180017505612376", KEY_PROBLEM),
        ("269052A00412315", KEY_PROBLEM),
    ],
)
def test_problem_reasons_name_the_rule_not_the_value(nir: str, reason: str) -> None:
    """Each broken rule gives its short reason, which never contains the value."""
    assert nir_problem(nir) == reason
    assert nir not in reason
    assert not is_valid_nir(nir)


def test_problem_rejects_non_ascii_digits() -> None:
    """Unicode digits (e.g. Arabic-Indic) are not accepted as NIR digits."""
    assert nir_problem("18001750561237٥") is not None


def test_problem_checks_value_as_given() -> None:
    """A lower-case Corsican NIR is only valid after normalisation."""
    assert nir_problem(CORSICA_2A_NIR.lower()) is not None
    assert nir_problem(normalise_nir(CORSICA_2A_NIR.lower())) is None


def test_normalise_strips_whitespace_and_upper_cases() -> None:
    """normalise_nir removes spaces (and other whitespace) and upper-cases letters."""
    assert normalise_nir(" 2 69 05 2a 004 123 14\t") == CORSICA_2A_NIR
    assert normalise_nir(MAINLAND_NIR) == MAINLAND_NIR


@given(
    sex=st.sampled_from("12"),
    year=st.integers(0, 99),
    month=st.integers(1, 12),
    place=st.sampled_from(["75056", "2A004", "2B033", "97411", "99350"]),
    order=st.integers(1, 999),
)
def test_completed_bodies_are_valid_and_any_other_key_is_not(
    sex: str, year: int, month: int, place: str, order: int
) -> None:
    """complete_nir always yields a valid NIR, and every other key is rejected."""
    body = f"{sex}{year:02d}{month:02d}{place}{order:03d}"
    nir = complete_nir(body)
    assert nir_problem(nir) is None
    wrong = (int(nir[13:]) % 97) + 1
    assert nir_problem(f"{body}{wrong:02d}") == KEY_PROBLEM
