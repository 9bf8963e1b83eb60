"""Serf's RPC records (the structs of Serf's ``ipc.go``) as typed objects, on the struct codec.

Every struct a request, a reply or a stream carries is a frozen dataclass that declares its
``FIELDS`` in wire order (:mod:`swim.wire.structs`, with ``raw=False``: strings travel as msgpack
str and ``[]byte`` as bin, as go-msgpack's ``RawToString`` handle writes them).  Decoding takes
Go's zero value for an absent or nil field, accepts what older msgpack writers send (strings as
bin, ``[]byte`` as str), and raises :class:`~swim.wire.errors.DecodeError` naming the field that
has the wrong shape, such as "Name is a int, not a string".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar

import msgpack

from swim.wire.errors import DecodeError
from swim.wire.serf import Coordinate
from swim.wire.structs import Field, Kind, StructCodec

DEFAULT_RPC_ADDR: Final = "127.0.0.1:7373"
"""Where ``serf agent`` listens for RPC unless told otherwise, and where clients look first."""
IPC_VERSION: Final = 1
"""The only RPC protocol version Serf has (``MinIPCVersion`` = ``MaxIPCVersion`` = 1)."""

UNSUPPORTED_COMMAND: Final = "Unsupported command"
UNSUPPORTED_IPC_VERSION: Final = "Unsupported IPC version"
DUPLICATE_HANDSHAKE: Final = "Handshake already performed"
HANDSHAKE_REQUIRED: Final = "Handshake required"
INVALID_FILTER: Final = "Invalid event filter"
STREAM_EXISTS: Final = "Stream with given sequence exists"
AUTH_REQUIRED: Final = "Authentication required"
INVALID_AUTH_TOKEN: Final = "Invalid authentication token"
REGEX_ERROR_PREFIX: Final = "Failed to compile regex: "
INVALID_QUERY_ID: Final = "No pending queries matching ID"
QUERY_RECORD_TYPES: Final = ("ack", "response", "done")
"""The ``Type`` of the records a ``query`` streams (Serf's ``queryRecord``)."""

SERF_COMMANDS: Final[Mapping[str, tuple[bool, bool]]] = {
    "handshake": (True, False),
    "auth": (True, False),
    "event": (True, False),
    "force-leave": (True, False),
    "join": (True, True),
    "members": (False, True),
    "members-filtered": (True, True),
    "stream": (True, False),
    "monitor": (True, False),
    "stop": (True, False),
    "leave": (False, False),
    "install-key": (True, True),
    "use-key": (True, True),
    "remove-key": (True, True),
    "list-keys": (False, True),
    "tags": (True, False),
    "query": (True, False),
    "respond": (True, False),
    "stats": (False, True),
    "get-coordinate": (True, True),
}
"""Every command Serf's agent knows: (takes a request body, returns a reply body)."""

MEMBER_EVENTS: Final = frozenset(
    {"member-join", "member-leave", "member-failed", "member-update", "member-reap"}
)
"""The ``Event`` names of member event records (Serf's ``EventType.String()``)."""


class RpcError(Exception):
    """The agent refused or failed a request; ``str()`` is its message, Serf's own strings
    included (such as :data:`INVALID_AUTH_TOKEN`)."""


# ---------------------------------------------------------------------------------------------
# Field kinds: each checks one unpacked value, names its field when it is wrong, and takes Go's
# zero value for nil.


def _type_error(key: str, value: object, wanted: str) -> DecodeError:
    return DecodeError(f"{key} is a {type(value).__name__}, not {wanted}")


def _text(value: object, key: str) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if type(value) is not bytes:
        raise _type_error(key, value, "a string")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"{key} is not valid UTF-8") from None


def _bytes(value: object, key: str) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is str:  # older msgpack writers send []byte as str
        return value.encode()
    if value is None:
        return b""
    raise _type_error(key, value, "bytes")


def _flag(value: object, key: str) -> bool:
    if value is True or value is False:
        return value
    if value is None:
        return False
    raise _type_error(key, value, "a boolean")


def _integer(low: int, high: int) -> Kind:
    def check(value: object, key: str) -> int:
        if type(value) is int and low <= value <= high:
            return value
        if value is None:
            return 0
        raise DecodeError(f"{key} is {value!r:.40}, not an integer in [{low}, {high}]")

    fast = f"v if type(v) is int and {low} <= v <= {high} else check(v)"
    return Kind(check, 0, fast, named=True)


