"""Dead letters at rest (streams.crypto.letters): sealed to the operators' key, readable headers, exact round trip."""

from __future__ import annotations

import dataclasses

import pytest

from streams.assembly import build_pipeline, build_sealers, key_holders, load_policy_set
from streams.contracts.registry import InMemorySchemaRegistry
from streams.crypto.envelope import FieldEncryptor
from streams.crypto.errors import DecryptionError, KeyUnavailable
from streams.crypto.keys import generate_key_pair
from streams.crypto.letters import (
    H_SEALED,
    OPERATORS,
    LetterOpener,
    LetterSealer,
    RawLetter,
    decode_raw,
    dlq_key_topic,
    encode_raw,
)
from streams.crypto.ring import PrivateKeyRing, PublicKeyRing
from streams.dlq.letters import parse, render, render_summary, summarise
from streams.errors import ConfigError
from streams.kafka.offsets import ReadRecord
from streams.pipeline import InputRecord, OutputRecord, Pipeline, dead_letter
from streams.policy.outputs import output_schema
from streams.settings import Settings
from tests.conftest import FIXED_NOW_MS, agency_key_pairs, deterministic_keys, private_key_ring, public_key_ring

DLQ = "screening.results.dlq.v1"
INGRESS = "screening.results.v1"
NIR = "185077512345678"
NAME = "QUENNEHENVILLIERS"
PHONE = "0698765432"
RAW = b"\x00\x00\x00\x00\x07" + f"{NIR}\x10{NAME}\x0c{PHONE} 12 rue des Pecheurs".encode()
KEY = b"5f0c7c52-0a8e-4d4e-9d3b-1f7c2d1e9a11"
POLICY_SET = load_policy_set(Settings())


def _sealed(
    sealer: LetterSealer,
    *,
    offset: int = 40,
    code: str = "invalid_nir",
    key: bytes | None = KEY,
    value: bytes | None = RAW,
    headers: tuple[tuple[str, bytes], ...] = (("trace-id", b"t-1"),),
) -> tuple[OutputRecord, bytes]:
    """A dead letter as the pipeline writes it, and its data key's record (for the DLQ key topic)."""
    source = InputRecord(INGRESS, 2, offset, key, value, headers)
    out, data_key = dead_letter(source, code, "NIR key does not match", "validate", DLQ, FIXED_NOW_MS, sealer)
    return out, data_key.record.value()


def _sealer() -> LetterSealer:
    return LetterSealer(FieldEncryptor(public_key_ring()), DLQ)


def _opener(*key_records: bytes, ring: PrivateKeyRing | None = None) -> LetterOpener:
    opener = LetterOpener(ring or private_key_ring(OPERATORS))
    for record in key_records:
        opener.add_key_record(record)
    return opener


def _open(opener: LetterOpener, out: OutputRecord, partition: int = 3, offset: int = 17) -> RawLetter:
    return opener.open(out.topic, partition, offset, out.value, out.headers)


def test_the_plaintext_encoding_round_trips_nulls_empties_and_header_values() -> None:
    """encode_raw/decode_raw give back exactly the key, value and headers, a null told apart from an empty value."""
    for raw in (
        RawLetter(KEY, RAW, (("trace-id", b"t"), ("é-header", b""), ("n", None))),
        RawLetter(None, None),
        RawLetter(b"", b""),
    ):
        assert decode_raw(encode_raw(raw)) == raw
    with pytest.raises(DecryptionError, match="trailing"):
        decode_raw(encode_raw(RawLetter(KEY, RAW)) + b"\x00")
    with pytest.raises(DecryptionError):
        decode_raw(b"garbage")


