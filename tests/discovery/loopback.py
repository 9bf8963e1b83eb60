"""Nodes, hosts and echo services on 127.0.0.1, for tests in trio's virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from discovery.catalog import Instance
from discovery.host import ServiceHost
from swim import wire
from swim.config import Config
from swim.node import Node

FAST = Config.local(compression=False)
LOOPBACK = "127.0.0.1"


def seed_of(node: Node) -> str:
    return f"{node.address[0]}:{node.address[1]}"


class Cluster:
    """Nodes (each with a :class:`ServiceHost`) in one nursery, each in a cancel scope so that a
    test can crash it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.scopes: dict[str, trio.CancelScope] = {}

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

        async def run(
            task_status: trio.TaskStatus[tuple[Node, ServiceHost]] = trio.TASK_STATUS_IGNORED,
        ) -> None:
            with trio.CancelScope() as scope:
                self.scopes[name] = scope
                async with (
                    Node(config, name=name, bind=(LOOPBACK, 0), tags={}, **kwargs) as node,  # type: ignore[arg-type]
                    ServiceHost(node, **host_options) as host,  # type: ignore[arg-type]
                ):
                    task_status.started((node, host))
                    await trio.sleep_forever()

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

    def crash(self, name: str) -> None:
        """Stop a node without a leave: its sockets close, it says nothing."""
        self.scopes[name].cancel()


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        yield Cluster(nursery)
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Wait in virtual time until ``condition`` holds, at most ``limit`` seconds."""
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(0.05)


async def echo_server(nursery: trio.Nursery, name: str) -> tuple[int, trio.CancelScope]:
    """A TCP service answering each line with ``name: line``; cancel the scope to stop it."""

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            data = await stream.receive_some(1024)
            await stream.send_all(f"{name}: ".encode() + data)

    async def serve(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(answer, listeners)

    scopes: list[trio.CancelScope] = []
    port: int = await nursery.start(serve)
    return port, scopes[0]


async def ask(instance: Instance, text: str = "hello") -> str:
    """One request to an echo server."""
    stream = await trio.open_tcp_stream(*instance.address)
    async with stream:
        await stream.send_all(text.encode())
        return (await stream.receive_some(1024)).decode()
