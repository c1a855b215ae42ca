"""Writer schemas a worker agrees to decode: checked once per schema id, before avro or fastavro sees them.

A writer schema the v1 reader can read may still be hostile. fastavro's compiled reader
recurses once per nesting level without any limit (a recursive ``Node{next: [null, Node]}``
nested 5 000 deep in 5 kB crashes the process with a segfault), and loops once per array item
however few bytes the items take (a block count of 3·10⁷ of ``null`` items costs nothing in
bytes and 5 s of CPU). So before a schema is accepted, :func:`shape_of` refuses, naming the
construct:

- recursive named types (a record reaching itself through fields, unions, arrays or maps);
- arrays whose items, and maps whose values, can take zero bytes (``null``, a fixed of size 0,
  a record of only such fields): a block count costs bytes only if each item does;
- schemas beyond a :class:`Budget`: raw text length, JSON nesting, type nesting depth, named
  types, fields, and type nodes once named references are expanded (a type used ten times per
  level over eight levels expands to 10⁸ nodes read for a body of zero bytes).

What it accepts it returns as a tree of :class:`TypeNode` (named types resolved to one shared
node), from which :mod:`streams.contracts.walker` compiles the pre-decode byte check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_PRIMITIVE_WIDTH = {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8, "bytes": 1, "string": 1}


@dataclass(frozen=True)
class Budget:
    """Limits on a writer schema (checked once) and on one record's body (checked per record)."""

    schema_chars: int = 64 * 1024  # raw schema text, in characters
    json_depth: int = 160  # nesting of JSON arrays and objects in the schema text
    depth: int = 32  # nesting of records, arrays, maps and unions
    named_types: int = 100
    fields: int = 1_000  # field definitions, all records together
    nodes: int = 5_000  # type nodes once every named reference is expanded
    items: int = 10_000  # array items plus map entries in one record
    work: int = 100_000  # type nodes visited for the array items and map entries of one record


DEFAULT_BUDGET = Budget()


