"""Each registered operator does what its policy name promises, on wire-native values."""

from __future__ import annotations

import datetime as dt
import hashlib

from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.operators import OPERATORS, BuildContext
from streams.policy.pseudonyms import StaticKeyRing

KEYS = StaticKeyRing({"spf": hashlib.sha256(b"k").digest()})


def _fn(op: str, kinds: tuple[str, ...] = ("string",), **args: object) -> object:
    ctx = BuildContext("spf", KEYS, DEFAULT_GEOGRAPHY, tuple(f"s{i}" for i in range(len(kinds))), kinds)
    return OPERATORS[op].build(ctx, args)


def _days(y: int, m: int, d: int) -> int:
    return (dt.date(y, m, d) - dt.date(1970, 1, 1)).days


def _ms(y: int, m: int, d: int, h: int = 12) -> int:
    return int(dt.datetime(y, m, d, h, tzinfo=dt.UTC).timestamp() * 1000)


def test_keep_returns_value_unchanged() -> None:
    """keep is the identity."""
    assert _fn("keep")("75056") == "75056"  # type: ignore[operator]


def test_drop_emits_nothing() -> None:
    """drop documents a refusal and is marked as producing no field."""
    assert OPERATORS["drop"].emits is False


def test_birth_year_generalises_a_date() -> None:
    """birth_year of 1987-06-15 (as int days) is 1987; dates before 1970 work too."""
    assert _fn("birth_year", ("date",))(_days(1987, 6, 15)) == 1987  # type: ignore[operator]
    assert _fn("birth_year", ("date",))(_days(1931, 1, 1)) == 1931  # type: ignore[operator]


def test_age_band_uses_exact_birthday_and_top_codes() -> None:
    """Age is counted at the reference instant, in 10-year bands, 90 and over top-coded."""
    band = _fn("age_band", ("date", "timestamp-millis"), width=10, top=90)
    assert band(_days(1990, 7, 2), _ms(2020, 7, 1)) == "20-29"  # 29 the day before the birthday  # type: ignore[operator]
    assert band(_days(1990, 7, 1), _ms(2020, 7, 1)) == "30-39"  # type: ignore[operator]
    assert band(_days(1925, 1, 1), _ms(2020, 7, 1)) == "90+"  # type: ignore[operator]
    assert band(_days(2020, 6, 1), _ms(2020, 7, 1)) == "0-9"  # type: ignore[operator]


def test_department_and_region_follow_the_commune_code() -> None:
    """Corsica keeps 2A/2B, overseas uses 3 digits, and regions come from the table."""
    dep = _fn("department")
    reg = _fn("region")
    assert dep("2A004") == "2A" and reg("2A004") == "94"  # type: ignore[operator]
    assert dep("97411") == "974" and reg("97411") == "04"  # type: ignore[operator]
    assert dep("75056") == "75" and reg("75056") == "11"  # type: ignore[operator]


def test_day_truncates_to_utc_day() -> None:
    """day turns epoch millis into int days since 1970-01-01 (UTC)."""
    assert _fn("day", ("timestamp-millis",))(_ms(2020, 7, 1, 23)) == _days(2020, 7, 1)  # type: ignore[operator]


def test_iso_week_of_timestamp_and_date() -> None:
    """iso_week works on timestamps and on dates (2020-07-01 is in week 27)."""
    assert _fn("iso_week", ("timestamp-millis",))(_ms(2020, 7, 1)) == "2020-W27"  # type: ignore[operator]
    assert _fn("iso_week", ("date",))(_days(2021, 1, 3)) == "2020-W53"  # type: ignore[operator]


def test_mask_keeps_only_the_last_digits() -> None:
    """mask hides all but keep_last characters."""
    assert _fn("mask", keep_last=2)("0612345678") == "********78"  # type: ignore[operator]
    assert _fn("mask", keep_last=0)("0612") == "****"  # type: ignore[operator]


def test_pseudonymise_is_keyed_normalised_and_compact() -> None:
    """The NIR pseudonym ignores spaces and case, is 20 base64url chars, and is not the NIR."""
    pseudo = _fn("pseudonymise", normalise="nir")
    a = pseudo("1 80 01 75 056 123 75")  # type: ignore[operator]
    assert a == pseudo("180017505612375")  # type: ignore[operator]
    assert len(a) == 20 and "1800175" not in a
