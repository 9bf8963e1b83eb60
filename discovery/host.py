"""The serving side on a running node: register services, serve their metadata, drain.

:class:`ServiceHost` writes registrations into the node's Serf tags (other tags stay), runs the
node's metadata service (see :mod:`discovery.introspection`), tracks requests and background
tasks in flight, drains in the design note's five steps, and raises the alarm when the node is
cut off from every peer.  Every decision is in :mod:`discovery.records` and
:mod:`discovery.lifecycle` (the drain's state machine, which this module drives over sockets);
this module moves bytes and waits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.stapled import MultiListener

from discovery import lifecycle
from discovery.introspection import (
    MAX_REQUEST_BYTES,
    SEAL_OVERHEAD,
    Direction,
    FrameSeal,
    Metadata,
    ProtocolError,
    decode_request,
    encode_metadata,
    revision_of,
)
from discovery.lifecycle import DrainReport, Kind, Lifecycle, Work
from discovery.records import DEFAULT_WEIGHT, ServiceRecord, check_name, check_size, write_tags
from swim.background import Background
from swim.events import Isolated, Reconnected
from swim.logs import bump
from swim.node import EventStream, JoinError, Node
from swim.serf.layer import Serf
from swim.sockets import serve_connections

log = logging.getLogger("discovery.host")


@dataclass(frozen=True, slots=True)
class MetadataServerStatistics:
    """A snapshot of the metadata service's counters: what it answered and what it dropped
    (see :meth:`ServiceHost.statistics`)."""

    answered: int = 0
    unknown_service: int = 0
    bad_requests: int = 0
    """Malformed, oversized or truncated requests, and (in an encrypted cluster) requests
    not sealed with the cluster's key, dropped."""
    timeouts: int = 0
    """Connections that sent no whole request in time, dropped."""
    refused: int = 0
    """Connections beyond ``max_connections``, closed at once."""
    broken: int = 0
    """Connections the peer broke before the answer went out."""


@dataclass(frozen=True, slots=True)
class _Registration:
    record: ServiceRecord
    metadata: Metadata


