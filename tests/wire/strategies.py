"""Hypothesis strategies and small builders shared by the wire-layer tests.

The message strategies draw only values a Go peer could send: uint32 sequence numbers and
incarnations, uint16 ports, 4- or 16-byte addresses, 6-byte version arrays, any unicode
names and any bytes for metadata and payloads.  :class:`LzwWriter` crafts LZW code streams
code by code, for hostile inputs that no honest encoder would produce.
"""

from __future__ import annotations

import re

import msgpack
from hypothesis import strategies as st

from swim.wire.crypto import Keyring
from swim.wire.messages import (
    Ack,
    Alive,
    Compound,
    Compress,
    Dead,
    Err,
    IndirectPing,
    Message,
    Nack,
    NodeState,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    User,
    UserMsgHeader,
    encode,
)
from swim.wire.packet import WireOptions
from swim.wire.stream import PushPull, StreamMessage

# ---------------------------------------------------------------------------------------------
# Field values

uint32s = st.integers(min_value=0, max_value=2**32 - 1)
uint16s = st.integers(min_value=0, max_value=2**16 - 1)
uint8s = st.integers(min_value=0, max_value=255)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
addrs = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
vsns = st.binary(min_size=6, max_size=6)
# Any text that UTF-8 can carry (lone surrogates cannot be put on the wire at all).
names = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
blobs = st.binary(max_size=300)
node_states = st.sampled_from(list(NodeState))

# ---------------------------------------------------------------------------------------------
# Messages

pings = st.builds(
    Ping,
    seq_no=uint32s,
    node=names,
    source_addr=st.one_of(st.just(b""), addrs),
    source_port=uint16s,
    source_node=names,
)
indirect_pings = st.builds(
    IndirectPing,
    seq_no=uint32s,
    target=addrs,
    port=uint16s,
    node=names,
    nack=st.booleans(),
    source_addr=st.one_of(st.just(b""), addrs),
    source_port=uint16s,
    source_node=names,
)
acks = st.builds(Ack, seq_no=uint32s, payload=blobs)
nacks = st.builds(Nack, seq_no=uint32s)
suspects = st.builds(Suspect, incarnation=uint32s, node=names, from_node=names)
alives = st.builds(
    Alive, incarnation=uint32s, node=names, addr=addrs, port=uint16s, vsn=vsns, meta=blobs
)
deads = st.builds(Dead, incarnation=uint32s, node=names, from_node=names)
push_pull_headers = st.builds(
    PushPullHeader, nodes=int64s, user_state_len=int64s, join=st.booleans()
)
compresses = st.builds(Compress, buf=blobs, algo=uint8s)
errs = st.builds(Err, error=names)
users = st.builds(User, payload=blobs)

simple_messages: st.SearchStrategy[Message] = st.one_of(
    pings, indirect_pings, acks, nacks, suspects, alives, deads, push_pull_headers, errs, users
)
"""Every message kind except the two containers."""

compounds = st.builds(
    Compound,
    parts=st.lists(simple_messages.map(encode), max_size=8).map(tuple),
)
messages: st.SearchStrategy[Message] = st.one_of(simple_messages, compresses, compounds)
"""Every message kind that starts with its own type byte."""

push_node_states = st.builds(
    PushNodeState,
    name=names,
    addr=addrs,
    port=uint16s,
    incarnation=uint32s,
    state=node_states,
    vsn=vsns,
    meta=blobs,
)
user_msg_headers = st.builds(UserMsgHeader, user_msg_len=int64s)

# Messages a memberlist peer can put in a packet (stream-only ones are refused there).
packet_messages: st.SearchStrategy[Message] = st.one_of(
    pings, indirect_pings, acks, nacks, suspects, alives, deads, users
)

push_pulls = st.builds(
    PushPull,
    states=st.lists(push_node_states, max_size=5),
    user_state=blobs,
    join=st.booleans(),
)
stream_messages: st.SearchStrategy[StreamMessage] = st.one_of(push_pulls, pings, acks, users, errs)

