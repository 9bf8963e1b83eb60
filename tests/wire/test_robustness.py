"""Hostile bytes: every decoder raises DecodeError and nothing else, quickly and in bounded memory.

Random bytes, bit flips, truncations and inflated length fields go to ``decode``,
``decode_packet`` and ``StreamReader``; compression bombs, nested or not, go to the packet and
stream readers with a clock and ``tracemalloc`` watching.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swim.wire import lzw
from swim.wire.errors import DecodeError
from swim.wire.limits import MAX_PACKET_DECOMPRESSED_BYTES, MAX_STREAM_BYTES
from swim.wire.messages import (
    Compress,
    Message,
    Nack,
    User,
    UserMsgHeader,
    decode,
    encode,
    encode_body,
    encode_compound,
)
from swim.wire.packet import WireOptions, decode_packet, encode_packet
from swim.wire.stream import StreamMessage, StreamReader, encode_stream
from tests.wire import strategies as s
from tests.wire.strategies import compress_bomb, keyring, lzw_sparse, lzw_stream, slow_lzw

MiB = 1 << 20
PACKET_OPTIONS = s.all_options()
PACKET_OPTIONS["crc-label"] = WireOptions(label=s.LABEL)
STREAM_OPTIONS = {
    "plain": WireOptions(),
    "compressed": WireOptions(compress=True),
    "encrypted": WireOptions(keyring=keyring()),
    "all": WireOptions(keyring=keyring(), compress=True, label=s.LABEL),
    "lenient": WireOptions(keyring=keyring(), verify_incoming=False),
}

# Headers announcing far more than follows: msgpack raw/str/bin/map/array, huge integers.
INFLATED_HEADERS = [
    b"\xdb\xff\xff\xff\xff",
    b"\xdb\x7f\xff\xff\xff",
    b"\xda\xff\xff",
    b"\xd9\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xc5\xff\xff",
    b"\xc4\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xde\xff\xff",
    b"\x8f",
    b"\xdd\xff\xff\xff\xff",
    b"\xdc\xff\xff",
    b"\x9f",
    b"\xbf",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\xc7\xff\x01",
    b"\xc9\xff\xff\xff\xff\x01",
]


def only_decode_error(func: Callable[..., object], *args: object) -> None:
    """Call ``func(*args)``; it may succeed or raise DecodeError, and nothing else."""
    try:
        func(*args)
    except Exception as exc:
        assert type(exc) is DecodeError, f"{type(exc).__name__}: {exc}"


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` damaged the way a network or an attacker would: bits flipped, cut short,
    length fields inflated, bytes inserted or replaced."""
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        how = draw(st.sampled_from(["flip", "truncate", "inflate", "insert", "replace"]))
        at = draw(st.integers(min_value=0, max_value=max(len(out) - 1, 0)))
        if how == "flip" and out:
            out[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif how == "truncate":
            del out[at:]
        elif how == "inflate":
            header = draw(
                st.one_of(st.sampled_from(INFLATED_HEADERS), st.binary(min_size=1, max_size=5))
            )
            out[at : at + len(header)] = header
        elif how == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif out:
            out[at] = draw(st.integers(min_value=0, max_value=255))
    return bytes(out)


TYPE_BYTES = st.sampled_from([*range(14), 0xF4, 0xFF])
random_messages = st.builds(lambda t, b: bytes((t,)) + b, TYPE_BYTES, st.binary(max_size=300))
"""Random bytes behind a real type byte, so they get past the first dispatch."""


def read_stream(chunks: list[bytes], options: WireOptions) -> StreamMessage:
    reader = StreamReader(options)
    for chunk in chunks:
        reader.receive_data(chunk)
    return reader.end_of_stream()


@contextmanager
def bounded(megabytes: float) -> Iterator[None]:
    """Fail if the block allocates more than ``megabytes`` at its peak (tracemalloc)."""
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    assert peak < megabytes, f"peak allocation {peak:.0f} MB"


def refused(func: Callable[..., object], *args: object) -> None:
    """Call ``func(*args)``; it must raise DecodeError exactly."""
    with pytest.raises(DecodeError) as info:
        func(*args)
    assert type(info.value) is DecodeError


# ---------------------------------------------------------------------------------------------
# decode()


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), random_messages))
def test_decode_random_bytes(data: bytes) -> None:
    only_decode_error(decode, data)


