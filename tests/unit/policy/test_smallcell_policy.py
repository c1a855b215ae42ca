"""The `k_anonymity` policy option: validated at load (file, recipient, field named), in the contract,
in the access lock, and compared by `policy diff` (turning it off, lowering k... are gains)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.contracts.schemas import input_schema
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.errors import ConfigError
from streams.policy.access import access_of
from streams.policy.diff import compare, gains
from streams.policy.lock import parse_lock, render_lock
from streams.policy.model import DAY_MS, LadderStep, Policy, default_policy_dir, parse_policy
from streams.policy.outputs import output_schema

SCHEMA = input_schema(1)
REGIONS = frozenset(DEFAULT_GEOGRAPHY.region_names)
Doc = dict[str, Any]


def _spf() -> Doc:
    doc: Doc = yaml.safe_load((default_policy_dir() / "spf.yaml").read_text(encoding="utf-8"))
    return doc


def _parse(doc: Doc) -> Policy:
    return parse_policy(Path("spf.yaml"), yaml.safe_dump(doc, allow_unicode=True), SCHEMA, REGIONS)


def _error(doc: Doc) -> str:
    with pytest.raises(ConfigError) as info:
        _parse(doc)
    message = str(info.value)
    assert message.startswith("spf.yaml: recipient 'spf'"), message
    return message


def test_the_shipped_spf_option() -> None:
    """SPF: k 5 over UTC days, the seven quasi-identifiers, three cumulative steps ending in suppression
    of the housing kind; the ladder's coarser fields are class columns after the quasi-identifiers."""
    option = _parse(_spf()).k_anonymity
    assert option is not None
    assert option.k == 5 and option.window_ms == DAY_MS and option.describe_window() == "1d"
    assert option.quasi_identifiers == (
        "age_band",
        "sex",
        "department",
        "collective_housing",
        "sampled_on",
        "test_kind",
        "result",
    )
    assert option.ladder == (
        LadderStep("department", "region"),
        LadderStep("sampled_on", "sampled_week"),
        LadderStep("collective_housing", None),
    )
    assert option.columns[-2:] == ("region", "sampled_week")
    assert option.withheld == ("department", "sampled_on", "collective_housing")


def _with(**changes: Any) -> Doc:
    doc = _spf()
    doc["k_anonymity"].update(changes)
    return doc


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"k": 1}, "k must be an integer of at least 2"),
        ({"k": True}, "k must be an integer of at least 2"),
        ({"k": "5"}, "k must be an integer of at least 2"),
        ({"window": "7h"}, "a divisor of a day or whole days"),
        ({"window": "30s"}, "between 1m and 7d"),
        ({"window": "8d"}, "between 1m and 7d"),
        ({"window": "1w"}, "must be like 1d"),
        ({"window": 86400}, "must be like 1d"),
        ({"quasi_identifiers": []}, "must list output fields"),
        ({"shuffle": True}, "unknown keys ['shuffle']"),
        ({"ladder": "department -> region"}, "must list steps"),
        ({"ladder": ["department => region"]}, "is not 'field -> coarser field'"),
    ],
)
def test_malformed_options_fail_at_load(changes: Doc, expected: str) -> None:
    """Each malformed k, window, key or ladder syntax fails the load with the file and recipient named."""
    assert expected in _error(_with(**changes))


def test_a_quasi_identifier_left_out_names_the_field() -> None:
    """Leaving sex (from a quasi-identifier input) out of the counted fields would count classes too big."""
    doc = _spf()
    doc["k_anonymity"]["quasi_identifiers"].remove("sex")
    message = _error(doc)
    assert "field 'sex'" in message and "leaves out a quasi-identifier" in message


def test_a_released_coarser_field_off_the_ladder_must_be_counted() -> None:
    """sampled_week is released with every record: without the step that puts it in place of the day it
    must be counted, or records released with the day withheld would be counted without their week."""
    message = _error(_with(ladder=["department -> region", "sampled_on -> any"]))
    assert "field 'sampled_week'" in message and "leaves out a quasi-identifier" in message


