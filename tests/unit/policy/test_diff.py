"""policy diff (pure): every widening of a recipient's access is a gain, narrowing never is."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from streams.contracts.schemas import input_schema
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.access import AccessMap, access_of
from streams.policy.diff import Change, compare, diff_json, diff_table, gains
from streams.policy.model import default_policy_dir, parse_policy

SCHEMA = input_schema(1)
REGIONS = frozenset(DEFAULT_GEOGRAPHY.region_names)
Doc = dict[str, Any]


def _docs() -> dict[str, Doc]:
    """The shipped policies, without SPF's small-cell option: these tests edit the fields it names
    (its own comparisons are pinned in test_smallcell_policy.py)."""
    docs = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(default_policy_dir().glob("*.yaml"))}
    docs["spf"].pop("k_anonymity", None)
    return docs


def _access(docs: dict[str, Doc]) -> AccessMap:
    policies = [parse_policy(Path(f"{n}.yaml"), yaml.safe_dump(d), SCHEMA, REGIONS) for n, d in docs.items()]
    return access_of(policies, SCHEMA)


def _field(doc: Doc, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(f for f in doc["fields"] if f["name"] == name)
    return found


def _changes(edit: Callable[[dict[str, Doc]], None]) -> list[Change]:
    """Changes from the shipped policies to the policies after ``edit``."""
    docs = _docs()
    before = _access(docs)
    edit(docs)
    return compare(before, _access(docs))


def _gained(changes: list[Change]) -> set[tuple[str, str | None, str]]:
    return {(c.recipient, c.field, c.kind) for c in gains(changes)}


# ------------------------------------------------------------------ gains (the adversary's changes)
def test_a_field_added_to_spf_is_a_gain_naming_recipient_and_field() -> None:
    """SPF receiving the NIR as is: field_gained for spf/nir."""

    def edit(docs: dict[str, Doc]) -> None:
        docs["spf"]["fields"].append({"name": "nir", "op": "keep", "purpose": "Nobody should ever need this."})

    assert _gained(_changes(edit)) == {("spf", "nir", "field_gained")}


def test_ars_birth_year_turned_into_keep_is_a_gain() -> None:
    """birth_year → keep on ARS's birth_year field is an operator made finer."""

    def edit(docs: dict[str, Doc]) -> None:
        _field(docs["ars"], "birth_year")["op"] = "keep"

    changes = _changes(edit)
    assert _gained(changes) == {("ars", "birth_year", "operator_finer")}
    (change,) = gains(changes)
    assert (change.old, change.new) == ("birth_year", "keep")


def test_dropping_the_phone_condition_of_ars_is_a_gain() -> None:
    """ARS receiving every phone, not only collective-housing residents' ones."""

    def edit(docs: dict[str, Doc]) -> None:
        del _field(docs["ars"], "phone")["when"]

    assert _gained(_changes(edit)) == {("ars", "phone", "condition_removed")}


def test_widening_the_condition_is_a_gain() -> None:
    """not_in [NONE, PRISON] → not_in [NONE]: prisoners' phones too."""
    docs = _docs()
    _field(docs["ars"], "phone")["when"] = {"collective_housing": {"not_in": ["NONE", "PRISON"]}}
    before = _access(docs)
    _field(docs["ars"], "phone")["when"] = {"collective_housing": {"not_in": ["NONE"]}}
    assert _gained(compare(before, _access(docs))) == {("ars", "phone", "condition_widened")}


def test_widening_the_cnam_result_filter_is_a_gain() -> None:
    """cnam result: [POSITIVE] → [POSITIVE, NEGATIVE] is a widened filter."""

    def edit(docs: dict[str, Doc]) -> None:
        docs["cnam"]["filter"]["result"] = ["POSITIVE", "NEGATIVE"]

    changes = _changes(edit)
    assert _gained(changes) == {("cnam", "result", "filter_widened")}
    assert gains(changes)[0].new == "[NEGATIVE, POSITIVE]"


def test_removing_a_filter_is_a_gain() -> None:
    """ARS without its result filter receives every result."""

    def edit(docs: dict[str, Doc]) -> None:
        del docs["ars"]["filter"]["result"]

    assert _gained(_changes(edit)) == {("ars", "result", "filter_removed")}