@settings(max_examples=500, deadline=None)
@given(s.messages.map(encode).flatmap(corrupted))
def test_decode_corrupted_messages(data: bytes) -> None:
    only_decode_error(decode, data)


@pytest.mark.parametrize("header", INFLATED_HEADERS)
def test_decode_inflated_length_anywhere(header: bytes) -> None:
    wire = encode(s.GO_LIKE_ALIVE)
    for at in range(1, len(wire)):
        only_decode_error(decode, wire[:at] + header + wire[at + len(header) :])
        only_decode_error(decode, wire[:at] + header + wire[at:])


@pytest.mark.parametrize(
    "wire",
    [
        b"\x00" + b"\x91" * 100_000,
        b"\x00" + b"\x81\xa1a" * 50_000 + b"\xc0",
        b"\x00\xdf\x00\x01\x00\x01" + b"\xc0\xc0" * 65_537,
        b"\x00\xdd\x00\x01\x00\x01" + b"\xc0" * 65_537,
        b"\x00\xd4\x01\x00",
        b"\x00\xd4\xff\x00",
        b"\x00\xc7\x03\xff\x00\x00\x00",
        b"\x00\xc1",
        b"\x00\x81\x91\x01\x07",
        b"\x00\x81\x81\x01\x02\x07",
    ],
    ids=[
        "deep arrays",
        "deep maps",
        "map over the entry limit",
        "array over the entry limit",
        "ext type",
        "bad timestamp",
        "bad timestamp ext8",
        "reserved byte",
        "list as map key",
        "map as map key",
    ],
)
def test_hostile_msgpack_is_refused_everywhere(wire: bytes) -> None:
    refused(decode, wire)
    refused(decode_packet, wire, WireOptions())
    refused(read_stream, [wire], WireOptions())


def test_compound_lengths_that_disagree_with_the_data_are_refused() -> None:
    parts = [encode(Nack(seq_no=i)) for i in range(3)]  # 9 bytes each
    wire = bytearray(encode_compound(parts))
    for index in range(3):
        for length in (0, 1, 8, 10, 0xFFFF):
            bad = bytearray(wire)
            bad[2 + 2 * index : 4 + 2 * index] = length.to_bytes(2, "big")
            refused(decode, bytes(bad))
            refused(decode_packet, bytes(bad), WireOptions())
    for count in (0, 1, 2, 4, 255):
        wire[1] = count
        refused(decode, bytes(wire))
        refused(decode_packet, bytes(wire), WireOptions())


# ---------------------------------------------------------------------------------------------
# decode_packet()


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.binary(max_size=300), random_messages),
    st.sampled_from(sorted(PACKET_OPTIONS)),
)
def test_packet_random_bytes(data: bytes, option: str) -> None:
    only_decode_error(decode_packet, data, PACKET_OPTIONS[option])


@st.composite
def packets(draw: st.DrawFn) -> tuple[bytes, str]:
    option = draw(st.sampled_from(sorted(PACKET_OPTIONS)))
    messages = draw(st.lists(s.packet_messages, min_size=1, max_size=6))
    wire = encode_packet(
        [encode(m) for m in messages], PACKET_OPTIONS[option], crc=draw(st.booleans())
    )
    return wire, option


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets().flatmap(lambda p: st.tuples(corrupted(p[0]), st.just(p[1]))))
def test_packet_corrupted(case: tuple[bytes, str]) -> None:
    data, option = case
    only_decode_error(decode_packet, data, PACKET_OPTIONS[option])


@st.composite
def lzw_payloads(draw: st.DrawFn) -> bytes:
    """A compress message whose LZW stream is damaged (the msgpack around it is intact)."""
    messages = draw(st.lists(s.packet_messages, min_size=1, max_size=4))
    inner = encode_compound([encode(m) for m in messages])
    return encode(Compress(buf=draw(corrupted(lzw.compress(inner)))))


