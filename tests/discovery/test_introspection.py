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
    FrameReader,
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
