"""The RPC client over TCP (AnyIO: trio or asyncio): :class:`RpcClient` writes what its
:class:`ClientConnection` makes of each call, and hands the replies and records it reads to the
tasks that wait for them.  It drives a shoal agent or a Serf one alike."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Final, TypeVar, Unpack

import anyio
from anyio.abc import SocketStream

from swim.rpc import schema
from swim.rpc.connection import (
    HANDSHAKE_TIMEOUT,
    NEED_DATA,
    STREAM_BUFFER,
    ClientConnection,
    ConnectionClosed,
    QueryDone,
    QueryRecord,
    Response,
    StreamRecord,
    Unreadable,
)
from swim.rpc.schema import (
    DEFAULT_RPC_ADDR,
    ReplyBody,
    RequestBody,
    RpcError,
    RpcEvent,
    RpcKeyError,
    RpcKeyResult,
    RpcMember,
    RpcQuery,
    RpcQueryRecord,
    parse_rpc_addr,
)
from swim.serf.layer import QueryOptions
from swim.sockets import connect_failure
from swim.wire.serf import Coordinate

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds the client allows to connect, shake hands and write a request (Serf's default)."""
_REPLY_CHUNK = 65_536
"""Bytes the client reads at a time: a members reply can run to megabytes."""

B = TypeVar("B", bound=ReplyBody)


class RpcConnectionError(Exception):
    """The agent could not be reached, broke the connection, or sent what this client cannot
    read; the message says which."""


@dataclass(slots=True)
class _Call:
    response: Response | Unreadable | None = None


@dataclass(slots=True)
class _Subscription:
    seq: int
    acknowledged: bool = False
    error: str = ""
    stopped: bool = False
    finished: bool = False
    """A query's "done" came."""
    dropped: int = 0
    records: deque[StreamRecord | QueryRecord | Unreadable] = field(default_factory=deque)


