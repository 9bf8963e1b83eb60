"""Tests for swim.wire.crypto: memberlist's AES-GCM payloads and keyring."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from swim.wire.crypto import (
    ENCRYPTION_VERSION,
    Keyring,
    KeyringError,
    decode_key,
    encode_key,
    encrypted_length,
)
from swim.wire.errors import DecodeError

VECTOR_KEY = b"0123456789abcdef"
VECTOR_PLAINTEXT = b"plaintext"
VECTOR_V1 = bytes.fromhex(
    "012e52d047843dc9aabe14bd88191162db122ec69a21feda37f436275dee21bd59d53e89df4d"
)
VECTOR_V0 = bytes.fromhex(
    "0031a3373c25a9a9830ca95a6552e2b73b78ff28f594dd30572c2a9e8aca67e717ed861d1d14bb3cc9649e4fca"
)
VECTOR_V1_AAD = bytes.fromhex(
    "01e7f965636e0b8c4b629cb04918940c48afec855deeab6c80be3a48dc4cb742142b9e841a3c"
)
VECTOR_AAD = bytes.fromhex("0a00000026")

KEY16 = bytes(range(16))
KEY24 = bytes(range(100, 124))
KEY32 = bytes(range(200, 232))
OLD_KEY = b"A" * 16
NEW_KEY = b"B" * 32

keys = st.sampled_from([KEY16, KEY24, KEY32])


def counter_nonces() -> Callable[[], bytes]:
    """A deterministic nonce source: 0, 1, 2, ... as 12-byte big-endian counters."""
    counter: Iterator[int] = iter(range(2**32))
    return lambda: next(counter).to_bytes(12, "big")


def seal_v0(key: bytes, padded: bytes, aad: bytes = b"") -> bytes:
    """Build a version 0 payload around already padded bytes, as memberlist 0.2.2 would."""
    nonce = os.urandom(12)
    return b"\x00" + nonce + AESGCM(key).encrypt(nonce, padded, aad)


# Known vectors from Go memberlist


@pytest.mark.parametrize(
    ("payload", "aad"),
    [(VECTOR_V1, b""), (VECTOR_V0, b""), (VECTOR_V1_AAD, VECTOR_AAD)],
    ids=["v1", "v0-padded", "v1-aad"],
)
def test_go_vectors_decrypt(payload: bytes, aad: bytes) -> None:
    assert Keyring([VECTOR_KEY]).decrypt(payload, aad) == VECTOR_PLAINTEXT


def test_go_vector_lengths_match_encrypted_length() -> None:
    assert len(VECTOR_V1) == encrypted_length(1, len(VECTOR_PLAINTEXT))
    assert len(VECTOR_V0) == encrypted_length(0, len(VECTOR_PLAINTEXT))


@pytest.mark.parametrize("aad", [b"", b"\x0a\x00\x00\x00\x27", b"label"])
def test_go_vector_with_aad_needs_that_aad(aad: bytes) -> None:
    with pytest.raises(DecodeError):
        Keyring([VECTOR_KEY]).decrypt(VECTOR_V1_AAD, aad)


def test_go_vector_without_aad_rejects_an_aad() -> None:
    with pytest.raises(DecodeError):
        Keyring([VECTOR_KEY]).decrypt(VECTOR_V1, VECTOR_AAD)


# encrypted_length


@pytest.mark.parametrize(
    ("version", "plaintext_len", "expected"),
    [(1, 0, 29), (1, 9, 38), (1, 1000, 1029), (0, 0, 45), (0, 9, 45), (0, 15, 45), (0, 16, 61)],
)
def test_encrypted_length(version: int, plaintext_len: int, expected: int) -> None:
    assert encrypted_length(version, plaintext_len) == expected


@pytest.mark.parametrize(("version", "plaintext_len"), [(2, 0), (-1, 0), (1, -1)])
def test_encrypted_length_rejects_bad_arguments(version: int, plaintext_len: int) -> None:
    with pytest.raises(ValueError):
        encrypted_length(version, plaintext_len)


# Round trips


@given(key=keys, plaintext=st.binary(max_size=300), aad=st.binary(max_size=40))
def test_round_trip(key: bytes, plaintext: bytes, aad: bytes) -> None:
    ring = Keyring([key])
    payload = ring.encrypt(plaintext, aad)
    assert payload[0] == ENCRYPTION_VERSION == 1
    assert len(payload) == encrypted_length(1, len(plaintext))
    assert ring.decrypt(payload, aad) == plaintext


@pytest.mark.parametrize("key", [KEY16, KEY24, KEY32], ids=["aes128", "aes192", "aes256"])
@pytest.mark.parametrize("aad", [b"", VECTOR_AAD])
def test_round_trip_each_key_size(key: bytes, aad: bytes) -> None:
    ring = Keyring([key])
    assert ring.decrypt(ring.encrypt(b"hello", aad), aad) == b"hello"


def test_accepts_bytes_like_input() -> None:
    ring = Keyring([bytearray(KEY16)])
    payload = ring.encrypt(memoryview(b"data"), bytearray(b"aad"))
    assert ring.decrypt(bytearray(payload), memoryview(b"aad")) == b"data"
    assert ring.decrypt(memoryview(payload), b"aad") == b"data"


def test_empty_aad_is_no_aad() -> None:
    """Go's nil AAD and an empty AAD authenticate the same."""
    nonce = bytes(12)
    payload = b"\x01" + nonce + AESGCM(KEY16).encrypt(nonce, b"x", None)
    assert Keyring([KEY16]).decrypt(payload) == b"x"


