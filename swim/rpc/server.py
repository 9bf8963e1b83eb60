"""The RPC server over TCP (AnyIO: trio or asyncio): one task per connection feeds its
:class:`ServerConnection` the bytes it reads, runs the agent's call for each request, and
writes the replies.

The protocol's rules are the connection's; what the requests mean for membership is the
:class:`AgentBackend`'s.  Serf's agent lets its clients hold it without limit; this server
serves at most :data:`MAX_CONNECTIONS` connections at once, closing new ones while at the
limit.  An open connection costs it a few kilobytes, all freed when it closes.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, Final, Protocol

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from swim.rpc import schema
from swim.rpc.connection import (
    NEED_DATA,
    OK,
    STREAM_BUFFER,
    ConnectionClosed,
    Failed,
    QueryDone,
    QueryRecord,
    Reply,
    Request,
    ServerConnection,
    StreamRecord,
)
from swim.rpc.filters import filter_members
from swim.rpc.schema import (
    RequestBody,
    RpcEvent,
    RpcKeyResult,
    RpcMember,
    RpcQuery,
    RpcQueryRecord,
)
from swim.sockets import serve_connections
from swim.wire.serf import Coordinate

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 128
"""RPC connections a server serves at once unless told otherwise (Serf sets no limit).  Each
costs a few kilobytes and a task; ``serf`` and ``swim`` commands use one each, for a moment,
and a program typically keeps one or two."""
_REQUEST_CHUNK = 4096
"""Bytes the server reads at a time: requests are small, and a big read is a big allocation."""


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

    def coordinate(self, node: str) -> Coordinate | None:
        """The network coordinate held for member ``node`` (this agent's for its own name),
        or None: none known yet, or coordinates disabled."""
        ...

    def subscribe(self, deliver: Callable[[RpcEvent], None]) -> Callable[[], None]:
        """Call ``deliver`` from the event loop's thread with every member and user event, and
        every query to answer, from now on, until the returned function is called.
        ``deliver`` never blocks: a stream too far behind drops events, as Serf's does."""
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

    async def respond(self, query_id: int, payload: bytes) -> None:
        """Answer the query delivered as :class:`~swim.rpc.schema.RpcQueryEvent` ``query_id``
        (raising when it is too late, answered already, or the answer too large)."""
        ...


@dataclass(frozen=True, slots=True)
class RpcServerStatistics:
    """A snapshot of an RPC server's counters since it started (:meth:`RpcServer.statistics`)."""

    connections_open: int
    connections_accepted: int
    """Connections served, whatever became of them."""
    connections_refused: int
    """Connections closed as soon as accepted, because the server had its most open."""
    timeouts: int
    """Connections closed for not shaking hands, authenticating or sending a command in time."""
    protocol_errors: int
    """Connections closed for breaking the protocol (bytes that are not msgpack, a command
    before the handshake or unknown to Serf)."""
    requests: Mapping[str, int]
    """Requests received, by Serf command."""


class RpcServer:
    """Serves Serf's RPC protocol to an agent's clients, and counts what they did."""

    def __init__(self, auth_key: str | None = None, *, max_connections: int = MAX_CONNECTIONS):
        """With an ``auth_key`` (empty means none, as in Serf), clients must authenticate after
        the handshake.  While ``max_connections`` are open, new ones are closed as soon as they
        are accepted."""
        if max_connections < 1:
            raise ValueError(f"max_connections is {max_connections}; it must be at least 1")
        self._auth_key = auth_key or None
        self._most = max_connections
        self._open = 0
        self._accepted = 0
        self._refused = 0
        self._refusing = 0
        """Connections refused since the server was last under its limit."""
        self._timeouts = 0
        self._protocol_errors = 0
        self._requests: Counter[str] = Counter()

    async def serve(
        self,
        backend: AgentBackend,
        host: str,
        port: int,
        *,
        task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``backend`` on ``host:port`` until cancelled, one task per connection.  Start
        it with ``port = await nursery.start(server.serve, backend, host, port)``: it reports
        the bound port, so port 0 picks a free one."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            task_status.started(listener.extra(SocketAttribute.local_port))
            await serve_connections(
                listener, partial(self._serve_connection, backend), "the RPC endpoint"
            )

    def statistics(self) -> RpcServerStatistics:
        """The counters as they stand now."""
        return RpcServerStatistics(
            connections_open=self._open,
            connections_accepted=self._accepted,
            connections_refused=self._refused,
            timeouts=self._timeouts,
            protocol_errors=self._protocol_errors,
            requests=MappingProxyType(dict(self._requests)),
        )

    async def _serve_connection(self, backend: AgentBackend, stream: SocketStream) -> None:
        if not self._admit():
            await anyio.aclose_forcefully(stream)
            return
        address = stream.extra(SocketAttribute.remote_address, None)
        # None when the client is already gone
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "a departed client"
        log.debug("RPC client %s connected", peer)
        protocol = ServerConnection(
            self._auth_key, anyio.current_time(), peer=peer, requests=self._requests
        )
        try:
            async with anyio.create_task_group() as nursery:  # for its event streams and queries
                session = _Session(backend, stream, peer, nursery, protocol)
                try:
                    ending = await session.serve()
                finally:
                    session.stop_streams()
                nursery.cancel_scope.cancel()
            if ending is _Ending.TIMED_OUT:
                self._timeouts += 1
            elif ending is _Ending.BROKEN:
                self._protocol_errors += 1
        except Exception:  # a bug must cost this connection only, never the server
            log.exception("RPC client %s: unexpected failure; closing its connection", peer)
        finally:
            self._release()
            await anyio.aclose_forcefully(stream)

    def _admit(self) -> bool:
        """Whether to serve a new connection; if so, :meth:`_release` it when it closes.  Logs
        once when refusals start, and once when they stop."""
        if self._open < self._most:
            self._open += 1
            self._accepted += 1
            return True
        if not self._refusing:
            log.warning(
                "the agent serves at most %d RPC connections and has that many open: closing "
                "new ones until some close.  Is a client opening connections and not closing "
                "them?",
                self._most,
            )
        self._refusing += 1
        self._refused += 1
        return False

    def _release(self) -> None:
        self._open -= 1
        if self._refusing:
            log.warning("serving new RPC connections again, after refusing %d", self._refusing)
            self._refusing = 0


async def serve_rpc(
    backend: AgentBackend,
    host: str,
    port: int,
    auth_key: str | None = None,
    *,
    max_connections: int = MAX_CONNECTIONS,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """:meth:`RpcServer.serve` on a new server, for callers that need no statistics."""
    server = RpcServer(auth_key, max_connections=max_connections)
    await server.serve(backend, host, port, task_status=task_status)


class _Ending(enum.Enum):
    """How a connection ended, for the statistics."""

    LEFT = "the client left"
    BROKEN = "the client broke the protocol"
    TIMED_OUT = "the client was too slow"


@dataclass(slots=True)
class _EventStream:
    events: MemoryObjectSendStream[RpcEvent]
    unsubscribe: Callable[[], None]

    def close(self) -> None:
        self.unsubscribe()
        self.events.close()


class _Session:
    """One client's connection: requests served in order, event streams and query records
    written alongside."""

    __slots__ = ("_backend", "_nursery", "_peer", "_protocol", "_stream", "_streams", "_write_lock")

    def __init__(
        self,
        backend: AgentBackend,
        stream: SocketStream,
        peer: str,
        nursery: TaskGroup,
        protocol: ServerConnection,
    ) -> None:
        self._backend = backend
        self._stream = stream
        self._peer = peer
        self._nursery = nursery
        self._protocol = protocol
        self._write_lock = anyio.Lock()
        self._streams: dict[int, _EventStream] = {}

    async def serve(self) -> _Ending:
        """Serve requests until the client leaves, breaks the protocol, or is too slow to get
        as far as its first command; how it ended."""
        protocol = self._protocol
        try:
            while True:
                event = protocol.next_event()
                await self._write(protocol.data_to_send())
                if event is NEED_DATA:
                    data = await _receive(self._stream, _REQUEST_CHUNK, protocol.next_deadline())
                    if data is None:
                        break
                    protocol.receive_data(data)
                elif isinstance(event, ConnectionClosed):
                    return self._closed(event)
                else:
                    await self._serve(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            log.debug("RPC client %s went away", self._peer)
            return _Ending.LEFT
        # Log text, not an exception: a handler that keeps records (a MemoryHandler, a queue)
        # would keep its traceback, and through it this connection.
        why = protocol.expired(anyio.current_time())
        log.info("closing the RPC connection from %s: %s", self._peer, why)
        return _Ending.TIMED_OUT

    def _closed(self, event: ConnectionClosed) -> _Ending:
        if event.error:
            log.info("closing the RPC connection from %s: %s", self._peer, event.error)
            return _Ending.BROKEN
        log.debug("RPC client %s disconnected", self._peer)
        return _Ending.LEFT

    def stop_streams(self) -> None:
        """Unsubscribe every event stream of this connection."""
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()

    async def _serve(self, request: Request) -> None:
        seq, body = request.seq, request.body
        forward: Callable[[], Coroutine[Any, Any, None]] | None = None
        reply: Reply = OK
        try:
            if isinstance(body, schema.Stream):
                forward = self._subscribe(seq)
            elif isinstance(body, RpcQuery):
                forward = partial(self._forward_query, seq, await self._backend.query(body))
            elif isinstance(body, schema.Stop):
                self._streams.pop(body.stream).close()
            else:
                reply = await _call(self._backend, body)
        except Exception as exc:  # the backend's refusal, or its failure, is this answer
            reply = Failed.of(exc)
            log.info("RPC %s from %s failed: %s", body.COMMAND, self._peer, reply.message)
        await self._write(self._protocol.send(reply))
        if forward is not None:
            self._nursery.start_soon(forward)

    async def _write(self, data: bytes) -> None:
        if data:
            async with self._write_lock:
                await self._stream.send(data)

    def _subscribe(self, seq: int) -> Callable[[], Coroutine[Any, Any, None]]:
        """Subscribe before acknowledging so nothing is missed: the events wait in a channel
        and go out, from the returned task, only after the acknowledgement, as Serf orders them."""
        send, receive = anyio.create_memory_object_stream[RpcEvent](STREAM_BUFFER)
        deliver = _deliverer(self._protocol, seq, send, self._peer)
        self._streams[seq] = _EventStream(send, self._backend.subscribe(deliver))
        return partial(self._forward, seq, receive)

    async def _forward(self, seq: int, events: MemoryObjectReceiveStream[RpcEvent]) -> None:
        async with events:
            async for event in events:
                async with self._write_lock:
                    data = self._protocol.send(StreamRecord(seq, event))
                    if not data:
                        return  # stopped
                    try:
                        await self._stream.send(data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the request loop sees the closed connection too

    async def _forward_query(self, seq: int, records: AsyncIterator[RpcQueryRecord]) -> None:
        """Stream a query's acks and answers, then "done", as Serf's agent does."""
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            async for record in records:
                await self._write(self._protocol.send(QueryRecord(seq, record)))
            await self._write(self._protocol.send(QueryDone(seq)))


def _deliverer(
    protocol: ServerConnection,
    seq: int,
    events: MemoryObjectSendStream[RpcEvent],
    peer: str,
) -> Callable[[RpcEvent], None]:
    """What the backend calls with each event for stream ``seq``: it queues what the stream
    takes, and drops what a slow reader has no room for."""
    dropped = 0

    def deliver(event: RpcEvent) -> None:
        nonlocal dropped
        if not protocol.wants(seq, event):
            return
        try:
            events.send_nowait(event)
        except anyio.WouldBlock:
            if not dropped:
                log.warning(
                    "RPC client %s reads its stream too slowly: dropping events until it "
                    "catches up",
                    peer,
                )
            dropped += 1
            return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # a backend that snapshots its subscribers may call us once after stop
        if dropped:
            log.warning("RPC client %s caught up after losing %d events", peer, dropped)
            dropped = 0

    return deliver


async def _receive(stream: SocketStream, size: int, deadline: float) -> bytes | None:
    """Up to ``size`` bytes, b"" (the end, for the connection) once the client closed, or
    None if nothing came before ``deadline``.

    The deadline's scope is here, not around the session: AnyIO's trio backend leaves the
    cancelled receive in a reference cycle, and from here that cycle reaches only the stream,
    not the session and its connection."""
    with anyio.CancelScope(deadline=deadline):
        try:
            return await stream.receive(size)
        except anyio.EndOfStream:
            return b""
    return None


async def _call(backend: AgentBackend, body: RequestBody) -> Reply:
    """What ``backend`` answers a request that is neither a stream, a stop nor a query."""
    if isinstance(body, schema.EventRequest):
        await backend.user_event(body.name, body.payload, body.coalesce)
    elif isinstance(body, schema.ForceLeave):
        await backend.force_leave(body.node, body.prune)
    elif isinstance(body, schema.Join):
        return schema.Joined(await backend.join(list(body.existing), body.replay))
    elif isinstance(body, schema.Members):
        return schema.MemberList(tuple(backend.members()))
    elif isinstance(body, schema.MembersFiltered):
        selected = filter_members(backend.members(), body.tags, body.status, body.name)
        return schema.MemberList(tuple(selected))
    elif isinstance(body, schema.Leave):
        await backend.leave()
    elif isinstance(body, schema.Tags):
        await backend.set_tags(dict(body.tags), list(body.delete))
    elif isinstance(body, schema.Stats):
        return schema.StatsReply(backend.stats())
    elif isinstance(body, schema.GetCoordinate):
        return schema.CoordinateReply(backend.coordinate(body.node))
    elif isinstance(body, schema.InstallKey):
        return await backend.install_key(body.key)
    elif isinstance(body, schema.UseKey):
        return await backend.use_key(body.key)
    elif isinstance(body, schema.RemoveKey):
        return await backend.remove_key(body.key)
    elif isinstance(body, schema.ListKeys):
        return await backend.list_keys()
    elif isinstance(body, schema.Respond):
        await backend.respond(body.id, body.payload)
    return OK