@settings(max_examples=300, deadline=None)
@given(lzw_payloads())
def test_packet_with_corrupted_lzw(data: bytes) -> None:
    only_decode_error(decode_packet, data, WireOptions())


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=64).map(lambda b: b"\x00" + b * 200))
def test_packet_with_random_lzw_codes(codes: bytes) -> None:
    only_decode_error(decode_packet, encode(Compress(buf=codes)), WireOptions())


# ---------------------------------------------------------------------------------------------
# StreamReader


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=300), random_messages),
    st.sampled_from(sorted(STREAM_OPTIONS)),
    st.integers(min_value=1, max_value=64),
)
def test_stream_random_bytes(data: bytes, option: str, chunk: int) -> None:
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    only_decode_error(read_stream, chunks, STREAM_OPTIONS[option])


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], str]:
    option = draw(st.sampled_from(sorted(STREAM_OPTIONS)))
    wire = draw(corrupted(encode_stream(draw(s.stream_messages), STREAM_OPTIONS[option])))
    chunk = draw(st.integers(min_value=1, max_value=max(len(wire), 1)))
    return [wire[i : i + chunk] for i in range(0, len(wire), chunk)], option


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_stream_corrupted(case: tuple[list[bytes], str]) -> None:
    chunks, option = case
    only_decode_error(read_stream, chunks, STREAM_OPTIONS[option])


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=100))
def test_stream_encrypted_length_inflated(length: int, body: bytes) -> None:
    wire = b"\x0a" + length.to_bytes(4, "big") + body
    only_decode_error(read_stream, [wire], WireOptions(keyring=keyring()))


def test_stream_header_lengths_inflated_in_every_position() -> None:
    message = s.GO_LIKE_PUSH_PULL
    wire = encode_stream(message, WireOptions())
    for header in INFLATED_HEADERS:
        for at in range(1, len(wire)):
            bad = wire[:at] + header + wire[at + len(header) :]
            only_decode_error(read_stream, [bad], WireOptions())


# ---------------------------------------------------------------------------------------------
# Compression bombs


def test_single_compress_bomb_is_refused_quickly_in_bounded_memory() -> None:
    packet = compress_bomb(b"\x08", 64 * MiB)
    assert len(packet) < 65_536
    with bounded(megabytes=100):
        refused(decode_packet, packet, WireOptions())


def test_bomb_behind_crc_encryption_and_label_is_refused() -> None:
    options = WireOptions(keyring=keyring(), label=s.LABEL)
    packet = encode_packet([compress_bomb(b"\x08", 64 * MiB)], options, crc=True)
    with bounded(megabytes=100):
        refused(decode_packet, packet, options)


def test_a_datagram_bomb_is_refused_at_the_size_of_a_datagram() -> None:
    """A sender compresses a packet it built to fit a datagram, so the budget is a datagram's
    size: a bomb costs a few hundred codes of work, not 40 MiB of output."""
    packet = compress_bomb(b"\x08", 64 * MiB)
    with pytest.raises(DecodeError, match=f"exceeds {MAX_PACKET_DECOMPRESSED_BYTES} bytes"):
        decode_packet(packet, WireOptions())


def test_compound_of_bombs_shares_one_budget() -> None:
    """Each part alone is under the limit; together they are not."""
    part_size = MAX_PACKET_DECOMPRESSED_BYTES // 8
    part = compress_bomb(b"\x08", part_size - 16)
    count = MAX_PACKET_DECOMPRESSED_BYTES // part_size + 1
    packet = encode_compound([part] * count)
    assert len(packet) < 65_536
    assert decode_packet(encode_compound([part] * (count - 1)), WireOptions()) == [
        User(bytes(part_size - 16))
    ] * (count - 1)
    with bounded(megabytes=100):
        refused(decode_packet, packet, WireOptions())


