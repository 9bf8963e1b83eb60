"""Serf's agent RPC protocol (``ipc.go`` in Serf's sources), server and client, over trio TCP.

This is how ``serf members``, ``serf join`` and the other commands drive a running agent, so the
real ``serf`` binary can drive a shoal agent and ``swim members`` can drive either.  The server
only translates: what the messages mean for membership is the :class:`AgentBackend`'s business.

The wire, as Serf 0.9 writes it:

* A TCP connection carries msgpack objects back to back with no other framing.  A request is a
  header ``{Command, Seq}`` followed, for the commands that take one, by a body; a reply is a
  header ``{Seq, Error}`` followed, for the commands that return one, by a body.  Whether a body
  follows is fixed per command (:data:`SERF_COMMANDS`), and the client's Go code decodes a reply
  body even when ``Error`` is set, except for "Authentication required".
* Both ends use go-msgpack's ``MsgpackHandle{RawToString: true, WriteExt: true}``: strings are
  msgpack str (str8 included) and ``[]byte`` fields (``Addr``, ``Payload``) are bin; absent or
  nil fields mean Go's zero value.
* ``handshake {Version: 1}`` must come first; an agent with an auth key then needs
  ``auth {AuthKey}`` before anything but another handshake.
* ``stream {Type}`` is acknowledged by a header alone; every event it lets through then arrives
  as another header with the same ``Seq`` and a record body, until ``stop {Stop: seq}``.

Where Serf's agent drops the connection and leaves its client hanging or guessing, this server
replies with the reason and keeps the connection: an invalid regex, a body of the wrong shape, a
Serf command shoal does not serve.  It closes for what a client sent only when it cannot tell
where the next request starts: bytes that are not msgpack, a header that is not one, a command
it has never heard of, or a command before the handshake (as Serf does).

Serf's agent also lets its clients hold it without limit.  This server serves at most
:data:`MAX_CONNECTIONS` connections at once, closing new ones while at the limit, and closes a
connection that has not shaken hands (and authenticated, with an auth key) within
:data:`HANDSHAKE_TIMEOUT`, or sent a command within :data:`FIRST_COMMAND_TIMEOUT`.  After its
first command a client may stay idle for as long as it likes, as event streams do.  An open
connection costs the server a few kilobytes, all freed when it closes.

The endpoint is trusted the way Serf's is: whoever reaches it can make the agent leave, so bind
it to loopback or set an auth key.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Protocol, TypeVar

import msgpack
import msgpack.fallback
import trio

log = logging.getLogger("swim.rpc")

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
_FILTER_EVENTS: Final = MEMBER_EVENTS | {"user", "query", "*"}

STREAM_BUFFER: Final = 512
"""Events one stream may hold for a slow reader before dropping new ones (Serf's buffer size)."""
MAX_STREAMS: Final = 16
"""Event streams one connection may have open at once (Serf sets no limit).  Each costs the
server about 5 KiB, up to 10 with a full buffer, and a call for every event; ``serf``'s CLI
opens one, a program perhaps one per kind of event."""
TOO_MANY_STREAMS: Final = (
    f"Too many streams: a connection may have {MAX_STREAMS} at once; stop one first"
)
MAX_REQUEST_BYTES: Final = 64 << 10
"""Largest request object the server buffers.  Serf's requests are a few hundred bytes: a user
event's payload is at most 512, a query's 1 KiB; 64 KiB leaves room for a long join list."""
MAX_REPLY_BYTES: Final = 64 << 20
"""Largest reply object the client buffers: a members list of a very large cluster fits."""
DEFAULT_TIMEOUT: Final = 10.0
"""Seconds the client allows to connect, shake hands and write a request (Serf's default)."""
HANDSHAKE_TIMEOUT: Final = 5.0
"""Seconds a server gives a new connection to shake hands, and to authenticate when it has an
auth key, before closing it.  Serf's clients do both as soon as they connect."""
FIRST_COMMAND_TIMEOUT: Final = 60.0
"""Seconds from connecting a server gives a client to send its first command, before closing
the connection.  After one, a client may stay idle for good: an event stream waits for events,
and a client library for its next call."""
MAX_CONNECTIONS: Final = 128
"""RPC connections a server serves at once unless told otherwise (Serf sets no limit).  Each
costs a few kilobytes and a task; ``serf`` and ``swim`` commands use one each, for a moment,
and a program typically keeps one or two."""
_REQUEST_CHUNK = 4096
"""Bytes the server reads at a time: requests are small, and a big read is a big allocation."""
_REPLY_CHUNK = 65_536
"""Bytes the client reads at a time: a members reply can run to megabytes."""
_REPLY_BUFFER = 4096
"""Bytes the client's buffer starts with.  msgpack's C Unpacker allocates its whole
``read_size`` at once (by default 1 MiB) and never shrinks; from here it doubles only as far as
a reply needs."""


class RpcError(Exception):
    """The agent refused or failed a request; ``str()`` is its message, Serf's own strings
    included (such as :data:`INVALID_AUTH_TOKEN`)."""


class RpcConnectionError(Exception):
    """The agent could not be reached, broke the connection, or sent what this client cannot
    read; the message says which."""


@dataclass(frozen=True, slots=True)
class RpcMember:
    """One member as the RPC protocol shows it (Serf's ``agent.Member``)."""

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
    """Members joined, left, failed, changed tags or were reaped."""

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
    """A user event, as ``serf event`` sends it and event handlers receive it."""

    name: str
    payload: bytes
    coalesce: bool
    ltime: int
    """The event's Lamport time."""


RpcEvent = RpcMemberEvent | RpcUserEvent


@dataclass(frozen=True, slots=True)
class RpcKeyResult:
    """What the members answered a cluster-wide key operation (Serf's ``keyResponse``)."""

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
    """A query to send through the agent (Serf's ``queryRequest``)."""

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

    type: str
    """"ack" or "response" ("done" ends the stream and is not passed on)."""
    node: str
    payload: bytes = b""


class AgentBackend(Protocol):
    """What the RPC server drives: the agent implements this.  Every method that can fail
    raises an exception whose ``str()`` is the error to report to the client."""

    def members(self) -> list[RpcMember]:
        """Every member this agent knows, itself included, in any state."""
        ...

    async def join(self, addresses: list[str], replay: bool) -> int:
        """Join the cluster through these addresses; return how many answered.  ``replay``
        asks to replay past user events."""
        ...

    async def leave(self) -> None:
        """Leave the cluster gracefully.  The reply goes out after this returns, so shut the
        agent down afterwards (``serf agent`` leaves, replies, then shuts down)."""
        ...

    async def force_leave(self, node: str, prune: bool) -> None:
        """Mark a failed member as left; ``prune`` also forgets it at once."""
        ...

    async def set_tags(self, add: dict[str, str], delete: list[str]) -> None:
        """Set these tags and remove those on this agent, and tell the cluster."""
        ...

    async def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        """Send a user event to the cluster."""
        ...

    def stats(self) -> dict[str, dict[str, str]]:
        """Figures for operators, grouped by section (``serf info`` prints them)."""
        ...

    def subscribe(self, deliver: Callable[[RpcEvent], None]) -> Callable[[], None]:
        """Call ``deliver`` from trio's thread with every member and user event from now on,
        until the returned function is called.  ``deliver`` never blocks: a stream too far
        behind drops events, as Serf's does."""
        ...

    async def install_key(self, key: str) -> RpcKeyResult:
        """Install the base64 ``key`` on every member; raise :class:`RpcKeyError` unless
        every live member succeeded (so for the other key operations)."""
        ...

    async def use_key(self, key: str) -> RpcKeyResult:
        """Make the base64 ``key`` every member's primary key."""
        ...

    async def remove_key(self, key: str) -> RpcKeyResult:
        """Remove the base64 ``key`` from every member's keyring."""
        ...

    async def list_keys(self) -> RpcKeyResult:
        """Count the keys every member holds."""
        ...

    async def query(self, query: RpcQuery) -> AsyncIterator[RpcQueryRecord]:
        """Send ``query`` (raising when it cannot be sent) and return its acks and answers as
        they arrive, ending when its timeout passes."""
        ...


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


# ---------------------------------------------------------------------------------------------
# Msgpack objects in and out.


def _pack(obj: object) -> bytes:
    # packb builds its own Packer: one module-wide Packer is not safe across threads.
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


class _ProtocolError(ValueError):
    """The peer broke the protocol: bytes that are not msgpack, an object without the shape of
    the Serf struct due, a request out of order."""


class _Unpacker(Protocol):
    """What :class:`_ObjectReader` needs of msgpack's Unpacker, the C one or the Python one."""

    def feed(self, data: bytes | bytearray) -> None: ...

    def __next__(self) -> object: ...


class _ObjectReader:
    """Msgpack objects from a stream, one at a time, reading ``chunk`` bytes at a time into
    ``unpacker``, which buffers at most ``max_bytes``.

    Partial objects stay buffered when a read is cancelled, so reading can resume.
    """

    def __init__(
        self, stream: trio.abc.ReceiveStream, unpacker: _Unpacker, max_bytes: int, chunk: int
    ) -> None:
        """Use :meth:`for_requests` or :meth:`for_replies`."""
        self._stream = stream
        self._unpacker = unpacker
        self._max_bytes = max_bytes
        self._chunk = chunk

    @classmethod
    def for_requests(cls, stream: trio.abc.ReceiveStream) -> _ObjectReader:
        """The server's reader.  Many connections may be open, each sending a few small
        requests, so it uses msgpack's pure-Python Unpacker: about 0.5 KB and 20 us a request,
        where the C one is 41 KB (it embeds a 1024-level parse stack) and 2 us."""
        unpacker = msgpack.fallback.Unpacker(max_buffer_size=MAX_REQUEST_BYTES)
        return cls(stream, unpacker, MAX_REQUEST_BYTES, _REQUEST_CHUNK)

    @classmethod
    def for_replies(cls, stream: trio.abc.ReceiveStream) -> _ObjectReader:
        """The client's reader: one per client, for replies up to a large members list."""
        unpacker = msgpack.Unpacker(read_size=_REPLY_BUFFER, max_buffer_size=MAX_REPLY_BYTES)
        return cls(stream, unpacker, MAX_REPLY_BYTES, _REPLY_CHUNK)

    async def next(self) -> object:
        """The next object; EOFError when the peer closes the stream."""
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                pass
            except Exception as exc:  # msgpack raises several unrelated types for bad input
                raise _ProtocolError(f"not msgpack ({type(exc).__name__}: {exc})") from None
            data = await self._stream.receive_some(self._chunk)
            if not data:
                raise EOFError
            try:
                self._unpacker.feed(data)
            except msgpack.BufferFull:
                raise _ProtocolError(f"an object is larger than {self._max_bytes} bytes") from None


def _struct(value: object, what: str) -> dict[str, object]:
    if value is None:  # Go decodes nil into a zero struct
        return {}
    if isinstance(value, dict):
        return value
    raise _ProtocolError(f"{what} is a {type(value).__name__}, not a map")


def _as_text(value: object, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise _ProtocolError(f"{what} is not valid UTF-8") from None
    raise _ProtocolError(f"{what} is a {type(value).__name__}, not a string")


def _text(body: dict[str, object], key: str) -> str:
    return _as_text(body.get(key), key)


def _bytes(body: dict[str, object], key: str) -> bytes:
    value = body.get(key)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # older msgpack writers send []byte as str
        return value.encode()
    raise _ProtocolError(f"{key} is a {type(value).__name__}, not bytes")


def _flag(body: dict[str, object], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise _ProtocolError(f"{key} is a {type(value).__name__}, not a boolean")


def _integer(body: dict[str, object], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if type(value) is int and low <= value <= high:
        return value
    raise _ProtocolError(f"{key} is {value!r:.40}, not an integer in [{low}, {high}]")


def _text_list(body: dict[str, object], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return [_as_text(item, key) for item in value]
    raise _ProtocolError(f"{key} is a {type(value).__name__}, not a list of strings")


def _text_map(body: dict[str, object], key: str) -> dict[str, str]:
    value = body.get(key)
    if value is None:
        return {}
    if isinstance(value, dict):
        return {_as_text(k, key): _as_text(v, key) for k, v in value.items()}
    raise _ProtocolError(f"{key} is a {type(value).__name__}, not a map of strings")


def _member_struct(member: RpcMember) -> dict[str, object]:
    return {
        "Name": member.name,
        "Addr": member.addr,
        "Port": member.port,
        "Tags": member.tags,
        "Status": member.status,
        "ProtocolMin": member.protocol_min,
        "ProtocolMax": member.protocol_max,
        "ProtocolCur": member.protocol_cur,
        "DelegateMin": member.delegate_min,
        "DelegateMax": member.delegate_max,
        "DelegateCur": member.delegate_cur,
    }


def _member(value: object) -> RpcMember:
    body = _struct(value, "a member")
    return RpcMember(
        name=_text(body, "Name"),
        addr=_bytes(body, "Addr"),
        port=_integer(body, "Port", 0, 0xFFFF),
        tags=_text_map(body, "Tags"),
        status=_text(body, "Status"),
        protocol_min=_integer(body, "ProtocolMin", 0, 0xFF),
        protocol_max=_integer(body, "ProtocolMax", 0, 0xFF),
        protocol_cur=_integer(body, "ProtocolCur", 0, 0xFF),
        delegate_min=_integer(body, "DelegateMin", 0, 0xFF),
        delegate_max=_integer(body, "DelegateMax", 0, 0xFF),
        delegate_cur=_integer(body, "DelegateCur", 0, 0xFF),
    )


def _members(value: object) -> list[RpcMember]:
    members = _struct(value, "the members reply").get("Members")
    if members is None:
        return []
    if not isinstance(members, list):
        raise _ProtocolError(f"Members is a {type(members).__name__}, not a list")
    return [_member(item) for item in members]


def _joined(value: object) -> int:
    return _integer(_struct(value, "the join reply"), "Num", -(1 << 31), (1 << 31) - 1)


def _stats(value: object) -> dict[str, dict[str, str]]:
    sections = _struct(value, "the stats reply")
    return {_as_text(name, "a stats section"): _text_map(sections, name) for name in sections}


def _record(event: RpcEvent) -> dict[str, object]:
    if isinstance(event, RpcMemberEvent):
        return {"Event": event.event, "Members": [_member_struct(m) for m in event.members]}
    return {
        "Event": "user",
        "LTime": event.ltime,
        "Name": event.name,
        "Payload": event.payload,
        "Coalesce": event.coalesce,
    }


def _event(value: object) -> RpcEvent | None:
    record = _struct(value, "a stream record")
    kind = _text(record, "Event")
    if kind == "user":
        return RpcUserEvent(
            name=_text(record, "Name"),
            payload=_bytes(record, "Payload"),
            coalesce=_flag(record, "Coalesce"),
            ltime=_integer(record, "LTime", 0, (1 << 64) - 1),
        )
    if kind in MEMBER_EVENTS:
        return RpcMemberEvent(kind, tuple(_members({"Members": record.get("Members")})))
    return None  # a query: shoal has none, and Serf sends them only to "query" filters


def _key_struct(result: RpcKeyResult, listing: bool) -> dict[str, object]:
    return {
        "Messages": result.messages,
        "Keys": result.keys if listing else None,  # Go leaves it nil but for list-keys
        "NumNodes": result.num_nodes,
        "NumErr": result.num_err,
        "NumResp": result.num_resp,
    }


def _key_result(value: object) -> RpcKeyResult:
    body = _struct(value, "the key reply")
    keys = body.get("Keys")
    if keys is not None and not isinstance(keys, dict):
        raise _ProtocolError(f"Keys is a {type(keys).__name__}, not a map")
    counts = {
        _as_text(k, "Keys"): _integer({"Keys": n}, "Keys", 0, 1 << 31)
        for k, n in (keys or {}).items()
    }
    return RpcKeyResult(
        num_nodes=_integer(body, "NumNodes", 0, 1 << 31),
        num_resp=_integer(body, "NumResp", 0, 1 << 31),
        num_err=_integer(body, "NumErr", 0, 1 << 31),
        messages=_text_map(body, "Messages"),
        keys=counts,
    )


def _query_struct(query: RpcQuery) -> dict[str, object]:
    return {
        "FilterNodes": list(query.filter_nodes),
        "FilterTags": query.filter_tags,
        "RequestAck": query.request_ack,
        "RelayFactor": query.relay_factor,
        "Timeout": round(query.timeout * 1e9),  # Go's time.Duration: nanoseconds
        "Name": query.name,
        "Payload": query.payload,
    }


def _query(body: dict[str, object]) -> RpcQuery:
    return RpcQuery(
        name=_text(body, "Name"),
        payload=_bytes(body, "Payload"),
        filter_nodes=tuple(_text_list(body, "FilterNodes")),
        filter_tags=_text_map(body, "FilterTags"),
        request_ack=_flag(body, "RequestAck"),
        relay_factor=_integer(body, "RelayFactor", 0, 0xFF),
        timeout=_integer(body, "Timeout", 0, (1 << 63) - 1) / 1e9,
    )


def _query_record(value: object) -> RpcQueryRecord:
    record = _struct(value, "a query record")
    kind = _text(record, "Type")
    if kind not in QUERY_RECORD_TYPES:
        raise _ProtocolError(f"a query record of type {kind!r}, not one of {QUERY_RECORD_TYPES}")
    return RpcQueryRecord(kind, _text(record, "From"), _bytes(record, "Payload"))


# ---------------------------------------------------------------------------------------------
# What the server decides for itself: event filters and member filters, as Serf defines them.


def parse_event_filter(text: str) -> list[tuple[str, str]]:
    """Serf's ``-event-handler``/``stream`` filter, such as ``"member-join,user:deploy"``, as
    (event, name) pairs; empty means ``"*"``.  Raises RpcError(INVALID_FILTER)."""
    filters = []
    for part in (text or "*").split(","):
        event, name = part, ""
        if part.startswith(("user:", "query:")):
            event, _, name = part.partition(":")
        if event not in _FILTER_EVENTS:
            raise RpcError(INVALID_FILTER)
        filters.append((event, name))
    return filters


def event_matches(filters: Sequence[tuple[str, str]], event: RpcEvent) -> bool:
    """Whether any filter lets ``event`` through (Serf's ``EventFilter.Invoke``)."""
    kind, name = (event.event, "") if isinstance(event, RpcMemberEvent) else ("user", event.name)
    return any(
        wanted == "*" or (wanted == kind and (not wanted_name or wanted_name == name))
        for wanted, wanted_name in filters
    )


_LEADING_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")


def _anchored(expr: str) -> re.Pattern[str]:
    # Serf compiles "^expr$" with Go's regexp, whose $ is the very end (Python's \Z).  Go also
    # allows flags such as (?i) after the ^, which Python 3.11 refuses: move them in front.
    flags = _LEADING_FLAGS.match(expr)
    prefix = flags.group() if flags else ""
    return re.compile(prefix + "^" + expr[len(prefix) :] + r"\Z")


def filter_members(
    members: Sequence[RpcMember], tags: Mapping[str, str], status: str, name: str
) -> list[RpcMember]:
    """The members whose tags, status and name fully match these regexes, as Serf's
    ``members-filtered`` selects them: an empty status or name matches anything, and a tag
    filter on a tag a member lacks matches its empty value.  Raises RpcError for a bad regex."""
    try:
        tag_res = {key: _anchored(expr) for key, expr in tags.items()}
        status_re = _anchored(status)
        name_re = _anchored(name)
    except re.error as exc:
        raise RpcError(f"{REGEX_ERROR_PREFIX}{exc}") from None
    return [
        member
        for member in members
        if all(regex.search(member.tags.get(key, "")) for key, regex in tag_res.items())
        and (not status or status_re.search(member.status))
        and (not name or name_re.search(member.name))
    ]


# ---------------------------------------------------------------------------------------------
# The server.


async def serve_rpc(
    backend: AgentBackend,
    host: str,
    port: int,
    auth_key: str | None = None,
    *,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve Serf's RPC protocol on ``host:port`` until cancelled, one task per connection.

    Start it with ``port = await nursery.start(serve_rpc, backend, host, port)``: it reports
    the bound port, so port 0 picks a free one.  With an ``auth_key`` (empty means none, as in
    Serf), clients must authenticate after the handshake.  While ``max_connections`` are open,
    new ones are closed as soon as they are accepted.
    """
    if max_connections < 1:
        raise ValueError(f"max_connections is {max_connections}; it must be at least 1")
    limit = _ConnectionLimit(max_connections)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(
        partial(_serve_connection, backend, auth_key or None, limit), listeners
    )


class _ConnectionLimit:
    """Counts a server's open connections and refuses those over its limit, logging once when
    refusals start and once when they stop."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._open = 0
        self._refused = 0
        """Connections refused since the server was last under its limit."""

    def admit(self) -> bool:
        """Whether to serve a new connection; if so, :meth:`release` it when it closes."""
        if self._open < self._most:
            self._open += 1
            return True
        if not self._refused:
            log.warning(
                "the agent serves at most %d RPC connections and has that many open: closing "
                "new ones until some close.  Is a client opening connections and not closing "
                "them?",
                self._most,
            )
        self._refused += 1
        return False

    def release(self) -> None:
        self._open -= 1
        if self._refused:
            log.warning("serving new RPC connections again, after refusing %d", self._refused)
            self._refused = 0


async def _serve_connection(
    backend: AgentBackend,
    auth_key: str | None,
    limit: _ConnectionLimit,
    stream: trio.SocketStream,
) -> None:
    if not limit.admit():
        await trio.aclose_forcefully(stream)
        return
    try:
        host, port, *_ = stream.socket.getpeername()
        peer = f"{host}:{port}"
    except OSError:  # the client is already gone
        peer = "a departed client"
    log.debug("RPC client %s connected", peer)
    try:
        async with trio.open_nursery() as nursery:  # for its event streams
            connection = _Connection(backend, auth_key, stream, peer, nursery)
            try:
                await connection.serve()
            finally:
                connection.stop_streams()
            nursery.cancel_scope.cancel()
    except Exception:  # a bug must cost this connection only, never the server
        log.exception("RPC client %s: unexpected failure; closing its connection", peer)
    finally:
        limit.release()
        await trio.aclose_forcefully(stream)


@dataclass(slots=True)
class _EventStream:
    events: trio.MemorySendChannel[RpcEvent]
    unsubscribe: Callable[[], None]

    def close(self) -> None:
        self.unsubscribe()
        self.events.close()


class _Connection:
    """One client: reads requests in order and answers each; event streams write alongside."""

    def __init__(
        self,
        backend: AgentBackend,
        auth_key: str | None,
        stream: trio.SocketStream,
        peer: str,
        nursery: trio.Nursery,
    ) -> None:
        self._backend = backend
        self._auth_key = auth_key
        self._stream = stream
        self._peer = peer
        self._nursery = nursery
        self._reader = _ObjectReader.for_requests(stream)
        self._write_lock = trio.Lock()
        self._version = 0
        self._authenticated = auth_key is None
        self._commanded = False
        """Whether the client has sent a command other than handshake and auth."""
        self._streams: dict[int, _EventStream] = {}
        self._connected = trio.current_time()
        self._deadline = trio.CancelScope(deadline=self._connected + HANDSHAKE_TIMEOUT)
        """Closes a connection that does not get as far as its first command in time."""

    async def serve(self) -> None:
        """Answer requests until the client leaves, sends what cannot be parsed, or is too
        slow to send its first command."""
        with self._deadline:
            try:
                while True:
                    await self._serve_one()
            except EOFError:
                log.debug("RPC client %s disconnected", self._peer)
            except _ProtocolError as exc:
                # Log text, not the exception: a handler that keeps records (a MemoryHandler, a
                # queue) would keep its traceback, and through it this connection.
                log.info("closing the RPC connection from %s: %s", self._peer, str(exc))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("RPC client %s went away", self._peer)
        if self._deadline.cancelled_caught:
            log.info("closing the RPC connection from %s: %s", self._peer, self._too_slow())

    def _too_slow(self) -> str:
        """Why the deadline closed this connection."""
        if not self._version:
            return f"it did not shake hands within {HANDSHAKE_TIMEOUT:g} s of connecting"
        if not self._authenticated:
            return (
                f"it did not authenticate within {HANDSHAKE_TIMEOUT:g} s of connecting, and "
                "this agent has an RPC auth key"
            )
        return f"it sent no command within {FIRST_COMMAND_TIMEOUT:g} s of connecting"

    def _await_command(self) -> None:
        """Once the client has shaken hands and authenticated, let it wait for its first
        command until FIRST_COMMAND_TIMEOUT after connecting."""
        if self._version and self._authenticated and not self._commanded:
            self._deadline.deadline = self._connected + FIRST_COMMAND_TIMEOUT

    def stop_streams(self) -> None:
        """Unsubscribe every event stream of this connection."""
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()

    async def _serve_one(self) -> None:
        header = _struct(await self._reader.next(), "the request header")
        command = _text(header, "Command")
        seq = _integer(header, "Seq", 0, (1 << 64) - 1)
        if command != "handshake" and not self._version:
            await self._reply(seq, HANDSHAKE_REQUIRED)
            raise _ProtocolError(f"{command!r} came before the handshake")
        shape = SERF_COMMANDS.get(command)
        if shape is None:
            await self._reply(seq, UNSUPPORTED_COMMAND)
            raise _ProtocolError(f"unknown command {command!r}, whose body cannot be skipped")
        takes_body, returns_body = shape
        body = await self._reader.next() if takes_body else None
        # Serf's client reads a reply body even when the reply is an error.
        empty_reply: object = {} if returns_body else None
        if not self._authenticated and command not in ("handshake", "auth"):
            await self._reply(seq, AUTH_REQUIRED)  # the one error Serf's client expects bare
            return
        if command not in ("handshake", "auth"):
            self._commanded = True
            self._deadline.deadline = math.inf  # from now on it may be as slow as it likes
        handler = _HANDLERS.get(command)
        if handler is None:
            await self._reply(seq, UNSUPPORTED_COMMAND, empty_reply)
            return
        try:
            await handler(self, seq, _struct(body, f"the {command} request"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except _ProtocolError as exc:  # logged as text, as in serve()
            log.info("RPC %s from %s: malformed request: %s", command, self._peer, str(exc))
            await self._reply(seq, f"decode failed: {exc}", empty_reply)
        except RpcKeyError as exc:  # Serf replies with the tally alongside the error
            log.info("RPC %s from %s failed: %s", command, self._peer, str(exc))
            await self._reply(seq, str(exc), _key_struct(exc.result, command == "list-keys"))
        except Exception as exc:  # the backend's refusal, or its failure, is this answer
            message = str(exc) or type(exc).__name__
            log.info("RPC %s from %s failed: %s", command, self._peer, message)
            await self._reply(seq, message, empty_reply)

    async def _reply(self, seq: int, error: str = "", body: object = None) -> None:
        data = _pack({"Seq": seq, "Error": error})
        if body is not None:
            data += _pack(body)
        async with self._write_lock:
            await self._stream.send_all(data)

    async def _handshake(self, seq: int, body: dict[str, object]) -> None:
        version = _integer(body, "Version", -(1 << 31), (1 << 31) - 1)
        if version != IPC_VERSION:
            raise RpcError(UNSUPPORTED_IPC_VERSION)
        if self._version:
            raise RpcError(DUPLICATE_HANDSHAKE)
        self._version = version
        self._await_command()
        await self._reply(seq)

    async def _auth(self, seq: int, body: dict[str, object]) -> None:
        offered = _text(body, "AuthKey").encode()
        if not hmac.compare_digest(offered, (self._auth_key or "").encode()):
            raise RpcError(INVALID_AUTH_TOKEN)
        self._authenticated = True
        self._await_command()
        await self._reply(seq)

    async def _user_event(self, seq: int, body: dict[str, object]) -> None:
        await self._backend.user_event(
            _text(body, "Name"), _bytes(body, "Payload"), _flag(body, "Coalesce")
        )
        await self._reply(seq)

    async def _force_leave(self, seq: int, body: dict[str, object]) -> None:
        await self._backend.force_leave(_text(body, "Node"), _flag(body, "Prune"))
        await self._reply(seq)

    async def _join(self, seq: int, body: dict[str, object]) -> None:
        joined = await self._backend.join(_text_list(body, "Existing"), _flag(body, "Replay"))
        await self._reply(seq, "", {"Num": joined})

    async def _members(self, seq: int, body: dict[str, object]) -> None:
        members = filter_members(
            self._backend.members(),
            _text_map(body, "Tags"),
            _text(body, "Status"),
            _text(body, "Name"),
        )
        await self._reply(seq, "", {"Members": [_member_struct(m) for m in members]})

    async def _leave(self, seq: int, _: dict[str, object]) -> None:
        await self._backend.leave()
        await self._reply(seq)

    async def _tags(self, seq: int, body: dict[str, object]) -> None:
        await self._backend.set_tags(_text_map(body, "Tags"), _text_list(body, "DeleteTags"))
        await self._reply(seq)

    async def _stats(self, seq: int, _: dict[str, object]) -> None:
        await self._reply(seq, "", self._backend.stats())

    async def _install_key(self, seq: int, body: dict[str, object]) -> None:
        result = await self._backend.install_key(_text(body, "Key"))
        await self._reply(seq, "", _key_struct(result, listing=False))

    async def _use_key(self, seq: int, body: dict[str, object]) -> None:
        result = await self._backend.use_key(_text(body, "Key"))
        await self._reply(seq, "", _key_struct(result, listing=False))

    async def _remove_key(self, seq: int, body: dict[str, object]) -> None:
        result = await self._backend.remove_key(_text(body, "Key"))
        await self._reply(seq, "", _key_struct(result, listing=False))

    async def _list_keys(self, seq: int, _: dict[str, object]) -> None:
        result = await self._backend.list_keys()
        await self._reply(seq, "", _key_struct(result, listing=True))

    async def _query(self, seq: int, body: dict[str, object]) -> None:
        records = await self._backend.query(_query(body))
        await self._reply(seq)
        self._nursery.start_soon(self._forward_query, seq, records)

    async def _forward_query(self, seq: int, records: AsyncIterator[RpcQueryRecord]) -> None:
        """Stream a query's acks and answers, then "done", as Serf's agent does."""
        header = _pack({"Seq": seq, "Error": ""})
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for record in records:
                data = header + _pack(
                    {"Type": record.type, "From": record.node, "Payload": record.payload}
                )
                async with self._write_lock:
                    await self._stream.send_all(data)
            async with self._write_lock:
                await self._stream.send_all(
                    header + _pack({"Type": "done", "From": "", "Payload": None})
                )

    async def _stream_events(self, seq: int, body: dict[str, object]) -> None:
        filters = parse_event_filter(_text(body, "Type"))
        if seq in self._streams:
            raise RpcError(STREAM_EXISTS)
        if len(self._streams) >= MAX_STREAMS:
            raise RpcError(TOO_MANY_STREAMS)
        send, receive = trio.open_memory_channel[RpcEvent](STREAM_BUFFER)
        dropped = 0

        def deliver(event: RpcEvent) -> None:
            nonlocal dropped
            if not event_matches(filters, event):
                return
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                if not dropped:
                    log.warning(
                        "RPC client %s reads its stream too slowly: dropping events until it "
                        "catches up",
                        self._peer,
                    )
                dropped += 1
                return
            except trio.ClosedResourceError:
                return  # a backend that snapshots its subscribers may call us once after stop
            if dropped:
                log.warning("RPC client %s caught up after losing %d events", self._peer, dropped)
                dropped = 0

        # Subscribe before acknowledging so nothing is missed; the events wait in the channel
        # and go out only after the acknowledgement, as Serf orders them.
        self._streams[seq] = _EventStream(send, self._backend.subscribe(deliver))
        await self._reply(seq)
        self._nursery.start_soon(self._forward, seq, receive)

    async def _forward(self, seq: int, events: trio.MemoryReceiveChannel[RpcEvent]) -> None:
        async with events:
            async for event in events:
                data = _pack({"Seq": seq, "Error": ""}) + _pack(_record(event))
                async with self._write_lock:
                    if seq not in self._streams:
                        return  # stopped: nothing may follow the reply to stop
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the request loop sees the closed connection too

    async def _stop(self, seq: int, body: dict[str, object]) -> None:
        stream = self._streams.pop(_integer(body, "Stop", 0, (1 << 64) - 1), None)
        if stream is not None:
            stream.close()
        await self._reply(seq)  # Serf's stop always succeeds


_Handler = Callable[[_Connection, int, dict[str, object]], Awaitable[None]]
_HANDLERS: Final[Mapping[str, _Handler]] = {
    "handshake": _Connection._handshake,
    "auth": _Connection._auth,
    "event": _Connection._user_event,
    "force-leave": _Connection._force_leave,
    "join": _Connection._join,
    "members": _Connection._members,
    "members-filtered": _Connection._members,
    "stream": _Connection._stream_events,
    "stop": _Connection._stop,
    "leave": _Connection._leave,
    "tags": _Connection._tags,
    "stats": _Connection._stats,
    "install-key": _Connection._install_key,
    "use-key": _Connection._use_key,
    "remove-key": _Connection._remove_key,
    "list-keys": _Connection._list_keys,
    "query": _Connection._query,
}
"""What serves each command, as plain functions: a table of bound methods in each connection
would make a reference cycle, leaving every closed connection to the cyclic collector."""


# ---------------------------------------------------------------------------------------------
# The client.

T = TypeVar("T")


@dataclass(slots=True)
class _Call:
    returns_body: bool
    done: bool = False
    error: str = ""
    body: object = None


@dataclass(slots=True)
class _Subscription:
    query: bool = False
    """A query's records, which end with a "done" record rather than a stop."""
    acknowledged: bool = False
    error: str = ""
    stopped: bool = False
    finished: bool = False
    dropped: int = 0
    records: deque[object] = field(default_factory=deque)


class RpcClient:
    """A client of Serf's RPC protocol, for a shoal agent or a Serf one.

    Open it with ``async with RpcClient.connect("127.0.0.1:7373") as client:``.  Several tasks
    may use one client at once: there is no background task, so whichever task waits for a
    reply reads the connection and hands each message to its owner.
    """

    def __init__(self, stream: trio.SocketStream, addr: str, timeout: float) -> None:
        """Use :meth:`connect`."""
        self._stream = stream
        self._addr = addr
        self._timeout = timeout
        self._reader = _ObjectReader.for_replies(stream)
        self._read_lock = trio.Lock()
        self._write_lock = trio.Lock()
        self._last_seq = 0
        self._calls: dict[int, _Call] = {}
        self._subscriptions: dict[int, _Subscription] = {}
        self._body_for: Callable[[object], None] | None = None
        self._broken: RpcConnectionError | None = None
        self._closed_by_agent = False

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        addr: str = DEFAULT_RPC_ADDR,
        auth_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[RpcClient]:
        """Connect to the agent at ``addr`` (``host:port``), shake hands, and authenticate when
        given a key.  Raises RpcConnectionError when the agent cannot be reached, RpcError when
        it refuses the key, ValueError for an address that is not ``host:port``."""
        host, port = parse_rpc_addr(addr)
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            raise RpcConnectionError(
                f"cannot reach the agent at {addr}: no answer in {timeout:g} s"
            ) from None
        except OSError as exc:
            raise RpcConnectionError(
                f"cannot reach the agent at {addr}: {_connect_failure(exc)}"
            ) from None
        async with stream:
            client = cls(stream, addr, timeout)
            try:
                with trio.fail_after(timeout):
                    await client._request("handshake", {"Version": IPC_VERSION})
                    if auth_key:
                        await client._request("auth", {"AuthKey": auth_key})
            except trio.TooSlowError:
                raise RpcConnectionError(
                    f"{addr} accepted the connection but did not answer the handshake in "
                    f"{timeout:g} s; is it a Serf or shoal agent's RPC address?"
                ) from None
            except RpcConnectionError as exc:
                if not client._closed_by_agent:
                    raise
                raise RpcConnectionError(
                    f"{exc} before answering the handshake.  A shoal agent does so while it "
                    "serves as many RPC connections as it allows, or when a handshake takes "
                    f"over {HANDSHAKE_TIMEOUT:g} s, and logs which: try again once others close"
                ) from None
            yield client

    async def members(self) -> list[RpcMember]:
        """Every member the agent knows."""
        return self._read(_members, await self._request("members", returns_body=True))

    async def members_filtered(
        self, tags: Mapping[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[RpcMember]:
        """The members whose tags, status and name fully match these regexes (empty: any)."""
        body = {"Tags": dict(tags or {}), "Status": status, "Name": name}
        return self._read(_members, await self._request("members-filtered", body, True))

    async def join(self, addresses: Sequence[str], replay: bool = False) -> int:
        """Ask the agent to join through these addresses; returns how many it reached."""
        body = {"Existing": list(addresses), "Replay": replay}
        reply = await self._request("join", body, True)
        return self._read(_joined, reply)

    async def leave(self) -> None:
        """Ask the agent to leave the cluster gracefully and shut down."""
        await self._request("leave")

    async def force_leave(self, node: str, prune: bool = False) -> None:
        """Ask the agent to mark a failed member as left (``prune``: and forget it)."""
        await self._request("force-leave", {"Node": node, "Prune": prune})

    async def update_tags(
        self, tags: Mapping[str, str] | None = None, delete: Sequence[str] = ()
    ) -> None:
        """Set and remove tags on the agent."""
        await self._request("tags", {"Tags": dict(tags or {}), "DeleteTags": list(delete)})

    async def user_event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        """Send a user event through the agent."""
        await self._request("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    async def stats(self) -> dict[str, dict[str, str]]:
        """The agent's figures by section, as ``serf info`` shows them."""
        return self._read(_stats, await self._request("stats", returns_body=True))

    async def install_key(self, key: str) -> RpcKeyResult:
        """Install the base64 ``key`` on every member (``serf keys -install``).  Raises
        :class:`RpcKeyError`, with what each member said, unless all of them succeeded."""
        return await self._key_request("install-key", {"Key": key})

    async def use_key(self, key: str) -> RpcKeyResult:
        """Make the installed base64 ``key`` every member's primary key (``-use``)."""
        return await self._key_request("use-key", {"Key": key})

    async def remove_key(self, key: str) -> RpcKeyResult:
        """Remove the base64 ``key`` from every member's keyring (``-remove``)."""
        return await self._key_request("remove-key", {"Key": key})

    async def list_keys(self) -> RpcKeyResult:
        """Count the keys every member holds (``-list``)."""
        return await self._key_request("list-keys", None)

    async def _key_request(self, command: str, body: object) -> RpcKeyResult:
        error, reply = await self._exchange(command, body, True)
        if error == AUTH_REQUIRED:
            raise RpcError(error)
        result = self._read(_key_result, reply)
        if error:
            raise RpcKeyError(error, result)
        return result

    @asynccontextmanager
    async def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        nodes: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout: float = 0.0,
    ) -> AsyncIterator[AsyncIterator[RpcQueryRecord]]:
        """Send a query through the agent and read its acks and answers as they come:
        ``async with client.query("uptime") as records: async for record in records: ...``.
        The records end when the query times out (``timeout`` seconds; 0: Serf's default).
        ``nodes`` and ``tags`` (tag to regex) pick who answers."""
        query = RpcQuery(
            name, payload, tuple(nodes), dict(tags or {}), request_ack, relay_factor, timeout
        )
        seq = self._next_seq()
        subscription = self._subscriptions[seq] = _Subscription(query=True)
        try:
            await self._send("query", seq, _query_struct(query))
            await self._wait(lambda: subscription.acknowledged)
            if subscription.error:
                raise RpcError(subscription.error)
            yield self._query_records(subscription)
        finally:
            subscription.stopped = True  # what arrives until "done" is dropped
            subscription.records.clear()
            if subscription.error or subscription.finished:
                self._subscriptions.pop(seq, None)

    async def _query_records(self, subscription: _Subscription) -> AsyncIterator[RpcQueryRecord]:
        while True:
            await self._wait(lambda: bool(subscription.records) or subscription.finished)
            if not subscription.records:
                return
            yield self._read(_query_record, subscription.records.popleft())

    @asynccontextmanager
    async def stream(self, event_filter: str = "*") -> AsyncIterator[AsyncIterator[RpcEvent]]:
        """Events the agent sees, filtered like ``"member-join,member-failed,user:deploy"``:
        ``async with client.stream(...) as events: async for event in events: ...``.  Leaving
        the block stops the stream.  A reader that falls :data:`STREAM_BUFFER` events behind
        loses the newest, as Serf's client does."""
        seq = self._next_seq()
        subscription = self._subscriptions[seq] = _Subscription()
        try:
            await self._send("stream", seq, {"Type": event_filter})
            await self._wait(lambda: subscription.acknowledged)
            if subscription.error:
                raise RpcError(subscription.error)
            yield self._events(subscription)
        finally:
            subscription.stopped = True
            subscription.records.clear()
            if self._broken is None and not subscription.error:
                with trio.move_on_after(self._timeout, shield=True), suppress(RpcConnectionError):
                    await self._request("stop", {"Stop": seq})

    async def _events(self, subscription: _Subscription) -> AsyncIterator[RpcEvent]:
        while True:
            await self._wait(lambda: bool(subscription.records) or subscription.stopped)
            if subscription.stopped:
                return
            event = self._read(_event, subscription.records.popleft())
            if event is not None:
                yield event

    def _next_seq(self) -> int:
        self._last_seq += 1
        return self._last_seq

    def _read(self, parse: Callable[[object], T], reply: object) -> T:
        try:
            return parse(reply)
        except _ProtocolError as exc:
            raise RpcConnectionError(
                f"the agent at {self._addr} sent a reply shoal cannot read: {exc}"
            ) from None

    async def _request(
        self, command: str, body: object = None, returns_body: bool = False
    ) -> object:
        error, reply = await self._exchange(command, body, returns_body)
        if error:
            raise RpcError(error)
        return reply

    async def _exchange(self, command: str, body: object, returns_body: bool) -> tuple[str, object]:
        """Send a request; the reply's error (empty for none) and body."""
        seq = self._next_seq()
        call = self._calls[seq] = _Call(returns_body)
        await self._send(command, seq, body)
        await self._wait(lambda: call.done)
        return call.error, call.body

    def _lost(self, reason: str) -> RpcConnectionError:
        """The agent closed or reset the connection."""
        self._closed_by_agent = True
        return self._fail(reason)

    def _fail(self, reason: str) -> RpcConnectionError:
        if self._broken is None:
            self._broken = RpcConnectionError(
                f"the connection to the agent at {self._addr} {reason}"
            )
        return self._broken

    async def _send(self, command: str, seq: int, body: object) -> None:
        if self._broken is not None:
            raise self._broken
        data = _pack({"Command": command, "Seq": seq})
        if body is not None:
            data += _pack(body)
        # A request cut in half would garble every later one: finish writing it, within limits.
        async with self._write_lock:
            with trio.move_on_after(self._timeout, shield=True) as scope:
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise self._lost(f"broke: {exc}") from None
            if scope.cancelled_caught:
                raise self._fail(f"stalled: a request took over {self._timeout:g} s to write")

    async def _wait(self, ready: Callable[[], bool]) -> None:
        """Read and dispatch replies until ``ready()``; one task reads at a time."""
        while not ready():
            if self._broken is not None:
                raise self._broken
            async with self._read_lock:
                if not ready() and self._broken is None:
                    await self._read_one()

    async def _read_one(self) -> None:
        try:
            message = await self._reader.next()
        except EOFError:
            raise self._lost("was closed by the agent") from None
        except _ProtocolError as exc:
            raise self._fail(f"carried bytes shoal cannot read: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(f"broke: {exc}") from None
        if self._body_for is not None:
            deliver, self._body_for = self._body_for, None
            deliver(message)
            return
        try:
            header = _struct(message, "a reply header")
            seq = _integer(header, "Seq", 0, (1 << 64) - 1)
            error = _text(header, "Error")
        except _ProtocolError as exc:
            raise self._fail(f"carried a reply shoal cannot read: {exc}") from None
        call = self._calls.pop(seq, None)
        if call is not None:
            call.error = error
            if call.returns_body and error != AUTH_REQUIRED:
                self._body_for = partial(_finish, call)
            else:
                call.done = True
            return
        subscription = self._subscriptions.get(seq)
        if subscription is None:
            raise self._fail(f"carried a reply to request {seq}, which was never sent")
        if not subscription.acknowledged:
            subscription.acknowledged = True
            subscription.error = error
        else:
            self._body_for = partial(self._take_record, seq, subscription)

    def _take_record(self, seq: int, subscription: _Subscription, record: object) -> None:
        if subscription.query and isinstance(record, dict) and record.get("Type") == "done":
            subscription.finished = True  # nothing follows "done": forget the query
            del self._subscriptions[seq]
            return
        _keep_record(subscription, record)


def _finish(call: _Call, body: object) -> None:
    call.body = body
    call.done = True


def _keep_record(subscription: _Subscription, record: object) -> None:
    if subscription.stopped:
        return  # Serf's agent may send what it had queued after the stop
    if len(subscription.records) >= STREAM_BUFFER:
        if not subscription.dropped:
            log.warning("an event stream is read too slowly: dropping events until it catches up")
        subscription.dropped += 1
        return
    if subscription.dropped:
        log.warning("an event stream caught up after losing %d events", subscription.dropped)
        subscription.dropped = 0
    subscription.records.append(record)


def _connect_failure(exc: OSError) -> str:
    # trio reports "all attempts failed" and puts each attempt's error in an ExceptionGroup.
    cause = exc.__cause__
    if isinstance(cause, ExceptionGroup) and isinstance(cause.exceptions[0], OSError):
        exc = cause.exceptions[0]
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return (exc.strerror or str(exc)).lower()  # resolver errors have negative numbers