def test_a_sealed_letter_opens_to_exactly_the_raw_record_with_the_operators_key() -> None:
    """Round trip: raw key, raw value and original headers back, byte for byte; none of them in the record."""
    out, key_record = _sealed(_sealer())
    assert _open(_opener(key_record), out) == RawLetter(KEY, RAW, (("trace-id", b"t-1"),))
    on_disk = (out.key or b"") + (out.value or b"") + b"".join(k.encode() + v for k, v in out.headers) + key_record
    for secret in (NIR.encode(), NAME.encode(), PHONE.encode(), b"Pecheurs", KEY, b"t-1", RAW[5:]):
        assert secret not in on_disk
    assert out.key is None and dict(out.headers)[H_SEALED] == agency_key_pairs()[OPERATORS].key_id.encode()


def test_null_key_and_value_round_trip() -> None:
    """A record with no key and a null value (empty_payload) is sealed and opened as such."""
    out, key_record = _sealed(_sealer(), key=None, value=None, headers=(), code="empty_payload")
    assert _open(_opener(key_record), out) == RawLetter(None, None, ())
    assert dict(out.headers)["dlq.value.bytes"] == b"null"


def test_the_wrong_private_key_fails_naming_the_record_and_quoting_nothing() -> None:
    """Another operators' key: DecryptionError no_private_key naming topic[partition]@offset; no value in it."""
    out, key_record = _sealed(_sealer())
    stranger = PrivateKeyRing([generate_key_pair(OPERATORS, 0, 4_102_444_800_000)], OPERATORS)
    with pytest.raises(DecryptionError) as caught:
        _open(_opener(key_record, ring=stranger), out, 3, 17)
    assert caught.value.code == "no_private_key"
    assert f"dead letter {DLQ}[3]@17 does not open" in str(caught.value)
    assert not any(s in str(caught.value) for s in (NIR, NAME, PHONE, KEY.decode()))


def test_an_agency_key_does_not_open_a_dead_letter() -> None:
    """CNAM's private key is no operators' key: the ring refuses it (keys are per holder)."""
    with pytest.raises(ConfigError, match="not 'operators'"):
        PrivateKeyRing([agency_key_pairs()["cnam"]], OPERATORS)


def test_a_tampered_value_or_header_fails_as_tampered() -> None:
    """One flipped byte of the sealed value, or an altered dlq.* header (reason code), fails to authenticate."""
    out, key_record = _sealed(_sealer())
    opener = _opener(key_record)
    flipped = bytearray(out.value or b"")
    flipped[-1] ^= 1
    recoded = [(k, b"unknown_commune" if k == "dlq.reason.code" else v) for k, v in out.headers]
    for forged in (dataclasses.replace(out, value=bytes(flipped)), dataclasses.replace(out, headers=recoded)):
        with pytest.raises(DecryptionError) as caught:
            _open(opener, forged)
        assert caught.value.code == "tampered" and f"{DLQ}[3]@17" in str(caught.value)


def test_a_sealed_value_moved_to_another_record_or_topic_fails() -> None:
    """Letter A's sealed value under letter B's headers (another source offset), or read as another topic: tampered."""
    sealer = _sealer()
    first, key_record = _sealed(sealer, offset=40)
    second, _ = _sealed(sealer, offset=41)
    opener = _opener(key_record)
    with pytest.raises(DecryptionError, match="moved from another record"):
        _open(opener, dataclasses.replace(second, value=first.value))
    with pytest.raises(DecryptionError, match="moved from another record or topic"):
        _open(opener, dataclasses.replace(first, topic="staging." + DLQ))
    assert _open(opener, second).key == KEY  # the untouched one still opens


def test_a_missing_data_key_or_an_unsealed_record_is_named() -> None:
    """Without the DLQ key topic's record: unknown_data_key; a record with no sealing header: malformed."""
    out, _ = _sealed(_sealer())
    with pytest.raises(DecryptionError) as caught:
        _open(_opener(), out)
    assert caught.value.code == "unknown_data_key"
    clear = dataclasses.replace(out, value=RAW, headers=[(k, v) for k, v in out.headers if k != H_SEALED])
    with pytest.raises(DecryptionError, match=rf"{DLQ}\[3\]@17: not a sealed dead letter"):
        _open(_opener(), clear)


