"""Serf's RPC protocol without I/O, in the style of h11: an object per end of a connection that
takes bytes and gives events, takes events and gives bytes, and never touches a socket, a
clock or a task (time comes in as an argument).

:class:`ServerConnection` is the agent's end.  It answers on its own what the protocol decides:
the handshake, authentication, and every refusal (a command before the handshake or without
authentication, a body that does not decode, a Serf command shoal does not serve, a stream it
cannot open, an answer to a query its streams did not deliver).  The rest come out as
:class:`Request` events for the driver to serve with the agent, and its reply goes back in
through :meth:`ServerConnection.send`.

Where Serf's agent drops the connection and leaves its client hanging or guessing, the server
replies with the reason and keeps the connection: an invalid regex, a body of the wrong shape, a
Serf command shoal does not serve.  It closes for what a client sent only when it cannot tell
where the next request starts: bytes that are not msgpack, a header that is not one, a command
it has never heard of, or a command before the handshake (as Serf does).  It also tells its
driver to close a connection that has not shaken hands (and authenticated, with an auth key)
within :data:`HANDSHAKE_TIMEOUT`, or sent a command within :data:`FIRST_COMMAND_TIMEOUT`.

:class:`ClientConnection` is a client's end: requests to bytes; bytes to replies and records.
"""

from __future__ import annotations

import enum
import hmac
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

import msgpack
import msgpack.fallback

