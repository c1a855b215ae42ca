"""Envelope encryption, adversarially: every alteration, move, truncation or wrong key is an error, never garbage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.crypto.envelope import (
    DATA_KEY_ID_BYTES,
    HEADER_BYTES,
    MIN_VALUE_BYTES,
    DataKeyStore,
    FieldEncryptor,
    KeyRecord,
    decrypt_value,
    field_aad,
    parse_key_record,
)
from streams.crypto.errors import DecryptionError
from streams.crypto.keys import AgencyPrivateKey, generate_key_pair, write_key_pair
from streams.crypto.plaintext import codec_for
from streams.crypto.ring import KeyDirectory, PrivateKeyRing, PublicKeyRing, import_public_key

from .conftest import DAY_MS, T0, YEAR_END

TOPIC = "tracing.cnam.results.v1"
NOW = T0 + 3 * DAY_MS + 12_345
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _seal(encryptor: FieldEncryptor, plaintext: bytes, field: str = "nir", ref: str = "ref-1") -> tuple[bytes, bytes]:
    key = encryptor.data_key("cnam", NOW)
    return encryptor.encrypt(key, field_aad(TOPIC, field, key.key_id, ref), plaintext), key.record.value()


def _store(private_ring: PrivateKeyRing, *records: bytes) -> DataKeyStore:
    store = DataKeyStore("cnam", private_ring)
    for record in records:
        store.add(record)
    return store


@SLOW
@given(value=st.text(max_size=200))
def test_strings_round_trip(public_ring: PublicKeyRing, private_ring: PrivateKeyRing, value: str) -> None:
    """Any string (any Unicode, empty included) comes back identical through encode, encrypt, decrypt, decode."""
    encode, decode = codec_for("string")
    ciphertext, record = _seal(FieldEncryptor(public_ring), encode(value))
    assert decode(decrypt_value(_store(private_ring, record), TOPIC, "nir", "ref-1", ciphertext)) == value


@SLOW
@given(
    value=st.one_of(
        st.tuples(st.just("int"), st.integers(-(2**31), 2**31 - 1)),
        st.tuples(st.just({"type": "int", "logicalType": "date"}), st.integers(-50_000, 50_000)),
        st.tuples(st.just({"type": "array", "items": "string"}), st.lists(st.text(max_size=30), max_size=5)),
        st.tuples(st.just("boolean"), st.booleans()),
    )
)
def test_other_plaintext_types_round_trip(
    public_ring: PublicKeyRing, private_ring: PrivateKeyRing, value: tuple[object, object]
) -> None:
    """Dates, ints, arrays of strings and (generic path) booleans round-trip through their Avro encoding."""
    avro_type, item = value
    encode, decode = codec_for(avro_type)
    ciphertext, record = _seal(FieldEncryptor(public_ring), encode(item))
    assert decode(decrypt_value(_store(private_ring, record), TOPIC, "nir", "ref-1", ciphertext)) == item


def test_the_data_key_is_sealed_once_per_slot_not_per_field(public_ring: PublicKeyRing) -> None:
    """Two thousand fields in one epoch cost one HPKE seal; nonces never repeat."""
    encryptor = FieldEncryptor(public_ring)
    values = [_seal(encryptor, b"x")[0] for _ in range(2_000)]
    assert encryptor.data_keys_made == 1
    nonces = {v[1 + DATA_KEY_ID_BYTES : HEADER_BYTES] for v in values}
    assert len(nonces) == len(values)
    assert len({v[1 : 1 + DATA_KEY_ID_BYTES] for v in values}) == 1


def test_each_epoch_gets_a_fresh_data_key_and_the_old_one_is_forgotten(public_ring: PublicKeyRing) -> None:
    """Day 3 and day 4 use different data keys with slots of one UTC day each."""
    encryptor = FieldEncryptor(public_ring)
    day3 = encryptor.data_key("cnam", NOW)
    day4 = encryptor.data_key("cnam", NOW + DAY_MS)
    assert day3.key_id != day4.key_id
    assert (day3.not_before_ms, day3.not_after_ms) == (T0 + 3 * DAY_MS, T0 + 4 * DAY_MS)
    assert encryptor.data_key("cnam", NOW + DAY_MS + 1) is day4
    assert encryptor.data_keys_made == 2


@pytest.mark.parametrize(
    "swap",
    [
        {"topic": "tracing.ars.11.results.v1"},
        {"field": "last_name"},
        {"ref": "ref-2"},
        {"ref": "ref-1 "},
    ],
)
def test_a_value_read_in_another_context_fails_authentication(
    public_ring: PublicKeyRing, private_ring: PrivateKeyRing, swap: dict[str, str]
) -> None:
    """Moved to another topic, field or record (event_ref), the value fails with ``tampered``."""
    ciphertext, record = _seal(FieldEncryptor(public_ring), b"1840375123456")
    context = {"topic": TOPIC, "field": "nir", "ref": "ref-1", **swap}
    with pytest.raises(DecryptionError) as caught:
        decrypt_value(_store(private_ring, record), context["topic"], context["field"], context["ref"], ciphertext)
    assert caught.value.code == "tampered"
    assert "1840375123456" not in str(caught.value)


def test_every_truncation_and_extension_is_refused(public_ring: PublicKeyRing, private_ring: PrivateKeyRing) -> None:
    """Any prefix of a value, or the value with bytes appended, is ``malformed`` or ``tampered``."""
    ciphertext, record = _seal(FieldEncryptor(public_ring), b"Quennehenvilliers")
    store = _store(private_ring, record)
    for size in range(len(ciphertext)):
        with pytest.raises(DecryptionError) as caught:
            decrypt_value(store, TOPIC, "nir", "ref-1", ciphertext[:size])
        assert caught.value.code == ("malformed" if size < MIN_VALUE_BYTES else "tampered")
    for tail in (b"\x00", b"\x00" * 16, ciphertext[-16:]):
        with pytest.raises(DecryptionError) as caught:
            decrypt_value(store, TOPIC, "nir", "ref-1", ciphertext + tail)
        assert caught.value.code == "tampered"


def test_every_single_bit_flip_is_refused(public_ring: PublicKeyRing, private_ring: PrivateKeyRing) -> None:
    """Flipping any bit of the version, key id, nonce, ciphertext or tag never yields a plaintext."""
    ciphertext, record = _seal(FieldEncryptor(public_ring), b"0698765432")
    store = _store(private_ring, record)
    for index in range(len(ciphertext)):
        for bit in range(8):
            flipped = bytearray(ciphertext)
            flipped[index] ^= 1 << bit
            with pytest.raises(DecryptionError) as caught:
                decrypt_value(store, TOPIC, "nir", "ref-1", bytes(flipped))
            expected = (
                {"malformed"} if index == 0 else {"unknown_data_key"} if index <= DATA_KEY_ID_BYTES else {"tampered"}
            )
            assert caught.value.code in expected, (index, bit)


def test_a_wrong_private_key_names_the_public_key_needed(public_ring: PublicKeyRing) -> None:
    """Another CNAM key pair cannot read; the error says which key is needed and what was given."""
    ciphertext, record = _seal(FieldEncryptor(public_ring), b"x")
    stranger = generate_key_pair("cnam", T0, YEAR_END)
    with pytest.raises(DecryptionError) as caught:
        decrypt_value(_store(PrivateKeyRing([stranger], "cnam"), record), TOPIC, "nir", "ref-1", ciphertext)
    assert caught.value.code == "no_private_key"
    assert public_ring.agencies == ("cnam",)
    assert public_ring.keys_of("cnam")[0].key_id in str(caught.value) and stranger.key_id in str(caught.value)


def test_a_missing_key_record_is_unknown_data_key(public_ring: PublicKeyRing, private_ring: PrivateKeyRing) -> None:
    """A value whose data key never reached the key topic says so."""
    ciphertext, _ = _seal(FieldEncryptor(public_ring), b"x")
    with pytest.raises(DecryptionError) as caught:
        decrypt_value(_store(private_ring), TOPIC, "nir", "ref-1", ciphertext)
    assert caught.value.code == "unknown_data_key"


def _altered(record: bytes, **changes: object) -> bytes:
    parsed = parse_key_record(record)
    return dataclasses.replace(parsed, **changes).value()  # type: ignore[arg-type]


def test_an_altered_key_record_does_not_unseal(
    public_ring: PublicKeyRing, private_ring: PrivateKeyRing, cnam_pair: AgencyPrivateKey
) -> None:
    """Changing the slot or the sealed bytes of a key record breaks the HPKE binding (``unseal_failed``)."""
    ciphertext, record = _seal(FieldEncryptor(public_ring), b"x")
    parsed = parse_key_record(record)
    flipped = bytes([parsed.sealed[0] ^ 1]) + parsed.sealed[1:]
    for changed in (
        _altered(record, not_before_ms=parsed.not_before_ms - DAY_MS),
        _altered(record, not_after_ms=parsed.not_after_ms + DAY_MS),
        _altered(record, sealed=flipped),
        _altered(record, sealed=parsed.sealed[:-1]),
    ):
        with pytest.raises(DecryptionError) as caught:
            decrypt_value(_store(private_ring, changed), TOPIC, "nir", "ref-1", ciphertext)
        assert caught.value.code == "unseal_failed"


def test_a_key_record_relabelled_for_another_data_key_or_agency_does_not_open(
    public_ring: PublicKeyRing, private_ring: PrivateKeyRing
) -> None:
    """A sealed key copied under another data-key id fails to unseal; one of another agency is ignored."""
    encryptor = FieldEncryptor(public_ring)
    first, first_record = _seal(encryptor, b"x")
    second_key = encryptor.data_key("cnam", NOW + DAY_MS)
    second = encryptor.encrypt(second_key, field_aad(TOPIC, "nir", second_key.key_id, "ref-1"), b"y")
    moved = _altered(first_record, data_key_id=second_key.key_id)
    with pytest.raises(DecryptionError) as caught:
        decrypt_value(_store(private_ring, moved), TOPIC, "nir", "ref-1", second)
    assert caught.value.code == "unseal_failed"
    foreign = _altered(first_record, agency="spf")
    store = _store(private_ring, foreign)
    assert store.foreign == 1
    with pytest.raises(DecryptionError) as caught:
        decrypt_value(store, TOPIC, "nir", "ref-1", first)
    assert caught.value.code == "unknown_data_key"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"[]",
        json.dumps({"format": "x"}).encode(),
        json.dumps({"format": "screening-streams.data-key.v1"}).encode(),
    ],
)
def test_malformed_key_records_are_refused(value: bytes) -> None:
    """Anything but a data-key record in the key topic is ``bad_key_record``."""
    with pytest.raises(DecryptionError) as caught:
        parse_key_record(value)
    assert caught.value.code == "bad_key_record"


def test_key_records_round_trip_and_carry_nothing_secret(public_ring: PublicKeyRing) -> None:
    """The JSON record parses back to itself and holds neither the data key nor a private key."""
    key = FieldEncryptor(public_ring, random_bytes=lambda n: bytes([7]) * n).data_key("cnam", NOW)
    record = key.record
    assert parse_key_record(record.value()) == record
    assert isinstance(record, KeyRecord) and record.key == key.key_id.hex().encode()
    assert (bytes([7]) * 32).hex() not in record.value().decode()
    assert bytes([7]) * 32 not in record.value()


@pytest.mark.parametrize("data", [b"\x01", b"\x80", b"\x06ab", b"\x02a\x00"])
def test_malformed_plaintexts_are_refused(data: bytes) -> None:
    """A plaintext that does not decode under its type (cut short, trailing bytes) is ``bad_plaintext``."""
    _, decode = codec_for("string")
    with pytest.raises(DecryptionError) as caught:
        decode(data)
    assert caught.value.code == "bad_plaintext"


def test_the_encryptor_switches_to_a_key_imported_while_running(tmp_path: Path) -> None:
    """Rotation without a restart: once the directory shows the new key, new data keys are sealed to it."""
    tick = [0.0]
    old = generate_key_pair("cnam", T0, YEAR_END)
    directory_path = tmp_path / "processor"
    import_public_key(directory_path, write_key_pair(tmp_path / "agency", old)[1])
    encryptor = FieldEncryptor(KeyDirectory(directory_path, interval_s=1, monotonic=lambda: tick[0]))
    assert encryptor.data_key("cnam", NOW).public_key_id == old.key_id
    new = generate_key_pair("cnam", NOW + 1, YEAR_END + DAY_MS)
    import_public_key(directory_path, write_key_pair(tmp_path / "agency", new)[1])
    tick[0] = 2.0
    assert encryptor.data_key("cnam", NOW + 2).public_key_id == new.key_id
