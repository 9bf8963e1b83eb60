"""The metadata protocol's codec and the metadata cache, without sockets."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.catalog import Instance
from discovery.introspection import (
    MAX_METADATA_BYTES,
    MAX_REQUEST_BYTES,
    NONCE_BYTES,
    Direction,
    FrameReader,
    FrameSeal,
    MetadataCache,
    ProtocolError,
    Refusal,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_metadata,
    frame,
    revision_of,
)
from swim.wire import Keyring

KEY = bytes(range(16))
SEAL = FrameSeal(Keyring([KEY]), b"core")
NONCE = bytes(range(NONCE_BYTES))


def test_a_request_and_a_response_round_trip_in_pieces() -> None:
    data = frame({"service": "web", "revision": 7})
    reader = FrameReader(1024)
    assert [reader.receive_data(data[i : i + 1]) for i in range(len(data) - 1)] == [None] * (
        len(data) - 1
    )
    body = reader.receive_data(data[-1:])
    assert body is not None and decode_request(body) == Request("web", 7)
    answer = frame({"revision": 7, "metadata": {"zone": "eu", "ports": [1, 2]}})
    body = FrameReader(1024).receive_data(answer)
    assert body is not None
    assert decode_response(body) == Response(7, {"zone": "eu", "ports": [1, 2]})
    refusal = FrameReader(1024).receive_data(frame({"error": "not here"}))
    assert refusal is not None and decode_response(refusal) == Refusal("not here")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x00\x00\x10\x00", "frame of 4096 bytes, over the limit of 1024"),
        (frame({"service": "web", "revision": 1}) + b"x", "bytes after the frame"),
    ],
)
def test_frames_are_bounded(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        FrameReader(1024).receive_data(data)


def test_a_stream_ending_mid_frame_is_an_error() -> None:
    reader = FrameReader(1024)
    reader.receive_data(b"\x00\x00")
    with pytest.raises(ProtocolError, match="ended after 2 bytes"):
        reader.end_of_stream()


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"service": 3, "revision": 1}),
        msgpack.packb({"service": "web", "revision": -1}),
        msgpack.packb({1: 2}),
        b"\x91" * 60_000 + b"\x00",  # nesting too deep for the unpacker
    ],
)
def test_bad_requests_raise_one_error_type(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(body)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(body: bytes) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(ProtocolError):
            decode(body)


def body_of(data: bytes, seal: FrameSeal, direction: Direction) -> bytes:
    """The body of the one frame in ``data``, read as ``seal`` reads frames going ``direction``."""
    body = seal.reader(direction).receive_data(data)
    assert body is not None
    return body


def test_a_sealed_request_and_answer_round_trip_without_plaintext_on_the_wire() -> None:
    asked = {"service": "billing-eu", "revision": 7, "nonce": NONCE}
    request = SEAL.frame(asked, Direction.REQUEST)
    assert b"billing-eu" not in request
    opened = SEAL.open(body_of(request, SEAL, Direction.REQUEST), Direction.REQUEST)
    assert decode_request(opened) == Request("billing-eu", 7, NONCE)
    metadata = {"vault": "eu-secret-7"}
    answer = SEAL.frame({"revision": 8, "metadata": metadata, "nonce": NONCE}, Direction.RESPONSE)
    assert b"eu-secret-7" not in answer
    opened = SEAL.open(body_of(answer, SEAL, Direction.RESPONSE), Direction.RESPONSE)
    assert decode_response(opened, NONCE) == Response(8, metadata)


def test_a_rotated_keyring_still_opens_frames_sealed_with_an_older_key() -> None:
    keyring = Keyring([KEY])
    seal = FrameSeal(keyring, b"core")
    old = seal.frame({"error": "not here"}, Direction.RESPONSE)
    keyring.add_key(bytes(16))
    keyring.use_key(bytes(16))
    assert seal.open(body_of(old, seal, Direction.RESPONSE), Direction.RESPONSE)


@pytest.mark.parametrize(
    ("opener", "direction", "why"),
    [
        (FrameSeal(Keyring([bytes(16)]), b"core"), Direction.REQUEST, "do not share a cluster"),
        (FrameSeal(Keyring([KEY]), b"edge"), Direction.REQUEST, "do not share a cluster key and"),
        (SEAL, Direction.RESPONSE, "or it is not a response"),  # a request replayed as answer
        (FrameSeal(None, b"core"), Direction.REQUEST, "encrypted, but this node has no cluster"),
    ],
)
def test_a_sealed_request_opens_only_with_the_key_label_and_direction(
    opener: FrameSeal, direction: Direction, why: str
) -> None:
    data = SEAL.frame({"service": "web", "revision": 0, "nonce": NONCE}, Direction.REQUEST)
    body = body_of(data, SEAL, Direction.REQUEST)
    with pytest.raises(ProtocolError, match=why):
        opener.open(body, direction)


def test_a_plaintext_frame_is_refused_by_an_encrypted_node_with_the_fix() -> None:
    body = body_of(frame({"service": "web", "revision": 0}), SEAL, Direction.REQUEST)
    with pytest.raises(ProtocolError, match="not encrypted, but this node's cluster is; give"):
        SEAL.open(body, Direction.REQUEST)


@pytest.mark.parametrize("index", [1, 13, 20, -1])  # AES-GCM nonce, ciphertext, tag
def test_a_tampered_sealed_frame_is_refused(index: int) -> None:
    data = SEAL.frame({"revision": 1, "metadata": {}, "nonce": NONCE}, Direction.RESPONSE)
    body = bytearray(body_of(data, SEAL, Direction.RESPONSE))
    body[index] ^= 0x01
    with pytest.raises(ProtocolError, match="cannot decrypt the response"):
        SEAL.open(bytes(body), Direction.RESPONSE)


@pytest.mark.parametrize(
    ("answer", "nonce"),
    [
        ({"revision": 1, "metadata": {}, "nonce": bytes(NONCE_BYTES)}, NONCE),
        ({"error": "not here", "nonce": bytes(NONCE_BYTES)}, NONCE),
        ({"revision": 1, "metadata": {}}, NONCE),
        ({"revision": 1, "metadata": {}, "nonce": NONCE}, b""),
    ],
)
def test_an_answer_must_echo_the_request_nonce(answer: dict[str, object], nonce: bytes) -> None:
    with pytest.raises(ProtocolError, match="an answer to another request"):
        decode_response(msgpack.packb(answer), nonce)


def test_a_request_nonce_has_one_size() -> None:
    with pytest.raises(ProtocolError, match=f"nonce must be {NONCE_BYTES} bytes"):
        decode_request(msgpack.packb({"service": "web", "revision": 0, "nonce": b"x"}))


def test_the_frame_limits_allow_for_the_seal() -> None:
    def request(name_length: int) -> dict[str, object]:
        return {"service": "s" * name_length, "revision": 1, "nonce": NONCE}

    padding = MAX_REQUEST_BYTES - len(msgpack.packb(request(300)))
    largest = request(300 + padding)
    assert len(msgpack.packb(largest)) == MAX_REQUEST_BYTES
    assert body_of(SEAL.frame(largest, Direction.REQUEST), SEAL, Direction.REQUEST)
    plain = FrameSeal(None)
    assert body_of(frame(largest), plain, Direction.REQUEST)
    with pytest.raises(ProtocolError, match="over the limit"):  # the plaintext limit stays
        plain.reader(Direction.REQUEST).receive_data(frame(request(301 + padding)))
    metadata = {"blob": "x" * (MAX_METADATA_BYTES - 16)}
    encode_metadata(metadata)  # as large as a service may register
    answer = {"revision": 1, "metadata": metadata, "nonce": NONCE}
    assert body_of(SEAL.frame(answer, Direction.RESPONSE), SEAL, Direction.RESPONSE)


def test_metadata_is_checked_on_the_way_in() -> None:
    with pytest.raises(ValueError, match="cannot be encoded with msgpack"):
        encode_metadata({"when": object()})
    with pytest.raises(ValueError, match="over the limit of"):
        encode_metadata({"blob": "x" * MAX_METADATA_BYTES})
    with pytest.raises(ValueError, match="keys must be strings"):
        encode_metadata({1: "x"})  # type: ignore[dict-item]


def test_the_revision_follows_the_contents() -> None:
    assert revision_of(encode_metadata({})) == 0
    one = revision_of(encode_metadata({"zone": "eu"}))
    assert one != 0
    assert one == revision_of(encode_metadata({"zone": "eu"}))
    assert one != revision_of(encode_metadata({"zone": "us"}))


def test_the_cache_hits_only_at_the_instance_revision() -> None:
    cache = MetadataCache(capacity=2)
    web = Instance("web", "a", ("10.0.0.1", 80), revision=5)
    assert cache.get(web) is None
    assert cache.get(Instance("web", "a", ("10.0.0.1", 80))) == {}  # revision 0: no metadata
    cache.put(web, Response(5, {"zone": "eu"}))
    assert cache.get(web) == {"zone": "eu"}
    newer = Instance("web", "a", ("10.0.0.1", 80), revision=6)
    assert cache.get(newer) is None
    for node in "bc":
        cache.put(Instance("web", node, ("10.0.0.2", 80), revision=1), Response(1, {}))
    assert cache.get(web) is None  # evicted, least recently used
