"""Nodes, hosts and echo services on 127.0.0.1, written against AnyIO: for tests that run under
asyncio and trio alike, and for tests in virtual time (trio's MockClock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup, TaskStatus

from discovery.catalog import Instance
from discovery.host import ServiceHost
from swim import wire
from swim.config import Config
from swim.node import Node

FAST = Config.local(compression=False)
LOOPBACK = "127.0.0.1"
STOP_LIMIT = 5.0
"""How long stopping a node or a service may take: closing sockets on loopback is at once."""


def seed_of(node: Node) -> str:
    return f"{node.address[0]}:{node.address[1]}"


class Cluster:
    """Nodes (each with a :class:`ServiceHost`) in one task group, each in a cancel scope so
    that a test can crash it."""

    def __init__(self, nursery: TaskGroup) -> None:
        self.nursery = nursery
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.stopped: dict[str, anyio.Event] = {}

    async def node(self, name: str, config: Config = FAST, **kwargs: object) -> Node:
        node, _ = await self.host(name, config, **kwargs)
        return node

    async def host(
        self, name: str, config: Config = FAST, **kwargs: object
    ) -> tuple[Node, ServiceHost]:
        """A node and its host; ``kwargs`` go to :class:`ServiceHost` when they are its own."""
        host_options = {
            k: kwargs.pop(k) for k in ("on_isolation", "request_timeout") if k in kwargs
        }
        stopped = self.stopped[name] = anyio.Event()

        async def run(
            task_status: TaskStatus[tuple[Node, ServiceHost]] = anyio.TASK_STATUS_IGNORED,
        ) -> None:
            try:
                with anyio.CancelScope() as scope:
                    self.scopes[name] = scope
                    async with (
                        Node(config, name=name, bind=(LOOPBACK, 0), tags={}, **kwargs) as node,  # type: ignore[arg-type]
                        ServiceHost(node, **host_options) as host,  # type: ignore[arg-type]
                    ):
                        task_status.started((node, host))
                        await anyio.sleep_forever()
            finally:
                stopped.set()  # the host and the node have exited: their sockets are closed

        started: tuple[Node, ServiceHost] = await self.nursery.start(run)
        return started

    async def pair(
        self, config: Config = FAST, *, key: bytes | None = None
    ) -> tuple[ServiceHost, Node]:
        """The host of node "a", and node "b" joined to it to discover from; with ``key``,
        both encrypt with it."""

        def keyring() -> dict[str, wire.Keyring]:
            return {} if key is None else {"keyring": wire.Keyring([key])}

        a, host = await self.host("a", config, **keyring())
        b = await self.node("b", config, **keyring())
        await b.join([seed_of(a)])
        return host, b

    async def crash(self, name: str) -> None:
        """Stop a node without a leave: it says nothing, and its sockets are closed when this
        returns."""
        self.scopes[name].cancel()
        with anyio.fail_after(STOP_LIMIT):
            await self.stopped[name].wait()


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    async with anyio.create_task_group() as nursery:
        yield Cluster(nursery)
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Wait until ``condition`` holds, at most ``limit`` seconds (virtual ones, when the test
    runs on a virtual clock)."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.05)


async def read(stream: SocketStream, size: int) -> bytes:
    """Up to ``size`` bytes, or b"" once the peer has closed the stream (a reset raises)."""
    try:
        return await stream.receive(size)
    except anyio.EndOfStream:
        return b""


@dataclass(frozen=True, slots=True)
class EchoServer:
    """An echo service started by :func:`echo_server`."""

    port: int
    scope: anyio.CancelScope
    stopped: anyio.Event

    async def stop(self) -> None:
        """Stop the service: its listener is closed (connecting is refused) when this
        returns."""
        self.scope.cancel()
        with anyio.fail_after(STOP_LIMIT):
            await self.stopped.wait()


async def echo_server(nursery: TaskGroup, name: str) -> EchoServer:
    """A TCP service answering each line with ``name: line``."""

    async def answer(stream: SocketStream) -> None:
        async with stream:
            data = await stream.receive(1024)
            await stream.send(f"{name}: ".encode() + data)

    async def serve(task_status: TaskStatus[EchoServer] = anyio.TASK_STATUS_IGNORED) -> None:
        stopped = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                async with await anyio.create_tcp_listener(local_host=LOOPBACK) as listener:
                    port = listener.extra(SocketAttribute.local_port)
                    task_status.started(EchoServer(port, scope, stopped))
                    await listener.serve(answer)
        finally:
            stopped.set()

    server: EchoServer = await nursery.start(serve)
    return server


async def ask(instance: Instance, text: str = "hello") -> str:
    """One request to an echo server."""
    async with await anyio.connect_tcp(*instance.address) as stream:
        await stream.send(text.encode())
        return (await stream.receive(1024)).decode()
