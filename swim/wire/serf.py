"""Serf 0.9.4's payloads as typed objects, and their exact bytes.

Serf rides on memberlist: its messages travel as memberlist user messages (one Serf type byte,
then one go-msgpack struct), its tags as node metadata, its query filters and key-management
requests inside query payloads, and its network coordinate in ping acks.  Every struct declares
its ``FIELDS`` as in :mod:`swim.wire.structs`; those with nested structs, maps or float slices
(push-pull state, members, coordinates, the relay header) get private kinds here.
Maps are written with sorted keys: Go's order is random, ours is deterministic.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from swim.wire import structs
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import DEFAULT_META_MAX_BYTES
from swim.wire.structs import (
    BOOL,
    FLOAT,
    I64,
    RAW,
    RAW_LIST,
    TEXT,
    TEXT_LIST,
    U8,
    U16,
    U32,
    U64,
    Field,
    Kind,
    StructCodec,
)

TAG_MAGIC_BYTE = 0xFF
"""Metadata starting with this byte holds msgpack tags; anything else is a bare role."""

COORDINATE_VERSION = 1
"""Serf's ``PingVersion``: the first byte of a coordinate in an ack payload."""

QUERY_FLAG_ACK = 1
"""The query asks every node that receives it for an ack."""
QUERY_FLAG_NO_BROADCAST = 2
"""The query must not be re-gossiped."""

USER_EVENT_SIZE_LIMIT = 9 * 1024
"""Serf's hard maximum for a user event's name plus payload."""
DEFAULT_USER_EVENT_SIZE_LIMIT = 512
"""The Serf agent's default user event limit (name plus payload)."""
QUERY_SIZE_LIMIT = 1024
"""Largest encoded query message Serf sends."""
QUERY_RESPONSE_SIZE_LIMIT = 1024
"""Largest encoded query response message Serf sends."""


class SerfMessageType(enum.IntEnum):
    """The first byte of a Serf message inside a memberlist user message (``messages.go``)."""

    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


class MemberStatus(enum.IntEnum):
    """A Serf member's status, as a conflict response carries it."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4


# ---------------------------------------------------------------------------------------------
# Private kinds for Go maps, nested structs and float slices; each validates on decode.


def _text_key(value: object) -> str:
    if type(value) is not bytes:
        raise DecodeError(f"expected a string map key, got {type(value).__name__}")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise DecodeError("map key is not valid UTF-8") from None


def _tags(value: object) -> dict[str, str]:
    if type(value) is not dict:
        raise DecodeError(f"tags: expected a map, got {type(value).__name__}")
    tags: dict[str, str] = {}
    for key, item in value.items():
        if type(item) is not bytes:
            raise DecodeError(f"tags: expected a string value, got {type(item).__name__}")
        try:
            tags[_text_key(key)] = item.decode()
        except UnicodeDecodeError:
            raise DecodeError("tags: value is not valid UTF-8") from None
    return tags


def _member_tags(value: object) -> dict[str, str]:
    return {} if value is None else _tags(value)


def _ltimes(value: object) -> dict[str, int]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise DecodeError(f"expected a map of Lamport times, got {type(value).__name__}")
    return {_text_key(key): U64.check(item) for key, item in value.items()}


def _names(value: object) -> tuple[str, ...]:
    names: tuple[str, ...] = TEXT_LIST.check(value)
    return names


def _floats(value: object) -> tuple[float, ...]:
    if value is None:
        return ()
    if type(value) is not list:
        raise DecodeError(f"expected a list of floats, got {type(value).__name__}")
    return tuple(FLOAT.check(item) for item in value)


def _member_status(value: object) -> MemberStatus:
    number = U8.check(value)
    try:
        return MemberStatus(number)
    except ValueError:
        raise DecodeError(f"unknown member status {number}") from None


def _event_slots(value: object) -> tuple[RecentEvents | None, ...]:
    if value is None:
        return ()
    if type(value) is not list:
        raise DecodeError(f"expected a list of event slots, got {type(value).__name__}")
    return tuple(None if slot is None else structs.from_map(RecentEvents, slot) for slot in value)


def _recent_events(value: object) -> tuple[RecentEvent, ...]:
    if value is None:
        return ()
    if type(value) is not list:
        raise DecodeError(f"expected a list of events, got {type(value).__name__}")
    return tuple(structs.from_map(RecentEvent, item) for item in value)


def _udp_addr(value: object) -> _UDPAddr:
    return _UDPAddr() if value is None else structs.from_map(_UDPAddr, value)


def _sorted_map(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(sorted(value.items()))


_TAGS = Kind(_member_tags, None, to_wire=_sorted_map)
_LTIMES = Kind(_ltimes, None, to_wire=_sorted_map)
_NAMES = Kind(_names, ())  # a []string that Go always sends non-nil
_FLOATS = Kind(_floats, (), nil_when_empty=True, to_wire=lambda vec: [float(x) for x in vec])
_STATUS = Kind(_member_status, None)
_EVENT_SLOTS = Kind(
    _event_slots,
    (),
    to_wire=lambda slots: [None if s is None else structs.to_map(s) for s in slots],
)
_EVENTS = Kind(
    _recent_events,
    (),
    nil_when_empty=True,
    to_wire=lambda events: [structs.to_map(e) for e in events],
)
_UDP_ADDR = Kind(_udp_addr, None, to_wire=structs.to_map)


def _pack(obj: object) -> bytes:
    packed: bytes = structs.pack(obj)  # typed here: msgpack has no annotations
    return packed


# ---------------------------------------------------------------------------------------------
# Tags in node metadata.


def encode_tags(tags: Mapping[str, str], limit: int = DEFAULT_META_MAX_BYTES) -> bytes:
    """Node metadata for ``tags``: 0xff + a msgpack map, refused if longer than ``limit``."""
    meta = bytes((TAG_MAGIC_BYTE,)) + _pack(_sorted_map(tags))
    if len(meta) > limit:
        raise EncodeError(f"encoded tags are {len(meta)} bytes, over the limit of {limit}")
    return meta


def decode_tags(meta: bytes | bytearray | memoryview) -> dict[str, str]:
    """Tags from node metadata; metadata without the magic byte is Serf's old bare role
    (``{"role": meta}``, with undecodable bytes replaced, as Go keeps them)."""
    if not meta or meta[0] != TAG_MAGIC_BYTE:
        return {"role": bytes(meta).decode(errors="replace")}
    return _tags(structs.unpack(meta[1:]))


# ---------------------------------------------------------------------------------------------
# Messages.


@dataclass(slots=True)
class LeaveIntent:
    """``node`` intends to leave (or was force-left; ``prune`` also erases it) at ``ltime``."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.LEAVE
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("LTime", "ltime", U64),
        Field("Node", "node", TEXT),
        Field("Prune", "prune", BOOL),
    )
    ltime: int
    node: str
    prune: bool = False


