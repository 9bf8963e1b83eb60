"""The runtime: a real member on real sockets, under trio or asyncio alike (AnyIO).

:class:`Node` binds UDP and TCP on one port and moves bytes and time between the sockets and an
:class:`~swim.engine.Engine`; every protocol decision is the engine's.  Structured concurrency
throughout: everything the node starts runs in its own nursery and ends when the ``async with``
block does.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import random
import socket
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, Unpack

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from swim import wire
from swim.background import Background
from swim.config import Config
from swim.engine import Engine, Statistics, StreamRequest
from swim.events import (
    Event,
    JoinCompleted,
    LeaveCompleted,
    MemberAlive,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
    UserMessage,
)
from swim.logs import bump
from swim.members import Address, Member, peer_address
from swim.queues import LossyQueue
from swim.serf.layer import (
    KeyringChanged,
    MemberReaped,
    QueryAck,
    QueryAnswer,
    QueryDone,
    QueryOptions,
    Serf,
    SerfEvent,
    SerfQuery,
    SerfStatistics,
)
from swim.sockets import connect_failure, serve_connections
from swim.stack import (
    UNREADABLE_REPLY,
    IncomingStream,
    IsolationLimitReached,
    MemberStack,
    RejoinDue,
    StackEvent,
)

log = logging.getLogger("swim.node")
membership_log = logging.getLogger("swim.serf")
"""Membership changes, one line each at INFO, as serf logs them (``serf: EventMemberJoin: NAME
ADDR``); suspicions and refutations, which steady state sees now and then, at DEBUG."""
T = TypeVar("T")

RECEIVE_BUFFER = 65_536
LARGE_STREAM = 65_536
"""Past this many bytes a stream is decoded in a worker thread: decompressing and parsing a
large push-pull takes a large share of a second, which would otherwise hold up probes and acks."""
RECEIVE_BATCH = 64
"""Datagrams read in one wake-up before the receive task yields: one wake-up and one flush
serve a burst, and a flood cannot starve the timers or the streams."""
RECEIVE_RETRY_DELAY = 0.01
"""The pause after a failed datagram receive, so that a socket that keeps failing does not
keep a core busy; one failure (an ICMP error report) costs no more than this."""
FIRST_BYTES_TIMEOUT = 2.0
"""How long an inbound stream may stay silent before it is closed (at most ``tcp_timeout``).
A peer writes its message as soon as it connects, so only then does the stream take a slot;
silent connections cannot keep joins out."""


class JoinError(Exception):
    """No seed could be joined; ``failures`` says why, seed by seed."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__(f"could not join the cluster: {self.reasons}")

    @property
    def reasons(self) -> str:
        """Each seed (as ``host:port``, IPv6 in brackets) and why it failed, on one line."""
        return "; ".join(f"{seed}: {why}" for seed, why in self.failures.items()) or (
            "no seeds given"
        )


