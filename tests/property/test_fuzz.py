"""Fuzzing ``Pipeline.process`` with malformed ingress records (hypothesis).

Every malformed record is built by mutating a valid generated event (``generate_events``) and,
where the category needs it, re-encoding it with the real v1 (or v2) contract. Each category
knows the exact dead-letter code it must get. For every record, whatever its category:
``process`` never raises, and returns either views only or exactly one dead letter, which
carries the raw key and value unchanged and a reason code from the README's documented list.

The last part is a corpus of hostile but readable writer schemas and bodies (recursive types
nested 5 000 deep, block counts of 3·10⁷ of zero-width items, deep nesting, huge schemas,
lying block sizes and lengths): each is dead-lettered without fastavro ever reading its body,
in bounded memory, and a fresh interpreter running them all exits 0.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.assembly import PolicySet, build_pipeline
from streams.contracts.codec import EventDecoder, ViewEncoder
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.schemas import input_schema, strip_logical_types
from streams.contracts.wire import HEADER_SIZE, frame
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.nir import nir_key
from streams.domain.validation import EARLIEST_BIRTH_DAY, EARLIEST_TEST_MS, MAX_STRING, MS_PER_DAY
from streams.errors import RecordRejected
from streams.kafka.publish import event_encoder
from streams.pipeline import MAX_PAYLOAD, InputRecord, OutputRecord, Pipeline
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings
from tests.conftest import open_letter, public_key_ring

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00Z, the pipeline's clock (generated events are from 2020)
PER_CATEGORY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = b"fuzz-key"
V1 = strip_logical_types(input_schema(1))
V1_TYPES = {f["name"]: f["type"] for f in V1["fields"]}
#: A v1 body needs at least one byte per field: any shorter body cannot decode.
MIN_V1_BODY = len(V1["fields"])
STRING_FIELDS = [name for name, t in V1_TYPES.items() if t == "string" or t == ["null", "string"]]
ENUM_FIELDS = [name for name, t in V1_TYPES.items() if isinstance(t, dict) and t["type"] == "enum"]
UNION_FIELDS = [name for name, t in V1_TYPES.items() if isinstance(t, list)]


def _documented_codes() -> frozenset[str]:
    """The reason codes the README's "Bad input" section lists."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Bad input", 1)[1]
    listed = section.split("Reason codes:", 1)[1].split("\n\n", 1)[0]
    return frozenset(re.findall(r"`([a-z_]+)`", listed))


DOCUMENTED_CODES = _documented_codes()


@dataclass(frozen=True)
class Fuzz:
    """A pipeline built like the worker's, plus the encoders and schema ids the mutations need."""

    pipeline: Pipeline
    v1: ViewEncoder
    v2: ViewEncoder
    #: id -> (writer schema, how to turn a v1 event into a record of it); none is v1-compatible.
    incompatible: Mapping[int, tuple[Any, Callable[[dict[str, Any]], dict[str, Any]]]]
    registered: frozenset[int]
    registry: InMemorySchemaRegistry
    #: extra field name -> id of the accepted writer schema "v1 + that field" (see ACCEPTED_EXTRAS)
    extras: Mapping[str, int]
    #: hostile case -> its two ids, registered up front so no "unknown id" probe can have
    #: negatively cached them before their test runs
    hostile: Mapping[str, tuple[int, int]] = dataclass_field(default_factory=dict)


def _retyped(name: str, avro_type: Any) -> dict[str, Any]:
    """The v1 contract with field ``name`` given another type (not readable as v1)."""
    schema = input_schema(1)
    fields = [{**f, "type": avro_type} if f["name"] == name else f for f in schema["fields"]]
    return {**schema, "fields": fields}


def v1_plus(*fields: Mapping[str, Any]) -> str:
    """The text of the v1 contract with ``fields`` appended (each defaulted: still readable as v1)."""
    v1 = input_schema(1)
    return json.dumps({**v1, "fields": [*v1["fields"], *fields]})


def _wide_record(nulls: int) -> dict[str, Any]:
    """A record of one boolean and ``nulls`` null fields: one byte on the wire, ``nulls + 2`` nodes to read."""
    fields = [{"name": "b", "type": "boolean"}, *({"name": f"n{i}", "type": "null"} for i in range(nulls))]
    return {"type": "record", "name": "Wide", "fields": fields}


#: Writer schemas a v1 reader can read and the worker accepts; their extra fields carry hostile bodies.
ACCEPTED_EXTRAS: dict[str, dict[str, Any]] = {
    "x_ints": {"name": "x_ints", "type": {"type": "array", "items": "int"}, "default": []},
    "x_nested": {
        "name": "x_nested",
        "type": {"type": "array", "items": {"type": "array", "items": "int"}},
        "default": [],
    },
    "x_map": {"name": "x_map", "type": {"type": "map", "values": "string"}, "default": {}},
    "x_wide": {"name": "x_wide", "type": {"type": "array", "items": _wide_record(198)}, "default": []},
}


