"""UDP packets: the layers memberlist wraps around messages, in both directions.

Sending, from the inside out (``net.go rawSendMsgPacket``): one message or a compound of several;
LZW compression when it makes the packet smaller; a CRC when the receiver speaks protocol 5;
AES-GCM encryption; a label prefix.  Receiving peels the same layers in reverse and returns the
messages, or raises :class:`DecodeError`, in which case the whole packet is dropped.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from swim.wire import lzw
from swim.wire.crypto import Keyring, nonce_of
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import (
    MAX_COMPOUND_PARTS,
    MAX_DECOMPRESSED_BYTES,
    MAX_NESTING,
    MAX_PACKET_BYTES,
    MAX_PACKET_DECOMPRESSED_BYTES,
    MAX_PUSH_STATES,
)
from swim.wire.messages import (
    Compress,
    Message,
    MessageType,
    decode,
    decode_compound,
    encode,
    encode_compound,
)

MAX_MESSAGES_PER_PACKET = 4 * MAX_COMPOUND_PARTS
"""Messages one packet may unfold into, however its compounds and compressions nest."""

_STREAM_ONLY = frozenset(
    {MessageType.PUSH_PULL, MessageType.ENCRYPT, MessageType.HAS_CRC, MessageType.ERR}
)
_CONTAINERS = frozenset(
    bytes((kind,)) for kind in (*_STREAM_ONLY, MessageType.COMPOUND, MessageType.COMPRESS)
)
_LABEL_BYTE = bytes((MessageType.HAS_LABEL,))
_CRC_BYTE = bytes((MessageType.HAS_CRC,))
COMPRESS_MIN_BYTES = 256
"""Smaller packets go uncompressed: a datagram is a datagram, so LZW (pure Python here) would
spend tens of microseconds to save a few bytes.  Gossip packets, which are larger, still shrink."""


@dataclass(frozen=True, slots=True)
class WireOptions:
    """How this node wraps and unwraps its traffic; shared by packets and streams.

    ``verify_incoming=False`` accepts plaintext from peers that do not encrypt yet, and
    ``verify_outgoing=False`` sends plaintext even with a keyring: together they let a running
    cluster migrate to encryption (memberlist's ``GossipVerifyIncoming``/``Outgoing``).
    """

    keyring: Keyring | None = None
    label: bytes = b""
    compress: bool = False
    verify_incoming: bool = True
    verify_outgoing: bool = True
    max_push_states: int = MAX_PUSH_STATES
    """A push-pull announcing more member states is refused before any of them is read."""

    def __post_init__(self) -> None:
        if len(self.label) > 255:
            raise ValueError(f"label is {len(self.label)} bytes; a label is at most 255 bytes")

    @property
    def encrypts(self) -> bool:
        """Whether outgoing traffic is encrypted."""
        return self.keyring is not None and self.verify_outgoing

    def overhead(self) -> int:
        """Bytes the outer layers (label, encryption) add to a packet at most."""
        label = 2 + len(self.label) if self.label else 0
        return label + (1 + 12 + 16 if self.encrypts else 0)


def add_label(label: bytes, payload: bytes) -> bytes:
    """Prefix ``payload`` with ``[244][len][label]`` (nothing when there is no label)."""
    if not label:
        return payload
    return bytes((MessageType.HAS_LABEL, len(label))) + label + payload


def strip_label(data: bytes) -> tuple[bytes, bytes]:
    """Split a label prefix off ``data``: ``(label, rest)``; ``label`` is empty when absent."""
    if not data or data[0] != MessageType.HAS_LABEL:
        return b"", data
    if len(data) < 2 or data[1] == 0:
        raise DecodeError("label: empty or truncated label header")
    end = 2 + data[1]
    if len(data) < end:
        raise DecodeError("label: truncated label")
    return data[2:end], data[end:]


def check_label(options: WireOptions, data: bytes) -> bytes:
    """``data`` without its label, if the label is ours; anything else is refused."""
    label, rest = strip_label(data)
    if label != options.label:
        raise DecodeError(
            f"label mismatch: got {label!r:.40}, expected {options.label!r:.40}"
            if label
            else "label missing"
        )
    return rest


def add_crc(payload: bytes) -> bytes:
    """``[12][crc32 big-endian][payload]`` for receivers speaking protocol 5."""
    return b"\x0c" + zlib.crc32(payload).to_bytes(4, "big") + payload


def check_crc(data: bytes) -> bytes:
    """The payload of a CRC-wrapped packet, if the checksum matches."""
    if len(data) < 5:
        raise DecodeError("crc: truncated header")
    payload = data[5:]
    if zlib.crc32(payload) != int.from_bytes(data[1:5], "big"):
        raise DecodeError("crc: checksum mismatch")
    return payload


def compress_message(message: bytes) -> bytes:
    """``message`` as a compress message (``[9]`` + LZW), whatever its size."""
    return encode(Compress(buf=lzw.compress(message)))


def decompress_message(data: bytes, max_size: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """The message inside a compress message, refused past ``max_size`` bytes."""
    message = decode(data)
    if not isinstance(message, Compress):
        raise DecodeError("expected a compress message")
    if message.algo != 0:
        raise DecodeError(f"unknown compression algorithm {message.algo}")
    return lzw.decompress(message.buf, max_size)


def encode_packet(messages: Sequence[bytes], options: WireOptions, *, crc: bool = False) -> bytes:
    """One datagram carrying ``messages`` (each already encoded, type byte first).

    At most 255 messages fit one packet; :func:`swim.wire.messages.make_compounds` splits more.
    With compression on, a packet of at least :data:`COMPRESS_MIN_BYTES` is compressed when that
    makes it smaller (memberlist tries every packet; receivers accept both).
    """
    if not messages:
        raise EncodeError("a packet needs at least one message")
    if len(messages) > MAX_COMPOUND_PARTS:
        raise EncodeError(
            f"a packet holds at most {MAX_COMPOUND_PARTS} messages, got {len(messages)}"
        )
    payload = messages[0] if len(messages) == 1 else encode_compound(messages)
    if options.compress and len(payload) >= COMPRESS_MIN_BYTES:
        compressed = compress_message(payload)
        if len(compressed) < len(payload):
            payload = compressed
    if crc:
        payload = add_crc(payload)
    if options.encrypts:
        assert options.keyring is not None
        payload = options.keyring.encrypt(payload, options.label)
    return add_label(options.label, payload)


class ReplayedPacket(DecodeError):
    """An encrypted datagram whose nonce was seen recently: a copy of one already accepted."""


class ReplayFilter:
    """The nonces of the last ``capacity`` encrypted datagrams accepted, to refuse exact replays.

    memberlist accepts a captured encrypted ping or ack however often it is sent again; every
    sender draws a fresh random nonce per datagram, so a nonce seen twice means a replay.  The
    window is bounded: a replay older than ``capacity`` datagrams is no longer recognised.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a replay filter needs a capacity of at least 1, got {capacity}")
        self._capacity = capacity
        self._seen: dict[bytes, None] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def first_sighting(self, nonce: bytes) -> bool:
        """Record ``nonce``; False when it is among the recent ones already."""
        seen = self._seen
        if nonce in seen:
            return False
        if len(seen) >= self._capacity:
            del seen[next(iter(seen))]
        seen[nonce] = None
        return True


def decode_packet(
    data: bytes, options: WireOptions, replays: ReplayFilter | None = None
) -> list[Message]:
    """Every message in one datagram, or :class:`DecodeError` if any layer or part is bad.

    With ``replays``, an encrypted datagram whose nonce it has seen raises
    :class:`ReplayedPacket`; its nonce is recorded only once the datagram authenticates.
    """
    if len(data) > MAX_PACKET_BYTES:
        raise DecodeError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
    if options.label or data[:1] == _LABEL_BYTE:
        data = check_label(options, data)
    if options.keyring is not None:
        try:
            sealed, data = data, options.keyring.decrypt(data, options.label)
        except DecodeError:
            if options.verify_incoming:
                raise
        else:
            if replays is not None and not replays.first_sighting(nonce_of(sealed)):
                raise ReplayedPacket("replayed: this encrypted datagram was accepted before")
    if data[:1] == _CRC_BYTE:
        data = check_crc(data)
    if data[:1] in _CONTAINERS:
        out: list[Message] = []
        _unfold(data, out, 0, [MAX_PACKET_DECOMPRESSED_BYTES])
        return out
    return [decode(data)]


def _unfold(
    data: bytes, out: list[Message], depth: int, budget: list[int], compressed: bool = False
) -> None:
    """Append the messages in ``data`` to ``out``, opening compounds and compressions within
    the nesting, message-count and decompressed-size bounds shared by the whole packet."""
    if depth > MAX_NESTING:
        raise DecodeError(f"messages nested deeper than {MAX_NESTING} levels")
    kind = data[0] if data else -1
    if kind == MessageType.COMPOUND:
        for part in decode_compound(data):
            _unfold(part, out, depth + 1, budget, compressed)
    elif kind == MessageType.COMPRESS:
        if compressed:  # memberlist compresses a packet once; nesting only multiplies our work
            raise DecodeError("a compressed message inside a compressed message")
        inner = decompress_message(data, budget[0])
        budget[0] -= len(inner)
        _unfold(inner, out, depth + 1, budget, True)
    elif kind in _STREAM_ONLY:
        raise DecodeError(f"message type {kind} is not allowed inside a packet")
    else:
        if len(out) >= MAX_MESSAGES_PER_PACKET:
            raise DecodeError(f"packet unfolds into more than {MAX_MESSAGES_PER_PACKET} messages")
        out.append(decode(data))
