"""LZW as memberlist uses it: Go's ``compress/lzw`` with LSB bit order and 8-bit literals.

This is the GIF flavour: codes 0-255 are literals, 256 is Clear, 257 is EOF and new
entries start at 258.  Codes are 9 to 12 bits wide, packed least-significant bit first,
and the decoder reads one bit wider once its next entry to define reaches ``2**width``
(no "early change").  :func:`compress` reproduces Go's writer byte for byte: a leading Clear,
a Clear (and restart at 9 bits) when the next entry would be 4095, then EOF and zero
padding.  :func:`decompress` follows Go's reader, including a full table (4096 entries,
as other GIF encoders leave it) that stays at 12 bits and stops growing until a Clear.

Both are pure Python; the magic numbers in the hot loops are literals on purpose
(256 Clear, 257 EOF, 258 first entry, 4095 Go's last usable code, 4096 table size).
"""

from collections.abc import Callable

from swim.wire.errors import DecodeError
from swim.wire.limits import MAX_DECOMPRESSED_BYTES

_CLEAR = 256
_EOF = 257
_LITERALS: list[bytes | None] = [bytes((i,)) for i in range(256)] + [None, None]
"""A fresh decoder table: the literals, then placeholders for Clear and EOF."""


def compress(data: bytes | bytearray | memoryview) -> bytes:
    """Compress ``data`` exactly as Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` does."""
    data = bytes(data)
    out = bytearray()
    acc = _CLEAR  # bit buffer, least significant bit first; starts with the leading Clear
    nbits = 9
    width = 9
    if data:
        table: dict[int, int] = {}  # prefix code << 8 | next byte -> code
        get = table.get
        nxt = 258  # the code the next new entry gets
        overflow = 512
        code = data[0]
        for x in data[1:]:
            key = code << 8 | x
            found = get(key)
            if found is not None:
                code = found
                continue
            acc |= code << nbits
            nbits += width
            if nbits >= 64:
                out += (acc & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
                acc >>= 64
                nbits -= 64
            if nxt == overflow:
                width += 1
                overflow <<= 1
            if nxt == 4095:  # Go clears rather than assign its maxCode
                acc |= 256 << nbits
                nbits += width
                width = 9
                overflow = 512
                nxt = 258
                table.clear()
            else:
                table[key] = nxt
                nxt += 1
            code = x
        # Go's Close: the pending code, the same bookkeeping (it may widen or Clear), then EOF.
        acc |= code << nbits
        nbits += width
        if nxt == overflow:
            width += 1
        elif nxt == 4095:
            acc |= _CLEAR << nbits
            nbits += width
            width = 9
    acc |= _EOF << nbits
    nbits += width
    out += acc.to_bytes((nbits + 7) >> 3, "little")
    return bytes(out)


def _table_full(entry: bytes) -> None:
    """Stand in for the table's ``append`` once it holds 4096 entries: Go adds no more."""


def decompress(
    data: bytes | bytearray | memoryview, max_size: int = MAX_DECOMPRESSED_BYTES
) -> bytes:
    """Decompress a Go LZW (LSB, 8-bit) stream, refusing output longer than ``max_size``.

    Raises :class:`DecodeError` for a stream that ends before its EOF code, holds an
    invalid code, or would decompress to more than ``max_size`` bytes (checked before
    each piece of output is added).  Anything after the EOF code is ignored, as in Go.

    Codes are unpacked in batches that end where the code width may change, so the
    per-code loop only does table work; a Clear restarts batching after itself.
    """
    data = bytes(data)
    total_bits = len(data) * 8
    from_bytes = int.from_bytes
    table = _LITERALS.copy()
    append: Callable[[bytes], None] = table.append
    out = bytearray()
    size = 0
    bitpos = 0
    width = 9
    limit = 512  # 1 << width
    nxt = 258  # the next entry to define
    prev: bytes | None = None  # the previous code's expansion, None right after a Clear
    batch_cap = 8  # small after a Clear, so a stream of Clears costs little to unpack
    while True:
        # Codes left at this width: every code but the first after a Clear adds an entry.
        left = limit - nxt + (prev is None) if nxt < 4096 else 4096
        count = min(left, batch_cap, (total_bits - bitpos) // width)
        if count == 0:
            raise DecodeError("lzw: truncated stream")
        if batch_cap < 4096:
            batch_cap <<= 1
        start = bitpos >> 3
        bits = from_bytes(data[start : (bitpos + count * width + 7) >> 3], "little")
        groups = (count + 7) >> 3  # 8 codes fill exactly `width` bytes
        aligned = (bits >> (bitpos & 7)).to_bytes(groups * width + 1, "little")
        mask = limit - 1
        shifts = range(0, 8 * width, width)
        codes = [
            (group >> shift) & mask
            for group in [
                from_bytes(aligned[i : i + width], "little")
                for i in range(0, groups * width, width)
            ]
            for shift in shifts
        ]
        del codes[count:]
        for code in codes:
            if code < nxt:
                entry = table[code]
                if entry is None:
                    if code == 257:
                        return bytes(out)
                    break  # Clear
            elif code == nxt and prev is not None:
                entry = prev + prev[:1]
            else:
                raise DecodeError(f"lzw: invalid code {code} (next free code {nxt})")
            size += len(entry)
            if size > max_size:
                raise DecodeError(f"lzw: decompressed size exceeds {max_size} bytes")
            out += entry
            if prev is not None:
                append(prev + entry[:1])
                nxt += 1
            prev = entry
        else:
            bitpos += count * width
            if nxt == limit:
                if width < 12:
                    width += 1
                    limit <<= 1
                else:  # full; nxt counts on past 4096, so every 12-bit code stays valid
                    append = _table_full
            continue
        bitpos += (codes.index(_CLEAR) + 1) * width
        del table[258:]
        append = table.append
        width = 9
        limit = 512
        nxt = 258
        prev = None
        batch_cap = 8