class BindError(OSError):
    """The node cannot bind its UDP and TCP port; the message says why and what to do.
    ``errno`` tells the cause apart: ``EADDRINUSE`` (the port is taken), ``EADDRNOTAVAIL``
    (the host is not an address of this machine), a negative resolver code (the host name does
    not resolve), or another reason."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, _bind_failure(host, port, cause))
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


class AdvertiseError(OSError):
    """The node binds to every address and cannot tell which one to advertise to others."""


class SendError(Exception):
    """A reliable message could not be delivered."""


class IsolatedError(Exception):
    """The node stayed isolated past the grace time the application chose to allow."""


@dataclass(frozen=True, slots=True)
class EventsLost:
    """A subscriber fell behind and ``count`` events were dropped before this one."""

    count: int


@dataclass(eq=False)
class QueryResult:
    """What a query collected: who acknowledged it and who answered what."""

    acks: list[str] = field(default_factory=list)
    answers: dict[str, bytes] = field(default_factory=dict)
    done: anyio.Event = field(default_factory=anyio.Event)
    _arrivals: list[QueryAck | QueryAnswer] = field(default_factory=list)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    async def arrivals(self) -> AsyncIterator[QueryAck | QueryAnswer]:
        """Every ack and answer in the order they came, waiting for more until the query is
        done: for streaming them on (``serf query``) or stopping early."""
        seen = 0
        while True:
            arrived = self._arrived
            while seen < len(self._arrivals):
                seen += 1
                yield self._arrivals[seen - 1]
            if self.done.is_set():
                return
            await arrived.wait()

    def _add(self, event: QueryAck | QueryAnswer | QueryDone) -> None:
        if isinstance(event, QueryAck):
            self.acks.append(event.node)
        elif isinstance(event, QueryAnswer):
            self.answers[event.node] = event.payload
        else:
            self.done.set()
        if not isinstance(event, QueryDone):
            self._arrivals.append(event)
        self._arrived.set()
        self._arrived = anyio.Event()


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """The runtime's own counters, beside the engine's."""

    inbound_streams: int = 0
    outbound_streams: int = 0
    stream_bytes_in: int = 0
    """Bytes read from TCP streams, both ways (the engine counts UDP's)."""
    stream_bytes_out: int = 0
    inbound_streams_refused: int = 0
    inbound_streams_silent: int = 0
    stream_errors: int = 0
    send_errors: int = 0
    receive_errors: int = 0
    internal_errors: int = 0


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """A snapshot of a node's counters (see :meth:`Node.statistics`): the engine's, the
    runtime's and, with tags, the Serf layer's."""

    engine: Statistics
    runtime: RuntimeStatistics
    serf: SerfStatistics | None
    queued_events: int
    """Events waiting for the slowest subscriber of :meth:`Node.events`."""


Delivered = Event | SerfEvent | EventsLost
"""What a subscriber receives."""


EventStream = LossyQueue[Event | SerfEvent, EventsLost]
"""One subscriber's events (see :meth:`Node.events`): a subscriber that falls behind loses the
oldest events it has not read, and receives an :class:`EventsLost` saying how many before the
next one, instead of a silent gap."""


def parse_seed(seed: str, default_port: int) -> tuple[str | None, str, int]:
    """``[name/]host[:port]`` (an IPv6 host in brackets) as ``(name, host, port)``."""
    name, _, rest = seed.rpartition("/") if "/" in seed else ("", "", seed)
    try:
        host, port = parse_host_port(rest, default_port)
    except ValueError as exc:
        raise ValueError(f"seed {seed!r}: {exc}; expected [name/]host[:port]") from None
    return name or None, host, port


def parse_host_port(text: str, default_port: int, *, any_port: bool = False) -> tuple[str, int]:
    """``host[:port]`` (an IPv6 host in brackets) as ``(host, port)``; port 0, which asks for
    any free port, only with ``any_port``."""
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError("no host")
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"bad port {port_text!r}")
    port = int(port_text) if port_text else default_port
    low = 0 if any_port else 1
    if not low <= port < 65536:
        raise ValueError(f"port {port} is outside {low}..65535")
    return host, port


def _host_text(host: str) -> str:
    return host if ":" not in host else f"[{host}]"


_SERF_EVENT_NAMES: dict[type, str] = {
    MemberJoined: "EventMemberJoin",
    MemberLeft: "EventMemberLeave",
    MemberFailed: "EventMemberFailed",
}


def _log_membership(event: Event | SerfEvent) -> None:
    """One log line for a membership change, worded as serf's."""
    if isinstance(event, MemberJoined | MemberLeft | MemberFailed):
        name = _SERF_EVENT_NAMES[type(event)]
        membership_log.info("%s: %s %s", name, event.member.name, event.member.address[0])
    elif isinstance(event, MemberUpdated):
        membership_log.info("EventMemberUpdate: %s", event.member.name)
    elif isinstance(event, MemberReaped):
        membership_log.info("EventMemberReap: %s", event.name)
    elif isinstance(event, MemberSuspect):
        membership_log.debug("suspect: %s %s", event.member.name, event.member.address[0])
    elif isinstance(event, MemberAlive):
        membership_log.debug("refuted: %s %s", event.member.name, event.member.address[0])