@dataclass(slots=True)
class JoinIntent:
    """``node`` joined at member Lamport time ``ltime`` (also refutes a stale leave intent)."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.JOIN
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("LTime", "ltime", U64),
        Field("Node", "node", TEXT),
    )
    ltime: int
    node: str


@dataclass(slots=True)
class RecentEvent:
    """One user event in the push-pull event buffer (Go's ``userEvent``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Name", "name", TEXT),
        Field("Payload", "payload", RAW),
    )
    name: str
    payload: bytes = b""


@dataclass(slots=True)
class RecentEvents:
    """The user events seen at one event Lamport time (Go's ``userEvents``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Events", "events", _EVENTS),
        Field("LTime", "ltime", U64),
    )
    ltime: int
    events: tuple[RecentEvent, ...] = ()


@dataclass(slots=True)
class SerfPushPull:
    """Serf's state in a memberlist push-pull: its three clocks, every member's status time,
    the left members and the event buffer (a ring of slots, ``None`` where empty)."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.PUSH_PULL
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("EventLTime", "event_ltime", U64),
        Field("Events", "events", _EVENT_SLOTS),
        Field("LTime", "ltime", U64),
        Field("LeftMembers", "left_members", _NAMES),
        Field("QueryLTime", "query_ltime", U64),
        Field("StatusLTimes", "status_ltimes", _LTIMES),
    )
    ltime: int
    status_ltimes: dict[str, int] = field(default_factory=dict)
    left_members: tuple[str, ...] = ()
    event_ltime: int = 0
    events: tuple[RecentEvents | None, ...] = ()
    query_ltime: int = 0


@dataclass(slots=True)
class UserEvent:
    """A named user event; ``coalesce`` (Go's ``CC``) lets receivers merge same-named ones."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.USER_EVENT
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("CC", "coalesce", BOOL),
        Field("LTime", "ltime", U64),
        Field("Name", "name", TEXT),
        Field("Payload", "payload", RAW),
    )
    ltime: int
    name: str
    payload: bytes = b""
    coalesce: bool = False


@dataclass(slots=True)
class Query:
    """A query; answers go straight to ``addr:port``. ``filters`` hold encoded filters (see
    :func:`decode_filter`); ``timeout_ns`` is Go's ``time.Duration``."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.QUERY
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Addr", "addr", RAW),
        Field("Filters", "filters", RAW_LIST),
        Field("Flags", "flags", U32),
        Field("ID", "id", U32),
        Field("LTime", "ltime", U64),
        Field("Name", "name", TEXT),
        Field("Payload", "payload", RAW),
        Field("Port", "port", U16),
        Field("RelayFactor", "relay_factor", U8),
        Field("SourceNode", "source_node", TEXT),
        Field("Timeout", "timeout_ns", I64),
    )
    ltime: int
    id: int
    addr: bytes
    port: int
    source_node: str
    name: str
    payload: bytes = b""
    filters: tuple[bytes, ...] = ()
    flags: int = 0
    relay_factor: int = 0
    timeout_ns: int = 0


