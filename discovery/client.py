"""The calling side: discover services over one or several clusters, watch them, call them.

:class:`Discovery` keeps one :class:`~discovery.catalog.Catalog` per node it is given (one node
per cluster: core and non-core business, each with its own label and key), fed by that node's
membership events and a periodic re-sync.  It resolves services (at start-up, failing fast, or
lazily on the first call), streams changes, fetches metadata on demand, calls with failover,
and keeps the catalog in a cache file to bootstrap from when no peer answers.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio

from discovery import cachefile
from discovery.balancer import RoundRobin, Strategy, tier
from discovery.catalog import (
    Catalog,
    Change,
    ChangeKind,
    Filter,
    Instance,
    NoInstances,
    UnknownService,
    lookup,
)
from discovery.failover import Done, FailoverPolicy, GiveUp, Lookup, Try
from discovery.introspection import (
    NONCE_BYTES,
    Direction,
    FrameSeal,
    Metadata,
    MetadataCache,
    MetadataError,
    ProtocolError,
    Refusal,
    Response,
    decode_response,
)
from swim.background import Background
from swim.events import (
    MemberAlive,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
)
from swim.members import MemberState
from swim.node import EventsLost, EventStream, Node
from swim.queues import LossyQueue
from swim.sockets import connect_failure

log = logging.getLogger("discovery.client")
T = TypeVar("T")

RETRY_ON: tuple[type[BaseException], ...] = (OSError, anyio.BrokenResourceError)
"""Connection failures: the instance is marked unavailable and another one is tried."""

_MEMBER_EVENTS = (MemberJoined, MemberUpdated, MemberSuspect, MemberAlive, MemberFailed, MemberLeft)


class MissingServices(LookupError):
    """Services required at start-up have no instance; ``errors`` says why for each."""

    def __init__(self, errors: Mapping[str, LookupError]) -> None:
        self.errors = dict(errors)
        super().__init__(
            "required services are missing: " + "; ".join(str(e) for e in self.errors.values())
        )


@dataclass(frozen=True, slots=True)
class ChangesLost:
    """A watcher fell behind and ``count`` changes were dropped before this one; resolve
    again to catch up."""

    count: int


Watch = LossyQueue[Change, ChangesLost]
"""Changes to one service, buffered up to ``watch_buffer``; iterate it with ``async for``.  A
watcher that falls behind loses the oldest changes and is handed :class:`ChangesLost` first."""


class Discovery:
    """Service discovery over ``nodes``: one :class:`~swim.node.Node`, or several by cluster
    name.  Use it as ``async with Discovery(node) as discovery:``.

    ``cache_file`` persists the catalog (written at most every ``save_interval`` seconds and on
    exit) and bootstraps it at start; its entries are stale until gossip confirms them.
    """

    def __init__(
        self,
        nodes: Node | Mapping[str, Node],
        *,
        strategy: Strategy | None = None,
        failover: FailoverPolicy | None = None,
        cache_file: str | os.PathLike[str] | None = None,
        save_interval: float = 5.0,
        resync_interval: float = 10.0,
        metadata_timeout: float = 2.0,
        watch_buffer: int = 256,
    ) -> None:
        self.nodes = {"": nodes} if isinstance(nodes, Node) else dict(nodes)
        if not self.nodes:
            raise ValueError("Discovery needs at least one node")
        self.catalogs = {cluster: Catalog(cluster) for cluster in self.nodes}
        self.strategy = strategy or RoundRobin()
        self.failover = failover or FailoverPolicy()
        self.metadata_cache = MetadataCache()
        self._cache_file = cache_file
        self._save_interval = save_interval
        self._resync_interval = resync_interval
        self._metadata_timeout = metadata_timeout
        self._watch_buffer = watch_buffer
        self._watches: dict[str, weakref.WeakSet[Watch]] = {}
        self._changed = anyio.Event()
        self._dirty = False
        self._background = Background()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Discovery:
        if self._cache_file is not None:
            for cluster, shot in cachefile.load(self._cache_file).items():
                if cluster in self.catalogs:
                    self._publish(self.catalogs[cluster].load(shot.instances, shot.services))
        streams = {cluster: node.events() for cluster, node in self.nodes.items()}
        for cluster in self.nodes:
            self._resync(cluster)
        nursery = await self._background.open()
        for cluster, stream in streams.items():
            nursery.start_soon(self._follow, cluster, stream)
        if self._cache_file is not None:
            nursery.start_soon(self._save_periodically)
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
            self._save()

    # ------------------------------------------------------------------ discovery

    def instances(
        self,
        service: str,
        *,
        group: str | None = None,
        version: str | None = None,
        cluster: str | None = None,
    ) -> list[Instance]:
        """The available instances now, best first (raises :class:`UnknownService` or
        :class:`NoInstances`)."""
        found = lookup(self.catalogs.values(), service, Filter(group, version, cluster))
        now = anyio.current_time()
        return sorted(found, key=lambda i: tier(i, self.failover.is_marked(i, now)))

    async def resolve(
        self,
        service: str,
        *,
        group: str | None = None,
        version: str | None = None,
        cluster: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        wait: float = 0.0,
    ) -> list[Instance]:
        """The available instances matching the filters, best first; ``metadata`` keeps those
        whose metadata holds every given key and value (fetched on demand).  With ``wait``,
        waits that long for one to appear before raising."""
        deadline = anyio.current_time() + wait
        while True:
            try:
                found = self.instances(service, group=group, version=version, cluster=cluster)
                if metadata:
                    found = await self._matching_metadata(service, found, metadata)
                return found
            except LookupError:
                if anyio.current_time() >= deadline:
                    raise
            with anyio.move_on_at(deadline):
                await self._changed.wait()

    async def require(self, services: Iterable[str], *, timeout: float = 5.0) -> None:
        """Fail fast at start-up: raise :class:`MissingServices` unless every one of
        ``services`` has an instance within ``timeout``."""
        deadline = anyio.current_time() + timeout
        errors: dict[str, LookupError] = {}
        for service in services:
            try:
                await self.resolve(service, wait=max(0.0, deadline - anyio.current_time()))
            except (UnknownService, NoInstances) as exc:
                errors[service] = exc
        if errors:
            raise MissingServices(errors)

    def watch(self, service: str) -> Watch:
        """Changes to ``service`` from now on, starting with its instances now as ``ADDED``."""
        watch = Watch(self._watch_buffer, ChangesLost)
        for catalog in self.catalogs.values():
            for instance in catalog.instances(service):
                if instance.health.available:
                    watch.put(Change(ChangeKind.ADDED, instance))
        self._watches.setdefault(service, weakref.WeakSet()).add(watch)
        return watch

    async def metadata(self, instance: Instance) -> Metadata:
        """The instance's full metadata, from the cache at its revision or fetched from its
        node (sealed with the keyring of this process's node in the instance's cluster, when it
        has one); raises :class:`MetadataError` saying why it could not be fetched."""
        cached = self.metadata_cache.get(instance)
        if cached is not None:
            return cached
        address = instance.metadata_address
        if address is None:
            raise MetadataError(f"{instance} has metadata but its node runs no metadata service")
        node = self.nodes.get(instance.cluster)
        if node is None:
            clusters = ", ".join(repr(c) for c in self.nodes)
            raise MetadataError(
                f"{instance} is in cluster {instance.cluster!r}, which this Discovery does not "
                f"follow (it follows {clusters}); ask the Discovery that found it"
            )
        seal = FrameSeal(node.keyring, node.config.label.encode())
        try:
            with anyio.fail_after(self._metadata_timeout):
                reply = await _fetch(address, seal, instance.service, instance.revision)
        except TimeoutError:
            why = f"no answer within {self._metadata_timeout} s"
        except (OSError, anyio.BrokenResourceError) as exc:
            why = connect_failure(exc)
        except ProtocolError as exc:
            why = f"bad answer: {exc.reason}"
        else:
            if isinstance(reply, Refusal):
                why = reply.error
            else:
                self.metadata_cache.put(instance, reply)
                return reply.metadata
        host, port = address
        raise MetadataError(f"cannot fetch the metadata of {instance} from {host}:{port}: {why}")

    async def _matching_metadata(
        self, service: str, found: list[Instance], wanted: Mapping[str, Any]
    ) -> list[Instance]:
        fetched: dict[int, Metadata] = {}

        async def fetch(index: int, instance: Instance) -> None:
            try:
                fetched[index] = await self.metadata(instance)
            except MetadataError as exc:
                log.info("%s is left out of a metadata filter: %s", instance, exc)

        async with anyio.create_task_group() as nursery:
            for index, instance in enumerate(found):
                nursery.start_soon(fetch, index, instance)
        matching = [
            instance
            for index, instance in enumerate(found)
            if index in fetched and all(fetched[index].get(k) == v for k, v in wanted.items())
        ]
        if not matching:
            raise NoInstances(service, f"{len(found)} available, none has metadata {wanted}")
        return matching

    # ------------------------------------------------------------------ calling

    async def call(
        self,
        service: str,
        request: Callable[[Instance], Awaitable[T]],
        *,
        group: str | None = None,
        version: str | None = None,
        cluster: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = RETRY_ON,
    ) -> T:
        """``await request(instance)`` on an instance of ``service``; on a connection failure
        (``retry_on``) mark it locally unavailable and try another, within the failover
        policy's retry budget and ``timeout``.  Raises :class:`UnknownService` or
        :class:`NoInstances` when there is nothing to try, and
        :class:`~discovery.failover.CallFailed` listing every attempt when all failed.  The
        decisions are :class:`~discovery.failover.CallPlan`'s; this loop carries them out."""

        async def found() -> list[Instance] | LookupError:
            try:
                return await self.resolve(
                    service, group=group, version=version, cluster=cluster, metadata=metadata
                )
            except LookupError as exc:
                return exc

        now = anyio.current_time()
        deadline = None if timeout is None else now + timeout
        plan = self.failover.plan(service, self.strategy, now, deadline)
        while True:
            match plan.step:
                case Lookup():
                    plan.resolved(await found(), anyio.current_time())
                case Try(instance):
                    try:
                        with anyio.move_on_at(math.inf if deadline is None else deadline):
                            result = await request(instance)
                            plan.finished(anyio.current_time())
                        plan.tick(anyio.current_time())  # gives up if the deadline cut it short
                    except retry_on as exc:
                        log.info("call to %s failed: %s", instance, connect_failure(exc))
                        plan.failed(connect_failure(exc), anyio.current_time())
                    except BaseException:  # not the instance's failure: the caller's to handle
                        plan.finished(anyio.current_time())
                        raise
                case Done():
                    return result
                case GiveUp(error):
                    raise error

    # ------------------------------------------------------------------ feeding the catalogs

    async def _follow(self, cluster: str, events: EventStream) -> None:
        """Apply the node's membership events as they come; re-sync every
        ``resync_interval`` (members reaped without an event) and after lost events."""
        while True:
            with anyio.move_on_after(self._resync_interval):
                async for event in events:
                    if isinstance(event, EventsLost):
                        break
                    if isinstance(event, _MEMBER_EVENTS):
                        self._publish(self.catalogs[cluster].apply(event.member))
            self._resync(cluster)

    def _resync(self, cluster: str) -> None:
        node = self.nodes[cluster]
        members = node.members()
        heard = any(m.name != node.name and m.state is MemberState.ALIVE for m in members)
        self._publish(self.catalogs[cluster].sync(members, complete=heard))

    def _publish(self, changes: list[Change]) -> None:
        if not changes:
            return
        for change in changes:
            for watch in list(self._watches.get(change.instance.service, ())):
                watch.put(change)
        self._dirty = True
        self._changed.set()
        self._changed = anyio.Event()

    # ------------------------------------------------------------------ the cache file

    async def _save_periodically(self) -> None:
        while True:
            await anyio.sleep(self._save_interval)
            self._save()

    def _save(self) -> None:
        if self._cache_file is None or not self._dirty:
            return
        shots = {c: cachefile.snapshot(catalog) for c, catalog in self.catalogs.items()}
        try:
            cachefile.save(self._cache_file, shots)
        except OSError as exc:
            log.warning("cannot write the discovery cache %s: %s", self._cache_file, exc)
            return
        self._dirty = False


async def _fetch(
    address: tuple[str, int], seal: FrameSeal, service: str, revision: int
) -> Response | Refusal:
    """One metadata request to ``address`` and its decoded answer; sealed requests carry a
    fresh random nonce, which the answer must echo."""
    request: dict[str, Any] = {"service": service, "revision": revision}
    nonce = b""
    if seal.sealed:
        nonce = request["nonce"] = secrets.token_bytes(NONCE_BYTES)
    stream = await anyio.connect_tcp(*address)
    async with stream:
        await stream.send(seal.frame(request, Direction.REQUEST))
        reader = seal.reader(Direction.RESPONSE)
        body = None
        while body is None:
            try:
                chunk = await stream.receive(65_536)
            except anyio.EndOfStream:
                reader.end_of_stream()  # raises: the peer closed mid-frame
            body = reader.receive_data(chunk)
        return decode_response(seal.open(body, Direction.RESPONSE), nonce)