class Node:
    """A cluster member: ``async with Node(config) as node: await node.join([...])``.

    ``bind`` is the local address for UDP and TCP (port 0 picks a free port, which
    :attr:`address` then tells); ``advertise`` is the address other members should use, when it
    differs.  With ``tags`` (even empty) the node runs the Serf layer: tags travel as Serf
    tags, and user events, queries and Serf's join and leave intents work with Serf agents.
    ``user_coalesce_period`` and ``user_quiescent_period`` coalesce Serf user events as a Serf
    agent does (off by default, as in the Serf library).  The Serf layer keeps Serf's network
    coordinates (carried in ping acks) unless ``disable_coordinates``.
    ``exit_when_isolated`` (seconds) makes an isolated node raise
    :class:`IsolatedError` out of its ``async with`` block once that long has passed without
    reconnecting; by default an isolated node keeps serving and keeps trying to rejoin.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        name: str | None = None,
        bind: tuple[str, int] = ("0.0.0.0", 7946),
        advertise: tuple[str, int] | None = None,
        meta: bytes = b"",
        keyring: wire.Keyring | None = None,
        on_message: Callable[[bytes, Address | None], None] | None = None,
        event_buffer: int = 1024,
        max_inbound_streams: int = 128,
        exit_when_isolated: float | None = None,
        rejoin_interval: float = 5.0,
        rng: random.Random | None = None,
        tags: Mapping[str, str] | None = None,
        keyring_file: str | None = None,
        user_coalesce_period: float = 0.0,
        user_quiescent_period: float = 0.0,
        disable_coordinates: bool = False,
    ) -> None:
        self.config = config or Config.lan()
        self._name = name or socket.gethostname()
        self._bind = bind
        self._advertise = advertise
        self._meta = meta
        self._keyring = keyring
        self._on_message = on_message
        self._event_buffer = event_buffer
        self._stream_slots = anyio.Semaphore(max_inbound_streams)
        self._silent_streams: collections.OrderedDict[int, anyio.CancelScope] = (
            collections.OrderedDict()
        )  # inbound streams waiting for their first bytes, oldest first
        self._max_silent_streams = 4 * max_inbound_streams
        self._stream_serial = 0
        self._exit_when_isolated = exit_when_isolated
        self._rejoin_interval = rejoin_interval
        self._rng = rng or random.Random(os.urandom(16))
        self._tags = None if tags is None else dict(tags)
        self._keyring_file = keyring_file
        self._coalescing = (user_coalesce_period, user_quiescent_period)
        self._disable_coordinates = disable_coordinates
        self._queries: dict[int, QueryResult] = {}
        self._runtime = RuntimeStatistics()
        self._stack: MemberStack | None = None
        self._udp_socket: socket.socket | None = None
        """Non-blocking, read and written directly: no wrapper object per datagram."""
        self._listener: SocketListener | None = None
        self._background = Background()
        self._wakeup = anyio.Event()
        self._timers_wait_until = -math.inf  # the deadline the timer task sleeps towards
        self._subscribers: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._joins: dict[int, tuple[anyio.Event, list[JoinCompleted]]] = {}
        self._reliable: dict[int, tuple[anyio.Event, list[str | None]]] = {}
        self._left = anyio.Event()
        self._leave_timed_out = False
        self._seeds: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Node:
        await self._background.open()
        try:
            await self._start()
        except BaseException:
            await self._background.abort()
            await self._close_sockets()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._background.close(exc_type, exc, traceback)
        finally:
            await self._close_sockets()

    async def _start(self) -> None:
        host, port = self._bind
        self._udp_socket, self._listener = await _bind_udp_and_tcp(host, port)
        bound_port = self._udp_socket.getsockname()[1]
        advertise = self._advertise or (_advertise_host(host), bound_port)
        self._stack = MemberStack(
            self._name,
            advertise,
            self.config,
            self._rng,
            meta=self._meta,
            tags=self._tags,
            keyring=self._keyring,
            now=anyio.current_time(),
            coalesce_period=self._coalescing[0],
            quiescent_period=self._coalescing[1],
            rejoin_interval=self._rejoin_interval,
            exit_when_isolated=self._exit_when_isolated,
            disable_coordinates=self._disable_coordinates,
        )
        nursery = self._background.nursery
        nursery.start_soon(self._receive_datagrams)
        nursery.start_soon(self._run_timers)
        nursery.start_soon(self._serve_streams)
        log.info("node %s listening on %s:%d", self._name, host, bound_port)

    async def _close_sockets(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._udp_socket is not None:
                anyio.notify_closing(self._udp_socket)
                self._udp_socket.close()
            if self._listener is not None:
                await self._listener.aclose()

    # ------------------------------------------------------------------ queries

    @property
    def engine(self) -> Engine:
        return self.stack.engine

    @property
    def stack(self) -> MemberStack:
        """The member stack this node drives (sans-IO: engine, Serf layer, policies)."""
        if self._stack is None:
            raise RuntimeError("the node is not running; use it inside `async with Node(...)`")
        return self._stack

    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> Address:
        """The address other members reach this node at (with the port actually bound)."""
        return self.engine.local_member.address

    @property
    def local_member(self) -> Member:
        return self.engine.local_member

    def members(self) -> list[Member]:
        """A snapshot of every member in this node's view, itself included."""
        return self.engine.members()

    def member(self, name: str) -> Member | None:
        return self.engine.member(name)

    @property
    def isolated(self) -> bool:
        return self.engine.isolated

    @property
    def keyring(self) -> wire.Keyring | None:
        """The cluster's keyring, or None when the cluster is not encrypted.  Key changes (Serf
        key queries) update it in place, so read it when it is needed instead of copying keys."""
        return self._keyring

    @property
    def serf(self) -> Serf:
        """The Serf layer (present when the node was given ``tags``)."""
        serf = self.stack.serf
        if serf is None:
            raise RuntimeError("this node runs without the Serf layer; pass tags={} to Node")
        return serf

    def statistics(self) -> NodeStatistics:
        """The node's counters as they stand now."""
        serf = self.stack.serf
        return NodeStatistics(
            self.engine.statistics(),
            self._runtime,
            serf.statistics() if serf else None,
            max(map(len, self._subscribers), default=0),
        )

    def _count(self, counter: str, by: int = 1) -> None:
        self._runtime = bump(self._runtime, counter, by)

    def events(self) -> EventStream:
        """Subscribe to events from now on (membership, user messages, isolation)."""
        stream = EventStream(self._event_buffer, EventsLost)
        self._subscribers.add(stream)
        return stream

    # ------------------------------------------------------------------ commands

    async def join(
        self,
        seeds: Iterable[str],
        *,
        attempts: int = 1,
        backoff: float = 1.0,
        replay: bool = False,
    ) -> int:
        """Join the cluster through ``seeds`` (``host:port`` or ``name/host:port``; host names
        are resolved, A and AAAA, at every attempt).  Returns how many seeds answered; raises
        :class:`JoinError` naming each seed and why it failed when none did, after
        ``attempts`` tries spaced by a doubling ``backoff``.  Past Serf user events are not
        delivered again unless ``replay`` (Serf's ``-replay``)."""
        seeds = list(seeds)
        self._seeds = seeds
        failures: dict[str, str] = {}
        for attempt in range(max(1, attempts)):
            if attempt:
                await anyio.sleep(backoff * 2 ** (attempt - 1))
            joined, failures = await self._join_once(seeds, replay)
            if joined:
                return joined
        raise JoinError(failures)

    async def _resolve_seeds(
        self, seeds: Sequence[str]
    ) -> tuple[dict[Address, str], dict[str, str]]:
        """Every address the seeds resolve to (once each, with the seed it came from), and
        why each seed that resolved to none did not."""
        targets: dict[Address, str] = {}
        failures: dict[str, str] = {}
        default_port = self.address[1]
        for seed in seeds:
            try:
                _, host, port = parse_seed(seed, default_port)
                for address in await _resolve(host, port):
                    targets.setdefault(address, seed)
            except (ValueError, OSError) as exc:
                failures[seed] = str(exc)
        return targets, failures

    async def _join_once(self, seeds: Sequence[str], replay: bool) -> tuple[int, dict[str, str]]:
        """One join attempt: how many seeds answered, and why each other one failed (in the
        order the seeds were given; a seed that resolved to several addresses names each)."""
        failed: dict[str, list[tuple[str, str]]] = {seed: [] for seed in seeds}
        targets, unresolved = await self._resolve_seeds(seeds)
        for seed, why in unresolved.items():
            failed[seed].append((seed, why))
        joined = 0
        if targets:
            done = anyio.Event()
            results: list[JoinCompleted] = []
            join_id = self.stack.join(list(targets), anyio.current_time(), replay=replay)
            self._joins[join_id] = (done, results)
            self._flush()
            await done.wait()
            (result,) = results
            joined = len(result.joined)
            for address, why in result.failures.items():
                where = f"{_host_text(address[0])}:{address[1]}"
                seed = targets.get(address, where)
                failed.setdefault(seed, []).append(
                    (seed if seed == where else f"{seed} ({where})", why)
                )
        return joined, {what: why for reasons in failed.values() for what, why in reasons}

    async def leave(self, timeout: float = 5.0) -> bool:
        """Tell the cluster we leave, and wait (at most ``timeout``) for the news to go out.
        Returns False when it may not have reached everyone (the timeout passed first)."""
        self.stack.leave(anyio.current_time(), timeout)
        self._flush()
        with anyio.move_on_after(timeout + 1.0):
            await self._left.wait()
        return self._left.is_set() and not self._leave_timed_out

    async def update_metadata(self, meta: bytes) -> None:
        """Advertise new metadata (raises ``MetadataTooLarge`` past ``meta_max_size``)."""
        self.engine.update_meta(meta, anyio.current_time())
        self._flush()

    async def send(self, name: str, data: bytes) -> None:
        """Send ``data`` to the member ``name`` in one datagram (best effort)."""
        self.engine.send(name, data, anyio.current_time())
        self._flush()

    async def send_reliable(self, name: str, data: bytes) -> None:
        """Send ``data`` to the member ``name`` over TCP; raises :class:`SendError` on failure."""
        stream_id = self.engine.send_reliable(name, data, anyio.current_time())
        done = anyio.Event()
        outcome: list[str | None] = []
        self._reliable[stream_id] = (done, outcome)
        self._flush()
        await done.wait()
        if outcome[0] is not None:
            raise SendError(f"could not deliver to {name}: {outcome[0]}")

    async def user_event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        """Send a Serf user event to every member (``serf event``)."""
        self.serf.user_event(name, payload, coalesce, anyio.current_time())
        self._flush()

    async def set_tags(self, tags: Mapping[str, str]) -> None:
        """Replace this node's Serf tags."""
        self.serf.set_tags(tags, anyio.current_time())
        self._flush()

    async def force_leave(self, name: str, prune: bool = False) -> None:
        """Mark a failed member as left for good, cluster-wide (``serf force-leave``)."""
        self.serf.force_leave(name, prune, anyio.current_time())
        self._flush()

    async def query(
        self, name: str, payload: bytes = b"", **options: Unpack[QueryOptions]
    ) -> QueryResult:
        """Ask the members (those ``nodes`` and ``tags`` pick) and collect acks and answers
        until the query's ``timeout`` (Serf's default when None); see
        :class:`~swim.serf.layer.QueryOptions`."""
        result = await self.start_query(name, payload, **options)
        await result.done.wait()
        return result

    async def start_query(
        self, name: str, payload: bytes = b"", **options: Unpack[QueryOptions]
    ) -> QueryResult:
        """Send a query as :meth:`query` does, but return once it is out: the result fills
        as acks and answers arrive (see :meth:`QueryResult.arrivals`).  Raises
        :class:`~swim.serf.layer.SerfError` when the query cannot be sent."""
        query_id = self.serf.query(name, payload, anyio.current_time(), **options)
        result = QueryResult()
        self._queries[query_id] = result
        self._flush()
        return result

    async def respond(self, query: SerfQuery, payload: bytes) -> None:
        """Answer a query received as a :class:`~swim.serf.layer.SerfQuery` event."""
        self.serf.respond(query, payload, anyio.current_time())
        self._flush()

    async def broadcast(self, data: bytes) -> None:
        """Piggyback ``data`` on gossip to random members (see :meth:`Engine.broadcast`)."""
        self.engine.broadcast(data, anyio.current_time())
        self._flush()

    # ------------------------------------------------------------------ plumbing

    def _flush(self, wake_timers: bool = True) -> None:
        """Carry out what the stack asked for, and wake the timer task if an input brought
        the next deadline closer than the one it sleeps towards.

        Nothing here waits: datagrams go out before the events that report them are
        delivered (a LeaveCompleted comes with the leave's last copies), and a flush cannot
        be cancelled halfway or overtaken by another, so events arrive in the order they
        happened."""
        stack = self.stack
        while True:
            events = stack.take_events()
            datagrams = stack.take_datagrams()
            for address, data in datagrams:
                self._send(data, address)
            for request in stack.take_stream_requests():
                self._background.nursery.start_soon(self._outbound_stream, request)
            for event in events:
                self._deliver(event)
            if not (events or datagrams):
                break
        if wake_timers:
            deadline = stack.next_deadline()
            if (math.inf if deadline is None else deadline) != self._timers_wait_until:
                self._wakeup.set()

    def _send(self, data: bytes, address: Address) -> None:
        """One datagram, on the socket itself: it never blocks (a full send buffer drops the
        datagram, as a congested network would), and its errors are ``OSError`` on every
        backend, where AnyIO's trio backend would raise them as a broken socket and its
        asyncio backend would swallow them."""
        assert self._udp_socket is not None
        try:
            self._udp_socket.sendto(data, address)
        except OSError as exc:
            self._count("send_errors")
            log.debug("cannot send to %s:%d: %s", *address, exc)

    def _deliver(self, event: StackEvent) -> None:
        nursery = self._background.nursery
        if isinstance(event, JoinCompleted):
            waiting = self._joins.pop(event.join_id, None)
            if waiting is not None:  # a rejoin's joins are the stack's own
                waiting[1].append(event)
                waiting[0].set()
                return
        elif isinstance(event, LeaveCompleted):
            self._leave_timed_out = event.timed_out
            self._left.set()
            return
        elif isinstance(event, RejoinDue):
            nursery.start_soon(self._rejoin)
            return
        elif isinstance(event, IsolationLimitReached):
            nursery.start_soon(self._give_up, event)
            return
        elif isinstance(event, QueryAck | QueryAnswer | QueryDone):
            result = self._queries.get(event.query_id)
            if result is not None:
                if isinstance(event, QueryDone):
                    del self._queries[event.query_id]
                result._add(event)
            return
        elif isinstance(event, UserMessage) and self._on_message is not None:
            try:
                self._on_message(event.payload, event.source)
            except Exception:
                log.exception("the message handler raised; the message is dropped")
        elif isinstance(event, KeyringChanged) and self._keyring_file is not None:
            assert self._keyring is not None
            try:
                self._keyring.save(self._keyring_file)
            except OSError as exc:
                log.error("cannot write the keyring file %s: %s", self._keyring_file, exc)
        _log_membership(event)
        self._publish(event)

    def _publish(self, event: Event | SerfEvent) -> None:
        for subscriber in list(self._subscribers):
            subscriber.put(event)

    async def _run_timers(self) -> None:
        stack = self.stack
        while True:
            deadline = stack.next_deadline()
            self._timers_wait_until = math.inf if deadline is None else deadline
            with anyio.move_on_at(self._timers_wait_until):
                await self._wakeup.wait()
            self._timers_wait_until = -math.inf
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()
            stack.tick(anyio.current_time())
            self._flush(wake_timers=False)

    async def _receive_datagrams(self) -> None:
        """Read datagrams as they come, a burst at a time, straight from the socket (as sends
        go): no wrapper object per datagram, one flush per burst."""
        udp = self._udp_socket
        assert udp is not None
        stack = self.stack
        while True:
            await anyio.wait_readable(udp)
            now = anyio.current_time()
            for _ in range(RECEIVE_BATCH):
                try:
                    data, source = udp.recvfrom(RECEIVE_BUFFER)
                except BlockingIOError:
                    break
                except OSError as exc:  # e.g. an ICMP error reported on the socket
                    self._count("receive_errors")
                    log.debug("receive error: %s", connect_failure(exc))
                    self._flush()
                    await anyio.sleep(RECEIVE_RETRY_DELAY)  # a failing socket must not spin
                    break
                self._guarded(stack.receive_datagram, data, peer_address(source[0], source[1]), now)
            self._flush()

    def _guarded(self, handler: Callable[..., T], *args: Any) -> T | None:
        """Run an engine input from the network.  The engine drops bad input by itself; this
        is the last line, so that a bug the input trips never takes the node down."""
        try:
            return handler(*args)
        except Exception:
            self._count("internal_errors")
            log.exception("internal error handling input from the network; input dropped")
            return None

    async def _serve_streams(self) -> None:
        assert self._listener is not None
        await serve_connections(self._listener, self._handle_stream, f"node {self.name}")

    async def _handle_stream(self, stream: SocketStream) -> None:
        async with stream:
            try:
                first = await self._first_bytes(stream)
                if first is None:
                    return
                if self._stream_slots.value == 0:
                    self._count("inbound_streams_refused")
                    return
                async with self._stream_slots:
                    self._count("inbound_streams")
                    await self._answer_stream(stream, first)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                self._count("stream_errors")  # the peer went away mid-stream
                log.debug("inbound stream failed: %s", exc)

    async def _first_bytes(self, stream: SocketStream) -> bytes | None:
        """The stream's first bytes, or None when it stays silent past
        :data:`FIRST_BYTES_TIMEOUT` or closes first.  Past the bound on streams waiting at
        once, the one that has waited longest is closed: a joiner writes at once, so only a
        flood of newer silent connections could push it out."""
        self._stream_serial += 1
        serial = self._stream_serial
        with anyio.move_on_after(min(FIRST_BYTES_TIMEOUT, self.config.tcp_timeout)) as scope:
            self._silent_streams[serial] = scope
            if len(self._silent_streams) > self._max_silent_streams:
                _, oldest = self._silent_streams.popitem(last=False)
                oldest.cancel()
            try:
                return await stream.receive(RECEIVE_BUFFER)
            except anyio.EndOfStream:
                return None
            finally:
                self._silent_streams.pop(serial, None)
        self._count("inbound_streams_silent")
        return None

    async def _answer_stream(self, stream: SocketStream, first: bytes) -> None:
        peer = stream.extra(SocketAttribute.remote_address, None)
        if not isinstance(peer, tuple):
            return  # the peer is gone already
        source = peer_address(peer[0], peer[1])
        with anyio.move_on_after(self.config.tcp_timeout):
            incoming = await self._read_stream(stream, first)
            if incoming.error is not None:
                self._count("stream_errors")
                log.debug("dropped a stream: %s", incoming.error)
                return
            reply = self._guarded(self.stack.answer, incoming, source, anyio.current_time())
            self._flush()
            if reply is not None:
                await stream.send(reply)
                self._count("stream_bytes_out", len(reply))

    async def _read_stream(self, stream: SocketStream, first: bytes = b"") -> IncomingStream:
        """Read one message off ``stream``; past :data:`LARGE_STREAM` bytes, decode in a worker
        thread."""
        incoming = self.stack.incoming()
        received = len(first)
        try:
            if first and incoming.receive_data(first):
                return incoming
            while True:
                try:
                    chunk = await stream.receive(RECEIVE_BUFFER)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    incoming.end_of_stream()
                    return incoming
                received += len(chunk)
                if received > LARGE_STREAM:
                    done = await anyio.to_thread.run_sync(incoming.receive_data, chunk)
                else:
                    done = incoming.receive_data(chunk)
                if done:
                    return incoming
        finally:
            self._count("stream_bytes_in", received)

    async def _outbound_stream(self, request: StreamRequest) -> None:
        incoming: IncomingStream | None = None
        error: str | None = None
        with anyio.move_on_at(request.deadline) as scope:
            try:
                host, port = request.address
                stream = await anyio.connect_tcp(host, port)
                self._count("outbound_streams")
                async with stream:
                    await stream.send(request.data)
                    self._count("stream_bytes_out", len(request.data))
                    if request.expects_reply:
                        incoming = await self._read_stream(stream)
            except OSError as exc:
                error = connect_failure(exc)
            except anyio.BrokenResourceError as exc:
                error = f"connection lost: {exc}"
        if scope.cancelled_caught:
            error = "timed out"
        if error is None and incoming is not None and incoming.message is None:
            log.debug("reply from %s unreadable: %s", request.address, incoming.error)
            error = UNREADABLE_REPLY
        pending = self._reliable.pop(request.stream_id, None)
        if pending is not None:
            pending[1].append(error)
            pending[0].set()
        self.stack.stream_finished(request.stream_id, incoming, anyio.current_time(), error=error)
        self._flush()

    async def _rejoin(self) -> None:
        """Answer the stack's :class:`RejoinDue`: resolve the seeds again and try them."""
        targets: dict[Address, str] = {}
        if self._seeds:
            targets, failures = await self._resolve_seeds(self._seeds)
            if failures:
                log.info("rejoin: %s", JoinError(failures).reasons)
        self.stack.rejoin(list(targets), anyio.current_time())
        self._flush()

    async def _give_up(self, event: IsolationLimitReached) -> None:
        limit = self._exit_when_isolated
        raise IsolatedError(f"isolated for {event.isolated_for:g} s (exit_when_isolated={limit})")


