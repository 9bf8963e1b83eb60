"""memberlist's messages as typed objects, and their exact bytes.

A message on the wire is one type byte followed by one msgpack struct (``encode``/``decode``),
except a packet user message, which is the type byte followed by the raw user bytes, and the
stream-only pieces (push-pull node states, the user message header), which carry no type byte.
Field names follow Go's in snake case; Go's ``From`` is ``from_node``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from swim.wire import structs
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import MAX_COMPOUND_PART_BYTES, MAX_COMPOUND_PARTS
from swim.wire.structs import BOOL, I64, RAW, TEXT, U8, U16, U32, VSN, Field, Kind


class MessageType(enum.IntEnum):
    """The first byte of every memberlist message (``net.go``)."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12
    ERR = 13
    HAS_LABEL = 244


class NodeState(enum.IntEnum):
    """A member's state as push-pull carries it."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


_NODE_STATES = tuple(NodeState)


def _node_state(value: object) -> NodeState:
    if type(value) is int and 0 <= value < len(_NODE_STATES):
        return _NODE_STATES[value]  # a thousand per push-pull: skip the enum's slow call
    number = U8.check(value)
    try:
        return NodeState(number)
    except ValueError:
        raise DecodeError(f"unknown node state {number}") from None


STATE = Kind(_node_state, None)


@dataclass(slots=True)
class Ping:
    """A direct probe. ``node`` is the target's name; a receiver with another name ignores it."""

    TYPE: ClassVar[MessageType] = MessageType.PING
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Node", "node", TEXT),
        Field("SeqNo", "seq_no", U32),
        Field("SourceAddr", "source_addr", RAW, omitempty=True),
        Field("SourceNode", "source_node", TEXT, omitempty=True),
        Field("SourcePort", "source_port", U16, omitempty=True),
    )
    seq_no: int
    node: str = ""
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(slots=True)
class IndirectPing:
    """Asks a helper to probe ``target:port`` (named ``node``) and relay the ack, or a nack."""

    TYPE: ClassVar[MessageType] = MessageType.INDIRECT_PING
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Nack", "nack", BOOL),
        Field("Node", "node", TEXT),
        Field("Port", "port", U16),
        Field("SeqNo", "seq_no", U32),
        Field("SourceAddr", "source_addr", RAW, omitempty=True),
        Field("SourceNode", "source_node", TEXT, omitempty=True),
        Field("SourcePort", "source_port", U16, omitempty=True),
        Field("Target", "target", RAW),
    )
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(slots=True)
class Ack:
    """Answers a ping; Serf puts its network coordinate in ``payload``."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Payload", "payload", RAW),
        Field("SeqNo", "seq_no", U32),
    )
    seq_no: int
    payload: bytes = b""


@dataclass(slots=True)
class Nack:
    """A helper could not reach the target of an indirect ping in time."""

    TYPE: ClassVar[MessageType] = MessageType.NACK
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("SeqNo", "seq_no", U32),)
    seq_no: int


@dataclass(slots=True)
class Suspect:
    """``from_node`` suspects ``node`` at ``incarnation``."""

    TYPE: ClassVar[MessageType] = MessageType.SUSPECT
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("From", "from_node", TEXT),
        Field("Incarnation", "incarnation", U32),
        Field("Node", "node", TEXT),
    )
    incarnation: int
    node: str
    from_node: str


@dataclass(slots=True)
class Alive:
    """``node`` is alive at ``addr:port`` with this incarnation, metadata and versions."""

    TYPE: ClassVar[MessageType] = MessageType.ALIVE
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Addr", "addr", RAW),
        Field("Incarnation", "incarnation", U32),
        Field("Meta", "meta", RAW),
        Field("Node", "node", TEXT),
        Field("Port", "port", U16),
        Field("Vsn", "vsn", VSN),
    )
    incarnation: int
    node: str
    addr: bytes
    port: int
    vsn: bytes
    meta: bytes = b""


@dataclass(slots=True)
class Dead:
    """``from_node`` declares ``node`` dead; ``from_node == node`` is a graceful leave."""

    TYPE: ClassVar[MessageType] = MessageType.DEAD
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("From", "from_node", TEXT),
        Field("Incarnation", "incarnation", U32),
        Field("Node", "node", TEXT),
    )
    incarnation: int
    node: str
    from_node: str


@dataclass(slots=True)
class PushPullHeader:
    """Opens a push-pull exchange: ``nodes`` node states and ``user_state_len`` raw bytes follow."""

    TYPE: ClassVar[MessageType] = MessageType.PUSH_PULL
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Join", "join", BOOL),
        Field("Nodes", "nodes", I64),
        Field("UserStateLen", "user_state_len", I64),
    )
    nodes: int
    user_state_len: int
    join: bool = False


@dataclass(slots=True)
class PushNodeState:
    """One member as push-pull carries it (no type byte of its own)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Addr", "addr", RAW),
        Field("Incarnation", "incarnation", U32),
        Field("Meta", "meta", RAW),
        Field("Name", "name", TEXT),
        Field("Port", "port", U16),
        Field("State", "state", STATE),
        Field("Vsn", "vsn", VSN),
    )
    name: str
    addr: bytes
    port: int
    incarnation: int
    state: NodeState
    vsn: bytes
    meta: bytes = b""


