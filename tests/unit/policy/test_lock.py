"""The access lock: a faithful, stable, validated statement of what each recipient receives."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.assembly import PolicySet
from streams.contracts.schemas import input_schema
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.errors import ConfigError
from streams.policy.access import Cond, FieldAccess, access_of
from streams.policy.diff import compare, gains
from streams.policy.granularity import Grain
from streams.policy.lock import lock_document, lock_path, parse_lock, render_lock
from streams.policy.model import default_policy_dir, parse_policy

SCHEMA = input_schema(1)
REGIONS = frozenset(DEFAULT_GEOGRAPHY.region_names)


def test_the_shipped_policies_grant_nothing_beyond_the_checked_in_lock(policy_set: PolicySet) -> None:
    """policies/access.lock lists at least every access the shipped policies grant (what `policy check` enforces)."""
    path = lock_path(default_policy_dir())
    locked = parse_lock(path.read_text(encoding="utf-8"), str(path))
    current = access_of(policy_set.policies, policy_set.input_schema)
    assert [c.describe() for c in gains(compare(locked, current))] == []
    assert sorted(locked) == sorted(current) == ["ars", "cnam", "spf"]


def test_render_then_parse_is_the_same_access(policy_set: PolicySet) -> None:
    """Reading back a rendered lock gives exactly the access it was written from, and renders identically."""
    access = access_of(policy_set.policies, policy_set.input_schema)
    text = render_lock(access)
    assert parse_lock(text, "lock") == access
    assert render_lock(parse_lock(text, "lock")) == text


def test_lock_is_sorted_and_states_every_emitted_field(policy_set: PolicySet) -> None:
    """Recipients, fields and values are sorted; drop rules are absent; each field has sources, op and purpose."""
    doc = lock_document(access_of(policy_set.policies, policy_set.input_schema))
    assert list(doc["recipients"]) == sorted(doc["recipients"])
    for policy in policy_set.policies:
        entry = doc["recipients"][policy.recipient]
        assert list(entry["fields"]) == sorted(r.name for r in policy.emitted)
        assert entry["topic"] == policy.topic and entry.get("route") == policy.route
        for rule in policy.emitted:
            field = entry["fields"][rule.name]
            assert field["from"] == list(rule.sources) and field["op"] == rule.op and field["purpose"] == rule.purpose
    cnam = doc["recipients"]["cnam"]["fields"]
    assert "prescriber_rpps" not in cnam and "prescriber_email" not in cnam  # op: drop


def _one(source: str | list[str], op: str, **extra: object) -> FieldAccess:
    """The access of one field ``f`` of a throw-away recipient taking POSITIVE and NEGATIVE results."""
    field = {"name": "f", "from": source, "op": op, "purpose": "Needed for a stated reason.", **extra}
    doc = {
        "recipient": "lab",
        "topic": "surveillance.lab.results.v1",
        "filter": {"processing_mode": ["P"], "result": ["POSITIVE", "NEGATIVE"]},
        "fields": [field],
    }
    policy = parse_policy(Path("lab.yaml"), yaml.safe_dump(doc), SCHEMA, REGIONS)
    return access_of([policy], SCHEMA)["lab"].fields["f"]


def test_conditions_are_normalised_to_in_sets() -> None:
    """not_in [NONE] is stored as the other four symbols; a condition true for the whole filter is no condition."""
    field = _one("phone", "keep", when={"collective_housing": {"not_in": ["NONE"]}})
    assert field.when == Cond("collective_housing", frozenset({"NURSING_HOME", "DISABILITY_HOME", "PRISON", "OTHER"}))
    assert _one("phone", "keep", when={"result": {"in": ["POSITIVE", "NEGATIVE"]}}).when is None
    narrowed = _one("phone", "keep", when={"result": {"not_in": ["NEGATIVE"]}})
    assert narrowed.when == Cond("result", frozenset({"POSITIVE"}))


def test_arguments_are_canonical_in_the_lock() -> None:
    """memoise is not access; age_band defaults are written out."""
    assert _one("event_id", "pseudonymise", args={"memoise": False}).grain == Grain.of("pseudonymise")
    assert _one(["birth_date", "sampled_at"], "age_band").grain.arguments == {"width": 10, "top": 90}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recipients: [", "not valid YAML"),
        ("lock_version: 7\nrecipients: {}\n", "unsupported lock_version 7"),
        ("lock_version: 1\nrecipients: {spf: {topic: t, filter: {}, colour: red}}\n", "recipient 'spf': unknown keys"),
        (
            "lock_version: 1\nrecipients: {spf: {topic: t, filter: {}, fields: {sex: {op: keep, purpose: p}}}}\n",
            "recipient 'spf', field 'sex': `from` must list",
        ),
        (
            "lock_version: 1\nrecipients: {spf: {topic: t, filter: {result: []}, fields: {}}}\n",
            "filter 'result' must be a non-empty list",
        ),
    ],
)
def test_a_malformed_lock_fails_naming_file_recipient_and_field(text: str, message: str) -> None:
    """Bad YAML, an unknown version, unknown keys, missing sources or empty filters fail with their place."""
    with pytest.raises(ConfigError) as info:
        parse_lock(text, "policies/access.lock")
    assert "policies/access.lock" in str(info.value) and message in str(info.value)
    assert "policy lock --write" in str(info.value)


def test_a_hand_edited_lock_that_drops_a_field_makes_the_policy_a_gain(policy_set: PolicySet) -> None:
    """Deleting SPF's department from the lock: the policies now grant something the lock does not list."""
    access = access_of(policy_set.policies, policy_set.input_schema)
    doc = yaml.safe_load(render_lock(access))
    del doc["recipients"]["spf"]["fields"]["department"]
    locked = parse_lock(yaml.safe_dump(doc), "lock")
    assert [(c.recipient, c.field, c.kind) for c in gains(compare(locked, access))] == [
        ("spf", "department", "field_gained")
    ]
