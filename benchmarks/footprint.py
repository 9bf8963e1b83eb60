"""Where a swim agent's resident memory goes: the floors under it, and the agents themselves.

Two parts, both measured in this run:

1. Import floors.  A fresh interpreter imports one more thing at each step (the event loops,
   AnyIO, msgpack, cryptography's AES-GCM, then shoal's agent command) and reports its
   resident memory, so that each library's share, and what is left for shoal, can be read off.
2. Running agents.  One ``swim agent`` of each kind (trio or asyncio, with or without
   ``-encrypt``) and one ``serf agent``, each alone on 127.0.0.1, are measured ``--settle``
   seconds after their RPC first answers; each figure is also given as a ratio to serf.

Run from the repository root: ``python benchmarks/footprint.py``."""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

# Run as a file, this script's own directory comes first on sys.path; the agent code it
# shares with its siblings is imported from the repository root, as ``benchmarks.agents``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agents import (
    Agent,
    BenchError,
    free_ports,
    rss_mib,
    serf_program,
    shoal_program,
    start_agent,
    stop_all,
)
from swim.rpc import RpcClient, RpcConnectionError, RpcError

IMPORT_STEPS: tuple[tuple[str, str], ...] = (
    ("bare interpreter", ""),
    ("asyncio (imports ssl)", "import asyncio"),
    ("asyncio, anyio", "import asyncio, anyio"),
    ("trio (imports ssl)", "import trio"),
    ("trio, anyio", "import trio, anyio"),
    ("msgpack", "import msgpack"),
    (
        "+ cryptography's AES-GCM",
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM",
    ),
    (
        "asyncio, anyio, msgpack, AES-GCM",
        "import asyncio, anyio, msgpack\n"
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM",
    ),
    ("the swim command (swim.cli)", "import swim.cli"),
)
"""(label, code): each runs in a fresh interpreter before its resident memory is read."""

READ_RSS = (
    "\nimport re\nprint(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
)


def import_floor(code: str) -> float:
    """Resident MiB of a fresh interpreter (of this environment) once ``code`` has run."""
    done = subprocess.run(
        [sys.executable, "-c", code + READ_RSS], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"cannot measure {code!r}: {done.stderr.strip().splitlines()[-1]}")
    return int(done.stdout) / 1024


async def settled_rss(agent: Agent, settle: float, timeout: float) -> float:
    """The agent's resident MiB ``settle`` seconds after its RPC first answers."""
    deadline = time.monotonic() + timeout
    while True:
        if agent.process.poll() is not None:
            raise BenchError(
                f"{agent.name} exited with {agent.process.returncode}; see {agent.log}"
            )
        try:
            async with RpcClient.connect(agent.rpc_addr, timeout=2.0) as client:
                await client.members()
            break
        except (RpcConnectionError, RpcError):
            if time.monotonic() > deadline:
                raise BenchError(f"{agent.name}'s RPC did not answer in {timeout} s") from None
            await trio.sleep(0.2)
    await trio.sleep(settle)
    return rss_mib(agent.process.pid)


def measure_agents(args: argparse.Namespace) -> dict[str, float]:
    key = base64.b64encode(os.urandom(32)).decode()
    kinds = {
        "serf, -encrypt": (serf_program(args.serf), key),
        "swim asyncio": (shoal_program(Path.cwd(), "-event-loop=asyncio"), ""),
        "swim asyncio, -encrypt": (shoal_program(Path.cwd(), "-event-loop=asyncio"), key),
        "swim trio": (shoal_program(Path.cwd(), "-event-loop=trio"), ""),
        "swim trio, -encrypt": (shoal_program(Path.cwd(), "-event-loop=trio"), key),
    }
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-footprint-") as scratch:
        for index, (label, (program, agent_key)) in enumerate(kinds.items()):
            agents: list[Agent] = []
            options = argparse.Namespace(
                serf=args.serf, profile="lan", key=agent_key, log_dir=scratch
            )
            ports = free_ports(2)
            try:
                agent = start_agent(
                    agents,
                    options,
                    "serf" if label.startswith("serf") else "shoal",
                    index,
                    ports=(ports[0], ports[1]),
                    join="",
                    program=program,
                )
                figures[label] = trio.run(settled_rss, agent, args.settle, 30.0)
            finally:
                stop_all(agents)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serf", default=shutil.which("serf") or "/usr/bin/serf")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds after the RPC answers, s"
    )
    args = parser.parse_args()
    if not os.access(args.serf, os.X_OK):
        parser.error(f"no serf binary at {args.serf}; pass --serf PATH")
    try:
        print(f"Python {sys.version.split()[0]}; resident memory (VmRSS), MiB\n")
        bare = import_floor("")
        print(f"{'imported in a fresh interpreter':42} {'MiB':>6} {'+ bare':>7}")
        for label, code in IMPORT_STEPS:
            rss = import_floor(code)
            print(f"{label:42} {rss:6.1f} {rss - bare:+7.1f}")
        figures = measure_agents(args)
    except BenchError as exc:
        sys.exit(f"footprint.py: {exc}")
    serf = figures["serf, -encrypt"]
    print(f"\n{'one agent alone, settled':42} {'MiB':>6} {'/ serf':>7}")
    for label, rss in figures.items():
        print(f"{label:42} {rss:6.1f} {rss / serf:6.2f}x")


if __name__ == "__main__":
    main()