def build_fuzz(policy_set: PolicySet, keys: StaticKeyRing) -> Fuzz:
    """Assemble the pipeline with an in-memory registry, deterministic keys and a fixed clock."""
    registry = InMemorySchemaRegistry()
    settings_ = Settings()
    pipeline = build_pipeline(
        settings_, registry, keys, clock_ms=lambda: NOW_MS, policy_set=policy_set, public_keys=public_key_ring()
    )
    v1 = event_encoder(registry, settings_.ingress_topic, 1)
    v2 = event_encoder(registry, settings_.ingress_topic, 2)
    other = {"type": "record", "name": "Other", "fields": [{"name": "n", "type": "long", "class": "technical"}]}
    variants: list[tuple[Any, Callable[[dict[str, Any]], dict[str, Any]]]] = [
        (_retyped("nir", "long"), lambda e: {**e, "nir": int(e["nir"][7:13])}),
        (_retyped("result", "string"), lambda e: {**e, "result": str(e["result"]).lower()}),
        (_retyped("birth_date", "string"), lambda e: {**e, "birth_date": str(e["birth_date"])}),
        (other, lambda e: {"n": e["emitted_at"]}),
    ]
    incompatible = {registry.register("other-value", json.dumps(s)): (s, make) for s, make in variants}
    subject = f"{settings_.ingress_topic}-value"
    extras = {name: registry.register(subject, v1_plus(f)) for name, f in ACCEPTED_EXTRAS.items()}
    hostile = {
        name: (registry.register(subject, case.schema), registry.register(subject, case.schema + " "))
        for name, case in HOSTILE.items()
    }
    registered = frozenset(range(1, max([*extras.values(), *(i for ids in hostile.values() for i in ids)]) + 1))
    return Fuzz(pipeline, v1, v2, incompatible, registered, registry, extras, hostile)


@pytest.fixture(scope="module")
def fuzz(policy_set: PolicySet, keys: StaticKeyRing) -> Fuzz:
    """One pipeline for the whole module (its state must survive any input)."""
    return build_fuzz(policy_set, keys)


# -- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One ingress value and the outcome it must have: views (None) or one of ``codes``."""

    value: bytes | None
    codes: frozenset[str] | None


def dead(*codes: str) -> Callable[[bytes | None], Case]:
    """Make the case of a value that must be dead-lettered with one of ``codes``."""
    return lambda value: Case(value, frozenset(codes))


def _event(seed: int, version: int = 1) -> dict[str, Any]:
    """A valid generated event (half of them positive)."""
    generated = generate_events(1, GeneratorSettings(seed=seed, positive_share=0.5, schema_version=version))
    return dict(next(iter(generated)))


def _encode(schema: Any, record: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(strip_logical_types(schema)), dict(record))
    return buffer.getvalue()


@cache
def _prefix_schema(count: int) -> Any:
    return fastavro.parse_schema({**V1, "fields": V1["fields"][:count]})


def _field_start(event: Mapping[str, Any], name: str) -> int:
    """Offset of field ``name`` in the framed v1 encoding of ``event`` (the header included)."""
    index = [f["name"] for f in V1["fields"]].index(name)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _prefix_schema(index), dict(event))
    return HEADER_SIZE + len(buffer.getvalue())


def _zigzag(value: int) -> bytes:
    """Avro varint of a small int (|value| < 64)."""
    return bytes([value * 2 if value >= 0 else -value * 2 - 1])


seeds = st.integers(0, 2**31)