def test_incomparable_operators_are_a_gain() -> None:
    """age_band 10 → 5-year bands is finer; birth_year → age_band is incomparable (a band boundary is new)."""

    def finer(docs: dict[str, Doc]) -> None:
        _field(docs["spf"], "age_band")["args"] = {"width": 5, "top": 90}

    def other(docs: dict[str, Doc]) -> None:
        field = _field(docs["ars"], "birth_year")
        field.update({"from": ["birth_date", "sampled_at"], "op": "age_band", "args": {"width": 5}})

    assert _gained(_changes(finer)) == {("spf", "age_band", "operator_finer")}
    assert _gained(_changes(other)) == {("ars", "birth_year", "sources_changed")}


def test_a_narrower_filter_on_a_field_the_recipient_does_not_receive_is_a_gain() -> None:
    """SPF taking only health-care workers: every record now says its person is one."""

    def edit(docs: dict[str, Doc]) -> None:
        docs["spf"]["filter"]["health_care_worker"] = [True]

    changes = _changes(edit)
    assert _gained(changes) == {("spf", "health_care_worker", "filter_added")}
    assert "does not receive" in gains(changes)[0].note


def test_a_narrower_condition_on_a_field_not_received_is_a_gain() -> None:
    """Without collective_housing, a phone filled only for prisoners tells ARS who is a prisoner."""
    docs = _docs()
    docs["ars"]["fields"] = [f for f in docs["ars"]["fields"] if f["name"] != "collective_housing"]
    before = _access(docs)
    _field(docs["ars"], "phone")["when"] = {"collective_housing": {"in": ["PRISON"]}}
    changes = compare(before, _access(docs))
    assert _gained(changes) == {("ars", "phone", "condition_narrowed")}
    assert "presence" in gains(changes)[0].note


def test_topic_route_and_new_recipients_are_gains() -> None:
    """A changed topic, a removed route and a new recipient each widen access."""

    def topic(docs: dict[str, Doc]) -> None:
        docs["spf"]["topic"] = "surveillance.spf.results.v2"

    def route(docs: dict[str, Doc]) -> None:
        docs["ars"]["topic"] = "tracing.ars.results.v1"
        del docs["ars"]["route"]

    def recipient(docs: dict[str, Doc]) -> None:
        docs["lab"] = {
            "recipient": "lab",
            "topic": "surveillance.lab.results.v1",
            "filter": {"processing_mode": ["P"], "result": ["POSITIVE"]},
            "fields": [{"name": "sex", "op": "keep", "purpose": "Count cases by sex."}],
        }

    assert _gained(_changes(topic)) == {("spf", None, "topic_changed")}
    assert _gained(_changes(route)) == {("ars", None, "topic_changed"), ("ars", None, "route_changed")}
    assert _gained(_changes(recipient)) == {("lab", None, "recipient_added"), ("lab", "sex", "field_gained")}


# ------------------------------------------------------------------ not gains
def test_no_change_no_difference() -> None:
    """The shipped policies compared with themselves: nothing."""
    assert _changes(lambda docs: None) == []


def test_narrowing_is_reported_but_never_a_gain() -> None:
    """Coarser operators, a lost field, a narrower kept-field filter, a removed recipient: no gain."""

    def edit(docs: dict[str, Doc]) -> None:
        _field(docs["spf"], "department")["op"] = "region"
        _field(docs["spf"], "sampled_on")["op"] = "iso_week"
        _field(docs["spf"], "age_band")["args"] = {"width": 20, "top": 80}
        docs["spf"]["fields"] = [f for f in docs["spf"]["fields"] if f["name"] != "symptomatic"]
        docs["spf"]["filter"]["result"] = ["POSITIVE", "NEGATIVE"]  # spf receives result itself
        _field(docs["ars"], "phone")["when"] = {"collective_housing": {"in": ["PRISON"]}}  # ars keeps it
        _field(docs["ars"], "birth_year")["op"] = "drop"
        del docs["cnam"]

    changes = _changes(edit)
    assert gains(changes) == []
    kinds = {(c.recipient, c.field, c.kind) for c in changes}
    assert kinds == {
        ("spf", "department", "operator_coarser"),
        ("spf", "sampled_on", "operator_coarser"),
        ("spf", "age_band", "operator_coarser"),
        ("spf", "symptomatic", "field_lost"),
        ("spf", "result", "filter_narrowed"),
        ("ars", "phone", "condition_narrowed"),
        ("ars", "birth_year", "field_lost"),
        ("cnam", None, "recipient_removed"),
    }