def test_a_marked_quasi_identifier_left_out_names_the_field() -> None:
    """test_kind is marked quasi_identifier: true in the policy, so it must be counted too."""
    doc = _spf()
    doc["k_anonymity"]["quasi_identifiers"].remove("test_kind")
    assert "field 'test_kind'" in _error(doc)


@pytest.mark.parametrize("field", ["pseudonym", "event_ref"])
def test_a_pseudonym_is_not_a_quasi_identifier(field: str) -> None:
    """A pseudonym is unique per person (or record): counting it makes every class a singleton."""
    doc = _spf()
    doc["k_anonymity"]["quasi_identifiers"].append(field)
    message = _error(doc)
    assert f"field {field!r}" in message and "unique per person" in message


def test_an_unknown_counted_field_is_named() -> None:
    """Counting a field the policy does not release fails, naming it."""
    doc = _spf()
    doc["k_anonymity"]["quasi_identifiers"].append("commune_code")
    assert "field 'commune_code'" in _error(doc) and "not an output field" in _error(doc)


@pytest.mark.parametrize(
    ("ladder", "field", "expected"),
    [
        # sampled_week is a week of the sampling time, not a function of the department
        (["department -> sampled_week"], "department", "not provably at most as fine"),
        # the age band read from two sources; the week from one
        (["age_band -> sampled_week"], "age_band", "not provably at most as fine"),
        (["department -> nowhere"], "department", "not an output field"),
        (["symptomatic -> any"], "symptomatic", "must withhold a quasi-identifier"),
        (["department -> any", "department -> region"], "department", "must withhold a quasi-identifier"),
        (["sampled_on -> sampled_week", "sampled_on -> any"], "sampled_on", "must withhold"),
        (["department -> sex"], "department", "already shown"),
    ],
)
def test_ladder_steps_must_be_generalisations_the_order_proves(ladder: list[str], field: str, expected: str) -> None:
    """A step withholds a shown quasi-identifier and shows a field the granularity order proves no finer."""
    message = _error(_with(ladder=ladder))
    assert f"field {field!r}" in message and expected in message


def test_a_coarser_field_must_be_a_marked_quasi_identifier() -> None:
    """sampled_week stands in for the sampling day: unmarked, `policy risk` would not count it."""
    doc = _spf()
    next(f for f in doc["fields"] if f["name"] == "sampled_week").pop("quasi_identifier")
    message = _error(doc)
    assert "field 'sampled_week'" in message and "quasi_identifier: true" in message


def test_steps_chain_on_the_field_put_in_place() -> None:
    """After department -> region, region itself may be withheld by a later step (cumulative ladder);
    sampled_week, released and not on the ladder, is then counted as a quasi-identifier."""
    doc = _with(ladder=["department -> region", "region -> any"])
    doc["k_anonymity"]["quasi_identifiers"].append("sampled_week")
    policy = _parse(doc)
    assert policy.k_anonymity is not None
    assert policy.k_anonymity.withheld == ("department", "region")


def test_a_routed_recipient_cannot_take_the_option() -> None:
    """ARS is routed by region: the option is refused there (the hold topic is per recipient)."""
    doc: Doc = yaml.safe_load((default_policy_dir() / "ars.yaml").read_text(encoding="utf-8"))
    doc["k_anonymity"] = {"k": 5, "window": "1d", "quasi_identifiers": ["birth_year", "sex", "commune_code"]}
    doc["k_anonymity"]["quasi_identifiers"].append("collective_housing")
    with pytest.raises(ConfigError, match="routed recipient"):
        parse_policy(Path("ars.yaml"), yaml.safe_dump(doc), SCHEMA, REGIONS)


def test_withheld_fields_are_nullable_in_the_contract() -> None:
    """The fields a step withholds are null in records released one step up: the derived contract says so;
    the coarser fields and the other quasi-identifiers stay required."""
    schema = output_schema(_parse(_spf()), SCHEMA)
    types = {f["name"]: f["type"] for f in schema["fields"]}
    for name in ("department", "sampled_on", "collective_housing"):
        assert isinstance(types[name], list) and types[name][0] == "null", name
    for name in ("region", "sampled_week", "age_band", "sex", "result"):
        assert not isinstance(types[name], list), name