@st.composite
def valid(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A valid v1 or v2 event: views only (none for test/debug modes)."""
    version = draw(st.sampled_from([1, 2]))
    event = _event(draw(seeds), version)
    return Case((fuzz.v1 if version == 1 else fuzz.v2).encode(event), None)


@st.composite
def truncated(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A valid record cut short; the prefix length is drawn per class (empty, header, body)."""
    data = fuzz.v1.encode(_event(draw(seeds)))
    cut = draw(
        st.sampled_from(
            [
                st.just(0),
                st.integers(1, HEADER_SIZE - 1),
                st.just(HEADER_SIZE),
                st.integers(HEADER_SIZE + 1, len(data) - 2),
                st.just(len(data) - 1),
            ]
        ).flatmap(lambda s: s)
    )
    return dead("truncated_header" if cut < HEADER_SIZE else "undecodable")(data[:cut])


@st.composite
def oversized_payload(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A valid record followed by padding past the payload limit."""
    data = fuzz.v1.encode(_event(draw(seeds)))
    size = draw(st.integers(MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD))
    padding = random.Random(draw(seeds)).randbytes(size - len(data))
    return dead("oversized_payload")(data + padding)


@st.composite
def wrong_magic(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A valid framed record whose magic byte is not 0."""
    data = fuzz.v1.encode(_event(draw(seeds)))
    return dead("bad_magic")(bytes([draw(st.integers(1, 255))]) + data[1:])


@st.composite
def not_framed(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """Random bytes (at least a header long) not starting with the magic byte."""
    data = draw(st.binary(min_size=HEADER_SIZE, max_size=300).filter(lambda b: b[0] != 0))
    return dead("not_framed")(data)


@st.composite
def unknown_schema_id(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A valid body under a schema id the registry does not hold."""
    data = fuzz.v1.encode(_event(draw(seeds)))
    schema_id = draw(st.integers(0, 2**32 - 1).filter(lambda i: i not in fuzz.registered))
    return dead("unknown_schema_id")(frame(schema_id, data[HEADER_SIZE:]))


@st.composite
def random_body(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """Valid framing with the v1 id and random body bytes.

    A body shorter than one byte per field cannot decode (undecodable); a longer one fails
    while decoding or leaves bytes behind, depending on where the random bytes stop parsing.
    """
    body = draw(st.binary(max_size=400))
    codes = ("undecodable",) if len(body) < MIN_V1_BODY else ("undecodable", "trailing_bytes")
    return dead(*codes)(frame(fuzz.v1.schema_id, body))


@st.composite
def incompatible_writer(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """The event encoded with a registered schema whose field types differ from v1's."""
    schema_id = draw(st.sampled_from(sorted(fuzz.incompatible)))
    schema, make = fuzz.incompatible[schema_id]
    return dead("incompatible_schema")(frame(schema_id, _encode(schema, make(_event(draw(seeds))))))


@st.composite
def wrong_schema_id(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A body written with one schema, framed with the id of another.

    v2 body under the v1 id: v1 reads its fields and the v2 fields are left (trailing_bytes);
    v1 body under the v2 id: the v2 fields are missing (undecodable); a small record of another
    schema under the v1 id is shorter than any v1 record (undecodable).
    """
    kind = draw(st.sampled_from(["v2 as v1", "v1 as v2", "other as v1"]))
    event = _event(draw(seeds), 2 if kind == "v2 as v1" else 1)
    if kind == "v2 as v1":
        return dead("trailing_bytes")(frame(fuzz.v1.schema_id, fuzz.v2.encode(event)[HEADER_SIZE:]))
    if kind == "v1 as v2":
        return dead("undecodable")(frame(fuzz.v2.schema_id, fuzz.v1.encode(event)[HEADER_SIZE:]))
    other_id = next(i for i, (s, _) in fuzz.incompatible.items() if s["name"] == "Other")
    schema, make = fuzz.incompatible[other_id]
    return dead("undecodable")(frame(fuzz.v1.schema_id, _encode(schema, make(event))))


@st.composite
def trailing(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A valid record followed by extra bytes."""
    data = fuzz.v1.encode(_event(draw(seeds)))
    return dead("trailing_bytes")(data + draw(st.binary(min_size=1, max_size=50)))


@st.composite
def misread_bytes(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """Bytes fastavro reads as valid values: a negative enum or union index, a boolean byte not 0/1.

    An enum index -k reads symbol n-k; a union index i-n reads the same branch i, so the rest
    of the body parses exactly as before and only the encoding rule is broken.
    """
    event = _event(draw(seeds))
    data = fuzz.v1.encode(event)
    kind = draw(st.sampled_from(["enum", "union", "boolean"]))
    if kind == "enum":
        name = draw(st.sampled_from(ENUM_FIELDS))
        count = len(V1_TYPES[name]["symbols"])
        start, corrupt = _field_start(event, name), _zigzag(-draw(st.integers(1, count)))
    elif kind == "union":
        name = draw(st.sampled_from(UNION_FIELDS))
        branch = 0 if event[name] is None else 1
        start, corrupt = _field_start(event, name), _zigzag(branch - len(V1_TYPES[name]))
    else:
        name = draw(st.sampled_from(["health_care_worker", "symptomatic"]))
        if event[name] is None:
            event[name] = True
            data = fuzz.v1.encode(event)
        start = _field_start(event, name) + (name == "symptomatic")  # after the union index
        corrupt = bytes([draw(st.integers(2, 255))])
    return dead("undecodable")(data[:start] + corrupt + data[start + 1 :])


@st.composite
def out_of_range_date(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """One date or timestamp moved out of its plausible range (or out of order)."""
    event = _event(draw(seeds))
    day = event["sampled_at"] // MS_PER_DAY
    kind = draw(
        st.sampled_from(
            ["sampled early", "emitted future", "validated first", "born early", "born late", "onset", "extreme"]
        )
    )
    if kind == "sampled early":
        event["sampled_at"] = draw(st.integers(-(2**63), EARLIEST_TEST_MS - 1))
    elif kind == "emitted future":
        event["emitted_at"] = draw(st.integers(NOW_MS + MS_PER_DAY + 1, 2**63 - 1))
    elif kind == "validated first":
        event["validated_at"] = event["sampled_at"] - draw(st.integers(1, 10**9))
    elif kind == "born early":
        event["birth_date"] = draw(st.integers(-(2**31), EARLIEST_BIRTH_DAY - 1))
    elif kind == "born late":
        event["birth_date"] = draw(st.integers(day + 1, 2**31 - 1))
    elif kind == "onset":
        before_birth = st.integers(-(2**31), event["birth_date"] - 1)
        after_validation = st.integers(event["validated_at"] // MS_PER_DAY + 2, 2**31 - 1)
        event["symptom_onset_date"] = draw(st.one_of(before_birth, after_validation))
    else:
        name = draw(st.sampled_from(["emitted_at", "sampled_at", "validated_at"]))
        event[name] = draw(st.sampled_from([-(2**63), 2**63 - 1, 0, -1]))
    return dead("out_of_range_date")(fuzz.v1.encode(event))


@st.composite
def invalid_nir(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A NIR with a wrong key, a wrong length, a bad sex digit or a non-ASCII character."""
    event = _event(draw(seeds))
    nir = event["nir"]
    kind = draw(st.sampled_from(["key", "length", "sex", "non-ascii"]))
    if kind == "key":
        wrong = draw(st.integers(0, 99).filter(lambda k: k != nir_key(nir[:13])))
        event["nir"] = f"{nir[:13]}{wrong:02d}"
    elif kind == "length":
        event["nir"] = draw(st.text("0123456789", max_size=40).filter(lambda s: len(s) != 15))
    elif kind == "sex":
        event["nir"] = draw(st.sampled_from("03456789")) + nir[1:]
    else:
        position = draw(st.integers(0, 14))
        event["nir"] = nir[:position] + draw(st.sampled_from("é٣１€")) + nir[position + 1 :]
    return dead("invalid_nir")(fuzz.v1.encode(event))


UNMAPPED_DEPARTMENTS = ["00", "20", "96", "98", "99", "970", "975", "977", "978", "979"]


@st.composite
def unknown_commune(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A well-formed INSEE code whose department maps to no region (e.g. 97501): never guessed."""
    event = _event(draw(seeds))
    department = draw(st.sampled_from(UNMAPPED_DEPARTMENTS))
    event["commune_code"] = department + draw(
        st.text("0123456789", min_size=5 - len(department), max_size=5 - len(department))
    )
    return dead("unknown_commune")(fuzz.v1.encode(event))


@st.composite
def invalid_commune(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A commune code that is not 5 characters of an INSEE code."""
    event = _event(draw(seeds))
    code = draw(
        st.one_of(
            st.text("0123456789", max_size=12).filter(lambda s: len(s) != 5),
            st.builds(
                lambda d, c: d + c,
                st.sampled_from(["2C", "2a", "A1", "0A"]),
                st.text("0123456789", min_size=3, max_size=3),
            ),
            st.builds(lambda d, c: d + c, st.text("0123456789", min_size=4, max_size=4), st.sampled_from("X é٣")),
        )
    )
    event["commune_code"] = code
    return dead("invalid_commune")(fuzz.v1.encode(event))


@st.composite
def huge_strings(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A string field (or the address) far longer than any real value.

    Past 512 characters it is oversized_field; once the whole payload exceeds 64 KiB it is
    oversized_payload (checked before decoding).
    """
    event = _event(draw(seeds))
    length = draw(st.integers(MAX_STRING + 1, 40_000))
    text = draw(st.sampled_from("xé€")) * length
    target = draw(st.sampled_from([*STRING_FIELDS, "address_lines", "address_lines (many)"]))
    if target == "address_lines":
        event["address_lines"] = [text]
    elif target == "address_lines (many)":
        event["address_lines"] = ["1 rue Pasteur"] * draw(st.integers(9, 300))
    else:
        event[target] = text
    data = fuzz.v1.encode(event)
    return dead("oversized_payload" if len(data) > MAX_PAYLOAD else "oversized_field")(data)


@st.composite
def invalid_field(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """A laboratory FINESS that is not 9 characters, or a prescriber RPPS that is not 11 digits."""
    event = _event(draw(seeds))
    if draw(st.booleans()):
        event["lab_finess"] = draw(st.text("0123456789AB", max_size=20).filter(lambda s: len(s) != 9))
    else:
        digits = st.text("0123456789", max_size=20).filter(lambda s: len(s) != 11)
        event["prescriber_rpps"] = draw(st.one_of(digits, st.just("1234567890A"), st.just("٣" * 11)))
    return dead("invalid_field")(fuzz.v1.encode(event))


def zigzag(value: int) -> bytes:
    """The Avro varint of any ``value`` (64-bit zig-zag for the negatives)."""
    n = (value << 1) ^ (value >> 63) if value < 0 else value << 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@st.composite
def hostile_counts(draw: st.DrawFn, fuzz: Fuzz) -> Case:
    """An accepted writer (v1 + an array or map) whose block count, block size or length lies.

    Counts beyond what the remaining bytes can hold (up to 2⁶²), negative counts with a byte
    size that is negative, past the end or wrong, string lengths past the end: all refused by
    the walker before fastavro reads anything (undecodable).
    """
    body = fuzz.v1.encode(_event(draw(seeds)))[HEADER_SIZE:]
    field = draw(st.sampled_from(["x_ints", "x_nested", "x_map"]))
    padding = draw(st.binary(min_size=0, max_size=60).map(lambda b: b.replace(b"\x00", b"\x02")))
    room = len(padding) + 1
    kind = draw(st.sampled_from(["count", "negative count", "block size", "length"]))
    if kind == "count":
        tail = zigzag(draw(st.integers(room + 1, 2**62))) + padding + b"\x00"
    elif kind == "negative count":
        size = draw(st.integers(0, room))
        tail = zigzag(-draw(st.integers(room + 1, 2**62))) + zigzag(size) + padding + b"\x00"
    elif kind == "block size":
        size = draw(st.one_of(st.integers(-(2**62), -1), st.integers(room + 1, 2**62)))
        tail = zigzag(-1) + zigzag(size) + padding + b"\x00"
    else:
        field = "x_map"
        tail = zigzag(1) + zigzag(draw(st.integers(room + 1, 2**62))) + padding + b"\x00"
    return dead("undecodable")(frame(fuzz.extras[field], body + tail))


CATEGORIES: dict[str, Callable[[Fuzz], st.SearchStrategy[Case]]] = {
    "valid": valid,
    "empty": lambda fuzz: st.just(Case(None, frozenset({"empty_payload"}))),
    "truncated": truncated,
    "oversized_payload": oversized_payload,
    "wrong_magic": wrong_magic,
    "not_framed": not_framed,
    "unknown_schema_id": unknown_schema_id,
    "random_body": random_body,
    "incompatible_writer": incompatible_writer,
    "wrong_schema_id": wrong_schema_id,
    "trailing": trailing,
    "misread_bytes": misread_bytes,
    "out_of_range_date": out_of_range_date,
    "invalid_nir": invalid_nir,
    "unknown_commune": unknown_commune,
    "invalid_commune": invalid_commune,
    "huge_strings": huge_strings,
    "invalid_field": invalid_field,
    "hostile_counts": hostile_counts,
}


def check_outcome(pipeline: Pipeline, case: Case, offset: int = 7) -> list[OutputRecord]:
    """Process one record and assert the invariants and the category's expected outcome."""
    record = InputRecord("screening.results.v1", 2, offset, KEY, case.value)
    outputs = pipeline.process(record)  # must never raise
    dead_letters = [o for o in outputs if o.dead_letter]
    assert not dead_letters or len(outputs) == 1, "a dead letter must come alone"
    if case.codes is None:
        codes = [dict(o.headers)["dlq.reason.code"] for o in dead_letters]
        assert not dead_letters, f"a valid event was dead-lettered: {codes}"
        assert all(o.key and o.topic.endswith(".results.v1") for o in outputs)
        return outputs
    assert len(dead_letters) == 1, "an invalid record must give exactly one dead letter"
    (letter,) = dead_letters
    raw = open_letter(pipeline, letter)  # sealed to the operators: raw input, unchanged, for replay
    assert raw.value == case.value and raw.key == KEY and letter.key is None
    code = dict(letter.headers)["dlq.reason.code"].decode()
    assert code in DOCUMENTED_CODES
    assert code in case.codes, f"got {code}, expected {sorted(case.codes)}"
    return outputs


def test_readme_documents_the_reason_codes() -> None:
    """The README's reason-code list is found and holds every code the categories below expect."""
    assert {"undecodable", "internal_error", "unknown_commune", "bad_magic"} <= DOCUMENTED_CODES
    assert len(DOCUMENTED_CODES) == 16


@pytest.mark.parametrize("category", list(CATEGORIES))
@PER_CATEGORY
@given(data=st.data())
def test_malformed_records_never_raise_and_get_their_exact_code(fuzz: Fuzz, category: str, data: st.DataObject) -> None:
    """process never raises; each category yields views, or one dead letter with the raw value and its exact code."""
    case = data.draw(CATEGORIES[category](fuzz), label=category)
    check_outcome(fuzz.pipeline, case)


def _memory_workload(fuzz: Fuzz, good: int, seed: int) -> list[InputRecord]:
    """``good`` distinct valid records, each followed (one in four) by a bad one of a rotating kind."""
    rng = random.Random(seed)
    events = list(generate_events(good, GeneratorSettings(seed=seed, positive_share=0.3)))
    records = []
    for i, event in enumerate(events):
        data = fuzz.v1.encode(event)
        records.append(data)
        if i % 4:
            continue
        bad = [
            b"\x8f" + rng.randbytes(60),
            data[: rng.randint(0, len(data) - 1)],
            b"\x01" + data[1:],
            frame(0x7FFF0000 + i, data[HEADER_SIZE:]),
            fuzz.v1.encode({**event, "nir": event["nir"][:13] + "00"}),
            fuzz.v1.encode({**event, "commune_code": "97501"}),
            fuzz.v1.encode({**event, "city": "x" * 2_000}),
            frame(fuzz.v1.schema_id, rng.randbytes(200)),
        ]
        records.append(bad[(i // 4) % len(bad)])
    return [InputRecord("screening.results.v1", 0, n, KEY, value) for n, value in enumerate(records)]


def test_memory_stays_flat_over_20000_good_and_bad_records(
    policy_set: PolicySet, keys: StaticKeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    """Memory held after 20 000 records (1 in 5 bad) grows by < 1 MB once the caches are warm.

    The workload is 2 500 records (2 000 distinct valid events and 500 bad ones) processed 8
    times. The pipeline's only growing state is its caches: writer schemas per id (a handful;
    unknown ids are not cached) and the pseudonym LRU caches, bounded at 1<<16 entries per
    agency and field. The first 2 passes fill them with every value this workload has (≤ 2 000
    per cache, so nothing is evicted and refilled); memory is traced only over the remaining
    15 000 records, so anything still held at the end is retained per record. 1 MB is ~70 B per
    record: a leak of even one small object per record exceeds it.
    """
    caplog.set_level(logging.ERROR, logger="streams.pipeline")  # pytest would keep each warning
    fuzz = build_fuzz(policy_set, keys)
    workload = _memory_workload(fuzz, 2_000, seed=17)
    assert len(workload) == 2_500
    for _ in range(2):
        for record in workload:
            fuzz.pipeline.process(record)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(6):
            for record in workload:
                fuzz.pipeline.process(record)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = fuzz.pipeline.stats
    assert stats.consumed == 20_000
    assert sum(stats.dead_letters.values()) == 8 * 500
    assert "internal_error" not in stats.dead_letters
    assert held - baseline < 1_000_000, f"{(held - baseline) / 1e6:.2f} MB held after 15 000 warm records"


# -- hostile but readable writer schemas: a corpus of (schema, payload) built to crash or stall -----


@dataclass(frozen=True)
class Hostile:
    """A writer schema (registry text) and the body appended to a valid v1 body, with the outcome it must get."""

    schema: str
    tail: bytes
    code: str
    reason: str  # a fragment of the dead letter's dlq.reason


def _nested(depth: int, inner: Any) -> Any:
    for _ in range(depth):
        inner = {"type": "array", "items": inner}
    return inner


def _deep_unions(depth: int) -> Any:
    avro_type: Any = "int"
    for n in range(depth):
        avro_type = ["null", {"type": "record", "name": f"U{n}", "fields": [{"name": "u", "type": avro_type}]}]
    return avro_type


def _exponential(levels: int, per_level: int) -> Any:
    """Named types each using the previous one ``per_level`` times: per_level**levels nodes, zero bytes."""
    level: Any = {
        "type": "record",
        "name": "L0",
        "fields": [{"name": f"f{i}", "type": "null"} for i in range(per_level)],
    }
    for n in range(1, levels):
        uses = [{"name": "f0", "type": level}, *({"name": f"f{i}", "type": f"L{n - 1}"} for i in range(1, per_level))]
        level = {"type": "record", "name": f"L{n}", "fields": uses}
    return level


_NODE = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"], "default": None}]}

HOSTILE: dict[str, Hostile] = {
    # the two rows of issue 8's table
    "recursive Node 5 000 deep": Hostile(
        v1_plus({"name": "x_node", "type": ["null", _NODE], "default": None}),
        b"\x02" * 5_000 + b"\x00",
        "incompatible_schema",
        "recursive type Node at field x_node.next",
    ),
    "array<null> with a block count of 3·10⁷": Hostile(
        v1_plus({"name": "x_nulls", "type": {"type": "array", "items": "null"}, "default": []}),
        zigzag(30_000_000) + b"\x00",
        "incompatible_schema",
        "array of zero-width items (null) at field x_nulls",
    ),
    # refused when the writer schema is first seen
    "map<null> with 3·10⁷ entries": Hostile(
        v1_plus({"name": "x_set", "type": {"type": "map", "values": "null"}, "default": {}}),
        zigzag(30_000_000) + b"\x00" * 10,
        "incompatible_schema",
        "map of zero-width values (null) at field x_set",
    ),
    "array of empty records": Hostile(
        v1_plus({"name": "x_empty", "type": {"type": "array", "items": {"type": "record", "name": "E", "fields": []}}}),
        zigzag(30_000_000) + b"\x00",
        "incompatible_schema",
        "array of zero-width items (empty record E) at field x_empty",
    ),
    "array of fixed(0)": Hostile(
        v1_plus({"name": "x_f0", "type": {"type": "array", "items": {"type": "fixed", "name": "F0", "size": 0}}}),
        zigzag(30_000_000) + b"\x00",
        "incompatible_schema",
        "array of zero-width items (fixed F0 of size 0) at field x_f0",
    ),
    "mutual recursion through a map": Hostile(
        v1_plus(
            {
                "name": "x_tree",
                "type": [
                    "null",
                    {
                        "type": "record",
                        "name": "A",
                        "fields": [
                            {
                                "name": "kids",
                                "type": {
                                    "type": "map",
                                    "values": {
                                        "type": "record",
                                        "name": "B",
                                        "fields": [{"name": "up", "type": ["null", "A"], "default": None}],
                                    },
                                },
                            }
                        ],
                    },
                ],
                "default": None,
            }
        ),
        (b"\x02" + b"\x02\x02k\x02") * 2_000 + b"\x00",
        "incompatible_schema",
        "recursive type A at field x_tree.kids.up",
    ),
    "arrays nested 1 000 deep": Hostile(
        v1_plus({"name": "x_deep", "type": "DEEP"}).replace(
            '"DEEP"', '{"type": "array", "items": ' * 1_000 + '"int"' + "}" * 1_000
        ),
        b"\x02" * 1_000 + b"\x00" * 1_001,
        "incompatible_schema",
        "schema JSON nests deeper than 160 levels",
    ),
    "arrays nested 100 deep": Hostile(
        v1_plus({"name": "x_deep", "type": _nested(100, "int"), "default": []}),
        b"\x02" * 100 + b"\x00" * 101,
        "incompatible_schema",
        "types nest deeper than 32 levels at field x_deep",
    ),
    "unions of records nested 30 deep": Hostile(
        v1_plus({"name": "x_unions", "type": _deep_unions(30), "default": None}),
        b"\x02" * 30 + b"\x00",
        "incompatible_schema",
        "types nest deeper than 32 levels at field x_unions",
    ),
    "JSON nested 30 000 deep in a custom attribute": Hostile(
        json.dumps({**input_schema(1), "x": "DEEP"}).replace('"DEEP"', "[" * 30_000 + "]" * 30_000),
        b"",
        "incompatible_schema",
        "schema JSON nests deeper than 160 levels",
    ),
    "a 1 MB schema": Hostile(
        v1_plus({"name": "x_doc", "type": "null", "doc": "x" * 1_000_000, "default": None}),
        b"",
        "incompatible_schema",
        "characters exceeds the budget of 65536",
    ),
    "1 100 fields": Hostile(
        v1_plus(*({"name": f"x{i}", "type": "null", "default": None} for i in range(1_100))),
        b"",
        "incompatible_schema",
        "schema has more than 1000 fields",
    ),
    "a named type expanded 10⁸ times (zero bytes)": Hostile(
        v1_plus({"name": "x_bomb", "type": ["null", _exponential(8, 10)], "default": None}),
        b"\x02",
        "incompatible_schema",
        "schema expands to more than 5000 type nodes",
    ),
    # accepted writer schemas, refused bodies: the walker stops them before fastavro
    "array<int> with a block count of 3·10⁷ in 294 bytes": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_ints"]),
        zigzag(30_000_000) + b"\x00",
        "undecodable",
        "a block of 30000000 items that 1 bytes cannot hold",
    ),
    "negative block count -3·10⁷ with a byte size": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_ints"]),
        zigzag(-30_000_000) + zigzag(1) + b"\x02\x00",
        "undecodable",
        "a block of 30000000 items",
    ),
    "a block size that lies": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_ints"]),
        zigzag(-2) + zigzag(1) + b"\x02\x04\x00",
        "undecodable",
        "a block whose byte size does not match its items",
    ),
    "a string length of 2⁶²": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_map"]),
        zigzag(1) + zigzag(2**62) + b"key\x00",
        "undecodable",
        f"a length of {2**62} bytes",
    ),
    "30 000 empty nested arrays (items budget)": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_nested"]),
        zigzag(30_000) + b"\x00" * 30_000 + b"\x00",
        "undecodable",
        "more than 10000 array items and map entries in one record",
    ),
    "20 000 blocks of one item": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_ints"]),
        (zigzag(1) + b"\x02") * 20_000 + b"\x00",
        "undecodable",
        "more than 10000 array items and map entries in one record",
    ),
    "1 000 one-byte items of 200 nodes each (work budget)": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_wide"]),
        zigzag(1_000) + b"\x01" * 1_000 + b"\x00",
        "undecodable",
        "visit more than 100000 type nodes",
    ),
    "an 11-byte varint block count": Hostile(
        v1_plus(ACCEPTED_EXTRAS["x_ints"]),
        b"\x80" * 10 + b"\x01" + b"\x00",
        "undecodable",
        "a varint longer than 10 bytes",
    ),
}


@pytest.fixture(scope="module")
def hostile_ids(fuzz: Fuzz) -> dict[str, tuple[int, int]]:
    """Each hostile writer schema registered twice (as written, and with a trailing space) under the ingress subject.

    Two ids, so that the memory and the time of a first encounter (schema acceptance included)
    are each measured once, the memory under tracemalloc and the time without its overhead.
    """
    return dict(fuzz.hostile)


def _hostile_value(fuzz: Fuzz, schema_id: int, case: Hostile) -> bytes:
    body = fuzz.v1.encode(_event(8))[HEADER_SIZE:]
    return frame(schema_id, body + case.tail)


def test_the_two_rows_of_the_issue_are_what_they_claim() -> None:
    """Row 1 is 5 kB nested 5 000 deep; row 2 is a record of about 294 bytes whose block count is 3·10⁷."""
    assert 5_000 < len(HOSTILE["recursive Node 5 000 deep"].tail) < 5_100
    body = len(ViewEncoder(input_schema(1), 1).encode(_event(8))) + len(
        HOSTILE["array<null> with a block count of 3·10⁷"].tail
    )
    assert 250 < body < 350


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_schema_or_body_never_reaches_fastavro(
    fuzz: Fuzz, hostile_ids: dict[str, tuple[int, int]], name: str
) -> None:
    """Each corpus entry is rejected with its code and a reason naming the construct; fastavro reads no body of it."""
    case = HOSTILE[name]
    reads: list[int] = []

    def counting(buffer: io.BytesIO, parsed: Any, reader: Any) -> Any:
        reads.append(1)
        return fastavro.schemaless_reader(buffer, parsed, reader)

    decoder = EventDecoder(fuzz.registry, input_schema(1), read_body=counting)
    with pytest.raises(RecordRejected) as caught:
        decoder.decode(_hostile_value(fuzz, hostile_ids[name][0], case))
    assert (caught.value.code, reads) == (case.code, [])
    assert case.reason in str(caught.value)
    decoder.decode(fuzz.v1.encode(_event(8)))  # the same decoder still reads valid events, through fastavro
    assert reads == [1]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_record_is_dead_lettered_quickly_in_bounded_memory(
    fuzz: Fuzz, hostile_ids: dict[str, tuple[int, int]], name: str
) -> None:
    """Through the pipeline, first encounter: one dead letter with the code, < 4 MB traced, < 0.5 s of CPU (loose).

    Before these checks row 2 took 5 s of CPU and 230 MB; the bounds only catch a regression of
    that order (the proof that fastavro is never asked is the test above).
    """
    traced_id, timed_id = hostile_ids[name]
    case = HOSTILE[name]
    expected = Case(_hostile_value(fuzz, traced_id, case), frozenset({case.code}))
    assert len(expected.value or b"") <= MAX_PAYLOAD
    tracemalloc.start()
    try:
        check_outcome(fuzz.pipeline, expected)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB traced"
    started = time.process_time()
    check_outcome(fuzz.pipeline, Case(_hostile_value(fuzz, timed_id, case), expected.codes))
    spent = time.process_time() - started
    assert spent < 0.5, f"{spent:.2f} s of CPU"


def test_large_but_honest_records_within_the_budgets_are_delivered(fuzz: Fuzz) -> None:
    """No honest record is refused: 9 000 ints in 3 blocks (one sized), 500 map entries, 400 wide items."""
    body = fuzz.v1.encode(_event(8))[HEADER_SIZE:]
    ints = b"".join(zigzag(i) for i in range(3_000))
    blocks = zigzag(3_000) + ints + zigzag(-3_000) + zigzag(len(ints)) + ints + zigzag(3_000) + ints + b"\x00"
    entries = b"".join(zigzag(len(k)) + k + zigzag(2) + b"ok" for k in (f"k{i}".encode() for i in range(500)))
    honest = {
        "x_ints": blocks,
        "x_map": zigzag(500) + entries + b"\x00",
        "x_nested": zigzag(100) + (zigzag(3) + b"\x02\x04\x06" + b"\x00") * 100 + b"\x00",
        "x_wide": zigzag(400) + b"\x01" * 400 + b"\x00",  # 400 items x 200 nodes: 80 000 of the 100 000 budget
    }
    for field, tail in honest.items():
        value = frame(fuzz.extras[field], body + tail)
        assert len(value) <= MAX_PAYLOAD
        outputs = check_outcome(fuzz.pipeline, Case(value, None))
        assert outputs, field


_SUBPROCESS = """
import json, sys
from streams.assembly import agency_names, build_pipeline, key_holders, load_policy_set
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.wire import frame
from streams.crypto.keys import generate_key_pair
from streams.crypto.ring import PublicKeyRing
from streams.pipeline import InputRecord
from streams.policy.pseudonyms import StaticKeyRing, generate_keys
from streams.settings import Settings

cases = json.load(sys.stdin)
settings = Settings()
registry = InMemorySchemaRegistry()
policy_set = load_policy_set(settings)
keys = StaticKeyRing(generate_keys(agency_names(policy_set)))
ring = PublicKeyRing([generate_key_pair(a, 0, 4_102_444_800_000).public for a in key_holders(policy_set)])
pipeline = build_pipeline(settings, registry, keys, public_keys=ring)
codes = []
for offset, (schema, body) in enumerate(cases):
    schema_id = registry.register(settings.ingress_topic + "-value", schema)
    value = frame(schema_id, bytes.fromhex(body))
    (out,) = pipeline.process(InputRecord(settings.ingress_topic, 0, offset, b"k", value))
    codes.append(dict(out.headers)["dlq.reason.code"].decode())
print(json.dumps(codes))
"""


def test_the_worst_cases_leave_a_fresh_interpreter_alive(fuzz: Fuzz) -> None:
    """The whole corpus through a pipeline in a fresh process: exit code 0 (a segfault is -11), every code right."""
    body = fuzz.v1.encode(_event(8))[HEADER_SIZE:]
    cases = [(case.schema, (body + case.tail).hex()) for case in HOSTILE.values()]
    done = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS], input=json.dumps(cases), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [case.code for case in HOSTILE.values()]


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_STACK)[0] == resource.RLIM_INFINITY, reason="an unlimited stack may not overflow"
)
def test_without_the_checks_fastavro_crashes_the_interpreter_on_row_one() -> None:
    """The weakness the checks cover: plain fastavro on the recursive record (200 000 deep) kills the process."""
    script = (
        "import io, json, sys, fastavro\n"
        "schema = fastavro.parse_schema(json.loads(sys.stdin.read()))\n"
        "fastavro.schemaless_reader(io.BytesIO(b'\\x02' * 200_000 + b'\\x00'), schema, None)\n"
    )
    node = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", _NODE]}]}
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(node).encode(), capture_output=True, timeout=120
    )
    assert done.returncode < 0, (
        f"fastavro survived (exit {done.returncode}): the crash this suite guards against is gone"
    )