def _text_list(value: object, key: str) -> tuple[str, ...]:
    if type(value) is list:
        return tuple(_text(item, key) for item in value)
    if value is None:
        return ()
    raise _type_error(key, value, "a list of strings")


def _text_map(value: object, key: str) -> dict[str, str]:
    if type(value) is dict:
        return {_text(k, key): _text(v, key) for k, v in value.items()}
    if value is None:
        return {}
    raise _type_error(key, value, "a map of strings")


_STR = Kind(_text, "", "v if type(v) is str else check(v)", named=True)
_BIN = Kind(_bytes, b"", "v if type(v) is bytes else check(v)", named=True)
_FLAG = Kind(_flag, False, "v if v is True or v is False else check(v)", named=True)
_U8 = _integer(0, 0xFF)
_U16 = _integer(0, 0xFFFF)
_U64 = _integer(0, (1 << 64) - 1)
_I32 = _integer(-(1 << 31), (1 << 31) - 1)
_COUNT = _integer(0, 1 << 31)
_NANOSECONDS = _integer(0, (1 << 63) - 1)
_STR_LIST = Kind(_text_list, (), named=True)
_STR_MAP = Kind(_text_map, None, named=True)


def _counts(value: object, key: str) -> dict[str, int]:
    if type(value) is dict:
        return {_text(k, key): _COUNT.check(n, key) for k, n in value.items()}
    if value is None:
        return {}
    raise _type_error(key, value, "a map")


def _seconds(value: object, key: str) -> float:
    nanoseconds: int = _NANOSECONDS.check(value, key)
    return nanoseconds / 1e9


def _nanoseconds(seconds: float) -> int:
    return round(seconds * 1e9)  # Go's time.Duration


def _members(value: object, key: str) -> tuple[RpcMember, ...]:
    if type(value) is list:
        return tuple(decode(RpcMember, item, "a member") for item in value)
    if value is None:
        return ()
    raise _type_error(key, value, "a list")


def _member_maps(members: tuple[RpcMember, ...]) -> list[dict[str, object]]:
    to_map = _CODECS[RpcMember].to_map
    return [to_map(member) for member in members]


def _record_type(value: object, key: str) -> str:
    kind = _text(value, key)
    if kind not in QUERY_RECORD_TYPES:
        raise DecodeError(f"a query record of type {kind!r}, not one of {QUERY_RECORD_TYPES}")
    return kind


_COUNTS = Kind(_counts, None, named=True)
_DURATION = Kind(_seconds, 0.0, named=True, to_wire=_nanoseconds)
_MEMBERS = Kind(_members, (), named=True, to_wire=_member_maps)
_RECORD_TYPE = Kind(_record_type, "", named=True)


# ---------------------------------------------------------------------------------------------
# What the agent reports: members, events, key tallies, query records.


@dataclass(frozen=True, slots=True)
class RpcMember:
    """One member as the RPC protocol shows it (Serf's ``agent.Member``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Name", "name", _STR),
        Field("Addr", "addr", _BIN),
        Field("Port", "port", _U16),
        Field("Tags", "tags", _STR_MAP),
        Field("Status", "status", _STR),
        Field("ProtocolMin", "protocol_min", _U8),
        Field("ProtocolMax", "protocol_max", _U8),
        Field("ProtocolCur", "protocol_cur", _U8),
        Field("DelegateMin", "delegate_min", _U8),
        Field("DelegateMax", "delegate_max", _U8),
        Field("DelegateCur", "delegate_cur", _U8),
    )
    name: str
    addr: bytes
    """The IP address: 4 bytes for IPv4, 16 for IPv6 (Go's ``net.IP``)."""
    port: int
    tags: dict[str, str]
    status: str
    """Serf's status names: "alive", "leaving", "left", "failed"."""
    protocol_min: int
    protocol_max: int
    protocol_cur: int
    delegate_min: int
    delegate_max: int
    delegate_cur: int


@dataclass(frozen=True, slots=True)
class RpcMemberEvent:
    """Members joined, left, failed, changed tags or were reaped (Serf's ``memberEventRecord``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Event", "event", _STR),
        Field("Members", "members", _MEMBERS),
    )
    event: str
    """One of :data:`MEMBER_EVENTS`."""
    members: tuple[RpcMember, ...]

    def __post_init__(self) -> None:
        if self.event not in MEMBER_EVENTS:
            raise ValueError(
                f"member event {self.event!r} is not one of Serf's: {sorted(MEMBER_EVENTS)}"
            )


@dataclass(frozen=True, slots=True)
class RpcUserEvent:
    """A user event, as ``serf event`` sends it and event handlers receive it (Serf's
    ``userEventRecord``, whose ``Event`` is "user")."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("LTime", "ltime", _U64),
        Field("Name", "name", _STR),
        Field("Payload", "payload", _BIN),
        Field("Coalesce", "coalesce", _FLAG),
    )
    name: str
    payload: bytes
    coalesce: bool
    ltime: int
    """The event's Lamport time."""