def _bind_failure(host: str, port: int, cause: OSError) -> str:
    """Why binding ``host:port`` failed, and what to do about it."""
    where = f"cannot bind UDP and TCP on {_host_text(host)}:{port}"
    if cause.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use; choose another port or stop what uses it"
    if cause.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {host} is not an address of this machine; bind to one of its "
            "addresses, or to 0.0.0.0 for all of them"
        )
    if isinstance(cause, socket.gaierror):
        return (
            f"{where}: cannot resolve {host!r} ({cause.strerror}); bind to an address of "
            "this machine"
        )
    return f"{where}: {cause.strerror or cause}"


async def _bind_udp_and_tcp(
    host: str, port: int, attempts: int = 20
) -> tuple[socket.socket, SocketListener]:
    """A non-blocking UDP socket and a TCP listener on the same port (port 0: a free
    one for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for _ in range(attempts):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
            bound = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((host, bound))
                tcp.listen(128)
            except OSError as exc:
                tcp.close()
                raise exc
        except OSError as exc:
            udp.close()
            last_error = exc
            if port != 0 or exc.errno != errno.EADDRINUSE:
                break
            continue  # port 0: UDP got a free port that TCP has taken; try another
        udp.setblocking(False)
        return udp, await SocketListener.from_socket(tcp)
    assert last_error is not None
    raise BindError(host, port, last_error)


def _advertise_host(bind_host: str) -> str:
    """The address to advertise for a wildcard bind: this host's first non-loopback address."""
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    family = socket.AF_INET6 if bind_host == "::" else socket.AF_INET
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family)
    except OSError:
        infos = []
    for info in infos:
        address = str(info[4][0])
        if not address.startswith(("127.", "::1")):
            return address
    raise AdvertiseError(
        f"cannot tell which address to advertise for bind address {bind_host!r}: this "
        "host's name resolves to no address but loopback; pass advertise=(host, port) or bind "
        "to a specific address"
    )


async def _resolve(host: str, port: int) -> list[Address]:
    """Every A and AAAA address of ``host`` (an IP literal resolves to itself)."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host!r}: {exc.strerror}") from None
    addresses: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = (str(sockaddr[0]), int(sockaddr[1]))
            if address not in addresses:
                addresses.append(address)
    return addresses
