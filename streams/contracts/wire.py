"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, then the Avro body.

Stock Confluent serializers in any language read and write exactly this framing.
"""

from __future__ import annotations

import struct

from streams.errors import RecordRejected

MAGIC = 0
_HEADER = struct.Struct(">bI")
HEADER_SIZE = _HEADER.size  # 5


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header for ``schema_id``."""
    return _HEADER.pack(MAGIC, schema_id) + body


def unframe(data: bytes | None) -> tuple[int, memoryview]:
    """Split a framed message into (schema id, Avro body); reject anything not so framed."""
    if data is None:
        raise RecordRejected("empty_payload", "record has no value (tombstone or null)")
    if len(data) < HEADER_SIZE:
        raise RecordRejected(
            "truncated_header",
            f"payload of {len(data)} bytes is shorter than the 5-byte Confluent header",
        )
    if data[0] != MAGIC:
        raise RecordRejected("bad_magic", f"first byte is {data[0]}, not the Confluent magic byte 0")
    schema_id = int.from_bytes(data[1:5], "big")
    return schema_id, memoryview(data)[HEADER_SIZE:]