@given(key=keys, plaintext=st.binary(max_size=100), aad=st.binary(max_size=10))
def test_v0_round_trip(key: bytes, plaintext: bytes, aad: bytes) -> None:
    pad = 16 - len(plaintext) % 16
    payload = seal_v0(key, plaintext + bytes([pad]) * pad, aad)
    assert len(payload) == encrypted_length(0, len(plaintext))
    assert Keyring([key]).decrypt(payload, aad) == plaintext


@pytest.mark.parametrize("pad", [0, 17, 255], ids=["zero", "over-block", "max"])
def test_v0_bad_padding(pad: int) -> None:
    payload = seal_v0(KEY16, b"x" * 15 + bytes([pad]))
    with pytest.raises(DecodeError, match="padding"):
        Keyring([KEY16]).decrypt(payload)


def test_v0_whole_block_of_padding() -> None:
    payload = seal_v0(KEY16, b"y" * 16 + bytes([16]) * 16)
    assert Keyring([KEY16]).decrypt(payload) == b"y" * 16
    assert Keyring([KEY16]).decrypt(seal_v0(KEY16, bytes([16]) * 16)) == b""


# Rejection: every failure is a DecodeError


def test_wrong_key() -> None:
    payload = Keyring([KEY16]).encrypt(b"secret")
    with pytest.raises(DecodeError, match="no installed key"):
        Keyring([KEY32]).decrypt(payload)


def test_wrong_label_aad() -> None:
    ring = Keyring([KEY16])
    payload = ring.encrypt(b"secret", b"label-a")
    with pytest.raises(DecodeError):
        ring.decrypt(payload, b"label-b")
    with pytest.raises(DecodeError):
        ring.decrypt(payload)


@given(data=st.data(), plaintext=st.binary(max_size=64))
def test_any_tampered_byte_after_the_version_is_rejected(
    data: st.DataObject, plaintext: bytes
) -> None:
    ring = Keyring([KEY16])
    payload = bytearray(ring.encrypt(plaintext, b"aad"))
    position = data.draw(st.integers(1, len(payload) - 1), label="position")
    payload[position] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(DecodeError):
        ring.decrypt(payload, b"aad")


@given(plaintext=st.binary(max_size=64), version=st.integers(0, 255).filter(lambda v: v != 1))
def test_a_changed_version_byte_never_passes_for_the_original(
    plaintext: bytes, version: int
) -> None:
    """memberlist does not authenticate the version byte.  Flipped to 0, a version 1 payload
    still opens; the padding check then refuses it, except when the plaintext happens to end
    like whole-block padding, and even then the result is never the original plaintext."""
    ring = Keyring([KEY16])
    payload = bytearray(ring.encrypt(plaintext, b"aad"))
    payload[0] = version
    try:
        opened = ring.decrypt(payload, b"aad")
    except DecodeError:
        return
    assert version == 0 and opened != plaintext
    assert len(plaintext) % 16 == 0 and plaintext.endswith(bytes([plaintext[-1]]) * plaintext[-1])


def test_version_0_padding_must_be_whole() -> None:
    ring = Keyring([KEY16])
    good = b"sixteen bytes!!!" + bytes([16]) * 16
    forged = b"fifteen bytes!!" + b"\x02"  # ends in 2, but is not two bytes of 2
    for plain, ok in ((good, True), (forged, False)):
        nonce = bytes(12)
        sealed = AESGCM(KEY16).encrypt(nonce, plain, None)
        payload = b"\x00" + nonce + sealed
        if ok:
            assert ring.decrypt(payload) == b"sixteen bytes!!!"
        else:
            with pytest.raises(DecodeError, match="padding"):
                ring.decrypt(payload)


