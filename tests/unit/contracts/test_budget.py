"""Unit tests of writer-schema acceptance (streams.contracts.budget): what a worker refuses to decode, and why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.contracts.budget import DEFAULT_BUDGET, Budget, SchemaRefused, parse_writer_text, shape_of
from streams.contracts.schemas import input_schema


def _with_field(avro_type: Any, name: str = "x") -> dict[str, Any]:
    """The v1 contract plus one field of ``avro_type``."""
    v1 = input_schema(1)
    return {**v1, "fields": [*v1["fields"], {"name": name, "type": avro_type}]}


def _refusal(schema: dict[str, Any], budget: Budget = DEFAULT_BUDGET) -> str:
    with pytest.raises(SchemaRefused) as caught:
        shape_of(schema, budget)
    return caught.value.reason


def _record(name: str, *fields: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields], **extra}


def test_the_contracts_are_accepted_with_their_facts() -> None:
    """v1 and v2 are accepted; v1's minimal width is one byte per field but none for nothing, its depth small."""
    v1 = shape_of(input_schema(1))
    assert shape_of(input_schema(2)).kind == "record"
    assert v1.kind == "record" and len(v1.children) == len(input_schema(1)["fields"])
    assert v1.width == len(v1.children)  # every v1 field (string, enum, union, array...) takes ≥ 1 byte
    assert v1.depth <= 4 and v1.expanded < 200


RECURSIVE = {
    "direct, through a union": (
        _with_field(["null", _record("Node", ("next", ["null", "Node"]))], "x_node"),
        "recursive type Node at field x_node.next",
    ),
    "through an array": (
        _with_field(_record("Tree", ("children", {"type": "array", "items": "Tree"}))),
        "recursive type Tree at field x.children",
    ),
    "through map values": (
        _with_field(_record("Dir", ("entries", {"type": "map", "values": "Dir"}))),
        "recursive type Dir at field x.entries",
    ),
    "mutual, through another named type": (
        _with_field(_record("A", ("b", _record("B", ("a", ["null", "A"]))))),
        "recursive type A at field x.b.a",
    ),
    "by full name across namespaces": (
        _with_field(_record("Loop", ("again", ["null", "org.x.Loop"]), namespace="org.x")),
        "recursive type Loop at field x.again",
    ),
    "by short name inside its namespace": (
        _with_field(_record("org.y.Cell", ("tail", ["null", "Cell"]))),
        "recursive type Cell at field x.tail",
    ),
    "through a dict wrapping a name": (
        _with_field(_record("Wrap", ("inner", ["null", {"type": "Wrap"}]))),
        "recursive type Wrap at field x.inner",
    ),
}


@pytest.mark.parametrize("case", list(RECURSIVE))
def test_recursive_types_are_refused_naming_type_and_field(case: str) -> None:
    """A named type that reaches itself, by any route, is refused with 'recursive type T at field path'."""
    schema, reason = RECURSIVE[case]
    assert _refusal(schema) == reason


def test_a_named_type_used_twice_without_recursion_is_accepted() -> None:
    """Re-using a named type (a fixed, a record) in sibling fields is not recursion."""
    tag = {"type": "fixed", "name": "Tag", "size": 3}
    point = _record("Point", ("lat", "double"), ("lon", "double"))
    v1 = input_schema(1)
    fields = [{"name": "t1", "type": tag}, {"name": "t2", "type": ["null", "Tag"]}, {"name": "p1", "type": point}]
    fields += [{"name": "p2", "type": {"type": "array", "items": "Point"}}]
    all_fields = [*v1["fields"], *fields]
    node = shape_of({**v1, "fields": all_fields})
    by_name = dict(zip([f["name"] for f in all_fields], node.children, strict=True))
    assert by_name["p1"] is by_name["p2"].children[0]  # one shared node per named type
    assert by_name["t1"] is by_name["t2"].children[1]


ZERO_WIDTH = {
    "array of null": ({"type": "array", "items": "null"}, "array of zero-width items (null) at field x"),
    "map of null": ({"type": "map", "values": "null"}, "map of zero-width values (null) at field x"),
    "array of an empty record": (
        {"type": "array", "items": _record("Nothing")},
        "array of zero-width items (empty record Nothing) at field x",
    ),
    "array of a record of nulls": (
        {"type": "array", "items": _record("Nulls", ("a", "null"), ("b", "null"))},
        "array of zero-width items (record Nulls of zero-width fields) at field x",
    ),
    "array of a fixed of size 0": (
        {"type": "array", "items": {"type": "fixed", "name": "Empty", "size": 0}},
        "array of zero-width items (fixed Empty of size 0) at field x",
    ),
    "array of a record nesting zero-width records": (
        {"type": "array", "items": _record("Outer", ("inner", _record("Inner", ("n", "null"))))},
        "array of zero-width items (record Outer of zero-width fields) at field x",
    ),
    "nested: array of arrays of null": (
        {"type": "array", "items": {"type": "array", "items": "null"}},
        "array of zero-width items (null) at field x",
    ),
    "inside a union": (["null", {"type": "array", "items": "null"}], "array of zero-width items (null) at field x"),
}