@dataclass(slots=True)
class QueryResponse:
    """An ack (``flags`` has :data:`QUERY_FLAG_ACK`) or a response to query ``id``."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.QUERY_RESPONSE
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Flags", "flags", U32),
        Field("From", "from_node", TEXT),
        Field("ID", "id", U32),
        Field("LTime", "ltime", U64),
        Field("Payload", "payload", RAW),
    )
    ltime: int
    id: int
    from_node: str
    flags: int = 0
    payload: bytes = b""


@dataclass(slots=True)
class Member:
    """A Serf member as a name-conflict response describes it."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Addr", "addr", RAW),
        Field("DelegateCur", "delegate_cur", U8),
        Field("DelegateMax", "delegate_max", U8),
        Field("DelegateMin", "delegate_min", U8),
        Field("Name", "name", TEXT),
        Field("Port", "port", U16),
        Field("ProtocolCur", "protocol_cur", U8),
        Field("ProtocolMax", "protocol_max", U8),
        Field("ProtocolMin", "protocol_min", U8),
        Field("Status", "status", _STATUS),
        Field("Tags", "tags", _TAGS),
    )
    name: str
    addr: bytes
    port: int
    tags: dict[str, str] = field(default_factory=dict)
    status: MemberStatus = MemberStatus.NONE
    protocol_min: int = 0
    protocol_max: int = 0
    protocol_cur: int = 0
    delegate_min: int = 0
    delegate_max: int = 0
    delegate_cur: int = 0


@dataclass(slots=True)
class ConflictResponse:
    """The answer to a ``_serf_conflict`` query: the member the responder knows by that name,
    or ``None`` (Go's nil) if it knows none."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.CONFLICT_RESPONSE
    member: Member | None = None


@dataclass(slots=True)
class KeyRequest:
    """The payload of an install-, use- or remove-key query."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.KEY_REQUEST
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Key", "key", RAW),)
    key: bytes = b""


@dataclass(slots=True)
class KeyResponse:
    """One node's answer to a key query; ``keys`` and ``primary_key`` are base64."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.KEY_RESPONSE
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Keys", "keys", TEXT_LIST),
        Field("Message", "message", TEXT),
        Field("PrimaryKey", "primary_key", TEXT),
        Field("Result", "result", BOOL),
    )
    result: bool
    message: str = ""
    keys: tuple[str, ...] = ()
    primary_key: str = ""


@dataclass(slots=True)
class Relay:
    """Asks the receiver to forward ``inner`` (a whole Serf message) to ``dest_name`` at
    ``dest_addr:dest_port``; used for query responses with a relay factor."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.RELAY
    dest_addr: bytes
    dest_port: int
    dest_name: str
    inner: bytes


@dataclass(slots=True)
class _UDPAddr:
    """Go's ``net.UDPAddr``, as the relay header carries it."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("IP", "ip", RAW),
        Field("Port", "port", U16),
        Field("Zone", "zone", TEXT),
    )
    ip: bytes = b""
    port: int = 0
    zone: str = ""


@dataclass(slots=True)
class _RelayHeader:
    """What a relay message puts before the message to forward."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("DestAddr", "dest_addr", _UDP_ADDR),
        Field("DestName", "dest_name", TEXT),
    )
    dest_addr: _UDPAddr
    dest_name: str


def encode_relay(dest_addr: bytes, dest_port: int, dest_name: str, inner: bytes) -> bytes:
    """A relay message asking the receiver to send ``inner`` on to ``dest_name``."""
    header = _RelayHeader(_UDPAddr(dest_addr, dest_port), dest_name)
    return bytes((SerfMessageType.RELAY,)) + structs.pack_struct(header) + inner


def decode_relay(data: bytes | bytearray | memoryview) -> Relay:
    """A relay message; ``inner`` is every byte after the header, left undecoded."""
    if not data or data[0] != SerfMessageType.RELAY:
        raise DecodeError("relay: missing type byte")
    unpacker = structs.unpacker()
    try:
        unpacker.feed(data[1:])
        decoded = unpacker.unpack()
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(f"relay: bad header msgpack: {type(exc).__name__}") from None
    header = structs.from_map(_RelayHeader, decoded)
    addr = header.dest_addr
    return Relay(addr.ip, addr.port, header.dest_name, bytes(data[1 + unpacker.tell() :]))


