"""TCP streams: push-pull, the fallback ping and its ack, reliable user messages, errors.

A memberlist stream carries one message each way and has no length prefix in plaintext: the
type byte, then msgpack objects, then raw bytes whose length an object announced.  Compressed, it
is ``[9]`` + a compress message holding that; encrypted, ``[10][uint32 length][payload]`` with the
five header bytes (and the label) as associated data.  :class:`StreamReader` parses any of these
incrementally as bytes arrive; :func:`encode_stream` writes them
(:func:`stream_body` and :func:`seal_stream` are its two halves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from swim.wire import lzw, structs
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import MAX_DECOMPRESSED_BYTES, MAX_STREAM_BYTES
from swim.wire.messages import (
    Ack,
    Compress,
    Err,
    MessageType,
    Ping,
    PushNodeState,
    PushPullHeader,
    User,
    UserMsgHeader,
    encode,
)
from swim.wire.packet import WireOptions, add_label, check_label, compress_message


@dataclass(slots=True)
class PushPull:
    """One side of an anti-entropy exchange: every member we know, then the delegate's state."""

    states: list[PushNodeState] = field(default_factory=list)
    user_state: bytes = b""
    join: bool = False


StreamMessage = PushPull | Ping | Ack | User | Err
"""What one stream carries."""

_PING_CODEC = structs.StructCodec(Ping)
_ACK_CODEC = structs.StructCodec(Ack)
_ERR_CODEC = structs.StructCodec(Err)
_HEADER_CODEC = structs.StructCodec(PushPullHeader)
_STATE_CODEC = structs.StructCodec(PushNodeState)
_USER_HEADER_CODEC = structs.StructCodec(UserMsgHeader)


def encode_plain(message: StreamMessage) -> bytes:
    """The stream's plaintext: type byte, msgpack objects, raw trailing bytes."""
    if isinstance(message, PushPull):
        header = PushPullHeader(len(message.states), len(message.user_state), message.join)
        states = b"".join(_STATE_CODEC.encode(state) for state in message.states)
        return encode(header) + states + message.user_state
    if isinstance(message, User):
        return (
            b"\x08"
            + _USER_HEADER_CODEC.encode(UserMsgHeader(len(message.payload)))
            + (message.payload)
        )
    return encode(message)


def encode_stream(message: StreamMessage, options: WireOptions) -> bytes:
    """Every byte to write on a stream for ``message``: compressed whenever compression is on
    (as memberlist does for streams), encrypted when the options say so, labelled."""
    return seal_stream(stream_body(message, options), options)


def stream_body(message: StreamMessage, options: WireOptions) -> bytes:
    """The part of :func:`encode_stream` that depends on the message alone (its plaintext,
    compressed when compression is on), so that a sender may keep and reuse it."""
    payload = encode_plain(message)
    return compress_message(payload) if options.compress else payload


def seal_stream(body: bytes, options: WireOptions) -> bytes:
    """The bytes to write for a :func:`stream_body`: encrypted with a fresh nonce when the
    options say so, labelled."""
    if options.encrypts:
        assert options.keyring is not None
        length = 1 + 12 + len(body) + 16
        if length > MAX_STREAM_BYTES:
            raise EncodeError(f"stream of {length} bytes exceeds {MAX_STREAM_BYTES}")
        header = b"\x0a" + length.to_bytes(4, "big")
        body = header + options.keyring.encrypt(body, header + options.label)
    elif len(body) > MAX_STREAM_BYTES:
        raise EncodeError(f"stream of {len(body)} bytes exceeds {MAX_STREAM_BYTES}")
    return add_label(options.label, body)


