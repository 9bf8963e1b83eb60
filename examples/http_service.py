"""An asyncio HTTP service that registers itself with shoal, serves, and drains on SIGTERM.

    python examples/http_service.py greeter-1 --gossip 7946
    python examples/http_service.py greeter-2 --join 127.0.0.1:7946

It answers ``GET /hello`` with its name, using only the standard library's asyncio server.
On SIGTERM (or Ctrl-C) it announces that it drains (clients stop picking it), finishes the
requests in flight, leaves the cluster, and says how the drain went.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from discovery import NotAccepting, ServiceHost
from swim.config import Config
from swim.node import JoinError, Node
from swim.toplevel import run_command

SERVICE = "greeter"
WORK_SECONDS = 0.2
"""How long each request pretends to work, so that a drain has something to wait for."""


def response(status: str, body: str) -> bytes:
    data = body.encode()
    head = f"HTTP/1.1 {status}\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n"
    return head.encode() + data


async def handle(
    host: ServiceHost, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One HTTP request; while draining, 503 so that the client fails over."""
    try:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ", 2)[1].decode(errors="replace")
        try:
            with host.request(SERVICE):
                await asyncio.sleep(WORK_SECONDS)
                if path == "/hello":
                    writer.write(response("200 OK", f"hello from {name}\n"))
                else:
                    writer.write(response("404 Not Found", f"no {path} here\n"))
        except NotAccepting:
            writer.write(response("503 Service Unavailable", f"{name} is draining\n"))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client went away or sent no request
    finally:
        writer.close()


async def serve(
    name: str,
    gossip_port: int,
    seeds: Sequence[str],
    stop: asyncio.Event,
    *,
    ready: asyncio.Future[int] | None = None,
    config: Config | None = None,
) -> None:
    """Serve until ``stop`` is set, then drain; ``ready`` gets the gossip port (what other
    members join through) once serving."""
    async with (
        Node(config or Config.local(), name=name, bind=("127.0.0.1", gossip_port), tags={}) as node,
        ServiceHost(node) as host,
    ):
        if seeds:
            await host.join(seeds)  # a new instance that cannot join fails: JoinError
        server = await asyncio.start_server(lambda r, w: handle(host, name, r, w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await host.register(SERVICE, port, version="1")
        print(f"{name} ready: {SERVICE} on http://127.0.0.1:{port}, gossip {node.address[1]}")
        if ready is not None:
            ready.set_result(node.address[1])
        async with server:
            await stop.wait()
            print(f"{name} draining", flush=True)
            print(f"{name} {await host.drain(timeout=10.0)}", flush=True)


async def serve_until_signalled(name: str, gossip_port: int, seeds: Sequence[str]) -> None:
    """Serve until SIGTERM or SIGINT; later signals during the drain are ignored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(name, gossip_port, seeds, stop)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until signalled; an instance that cannot join exits at once, in one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--gossip", type=int, default=0, help="gossip port (default: any)")
    parser.add_argument("--join", action="append", default=[], help="host:port of a member")
    args = parser.parse_args(argv)

    def service() -> int:
        asyncio.run(serve_until_signalled(args.name, args.gossip, args.join))
        return 0

    raise SystemExit(run_command("http_service", service, expected=(JoinError,)))


if __name__ == "__main__":
    main()
