"""Avro contracts: load ``.avsc`` files, check data classes, and walk fields in one place.

Every other module asks this one about a schema's fields (name, type, nullability, class)
instead of walking Avro JSON itself.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import SchemaError

#: The data classes a field may carry in its ``class`` attribute (see shared/domain.md).
DATA_CLASSES = frozenset(
    {
        "technical",
        "direct_identifier",
        "contact",
        "quasi_identifier",
        "health",
        "professional_identifier",
        "derived",
        "pseudonym",
    }
)

INPUT_SUBJECT_NAME = "fr.screening.ScreeningEvent"

Schema = dict[str, Any]


def schema_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the folder holding the ``.avsc`` contracts (``SCREENING_SCHEMA_DIR`` or ``schemas/``)."""
    env = os.environ if environ is None else environ
    configured = env.get("SCREENING_SCHEMA_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "schemas"


def load_schema(path: Path) -> Schema:
    """Read one ``.avsc`` file; raise :class:`SchemaError` naming the file when it is not JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read Avro schema: {exc}") from exc
    if not isinstance(data, dict) or data.get("type") != "record":
        raise SchemaError(f"{path}: top-level Avro schema must be a record")
    return data


def input_schema(version: int = 1, directory: Path | None = None) -> Schema:
    """Load the screening event contract of the given version from ``schemas/``."""
    return load_schema((directory or schema_dir()) / f"screening_event.v{version}.avsc")


@dataclass(frozen=True)
class FieldInfo:
    """What the policy engine needs to know about one top-level field of a record schema."""

    name: str
    base: str  # string | int | long | boolean | enum | array | record | ...
    logical: str | None
    nullable: bool
    data_class: str | None
    symbols: tuple[str, ...] = ()
    avro_type: Any = None  # the field's Avro type JSON, as written

    @property
    def kind(self) -> str:
        """A short type label such as ``date``, ``timestamp-millis``, ``enum`` or ``string``."""
        return self.logical or self.base


def _unwrap(avro_type: Any) -> tuple[Any, bool]:
    """Return (non-null branch, nullable) for a type; unions other than [null, T] stay whole."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        nullable = len(branches) != len(avro_type)
        if len(branches) == 1:
            return branches[0], nullable
        return avro_type, nullable
    return avro_type, False


def iter_fields(schema: Schema) -> Iterator[FieldInfo]:
    """Walk the top-level fields of a record schema (the one walker of this package)."""
    for field in schema.get("fields", []):
        inner, nullable = _unwrap(field["type"])
        if isinstance(inner, dict):
            base = str(inner.get("type"))
            logical = inner.get("logicalType")
            symbols = tuple(inner.get("symbols", ())) if base == "enum" else ()
        elif isinstance(inner, list):
            base, logical, symbols = "union", None, ()
        else:
            base, logical, symbols = str(inner), None, ()
        yield FieldInfo(
            name=field["name"],
            base=base,
            logical=logical,
            nullable=nullable,
            data_class=field.get("class"),
            symbols=symbols,
            avro_type=field["type"],
        )


def fields_by_name(schema: Schema) -> dict[str, FieldInfo]:
    """Index :func:`iter_fields` by field name."""
    return {f.name: f for f in iter_fields(schema)}


def class_problems(schema: Schema) -> list[str]:
    """List fields that carry no data class, or an unknown one (empty list when the schema is fine)."""
    problems = []
    for info in iter_fields(schema):
        if info.data_class is None:
            problems.append(f"field {info.name!r} has no 'class' attribute")
        elif info.data_class not in DATA_CLASSES:
            problems.append(
                f"field {info.name!r} has unknown class {info.data_class!r} (expected one of {sorted(DATA_CLASSES)})"
            )
    return problems


def strip_logical_types(avro_type: Any) -> Any:
    """Return a copy of an Avro type with every ``logicalType`` removed.

    The hot path decodes and encodes dates as int days and timestamps as int epoch millis:
    nobody there needs a ``datetime``, and the conversions cost ~18 µs per event.
    """
    if isinstance(avro_type, list):
        return [strip_logical_types(b) for b in avro_type]
    if isinstance(avro_type, dict):
        out = {k: strip_logical_types(v) for k, v in avro_type.items() if k != "logicalType"}
        if "fields" in avro_type:
            out["fields"] = [{**f, "type": strip_logical_types(f["type"])} for f in avro_type["fields"]]
        return out
    return copy.deepcopy(avro_type)


def canonical_json(schema: Schema) -> str:
    """Serialise a schema compactly and deterministically (what is registered and compared)."""
    return json.dumps(schema, separators=(",", ":"), sort_keys=False, ensure_ascii=False)


_MS_PER_DAY = 86_400_000


def to_wire(record: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """Convert ISO strings (or date/datetime objects) in date/timestamp fields to wire-native ints."""
    out = dict(record)
    for info in iter_fields(schema):
        value = out.get(info.name)
        if info.logical == "uuid" and value is not None and not isinstance(value, str):
            out[info.name] = str(value)
            continue
        if isinstance(value, dt.datetime) and info.logical == "timestamp-millis":
            out[info.name] = int(value.timestamp() * 1000)
            continue
        if isinstance(value, dt.date) and info.logical == "date":
            out[info.name] = (value - dt.date(1970, 1, 1)).days
            continue
        if not isinstance(value, str):
            continue
        if info.logical == "date":
            out[info.name] = (dt.date.fromisoformat(value) - dt.date(1970, 1, 1)).days
        elif info.logical == "timestamp-millis":
            instant = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if instant.tzinfo is None:
                instant = instant.replace(tzinfo=dt.UTC)
            out[info.name] = int(instant.timestamp() * 1000)
    return out


def to_readable(record: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """Convert wire-native date/timestamp ints to ISO strings (for display and JSON files)."""
    out = dict(record)
    for info in iter_fields(schema):
        value = out.get(info.name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if info.logical == "date":
            out[info.name] = (dt.date(1970, 1, 1) + dt.timedelta(days=value)).isoformat()
        elif info.logical == "timestamp-millis":
            instant = dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
            out[info.name] = instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return out