@dataclass(frozen=True, slots=True)
class RpcQueryEvent:
    """A query for the client to answer with ``respond`` by its ``id`` (Serf's
    ``queryEventRecord``, whose ``Event`` is "query")."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("ID", "id", _U64),
        Field("LTime", "ltime", _U64),
        Field("Name", "name", _STR),
        Field("Payload", "payload", _BIN),
    )
    id: int
    """The agent's number for the query, to answer it by (opaque to the client)."""
    ltime: int
    """The query's Lamport time."""
    name: str
    payload: bytes


RpcEvent = RpcMemberEvent | RpcUserEvent | RpcQueryEvent


@dataclass(frozen=True, slots=True)
class RpcKeyResult:
    """What the members answered a cluster-wide key operation (Serf's ``keyResponse``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Messages", "messages", _STR_MAP),
        Field("Keys", "keys", _COUNTS),
        Field("NumNodes", "num_nodes", _COUNT),
        Field("NumErr", "num_err", _COUNT),
        Field("NumResp", "num_resp", _COUNT),
    )
    num_nodes: int = 0
    """Live members when the query went out."""
    num_resp: int = 0
    num_err: int = 0
    messages: dict[str, str] = field(default_factory=dict)
    """Per node, its error or warning message."""
    keys: dict[str, int] = field(default_factory=dict)
    """For ``list-keys``: each base64 key and how many members hold it."""


class RpcKeyError(RpcError):
    """A key operation failed on some members ("1/3 nodes reported failure"); ``result``
    says which and why, as Serf's reply does alongside its error."""

    def __init__(self, message: str, result: RpcKeyResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, slots=True)
class RpcQuery:
    """A query to send through the agent (Serf's ``queryRequest``, the ``query`` command)."""

    COMMAND: ClassVar[str] = "query"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("FilterNodes", "filter_nodes", _STR_LIST),
        Field("FilterTags", "filter_tags", _STR_MAP),
        Field("RequestAck", "request_ack", _FLAG),
        Field("RelayFactor", "relay_factor", _U8),
        Field("Timeout", "timeout", _DURATION),
        Field("Name", "name", _STR),
        Field("Payload", "payload", _BIN),
    )
    name: str
    payload: bytes = b""
    filter_nodes: tuple[str, ...] = ()
    """Only these members answer (none: every member)."""
    filter_tags: dict[str, str] = field(default_factory=dict)
    """Only members whose tag matches each regex answer."""
    request_ack: bool = False
    relay_factor: int = 0
    """How many other members also relay each answer back, for redundancy (0 to 255)."""
    timeout: float = 0.0
    """Seconds to collect answers; 0 lets the agent pick Serf's default."""


@dataclass(frozen=True, slots=True)
class RpcQueryRecord:
    """An ack or an answer to a query, as the agent streams them (Serf's ``queryRecord``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Type", "type", _RECORD_TYPE),
        Field("From", "node", _STR),
        Field("Payload", "payload", _BIN),
    )
    type: str
    """"ack" or "response" ("done" ends the stream and is not passed on)."""
    node: str
    payload: bytes = b""


# ---------------------------------------------------------------------------------------------
# Headers, and the body of each request Serf's agent serves (none for a command without one).


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """What starts every request (Serf's ``requestHeader``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Command", "command", _STR),
        Field("Seq", "seq", _U64),
    )
    command: str
    seq: int


@dataclass(frozen=True, slots=True)
class ReplyHeader:
    """What starts every reply and every stream record (Serf's ``responseHeader``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Seq", "seq", _U64),
        Field("Error", "error", _STR),
    )
    seq: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Handshake:
    """The protocol version the client speaks; it must come first."""

    COMMAND: ClassVar[str] = "handshake"
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Version", "version", _I32),)
    version: int = IPC_VERSION


@dataclass(frozen=True, slots=True)
class Auth:
    """The agent's RPC auth key, after the handshake, when it has one."""

    COMMAND: ClassVar[str] = "auth"
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("AuthKey", "auth_key", _STR),)
    auth_key: str


