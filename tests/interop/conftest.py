"""Real `serf agent` processes and shoal nodes side by side on loopback.

Agents run in their own processes, so these tests use real time: agents use Serf's ``local``
profile and shoal nodes ``Config.local()`` (the same timings), and every wait polls with short
sleeps inside a deadline.  The helpers are written on AnyIO, so a test may run under asyncio
or trio (``both_backends``).  Every agent started is terminated (killed after a bounded wait)
when its test ends, pass or fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus

from swim import wire
from swim.config import Config
from swim.node import Node

LOOPBACK = "127.0.0.1"
LOCAL = Config.local()
"""Shoal's copy of memberlist's local profile: what `serf agent -profile=local` runs."""
START_LIMIT = 10.0
"""How long an agent may take to answer RPC after it is started."""
STOP_LIMIT = 5.0
"""How long an agent may take to exit once asked, before it is killed."""
CLI_LIMIT = 20.0
"""How long one `serf` command may run."""


def serf_binary() -> str:
    path = shutil.which("serf")
    if path is None:
        pytest.fail(
            "the interop tests need HashiCorp's `serf` command (Serf 0.9.4): install it with "
            "`apt-get install serf` (Debian/Ubuntu)",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (Serf gossips on both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise OSError("no port free for both UDP and TCP on loopback")


def shoal_agent_command() -> list[str]:
    """How to run ``swim agent`` with this interpreter (it takes `serf agent`'s flags)."""
    return [sys.executable, "-m", "swim.cli", "agent"]


def serf_environment() -> dict[str, str]:
    """Our environment without SERF_* variables, which would redirect the CLI."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SERF_")}


async def serf_cli(*args: str, check: bool = True) -> tuple[int, str]:
    """Run the real `serf` command; its exit status and what it printed (serf prints its
    errors on stdout)."""
    with anyio.fail_after(CLI_LIMIT):
        done = await anyio.run_process([serf_binary(), *args], check=False, env=serf_environment())
    out = (done.stdout + done.stderr).decode()
    if check and done.returncode != 0:
        raise AssertionError(f"`serf {' '.join(args)}` exited {done.returncode}:\n{out}")
    return done.returncode, out


@dataclass
class Agent:
    """One `serf agent` process, or one `swim agent` (``shoal``), which takes the same flags and
    speaks the same RPC, so the `serf` command drives either."""

    name: str
    port: int
    rpc_port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    shoal: bool = False
    auth: str | None = None
    """The token its RPC wants (``-rpc-auth``), which :meth:`cli` passes."""

    @property
    def seed(self) -> str:
        """The gossip address, as `join` takes it."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """The gossip address, as a socket takes it."""
        return LOOPBACK, self.port

    @property
    def rpc_address(self) -> str:
        """The RPC address, as :class:`swim.rpc.RpcClient` takes it."""
        return f"{LOOPBACK}:{self.rpc_port}"

    @property
    def rpc(self) -> str:
        return f"-rpc-addr={self.rpc_address}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def cli(self, command: str, *args: str, check: bool = True) -> tuple[int, str]:
        """``serf COMMAND -rpc-addr=<this agent> [-rpc-auth=<its token>] ARGS...``."""
        auth = [] if self.auth is None else [f"-rpc-auth={self.auth}"]
        return await serf_cli(command, self.rpc, *auth, *args, check=check)

    async def members(self) -> dict[str, dict[str, Any]]:
        """The agent's view from `serf members -format=json`, by member name."""
        _, out = await self.cli("members", "-format=json")
        listed: list[dict[str, Any]] = json.loads(out)["members"]
        return {member["name"]: member for member in listed}

    async def statuses(self) -> dict[str, str]:
        return {name: m["status"] for name, m in (await self.members()).items()}

    def kill(self) -> None:
        """``kill -9``: the agent says nothing to anyone."""
        self.process.kill()
        self.process.wait(STOP_LIMIT)

    def interrupt(self) -> None:
        """SIGINT: a Serf agent leaves gracefully on it."""
        self.process.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """Terminate the process, killing it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_LIMIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_LIMIT)


@dataclass
class Agents:
    """Starts agents for one test and stops every one of them at the end."""

    directory: Path
    started: list[Agent] = field(default_factory=list)

    async def start(
        self,
        name: str,
        *,
        tags: Mapping[str, str] | None = None,
        encrypt: bytes | None = None,
        join: Sequence[Agent | Node] = (),
        extra: Sequence[str] = (),
        shoal: bool = False,
        wrapper: Sequence[str] = (),
        port: int | None = None,
        auth: str | None = None,
    ) -> Agent:
        """Start ``serf agent`` as ``name`` (joining ``join`` at start), or ``swim agent`` with
        ``shoal``; returns once its RPC answers.  ``wrapper`` goes before the command (it must
        end by exec'ing it, so that the process is the agent's).  ``port`` is its gossip port
        (a free one by default); ``auth`` the RPC token it was given (in ``extra``, or in a
        config file), for :meth:`Agent.cli`."""
        port, rpc_port = port or free_port(), free_port()
        program = shoal_agent_command() if shoal else [serf_binary(), "agent"]
        command = [
            *wrapper,
            *program,
            f"-node={name}",
            f"-bind={LOOPBACK}:{port}",
            f"-rpc-addr={LOOPBACK}:{rpc_port}",
            "-profile=local",
            "-log-level=debug",
        ]
        for key, value in (tags or {}).items():
            command += ["-tag", f"{key}={value}"]
        if encrypt is not None:
            command.append(f"-encrypt={base64.b64encode(encrypt).decode()}")
        command += [f"-join={seed_of(member)}" for member in join]
        command += extra
        log_path = self.directory / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=serf_environment(),
            )
        agent = Agent(name, port, rpc_port, log_path, process, shoal, auth)
        self.started.append(agent)
        with anyio.move_on_after(START_LIMIT):
            while process.poll() is None:
                status, _ = await agent.cli("members", check=False)
                if status == 0:
                    return agent
                await anyio.sleep(0.05)
        raise AssertionError(
            f"agent {name} did not start (exit status {process.poll()}):\n{agent.log()}"
        )

    def stop_all(self) -> None:
        for agent in self.started:
            agent.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {a.name}\n{a.log()}" for a in self.started)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    serf_binary()
    pool = Agents(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


# ---------------------------------------------------------------------------------------------
# shoal nodes


def seed_of(member: Agent | Node) -> str:
    if isinstance(member, Agent):
        return member.seed
    host, port = member.address
    return f"{host}:{port}"


class Shoal:
    """Shoal nodes started in one task group, each in its own cancel scope so that a test can
    crash it (its sockets close and it says nothing)."""

    def __init__(self, nursery: TaskGroup) -> None:
        self.nursery = nursery
        self.nodes: dict[str, Node] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}

    async def start(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        *,
        key: bytes | None = None,
        **kwargs: Any,
    ) -> Node:
        keyring = None if key is None else wire.Keyring([key])

        async def run(task_status: TaskStatus[Node] = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.CancelScope() as scope:
                self.scopes[name] = scope
                async with Node(
                    LOCAL,
                    name=name,
                    bind=(LOOPBACK, 0),
                    tags=dict(tags or {}),
                    keyring=keyring,
                    **kwargs,
                ) as node:
                    task_status.started(node)
                    await anyio.sleep_forever()

        node: Node = await self.nursery.start(run)
        self.nodes[name] = node
        return node

    def crash(self, name: str) -> None:
        self.scopes[name].cancel()


@asynccontextmanager
async def shoal() -> AsyncIterator[Shoal]:
    async with anyio.create_task_group() as nursery:
        yield Shoal(nursery)
        nursery.cancel_scope.cancel()


def shoal_view(node: Node) -> dict[str, tuple[str, dict[str, str]]]:
    """A shoal node's Serf view: status and tags by member name."""
    return {m.name: (m.status.value, dict(m.tags)) for m in node.serf.members()}


def agent_view(members: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, dict[str, str]]]:
    """An agent's view in the same shape as :func:`shoal_view`."""
    return {name: (m["status"], dict(m["tags"])) for name, m in members.items()}


async def eventually(
    check: Callable[[], Awaitable[None]], limit: float, what: str, every: float = 0.1
) -> float:
    """Retry ``check`` (which asserts) until it passes; how long that took.  After ``limit``
    seconds, fail with the last assertion."""
    start = anyio.current_time()
    last: AssertionError | None = None
    with anyio.move_on_after(limit):
        while True:
            try:
                await check()
            except AssertionError as error:
                last = error
            else:
                return anyio.current_time() - start
            await anyio.sleep(every)
    raise AssertionError(f"not within {limit:.1f} s: {what}\n{last}") from last