SerfMessage = (
    LeaveIntent
    | JoinIntent
    | SerfPushPull
    | UserEvent
    | Query
    | QueryResponse
    | ConflictResponse
    | KeyRequest
    | KeyResponse
    | Relay
)
"""Every payload that starts with a Serf type byte."""

_FLAT_CODECS: dict[type[Any], StructCodec[Any]] = {
    cls: StructCodec(cls, prefix=bytes((cls.TYPE,)))
    for cls in (LeaveIntent, JoinIntent, UserEvent, Query, QueryResponse, KeyRequest, KeyResponse)
}


def _decode_conflict(data: bytes | bytearray | memoryview) -> ConflictResponse:
    decoded = structs.unpack(data[1:])
    return ConflictResponse(None if decoded is None else structs.from_map(Member, decoded))


_DECODERS: dict[int, Callable[[bytes | bytearray | memoryview], SerfMessage]] = {
    **{cls.TYPE: codec.decode for cls, codec in _FLAT_CODECS.items()},
    SerfMessageType.PUSH_PULL: StructCodec(SerfPushPull, prefix=bytes((SerfPushPull.TYPE,))).decode,
    SerfMessageType.CONFLICT_RESPONSE: _decode_conflict,
    SerfMessageType.RELAY: decode_relay,
}


def encode_serf(message: SerfMessage) -> bytes:
    """The message's bytes, starting with its Serf type byte."""
    codec = _FLAT_CODECS.get(type(message))
    if codec is not None:
        return codec.encode(message)
    if isinstance(message, SerfPushPull):
        return bytes((message.TYPE,)) + structs.pack_struct(message)
    if isinstance(message, ConflictResponse):
        member = None if message.member is None else structs.to_map(message.member)
        return bytes((message.TYPE,)) + _pack(member)
    if isinstance(message, Relay):
        return encode_relay(message.dest_addr, message.dest_port, message.dest_name, message.inner)
    raise TypeError(f"not a Serf message: {message!r:.80}")


def decode_serf(data: bytes | bytearray | memoryview) -> SerfMessage:
    """One Serf message from exactly ``data``; raises only :class:`DecodeError`."""
    if not data:
        raise DecodeError("empty Serf message")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise DecodeError(f"unknown Serf message type {data[0]}")
    return decoder(data)


# ---------------------------------------------------------------------------------------------
# Query filters.


@dataclass(slots=True)
class NodeFilter:
    """Only the named nodes answer."""

    names: tuple[str, ...]


@dataclass(slots=True)
class TagFilter:
    """Only nodes whose tag ``tag`` matches the regular expression ``expr`` answer."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Expr", "expr", TEXT),
        Field("Tag", "tag", TEXT),
    )
    tag: str
    expr: str


_TAG_FILTER = StructCodec(TagFilter, prefix=b"\x01")


def encode_node_filter(names: Iterable[str]) -> bytes:
    """A filter for a query's ``filters``: only these nodes answer."""
    return b"\x00" + _pack(list(names))


def encode_tag_filter(tag: str, expr: str) -> bytes:
    """A filter for a query's ``filters``: only nodes whose ``tag`` matches ``expr`` answer."""
    return _TAG_FILTER.encode(TagFilter(tag, expr))


def decode_filter(data: bytes | bytearray | memoryview) -> NodeFilter | TagFilter:
    """One encoded query filter; raises only :class:`DecodeError`."""
    if not data:
        raise DecodeError("empty query filter")
    if data[0] == 0:
        return NodeFilter(_names(structs.unpack(data[1:])))
    if data[0] == 1:
        return _TAG_FILTER.decode(data)
    raise DecodeError(f"unknown query filter type {data[0]}")


# ---------------------------------------------------------------------------------------------
# Network coordinates, in ping ack payloads.


@dataclass(slots=True)
class Coordinate:
    """A Vivaldi network coordinate (Serf's ``coordinate.Coordinate``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Adjustment", "adjustment", FLOAT),
        Field("Error", "error", FLOAT),
        Field("Height", "height", FLOAT),
        Field("Vec", "vec", _FLOATS),
    )
    vec: tuple[float, ...]
    error: float
    adjustment: float
    height: float


_COORDINATE = StructCodec(Coordinate, prefix=bytes((COORDINATE_VERSION,)))


def encode_coordinate(coordinate: Coordinate) -> bytes:
    """An ack payload carrying ``coordinate``; every number is packed as a float64."""
    return bytes((COORDINATE_VERSION,)) + structs.pack_struct(coordinate)


def decode_coordinate(payload: bytes | bytearray | memoryview) -> Coordinate:
    """The coordinate in an ack payload; raises only :class:`DecodeError`."""
    if not payload:
        raise DecodeError("coordinate: empty payload")
    if payload[0] != COORDINATE_VERSION:
        raise DecodeError(f"coordinate: unsupported version {payload[0]}")
    return _COORDINATE.decode(payload)