def test_list_and_show_work_without_any_key_and_show_no_raw_byte() -> None:
    """dlq list's summary and dlq show (unopened) come from the readable dlq.* headers: code, source, sizes, framing."""
    out, _ = _sealed(_sealer())
    letter = parse(ReadRecord(DLQ, 3, 17, out.key, out.value, tuple(out.headers)))
    assert (letter.code, letter.source_partition, letter.source_offset) == ("invalid_nir", 2, 40)
    assert "invalid_nir" in render_summary(summarise([letter]), DLQ)
    text = render(letter, hex_preview=True)
    key_id = agency_key_pairs()[OPERATORS].key_id
    assert f"{len(RAW)} bytes, framing Confluent, schema id 7 (sealed to the operators' key {key_id})" in text
    assert "1 original headers" in text and "give the operators' private key" in text
    assert not any(s in text for s in (NIR, NAME, PHONE, KEY.decode(), "trace-id", RAW[:16].hex(" ")))


def test_one_data_key_seals_a_flood_and_lives_one_epoch() -> None:
    """10 000 letters in one epoch share one operators' data key (one HPKE seal); the next epoch makes another."""
    sealer = _sealer()
    ids = {(_sealed(sealer, offset=n)[0].value or b"")[1:17] for n in range(10_000)}
    assert len(ids) == 1 and sealer.encryptor.data_keys_made == 1
    source = InputRecord(INGRESS, 0, 1, None, b"x")
    _, later = dead_letter(source, "not_framed", "x", "decode", DLQ, FIXED_NOW_MS + 86_400_000, sealer)
    assert later.key_id not in ids and sealer.key_topic == dlq_key_topic(DLQ) == "screening.results.dlq.keys.v1"


def test_no_operators_key_in_force_refuses_to_build_the_pipeline() -> None:
    """Default deny: agencies' keys but no operators' key in force: no pipeline; a Pipeline without a letter
    sealer is refused too (a dead letter is never written in clear)."""
    without = PublicKeyRing([p.public for a, p in agency_key_pairs().items() if a != OPERATORS])
    registry = InMemorySchemaRegistry()
    with pytest.raises(KeyUnavailable, match="no operators' public key in force"):
        build_pipeline(Settings(), registry, deterministic_keys(), policy_set=POLICY_SET, public_keys=without)
    pipeline = build_pipeline(
        Settings(), registry, deterministic_keys(), policy_set=POLICY_SET, public_keys=public_key_ring()
    )
    schemas = {p.recipient: output_schema(p, POLICY_SET.input_schema) for p in POLICY_SET.policies}
    sealers = build_sealers(Settings(), pipeline.minimiser, schemas, public_key_ring(), FIXED_NOW_MS)
    with pytest.raises(ConfigError, match="dead letters hold raw input"):
        Pipeline(pipeline.decoder, pipeline.validator, pipeline.minimiser, {}, DLQ, sealers=sealers)


def test_the_operators_key_expiring_while_running_stops_instead_of_writing_a_clear_letter() -> None:
    """Past the operators' key's end, a bad record raises KeyUnavailable; nothing is dead-lettered or counted."""
    end = FIXED_NOW_MS + 86_400_000
    ring = PublicKeyRing(
        [
            generate_key_pair(a, FIXED_NOW_MS - 1, end if a == OPERATORS else 2 * end).public
            for a in key_holders(POLICY_SET)
        ]
    )
    clock = [FIXED_NOW_MS]
    pipeline = build_pipeline(
        Settings(),
        InMemorySchemaRegistry(),
        deterministic_keys(),
        clock_ms=lambda: clock[0],
        policy_set=POLICY_SET,
        public_keys=ring,
    )
    assert pipeline.process(InputRecord(INGRESS, 0, 1, None, b"\x8fjunk"))[0].dead_letter
    clock[0] = end
    with pytest.raises(KeyUnavailable, match="dead letters cannot be sealed"):
        pipeline.process_many([InputRecord(INGRESS, 0, 2, None, b"\x8fjunk")])
    assert pipeline.stats.dead_letters == {"not_framed": 1}
