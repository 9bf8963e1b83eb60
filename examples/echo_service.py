"""A small service: registers "echo" on a shoal node, answers over TCP, drains on SIGTERM.

    python examples/echo_service.py echo-1 --gossip 7946
    python examples/echo_service.py echo-2 --join 127.0.0.1:7946

Stop one with Ctrl-C or ``kill`` (SIGTERM): it announces that it drains, refuses new requests,
finishes those in flight, leaves the cluster, and prints what (if anything) was cut off.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from discovery import NotAccepting, ServiceHost
from swim.config import Config
from swim.node import JoinError, Node
from swim.toplevel import run_command

WORK_SECONDS = 0.2
"""How long each request pretends to work, so that a drain has something to wait for."""


async def handle(host: ServiceHost, name: str, stream: trio.SocketStream) -> None:
    """Answer one request; while draining, close without answering so the client fails over."""
    async with stream:
        try:
            with host.request("echo"):
                data = await stream.receive_some(1024)
                await trio.sleep(WORK_SECONDS)
                await stream.send_all(f"{name}: ".encode() + data)
        except NotAccepting:
            return


async def serve(
    name: str,
    gossip_port: int,
    seeds: Sequence[str],
    until: Callable[[], Awaitable[object]],
    config: Config | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until ``until()`` returns, then drain; started, it reports its
    gossip port."""
    async with (
        Node(config or Config.local(), name=name, bind=("127.0.0.1", gossip_port), tags={}) as node,
        ServiceHost(node) as host,
    ):
        if seeds:
            await host.join(seeds)  # a new node that cannot join fails: JoinError
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]
        await host.register("echo", port, version="1", metadata={"owner": "examples"})
        print(f"{name} ready: echo on 127.0.0.1:{port}, gossip on {node.address[1]}", flush=True)
        task_status.started(node.address[1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, partial(handle, host, name), [listener])
            await until()
            print(f"{name} draining", flush=True)
            print(f"{name} {await host.drain(timeout=10.0)}", flush=True)
            nursery.cancel_scope.cancel()


async def serve_until_signalled(name: str, gossip_port: int, seeds: Sequence[str]) -> None:
    """Serve until SIGTERM or SIGINT.  Signals that repeat during the drain are consumed and
    ignored (the drain has its own timeout), so a supervisor that signals twice does not cut
    the drain short."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def watch_signals() -> None:
            async for _ in signals:
                if stop.is_set():
                    print(f"{name} is already draining", flush=True)
                stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            await serve(name, gossip_port, seeds, stop.wait)
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until signalled; a new instance that cannot join exits at once, saying why in
    one line (status 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--gossip", type=int, default=0, help="gossip port (default: any)")
    parser.add_argument("--join", action="append", default=[], help="host:port of a member")
    args = parser.parse_args(argv)

    def service() -> int:
        trio.run(serve_until_signalled, args.name, args.gossip, args.join)
        return 0

    raise SystemExit(run_command("echo_service", service, expected=(JoinError,)))


if __name__ == "__main__":
    main()
