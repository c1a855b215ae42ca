"""The granularity partial order: its laws, its stated facts, and that it is true of the operators' outputs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts.schemas import fields_by_name, input_schema
from streams.domain.geography import COMMUNES, DEFAULT_GEOGRAPHY
from streams.policy.granularity import ABSENT, KEEP, Grain, at_least_as_fine, band_cuts, needs, relation
from streams.policy.operators import OPERATORS, BuildContext
from streams.policy.pseudonyms import StaticKeyRing

INPUTS = fields_by_name(input_schema(1))
KEYS = StaticKeyRing({"t": b"k" * 32}, source="test")
MS_PER_DAY = 86_400_000


def _band(width: int, top: int) -> Grain:
    return Grain.of("age_band", {"width": width, "top": top})


def _mask(keep_last: int) -> Grain:
    return Grain.of("mask", {"keep_last": keep_last})


def test_stated_chains_hold() -> None:
    """keep ⪰ birth_year; keep ⪰ department ⪰ region; keep ⪰ day ⪰ iso_week; keep ⪰ pseudonymise ⪰ absent."""
    chains = [
        ["keep", "birth_year", "absent"],
        ["keep", "department", "region", "absent"],
        ["keep", "day", "iso_week", "absent"],
        ["keep", "pseudonymise", "absent"],
    ]
    for chain in chains:
        grains = [Grain.of(op) for op in chain]
        for i, finer in enumerate(grains):
            for coarser in grains[i + 1 :]:
                assert relation(coarser, finer) == "finer", (finer, coarser)
                assert relation(finer, coarser) == "coarser", (finer, coarser)


def test_age_bands_finer_when_their_cuts_include_the_others() -> None:
    """age_band(5) ⪰ age_band(10) ⪰ age_band(10, top 80) ⪰ age_band(20, top 80); top-coding moves the last cut."""
    assert at_least_as_fine(_band(5, 90), _band(10, 90))
    assert at_least_as_fine(_band(10, 90), _band(10, 80))
    assert at_least_as_fine(_band(10, 80), _band(20, 80))
    assert not at_least_as_fine(_band(10, 90), _band(5, 90))
    # top 95 with width 10 top-codes from 100: a cut that the 5-year bands up to 90 lack.
    assert relation(_band(5, 90), _band(10, 95)) == "incomparable"
    # width 20, top 90: "80-99" then "90+" from 100 — the same partition as top 100.
    assert _band(20, 90) == _band(20, 100)
    assert relation(_band(10, 90), _band(20, 90)) == "incomparable"
    assert _band(10, 85) == _band(10, 90)
    assert band_cuts(_band(10, 90)) == frozenset(range(10, 91, 10))
    assert _band(7, 0) == _band(3, -4)  # everything top-coded: a single class


def test_incomparable_pairs_are_not_ordered() -> None:
    """birth_year vs iso_week, birth_year vs age_band, the two pseudonymisations, mask vs department."""
    assert relation(Grain.of("birth_year"), Grain.of("iso_week")) == "incomparable"
    assert relation(Grain.of("birth_year"), _band(5, 90)) == "incomparable"
    raw, normalised = Grain.of("pseudonymise"), Grain.of("pseudonymise", {"normalise": "nir"})
    assert relation(raw, normalised) == "incomparable"
    assert relation(_mask(2), Grain.of("department")) == "incomparable"
    assert relation(_mask(2), Grain.of("pseudonymise")) == "incomparable"


def test_mask_is_finer_as_more_is_shown() -> None:
    """mask(keep_last=4) ⪰ mask(2) ⪰ mask(0); the default is 2; a negative count is ordered with nothing."""
    assert at_least_as_fine(_mask(4), _mask(2)) and at_least_as_fine(_mask(2), _mask(0))
    assert not at_least_as_fine(_mask(2), _mask(4))
    assert Grain.of("mask") == _mask(2)
    assert not at_least_as_fine(_mask(5), _mask(-3)) and not at_least_as_fine(_mask(-3), _mask(0))


def test_canonical_arguments() -> None:
    """drop is absent; memoise changes nothing; normalise is nir or nothing; defaults are filled in."""
    assert Grain.of("drop") == ABSENT
    assert Grain.of("pseudonymise", {"memoise": False}) == Grain.of("pseudonymise")
    assert Grain.of("pseudonymise", {"normalise": "other"}) == Grain.of("pseudonymise")
    assert Grain.of("age_band") == _band(10, 90)
    assert _band(10, 90).describe() == "age_band(top=90, width=10)"


def test_encrypt_is_below_keep_and_incomparable_with_generalisations_in_clear() -> None:
    """encrypt → keep shows the value to the platform (finer); birth_year ↔ encrypt are gains both ways."""
    encrypt = Grain.of("encrypt")
    assert relation(encrypt, KEEP) == "finer" and relation(KEEP, encrypt) == "coarser"
    assert at_least_as_fine(encrypt, ABSENT)
    for other in ("birth_year", "department", "day", "pseudonymise", "mask"):
        assert relation(Grain.of(other), encrypt) == "incomparable"


def test_unknown_operator_is_ordered_only_with_keep_itself_and_absent() -> None:
    """An operator the order does not know is no finer or coarser than any known generalisation."""
    new = Grain.of("k_suppress", {"k": 5})
    assert at_least_as_fine(KEEP, new) and at_least_as_fine(new, ABSENT) and at_least_as_fine(new, new)
    for other in ("birth_year", "department", "region", "day", "iso_week", "pseudonymise", "mask"):
        assert relation(Grain.of(other), new) == "incomparable"


def test_age_band_is_computable_from_the_date_and_the_day() -> None:
    """needs(): an age band needs the exact birth date and the UTC day of the reference instant."""
    assert needs(_band(10, 90), 2) == (KEEP, Grain.of("day"))
    assert needs(Grain.of("department"), 1) == (Grain.of("department"),)


# ------------------------------------------------------------------ laws, over arbitrary grains
OPS = [
    *("keep", "absent", "encrypt", "pseudonymise", "birth_year", "age_band"),
    *("department", "region", "day", "iso_week", "mask"),
]


@st.composite
def grains(draw: st.DrawFn) -> Grain:
    """Any operator with arbitrary (also odd) arguments, canonicalised."""
    op = draw(st.sampled_from([*OPS, "drop", "unknown_op"]))
    args: dict[str, Any] = {}
    if op == "age_band":
        args = {"width": draw(st.integers(-3, 40)), "top": draw(st.integers(-10, 130))}
    elif op == "mask":
        args = {"keep_last": draw(st.integers(-3, 12))}
    elif op == "pseudonymise":
        args = draw(st.sampled_from([{}, {"normalise": "nir"}, {"memoise": False}, {"normalise": "x"}]))
    elif op == "unknown_op":
        args = {"n": draw(st.integers(0, 3))}
    return Grain.of("absent" if op == "absent" else op, args)


@settings(max_examples=600, deadline=None)
@given(a=grains(), b=grains(), c=grains())
def test_order_is_reflexive_antisymmetric_transitive(a: Grain, b: Grain, c: Grain) -> None:
    """a ⪰ a; a ⪰ b and b ⪰ a only when a == b; a ⪰ b ⪰ c implies a ⪰ c."""
    assert at_least_as_fine(a, a)
    if at_least_as_fine(a, b) and at_least_as_fine(b, a):
        assert a == b
    if at_least_as_fine(a, b) and at_least_as_fine(b, c):
        assert at_least_as_fine(a, c)
    assert relation(a, b) == {"finer": "coarser", "coarser": "finer"}.get(relation(b, a), relation(b, a))


# ------------------------------------------------------------------ the order is true of the data
def _build(grain: Grain, sources: Sequence[str]) -> Callable[..., Any]:
    kinds = tuple(INPUTS[s].kind for s in sources)
    ctx = BuildContext("t", KEYS, DEFAULT_GEOGRAPHY, tuple(sources), kinds)
    return OPERATORS[grain.op].build(ctx, grain.arguments)


SINGLE_SOURCE: dict[str, tuple[list[str], st.SearchStrategy[Any]]] = {
    "sampled_at": (["keep", "day", "iso_week"], st.integers(1_500_000_000_000, 1_700_000_000_000)),
    "birth_date": (["keep", "birth_year", "iso_week"], st.integers(-40_000, 20_000)),
    "commune_code": (
        ["keep", "department", "region", "mask", "pseudonymise"],
        st.sampled_from([c.insee_code for c in COMMUNES]),
    ),
    "nir": (["keep", "mask", "pseudonymise"], st.text("0123456789 AB", min_size=0, max_size=17)),
}


def _near_strings(v: str) -> list[str]:
    """The value, its spelling without spaces, and one-character changes at both ends."""
    return [v, v.replace(" ", ""), "9" + v[1:], v[:-1] + "9", v + "0"]


#: Values near a drawn one, where a wrongly claimed order shows: the next day, week, year...
NEIGHBOURS: dict[str, Callable[[Any], list[Any]]] = {
    "sampled_at": lambda v: [v + d for d in (0, 1, 3_600_000, MS_PER_DAY, 3 * MS_PER_DAY, 7 * MS_PER_DAY)],
    "birth_date": lambda v: [v + d for d in (0, 1, 3, 6, 7, 180, 364, 365, 366)],
    "commune_code": lambda v: [v, *(c.insee_code for c in COMMUNES)],
    "nir": _near_strings,
}


def _grains_for(source: str) -> list[Grain]:
    """Every grain of the operators applicable to ``source``, with a range of arguments."""
    out = []
    for op in SINGLE_SOURCE[source][0]:
        if op == "mask":
            out += [_mask(n) for n in range(0, 7)]
        elif op == "pseudonymise":
            out += [Grain.of(op), Grain.of(op, {"normalise": "nir"})]
        else:
            out.append(Grain.of(op))
    return [*out, ABSENT]


def _is_function_of(finer: Callable[..., Any], coarser: Callable[..., Any], inputs: list[Any]) -> bool:
    seen: dict[Any, Any] = {}
    for value in inputs:
        args = value if isinstance(value, tuple) else (value,)
        fine, coarse = finer(*args), coarser(*args)
        if seen.setdefault(fine, coarse) != coarse:
            return False
    return True


def _absent(*_: Any) -> None:
    return None


@settings(max_examples=150, deadline=None)
@given(source=st.sampled_from(sorted(SINGLE_SOURCE)), data=st.data())
def test_a_generalisation_never_yields_a_finer_result(source: str, data: st.DataObject) -> None:
    """For every pair a ⪰ b on a source, equal outputs of a have equal outputs of b (b is a function of a)."""
    drawn = data.draw(st.lists(SINGLE_SOURCE[source][1], min_size=1, max_size=20))
    values = [n for v in drawn for n in NEIGHBOURS[source](v)]
    grains = _grains_for(source)
    built = {g: (_absent if g == ABSENT else _build(g, [source])) for g in grains}
    for a in grains:
        for b in grains:
            if at_least_as_fine(a, b):
                assert _is_function_of(built[a], built[b], values), f"{a.describe()} ⪰ {b.describe()} on {source}"


DAY0 = dt.date(1970, 1, 1)


@st.composite
def band_pair(draw: st.DrawFn) -> tuple[Grain, Grain]:
    """Two age bands with arbitrary valid widths and tops."""
    return (
        _band(draw(st.integers(1, 30)), draw(st.integers(-5, 120))),
        _band(draw(st.integers(1, 30)), draw(st.integers(-5, 120))),
    )


def _age_samples() -> list[tuple[int, int]]:
    """(birth date, instant) pairs covering every age 0..160 (past every cut drawn), on and before a birthday."""
    at = dt.datetime(2020, 7, 1, 12, tzinfo=dt.UTC)
    at_ms = int(at.timestamp() * 1000)
    out = []
    for age in range(0, 161):
        birthday = dt.date(2020 - age, 7, 1)
        out.append(((birthday - DAY0).days, at_ms))  # exactly `age` today
        out.append(((birthday - DAY0).days + 1, at_ms))  # `age - 1`, birthday tomorrow
    return out


AGES = _age_samples()


@settings(max_examples=300, deadline=None)
@given(pair=band_pair())
def test_age_band_order_is_exact_on_the_operator(pair: tuple[Grain, Grain]) -> None:
    """For age bands the order is exact: a ⪰ b if and only if b's band is a function of a's over all ages."""
    a, b = pair
    sources = ["birth_date", "sampled_at"]
    functional = _is_function_of(_build(a, sources), _build(b, sources), list(AGES))
    assert at_least_as_fine(a, b) == functional, (a, b)
