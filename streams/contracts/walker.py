"""The byte walker that vets an Avro body before fastavro reads it.

Compiled once per accepted writer schema (a :class:`~streams.contracts.budget.TypeNode` tree:
no recursion, nesting within the depth budget), it walks the binary encoding and raises
:class:`BrokenRule` where fastavro would misread, crash or loop long:

- what fastavro reads as plausible values: a negative or too large enum or union index
  (Python negative indexing), a boolean byte other than 0 or 1, an ``int`` beyond 32 bits, a
  varint beyond 64 bits;
- lengths and sizes that point past the end of the record, or are negative;
- block counts the remaining bytes cannot hold (each item takes at least its type's width,
  never 0), a block's byte size that does not match its items, and more array items and map
  entries in one record than the budget allows (each charged with the type nodes it visits).

So fastavro only ever reads a body whose every length, count and index has been checked.
"""

from __future__ import annotations

from collections.abc import Callable

from streams.contracts.budget import DEFAULT_BUDGET, Budget, TypeNode

#: (data, position, [items left, work left]) -> position after the datum.
Walk = Callable[[bytes, int, list[int]], int]
#: (framed data, first body byte) -> position after the record.
Check = Callable[[bytes, int], int]
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


class BrokenRule(Exception):
    """A body breaks an Avro encoding rule or a decode budget; the message names which (no data)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read the zig-zag varint at ``pos``; return (value, next position). At most 64 bits."""
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if n >> 64:
                raise BrokenRule("a varint wider than 64 bits")
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift >= 70:
            raise BrokenRule("a varint longer than 10 bytes")


def _skip_null(data: bytes, pos: int, left: list[int]) -> int:
    return pos


def _skip_boolean(data: bytes, pos: int, left: list[int]) -> int:
    if data[pos] > 1:
        raise BrokenRule("a boolean byte other than 0 or 1")
    return pos + 1


def _skip_long(data: bytes, pos: int, left: list[int]) -> int:
    if data[pos] < 0x80:
        return pos + 1
    return _varint(data, pos)[1]


def _skip_int(data: bytes, pos: int, left: list[int]) -> int:
    if data[pos] < 0x80:
        return pos + 1
    value, pos = _varint(data, pos)
    if not _INT_MIN <= value <= _INT_MAX:
        raise BrokenRule("an int beyond 32 bits")
    return pos


def _skip_bytes(data: bytes, pos: int, left: list[int]) -> int:
    b = data[pos]
    if b < 0x80 and not b & 1:
        size, pos = b >> 1, pos + 1
    else:
        size, pos = _varint(data, pos)
        if size < 0:
            raise BrokenRule("a negative length")
    if pos + size > len(data):
        raise BrokenRule(f"a length of {size} bytes with {len(data) - pos} left")
    return pos + size


def _fixed(size: int) -> Walk:
    def fixed(data: bytes, pos: int, left: list[int]) -> int:
        if pos + size > len(data):
            raise BrokenRule(f"a fixed-size value of {size} bytes with {len(data) - pos} left")
        return pos + size

    return fixed


_PRIMITIVE_WALKS: dict[str, Walk] = {
    "null": _skip_null,
    "boolean": _skip_boolean,
    "int": _skip_int,
    "long": _skip_long,
    "float": _fixed(4),
    "double": _fixed(8),
    "bytes": _skip_bytes,
    "string": _skip_bytes,
}


def _index_below(count: int, what: str) -> Walk:
    def index(data: bytes, pos: int, left: list[int]) -> int:
        b = data[pos]
        if b < 0x80 and not b & 1 and b >> 1 < count:
            return pos + 1
        value, pos = _varint(data, pos)
        if not 0 <= value < count:
            raise BrokenRule(f"{what} index {value} outside 0..{count - 1}")
        return pos

    return index


def _union(branches: list[Walk]) -> Walk:
    count = len(branches)

    def walk(data: bytes, pos: int, left: list[int]) -> int:
        b = data[pos]
        if b < 0x80 and not b & 1 and b >> 1 < count:
            return branches[b >> 1](data, pos + 1, left)
        value, pos = _varint(data, pos)
        if not 0 <= value < count:
            raise BrokenRule(f"union index {value} outside 0..{count - 1}")
        return branches[value](data, pos, left)

    return walk


def _record(fields: list[Walk]) -> Walk:
    def record(data: bytes, pos: int, left: list[int]) -> int:
        for walk in fields:
            pos = walk(data, pos, left)
        return pos

    return record


def _map_entry(value: Walk) -> Walk:
    def entry(data: bytes, pos: int, left: list[int]) -> int:
        return value(data, _skip_bytes(data, pos, left), left)

    return entry


def _blocks(item: Walk, width: int, cost: int, budget: Budget) -> Walk:
    """Array items (or map entries) in blocks; every count is checked before any item is walked."""

    def walk(data: bytes, pos: int, left: list[int]) -> int:
        while True:
            count, pos = _varint(data, pos)
            if count == 0:
                return pos
            end = -1
            if count < 0:  # a block that also gives its size in bytes
                count = -count
                size, pos = _varint(data, pos)
                if not 0 <= size <= len(data) - pos:
                    raise BrokenRule(f"a block size of {size} bytes with {len(data) - pos} left")
                end = pos + size
            if count * width > len(data) - pos:
                raise BrokenRule(f"a block of {count} items that {len(data) - pos} bytes cannot hold")
            left[0] -= count
            left[1] -= count * cost
            if left[0] < 0:
                raise BrokenRule(f"more than {budget.items} array items and map entries in one record")
            if left[1] < 0:
                raise BrokenRule(f"array items and map entries that visit more than {budget.work} type nodes")
            for _ in range(count):
                pos = item(data, pos, left)
            if end >= 0 and pos != end:
                raise BrokenRule("a block whose byte size does not match its items")

    return walk


def compile_check(node: TypeNode, budget: Budget = DEFAULT_BUDGET) -> Check:
    """Compile the walker of values of ``node`` (a tree :func:`~streams.contracts.budget.shape_of` accepted)."""
    named: dict[int, Walk] = {}

    def build(node: TypeNode) -> Walk:
        if node.name and id(node) in named:
            return named[id(node)]
        walk = make(node)
        if node.name:
            named[id(node)] = walk
        return walk

    def make(node: TypeNode) -> Walk:
        kind = node.kind
        if kind in _PRIMITIVE_WALKS:
            return _PRIMITIVE_WALKS[kind]
        if kind == "record":
            return _record([build(child) for child in node.children])
        if kind == "union":
            return _union([build(child) for child in node.children])
        if kind == "enum":
            return _index_below(node.size, "enum")
        if kind == "fixed":
            return _fixed(node.size)
        (inner,) = node.children
        if kind == "array":
            return _blocks(build(inner), inner.width, inner.cost, budget)
        return _blocks(_map_entry(build(inner)), 1 + inner.width, 1 + inner.cost, budget)

    walk = build(node)

    def check(data: bytes, start: int) -> int:
        return walk(data, start, [budget.items, budget.work])

    return check