# ---------------------------------------------------------------------------------------------
# Options

KEY = bytes(range(16))
OTHER_KEY = bytes(range(100, 132))
LABEL = b"pool-a"


def keyring(*keys: bytes) -> Keyring:
    """A keyring holding ``keys`` (default: :data:`KEY`), the first one primary."""
    return Keyring(list(keys) or [KEY])


def all_options() -> dict[str, WireOptions]:
    """One of every interesting option set, by name."""
    return {
        "plain": WireOptions(),
        "compress": WireOptions(compress=True),
        "keyring": WireOptions(keyring=keyring()),
        "label": WireOptions(label=LABEL),
        "all": WireOptions(keyring=keyring(), label=LABEL, compress=True),
        "lenient": WireOptions(keyring=keyring(), verify_incoming=False, compress=True),
    }


# ---------------------------------------------------------------------------------------------
# Raw msgpack building blocks, for encodings our encoder never writes but Go accepts


def packed(obj: object) -> bytes:
    """``obj`` as go-msgpack writes it (raw strings, smallest ints)."""
    result: bytes = msgpack.packb(obj, use_bin_type=False)
    return result


def str8(data: bytes) -> bytes:
    """``data`` as a msgpack str8 (0xd9), which go-msgpack never writes but accepts."""
    return b"\xd9" + bytes((len(data),)) + data


def bin8(data: bytes) -> bytes:
    return b"\xc4" + len(data).to_bytes(1, "big") + data


def bin16(data: bytes) -> bytes:
    return b"\xc5" + len(data).to_bytes(2, "big") + data


def bin32(data: bytes) -> bytes:
    return b"\xc6" + len(data).to_bytes(4, "big") + data


def struct_bytes(fields: dict[str, bytes], type_byte: int | None = None) -> bytes:
    """A msgpack map from field names to already packed values, after an optional type byte."""
    assert len(fields) < 16
    out = bytearray() if type_byte is None else bytearray((type_byte,))
    out.append(0x80 | len(fields))
    for key, value in fields.items():
        out += packed(key.encode()) + value
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# LZW streams crafted code by code

_CLEAR = 256
_EOF = 257
_TABLE_SIZE = 4096


class LzwWriter:
    """Writes a Go-flavoured LZW stream (LSB first, 8-bit literals, 9 to 12-bit codes) one
    code at a time, tracking the dictionary the decoder builds so that any code sequence can
    be written, including ones no encoder would choose.

    Only what the bombs need is tracked: each entry's length and whether it is a run of
    zeros; :meth:`zeros` uses the longest zero runs known to emit ``n`` zeros in few codes.
    """

    def __init__(self) -> None:
        self._out = bytearray()
        self._acc = 0
        self._nbits = 0
        self._width = 9
        self._next = 258
        self._prev: tuple[int, bool] | None = None  # (length, is a zero run) of the last code
        self._entries: list[tuple[int, bool]] = []
        self._runs: dict[int, int] = {}  # zero-run length -> code
        self._longest_run = 1
        self.output_size = 0
        """How many bytes the stream written so far decompresses to."""
        self._reset()

    def _reset(self) -> None:
        self._entries = [(1, i == 0) for i in range(256)] + [(0, False), (0, False)]
        self._runs = {1: 0}
        self._longest_run = 1
        self._width = 9
        self._next = 258
        self._prev = None

    def _put(self, code: int) -> None:
        self._acc |= code << self._nbits
        self._nbits += self._width
        while self._nbits >= 8:
            self._out.append(self._acc & 0xFF)
            self._acc >>= 8
            self._nbits -= 8

    def clear(self) -> None:
        """Emit a Clear code: the decoder forgets every entry and goes back to 9 bits."""
        self._put(_CLEAR)
        self._reset()

    def code(self, code: int) -> None:
        """Emit ``code``, which must be defined, or be the next one (the KwKwK case)."""
        if code < self._next:
            entry = self._entries[code]
            assert entry[0] > 0, "Clear and EOF have their own methods"
        else:
            assert code == self._next and self._prev is not None
            length, zero_run = self._prev
            entry = (length + 1, zero_run)
        self._put(code)
        self.output_size += entry[0]
        if self._prev is not None and self._next < _TABLE_SIZE:
            plen, pzero = self._prev
            new = (plen + 1, pzero and entry[1])
            self._entries.append(new)
            if new[1] and new[0] not in self._runs:
                self._runs[new[0]] = self._next
                self._longest_run = max(self._longest_run, new[0])
            self._next += 1
            if self._next == 1 << self._width and self._width < 12:
                self._width += 1
        self._prev = entry

    def literals(self, data: bytes) -> None:
        """Emit one literal code per byte of ``data``."""
        for byte in data:
            self.code(byte)

    def zeros(self, count: int) -> None:
        """Emit codes that decompress to exactly ``count`` zero bytes, as few as it can."""
        while count > 0:
            # Zero runs are born one longer than an existing run, so lengths 1..max are known.
            best = min(count, self._longest_run)
            prev = self._prev
            grow = prev is not None and prev[1] and self._next < _TABLE_SIZE
            if grow and prev is not None and best < prev[0] + 1 <= count:
                best = prev[0] + 1
                self.code(self._next)
            else:
                self.code(self._runs[best])
            count -= best

    def finish(self) -> bytes:
        """Emit EOF and return the whole stream."""
        self._put(_EOF)
        if self._nbits:
            self._out.append(self._acc & 0xFF)
        self._acc = self._nbits = 0
        return bytes(self._out)


