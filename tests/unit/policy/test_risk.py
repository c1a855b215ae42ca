"""Re-identification risk: classes, minimum k, share below k and drivers, exactly as counted by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.assembly import PolicySet
from streams.contracts.schemas import input_schema
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.errors import ConfigError
from streams.policy.model import parse_policy
from streams.policy.risk import Step, assess, one_step, quasi_identifiers, risk_json, risk_table, size_bins

SCHEMA = input_schema(1)
REGIONS = frozenset(DEFAULT_GEOGRAPHY.region_names)


def _records() -> list[dict[str, Any]]:
    """Twelve records by hand: (dept, day, sex) classes of sizes 5, 3, 2, 1, 1."""
    rows = (
        [("75", 1, "F")] * 5  # 5
        + [("75", 1, "M")] * 3  # 3
        + [("75", 2, "F")] * 2  # 2
        + [("13", 1, "F")]  # 1
        + [("2A", 9, "M")]  # 1
    )
    return [{"dept": d, "day": day, "sex": s, "pseudonym": f"p{i}"} for i, (d, day, s) in enumerate(rows)]


def test_classes_min_k_and_share_below_k_by_hand() -> None:
    """Sizes {5, 3, 2, 1, 1}: min k 1; below k=5 are 3+2+1+1 = 7 of 12 records; below k=3 are 2+1+1 = 4."""
    report = assess(_records(), ["dept", "day", "sex"], 5, recipient="lab")
    assert report.records == 12 and report.classes == 5 and report.min_k == 1
    assert report.sizes == {1: 2, 2: 1, 3: 1, 5: 1}
    assert report.below_k_records == 7 and report.below_k_share == pytest.approx(7 / 12)
    assert assess(_records(), ["dept", "day", "sex"], 3).below_k_records == 4
    assert assess(_records(), ["dept", "day", "sex"], 1).below_k_records == 0


def test_drivers_by_hand() -> None:
    """Suppressing sex: (75,1)=8, (75,2)=2, (13,1)=1, (2A,9)=1 → 4 below 5. Suppressing day: (75,F)=7,
    (75,M)=3, (13,F)=1, (2A,M)=1 → 5 below. Suppressing dept: (1,F)=6, (1,M)=3, (2,F)=2, (9,M)=1 → 6 below.
    One step on dept (75, 13 → "south-north" halves): (N,1,F)=5, (N,1,M)=3, (N,2,F)=2, (S,1,F)=1, (S,9,M)=1 → 7.
    """
    halves = Step("dept → half", lambda d: "N" if d == "75" else "S")
    report = assess(_records(), ["dept", "day", "sex"], 5, steps={"dept": halves})
    by_field = {d.field: d for d in report.drivers}
    assert by_field["sex"].below_k_suppressed == pytest.approx(4 / 12)
    assert by_field["day"].below_k_suppressed == pytest.approx(5 / 12)
    assert by_field["dept"].below_k_suppressed == pytest.approx(6 / 12)
    assert by_field["dept"].step == "dept → half" and by_field["dept"].below_k_after_step == pytest.approx(7 / 12)
    assert by_field["sex"].step is None and by_field["sex"].below_k_after_step is None
    assert [d.field for d in report.drivers] == ["sex", "day", "dept"]  # what helps most comes first


def test_size_bins_and_table() -> None:
    """Bins: each size below k, then k-9; the table states min k and the share below k."""
    report = assess(_records(), ["dept", "day", "sex"], 5)
    assert size_bins(report) == [("1", 2, 2), ("2", 1, 2), ("3", 1, 3), ("4", 0, 0), ("5-9", 1, 5)]
    text = risk_table(report)
    assert "minimum k: 1" in text and "below k=5: 7 (58.3 %)" in text
    doc = json.loads(risk_json(report))
    assert doc["min_k"] == 1 and doc["below_k_records"] == 7 and doc["sizes"] == {"1": 2, "2": 1, "3": 1, "5": 1}


def test_no_records_and_bad_arguments() -> None:
    """No records: min k 0, nothing below k; k < 1 and an empty quasi-identifier list are errors."""
    empty = assess([], ["dept"], 5)
    assert empty.min_k == 0 and empty.below_k_records == 0 and empty.below_k_share == 0.0
    with pytest.raises(ConfigError, match="k must be at least 1"):
        assess(_records(), ["dept"], 0)
    with pytest.raises(ConfigError, match="no quasi-identifier"):
        assess(_records(), [], 5)


def test_quasi_identifiers_of_the_shipped_policies(policy_set: PolicySet) -> None:
    """SPF: the fields from quasi-identifier inputs plus test kind, sampling day, week and result (marked); not the
    pseudonyms nor symptomatic. ARS marks nothing: only its fields from quasi-identifier inputs."""
    policies = {p.recipient: p for p in policy_set.policies}
    spf = quasi_identifiers(policies["spf"], policy_set.input_schema)
    assert set(spf) == {"age_band", "sex", "department", "collective_housing", "test_kind", "sampled_on", "result"} | {
        "region",  # from the commune code; small-cell protection's coarser department
        "sampled_week",  # marked: small-cell protection's coarser sampling day
    }
    ars = quasi_identifiers(policies["ars"], policy_set.input_schema)
    assert set(ars) == {"birth_year", "sex", "commune_code", "collective_housing"}


def _lab(field: dict[str, Any]) -> Any:
    doc = {
        "recipient": "lab",
        "topic": "surveillance.lab.results.v1",
        "filter": {"processing_mode": ["P"], "result": ["POSITIVE"]},
        "fields": [{"purpose": "Needed for a stated reason.", **field}],
    }
    return parse_policy(Path("lab.yaml"), yaml.safe_dump(doc), SCHEMA, REGIONS)


def test_quasi_identifier_marker_is_validated_at_load() -> None:
    """The marker is a boolean, on a shared field, and cannot unmark a field from a quasi-identifier input."""
    assert quasi_identifiers(_lab({"name": "test_kind", "op": "keep", "quasi_identifier": True}), SCHEMA) == (
        "test_kind",
    )
    assert quasi_identifiers(_lab({"name": "test_kind", "op": "keep"}), SCHEMA) == ()
    for field, message in [
        ({"name": "test_kind", "op": "keep", "quasi_identifier": "yes"}, "must be true or false"),
        ({"name": "test_kind", "op": "drop", "quasi_identifier": True}, "only on a field that is shared"),
        ({"name": "sex", "op": "keep", "quasi_identifier": False}, "cannot be unmarked"),
    ]:
        with pytest.raises(ConfigError) as info:
            _lab(field)
        assert message in str(info.value) and "lab.yaml" in str(info.value) and repr(field["name"]) in str(info.value)


def test_one_step_generalisations(policy_set: PolicySet) -> None:
    """department → region, day → ISO week, 10-year → 20-year bands (top class kept), commune → department."""
    policies = {p.recipient: p for p in policy_set.policies}
    spf = {r.name: r for r in policies["spf"].emitted}
    ars = {r.name: r for r in policies["ars"].emitted}

    def step(rule: Any) -> Step:
        found = one_step(rule, SCHEMA, DEFAULT_GEOGRAPHY)
        assert found is not None
        return found

    assert step(spf["department"]).apply("13") == "93" and step(spf["department"]).apply("2A") == "94"
    assert step(spf["sampled_on"]).apply(18_444) == "2020-W27"  # 2020-07-01
    band = step(spf["age_band"])
    assert [band.apply(v) for v in ("30-39", "20-29", "80-89", "90+")] == ["20-39", "20-39", "80-89", "90+"]
    assert step(ars["commune_code"]).apply("75056") == "75"
    assert step(ars["birth_year"]).apply(1987) == "1985-1989"
    assert one_step(spf["sex"], SCHEMA, DEFAULT_GEOGRAPHY) is None
