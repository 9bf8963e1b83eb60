"""A client: discovers "echo" through its own shoal node and calls it with failover.

    python examples/echo_client.py --join 127.0.0.1:7946 --count 20

Kill or stop services while it runs: calls keep succeeding while one instance is left.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from functools import partial

import trio

from discovery import (
    CallFailed,
    Discovery,
    Instance,
    LeastOutstanding,
    MissingServices,
    NoInstances,
)
from swim.config import Config
from swim.node import JoinError, Node
from swim.toplevel import run_command


async def ask(instance: Instance, text: str = "hello") -> str:
    """One request; a connection closed without an answer counts as a connection failure."""
    stream = await trio.open_tcp_stream(*instance.address)
    async with stream:
        await stream.send_all(text.encode())
        answer = await stream.receive_some(1024)
    if not answer:
        raise ConnectionError(f"{instance} closed the connection without answering")
    return answer.decode()


async def run(
    seeds: Sequence[str], count: int, interval: float, config: Config | None = None
) -> int:
    """Call "echo" ``count`` times; returns how many calls failed."""
    name = f"client-{os.getpid()}"
    async with Node(config or Config.local(), name=name, bind=("127.0.0.1", 0), tags={}) as node:
        await node.join(seeds)
        async with Discovery(node, strategy=LeastOutstanding()) as discovery:
            await discovery.require(["echo"], timeout=10.0)  # fail fast at start-up
            failed = 0
            for i in range(count):
                try:
                    request = partial(ask, text=f"hello {i}")
                    print(await discovery.call("echo", request, timeout=5.0))
                except (CallFailed, NoInstances) as exc:
                    failed += 1
                    print(f"call {i} failed: {exc}")
                await trio.sleep(interval)
            return failed


def main(argv: Sequence[str] | None = None) -> None:
    """Exit 0 when every call succeeded, 1 otherwise; failing fast at start-up (no seed
    answers, no "echo" instance) is one line saying why."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--join", action="append", required=True, help="host:port of a member")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    def calls() -> int:
        return 1 if trio.run(run, args.join, args.count, args.interval) else 0

    raise SystemExit(
        run_command("echo_client", calls, expected=(JoinError, MissingServices, NoInstances))
    )


if __name__ == "__main__":
    main()