class RpcClient:
    """A client of Serf's RPC protocol, for a shoal agent or a Serf one.

    Open it with ``async with RpcClient.connect("127.0.0.1:7373") as client:``.  Several tasks
    may use one client at once: there is no background task, so whichever task waits for a
    reply reads the connection and hands each message to its owner.
    """

    def __init__(self, stream: SocketStream, addr: str, timeout: float) -> None:
        """Use :meth:`connect`."""
        self._stream = stream
        self._addr = addr
        self._timeout = timeout
        self._protocol = ClientConnection()
        self._read_lock = anyio.Lock()
        self._write_lock = anyio.Lock()
        self._calls: dict[int, _Call] = {}
        self._subscriptions: dict[int, _Subscription] = {}
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
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError:
            raise RpcConnectionError(
                f"cannot reach the agent at {addr}: no answer in {timeout:g} s"
            ) from None
        except OSError as exc:
            raise RpcConnectionError(
                f"cannot reach the agent at {addr}: {connect_failure(exc).lower()}"
            ) from None
        async with stream:
            client = cls(stream, addr, timeout)
            try:
                with anyio.fail_after(timeout):
                    await client._request(schema.Handshake())
                    if auth_key:
                        await client._request(schema.Auth(auth_key))
            except TimeoutError:
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
        return list(self._body(await self._request(schema.Members()), schema.MemberList).members)

    async def members_filtered(
        self, tags: Mapping[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[RpcMember]:
        """The members whose tags, status and name fully match these regexes (empty: any)."""
        request = schema.MembersFiltered(dict(tags or {}), status, name)
        return list(self._body(await self._request(request), schema.MemberList).members)

    async def join(self, addresses: Sequence[str], replay: bool = False) -> int:
        """Ask the agent to join through these addresses; returns how many it reached."""
        response = await self._request(schema.Join(tuple(addresses), replay))
        return self._body(response, schema.Joined).num

    async def leave(self) -> None:
        """Ask the agent to leave the cluster gracefully and shut down."""
        await self._request(schema.Leave())

    async def force_leave(self, node: str, prune: bool = False) -> None:
        """Ask the agent to mark a failed member as left (``prune``: and forget it)."""
        await self._request(schema.ForceLeave(node, prune))

    async def update_tags(
        self, tags: Mapping[str, str] | None = None, delete: Sequence[str] = ()
    ) -> None:
        """Set and remove tags on the agent."""
        await self._request(schema.Tags(dict(tags or {}), tuple(delete)))

    async def user_event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        """Send a user event through the agent."""
        await self._request(schema.EventRequest(name, payload, coalesce))

    async def respond(self, query_id: int, payload: bytes) -> None:
        """Answer the query a :meth:`stream` delivered as
        :class:`~swim.rpc.schema.RpcQueryEvent` ``query_id`` (once, before its deadline, in at
        most 1 KiB with the message's header, as Serf allows)."""
        await self._request(schema.Respond(query_id, payload))

    async def stats(self) -> dict[str, dict[str, str]]:
        """The agent's figures by section, as ``serf info`` shows them."""
        return self._body(await self._request(schema.Stats()), schema.StatsReply).sections

    async def get_coordinate(self, node: str) -> Coordinate | None:
        """The network coordinate the agent holds for member ``node``, or None when it has
        none (not probed yet, unknown, or coordinates disabled)."""
        reply = await self._request(schema.GetCoordinate(node))
        return self._body(reply, schema.CoordinateReply).coordinate

    async def install_key(self, key: str) -> RpcKeyResult:
        """Install the base64 ``key`` on every member (``serf keys -install``).  Raises
        :class:`RpcKeyError`, with what each member said, unless all of them succeeded."""
        return await self._key_request(schema.InstallKey(key))

    async def use_key(self, key: str) -> RpcKeyResult:
        """Make the installed base64 ``key`` every member's primary key (``-use``)."""
        return await self._key_request(schema.UseKey(key))

    async def remove_key(self, key: str) -> RpcKeyResult:
        """Remove the base64 ``key`` from every member's keyring (``-remove``)."""
        return await self._key_request(schema.RemoveKey(key))

    async def list_keys(self) -> RpcKeyResult:
        """Count the keys every member holds (``-list``)."""
        return await self._key_request(schema.ListKeys())

    async def _key_request(self, request: RequestBody) -> RpcKeyResult:
        response = await self._exchange(request)
        if response.body is None:  # "Authentication required" comes without one
            raise RpcError(response.error)
        result = self._body(response, RpcKeyResult)
        if response.error:
            raise RpcKeyError(response.error, result)
        return result

    @asynccontextmanager
    async def query(
        self, name: str, payload: bytes = b"", **options: Unpack[QueryOptions]
    ) -> AsyncIterator[AsyncIterator[RpcQueryRecord]]:
        """Send a query through the agent and read its acks and answers as they come:
        ``async with client.query("uptime") as records: async for record in records: ...``.
        The records end when the query times out (Serf's default when ``timeout`` is None or
        0); the options are those of :meth:`swim.node.Node.query`."""
        query = RpcQuery(
            name,
            payload,
            tuple(options.get("nodes", ())),
            dict(options.get("tags") or {}),
            options.get("request_ack", False),
            options.get("relay_factor", 0),
            options.get("timeout") or 0.0,
        )
        subscription = await self._subscribe(query)
        try:
            yield self._query_records(subscription)
        finally:
            self._unsubscribe(subscription)

    async def _query_records(self, subscription: _Subscription) -> AsyncIterator[RpcQueryRecord]:
        while True:
            await self._wait(lambda: bool(subscription.records) or subscription.finished)
            if not subscription.records:
                return
            record = self._record(subscription)
            if isinstance(record, QueryRecord):
                yield record.record

    @asynccontextmanager
    async def stream(self, event_filter: str = "*") -> AsyncIterator[AsyncIterator[RpcEvent]]:
        """Events the agent sees, filtered like ``"member-join,member-failed,user:deploy"``:
        ``async with client.stream(...) as events: async for event in events: ...``.  Leaving
        the block stops the stream.  A reader that falls :data:`STREAM_BUFFER` events behind
        loses the newest, as Serf's client does."""
        subscription = await self._subscribe(schema.Stream(event_filter))
        try:
            yield self._events(subscription)
        finally:
            self._unsubscribe(subscription)
            if self._broken is None:
                with anyio.move_on_after(self._timeout, shield=True), suppress(RpcConnectionError):
                    await self._request(schema.Stop(subscription.seq))

    async def _events(self, subscription: _Subscription) -> AsyncIterator[RpcEvent]:
        while True:
            await self._wait(lambda: bool(subscription.records) or subscription.stopped)
            if subscription.stopped:
                return
            record = self._record(subscription)
            if isinstance(record, StreamRecord):
                yield record.event

    async def _subscribe(self, request: schema.Stream | RpcQuery) -> _Subscription:
        """Send a stream or query request and wait for its acknowledgement."""
        seq, data = self._protocol.send(request)
        subscription = self._subscriptions[seq] = _Subscription(seq)
        try:
            await self._write(data)
            await self._wait(lambda: subscription.acknowledged)
            if subscription.error:
                raise RpcError(subscription.error)
        except BaseException:
            self._unsubscribe(subscription)
            raise
        return subscription

    def _unsubscribe(self, subscription: _Subscription) -> None:
        """End the subscription's iterator, and drop what still comes for it."""
        subscription.stopped = True
        subscription.records.clear()
        self._subscriptions.pop(subscription.seq, None)
        self._protocol.forget(subscription.seq)

    def _record(self, subscription: _Subscription) -> StreamRecord | QueryRecord:
        record = subscription.records.popleft()
        if isinstance(record, Unreadable):
            raise self._unreadable(record)
        return record

    def _body(self, response: Response, cls: type[B]) -> B:
        body = response.body
        assert isinstance(body, cls)  # the connection decodes each command's reply as its type
        return body

    def _unreadable(self, unreadable: Unreadable) -> RpcConnectionError:
        return RpcConnectionError(
            f"the agent at {self._addr} sent a reply shoal cannot read: {unreadable.reason}"
        )

    async def _request(self, request: RequestBody) -> Response:
        """Send a request; its reply, unless that is an error."""
        response = await self._exchange(request)
        if response.error:
            raise RpcError(response.error)
        return response

    async def _exchange(self, request: RequestBody) -> Response:
        """Send a request; its reply, error or not."""
        seq, data = self._protocol.send(request)
        call = self._calls[seq] = _Call()
        await self._write(data)
        await self._wait(lambda: call.response is not None)
        response = call.response
        if isinstance(response, Unreadable):
            raise self._unreadable(response)
        assert response is not None  # what _wait waited for
        return response

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

    async def _write(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        # A request cut in half would garble every later one: finish writing it, within limits.
        async with self._write_lock:
            with anyio.move_on_after(self._timeout, shield=True) as scope:
                try:
                    await self._stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
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
        event = self._protocol.next_event()
        while event is NEED_DATA:
            try:
                data = await self._stream.receive(_REPLY_CHUNK)
            except anyio.EndOfStream:
                data = b""
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise self._lost(f"broke: {exc}") from None
            self._protocol.receive_data(data)
            event = self._protocol.next_event()
        if isinstance(event, ConnectionClosed):
            if event.error:
                raise self._fail(event.error)
            raise self._lost("was closed by the agent")
        call = self._calls.pop(event.seq, None)
        if call is not None:
            assert isinstance(event, Response | Unreadable)  # a call gets no records
            call.response = event
            return
        subscription = self._subscriptions[event.seq]  # the connection drops what is forgotten
        if isinstance(event, Response):
            subscription.acknowledged = True
            subscription.error = event.error
        elif isinstance(event, QueryDone):
            subscription.finished = True
        else:
            _keep(subscription, event)


def _keep(subscription: _Subscription, record: StreamRecord | QueryRecord | Unreadable) -> None:
    if len(subscription.records) >= STREAM_BUFFER:
        if not subscription.dropped:
            log.warning("an event stream is read too slowly: dropping events until it catches up")
        subscription.dropped += 1
        return
    if subscription.dropped:
        log.warning("an event stream caught up after losing %d events", subscription.dropped)
        subscription.dropped = 0
    subscription.records.append(record)
