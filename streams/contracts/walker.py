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


def _closure_walk(node: TypeNode, budget: Budget) -> Walk:
    """The walk of ``node`` built from closures (one call per datum): the reference implementation."""
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

    return build(node)


#: Generated walkers longer than this many lines fall back to the closures: compiling costs ~50 µs a
#: line (a 1 000-field schema within the budget: ~1 s, against 7 ms for the closures), paid on the
#: runner thread for each new writer schema id. The screening event's walker is ~350 lines.
MAX_GENERATED_LINES = 2_000


class _Generator:
    """Writes one straight-line Python function walking a record: no call per field.

    Each datum's checks are the closures' own, inlined with the same messages; arrays and maps
    call their closure walk (``_blocks``), which keeps the per-record budgets.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.lines: list[str] = []
        self.names: dict[str, object] = {
            "BrokenRule": BrokenRule,
            "_varint": _varint,
            "_INT_MIN": _INT_MIN,
            "_INT_MAX": _INT_MAX,
        }
        self.serial = 0

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def fresh(self, stem: str) -> str:
        self.serial += 1
        return f"{stem}{self.serial}"

    def datum(self, node: TypeNode, d: int) -> None:
        """Lines advancing ``pos`` over one value of ``node`` (indented ``d`` levels)."""
        kind, e = node.kind, self.emit
        if kind == "null":
            return
        if kind == "boolean":
            e(d, "if data[pos] > 1:")
            e(d + 1, 'raise BrokenRule("a boolean byte other than 0 or 1")')
            e(d, "pos += 1")
        elif kind == "long":
            e(d, "if data[pos] < 0x80:")
            e(d + 1, "pos += 1")
            e(d, "else:")
            e(d + 1, "pos = _varint(data, pos)[1]")
        elif kind == "int":
            e(d, "if data[pos] < 0x80:")
            e(d + 1, "pos += 1")
            e(d, "else:")
            e(d + 1, "value, pos = _varint(data, pos)")
            e(d + 1, "if not _INT_MIN <= value <= _INT_MAX:")
            e(d + 2, 'raise BrokenRule("an int beyond 32 bits")')
        elif kind in ("float", "double", "fixed"):
            size = int({"float": 4, "double": 8}.get(kind, node.size))  # only ints reach the source
            e(d, f"if pos + {size} > end:")
            e(d + 1, f'raise BrokenRule(f"a fixed-size value of {size} bytes with {{end - pos}} left")')
            e(d, f"pos += {size}")
        elif kind in ("bytes", "string"):
            e(d, "b = data[pos]")
            e(d, "if b < 0x80 and not b & 1:")
            e(d + 1, "size, pos = b >> 1, pos + 1")
            e(d, "else:")
            e(d + 1, "size, pos = _varint(data, pos)")
            e(d + 1, "if size < 0:")
            e(d + 2, 'raise BrokenRule("a negative length")')
            e(d, "if pos + size > end:")
            e(d + 1, 'raise BrokenRule(f"a length of {size} bytes with {end - pos} left")')
            e(d, "pos += size")
        elif kind == "record":
            for child in node.children:
                self.datum(child, d)
        elif kind in ("enum", "union"):
            count = int(node.size) if kind == "enum" else len(node.children)
            index = self.fresh("i")
            e(d, "b = data[pos]")
            e(d, f"if b < 0x80 and not b & 1 and b >> 1 < {count}:")
            e(d + 1, f"{index}, pos = b >> 1, pos + 1")
            e(d, "else:")
            e(d + 1, f"{index}, pos = _varint(data, pos)")
            e(d + 1, f"if not 0 <= {index} < {count}:")
            e(d + 2, f'raise BrokenRule(f"{kind} index {{{index}}} outside 0..{count - 1}")')
            if kind == "union":
                for n, branch in enumerate(node.children):
                    e(d, f"{'if' if n == 0 else 'elif'} {index} == {n}:")
                    before = len(self.lines)
                    self.datum(branch, d + 1)
                    if len(self.lines) == before:
                        e(d + 1, "pass")
        else:  # array | map: the closure walk, with the record's budgets
            walk = self.fresh("_walk")
            self.names[walk] = _closure_walk(node, self.budget)
            e(d, f"pos = {walk}(data, pos, left)")

    def compile(self, node: TypeNode) -> Check | None:
        """The generated check of ``node``, or None when it would be too long."""
        items, work = self.budget.items, self.budget.work
        self.emit(0, "def check(data, pos):")
        self.emit(1, "end = len(data)")
        self.emit(1, f"left = [{items}, {work}]")
        self.datum(node, 1)
        self.emit(1, "return pos")
        if len(self.lines) > MAX_GENERATED_LINES:
            return None
        namespace = dict(self.names)
        try:
            code = compile("\n".join(self.lines), "<walker>", "exec")
        except (SyntaxError, RecursionError, MemoryError):  # nesting beyond the compiler's limits
            return None
        exec(code, namespace)  # our own source, from the schema tree (no text of the schema is run)
        check: Check = namespace["check"]  # type: ignore[assignment]
        return check


def compile_check(node: TypeNode, budget: Budget = DEFAULT_BUDGET) -> Check:
    """Compile the walker of values of ``node`` (a tree :func:`~streams.contracts.budget.shape_of` accepted).

    Generated as one function of straight-line checks (about 4× faster than one closure call
    per datum); a shape too large to inline keeps the closures (:func:`compile_closure_check`).
    """
    return _Generator(budget).compile(node) or compile_closure_check(node, budget)


def compile_closure_check(node: TypeNode, budget: Budget = DEFAULT_BUDGET) -> Check:
    """The same check as :func:`compile_check`, built from closures (the reference the tests compare with)."""
    walk = _closure_walk(node, budget)

    def check(data: bytes, start: int) -> int:
        return walk(data, start, [budget.items, budget.work])

    return check
