"""Unit tests of the pre-decode byte walker (streams.contracts.walker): counts, lengths and budgets vetted first."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts.budget import Budget, shape_of
from streams.contracts.walker import BrokenRule, compile_check, compile_closure_check


def _zigzag(value: int) -> bytes:
    """The Avro varint of ``value``."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _schema(avro_type: Any) -> dict[str, Any]:
    return {"type": "record", "name": "R", "fields": [{"name": "x", "type": avro_type}]}


def _check(avro_type: Any, body: bytes, budget: Budget | None = None) -> int:
    """Walk ``body`` as a record with one field of ``avro_type``; return the end position."""
    budget = budget or Budget()
    return compile_check(shape_of(_schema(avro_type), budget), budget)(body, 0)


def _broken(avro_type: Any, body: bytes, budget: Budget | None = None) -> str:
    with pytest.raises(BrokenRule) as caught:
        _check(avro_type, body, budget)
    return str(caught.value)


def _encode(avro_type: Any, value: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(_schema(avro_type)), {"x": value})
    return buffer.getvalue()


INTS = {"type": "array", "items": "int"}


def test_valid_encodings_walk_to_their_end() -> None:
    """What fastavro writes, the walker walks to the last byte (arrays, maps, nested records, unions, fixed)."""
    cases: list[tuple[Any, Any]] = [
        (INTS, list(range(-300, 300))),
        ({"type": "map", "values": ["null", "string"]}, {"a": None, "b": "é" * 70}),
        ({"type": "array", "items": {"type": "array", "items": "long"}}, [[], [2**62], [1, 2, 3]]),
        ({"type": "array", "items": {"type": "fixed", "name": "F", "size": 3}}, [b"abc", b"xyz"]),
        ({"type": "array", "items": ["null", "double"]}, [None, 1.5, None]),
    ]
    for avro_type, value in cases:
        body = _encode(avro_type, value)
        assert _check(avro_type, body) == len(body), avro_type


def test_a_block_count_the_bytes_cannot_hold_is_refused_before_any_item_is_read() -> None:
    """A block count of 3·10⁷ ints in a few bytes is refused at once (each int takes ≥ 1 byte)."""
    body = _zigzag(30_000_000) + b"\x00" * 200
    assert _broken(INTS, body) == "a block of 30000000 items that 200 bytes cannot hold"
    assert _broken({"type": "map", "values": "int"}, _zigzag(100) + b"\x00" * 150).startswith("a block of 100 items")


def test_negative_block_counts_need_an_exact_byte_size() -> None:
    """Count -n gives a byte size: it must be ≥ 0, within the record, and match the items walked."""
    items = _zigzag(1) + _zigzag(2)
    assert _check(INTS, _zigzag(-2) + _zigzag(len(items)) + items + b"\x00") == len(items) + 3
    assert _broken(INTS, _zigzag(-2) + _zigzag(-5) + items + b"\x00") == "a block size of -5 bytes with 3 left"
    huge = _zigzag(-2) + _zigzag(2**40) + items + b"\x00"
    assert _broken(INTS, huge).startswith("a block size of 1099511627776 bytes with")
    lying = _zigzag(-2) + _zigzag(1) + items + b"\x00"
    assert _broken(INTS, lying) == "a block whose byte size does not match its items"
    assert _broken(INTS, _zigzag(-30_000_000) + _zigzag(3) + items + b"\x00").startswith("a block of 30000000")


def test_lengths_past_the_end_and_negative_lengths_are_refused() -> None:
    """A string length of 2⁶² (or just one byte too many), or a negative length, is refused before reading."""
    assert _broken("string", _zigzag(2**62) + b"abc") == f"a length of {2**62} bytes with 3 left"
    assert _broken("string", _zigzag(4) + b"abc") == "a length of 4 bytes with 3 left"
    assert _broken("bytes", _zigzag(-1) + b"abc") == "a negative length"
    assert _broken({"type": "map", "values": "int"}, _zigzag(1) + _zigzag(9) + b"k\x02\x00").startswith("a length of 9")
    assert _broken({"type": "fixed", "name": "F", "size": 8}, b"1234") == "a fixed-size value of 8 bytes with 4 left"
    assert _broken("double", b"1234") == "a fixed-size value of 8 bytes with 4 left"


def test_the_item_budget_counts_every_block_of_one_record() -> None:
    """Items over several blocks and nested arrays add up: 10 pass with a budget of 10, 11 do not."""
    budget = Budget(items=10)
    ten = _zigzag(4) + b"\x00" * 4 + _zigzag(6) + b"\x00" * 6 + b"\x00"
    assert _check(INTS, ten, budget) == len(ten)
    eleven = _zigzag(5) + b"\x00" * 5 + _zigzag(6) + b"\x00" * 6 + b"\x00"
    assert _broken(INTS, eleven, budget) == "more than 10 array items and map entries in one record"
    nested = {"type": "array", "items": INTS}
    inner = _zigzag(3) + b"\x00" * 3 + b"\x00"  # 3 ints: with the outer 3 items, 12 items in all
    assert _broken(nested, _zigzag(3) + inner * 3 + b"\x00", budget).startswith("more than 10 array items")