@dataclass(frozen=True, slots=True)
class EventRequest:
    """Send a user event to the cluster (``serf event``)."""

    COMMAND: ClassVar[str] = "event"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Name", "name", _STR),
        Field("Payload", "payload", _BIN),
        Field("Coalesce", "coalesce", _FLAG),
    )
    name: str
    payload: bytes = b""
    coalesce: bool = False


@dataclass(frozen=True, slots=True)
class ForceLeave:
    """Mark a failed member as left; ``prune`` also forgets it."""

    COMMAND: ClassVar[str] = "force-leave"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Node", "node", _STR),
        Field("Prune", "prune", _FLAG),
    )
    node: str
    prune: bool = False


@dataclass(frozen=True, slots=True)
class Join:
    """Join the cluster through these addresses; ``replay`` past user events."""

    COMMAND: ClassVar[str] = "join"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Existing", "existing", _STR_LIST),
        Field("Replay", "replay", _FLAG),
    )
    existing: tuple[str, ...]
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Members:
    """Every member the agent knows."""

    COMMAND: ClassVar[str] = "members"
    FIELDS: ClassVar[tuple[Field, ...]] = ()


@dataclass(frozen=True, slots=True)
class MembersFiltered:
    """The members whose tags, status and name fully match these regexes (empty: any)."""

    COMMAND: ClassVar[str] = "members-filtered"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Tags", "tags", _STR_MAP),
        Field("Status", "status", _STR),
        Field("Name", "name", _STR),
    )
    tags: dict[str, str] = field(default_factory=dict)
    status: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Stream:
    """Stream the events that ``event_filter`` lets through (``"member-join,user:deploy"``)."""

    COMMAND: ClassVar[str] = "stream"
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Type", "event_filter", _STR),)
    event_filter: str = "*"


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the event stream started by request ``stream``."""

    COMMAND: ClassVar[str] = "stop"
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Stop", "stream", _U64),)
    stream: int


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the cluster gracefully and shut down."""

    COMMAND: ClassVar[str] = "leave"
    FIELDS: ClassVar[tuple[Field, ...]] = ()


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A base64 key to install, use or remove on every member (Serf's ``keyRequest``)."""

    COMMAND: ClassVar[str]
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Key", "key", _STR),)
    key: str


@dataclass(frozen=True, slots=True)
class InstallKey(KeyChange):
    """Install the key on every member's keyring."""

    COMMAND: ClassVar[str] = "install-key"


@dataclass(frozen=True, slots=True)
class UseKey(KeyChange):
    """Make the installed key every member's primary key."""

    COMMAND: ClassVar[str] = "use-key"


@dataclass(frozen=True, slots=True)
class RemoveKey(KeyChange):
    """Remove the key from every member's keyring."""

    COMMAND: ClassVar[str] = "remove-key"


@dataclass(frozen=True, slots=True)
class ListKeys:
    """Count the keys every member holds."""

    COMMAND: ClassVar[str] = "list-keys"
    FIELDS: ClassVar[tuple[Field, ...]] = ()


@dataclass(frozen=True, slots=True)
class Tags:
    """Set ``tags`` and remove ``delete`` on the agent, and tell the cluster."""

    COMMAND: ClassVar[str] = "tags"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Tags", "tags", _STR_MAP),
        Field("DeleteTags", "delete", _STR_LIST),
    )
    tags: dict[str, str] = field(default_factory=dict)
    delete: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the query a stream delivered as :class:`RpcQueryEvent` ``id``."""

    COMMAND: ClassVar[str] = "respond"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("ID", "id", _U64),
        Field("Payload", "payload", _BIN),
    )
    id: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Stats:
    """The agent's figures for operators (``serf info``)."""

    COMMAND: ClassVar[str] = "stats"
    FIELDS: ClassVar[tuple[Field, ...]] = ()


@dataclass(frozen=True, slots=True)
class GetCoordinate:
    """The network coordinate the agent holds for member ``node`` (``serf rtt``)."""

    COMMAND: ClassVar[str] = "get-coordinate"
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Node", "node", _STR),)
    node: str = ""


RequestBody = (
    Handshake
    | Auth
    | EventRequest
    | ForceLeave
    | Join
    | Members
    | MembersFiltered
    | Stream
    | Stop
    | Leave
    | InstallKey
    | UseKey
    | RemoveKey
    | ListKeys
    | Tags
    | RpcQuery
    | Respond
    | Stats
    | GetCoordinate
)
"""A request to every command shoal serves; ``COMMAND`` names it."""