class _PlainParser:
    """Parses one plaintext stream message from bytes fed in pieces."""

    def __init__(self, max_bytes: int, max_states: int) -> None:
        self._max_states = max_states
        self._unpacker = structs.unpacker(max_bytes)
        self._raw = bytearray()  # every byte after the type byte, to slice raw trailers from
        self._kind = -1
        self._header: PushPullHeader | UserMsgHeader | None = None
        self._states: list[PushNodeState] = []

    def feed(self, data: bytes) -> StreamMessage | None:
        """Add bytes; the message once it is complete."""
        if not data:
            return None
        if self._kind < 0:
            self._kind, data = data[0], data[1:]
            if self._kind not in _PLAIN_KINDS:
                raise DecodeError(f"stream: unexpected message type {self._kind}")
        self._raw += data
        try:
            self._unpacker.feed(data)
            return self._advance()
        except msgpack.OutOfData:
            return None
        except DecodeError:
            raise
        except Exception as exc:  # msgpack's many error types for malformed input
            raise DecodeError(f"stream: bad msgpack: {type(exc).__name__}") from None

    def _advance(self) -> StreamMessage | None:
        unpack = self._unpacker.unpack
        if self._kind == MessageType.PING:
            return _PING_CODEC.build(unpack())
        if self._kind == MessageType.ACK:
            return _ACK_CODEC.build(unpack())
        if self._kind == MessageType.ERR:
            return _ERR_CODEC.build(unpack())
        if self._kind == MessageType.USER:
            if self._header is None:
                self._header = _USER_HEADER_CODEC.build(unpack())
                _check_length("user message", self._header.user_msg_len, MAX_STREAM_BYTES)
            assert isinstance(self._header, UserMsgHeader)
            payload = self._trailer(self._header.user_msg_len)
            return None if payload is None else User(payload)
        # push-pull: header, node states, then the user state
        if self._header is None:
            self._header = _HEADER_CODEC.build(unpack())
            if not 0 <= self._header.nodes <= self._max_states:
                raise DecodeError(
                    f"stream: the push-pull announces {self._header.nodes} members, over the "
                    f"{self._max_states} this node holds at most"
                )
            _check_length("push-pull user state", self._header.user_state_len, MAX_STREAM_BYTES)
        assert isinstance(self._header, PushPullHeader)
        while len(self._states) < self._header.nodes:
            self._states.append(_STATE_CODEC.build(unpack()))
        user_state = self._trailer(self._header.user_state_len)
        if user_state is None:
            return None
        return PushPull(self._states, user_state, self._header.join)

    def _trailer(self, length: int) -> bytes | None:
        start = self._unpacker.tell()
        if len(self._raw) - start < length:
            return None
        return bytes(self._raw[start : start + length])


_PLAIN_KINDS = frozenset(
    {MessageType.PUSH_PULL, MessageType.PING, MessageType.ACK, MessageType.USER, MessageType.ERR}
)


