"""A Node for code that is not async: Flask and Django views, gunicorn workers, scripts.

:class:`BlockingNode` runs a :class:`~swim.node.Node` on an event loop of its own in a
background thread (AnyIO's blocking portal) and gives plain methods that wait for their
answer::

    with BlockingNode(Config.lan(), name="web-1", bind=("0.0.0.0", 7946), tags={}) as node:
        node.join(["10.0.0.5:7946"])
        for event in node.events():   # blocks for each event
            print(event)

Closing it (the ``with`` block's end, :meth:`BlockingNode.close`, or interpreter exit if it is
still open, even with threads still iterating its events) leaves the cluster gracefully, then
stops the thread.  Its methods may be called from any thread; each blocks until the node has
done it, and what is still waiting when it closes ends: iterations stop, calls raise
:class:`ClosedError`.  Called from inside a running event loop, or from an ``on_event``
callback (which runs on the node's own thread), they raise :class:`WouldBlockError` instead of
stalling that loop.  A node that stops by itself (``exit_when_isolated``) makes every method
raise :class:`ClosedError` with the reason, and :meth:`BlockingNode.close` raise the reason.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar, Unpack

import anyio
import sniffio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from swim.config import Config
from swim.members import Address, Member
from swim.node import Delivered, EventStream, Node, QueryResult
from swim.serf.layer import QueryOptions, SerfQuery
from swim.toplevel import describe

log = logging.getLogger("swim.blocking")

T = TypeVar("T")


class WouldBlockError(RuntimeError):
    """A blocking method was called where it would stall an event loop: from async code, or
    from a callback on the node's own thread."""


class ClosedError(RuntimeError):
    """The blocking node was closed, or stopped by itself (the cause says why); make a new
    one."""


class Portal:
    """One event loop in a background thread, and the rules for calling into it: never from
    inside a running loop, never after it closed; what waits on it when it closes (or when
    its node stops by itself) is released.  :class:`BlockingNode` owns one;
    ``discovery.blocking`` runs its clients on the same one."""

    def __init__(self, backend: str) -> None:
        _refuse_inside_a_loop()
        self._manager = start_blocking_portal(backend)
        self._portal: BlockingPortal = self._manager.__enter__()
        self._loop_thread = self._portal.call(threading.get_ident)
        self._lock = threading.Lock()
        self._waiting: set[Future[Any]] = set()
        self._closed = False
        self.failure: BaseException | None = None
        """Why the node stopped by itself, if it did."""

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``function(*args)`` on the loop and wait for its result; :class:`ClosedError`
        if the portal closes or fails meanwhile."""
        future: Future[T] = self._submit(function, *args)
        return self._wait(future)

    def read(self, function: Callable[..., T], *args: Any) -> T:
        """Call the plain ``function(*args)`` on the loop's thread (where the node's state
        may be read safely) and return what it returns."""
        future: Future[T] = self._submit(function, *args)
        return self._wait(future)

    def start(self, function: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``function(*args)`` as a task on the loop, cancelled when the portal closes."""
        self._submit(function, *args)

    def start_task(
        self, function: Callable[..., Awaitable[object]], *args: Any
    ) -> tuple[Any, Future[Any]]:
        """Start ``function(*args, task_status=...)`` and wait until it reports started; what
        it reported, and the future of its end."""
        self.check()
        future, started = self._portal.start_task(function, *args)
        return started, future

    def _submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        self.check()
        if self._closed or self.failure is not None:
            raise self._closed_error() from self.failure
        try:
            # not under the lock: this waits for the loop, whose callbacks take the lock
            future: Future[Any] = self._portal.start_task_soon(function, *args)
        except RuntimeError:  # the loop stopped since the check
            raise self._closed_error() from self.failure
        with self._lock:
            self._waiting.add(future)
            closing = self._closed or self.failure is not None
        if closing:  # closed meanwhile, after it released what was waiting
            future.cancel()
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._waiting.discard(future)

    def _wait(self, future: Future[T]) -> T:
        try:
            return future.result()
        except CancelledError:
            raise self._closed_error() from self.failure

    def enter(self, manager: Any) -> tuple[Any, AbstractContextManager[Any]]:
        """Enter an async context manager on the loop; its value, and the blocking manager
        to exit it with."""
        self.check()
        wrapped = self._portal.wrap_async_context_manager(manager)
        return wrapped.__enter__(), wrapped

    def fail(self, cause: BaseException) -> None:
        """The node stopped by itself with ``cause``: release what waits, refuse what comes."""
        with self._lock:
            self.failure = cause
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()

    def close(self) -> None:
        """Release what waits, then stop the loop and its thread."""
        self.check()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()
        try:
            self._portal.call(self._portal.stop, True)  # cancel what still runs
        finally:
            self._manager.__exit__(None, None, None)

    @property
    def closed(self) -> bool:
        return self._closed

    def check(self) -> None:
        """Raise :class:`WouldBlockError` where a blocking call would stall a loop."""
        if threading.get_ident() == self._loop_thread:
            raise WouldBlockError(
                "a blocking method was called on the node's own thread (from an on_event "
                "callback?), where it would wait for itself; hand the work to another thread, "
                "for example through a queue.Queue that one of yours reads"
            )
        _refuse_inside_a_loop()

    def _closed_error(self) -> ClosedError:
        if self.failure is not None:
            return ClosedError(
                f"the node stopped by itself ({describe(self.failure)}); make a new BlockingNode"
            )
        return ClosedError("this blocking node was closed; make a new BlockingNode")