REQUESTS: Final[Mapping[str, type[RequestBody]]] = {
    cls.COMMAND: cls
    for cls in (
        Handshake,
        Auth,
        EventRequest,
        ForceLeave,
        Join,
        Members,
        MembersFiltered,
        Stream,
        Stop,
        Leave,
        InstallKey,
        UseKey,
        RemoveKey,
        ListKeys,
        Tags,
        RpcQuery,
        Respond,
        Stats,
        GetCoordinate,
    )
}
"""The request of each command shoal serves; the rest of :data:`SERF_COMMANDS` it refuses."""


# ---------------------------------------------------------------------------------------------
# Reply bodies, for the commands that return one.


@dataclass(frozen=True, slots=True)
class Joined:
    """How many of the addresses the agent joined through (Serf's ``joinResponse``)."""

    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Num", "num", _I32),)
    num: int


@dataclass(frozen=True, slots=True)
class MemberList:
    """The members a ``members`` or ``members-filtered`` request asked for."""

    FIELDS: ClassVar[tuple[Field, ...]] = (Field("Members", "members", _MEMBERS),)
    members: tuple[RpcMember, ...]


@dataclass(frozen=True, slots=True)
class StatsReply:
    """The agent's figures by section, each a map of names to text (a map of maps, no struct)."""

    sections: dict[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class CoordinateReply:
    """A member's network coordinate, or None when the agent has none for it (Serf's
    ``coordinateResponse``: a zero coordinate and ``Ok`` false)."""

    coordinate: Coordinate | None


MAX_COORDINATE_DIMENSIONS: Final = 64
"""Most dimensions a coordinate in a reply may have (Serf's have 8)."""

ReplyBody = Joined | MemberList | RpcKeyResult | StatsReply | CoordinateReply

REPLIES: Final[Mapping[str, type[ReplyBody]]] = {
    "join": Joined,
    "members": MemberList,
    "members-filtered": MemberList,
    "install-key": RpcKeyResult,
    "use-key": RpcKeyResult,
    "remove-key": RpcKeyResult,
    "list-keys": RpcKeyResult,
    "stats": StatsReply,
    "get-coordinate": CoordinateReply,
}
"""The reply body of each command shoal serves that returns one."""


# ---------------------------------------------------------------------------------------------
# Bytes in and out.

S = TypeVar("S")

_STRUCTS: Final = frozenset(
    (
        *REQUESTS.values(),
        RequestHeader,
        ReplyHeader,
        RpcMember,
        RpcMemberEvent,
        RpcUserEvent,
        RpcQueryEvent,
        RpcKeyResult,
        RpcQueryRecord,
        Joined,
        MemberList,
    )
)


class _Codecs(dict[type[Any], StructCodec[Any]]):
    """Each struct's codec, made when first used: a command needs few of them, and making
    them all at import cost every agent and client about 50 ms of start-up."""

    def __missing__(self, cls: type[Any]) -> StructCodec[Any]:
        if cls not in _STRUCTS:
            raise KeyError(cls)
        codec = self[cls] = StructCodec(cls, raw=False)
        return codec


_CODECS: Final = _Codecs()
_EMPTY_MAP: Final = b"\x80"


def pack(obj: object) -> bytes:
    """One msgpack object with str apart from bin, as Serf's RPC writes them."""
    # packb builds its own Packer: one module-wide Packer is not safe across threads.
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def encode(struct: object) -> bytes:
    """The msgpack bytes of one of this module's structs."""
    data: bytes = _CODECS[type(struct)].encode(struct)
    return data


def _map(value: object, what: str) -> dict[Any, Any]:
    if type(value) is dict:
        return value
    if value is None:  # Go decodes nil into a zero struct
        return {}
    raise _type_error(what, value, "a map")


def decode(cls: type[S], value: object, what: str) -> S:
    """``value``, as msgpack unpacked it, as a ``cls``; raises DecodeError, naming ``what``
    when ``value`` is not a map at all."""
    built: S = _CODECS[cls].build(_map(value, what))
    return built


def encode_reply_body(body: ReplyBody | None, command: str) -> bytes:
    """The body of a reply to ``command``: empty for a command that returns none, an empty map
    for a failed one (Serf's clients read a body even when the reply is an error)."""
    if isinstance(body, StatsReply):
        return pack(body.sections)
    if isinstance(body, CoordinateReply):
        return pack(_coordinate_map(body.coordinate))
    if isinstance(body, RpcKeyResult):
        keys = _CODECS[RpcKeyResult].to_map(body)
        if command != "list-keys":
            keys["Keys"] = None  # Go leaves it nil but for list-keys
        return pack(keys)
    if body is not None:
        return encode(body)
    return _EMPTY_MAP if SERF_COMMANDS[command][1] else b""


def decode_reply_body(command: str, value: object) -> ReplyBody:
    """The body of a reply to ``command``, which returns one."""
    cls = REPLIES[command]
    if cls is CoordinateReply:
        return _coordinate_reply(_map(value, "the get-coordinate reply"))
    if cls is not StatsReply:
        return decode(cls, value, f"the {command} reply")
    sections = _map(value, "the stats reply")
    return StatsReply({_text(k, "a stats section"): _text_map(v, k) for k, v in sections.items()})


def _coordinate_map(coordinate: Coordinate | None) -> dict[str, object]:
    """Serf's ``coordinateResponse``: the struct's fields in Go's (sorted) order, and Go's
    zero coordinate (a nil vector) when there is none."""
    if coordinate is None:
        zero = {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": None}
        return {"Coord": zero, "Ok": False}
    fields = {
        "Adjustment": float(coordinate.adjustment),
        "Error": float(coordinate.error),
        "Height": float(coordinate.height),
        "Vec": [float(x) for x in coordinate.vec],
    }
    return {"Coord": fields, "Ok": True}


def _number(value: object, key: str) -> float:
    if type(value) is float or (type(value) is int and abs(value) < 1 << 53):
        return float(value)
    if value is None:
        return 0.0
    raise _type_error(key, value, "a number")


def _coordinate_reply(reply: dict[Any, Any]) -> CoordinateReply:
    if not _flag(reply.get("Ok"), "Ok"):
        return CoordinateReply(None)
    fields = _map(reply.get("Coord"), "Coord")
    vec = fields.get("Vec")
    if vec is None:
        vec = []
    if type(vec) is not list or len(vec) > MAX_COORDINATE_DIMENSIONS:
        raise _type_error("Vec", vec, f"a list of at most {MAX_COORDINATE_DIMENSIONS} numbers")
    return CoordinateReply(
        Coordinate(
            vec=tuple(_number(x, "Vec") for x in vec),
            error=_number(fields.get("Error"), "Error"),
            adjustment=_number(fields.get("Adjustment"), "Adjustment"),
            height=_number(fields.get("Height"), "Height"),
        )
    )


def encode_event(event: RpcEvent) -> bytes:
    """A stream record for ``event``."""
    if isinstance(event, RpcMemberEvent):
        return encode(event)
    kind = "user" if isinstance(event, RpcUserEvent) else "query"
    return pack({"Event": kind, **_CODECS[type(event)].to_map(event)})


def decode_event(value: object) -> RpcEvent | None:
    """A stream record's event; None for a kind Serf 0.9 does not send (a later agent's)."""
    record = _map(value, "a stream record")
    kind = _text(record.get("Event"), "Event")
    if kind == "user":
        return decode(RpcUserEvent, record, "a stream record")
    if kind == "query":
        return decode(RpcQueryEvent, record, "a stream record")
    if kind in MEMBER_EVENTS:
        return decode(RpcMemberEvent, record, "a stream record")
    return None


QUERY_DONE: Final = pack({"Type": "done", "From": "", "Payload": None})
"""The record that ends a query's stream, as Serf's agent writes it."""


# ---------------------------------------------------------------------------------------------
# Addresses, as Go prints them and as Serf's flags take them.


def parse_rpc_addr(text: str, *, any_port: bool = False) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a host and a port number; port 0 (any free
    port, for a server) only with ``any_port``."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs brackets, as in Go
    if not host or not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise ValueError(f"{text!r} is not an address HOST:PORT, such as {DEFAULT_RPC_ADDR}")
    if int(port) == 0 and not any_port:
        raise ValueError(f"{text!r}: port 0 is no agent's port; give the port it listens on")
    return host, int(port)


def ip_text(addr: bytes) -> str:
    """An address as Go's ``net.IP.String()`` prints it (IPv4-mapped IPv6 as IPv4)."""
    if not addr:
        return ""
    if len(addr) == 4:
        return str(ipaddress.IPv4Address(addr))
    if len(addr) == 16:
        ip = ipaddress.IPv6Address(addr)
        return str(ip.ipv4_mapped or ip)
    return "?" + addr.hex()


def host_port(addr: bytes, port: int) -> str:
    """An address and port as Go's ``net.TCPAddr.String()`` prints them."""
    host = ip_text(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
