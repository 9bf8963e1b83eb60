"""The accept loop every server of the runtime shares: a failed accept (a full descriptor
table, a connection reset before it was accepted) costs a pause and one log line, never the
server.  A listener that fails on demand; trio's virtual clock for the pauses."""

from __future__ import annotations

import errno
import logging
from typing import Any

import anyio
import pytest
import trio.testing
from anyio.abc import SocketListener, SocketStream

from swim.sockets import ACCEPT_RETRY_DELAY, serve_connections


class FailingListener(SocketListener):
    """Accepts fail with ``failures`` (one each), then yield ``streams``, then wait forever."""

    def __init__(self, failures: list[BaseException], streams: list[Any]) -> None:
        self.failures = failures
        self.streams = streams

    async def accept(self) -> SocketStream:
        if self.failures:
            raise self.failures.pop(0)
        if self.streams:
            stream: SocketStream = self.streams.pop(0)
            return stream
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass

    @property
    def _raw_socket(self) -> Any:
        raise NotImplementedError


def emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


def broken_by_emfile() -> anyio.BrokenResourceError:
    """What AnyIO's trio backend raises for the same failure."""
    error = anyio.BrokenResourceError()
    error.__cause__ = emfile()
    return error


async def test_failed_accepts_are_retried_and_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    served: list[str] = []

    async def handler(stream: SocketStream) -> None:
        served.append(str(stream))

    failures: list[BaseException] = [emfile(), broken_by_emfile(), emfile()]
    listener = FailingListener(failures, ["first", "second"])
    caplog.set_level(logging.WARNING, logger="swim.sockets")
    start = anyio.current_time()
    with anyio.move_on_after(10.0):
        await serve_connections(listener, handler, "the test server")
    assert sorted(served) == ["first", "second"]  # each in its own task
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "the test server cannot accept a connection: Too many open files; retrying every 0.1 s"
    ]
    assert anyio.current_time() - start >= 10.0  # still serving when the block gave up
    assert ACCEPT_RETRY_DELAY == 0.1


async def test_an_error_of_the_handler_is_not_taken_for_a_failed_accept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(stream: SocketStream) -> None:
        raise ValueError("a bug in the handler")

    with pytest.raises(ValueError, match="a bug in the handler"):
        try:
            await serve_connections(FailingListener([], ["one"]), handler, "the test server")
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