@pytest.mark.parametrize("case", list(ZERO_WIDTH))
def test_arrays_and_maps_of_zero_width_items_are_refused(case: str) -> None:
    """Items that can take zero bytes would let a block count cost nothing: refused, naming the construct."""
    avro_type, reason = ZERO_WIDTH[case]
    assert _refusal(_with_field(avro_type)) == reason


@pytest.mark.parametrize(
    "items",
    [
        ["null"],  # a union index takes one byte
        {"type": "enum", "name": "One", "symbols": ["ONLY"]},  # an enum index takes one byte
        {"type": "array", "items": "int"},  # an empty array is one byte (count 0)
        _record("Half", ("n", "null"), ("b", "boolean")),
        {"type": "fixed", "name": "Byte", "size": 1},
    ],
)
def test_items_of_at_least_one_byte_are_accepted(items: Any) -> None:
    """One-branch unions, one-symbol enums, nested arrays, records with a non-empty field, fixed(1): ≥ 1 byte each."""
    node = shape_of(_with_field({"type": "array", "items": items}))
    assert node.children[-1].children[0].width >= 1


def _nested_arrays(depth: int) -> Any:
    avro_type: Any = "int"
    for _ in range(depth):
        avro_type = {"type": "array", "items": avro_type}
    return avro_type


def _nested_unions(depth: int) -> Any:
    avro_type: Any = "int"
    for n in range(depth):
        avro_type = ["null", _record(f"Level{n}", ("down", avro_type))]
    return avro_type


def test_types_nested_beyond_the_depth_budget_are_refused() -> None:
    """Arrays nested 40 deep or records-in-unions 40 deep are refused; 20 deep arrays are accepted."""
    assert "types nest deeper than 32 levels at field x" in _refusal(_with_field(_nested_arrays(40)))
    assert "types nest deeper than 32 levels" in _refusal(_with_field(_nested_unions(40)))
    assert shape_of(_with_field(_nested_arrays(20))).depth > 20


def test_schemas_beyond_the_size_budgets_are_refused() -> None:
    """Too many fields, too many named types, or a named type expanded exponentially (10 uses per level) are refused."""
    v1 = input_schema(1)
    many = {**v1, "fields": [*v1["fields"], *({"name": f"f{n}", "type": "int"} for n in range(1_000))]}
    assert _refusal(many) == "schema has more than 1000 fields"
    named = [{"name": f"e{n}", "type": {"type": "enum", "name": f"E{n}", "symbols": ["A"]}} for n in range(100)]
    assert _refusal({**v1, "fields": [*v1["fields"], *named]}) == "schema defines more than 100 named types"
    level: Any = "null"
    for n in range(8):  # 10**8 nodes to read for a body of zero bytes
        level = _record(f"L{n}", *((f"f{i}", level if i == 0 else f"L{n - 1}" if n else "null") for i in range(10)))
    reason = _refusal(_with_field(level))
    assert reason == "schema expands to more than 5000 type nodes once named types are expanded"


def test_unknown_or_doubly_defined_names_and_malformed_types_are_refused() -> None:
    """An undefined type name, a name defined twice, a fixed without a valid size and a non-type are refused."""
    assert _refusal(_with_field("Missing")) == "unknown type 'Missing' at field x"
    twice = _with_field(["null", _record("T", ("a", "int")), _record("T", ("b", "int"))])
    assert _refusal(twice).startswith("type T defined twice")
    assert _refusal(_with_field({"type": "fixed", "name": "F", "size": -1})) == "fixed F has no valid size"
    assert _refusal(_with_field({"type": "fixed", "name": "F", "size": True})) == "fixed F has no valid size"
    assert _refusal(_with_field(42)) == "not an Avro type at field x"
    assert _refusal(_with_field([])) == "empty union at field x"


def test_schema_text_beyond_the_length_or_json_nesting_budget_is_refused_before_parsing() -> None:
    """A 65 KiB schema text, JSON nested 30 000 deep (json's own recursion) or 200 deep is refused; not JSON too."""
    padded = json.dumps({**input_schema(1), "doc": "x" * 70_000})
    with pytest.raises(SchemaRefused, match=r"schema text of 7[0-9]{4} characters exceeds the budget of 65536"):
        parse_writer_text(padded)
    for depth in (30_000, 200):
        deep = json.dumps({**input_schema(1), "x": "DEEP"}).replace('"DEEP"', "[" * depth + "]" * depth)
        assert len(deep) < DEFAULT_BUDGET.schema_chars
        with pytest.raises(SchemaRefused, match="schema JSON nests deeper than 160 levels"):
            parse_writer_text(deep)
    with pytest.raises(SchemaRefused, match="not JSON"):
        parse_writer_text("{")
    with pytest.raises(SchemaRefused, match="not a JSON object"):
        parse_writer_text("[1]")
    assert parse_writer_text(json.dumps(input_schema(2))) == input_schema(2)


def test_budgets_are_injectable() -> None:
    """A smaller budget refuses what the default accepts (the limits are data, not constants in the code)."""
    assert _refusal(input_schema(1), Budget(depth=2)).startswith("types nest deeper than 2 levels")
    assert _refusal(input_schema(1), Budget(fields=10)) == "schema has more than 10 fields"
