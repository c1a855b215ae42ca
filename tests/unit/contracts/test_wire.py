"""Unit tests of the Confluent wire framing (streams.contracts.wire)."""

from __future__ import annotations

import pytest

from streams.contracts.wire import HEADER_SIZE, MAGIC, frame, unframe
from streams.errors import RecordRejected


def test_frame_layout_is_magic_then_big_endian_id_then_body() -> None:
    """A framed message is byte 0, the 4-byte big-endian schema id, then the body unchanged."""
    data = frame(0x01020304, b"body")
    assert data == b"\x00\x01\x02\x03\x04body"
    assert HEADER_SIZE == 5 and MAGIC == 0


@pytest.mark.parametrize("schema_id", [0, 1, 258, 2**31 - 1, 2**32 - 1])
def test_frame_unframe_round_trip(schema_id: int) -> None:
    """unframe(frame(id, body)) gives back the same id and body, for small and large ids."""
    body = bytes(range(256))
    got_id, got_body = unframe(frame(schema_id, body))
    assert got_id == schema_id
    assert bytes(got_body) == body


def test_header_only_message_has_empty_body() -> None:
    """A 5-byte message (header, no body) is accepted and yields an empty body."""
    schema_id, body = unframe(frame(7, b""))
    assert schema_id == 7
    assert bytes(body) == b""


def test_none_value_is_empty_payload() -> None:
    """A tombstone (None value) is rejected with code empty_payload at the decode stage."""
    with pytest.raises(RecordRejected) as caught:
        unframe(None)
    assert caught.value.code == "empty_payload"
    assert caught.value.stage == "decode"


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x01"])
def test_shorter_than_header_is_truncated_header(data: bytes) -> None:
    """Any payload shorter than 5 bytes is rejected with code truncated_header."""
    with pytest.raises(RecordRejected) as caught:
        unframe(data)
    assert caught.value.code == "truncated_header"


@pytest.mark.parametrize("first", [1, 0x7F, 0xFF])
def test_wrong_magic_byte_is_bad_magic(first: int) -> None:
    """A payload whose first byte is not 0 is rejected with code bad_magic."""
    with pytest.raises(RecordRejected) as caught:
        unframe(bytes([first]) + b"\x00\x00\x00\x01rest")
    assert caught.value.code == "bad_magic"