@given(data=st.data(), plaintext=st.binary(max_size=64))
def test_truncation_is_rejected(data: st.DataObject, plaintext: bytes) -> None:
    ring = Keyring([KEY16])
    payload = ring.encrypt(plaintext)
    cut = data.draw(st.integers(0, len(payload) - 1), label="length")
    with pytest.raises(DecodeError):
        ring.decrypt(payload[:cut])


@given(version=st.integers(2, 255))
def test_unknown_version_is_rejected(version: int) -> None:
    payload = bytes([version]) + Keyring([KEY16]).encrypt(b"x")[1:]
    with pytest.raises(DecodeError, match="version"):
        Keyring([KEY16]).decrypt(payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"\x01" + bytes(27), "too short"),
        (b"\x00" + bytes(43), "too short"),
    ],
)
def test_short_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        Keyring([KEY16]).decrypt(payload)


@given(payload=st.binary(max_size=120), aad=st.binary(max_size=8))
def test_garbage_raises_only_decode_error(payload: bytes, aad: bytes) -> None:
    with pytest.raises(DecodeError):
        Keyring([KEY16, KEY24]).decrypt(payload, aad)


# Keyring management and rotation


def test_first_key_is_primary_and_duplicates_collapse() -> None:
    ring = Keyring([KEY24, KEY16, KEY24])
    assert ring.primary_key == KEY24
    assert ring.keys == (KEY24, KEY16)


def test_empty_keyring_refused() -> None:
    with pytest.raises(KeyringError, match="at least one key"):
        Keyring([])


def test_single_key_not_in_a_list_refused() -> None:
    with pytest.raises(KeyringError, match=r"Keyring\(\[key\]\)"):
        Keyring(KEY16)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 8, 15, 17, 20, 31, 33, 64])
def test_bad_key_sizes_refused(size: int) -> None:
    message = rf"key is {size} bytes.*16, 24 or 32"
    with pytest.raises(KeyringError, match=message):
        Keyring([bytes(size)])
    ring = Keyring([KEY16])
    with pytest.raises(KeyringError, match=message):
        ring.add_key(bytes(size))
    assert ring.keys == (KEY16,)


def test_non_bytes_key_refused() -> None:
    with pytest.raises(KeyringError, match="must be bytes"):
        Keyring(["0123456789abcdef"])  # type: ignore[list-item]


def test_add_key_keeps_primary() -> None:
    old = Keyring([OLD_KEY])
    ring = Keyring([OLD_KEY])
    ring.add_key(NEW_KEY)
    ring.add_key(NEW_KEY)
    assert ring.keys == (OLD_KEY, NEW_KEY)
    assert ring.primary_key == OLD_KEY
    # The old primary still encrypts, so nodes that only know it can read us.
    assert old.decrypt(ring.encrypt(b"m")) == b"m"
    # The new key already decrypts.
    assert ring.decrypt(Keyring([NEW_KEY]).encrypt(b"n")) == b"n"


def test_use_key_switches_encryption() -> None:
    ring = Keyring([OLD_KEY, NEW_KEY])
    before = ring.encrypt(b"before")
    ring.use_key(NEW_KEY)
    assert ring.primary_key == NEW_KEY
    assert ring.keys == (NEW_KEY, OLD_KEY)
    after = ring.encrypt(b"after")
    assert Keyring([NEW_KEY]).decrypt(after) == b"after"
    with pytest.raises(DecodeError):
        Keyring([OLD_KEY]).decrypt(after)
    # A node holding both keys reads traffic from either side of the switch.
    both = Keyring([OLD_KEY, NEW_KEY])
    assert both.decrypt(before) == b"before"
    assert both.decrypt(after) == b"after"


def test_use_key_keeps_order_of_the_others() -> None:
    ring = Keyring([KEY16, KEY24, KEY32])
    ring.use_key(KEY32)
    assert ring.keys == (KEY32, KEY16, KEY24)
    ring.use_key(KEY32)
    assert ring.keys == (KEY32, KEY16, KEY24)


def test_use_key_requires_installed_key() -> None:
    ring = Keyring([KEY16])
    with pytest.raises(KeyringError, match=r"not installed.*add_key"):
        ring.use_key(KEY32)


def test_remove_key() -> None:
    ring = Keyring([NEW_KEY, OLD_KEY])
    under_old = Keyring([OLD_KEY]).encrypt(b"old")
    assert ring.decrypt(under_old) == b"old"
    ring.remove_key(OLD_KEY)
    assert ring.keys == (NEW_KEY,)
    with pytest.raises(DecodeError):
        ring.decrypt(under_old)