from swim.rpc.filters import event_matches, parse_event_filter
from swim.rpc.schema import (
    AUTH_REQUIRED,
    DUPLICATE_HANDSHAKE,
    HANDSHAKE_REQUIRED,
    INVALID_AUTH_TOKEN,
    INVALID_QUERY_ID,
    IPC_VERSION,
    LOG_LEVELS,
    MONITOR_EXISTS,
    QUERY_DONE,
    REPLIES,
    REQUESTS,
    SERF_COMMANDS,
    STREAM_EXISTS,
    UNKNOWN_LOG_LEVEL,
    UNSUPPORTED_COMMAND,
    UNSUPPORTED_IPC_VERSION,
    Auth,
    Handshake,
    Monitor,
    ReplyBody,
    ReplyHeader,
    RequestBody,
    RequestHeader,
    Respond,
    RpcError,
    RpcEvent,
    RpcKeyError,
    RpcKeyResult,
    RpcLogRecord,
    RpcQuery,
    RpcQueryEvent,
    RpcQueryRecord,
    Stop,
    Stream,
    decode,
    decode_event,
    decode_reply_body,
    encode,
    encode_event,
    encode_reply_body,
)
from swim.wire.errors import DecodeError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES: Final = 64 << 10
"""Largest request object the server buffers.  Serf's requests are a few hundred bytes: a user
event's payload is at most 512, a query's 1 KiB; 64 KiB leaves room for a long join list."""
MAX_REPLY_BYTES: Final = 64 << 20
"""Largest reply object the client buffers: a members list of a very large cluster fits."""
HANDSHAKE_TIMEOUT: Final = 5.0
"""Seconds a server gives a new connection to shake hands, and to authenticate when it has an
auth key, before closing it.  Serf's clients do both as soon as they connect."""
FIRST_COMMAND_TIMEOUT: Final = 60.0
"""Seconds from connecting a server gives a client to send its first command, before closing
the connection.  After one, a client may stay idle for good: an event stream waits for events,
and a client library for its next call."""
MAX_STREAMS: Final = 16
"""Event streams one connection may have open at once (Serf sets no limit).  Each costs the
server about 5 KiB, up to 10 with a full buffer, and a call for every event; ``serf``'s CLI
opens one, a program perhaps one per kind of event."""
STREAM_BUFFER: Final = 512
"""Events one stream may hold for a slow reader, at either end, before dropping new ones
(Serf's buffer size)."""
MAX_PENDING_QUERIES: Final = STREAM_BUFFER
"""Queries a connection's streams delivered that its client may still answer with
``respond``; past it the oldest is forgotten ("No pending queries matching ID", as Serf says
of a query it forgot at its deadline).  Each costs a few bytes."""
TOO_MANY_STREAMS: Final = (
    f"Too many streams: a connection may have {MAX_STREAMS} at once; stop one first"
)
_REPLY_BUFFER = 4096
"""Bytes the client's buffer starts with.  msgpack's C Unpacker allocates its whole
``read_size`` at once (by default 1 MiB) and never shrinks; from here it doubles only as far as
a reply needs."""
_BEFORE_AUTH: Final = (Handshake.COMMAND, Auth.COMMAND)
_STREAMING: Final = (Stream.COMMAND, RpcQuery.COMMAND, Monitor.COMMAND)


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`."""

    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA
"""No event until more bytes arrive: read some and pass them to ``receive_data``."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Nothing more comes from this connection: the peer closed its end (``error`` empty), or
    sent what breaks the protocol (``error`` says what), so that it must be closed."""

    error: str = ""


@dataclass(frozen=True, slots=True)
class Request:
    """A request for the server's driver to serve; answer it with one reply to
    :meth:`ServerConnection.send` before asking for the next event."""

    seq: int
    body: RequestBody


@dataclass(frozen=True, slots=True)
class Ok:
    """A request succeeded, and its command returns no body (a stream's acknowledgement too)."""


OK: Final = Ok()


@dataclass(frozen=True, slots=True)
class Failed:
    """A request failed with ``message``; a key operation's tally goes alongside, as Serf's."""

    message: str
    result: RpcKeyResult | None = None

    @classmethod
    def of(cls, exc: Exception) -> Failed:
        """The reply for an exception the agent raised: its message, or else its type."""
        result = exc.result if isinstance(exc, RpcKeyError) else None
        return cls(str(exc) or type(exc).__name__, result)


Reply = Ok | Failed | ReplyBody
"""What :meth:`ServerConnection.send` takes to answer a request: the reply body its command
returns (such as :class:`~swim.rpc.schema.Joined` for ``join``), :data:`OK` when it returns
none, or :class:`Failed`."""


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """An event for the stream that request ``seq`` started, or a log line for its monitor."""

    seq: int
    event: RpcEvent | RpcLogRecord


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """An ack or an answer for the query that request ``seq`` sent."""

    seq: int
    record: RpcQueryRecord


@dataclass(frozen=True, slots=True)
class QueryDone:
    """The query that request ``seq`` sent is over: nothing more comes for it."""

    seq: int


@dataclass(frozen=True, slots=True)
class Response:
    """The reply to request ``seq``: its error (empty for none) and, for a command that returns
    one, its body (none after "Authentication required", which Serf sends bare)."""

    seq: int
    error: str
    body: ReplyBody | None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The reply or record for request ``seq`` did not decode; the connection goes on."""

    seq: int
    reason: str


class _Violation(Exception):
    """The client broke the protocol so that the connection must close."""


class _Unpacker(Protocol):
    """What a connection needs of msgpack's Unpacker, the C one or the Python one."""

    def feed(self, data: bytes) -> None: ...

    def __next__(self) -> object: ...


class _End:
    """What both ends share: msgpack objects back to back from the bytes fed in, buffering at
    most ``_MAX_BYTES``, and how the connection ended."""

    __slots__ = ("_closed", "_eof", "_unpacker")
    _MAX_BYTES: ClassVar[int]
    _GARBLED: ClassVar[str]
    """What an error about the bytes says first."""

    def __init__(self, unpacker: _Unpacker) -> None:
        self._unpacker = unpacker
        self._eof = False
        self._closed: ConnectionClosed | None = None

    def receive_data(self, data: bytes) -> None:
        """Bytes the peer sent; empty once it has closed its end."""
        if not data:
            self._eof = True
            return
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            self._close(f"{self._GARBLED}an object is larger than {self._MAX_BYTES} bytes")

    def _next_object(self) -> object:
        """The next whole object; :data:`NEED_DATA` until more bytes come; the
        :class:`ConnectionClosed` once the peer has closed its end or sent what is not msgpack."""
        try:
            return next(self._unpacker)
        except StopIteration:
            if not self._eof:
                return NEED_DATA
            self._close("")
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            self._close(f"{self._GARBLED}not msgpack ({type(exc).__name__}: {exc})")
        return self._closed

    def _close(self, reason: str) -> None:
        if self._closed is None:
            self._closed = ConnectionClosed(reason)


def _header(seq: int, error: str = "") -> bytes:
    return encode(ReplyHeader(seq, error))


class ServerConnection(_End):
    """The agent's end of one RPC connection; see the module's docstring."""

    __slots__ = (
        "_auth_key",
        "_authenticated",
        "_commanded",
        "_connected",
        "_header",
        "_monitor",
        "_outbox",
        "_peer",
        "_pending",
        "_queries",
        "_requests",
        "_streams",
        "_version",
    )
    _MAX_BYTES = MAX_REQUEST_BYTES
    _GARBLED = ""

    def __init__(
        self,
        auth_key: str | None,
        now: float,
        *,
        peer: str = "a client",
        requests: Counter[str] | None = None,
    ) -> None:
        """A connection accepted at ``now`` (seconds) from ``peer`` (a name for the log).  With
        an ``auth_key`` (empty means none, as in Serf) the client must authenticate after the
        handshake.  ``requests`` counts the requests by command, for a server's statistics."""
        self._auth_key = auth_key or None
        self._authenticated = self._auth_key is None
        self._connected = now
        self._peer = peer
        self._requests = requests
        # The pure-Python Unpacker: many connections may be open, each sending a few small
        # requests; it costs about 0.5 KB and 20 us a request, where the C one is 41 KB (it
        # embeds a 1024-level parse stack) and 2 us.
        super().__init__(msgpack.fallback.Unpacker(max_buffer_size=MAX_REQUEST_BYTES))
        self._version = 0
        self._commanded = False
        """Whether the client has sent a command other than handshake and auth."""
        self._header: RequestHeader | None = None
        """A request whose body is still to come."""
        self._pending: RequestHeader | None = None
        """The request the driver is serving."""
        self._streams: dict[int, list[tuple[str, str]]] = {}
        """The open event streams, by the sequence number that started them, and their filters."""
        self._monitor: int | None = None
        """The sequence number of the request that started this connection's log monitor."""
        self._queries: dict[int, None] = {}
        """The IDs of the queries the streams delivered, which the client may answer, oldest
        first."""
        self._outbox = b""

    def next_event(self) -> Request | ConnectionClosed | NeedData:
        """The next request to serve, :data:`NEED_DATA`, or :class:`ConnectionClosed` (then
        write what :meth:`data_to_send` holds, and close).  Raises RuntimeError while a request
        awaits its reply."""
        if self._pending is not None:
            raise RuntimeError(f"request {self._pending.seq} awaits its reply: send() it first")
        while self._closed is None:
            try:
                event = self._step()
            except _Violation as exc:
                self._close(str(exc))
            else:
                if event is not None:
                    return event
        return self._closed

    def data_to_send(self) -> bytes:
        """The replies the connection made on its own since last asked: write them first."""
        data, self._outbox = self._outbox, b""
        return data

    def send(self, event: Reply | StreamRecord | QueryRecord | QueryDone) -> bytes:
        """The bytes of a reply to the request being served, or of a stream's or a query's
        record; nothing for an event of a stream stopped since it was queued (nothing may
        follow the reply to stop).  Raises TypeError for a reply its command does not return."""
        if isinstance(event, StreamRecord):
            if isinstance(event.event, RpcLogRecord):
                return (
                    _header(event.seq) + encode(event.event) if event.seq == self._monitor else b""
                )
            if event.seq not in self._streams:
                return b""
            if isinstance(event.event, RpcQueryEvent):
                self._may_answer(event.event.id)
            return _header(event.seq) + encode_event(event.event)
        if isinstance(event, QueryRecord):
            return _header(event.seq) + encode(event.record)
        if isinstance(event, QueryDone):
            return _header(event.seq) + QUERY_DONE
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError(
                "send() got a reply, but no request awaits one: answer only the Request that "
                "next_event() returned, once"
            )
        command = pending.command
        if isinstance(event, Failed):
            if command == Stream.COMMAND:
                del self._streams[pending.seq]
            elif command == Monitor.COMMAND:
                self._monitor = None
            tally = event.result if REPLIES.get(command) is RpcKeyResult else None
            return _header(pending.seq, event.message) + encode_reply_body(tally, command)
        wanted = REPLIES.get(command, Ok)
        if not isinstance(event, wanted):
            raise TypeError(
                f"a {command} request is answered with {wanted.__name__}, not "
                f"{type(event).__name__}"
            )
        body = None if isinstance(event, Ok) else event
        return _header(pending.seq) + encode_reply_body(body, command)

    def wants(self, seq: int, event: RpcEvent) -> bool:
        """Whether the stream that request ``seq`` started is open and takes ``event``: queue
        only those, so that a slow reader's buffer holds only what it asked for."""
        filters = self._streams.get(seq)
        return filters is not None and event_matches(filters, event)

    def next_deadline(self) -> float:
        """When to close the connection unless the client gets further: the handshake (and
        authentication) is due :data:`HANDSHAKE_TIMEOUT` after connecting, the first command
        :data:`FIRST_COMMAND_TIMEOUT` after; none (infinity) once a command has come."""
        if self._commanded or self._closed is not None:
            return math.inf
        if self._version and self._authenticated:
            return self._connected + FIRST_COMMAND_TIMEOUT
        return self._connected + HANDSHAKE_TIMEOUT

    def expired(self, now: float) -> str | None:
        """Why the connection must close at ``now``, past :meth:`next_deadline`; it is closed
        from then on.  None while the client is in time."""
        if now < self.next_deadline():
            return None
        if not self._version:
            reason = f"it did not shake hands within {HANDSHAKE_TIMEOUT:g} s of connecting"
        elif not self._authenticated:
            reason = (
                f"it did not authenticate within {HANDSHAKE_TIMEOUT:g} s of connecting, and "
                "this agent has an RPC auth key"
            )
        else:
            reason = f"it sent no command within {FIRST_COMMAND_TIMEOUT:g} s of connecting"
        self._close(reason)
        return reason

    def _step(self) -> Request | ConnectionClosed | NeedData | None:
        """Take one object: an event, or None when the connection answered it on its own or
        awaits its body."""
        obj = self._next_object()
        if isinstance(obj, NeedData | ConnectionClosed):
            return obj
        if self._header is not None:
            header, self._header = self._header, None
            return self._dispatch(header, obj)
        header = self._check(obj)
        if SERF_COMMANDS[header.command][0]:
            self._header = header
            return None
        return self._dispatch(header, None)

    def _check(self, obj: object) -> RequestHeader:
        """A request header, checked before its body is read: after one that fails here, the
        connection cannot tell where the next request starts."""
        try:
            header = decode(RequestHeader, obj, "the request header")
        except DecodeError as exc:
            raise _Violation(exc.reason) from None
        if header.command != Handshake.COMMAND and not self._version:
            self._reply(header.seq, HANDSHAKE_REQUIRED)
            raise _Violation(f"{header.command!r} came before the handshake")
        if header.command not in SERF_COMMANDS:
            self._reply(header.seq, UNSUPPORTED_COMMAND)
            raise _Violation(f"unknown command {header.command!r}, whose body cannot be skipped")
        if self._requests is not None:
            self._requests[header.command] += 1
        return header

    def _dispatch(self, header: RequestHeader, body: object) -> Request | None:
        command, seq = header.command, header.seq
        if not self._authenticated and command not in _BEFORE_AUTH:
            self._reply(seq, AUTH_REQUIRED)  # the one error Serf's client expects bare
            return None
        if command not in _BEFORE_AUTH:
            self._commanded = True  # from now on it may be as slow as it likes
        # Serf's client reads a reply body even when the reply is an error.
        empty_body = encode_reply_body(None, command)
        cls = REQUESTS.get(command)
        if cls is None:
            self._reply(seq, UNSUPPORTED_COMMAND, empty_body)
            return None
        try:
            request = decode(cls, body, f"the {command} request")
        except DecodeError as exc:
            log.info("RPC %s from %s: malformed request: %s", command, self._peer, exc.reason)
            self._reply(seq, f"decode failed: {exc.reason}", empty_body)
            return None
        if isinstance(request, Handshake):
            self._answer(seq, command, self._shake_hands(request.version))
            return None
        if isinstance(request, Auth):
            self._answer(seq, command, self._authenticate(request.auth_key))
            return None
        if isinstance(request, Stream):
            refusal = self._open_stream(seq, request.event_filter)
            if refusal:
                self._answer(seq, command, refusal)
                return None
        elif isinstance(request, Monitor):
            refusal = self._open_monitor(seq, request.log_level)
            if refusal:
                self._answer(seq, command, refusal)
                return None
        elif isinstance(request, Stop):
            if request.stream == self._monitor:
                self._monitor = None
            elif self._streams.pop(request.stream, None) is None:
                self._reply(seq)  # Serf's stop always succeeds
                return None
        elif isinstance(request, Respond) and request.id not in self._queries:
            self._answer(seq, command, INVALID_QUERY_ID)
            return None
        self._pending = header
        return Request(seq, request)

    def _shake_hands(self, version: int) -> str:
        if version != IPC_VERSION:
            return UNSUPPORTED_IPC_VERSION
        if self._version:
            return DUPLICATE_HANDSHAKE
        self._version = version
        return ""

    def _authenticate(self, key: str) -> str:
        if not hmac.compare_digest(key.encode(), (self._auth_key or "").encode()):
            return INVALID_AUTH_TOKEN
        self._authenticated = True
        return ""

    def _open_stream(self, seq: int, event_filter: str) -> str:
        """Why the stream cannot open; empty when it is open, for the driver to subscribe."""
        try:
            filters = parse_event_filter(event_filter)
        except RpcError as exc:
            return str(exc)
        if seq in self._streams:
            return STREAM_EXISTS
        if len(self._streams) >= MAX_STREAMS:
            return TOO_MANY_STREAMS
        self._streams[seq] = filters
        return ""

    def _open_monitor(self, seq: int, log_level: str) -> str:
        """Why the monitor cannot start; empty when it has, for the driver to subscribe."""
        level = log_level.upper()
        if level not in LOG_LEVELS:
            return UNKNOWN_LOG_LEVEL + level
        if self._monitor is not None:
            return MONITOR_EXISTS  # one a connection, as in Serf
        self._monitor = seq
        return ""

    def _may_answer(self, query_id: int) -> None:
        """Let the client answer query ``query_id``, forgetting the oldest past the limit."""
        self._queries.pop(query_id, None)
        self._queries[query_id] = None
        if len(self._queries) > MAX_PENDING_QUERIES:
            del self._queries[next(iter(self._queries))]

    def _answer(self, seq: int, command: str, error: str) -> None:
        """Reply to a request the connection served on its own."""
        if error:
            log.info("RPC %s from %s failed: %s", command, self._peer, error)
        self._reply(seq, error)

    def _reply(self, seq: int, error: str = "", body: bytes = b"") -> None:
        self._outbox += _header(seq, error) + body


@dataclass(slots=True)
class _Awaited:
    """A request a client sent whose reply, or records, are still to come."""

    command: str
    acknowledged: bool = False
    """For a stream or a query: its first reply came, and records follow."""
    forgotten: bool = False
    """Its reader has gone: drop what still comes."""


class ClientConnection(_End):
    """A client's end of one RPC connection: requests to bytes; bytes to :class:`Response`,
    :class:`StreamRecord`, :class:`QueryRecord`, :class:`QueryDone` and :class:`Unreadable`
    events, in the order they arrive."""

    __slots__ = ("_awaited", "_body_for", "_last_seq")
    _MAX_BYTES = MAX_REPLY_BYTES
    _GARBLED = "carried bytes shoal cannot read: "

    def __init__(self) -> None:
        super().__init__(msgpack.Unpacker(read_size=_REPLY_BUFFER, max_buffer_size=MAX_REPLY_BYTES))
        self._last_seq = 0
        self._awaited: dict[int, _Awaited] = {}
        self._body_for: tuple[ReplyHeader, _Awaited] | None = None
        """The reply whose body, or the stream whose record, comes next."""

    def send(self, body: RequestBody) -> tuple[int, bytes]:
        """A request's sequence number, which its reply and records carry, and its bytes."""
        self._last_seq += 1
        seq = self._last_seq
        self._awaited[seq] = _Awaited(body.COMMAND)
        data = encode(RequestHeader(body.COMMAND, seq))
        if SERF_COMMANDS[body.COMMAND][0]:
            data += encode(body)
        return seq, data

    def forget(self, seq: int) -> None:
        """Drop what still comes for the stream or query that request ``seq`` started: its
        reader has gone (Serf's agent may send what it had queued after a stop)."""
        awaited = self._awaited.get(seq)
        if awaited is not None:
            awaited.forgotten = True

    def next_event(
        self,
    ) -> (
        Response | StreamRecord | QueryRecord | QueryDone | Unreadable | ConnectionClosed | NeedData
    ):
        """The next reply or record, :data:`NEED_DATA`, or :class:`ConnectionClosed`."""
        while self._closed is None:
            obj = self._next_object()
            if isinstance(obj, NeedData | ConnectionClosed):
                return obj
            event = self._take(obj)
            if event is not None:
                return event
        return self._closed

    def _take(
        self, obj: object
    ) -> Response | StreamRecord | QueryRecord | QueryDone | Unreadable | None:
        """Take one object: an event, or None when it is a header whose body is to come, or
        what a forgotten stream still receives."""
        if self._body_for is not None:
            header, awaited = self._body_for
            self._body_for = None
            if awaited.command in _STREAMING:
                record = self._record(header.seq, awaited, obj)
                return None if awaited.forgotten else record
            try:
                return Response(header.seq, header.error, decode_reply_body(awaited.command, obj))
            except DecodeError as exc:
                return Unreadable(header.seq, exc.reason)
        try:
            header = decode(ReplyHeader, obj, "a reply header")
        except DecodeError as exc:
            self._close(f"carried a reply shoal cannot read: {exc.reason}")
            return None
        request = self._awaited.get(header.seq)
        if request is None:
            self._close(f"carried a reply to request {header.seq}, which was never sent")
            return None
        if request.acknowledged:
            self._body_for = header, request
            return None
        if request.command in _STREAMING:
            request.acknowledged = True
            if header.error:
                del self._awaited[header.seq]  # refused: no records follow
            return None if request.forgotten else Response(header.seq, header.error, None)
        del self._awaited[header.seq]
        if SERF_COMMANDS[request.command][1] and header.error != AUTH_REQUIRED:
            self._body_for = header, request
            return None
        return Response(header.seq, header.error, None)

    def _record(
        self, seq: int, awaited: _Awaited, obj: object
    ) -> StreamRecord | QueryRecord | QueryDone | Unreadable | None:
        try:
            if awaited.command == Stream.COMMAND:
                event = decode_event(obj)
                return None if event is None else StreamRecord(seq, event)
            if awaited.command == Monitor.COMMAND:
                return StreamRecord(seq, decode(RpcLogRecord, obj, "a log record"))
            record = decode(RpcQueryRecord, obj, "a query record")
        except DecodeError as exc:
            return Unreadable(seq, exc.reason)
        if record.type != "done":
            return QueryRecord(seq, record)
        del self._awaited[seq]
        return QueryDone(seq)
