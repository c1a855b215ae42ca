"""Policy loading fails fast, naming the file, the recipient and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.contracts.schemas import input_schema
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.errors import ConfigError
from streams.policy.model import default_policy_dir, load_policies, parse_policy

REGIONS = frozenset(DEFAULT_GEOGRAPHY.region_names)
SCHEMA = input_schema(1)


def _base() -> dict[str, object]:
    return {
        "recipient": "lab",
        "topic": "surveillance.lab.results.v1",
        "filter": {"processing_mode": ["P"], "result": ["POSITIVE"]},
        "fields": [{"name": "sex", "op": "keep", "purpose": "Count cases by sex."}],
    }


def _parse(doc: dict[str, object], name: str = "lab.yaml") -> object:
    return parse_policy(Path(name), yaml.safe_dump(doc), SCHEMA, REGIONS)


def _error(doc: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        _parse(doc)
    return str(info.value)


def test_minimal_policy_loads() -> None:
    """A policy with a filter, a topic in convention and a purposeful field loads."""
    policy = _parse(_base())
    assert policy.recipient == "lab"  # type: ignore[attr-defined]
    assert [r.name for r in policy.emitted] == ["sex"]  # type: ignore[attr-defined]


def test_unknown_source_field_names_file_recipient_and_field() -> None:
    """Naming a field the input schema lacks fails with file, recipient and field in the message."""
    doc = _base()
    doc["fields"] = [
        {"name": "variant", "from": "variant_screening", "op": "keep", "purpose": "Track variants over time."}
    ]
    message = _error(doc)
    assert "lab.yaml" in message and "'lab'" in message and "'variant'" in message
    assert "variant_screening" in message


def test_missing_purpose_is_rejected() -> None:
    """Every shared field needs a purpose sentence."""
    doc = _base()
    doc["fields"] = [{"name": "sex", "op": "keep"}]
    assert "purpose" in _error(doc)


def test_too_short_purpose_is_rejected() -> None:
    """A one-word purpose does not say why the field is needed."""
    doc = _base()
    doc["fields"] = [{"name": "sex", "op": "keep", "purpose": "needed"}]
    assert "purpose" in _error(doc)


def test_operator_on_wrong_type_is_rejected() -> None:
    """birth_year on a string field is a type error at load time."""
    doc = _base()
    doc["fields"] = [{"name": "y", "from": "last_name", "op": "birth_year", "purpose": "Age structure of cases."}]
    message = _error(doc)
    assert "birth_year" in message and "last_name" in message and "'y'" in message


def test_unknown_operator_is_rejected() -> None:
    """An operator that is not registered is named in the error with the known ones."""
    doc = _base()
    doc["fields"] = [{"name": "sex", "op": "encrypt_rot13", "purpose": "Count cases by sex."}]
    message = _error(doc)
    assert "encrypt_rot13" in message and "keep" in message


def test_topic_outside_convention_is_rejected() -> None:
    """Topics must follow <tracing|surveillance>.<agency>[.{region}].results.v<N>."""
    doc = _base()
    doc["topic"] = "everything.for.everyone"
    assert "naming convention" in _error(doc)


def test_region_placeholder_requires_route() -> None:
    """A {region} topic without `route: region` (and vice versa) is rejected."""
    doc = _base()
    doc["topic"] = "tracing.lab.{region}.results.v1"
    assert "route" in _error(doc)
    doc = _base()
    doc["route"] = "region"
    assert "route" in _error(doc)


def test_missing_filter_is_rejected() -> None:
    """A recipient without a filter would receive nothing: loading says so."""
    doc = _base()
    del doc["filter"]
    assert "filter" in _error(doc)


def test_non_production_mode_in_filter_is_rejected() -> None:
    """Production recipients may only take processing mode P."""
    doc = _base()
    doc["filter"] = {"processing_mode": ["P", "T"], "result": ["POSITIVE"]}
    assert "processing_mode" in _error(doc)
    doc["filter"] = {"result": ["POSITIVE"]}
    assert "processing_mode" in _error(doc)


def test_unknown_enum_value_in_filter_is_rejected() -> None:
    """Filter values must be symbols of the field's enum."""
    doc = _base()
    doc["filter"] = {"processing_mode": ["P"], "result": ["POSITIV"]}
    message = _error(doc)
    assert "POSITIV" in message and "'result'" in message


def test_unknown_region_filter_is_rejected() -> None:
    """A region filter must use INSEE region codes of the geography table."""
    doc = _base()
    doc["filter"] = {"processing_mode": ["P"], "result": ["POSITIVE"], "region": ["99"]}
    assert "99" in _error(doc)


def test_condition_on_non_enum_field_is_rejected() -> None:
    """Conditional inclusion tests enum or boolean fields only."""
    doc = _base()
    doc["fields"] = [
        {"name": "sex", "op": "keep", "purpose": "Count cases by sex.", "when": {"last_name": {"in": ["X"]}}}
    ]
    assert "last_name" in _error(doc)


