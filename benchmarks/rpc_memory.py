"""Memory of an agent's RPC endpoint under connection churn: ``swim agent`` against ``serf agent``.

One ``swim agent`` and one ``serf agent`` run side by side on 127.0.0.1 with the same flags.
Each round opens ``--per-round`` RPC connections (500 by default) to each agent, ``--open`` at a
time (100, under shoal's limit of 128 open connections): every other connection shakes hands,
the rest shake hands and read a ``members`` reply, and once that many are open they all close.
The script reads each agent's resident memory (``VmRSS`` in ``/proc/<pid>/status``) while the
connections are open, and after each round and a short pause, and prints the latter with its
ratio to the first round: memory that each connection leaves behind shows as a ratio that keeps
rising.

    python benchmarks/rpc_memory.py [--rounds 10] [--per-round 500] [--open 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgpack
import trio

# Run as a file, this script's own directory comes first on sys.path; the agent code it
# shares with its siblings is imported from the repository root, as ``benchmarks.agents``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agents import (
    Agent,
    BenchError,
    check_running,
    free_ports,
    rss_mib,
    serf_version,
    start_agent,
    stop_all,
)
from swim.rpc import MAX_CONNECTIONS, RpcClient, RpcConnectionError

KINDS = ("shoal", "serf")
HANDSHAKE = msgpack.packb({"Command": "handshake", "Seq": 0}) + msgpack.packb({"Version": 1})
MEMBERS = msgpack.packb({"Command": "members", "Seq": 1})
EXCHANGE_TIMEOUT = 10.0
"""Seconds one connection's handshake and reply may take; longer means the agent is stuck."""
SETTLE = 1.0
"""Seconds to wait after a round before reading memory, so closed connections are reaped."""


async def wait_listening(agent: Agent, seconds: float = 30.0) -> None:
    """Return once the agent answers on its RPC address."""
    with trio.fail_after(seconds):
        while True:
            check_running([agent])
            try:
                async with RpcClient.connect(agent.rpc_addr, timeout=2.0):
                    return
            except RpcConnectionError:
                await trio.sleep(0.2)


async def replies(stream: trio.SocketStream, unpacker: msgpack.Unpacker, count: int) -> None:
    """Read ``count`` msgpack objects (reply headers and bodies) from the agent."""
    while count:
        for _ in unpacker:
            count -= 1
            if not count:
                return
        data = await stream.receive_some()
        if not data:
            raise BenchError("the agent closed a connection before replying")
        unpacker.feed(data)


async def one_connection(addr: tuple[str, int], members: bool) -> trio.SocketStream:
    """Open a connection and shake hands (and ask for members); return it, open."""
    with trio.move_on_after(EXCHANGE_TIMEOUT):
        stream = await trio.open_tcp_stream(*addr)
        try:
            unpacker = msgpack.Unpacker()
            await stream.send_all(HANDSHAKE)
            await replies(stream, unpacker, 1)
            if members:
                await stream.send_all(MEMBERS)
                await replies(stream, unpacker, 2)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream
    raise BenchError(f"the agent at {addr[0]}:{addr[1]} took over {EXCHANGE_TIMEOUT:g} s to reply")


async def one_round(agent: Agent, count: int, hold: int) -> float:
    """``count`` connections to ``agent``, opened ``hold`` at a time and then closed together;
    the agent's resident memory, in MiB, while the most were open."""
    addr = ("127.0.0.1", agent.rpc_port)
    peak = 0.0
    for start in range(0, count, hold):
        streams: list[trio.SocketStream] = []
        try:
            for i in range(start, min(start + hold, count)):
                streams.append(await one_connection(addr, members=i % 2 == 1))
            peak = max(peak, rss_mib(agent.process.pid))
        finally:
            for stream in streams:
                await stream.aclose()
    return peak


async def run(args: argparse.Namespace, agents: list[Agent]) -> None:
    ports = free_ports(2 * len(KINDS))
    started = [
        start_agent(agents, args, kind, 0, ports=(ports[2 * i], ports[2 * i + 1]), join="")
        for i, kind in enumerate(KINDS)
    ]
    for agent in started:
        await wait_listening(agent)
    await trio.sleep(SETTLE)
    idle = {agent.kind: rss_mib(agent.process.pid) for agent in started}
    print(
        f"{args.rounds} rounds of {args.per_round} RPC connections per agent, opened "
        f"{args.open} at a time and closed together; every other one also asks for members"
    )
    print(f"shoal: Python {sys.version.split()[0]}; serf: {serf_version(args.serf)}")
    print(f"resident memory (VmRSS), MiB: with {args.open} open, and after the round\n")
    heads = "".join(
        f"{kind + ' open':>12}{kind + ' after':>13}{'vs round 1':>11}" for kind in KINDS
    )
    print(f"{'':<9}{heads}")
    print(f"{'idle':<9}" + "".join(f"{'':>12}{idle[kind]:>13.1f}{'':>11}" for kind in KINDS))
    first: dict[str, float] = {}
    for number in range(1, args.rounds + 1):
        peaks = {a.kind: await one_round(a, args.per_round, args.open) for a in started}
        await trio.sleep(SETTLE)
        check_running(started)
        row = f"{'round ' + str(number):<9}"
        for agent in started:
            after = rss_mib(agent.process.pid)
            first.setdefault(agent.kind, after)
            row += f"{peaks[agent.kind]:>12.1f}{after:>13.1f}{after / first[agent.kind]:>10.2f}x"
        print(row, flush=True)


def interrupted(signum: int, _: object) -> None:
    """SIGTERM: stop as Ctrl-C does, through the ``finally`` that stops the agents."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=500, help="connections per round")
    parser.add_argument("--open", type=int, default=100, help="connections open at once")
    parser.add_argument("--serf", default=shutil.which("serf") or "/usr/bin/serf")
    parser.add_argument("--logs", default=None, help="keep the agents' logs in this directory")
    args = parser.parse_args(argv)
    if min(args.rounds, args.per_round, args.open) < 1:
        parser.error("--rounds, --per-round and --open must be at least 1")
    if args.open > MAX_CONNECTIONS:
        parser.error(f"--open must be at most {MAX_CONNECTIONS}: shoal closes any more at once")
    if not os.access(args.serf, os.X_OK):
        parser.error(f"no serf binary at {args.serf}; pass --serf PATH")
    args.profile = "local"
    args.key = None
    signal.signal(signal.SIGTERM, interrupted)
    agents: list[Agent] = []
    with tempfile.TemporaryDirectory(prefix="shoal-rpc-memory-") as scratch:
        args.log_dir = args.logs or scratch
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        try:
            trio.run(run, args, agents)
        except BenchError as exc:
            sys.exit(f"rpc_memory: {exc}")
        finally:
            stop_all(agents)


if __name__ == "__main__":
    main()