# ------------------------------------------------------------------ lock and diff
def _access(doc: Doc) -> Any:
    return access_of([_parse(doc)], SCHEMA)


def test_the_lock_records_the_option_and_reads_it_back() -> None:
    """render_lock writes k, window, sorted quasi-identifiers and the ladder in order; parse_lock reads
    back exactly the same access (so an unchanged policy never differs from its lock)."""
    access = _access(_spf())
    text = render_lock(access)
    assert "ladder: [department -> region, sampled_on -> sampled_week, collective_housing -> any]" in text
    assert "window: 1d" in text and "k: 5" in text
    assert compare(parse_lock(text, "access.lock"), access) == []


def _kinds(old: Doc, new: Doc) -> set[tuple[str, bool]]:
    return {(c.kind, c.gain) for c in compare(_access(old), _access(new)) if c.field is None}


def test_turning_the_option_off_is_a_gain_and_on_is_not() -> None:
    """Without the option small cells reach the recipient: a gain; adding the option narrows access."""
    off = _spf()
    off.pop("k_anonymity")
    assert _kinds(_spf(), off) == {("k_anonymity_removed", True)}
    assert _kinds(off, _spf()) == {("k_anonymity_added", False)}


def test_lowering_k_or_lengthening_the_window_is_a_gain() -> None:
    """k 5 → 3 and 1d → 2d release more records at full detail: gains; the reverse is not."""
    assert _kinds(_spf(), _with(k=3)) == {("k_lowered", True)}
    assert _kinds(_with(k=3), _spf()) == {("k_raised", False)}
    assert _kinds(_spf(), _with(window="2d")) == {("window_lengthened", True)}
    assert _kinds(_spf(), _with(window="6h")) == {("window_shortened", False)}


def test_counting_fewer_quasi_identifiers_is_a_gain() -> None:
    """Dropping symptomatic from the counted fields makes classes bigger: a gain naming it."""
    more = _spf()
    more["k_anonymity"]["quasi_identifiers"].append("symptomatic")
    assert _kinds(more, _spf()) == {("quasi_identifiers_removed", True)}
    assert _kinds(_spf(), more) == {("quasi_identifiers_added", False)}
    (change,) = [c for c in compare(_access(more), _access(_spf())) if c.gain]
    assert change.old == "[symptomatic]"


def test_dropping_final_steps_is_no_gain_but_any_other_ladder_change_is() -> None:
    """Fewer final steps suppress more; a reordered or new step releases at a detail never released before."""
    shorter = _with(ladder=["department -> region", "sampled_on -> sampled_week"])
    assert _kinds(_spf(), shorter) == {("ladder_shortened", False)}
    assert _kinds(shorter, _spf()) == {("ladder_changed", True)}
    reordered = _with(ladder=["sampled_on -> sampled_week", "department -> region", "collective_housing -> any"])
    assert gains(compare(_access(_spf()), _access(reordered)))


def test_a_lock_without_the_option_fails_check_against_a_policy_without_it() -> None:
    """The gate: a lock that lists the option and policies that dropped it differ by a gain naming spf."""
    locked = parse_lock(render_lock(_access(_spf())), "access.lock")
    off = copy.deepcopy(_spf())
    off.pop("k_anonymity")
    (gain,) = gains(compare(locked, _access(off)))
    assert gain.recipient == "spf" and gain.kind == "k_anonymity_removed"
    assert "recipient 'spf': k anonymity removed" in gain.describe()


def test_a_malformed_lock_option_is_named() -> None:
    """A hand-edited lock with a bad ladder step fails naming the lock and the recipient."""
    text = render_lock(_access(_spf())).replace("department -> region", "department => region")
    with pytest.raises(ConfigError, match=r"access\.lock: recipient 'spf'.*bad step"):
        parse_lock(text, "access.lock")
