"""Tests for swim.wire.lzw: Go's compress/lzw (LSB, litWidth 8), byte for byte."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swim.wire.errors import DecodeError
from swim.wire.lzw import compress, decompress

CLEAR = 256
EOF = 257

HELLO = b"hello hello hello hello"
HELLO_GO = bytes.fromhex("00d19461c3e60d0881040d222c787060c180")

# Vectors from Go's src/compress/lzw/reader_test.go (LSB, litWidth 8).
TOBE = b"TOBEORNOTTOBEORTOBEORNOT"
TOBE_NO_CLEAR = bytes.fromhex("549e0829f2448a932754041234b8b0e0c1840101")  # pre-1.17 writer
GIF_RAW = bytes.fromhex("28ffffff28ffffffffffffffffffff")
GIF_LZW = bytes.fromhex("0051fc1b2870a0c1830101")


def pack(codes: list[int]) -> bytes:
    """Pack codes LSB first with the widths Go's reader expects (9 to 12, no early change)."""
    acc = nbits = 0
    width, hi = 9, EOF
    for code in codes:
        acc |= code << nbits
        nbits += width
        if code == CLEAR:
            width, hi = 9, EOF
            continue
        hi += 1
        if hi == 1 << width:
            if width < 12:
                width += 1
            else:
                hi -= 1
    return acc.to_bytes((nbits + 7) // 8, "little")


def sample_data(size: int, seed: int) -> bytes:
    """JSON-ish text with random numbers: compressible, but not trivially."""
    rng = random.Random(seed)
    parts = []
    total = 0
    while total < size:
        part = b'{"node":"n%d","addr":"10.0.%d.%d","inc":%d},' % (
            rng.randrange(50),
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(10**6),
        )
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def test_go_vector_compress() -> None:
    assert compress(HELLO) == HELLO_GO


def test_go_vector_decompress() -> None:
    assert decompress(HELLO_GO) == HELLO


def test_go_gif_vector_both_ways() -> None:
    assert compress(GIF_RAW) == GIF_LZW
    assert decompress(GIF_LZW) == GIF_RAW


def test_compress_is_old_go_output_behind_a_leading_clear() -> None:
    new = compress(TOBE)
    assert int.from_bytes(new, "little") == CLEAR | int.from_bytes(TOBE_NO_CLEAR, "little") << 9


def test_decompress_without_leading_clear() -> None:
    assert decompress(TOBE_NO_CLEAR) == TOBE
    assert decompress(pack([104, 105, 258, EOF])) == b"hihi"
    assert decompress(pack([97, 258, EOF])) == b"aaa"  # KwKwK: the code being defined


def test_empty() -> None:
    assert compress(b"") == pack([CLEAR, EOF]) == bytes.fromhex("000302")
    assert decompress(compress(b"")) == b""
    assert decompress(bytes.fromhex("0101")) == b""  # a bare EOF, from Go's tests


def test_clear_in_the_middle_resets_table() -> None:
    codes = [CLEAR, 97, 98, 258, CLEAR, 99, 258, EOF]
    assert decompress(pack(codes)) == b"ababccc"
    with pytest.raises(DecodeError, match="invalid code"):
        decompress(pack([CLEAR, 97, 98, 258, CLEAR, 259, EOF]))


def test_full_table_stays_at_12_bits() -> None:
    # Go's TestNoLongerSavingPriorExpansions: 3839 zero codes fill the table, then 4095, EOF.
    assert decompress(bytes(5406) + bytes.fromhex("80ff0f08")) == bytes(3841)
    # A full table adds nothing until a Clear, after which codes are 9 bits again.
    codes = [0] * 3839 + [4095, 65, 4095, CLEAR, 67, 258, EOF]
    assert decompress(pack(codes)) == bytes(3839) + b"\0\0A\0\0C" + b"CC"


def test_data_after_eof_is_ignored() -> None:
    assert decompress(compress(b"abc") + b"\xff garbage") == b"abc"


def test_accepts_bytes_like() -> None:
    assert compress(bytearray(HELLO)) == compress(memoryview(HELLO)) == HELLO_GO
    assert decompress(bytearray(HELLO_GO)) == decompress(memoryview(HELLO_GO)) == HELLO


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (b"", "lzw: truncated stream"),
        (TOBE_NO_CLEAR[:11], "lzw: truncated stream"),  # Go: io.ErrUnexpectedEOF
        (pack([CLEAR]), "lzw: truncated stream"),
        (pack([97, 300, EOF]), "lzw: invalid code 300 (next free code 258)"),
        (pack([CLEAR, 258, EOF]), "lzw: invalid code 258 (next free code 258)"),
        (pack([258, EOF]), "lzw: invalid code 258 (next free code 258)"),
    ],
)
def test_bad_streams(stream: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decompress(stream)
    assert info.value.reason == reason


def test_every_truncation_is_an_error() -> None:
    stream = compress(sample_data(3000, seed=1))
    for end in range(len(stream)):
        with pytest.raises(DecodeError, match="truncated"):
            decompress(stream[:end])


@given(st.binary(max_size=3000))
def test_round_trip(data: bytes) -> None:
    assert decompress(compress(data)) == data


@given(st.lists(st.sampled_from([b"a", b"b", b"ab", b"node", b"\0" * 40]), max_size=400))
def test_round_trip_compressible(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert decompress(compress(data)) == data


@pytest.mark.parametrize("size", [7_677, 7_678, 7_679, 40_000])
def test_round_trip_through_table_resets(size: int) -> None:
    # Random bytes take about one code per byte: Go's writer clears every 3838 codes,
    # and sizes near twice that put the final code on either side of the reset.
    data = random.Random(size).randbytes(size)
    stream = compress(data)
    assert decompress(stream) == data
    text = sample_data(size * 8, seed=size)
    assert decompress(compress(text)) == text


def test_size_cap_is_exact() -> None:
    data = sample_data(20_000, seed=3)
    stream = compress(data)
    assert decompress(stream, max_size=len(data)) == data
    with pytest.raises(DecodeError, match=f"exceeds {len(data) - 1} bytes"):
        decompress(stream, max_size=len(data) - 1)


def test_bomb_is_refused_at_the_cap() -> None:
    # Each cycle of KwKwK codes 0, 258, ..., 4094 expands to about 7.4 MB of zeros.
    cycle = [CLEAR, 0, *range(258, 4095)]
    stream = pack(cycle * 4 + [EOF])
    assert len(stream) < 25_000
    with pytest.raises(DecodeError, match="exceeds 1000000 bytes"):
        decompress(stream, max_size=1_000_000)


def _decodes_or_decode_error(stream: bytes) -> None:
    try:
        result = decompress(stream, max_size=100_000)
    except DecodeError:
        return
    assert isinstance(result, bytes)
    assert len(result) <= 100_000


@given(st.binary(max_size=500))
def test_random_input_only_raises_decode_error(stream: bytes) -> None:
    _decodes_or_decode_error(stream)


_VALID = [compress(sample_data(n, seed=n)) for n in (10, 300, 5_000)] + [
    compress(random.Random(9).randbytes(5_000)),
    pack([0] * 3839 + [4095, 65, CLEAR, 66, 258, EOF]),
]


@settings(max_examples=200)
@given(
    st.sampled_from(_VALID),
    st.lists(st.integers(min_value=0), min_size=1, max_size=4),
    st.integers(min_value=0),
)
def test_corrupted_streams_only_raise_decode_error(
    stream: bytes, flips: list[int], cut: int
) -> None:
    corrupted = bytearray(stream)
    for flip in flips:
        bit = flip % (len(corrupted) * 8)
        corrupted[bit // 8] ^= 1 << (bit % 8)
    _decodes_or_decode_error(bytes(corrupted))
    _decodes_or_decode_error(bytes(corrupted[: cut % (len(corrupted) + 1)]))