class SchemaRefused(Exception):
    """A writer schema the worker will not decode; ``reason`` names the construct (no data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class TypeNode:
    """One resolved Avro type; a named type referenced twice is one shared node.

    ``width`` is the fewest bytes its encoding can take; ``cost`` the most type nodes decoding
    one value visits, array items and map entries aside (those the walker charges per record);
    ``expanded`` its node count once every named reference is expanded; ``depth`` its nesting.
    """

    kind: str  # a primitive name, or record | enum | fixed | array | map | union
    children: tuple[TypeNode, ...] = ()  # record fields, union branches, array items, map values
    name: str = ""  # full name of a named type
    size: int = 0  # fixed: bytes; enum: number of symbols
    width: int = 0
    cost: int = 1
    expanded: int = 1
    depth: int = 1
    field_names: tuple[str, ...] = field(default=())


def _json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (iterative: never recurses), stopping past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def parse_writer_text(text: str, budget: Budget = DEFAULT_BUDGET) -> dict[str, Any]:
    """Parse a registry entry as a JSON object within the text budgets, or raise :class:`SchemaRefused`."""
    if len(text) > budget.schema_chars:
        raise SchemaRefused(f"schema text of {len(text)} characters exceeds the budget of {budget.schema_chars}")
    try:
        schema = json.loads(text)
    except RecursionError:
        raise SchemaRefused(f"schema JSON nests deeper than {budget.json_depth} levels") from None
    except json.JSONDecodeError:
        raise SchemaRefused("schema is not JSON") from None
    if not isinstance(schema, dict):
        raise SchemaRefused("schema is not a JSON object")
    if _json_depth(schema, budget.json_depth) > budget.json_depth:
        raise SchemaRefused(f"schema JSON nests deeper than {budget.json_depth} levels")
    return schema


class _Shaper:
    """Resolves names and computes each node's facts, refusing as soon as a rule or budget breaks."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.named: dict[str, TypeNode] = {}
        self.in_progress: set[str] = set()
        self.fields = 0

    def resolve(self, name: str, namespace: str, path: str) -> TypeNode:
        candidates = [name] if "." in name else [f"{namespace}.{name}" if namespace else name, name]
        for full in candidates:
            if full in self.in_progress:
                raise SchemaRefused(f"recursive type {_short(full)} at field {path}")
            if full in self.named:
                return self.named[full]  # shared: shaping stays linear in the text, whatever it expands to
        raise SchemaRefused(f"unknown type {name!r} at field {path}")

    def shape(self, raw: Any, namespace: str, path: str, level: int) -> TypeNode:
        if level > self.budget.depth:
            raise SchemaRefused(f"types nest deeper than {self.budget.depth} levels at field {path}")
        if isinstance(raw, str):
            if raw in PRIMITIVES:
                return TypeNode(raw, width=_PRIMITIVE_WIDTH[raw])
            return self.resolve(raw, namespace, path)
        if isinstance(raw, list):
            return self.union(raw, namespace, path, level)
        if not isinstance(raw, dict):
            raise SchemaRefused(f"not an Avro type at field {path}")
        kind = raw.get("type")
        if isinstance(kind, (dict, list)):
            return self.shape(kind, namespace, path, level + 1)
        if not isinstance(kind, str):
            raise SchemaRefused(f"type without a 'type' name at field {path}")
        if kind in ("record", "error"):
            return self.record(raw, namespace, path, level)
        if kind in ("enum", "fixed"):
            return self.enum_or_fixed(raw, kind, namespace, path)
        if kind in ("array", "map"):
            return self.container(raw, kind, namespace, path, level)
        return self.shape(kind, namespace, path, level)  # a primitive or a name, e.g. with a logicalType

    def union(self, raw: list[Any], namespace: str, path: str, level: int) -> TypeNode:
        if not raw:
            raise SchemaRefused(f"empty union at field {path}")
        branches = tuple(self.shape(b, namespace, path, level + 1) for b in raw)
        return TypeNode(
            "union",
            branches,
            width=1 + min(b.width for b in branches),
            cost=1 + max(b.cost for b in branches),
            expanded=1 + sum(b.expanded for b in branches),
            depth=1 + max(b.depth for b in branches),
        )

    def define(self, raw: dict[str, Any], namespace: str, path: str) -> tuple[str, str]:
        """Register a named type's full name; return (full name, its namespace)."""
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaRefused(f"named type without a name at field {path}")
        if "." in name:
            own = name.rsplit(".", 1)[0]
            full = name
        else:
            declared = raw.get("namespace")
            own = declared if isinstance(declared, str) else namespace
            full = f"{own}.{name}" if own else name
        if full in self.named or full in self.in_progress:
            raise SchemaRefused(f"type {name} defined twice (at field {path})")
        if len(self.named) + len(self.in_progress) >= self.budget.named_types:
            raise SchemaRefused(f"schema defines more than {self.budget.named_types} named types")
        return full, own

    def record(self, raw: dict[str, Any], namespace: str, path: str, level: int) -> TypeNode:
        full, own = self.define(raw, namespace, path)
        fields = raw.get("fields")
        if not isinstance(fields, list):
            raise SchemaRefused(f"record {_short(full)} has no list of fields")
        self.fields += len(fields)
        if self.fields > self.budget.fields:
            raise SchemaRefused(f"schema has more than {self.budget.fields} fields")
        self.in_progress.add(full)
        children, names = [], []
        for item in fields:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise SchemaRefused(f"record {_short(full)} has a field without a name")
            names.append(item["name"])
            where = f"{path}.{item['name']}" if path else item["name"]
            children.append(self.shape(item.get("type"), own, where, level + 1))
        self.in_progress.discard(full)
        node = TypeNode(
            "record",
            tuple(children),
            name=full,
            width=sum(c.width for c in children),
            cost=1 + sum(c.cost for c in children),
            expanded=1 + sum(c.expanded for c in children),
            depth=1 + max((c.depth for c in children), default=0),
            field_names=tuple(names),
        )
        self.named[full] = node
        return node

    def enum_or_fixed(self, raw: dict[str, Any], kind: str, namespace: str, path: str) -> TypeNode:
        full, _ = self.define(raw, namespace, path)
        if kind == "enum":
            symbols = raw.get("symbols")
            if not isinstance(symbols, list) or not symbols:
                raise SchemaRefused(f"enum {_short(full)} has no symbols")
            node = TypeNode("enum", name=full, size=len(symbols), width=1)
        else:
            size = raw.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise SchemaRefused(f"fixed {_short(full)} has no valid size")
            node = TypeNode("fixed", name=full, size=size, width=size)
        self.named[full] = node
        return node

    def container(self, raw: dict[str, Any], kind: str, namespace: str, path: str, level: int) -> TypeNode:
        inner = self.shape(raw.get("items" if kind == "array" else "values"), namespace, path, level + 1)
        if inner.width == 0:
            what = "items" if kind == "array" else "values"
            raise SchemaRefused(f"{kind} of zero-width {what} ({_describe(inner)}) at field {path}")
        return TypeNode(kind, (inner,), width=1, expanded=1 + inner.expanded, depth=1 + inner.depth)


def _short(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def _describe(node: TypeNode) -> str:
    name = _short(node.name)
    if node.kind == "record":
        return f"empty record {name}" if not node.children else f"record {name} of zero-width fields"
    if node.kind == "fixed":
        return f"fixed {name} of size 0"
    return node.kind


def shape_of(schema: dict[str, Any], budget: Budget = DEFAULT_BUDGET) -> TypeNode:
    """Resolve a parsed writer schema into a :class:`TypeNode` tree, or raise :class:`SchemaRefused`."""
    node = _Shaper(budget).shape(schema, "", "", 1)
    if node.expanded > budget.nodes:
        raise SchemaRefused(f"schema expands to more than {budget.nodes} type nodes once named types are expanded")
    return node