def test_bad_operator_argument_is_rejected() -> None:
    """Operator arguments are checked by name and type."""
    doc = _base()
    doc["fields"] = [
        {
            "name": "band",
            "from": ["birth_date", "sampled_at"],
            "op": "age_band",
            "args": {"width": "ten"},
            "purpose": "Age bands for incidence.",
        }
    ]
    assert "width" in _error(doc)


def test_duplicate_output_field_is_rejected() -> None:
    """Two output fields with one name are ambiguous."""
    doc = _base()
    rule = {"name": "sex", "op": "keep", "purpose": "Count cases by sex."}
    doc["fields"] = [rule, rule]
    assert "twice" in _error(doc)


def test_unknown_top_level_key_is_rejected() -> None:
    """Typos in policy keys (e.g. `filters`) are not silently ignored."""
    doc = _base()
    doc["filters"] = doc.pop("filter")
    assert "filters" in _error(doc)


def test_directory_with_duplicate_topic_is_rejected(tmp_path: Path) -> None:
    """Two recipients cannot write to one topic."""
    for name in ("a", "b"):
        doc = _base()
        doc["recipient"] = name
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="more than one recipient"):
        load_policies(tmp_path, SCHEMA, REGIONS)


def test_shipped_policies_load_and_cover_every_recipient_of_the_domain() -> None:
    """The three first-release recipients are defined, with their contract topics."""
    policies = {p.recipient: p for p in load_policies(default_policy_dir(), SCHEMA, REGIONS)}
    assert policies["cnam"].topic == "tracing.cnam.results.v1"
    assert policies["ars"].topic == "tracing.ars.{region}.results.v1"
    assert policies["spf"].topic == "surveillance.spf.results.v1"


def test_policy_version_is_a_hash_of_the_file() -> None:
    """Changing one character of a policy changes its version header."""
    first = _parse(_base())
    doc = _base()
    doc["fields"] = [{"name": "sex", "op": "keep", "purpose": "Count the cases by sex."}]
    assert first.version != _parse(doc).version  # type: ignore[attr-defined]


def _with_field(field: dict[str, object]) -> dict[str, object]:
    doc = _base()
    doc["fields"] = [{**field, "purpose": "Needed by the recipient for its mission."}]
    return doc


AGE_BAND = {"name": "age", "from": ["birth_date", "sampled_at"], "op": "age_band"}
MASK = {"name": "phone_hint", "from": "phone", "op": "mask"}
PSEUDONYM = {"name": "person", "from": "nir", "op": "pseudonymise"}

BAD_ARGUMENTS = {
    "age_band width 0": (AGE_BAND, {"width": 0}, "argument 'width' must be at least 1 (got 0)"),
    "age_band width -5": (AGE_BAND, {"width": -5}, "argument 'width' must be at least 1 (got -5)"),
    "age_band width true (YAML boolean, not 1)": (AGE_BAND, {"width": True}, "argument 'width' must be int, not bool"),
    "age_band width 2.5": (AGE_BAND, {"width": 2.5}, "argument 'width' must be int, not float"),
    "age_band top below width": (AGE_BAND, {"width": 10, "top": 5}, "argument 'top' (5) must be at least 'width' (10)"),
    "age_band top below the default width": (AGE_BAND, {"top": 0}, "argument 'top' (0) must be at least 'width' (10)"),
    "age_band top false": (AGE_BAND, {"top": False}, "argument 'top' must be int, not bool"),
    "age_band misspelt argument": (AGE_BAND, {"widht": 5}, "has no argument 'widht'"),
    "mask keep_last -1": (MASK, {"keep_last": -1}, "argument 'keep_last' must be at least 0 (got -1)"),
    "mask keep_last true": (MASK, {"keep_last": True}, "argument 'keep_last' must be int, not bool"),
    "mask keep_last '2'": (MASK, {"keep_last": "2"}, "argument 'keep_last' must be int, not str"),
    "pseudonymise normalise NIR": (PSEUDONYM, {"normalise": "NIR"}, "argument 'normalise' must be one of ['nir']"),
    "pseudonymise memoise 1": (PSEUDONYM, {"memoise": 1}, "argument 'memoise' must be bool, not int"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_operator_arguments_are_range_checked_at_load(case: str) -> None:
    """Out-of-range, mistyped (a boolean is not an integer) or unknown arguments fail, naming file, recipient, field."""
    field, args, expected = BAD_ARGUMENTS[case]
    message = _error(_with_field({**field, "args": args}))
    assert expected in message
    assert message.startswith("lab.yaml: recipient 'lab', field ") and f"'{field['name']}'" in message


@pytest.mark.parametrize(
    ("field", "args"),
    [
        (AGE_BAND, {"width": 1, "top": 1}),
        (AGE_BAND, {"width": 5, "top": 80}),
        (AGE_BAND, {}),
        (MASK, {"keep_last": 0}),
        (MASK, {"keep_last": 4}),
        (PSEUDONYM, {"normalise": "nir", "memoise": False}),
    ],
)
def test_arguments_in_range_load(field: dict[str, object], args: dict[str, object]) -> None:
    """The boundaries (width 1, top = width, keep_last 0) and the defaults are accepted."""
    policy = _parse(_with_field({**field, "args": args}))
    assert policy.fields[0].args == args  # type: ignore[attr-defined]