@dataclass(slots=True)
class UserMsgHeader:
    """Precedes a user message on a stream (no type byte of its own)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (Field("UserMsgLen", "user_msg_len", I64),)
    user_msg_len: int


@dataclass(slots=True)
class Compress:
    """A compressed message; ``algo`` 0 is LZW, the only one memberlist knows."""

    TYPE: ClassVar[MessageType] = MessageType.COMPRESS
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Algo", "algo", U8),
        Field("Buf", "buf", RAW),
    )
    buf: bytes
    algo: int = 0


@dataclass(slots=True)
class Err:
    """Sent on a stream when the peer's request could not be read."""

    TYPE: ClassVar[MessageType] = MessageType.ERR
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Error", "error", TEXT),)
    error: str


@dataclass(slots=True)
class User:
    """A user message in a packet: the raw bytes after the type byte, not msgpack."""

    TYPE: ClassVar[MessageType] = MessageType.USER
    payload: bytes


@dataclass(slots=True)
class Compound:
    """Several messages in one packet: ``[7][count][count x uint16 length][parts...]``."""

    TYPE: ClassVar[MessageType] = MessageType.COMPOUND
    parts: tuple[bytes, ...]


StructMessage = (
    Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | PushPullHeader | Compress | Err
)
Message = StructMessage | User | Compound
"""Every message that starts with its own type byte."""

_STRUCT_CODECS: dict[type[Any], structs.StructCodec[Any]] = {
    cls: structs.StructCodec(cls, prefix=bytes((cls.TYPE,)))
    for cls in (Ping, IndirectPing, Ack, Nack, Suspect, Alive, Dead, PushPullHeader, Compress, Err)
}
_ENCODERS: dict[type[Any], Callable[[Any], bytes]] = {
    cls: codec.encode for cls, codec in _STRUCT_CODECS.items()
}
_DECODERS: dict[int, Callable[[bytes | bytearray | memoryview], StructMessage]] = {
    cls.TYPE: codec.decode for cls, codec in _STRUCT_CODECS.items()
}


def encode(message: Message) -> bytes:
    """The message's bytes, starting with its type byte."""
    encoder = _ENCODERS.get(type(message))
    if encoder is not None:
        return encoder(message)
    if isinstance(message, User):
        return b"\x08" + message.payload
    if isinstance(message, Compound):
        return encode_compound(message.parts)
    raise TypeError(f"not a memberlist message: {message!r:.80}")


def encode_body(message: PushNodeState | UserMsgHeader) -> bytes:
    """A stream-only piece, which has no type byte."""
    return structs.pack_struct(message)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """One message from exactly ``data``; raises only :class:`DecodeError`."""
    if not data:
        raise DecodeError("empty message")
    kind = data[0]
    decoder = _DECODERS.get(kind)
    if decoder is not None:
        return decoder(data)
    if kind == MessageType.USER:
        return User(bytes(data[1:]))
    if kind == MessageType.COMPOUND:
        return Compound(decode_compound(data))
    raise DecodeError(f"unknown message type {kind}")


def encode_compound(parts: Sequence[bytes]) -> bytes:
    """One compound message of at most 255 parts of at most 65535 bytes each."""
    if len(parts) > MAX_COMPOUND_PARTS:
        raise EncodeError(
            f"a compound holds at most {MAX_COMPOUND_PARTS} parts, got {len(parts)}; "
            "use make_compounds() to split them"
        )
    header = bytearray((MessageType.COMPOUND, len(parts)))
    for part in parts:
        if len(part) > MAX_COMPOUND_PART_BYTES:
            raise EncodeError(
                f"a compound part is at most {MAX_COMPOUND_PART_BYTES} bytes, got {len(part)}"
            )
        header += len(part).to_bytes(2, "big")
    return bytes(header) + b"".join(parts)


def make_compounds(parts: Sequence[bytes]) -> list[bytes]:
    """As many compound messages as ``parts`` need, 255 parts each (memberlist 0.2.2 would
    silently wrap the count and corrupt the packet)."""
    return [
        encode_compound(parts[i : i + MAX_COMPOUND_PARTS])
        for i in range(0, len(parts), MAX_COMPOUND_PARTS)
    ]


def decode_compound(data: bytes | bytearray | memoryview) -> tuple[bytes, ...]:
    """The parts of a compound message, type byte included; a truncated one is refused."""
    view = memoryview(data)
    if len(view) < 2 or view[0] != MessageType.COMPOUND:
        raise DecodeError("compound: missing header")
    count = view[1]
    offset = 2 + 2 * count
    if len(view) < offset:
        raise DecodeError("compound: truncated length table")
    parts = []
    for i in range(count):
        length = int.from_bytes(view[2 + 2 * i : 4 + 2 * i], "big")
        end = offset + length
        if end > len(view):
            raise DecodeError(f"compound: part {i} truncated")
        parts.append(bytes(view[offset:end]))
        offset = end
    if offset != len(view):
        raise DecodeError("compound: trailing bytes after the last part")
    return tuple(parts)
