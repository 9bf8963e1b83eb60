"""A Node for code that is not async: Flask and Django views, gunicorn workers, scripts.

:class:`BlockingNode` runs a :class:`~swim.node.Node` on an event loop of its own in a
background thread (AnyIO's blocking portal) and gives plain methods that wait for their
answer::

    with BlockingNode(Config.lan(), name="web-1", bind=("0.0.0.0", 7946), tags={}) as node:
        node.join(["10.0.0.5:7946"])
        for event in node.events():   # blocks for each event
            print(event)

Closing it (the ``with`` block's end, :meth:`BlockingNode.close`, or interpreter exit if it is
still open) leaves the cluster gracefully, then stops the thread.  Its methods may be called
from any thread; each blocks until the node has done it.  Called from inside a running event
loop, they raise :class:`WouldBlockError` instead of blocking that loop: async code uses
:class:`~swim.node.Node` itself.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar, Unpack

import anyio
import sniffio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from swim.config import Config
from swim.members import Address, Member
from swim.node import Delivered, EventStream, Node, QueryResult
from swim.serf.layer import QueryOptions, SerfQuery

T = TypeVar("T")


class WouldBlockError(RuntimeError):
    """A blocking method was called from inside a running event loop, which it would stall."""


class ClosedError(RuntimeError):
    """The blocking node was closed; make a new one."""


class Portal:
    """One event loop in a background thread, and the rules for calling into it: never from
    inside a running loop, never after it was closed.  :class:`BlockingNode` owns one;
    ``discovery.blocking`` runs its clients on the same one."""

    def __init__(self, backend: str) -> None:
        _refuse_inside_a_loop()
        self._manager = start_blocking_portal(backend)
        self._portal: BlockingPortal | None = self._manager.__enter__()
        self._lock = threading.Lock()

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``function(*args)`` on the loop and wait for its result."""
        return self._open().call(function, *args)

    def read(self, function: Callable[..., T], *args: Any) -> T:
        """Call the plain ``function(*args)`` on the loop's thread (where the node's state
        may be read safely) and return what it returns."""
        return self._open().call(function, *args)

    def start(self, function: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``function(*args)`` as a task on the loop, until it ends or the loop stops."""
        self._open().start_task_soon(function, *args)

    def enter(self, manager: Any) -> tuple[Any, AbstractContextManager[Any]]:
        """Enter an async context manager on the loop; its value, and the blocking manager
        to exit it with."""
        wrapped = self._open().wrap_async_context_manager(manager)
        return wrapped.__enter__(), wrapped

    def close(self) -> None:
        """Stop the loop and its thread (what runs on it is cancelled)."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is None:
            return
        try:
            portal.call(portal.stop, True)  # cancel what still runs (event callbacks)
        finally:
            self._manager.__exit__(None, None, None)

    @property
    def closed(self) -> bool:
        return self._portal is None

    def _open(self) -> BlockingPortal:
        portal = self._portal
        if portal is None:
            raise ClosedError("this blocking node was closed; make a new BlockingNode")
        _refuse_inside_a_loop()
        return portal


def _refuse_inside_a_loop() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    raise WouldBlockError(
        f"a blocking method was called from async code ({library}), where it would stall the "
        "event loop; in async code use swim.node.Node (async with Node(...)) instead"
    )


class BlockingNode:
    """A :class:`~swim.node.Node` driven from ordinary (not async) code.

    It takes the same arguments as :class:`~swim.node.Node`, and ``backend`` (``"trio"`` or
    ``"asyncio"``) for its own loop.  The node is up when the constructor returns; a failure to
    start (a port in use, a bad name) raises there.
    """

    def __init__(
        self, config: Config | None = None, *, backend: str = "trio", **options: Any
    ) -> None:
        self.portal = Portal(backend)
        try:
            node, self._node_manager = self.portal.enter(Node(config, **options))
        except BaseException:
            self.portal.close()
            raise
        self.node: Node = node
        """The node itself; use it only through :attr:`portal` (it lives on another thread)."""
        self._left = False
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> BlockingNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self, leave: bool = True) -> None:
        """Leave the cluster gracefully (unless ``leave`` is False or it left already), then
        stop the node and its thread.  Closing twice does nothing."""
        if self.portal.closed:
            return
        try:
            if leave and not self._left:
                self.leave()
        finally:
            try:
                self._node_manager.__exit__(None, None, None)
            finally:
                self.portal.close()

    # ------------------------------------------------------------------ what the node knows

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def address(self) -> Address:
        return self.portal.read(lambda: self.node.address)

    def members(self) -> list[Member]:
        """Every member in this node's view, itself included."""
        return self.portal.read(self.node.members)

    def member(self, name: str) -> Member | None:
        return self.portal.read(self.node.member, name)

    @property
    def tags(self) -> dict[str, str]:
        """This node's Serf tags."""
        return self.portal.read(lambda: dict(self.node.serf.tags))

    # ------------------------------------------------------------------ commands

    def join(self, seeds: Iterable[str], **options: Any) -> int:
        """Join through ``seeds``, as :meth:`Node.join` (``attempts``, ``backoff``, ``replay``)."""
        return self.portal.call(lambda: self.node.join(list(seeds), **options))

    def leave(self, timeout: float = 5.0) -> bool:
        """Leave gracefully, as :meth:`Node.leave`; the node keeps running until closed."""
        self._left = True
        return self.portal.call(self.node.leave, timeout)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.portal.call(self.node.set_tags, dict(tags))

    def user_event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        self.portal.call(self.node.user_event, name, payload, coalesce)

    def query(
        self, name: str, payload: bytes = b"", **options: Unpack[QueryOptions]
    ) -> QueryResult:
        """Ask a query and wait for it to end, as :meth:`Node.query`."""
        return self.portal.call(lambda: self.node.query(name, payload, **options))

    def respond(self, query: SerfQuery, payload: bytes) -> None:
        self.portal.call(self.node.respond, query, payload)

    # ------------------------------------------------------------------ events

    def events(self, timeout: float | None = None) -> Iterator[Delivered]:
        """Events from now on, as :meth:`Node.events`, each waited for in turn; with
        ``timeout``, the iteration ends once that long passes without one."""
        stream: EventStream = self.portal.read(self.node.events)
        return _Events(self.portal, stream, timeout)

    def on_event(self, callback: Callable[[Delivered], object]) -> None:
        """Call ``callback`` with every event from now on, on the node's thread, until the
        node closes: keep it short (hand the work to a queue of your own)."""
        stream: EventStream = self.portal.read(self.node.events)
        self.portal.start(_forward, stream, callback)


class _Events:
    """A blocking iterator over an event stream that lives on the portal's loop."""

    def __init__(self, portal: Portal, stream: EventStream, timeout: float | None) -> None:
        self._portal = portal
        self._stream = stream
        self._timeout = timeout

    def __iter__(self) -> _Events:
        return self

    def __next__(self) -> Delivered:
        event = self._portal.call(_next, self._stream, self._timeout)
        if event is None:
            raise StopIteration
        return event


async def _next(stream: EventStream, timeout: float | None) -> Delivered | None:
    with anyio.move_on_after(float("inf") if timeout is None else timeout):
        return await stream.__anext__()
    return None


async def _forward(stream: EventStream, callback: Callable[[Delivered], object]) -> None:
    async for event in stream:
        callback(event)


def _close_at_exit(reference: weakref.ref[BlockingNode]) -> None:
    node = reference()
    if node is not None:
        node.close()