class Waiting(Iterator[T]):
    """A blocking iterator over an async iterator that lives on a portal's loop: each item is
    waited for in turn; the iteration ends after ``timeout`` seconds without one, or when the
    portal closes (and raises :class:`ClosedError` if the node stopped by itself)."""

    def __init__(self, portal: Portal, items: AsyncIterator[T], timeout: float | None) -> None:
        self._portal = portal
        self._items = items
        self._timeout = math.inf if timeout is None else timeout

    def __iter__(self) -> Waiting[T]:
        return self

    def __next__(self) -> T:
        try:
            found: tuple[T] | None = self._portal.call(_next_within, self._items, self._timeout)
        except ClosedError:
            if self._portal.failure is not None:
                raise
            found = None
        if found is None:
            raise StopIteration
        return found[0]


async def _next_within(items: AsyncIterator[T], timeout: float) -> tuple[T] | None:
    with anyio.move_on_after(timeout):
        try:
            return (await items.__anext__(),)
        except StopAsyncIteration:
            return None
    return None


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
    start (a port in use, a bad name) raises there.  It stays open until closed, even when
    nothing refers to it any more, so that it leaves gracefully at the latest when the
    interpreter exits.
    """

    def __init__(
        self, config: Config | None = None, *, backend: str = "trio", **options: Any
    ) -> None:
        self.portal = Portal(backend)
        node = Node(config, **options)
        try:
            self._stop, self._ended = self.portal.start_task(_run_node, node)
        except BaseException:
            self.portal.close()
            raise
        self.node: Node = node
        """The node itself; use it only through :attr:`portal` (it lives on another thread)."""
        self._left = False
        self._ended.add_done_callback(self._node_ended)
        _OPEN.add(self)

    def _node_ended(self, ended: Future[Any]) -> None:
        if not ended.cancelled() and ended.exception() is not None and not self.portal.closed:
            self.portal.fail(ended.exception() or RuntimeError("the node stopped"))

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
        """Leave the cluster gracefully (unless ``leave`` is False, it left already, or it
        stopped by itself), then stop the node and its thread.  Raises why the node stopped,
        if it stopped by itself.  Closing twice does nothing."""
        self.portal.check()
        if self.portal.closed:
            return
        try:
            if leave and not self._left and self.portal.failure is None:
                self.leave()
        finally:
            try:
                if self.portal.failure is None:
                    self.portal.call(self._stop.set)
                self._ended.result()  # the node's own error, if it stopped by itself
            finally:
                _OPEN.discard(self)
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
        ``timeout``, the iteration ends once that long passes without one, and it ends when
        the node closes."""
        stream: EventStream = self.portal.read(self.node.events)
        return Waiting(self.portal, stream, timeout)

    def on_event(self, callback: Callable[[Delivered], object]) -> None:
        """Call ``callback`` with every event from now on, on the node's thread, until the
        node closes: keep it short (hand the work to a queue of your own; blocking methods
        called from it raise :class:`WouldBlockError`).  An exception it raises is logged,
        and the next event still comes."""
        stream: EventStream = self.portal.read(self.node.events)
        self.portal.start(_forward, stream, callback)


async def _run_node(node: Node, *, task_status: TaskStatus[anyio.Event]) -> None:
    """Run ``node`` until the event it reports started is set."""
    stop = anyio.Event()
    async with node:
        task_status.started(stop)
        await stop.wait()


async def _forward(stream: EventStream, callback: Callable[[Delivered], object]) -> None:
    async for event in stream:
        try:
            callback(event)
        except Exception:
            log.exception("an on_event callback raised on %s; the next event still comes", event)


_OPEN: set[BlockingNode] = set()
"""Every blocking node not closed yet, closed (and so left gracefully) at interpreter exit."""


def _close_at_exit() -> None:
    for node in list(_OPEN):
        try:
            node.close()
        except Exception as exc:  # the interpreter is exiting: say it, in a line
            log.error("closing blocking node %s at exit: %s", node.name, describe(exc))


# Run where concurrent.futures runs its own: before the interpreter waits for non-daemon
# threads, one of which may be iterating a node's events (atexit runs after that wait).
getattr(threading, "_register_atexit")(_close_at_exit)  # noqa: B009
