"""What every socket owner of the runtime shares (the node, the discovery metadata service, the
RPC endpoint): one wording for a failed connection, and an accept loop that outlives a failed
accept.  The same on trio and asyncio."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup
from anyio.streams.stapled import MultiListener

from swim.logs import Throttle, held_back

log = logging.getLogger("swim.sockets")

ACCEPT_RETRY_DELAY = 0.1
"""How long to wait after a failed accept before the next (as trio's ``serve_listeners``)."""


def connect_failure(exc: BaseException) -> str:
    """Why a connection failed, in a few words ("Connection refused"): the async framework's
    "all connection attempts failed" carries the attempts' errors as its cause (one error, or
    a group of them), and asyncio words them as "Connect call failed (...)"; the error number
    says it the same way everywhere."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError):
        exc = cause
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.errno > 0:
            return os.strerror(exc.errno)
        return exc.strerror or str(exc)  # resolver errors have negative numbers
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def serve_connections(
    listener: SocketListener | MultiListener[SocketStream],
    handler: Callable[[SocketStream], Coroutine[Any, Any, None]],
    what: str,
) -> None:
    """Accept connections on ``listener`` (each of them, for a multi-listener) until cancelled,
    each handled by ``handler`` in a task of its own.

    A failed accept (out of file descriptors or memory, a connection reset before it was
    accepted) is logged, at most once per 10 s, and retried after :data:`ACCEPT_RETRY_DELAY`:
    the server keeps serving once the shortage passes, where AnyIO's ``Listener.serve`` would
    end it (and so the node), with an error of a different type on each backend."""
    throttle = Throttle()
    listeners = listener.listeners if isinstance(listener, MultiListener) else [listener]
    async with anyio.create_task_group() as handlers:
        for each in listeners:
            if not isinstance(each, SocketListener):
                raise TypeError(f"{what}: expected socket listeners, got {each!r}")
            handlers.start_soon(_accept, each, handler, handlers, throttle, what)


async def _accept(
    listener: SocketListener,
    handler: Callable[[SocketStream], Coroutine[Any, Any, None]],
    handlers: TaskGroup,
    throttle: Throttle,
    what: str,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except (OSError, anyio.BrokenResourceError) as exc:
            held = throttle.allow("accept", anyio.current_time())
            if held is not None:
                log.warning(
                    "%s cannot accept a connection: %s; retrying every %g s%s",
                    what,
                    connect_failure(exc),
                    ACCEPT_RETRY_DELAY,
                    held_back(held),
                )
            await anyio.sleep(ACCEPT_RETRY_DELAY)
            continue
        handlers.start_soon(handler, stream)
