"""An asyncio client that finds "greeter" through shoal and calls it with failover.

    python examples/http_client.py --join 127.0.0.1:7946 --count 20

Standard library only: one HTTP GET per call on asyncio streams.  A refused connection, a
closed one, or a 503 from a draining instance counts as that instance's failure, and the
call moves on to another.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

from discovery import CallFailed, Discovery, Instance, MissingServices, NoInstances
from swim.config import Config
from swim.node import JoinError, Node
from swim.toplevel import run_command

SERVICE = "greeter"


class Unavailable(ConnectionError):
    """The instance answered, but not with the service (it drains, or it failed)."""


class Rejected(Exception):
    """The instance refused the request itself (a 4xx): another instance would refuse it
    too, so this is not a connection error and the call does not fail over."""


async def get(instance: Instance, path: str = "/hello") -> str:
    """``GET path`` from ``instance``; its body on 200, :class:`Unavailable` on a 5xx (the
    call moves on to another instance), :class:`Rejected` on a 4xx."""
    reader, writer = await asyncio.open_connection(*instance.address)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: {instance.node}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        body = (await reader.read()).decode()
    except asyncio.IncompleteReadError as exc:
        raise Unavailable(f"{instance} closed the connection without answering") from exc
    finally:
        writer.close()
    if status >= 500:
        raise Unavailable(f"{instance} answered {status}: {body.strip()}")
    if status >= 400:
        raise Rejected(f"{instance} answered {status} to GET {path}: {body.strip()}")
    return body


async def run(
    seeds: Sequence[str], count: int, interval: float, config: Config | None = None
) -> int:
    """Call "greeter" ``count`` times; returns how many calls failed."""
    name = f"http-client-{os.getpid()}"
    async with Node(config or Config.local(), name=name, bind=("127.0.0.1", 0), tags={}) as node:
        await node.join(seeds)
        async with Discovery(node) as discovery:
            await discovery.require([SERVICE], timeout=10.0)  # fail fast at start-up
            failed = 0
            for i in range(count):
                try:
                    print(f"{i}: {(await discovery.call(SERVICE, get, timeout=5.0)).strip()}")
                except (CallFailed, NoInstances, Rejected) as exc:
                    failed += 1
                    print(f"{i}: failed: {exc}")
                await asyncio.sleep(interval)
            return failed


def main(argv: Sequence[str] | None = None) -> None:
    """Exit 0 when every call succeeded, 1 otherwise; failing fast at start-up is one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--join", action="append", required=True, help="host:port of a member")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    def calls() -> int:
        return 1 if asyncio.run(run(args.join, args.count, args.interval)) else 0

    raise SystemExit(
        run_command("http_client", calls, expected=(JoinError, MissingServices, NoInstances))
    )


if __name__ == "__main__":
    main()