def test_compress_of_compound_of_bombs_is_refused() -> None:
    part = compress_bomb(b"\x08", 7 * MiB)
    inner = encode_compound([part] * 7)  # 49 MiB once every part is opened
    packet = encode(Compress(buf=lzw.compress(inner)))
    assert len(packet) < 65_536
    with bounded(megabytes=100):
        refused(decode_packet, packet, WireOptions())


def test_compress_compound_compress_compound_of_bombs_is_refused() -> None:
    bomb = compress_bomb(b"\x08", 12 * MiB)
    level2 = encode(Compress(buf=lzw.compress(encode_compound([bomb] * 2))))
    level1 = encode_compound([level2] * 2)  # 4 bombs: 48 MiB, nested 4 deep
    packet = encode(Compress(buf=lzw.compress(level1)))
    assert len(packet) < 65_536
    with bounded(megabytes=100):
        refused(decode_packet, packet, WireOptions())


def test_compress_of_compress_chain_is_refused() -> None:
    message = compress_bomb(b"\x08", 30 * MiB)
    for _ in range(5):
        message = encode(Compress(buf=lzw.compress(message)))
    with bounded(megabytes=100):
        refused(decode_packet, message, WireOptions())


def test_compress_expanding_to_a_huge_compound_is_refused() -> None:
    """A compound header announcing 255 parts of 65535 bytes, then zeros: 16 MiB of bad parts."""
    table = b"".join((0xFFFF).to_bytes(2, "big") for _ in range(255))
    data = b"\x07\xff" + table + bytes(255 * 0xFFFF)
    packet = encode(Compress(buf=lzw_sparse(data)))
    with bounded(megabytes=100):
        refused(decode_packet, packet, WireOptions())


def test_accepted_packet_near_the_limit_is_decoded_within_a_megabyte() -> None:
    size = MAX_PACKET_DECOMPRESSED_BYTES - 16
    packet = compress_bomb(b"\x08", size - 1)
    with bounded(megabytes=1):
        messages = decode_packet(packet, WireOptions())
    assert [len(m.payload) for m in messages if isinstance(m, User)] == [size - 1]


@pytest.mark.parametrize("option", ["compressed", "all"])
def test_stream_compress_bomb_is_refused(option: str) -> None:
    options = STREAM_OPTIONS[option]
    plain = b"\x08" + encode_body(UserMsgHeader(MAX_STREAM_BYTES))
    wire = encode(Compress(buf=lzw_stream(plain, 64 * MiB)))
    if options.keyring is not None:
        header = b"\x0a" + (1 + 12 + len(wire) + 16).to_bytes(4, "big")
        wire = header + options.keyring.encrypt(wire, header + options.label)
    if options.label:
        wire = bytes((244, len(options.label))) + options.label + wire
    with bounded(megabytes=100):
        refused(read_stream, [wire], options)


def test_a_compress_inside_a_compress_is_refused() -> None:
    """memberlist compresses a packet once; accepting nested compression would let a 20 KB
    packet cost 255 full LZW decodes (seconds of CPU), so it is refused before any of them."""
    inner = encode(Compress(buf=slow_lzw(b"\x08", 2_000)))
    compound = encode_compound([inner] * 16)
    assert len(compound) < MAX_PACKET_DECOMPRESSED_BYTES
    packet = encode(Compress(buf=lzw_sparse(compound)))
    with pytest.raises(DecodeError, match="inside a compressed message"):
        decode_packet(packet, WireOptions())


def test_message_types_survive_a_full_round_of_options() -> None:
    """Sanity check of the fixtures the fuzzers damage: they decode when intact."""
    for option, options in PACKET_OPTIONS.items():
        messages: list[Message] = [Nack(seq_no=1), s.GO_LIKE_ALIVE]
        wire = encode_packet([encode(m) for m in messages], options)
        assert decode_packet(wire, options) == messages, option
    for option, options in STREAM_OPTIONS.items():
        assert read_stream([encode_stream(s.GO_LIKE_PUSH_PULL, options)], options) == (
            s.GO_LIKE_PUSH_PULL
        ), option