class ServiceHost:
    """Services registered on ``node`` (which must run the Serf layer: ``tags={}``).

    ``async with ServiceHost(node) as host:`` starts the metadata service (on the node's
    address, or ``metadata_bind``; sealed with the node's keyring when it has one) and
    advertises its port.  ``on_isolation`` is called with
    True when the node is cut off from every peer and with False when it reconnects; the node
    keeps serving meanwhile (give the :class:`~swim.node.Node` ``exit_when_isolated=`` to exit
    instead after a grace time).  ``cancel_grace`` is how long a drain waits for the work it
    cut off to stop before it leaves.
    """

    def __init__(
        self,
        node: Node,
        *,
        metadata_bind: tuple[str, int] | None = None,
        on_isolation: Callable[[bool], None] | None = None,
        max_connections: int = 32,
        request_timeout: float = 2.0,
        cancel_grace: float = 1.0,
    ) -> None:
        self.node = node
        self._metadata_bind = metadata_bind
        self._on_isolation = on_isolation
        self._slots = anyio.Semaphore(max_connections)
        self._request_timeout = request_timeout
        self._statistics = MetadataServerStatistics()
        self._lifecycle = Lifecycle(node.name, cancel_grace=cancel_grace)
        self._registrations: dict[str, _Registration] = {}
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._work_ended = anyio.Event()
        self._tags_lock = anyio.Lock()
        self._serf: Serf | None = None
        self._metadata_port: int | None = None
        self._background = Background()

    async def __aenter__(self) -> ServiceHost:
        self._serf = self.node.serf  # raises, saying how to fix it, when Serf is off
        host, port = self._metadata_bind or (self.node.address[0], 0)
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        self._metadata_port = listener.extra(SocketAttribute.local_port)
        events = self.node.events()
        nursery = await self._background.open()
        nursery.start_soon(self._serve_metadata, listener)
        nursery.start_soon(self._watch_isolation, events)
        try:
            async with self._tags_lock:
                await self._publish(self._registrations)
        except BaseException:
            await self._background.abort()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._background.close(exc_type, exc, traceback)

    # ------------------------------------------------------------------ start-up

    async def join(
        self, seeds: Iterable[str], *, start_alone: bool = False, attempts: int = 1
    ) -> int:
        """Join the cluster through ``seeds``.  A node that cannot join raises
        :class:`~swim.node.JoinError` (the design note: a new node that cannot register exits),
        unless ``start_alone``: then it serves alone and keeps trying the seeds."""
        try:
            return await self.node.join(seeds, attempts=attempts)
        except JoinError as exc:
            if not start_alone:
                raise
            log.warning("%s starts alone (%s); it keeps trying the seeds", self.node.name, exc)
            return 0

    # ------------------------------------------------------------------ registration

    @property
    def metadata_port(self) -> int:
        if self._metadata_port is None:
            raise RuntimeError("the host is not running; use it inside `async with`")
        return self._metadata_port

    def registered(self) -> dict[str, ServiceRecord]:
        return {name: r.record for name, r in self._registrations.items()}

    async def register(
        self,
        name: str,
        port: int,
        *,
        group: str = "",
        version: str = "",
        weight: int = DEFAULT_WEIGHT,
        host: str | None = None,
        metadata: Metadata | None = None,
        tags: Iterable[str] = (),
        instance_id: str = "",
    ) -> ServiceRecord:
        """Advertise a service instance on this node (replacing one of the same name);
        ``tags`` and ``instance_id`` are Consul's service Tags and ID, for the gateway.

        Raises :class:`~discovery.records.RegistrationError` for a bad field and
        :class:`~discovery.records.RegistrationTooLarge` when the tags would not fit.
        """
        packed = encode_metadata(metadata or {})
        revision = revision_of(packed)
        record = ServiceRecord(
            port, group, version, weight, revision, host, tuple(tags), instance_id
        )
        registration = _Registration(record, dict(metadata or {}))
        async with self._tags_lock:
            await self._publish({**self._registrations, check_name(name): registration})
        return record

    async def update_metadata(self, name: str, metadata: Metadata) -> int:
        """Replace a service's metadata; returns the new revision, which gossip carries so
        that clients refetch."""
        revision = revision_of(encode_metadata(metadata))
        async with self._tags_lock:
            record = dataclasses.replace(self._registered(name).record, revision=revision)
            registration = _Registration(record, dict(metadata))
            await self._publish({**self._registrations, name: registration})
        return revision

    async def deregister(self, name: str) -> None:
        """Stop advertising a service."""
        async with self._tags_lock:
            self._registered(name)
            await self._publish({n: r for n, r in self._registrations.items() if n != name})

    def _registered(self, name: str) -> _Registration:
        registration = self._registrations.get(name)
        if registration is None:
            known = ", ".join(self._registrations) or "none"
            raise KeyError(f"service {name!r} is not registered here (registered: {known})")
        return registration

    async def _publish(self, registrations: Mapping[str, _Registration]) -> None:
        """Write the tags for ``registrations`` (hold ``_tags_lock``).  The size is checked
        with the draining tag included, so that a drain never fails to announce itself."""
        assert self._serf is not None
        records = {name: r.record for name, r in registrations.items()}
        port = self._metadata_port
        check_size(
            write_tags(self._serf.tags, records, metadata_port=port, draining=True),
            self.node.config.meta_max_size,
        )
        draining = not self._lifecycle.accepting()
        tags = write_tags(self._serf.tags, records, metadata_port=port, draining=draining)
        await self.node.set_tags(tags)
        self._registrations = dict(registrations)

    # ------------------------------------------------------------------ work in flight

    def accepting(self) -> bool:
        """Whether new requests may start (False from the moment a drain begins)."""
        return self._lifecycle.accepting()

    @contextmanager
    def request(self, name: str) -> Iterator[Work]:
        """Track one request: ``with host.request("GET /orders"): ...``.  Raises
        :class:`~discovery.lifecycle.NotAccepting` once draining; a request still running at
        the drain deadline is cancelled (the block ends; code after it still runs)."""
        with self._track(name, Kind.REQUEST) as work:
            yield work

    @contextmanager
    def task(self, name: str) -> Iterator[Work]:
        """Track a background task (a scheduled job) the same way: drain waits for it."""
        with self._track(name, Kind.TASK) as work:
            yield work

    @contextmanager
    def _track(self, name: str, kind: Kind) -> Iterator[Work]:
        work = self._lifecycle.begin(name, kind, anyio.current_time())
        try:
            with anyio.CancelScope() as scope:
                self._scopes[work.id] = scope
                yield work
        finally:
            self._scopes.pop(work.id, None)
            self._lifecycle.end(work, anyio.current_time())
            self._work_ended.set()

    # ------------------------------------------------------------------ drain

    async def drain(self, timeout: float) -> DrainReport:
        """Shut down gracefully: announce draining through gossip, refuse new work, wait up to
        ``timeout`` for the requests and tasks in flight, cancel what remains, then leave the
        cluster.  Returns what was cut off."""
        life = self._lifecycle
        life.drain(anyio.current_time(), timeout)
        log.info("%s drains: %d in flight", self.node.name, len(life.in_flight))
        while True:
            actions = life.take_actions()
            for action in actions:
                match action:
                    case lifecycle.Announce(by):
                        await self._announce(by)
                    case lifecycle.CutOff(work):
                        self._cut_off(work)
                    case lifecycle.Leave():
                        await self._leave()
                    case lifecycle.Finished(report):
                        log.info("%s %s", self.node.name, report)
                        return report
            if not actions:  # wait for work to end, or for the next deadline
                deadline = life.next_deadline()
                self._work_ended = anyio.Event()
                with anyio.move_on_at(math.inf if deadline is None else deadline):
                    await self._work_ended.wait()
                life.tick(anyio.current_time())

    async def _announce(self, by: float) -> None:
        """Publish the draining tag; best effort: the drain goes on regardless."""
        with anyio.move_on_at(by):
            try:
                async with self._tags_lock:
                    await self._publish(self._registrations)
            except Exception as exc:
                log.warning("%s could not announce draining: %s", self.node.name, exc)
        self._lifecycle.announced(anyio.current_time())

    def _cut_off(self, work: tuple[Work, ...]) -> None:
        log.warning(
            "%s cuts off at the drain deadline: %s", self.node.name, ", ".join(map(str, work))
        )
        for each in work:
            self._scopes[each.id].cancel()

    async def _leave(self) -> None:
        left = True
        try:
            await self.node.leave(self.node.config.leave_timeout)
        except Exception as exc:  # the node may already have left or stopped
            log.warning("%s could not leave the cluster: %s", self.node.name, exc)
            left = False
        self._lifecycle.left(anyio.current_time(), ok=left)

    # ------------------------------------------------------------------ isolation

    @property
    def isolated(self) -> bool:
        return self.node.isolated

    async def _watch_isolation(self, events: EventStream) -> None:
        async for event in events:
            if isinstance(event, Isolated):
                log.warning(
                    "%s is cut off from every peer; it keeps serving %s",
                    self.node.name,
                    ", ".join(self._registrations) or "(no services)",
                )
                self._tell_isolation(True)
            elif isinstance(event, Reconnected):
                log.warning("%s reaches its peers again", self.node.name)
                self._tell_isolation(False)

    def _tell_isolation(self, isolated: bool) -> None:
        if self._on_isolation is None:
            return
        try:
            self._on_isolation(isolated)
        except Exception:
            log.exception("the on_isolation callback raised; ignored")

    # ------------------------------------------------------------------ metadata service

    def statistics(self) -> MetadataServerStatistics:
        """The metadata service's counters as they stand now."""
        return self._statistics

    async def _serve_metadata(self, listener: MultiListener[SocketStream]) -> None:
        async with listener:
            await serve_connections(listener, self._answer, "the metadata service")

    async def _answer(self, stream: SocketStream) -> None:
        """One request, one answer; bad input is dropped and counted, never raised."""
        async with stream:
            if self._slots.value == 0:
                self._statistics = bump(self._statistics, "refused")
                return
            async with self._slots:
                with anyio.move_on_after(self._request_timeout) as scope:
                    try:
                        await self._answer_one(stream)
                    except ProtocolError as exc:
                        self._statistics = bump(self._statistics, "bad_requests")
                        log.debug("dropped a metadata request: %s", exc.reason)
                    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        self._statistics = bump(self._statistics, "broken")
                if scope.cancelled_caught:
                    self._statistics = bump(self._statistics, "timeouts")

    async def _answer_one(self, stream: SocketStream) -> None:
        """Read one request and answer it, sealed with the node's keyring when it has one."""
        seal = FrameSeal(self.node.keyring, self.node.config.label.encode())
        reader = seal.reader(Direction.REQUEST)
        body = None
        while body is None:
            try:
                chunk = await stream.receive(MAX_REQUEST_BYTES + SEAL_OVERHEAD + 8)
            except anyio.EndOfStream:
                reader.end_of_stream()  # raises: the peer closed mid-frame
            body = reader.receive_data(chunk)
        request = decode_request(seal.open(body, Direction.REQUEST))
        if seal.sealed and not request.nonce:
            raise ProtocolError("a sealed request needs a nonce for its answer to echo")
        registration = self._registrations.get(request.service)
        if registration is None:
            self._statistics = bump(self._statistics, "unknown_service")
            reply: dict[str, Any] = {
                "error": f"service {request.service!r} is not registered on this node"
            }
        else:
            self._statistics = bump(self._statistics, "answered")
            reply = {"revision": registration.record.revision, "metadata": registration.metadata}
        if request.nonce:
            reply["nonce"] = request.nonce
        await stream.send(seal.frame(reply, Direction.RESPONSE))