def test_the_work_budget_charges_each_item_with_the_nodes_it_visits() -> None:
    """Items of a 5-node record cost 5 each: 4 fit a work budget of 20, 5 do not (a narrow item visiting many nodes)."""
    fields = [*({"name": f"f{i}", "type": "null"} for i in range(3)), {"name": "b", "type": "boolean"}]
    wide = _schema({"type": "array", "items": {"type": "record", "name": "W", "fields": fields}})
    budget = Budget(work=20)
    check = compile_check(shape_of(wide, budget), budget)
    assert check(_zigzag(4) + b"\x00" * 4 + b"\x00", 0) == 6
    with pytest.raises(BrokenRule, match="visit more than 20 type nodes"):
        check(_zigzag(5) + b"\x00" * 5 + b"\x00", 0)


def test_budgets_are_per_record_not_per_walker() -> None:
    """The same compiled check walks many records: each starts with the whole budget again."""
    budget = Budget(items=10)
    check = compile_check(shape_of(_schema(INTS), budget), budget)
    body = _zigzag(10) + b"\x00" * 10 + b"\x00"
    assert [check(body, 0) for _ in range(5)] == [len(body)] * 5


@pytest.mark.parametrize(
    ("avro_type", "body", "reason"),
    [
        ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, _zigzag(-1), "enum index -1 outside 0..1"),
        ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, _zigzag(2), "enum index 2 outside 0..1"),
        (["null", "int"], _zigzag(-2) + b"\x00", "union index -2 outside 0..1"),
        ("boolean", b"\x02", "a boolean byte other than 0 or 1"),
        ("int", _zigzag(2**31), "an int beyond 32 bits"),
        ("long", b"\x80" * 10 + b"\x00", "a varint longer than 10 bytes"),
        ("long", b"\xff" * 9 + b"\x7f", "a varint wider than 64 bits"),
    ],
)
def test_what_fastavro_would_misread_is_refused_with_its_reason(avro_type: Any, body: bytes, reason: str) -> None:
    """Negative/too large indices, booleans other than 0/1 and over-wide integers are refused, naming the rule."""
    assert _broken(avro_type, body) == reason


def test_a_truncated_body_runs_out_of_bytes() -> None:
    """A body cut inside a value raises IndexError (the decoder reports it as truncated)."""
    with pytest.raises(IndexError):
        _check({"type": "array", "items": "long"}, _zigzag(1) + b"\x80")


MIXED = {
    "type": "record",
    "name": "M",
    "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": ["null", "long"]},
        {"name": "s", "type": ["null", "string", {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}]},
        {"name": "f", "type": {"type": "fixed", "name": "F", "size": 3}},
        {"name": "d", "type": ["double", "float", "bytes"]},
        {
            "name": "n",
            "type": ["null", {"type": "record", "name": "N", "fields": [{"name": "u", "type": ["null", "F"]}]}],
        },
        {"name": "a", "type": {"type": "array", "items": ["null", "int"]}},
        {"name": "m", "type": {"type": "map", "values": "string"}},
    ],
}
MIXED_VALUE = {
    "b": True,
    "i": -70000,
    "l": 1 << 40,
    "s": "C",
    "f": b"xyz",
    "d": b"\x00" * 70,
    "n": {"u": b"abc"},
    "a": [None, 5, -1],
    "m": {"k": "v", "é": "w"},
}


def _outcome(check: Any, body: bytes) -> tuple[str, object]:
    try:
        return "end", check(body, 0)
    except BrokenRule as rule:
        return "broken", str(rule)
    except IndexError:
        return "truncated", None


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_the_generated_walker_decides_every_body_as_the_closures_do(data: st.DataObject) -> None:
    """On valid bodies and on random corruptions of them (flipped, cut, inserted bytes), the
    straight-line generated walker ends where the closure walker ends, or refuses with the same
    rule, or runs out of bytes the same way."""
    budget = Budget(items=6)
    shape = shape_of(MIXED, budget)
    generated, closures = compile_check(shape, budget), compile_closure_check(shape, budget)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(MIXED), MIXED_VALUE)
    body = bytearray(buffer.getvalue())
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(("set", "cut", "insert")))
        if action == "set":
            body[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del body[at:]
            if not body:
                body.append(0)
        else:
            body.insert(at, data.draw(st.integers(0, 255)))
    assert _outcome(generated, bytes(body)) == _outcome(closures, bytes(body))


def test_the_screening_event_walker_is_generated() -> None:
    """The ingress contract's check is the generated function, not the closure fallback."""
    from streams.contracts.schemas import input_schema

    check = compile_check(shape_of(input_schema(), Budget()), Budget())
    assert check.__code__.co_filename == "<walker>"


def test_a_wide_writer_schema_keeps_the_closures() -> None:
    """A schema of 999 optional strings (within the budget) is not compiled to a 20 000-line function:
    compiling it would stall the runner ~1 s per new schema id; the closure walker checks it."""
    wide = {
        "type": "record",
        "name": "W",
        "fields": [{"name": f"f{i}", "type": ["null", "string"]} for i in range(999)],
    }
    check = compile_check(shape_of(wide, Budget()), Budget())
    assert check.__code__.co_filename != "<walker>"
    assert check(bytes(999), 0) == 999
