"""Real agent processes for the side-by-side benchmarks: ``swim agent`` and ``serf agent``
started with the same flags on 127.0.0.1, watched, measured and stopped.

What runs for a kind of agent is a :class:`Program`: ``serf``, or ``python -m swim.cli`` from a
shoal checkout (this one by default, or another one, such as an older commit, to compare with),
with flags of its own such as ``-event-loop``."""

from __future__ import annotations

import argparse
import compileall
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

import swim
from swim.rpc import RpcClient

REPO = Path(swim.__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_WAIT = 15.0
"""How long agents get to exit after SIGTERM (a shoal agent leaves gracefully, up to 7 s)."""

T = TypeVar("T")


class BenchError(Exception):
    """The run cannot go on; the message says what happened."""


@dataclass(frozen=True)
class Program:
    """How one kind of agent is started: ``command`` then ``agent`` and the flags every kind
    gets, then ``flags`` of its own.  A shoal agent runs from ``checkout``: that directory comes
    first on its ``PYTHONPATH`` and is its working directory (``python -m`` puts the working
    directory ahead of ``PYTHONPATH``), so it imports that checkout's ``swim``."""

    command: tuple[str, ...]
    flags: tuple[str, ...] = ()
    checkout: Path | None = None


def shoal_program(checkout: Path = REPO, *flags: str) -> Program:
    """``swim agent`` from ``checkout`` (this one by default), with ``flags`` of its own.

    The checkout's modules are compiled to bytecode first, as pip does on install: where
    ``PYTHONDONTWRITEBYTECODE`` is set (as on these machines), each agent would otherwise
    compile shoal's modules again as it starts, about 0.1 s of CPU that an installed agent
    does not spend."""
    checkout = checkout.resolve()
    for package in ("swim", "discovery"):
        if not compileall.compile_dir(checkout / package, quiet=1):
            raise BenchError(f"cannot compile {checkout / package} to bytecode")
    return Program((sys.executable, "-m", "swim.cli"), tuple(flags), checkout)


def serf_program(serf: str) -> Program:
    return Program((serf,))


@dataclass
class Agent:
    kind: str
    name: str
    port: int
    rpc_port: int
    process: subprocess.Popen[bytes]
    log: Path
    client: RpcClient | None = None
    """An RPC connection, for scripts that talk to the agent while it runs."""
    killed_at: float | None = None
    """When a script killed it on purpose (it is then not expected to run)."""

    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 for both TCP and UDP (an agent binds both),
    found by binding port 0."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 20):
            if len(ports) == count:
                break
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise BenchError(f"found only {len(ports)} of {count} free ports on 127.0.0.1")
    return ports


def start_agent(
    agents: list[Agent],
    args: argparse.Namespace,
    kind: str,
    index: int,
    *,
    ports: tuple[int, int],
    join: str,
    program: Program | None = None,
) -> Agent:
    """Start an agent of ``kind`` with the same flags as every other kind, and add it to
    ``agents`` at once, so that it is stopped whatever happens next.  ``program`` says what to
    run; without it, kind "serf" is ``args.serf`` and any other kind this checkout's
    ``swim agent``."""
    name = f"{kind}-{index:02d}"
    port, rpc_port = ports
    if program is None:
        program = serf_program(args.serf) if kind == "serf" else shoal_program()
    flags = [
        "agent",
        f"-node={name}",
        f"-bind=127.0.0.1:{port}",
        f"-rpc-addr=127.0.0.1:{rpc_port}",
        f"-profile={args.profile}",
        *([f"-encrypt={args.key}"] if args.key else []),
        *([f"-join={join}"] if join else []),
        *program.flags,
    ]
    env = dict(os.environ)
    cwd = program.checkout or REPO
    if program.checkout is not None:
        path = (str(program.checkout), env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    log = Path(args.log_dir) / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*program.command, *flags],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
    agent = Agent(kind, name, port, rpc_port, process, log)
    agents.append(agent)
    return agent


def stop_all(agents: Sequence[Agent]) -> None:
    """SIGTERM every agent still running, wait up to STOP_WAIT seconds in all, then SIGKILL and
    reap the rest."""
    for agent in agents:
        if agent.process.poll() is None:
            agent.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    for agent in agents:
        try:
            agent.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait(timeout=10.0)


async def until_terminated(measure: Callable[[], Awaitable[T]]) -> T:
    """``await measure()``, unless SIGTERM comes first: then BenchError, so that the script
    stops its agents on the way out as after Ctrl-C."""
    outcome: list[T | BenchError] = []

    async def run(scope: trio.CancelScope) -> None:
        try:
            outcome.append(await measure())
        except* BenchError as group:  # raised in a nursery of measure(), it comes in a group
            outcome.append(first_leaf(group))
        scope.cancel()

    async def on_sigterm(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                outcome.append(BenchError("stopped by SIGTERM"))
                scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_sigterm, nursery.cancel_scope)
        nursery.start_soon(run, nursery.cancel_scope)
    if isinstance(outcome[0], BenchError):
        raise outcome[0]
    return outcome[0]


def first_leaf(group: BaseExceptionGroup[BenchError]) -> BenchError:
    found = group.exceptions[0]
    return found if isinstance(found, BenchError) else first_leaf(found)


def check_running(agents: Iterable[Agent]) -> None:
    for agent in agents:
        if agent.killed_at is None and agent.process.poll() is not None:
            raise BenchError(
                f"{agent.name} exited with status {agent.process.returncode}; "
                f"its log ends:\n{tail(agent.log)}"
            )


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def cpu_ticks(pid: int) -> int:
    """utime + stime of the process, in clock ticks (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float:
    """The process's resident memory (``VmRSS``), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serf_version(serf: str) -> str:
    try:
        done = subprocess.run(
            [serf, "version"], check=False, capture_output=True, text=True, timeout=10.0
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return done.stdout.splitlines()[0].strip() if done.stdout else "unknown"