def test_a_renamed_field_or_one_computable_from_kept_fields_is_no_gain() -> None:
    """Renaming SPF's department, or CNAM keeping birth date and sampling time adding an age band."""

    def rename(docs: dict[str, Doc]) -> None:
        _field(docs["spf"], "department")["name"] = "dept"

    renamed = _changes(rename)
    assert gains(renamed) == []
    assert {(c.field, c.kind) for c in renamed} == {("dept", "field_gained"), ("department", "field_lost")}
    assert "already given by department" in next(c.note for c in renamed if c.kind == "field_gained")
    docs = _docs()
    _field(docs["cnam"], "birth_date")["op"] = "keep"
    _field(docs["cnam"], "sampled_at")["op"] = "keep"
    before = _access(docs)
    docs["cnam"]["fields"].append(
        {"name": "age", "from": ["birth_date", "sampled_at"], "op": "age_band", "purpose": "Age group of cases."}
    )
    added = compare(before, _access(docs))
    assert gains(added) == [] and "birth_date + sampled_at" in added[0].note


def test_an_age_band_in_clear_from_an_encrypted_birth_date_is_a_gain() -> None:
    """CNAM receiving the birth date encrypted: an age band in clear shows the platform what it did not see."""
    docs = _docs()
    _field(docs["cnam"], "birth_date")["op"] = "encrypt"
    before = _access(docs)
    docs["cnam"]["fields"].append(
        {"name": "age", "from": ["birth_date", "sampled_at"], "op": "age_band", "purpose": "Age group of cases."}
    )
    assert _gained(compare(before, _access(docs))) == {("cnam", "age", "field_gained")}


def test_a_changed_purpose_is_reported_not_a_gain() -> None:
    """A purpose sentence rewritten: purpose_changed, no gain."""

    def edit(docs: dict[str, Doc]) -> None:
        _field(docs["spf"], "sex")["purpose"] = "Compute incidence by sex for the weekly bulletin."

    changes = _changes(edit)
    assert [(c.field, c.kind, c.gain) for c in changes] == [("sex", "purpose_changed", False)]


def test_an_added_symbol_widens_a_not_in_condition() -> None:
    """collective_housing gains a symbol: `not_in: [NONE]` now admits it, a widened condition."""
    docs = _docs()
    before = _access(docs)
    wider = json.loads(json.dumps(SCHEMA))
    for field in wider["fields"]:
        if field["name"] == "collective_housing":
            field["type"]["symbols"].append("SHELTER")
    policies = [parse_policy(Path(f"{n}.yaml"), yaml.safe_dump(d), wider, REGIONS) for n, d in docs.items()]
    changes = compare(before, access_of(policies, wider))
    assert _gained(changes) == {
        ("ars", "first_names", "condition_widened"),
        ("ars", "last_name", "condition_widened"),
        ("ars", "phone", "condition_widened"),
    }


# ------------------------------------------------------------------ rendering
def test_json_shape() -> None:
    """JSON: labels, overall gain, per-recipient summary, and each change with its fields."""

    def edit(docs: dict[str, Doc]) -> None:
        _field(docs["ars"], "birth_year")["op"] = "keep"
        _field(docs["spf"], "department")["op"] = "region"

    doc = json.loads(diff_json(_changes(edit), "git HEAD", "policies"))
    assert set(doc) == {"old", "new", "gain", "recipients", "changes"}
    assert doc["old"] == "git HEAD" and doc["gain"] is True
    assert doc["recipients"] == {"ars": {"gain": True, "changes": 1}, "spf": {"gain": False, "changes": 1}}
    assert doc["changes"][0] == {
        "recipient": "ars",
        "field": "birth_year",
        "kind": "operator_finer",
        "old": "birth_year",
        "new": "keep",
        "gain": True,
        "note": "",
    }


def test_table_marks_gains() -> None:
    """The table has one row per change and GAIN on the widening ones; no change says so."""

    def edit(docs: dict[str, Doc]) -> None:
        _field(docs["ars"], "birth_year")["op"] = "keep"
        _field(docs["spf"], "department")["op"] = "region"

    lines = diff_table(_changes(edit)).splitlines()
    assert lines[0].split()[:6] == ["recipient", "field", "change", "old", "new", "gain"]
    assert [line.split()[0] for line in lines[2:]] == ["ars", "spf"]
    assert "GAIN" in lines[2] and "GAIN" not in lines[3]
    assert diff_table([]) == "no change in what any recipient receives"