def test_remove_primary_refused() -> None:
    ring = Keyring([OLD_KEY, NEW_KEY])
    with pytest.raises(KeyringError, match=r"primary.*use_key"):
        ring.remove_key(OLD_KEY)
    assert ring.keys == (OLD_KEY, NEW_KEY)


def test_remove_key_requires_installed_key() -> None:
    ring = Keyring([KEY16, KEY24])
    with pytest.raises(KeyringError, match="not installed"):
        ring.remove_key(KEY32)


# Nonces


def test_deterministic_nonce_source_gives_identical_ciphertexts() -> None:
    first = Keyring([KEY16], nonce_source=counter_nonces())
    second = Keyring([KEY16], nonce_source=counter_nonces())
    payloads = [first.encrypt(b"same", b"aad") for _ in range(3)]
    assert payloads == [second.encrypt(b"same", b"aad") for _ in range(3)]
    assert len(set(payloads)) == 3
    assert payloads[0][1:13] == bytes(12)


def test_default_nonces_differ() -> None:
    ring = Keyring([KEY16])
    assert ring.encrypt(b"same") != ring.encrypt(b"same")


@pytest.mark.parametrize("nonce", [b"", bytes(11), bytes(13), "x" * 12])
def test_bad_nonce_source_refused(nonce: bytes) -> None:
    ring = Keyring([KEY16], nonce_source=lambda: nonce)
    with pytest.raises(RuntimeError, match="exactly 12 bytes"):
        ring.encrypt(b"x")


# Key text and keyring files


def test_encode_decode_key() -> None:
    assert encode_key(VECTOR_KEY) == "MDEyMzQ1Njc4OWFiY2RlZg=="
    assert decode_key("MDEyMzQ1Njc4OWFiY2RlZg==") == VECTOR_KEY
    assert decode_key(" MDEyMzQ1Njc4OWFiY2RlZg==\n") == VECTOR_KEY
    for key in (KEY16, KEY24, KEY32):
        assert decode_key(encode_key(key)) == key


@pytest.mark.parametrize("text", ["not base64!", "MDEyMzQ1Njc4OWFiY2RlZg", "é", ""])
def test_decode_key_rejects_bad_base64(text: str) -> None:
    with pytest.raises(KeyringError, match=r"base64|key is 0 bytes"):
        decode_key(text)


def test_decode_key_rejects_wrong_length() -> None:
    with pytest.raises(KeyringError, match="key is 10 bytes"):
        decode_key("MDEyMzQ1Njc4OQ==")


def test_encode_key_rejects_wrong_length() -> None:
    with pytest.raises(KeyringError, match="key is 3 bytes"):
        encode_key(b"abc")


def test_keyring_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    ring = Keyring([KEY24, KEY16, KEY32])
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == [encode_key(k) for k in (KEY24, KEY16, KEY32)]
    loaded = Keyring.from_file(path)
    assert loaded.keys == ring.keys
    assert loaded.primary_key == KEY24
    assert loaded.decrypt(ring.encrypt(b"x")) == b"x"
    assert os.listdir(tmp_path) == ["keyring"]


def test_save_replaces_file_and_tightens_mode(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    path.write_text("old contents")
    path.chmod(0o644)
    Keyring([KEY16]).save(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.from_file(str(path)).keys == (KEY16,)
    assert os.listdir(tmp_path) == ["keyring"]


def test_reads_serf_written_file(tmp_path: Path) -> None:
    """Serf writes json.MarshalIndent(keys, "", "  ") with no trailing newline."""
    path = tmp_path / "serf.keyring"
    path.write_text('[\n  "MDEyMzQ1Njc4OWFiY2RlZg==",\n  "AAECAwQFBgcICQoLDA0ODw=="\n]')
    assert Keyring.from_file(path).keys == (VECTOR_KEY, KEY16)
    Keyring.from_file(path).save(path)
    assert path.read_text() == '[\n  "MDEyMzQ1Njc4OWFiY2RlZg==",\n  "AAECAwQFBgcICQoLDA0ODw=="\n]'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'{"keys": []}', "JSON array"),
        (b'"MDEyMzQ1Njc4OWFiY2RlZg=="', "JSON array"),
        (b"[1]", "JSON array"),
        (b"[]", "no keys"),
        (b'["not base64!"]', "entry 0.*base64"),
        (b'["MDEyMzQ1Njc4OWFiY2RlZg==", "MDEyMzQ1Njc4OQ=="]', "entry 1.*key is 10 bytes"),
    ],
)
def test_bad_keyring_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "keyring"
    path.write_bytes(content)
    with pytest.raises(KeyringError, match=message):
        Keyring.from_file(path)