def _check_length(what: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise DecodeError(f"stream: {what} {value} outside 0..{limit}")


def _parse_complete(data: bytes, max_bytes: int, max_states: int) -> StreamMessage:
    message = _PlainParser(max_bytes, max_states).feed(data)
    if message is None:
        raise DecodeError("stream: truncated message")
    return message


class StreamReader:
    """Incrementally reads the one message a peer sends on a stream.

    Feed bytes as they arrive with :meth:`receive_data`; it returns the message once complete
    and ``None`` until then.  Call :meth:`end_of_stream` when the peer closes: it raises if the
    message was cut short.  Raises only :class:`DecodeError`; a plaintext stream is refused when
    the options require encryption.  Bytes after the message are ignored, as memberlist does.
    Each byte is looked at a bounded number of times, however the stream is split.
    """

    def __init__(self, options: WireOptions) -> None:
        self._options = options
        self._buffer = bytearray()  # the label and the first bytes, then an encrypted payload
        self._received = 0
        self._body_bytes = 0
        self._label_checked = False
        self._plain: _PlainParser | None = None
        self._compressed: msgpack.Unpacker | None = None
        self._message: StreamMessage | None = None

    def receive_data(self, data: bytes) -> StreamMessage | None:
        """Add bytes from the peer; the message once it is complete."""
        if self._message is not None:
            return self._message
        self._received += len(data)
        if self._received > MAX_STREAM_BYTES + 5 + 257:
            raise DecodeError(f"stream exceeds {MAX_STREAM_BYTES} bytes")
        if self._plain is not None:
            self._count(len(data))
            self._message = self._plain.feed(data)
        elif self._compressed is not None:
            self._count(len(data))
            self._message = self._feed_compressed(data)
        else:
            self._buffer += data
            self._message = self._advance()
        return self._message

    def end_of_stream(self) -> StreamMessage:
        """The message, once the peer has closed; raises if it never arrived whole."""
        if self._message is None:
            raise DecodeError("stream: closed before a whole message arrived")
        return self._message

    def _count(self, size: int) -> None:
        """Bound a plaintext or compressed stream, which has no length header to check."""
        self._body_bytes += size
        if self._body_bytes > MAX_STREAM_BYTES:
            raise DecodeError(f"stream exceeds {MAX_STREAM_BYTES} bytes")

    def _advance(self) -> StreamMessage | None:
        buffer = self._buffer
        if not self._label_checked:
            if not buffer:
                return None
            labelled = buffer[0] == MessageType.HAS_LABEL
            if self._options.label or labelled:
                if labelled and (len(buffer) < 2 or len(buffer) < 2 + buffer[1]):
                    return None  # the label has not arrived whole yet
                rest = check_label(self._options, bytes(buffer))  # the packets' rules
                del buffer[: len(buffer) - len(rest)]
            self._label_checked = True
        if not buffer:
            return None
        kind = buffer[0]
        if kind == MessageType.ENCRYPT:
            return self._decrypt()
        if self._options.keyring is not None and self._options.verify_incoming:
            raise DecodeError("stream: plaintext refused, this node requires encryption")
        data = bytes(buffer)
        buffer.clear()
        self._count(len(data))
        if kind == MessageType.COMPRESS:
            self._compressed = structs.unpacker()
            return self._feed_compressed(data[1:])
        self._plain = _PlainParser(MAX_STREAM_BYTES, self._options.max_push_states)
        return self._plain.feed(data)

    def _feed_compressed(self, data: bytes) -> StreamMessage | None:
        # The compress message is one msgpack map after the type byte; wait until it is whole.
        assert self._compressed is not None
        try:
            self._compressed.feed(data)
            decoded = self._compressed.unpack()
        except msgpack.OutOfData:
            return None
        except Exception as exc:  # msgpack's many error types for malformed input
            raise DecodeError(f"stream: bad msgpack: {type(exc).__name__}") from None
        inflated = _inflate(_COMPRESS_CODEC.build(decoded))
        return _parse_complete(inflated, MAX_DECOMPRESSED_BYTES, self._options.max_push_states)

    def _decrypt(self) -> StreamMessage | None:
        buffer = self._buffer
        if len(buffer) < 5:
            return None
        length = int.from_bytes(buffer[1:5], "big")
        if length > MAX_STREAM_BYTES:
            raise DecodeError(f"stream: encrypted length {length} exceeds {MAX_STREAM_BYTES}")
        if len(buffer) < 5 + length:
            return None
        if self._options.keyring is None:
            raise DecodeError("stream: encrypted, but this node has no keyring")
        header = bytes(buffer[:5])
        plain = self._options.keyring.decrypt(
            bytes(buffer[5 : 5 + length]), header + self._options.label
        )
        if plain[:1] == bytes((MessageType.COMPRESS,)):
            plain = _inflate(_COMPRESS_CODEC.decode(plain))
        return _parse_complete(plain, MAX_DECOMPRESSED_BYTES, self._options.max_push_states)


_COMPRESS_CODEC = structs.StructCodec(Compress, prefix=b"\x09")


def _inflate(message: Compress) -> bytes:
    if message.algo != 0:
        raise DecodeError(f"unknown compression algorithm {message.algo}")
    inner = lzw.decompress(message.buf)
    if inner[:1] == bytes((MessageType.COMPRESS,)):
        raise DecodeError("stream: compressed twice")
    return inner