def lzw_stream(prefix: bytes, zeros: int) -> bytes:
    """An LZW stream that decompresses to ``prefix`` followed by ``zeros`` zero bytes."""
    writer = LzwWriter()
    writer.clear()
    writer.literals(prefix)
    writer.zeros(zeros)
    return writer.finish()


def compress_bomb(prefix: bytes, zeros: int) -> bytes:
    """A compress message expanding to ``prefix`` + ``zeros`` zero bytes, in few bytes."""
    return encode(Compress(buf=lzw_stream(prefix, zeros)))


def lzw_sparse(data: bytes) -> bytes:
    """``data`` LZW-compressed cheaply when it is mostly zeros: runs of zeros through
    :meth:`LzwWriter.zeros`, everything else as literals."""
    writer = LzwWriter()
    writer.clear()
    start = 0
    for run in re.finditer(rb"\x00{16,}", data):
        writer.literals(data[start : run.start()])
        writer.zeros(run.end() - run.start())
        start = run.end()
    writer.literals(data[start:])
    return writer.finish()


def slow_lzw(prefix: bytes, codes: int) -> bytes:
    """An LZW stream of ``prefix`` then ``codes`` literal zero codes: a decoder does one step
    per output byte, and the stream itself is almost all zero bytes."""
    writer = LzwWriter()
    writer.clear()
    writer.literals(prefix)
    for _ in range(codes):
        writer.code(0)
    return writer.finish()


# ---------------------------------------------------------------------------------------------
# Typical, intact messages for the fuzzers to damage

GO_LIKE_ALIVE = Alive(
    incarnation=1,
    node="node-a",
    addr=bytes([10, 0, 0, 1]),
    port=7946,
    vsn=bytes([1, 5, 2, 2, 5, 4]),
    meta=b"\xff" * 40,
)
GO_LIKE_PUSH_PULL = PushPull(
    states=[
        PushNodeState(
            name=f"node-{i}",
            addr=bytes([10, 0, 0, i]),
            port=7946,
            incarnation=i,
            state=NodeState(i % 4),
            vsn=bytes([1, 5, 2, 2, 5, 4]),
            meta=b"\xff\x81\xa4role\xa3web",
        )
        for i in range(3)
    ],
    user_state=b"\x00user state",
    join=True,
)
