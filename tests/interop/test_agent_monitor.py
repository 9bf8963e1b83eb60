"""RPC ``monitor`` on a swim agent, through the real `serf monitor` and through `swim monitor`:
the membership lines a join makes, at the level asked, in Serf's format, and the end of the
stream when the agent goes away.

Agents and monitors are processes, so these tests use real time and poll within deadlines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop.conftest import (
    STOP_LIMIT,
    Agent,
    Agents,
    eventually,
    serf_binary,
    serf_environment,
)

SEEN = 15.0
"""Seconds a join may take to show in a monitor's output."""
STAMP = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d"


@contextmanager
def monitoring(command: Sequence[str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A monitor process writing to ``output``, stopped (SIGINT, as a user would) at the end."""
    with output.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=serf_environment()
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(STOP_LIMIT)


async def joined_and_seen(agents: Agents, shoal: Agent, output: Path, level: str) -> str:
    """Once the monitor runs, start a serf agent joining ``shoal``; what the monitor printed
    once it shows the join."""

    async def monitoring() -> None:
        _, out = await shoal.cli("info", "-format=json")
        assert json.loads(out)["rpc"].get("requests.monitor") == "1", out

    await eventually(monitoring, SEEN, "the monitor connected")
    await agents.start("serf-b", join=[shoal])

    async def shown() -> None:
        assert "[INFO] serf: EventMemberJoin: serf-b 127.0.0.1" in output.read_text(), level

    await eventually(shown, SEEN, f"the join in the {level} monitor's output")
    return output.read_text()


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_serf_monitor_shows_a_swim_agents_membership_lines(
    agents: Agents, tmp_path: Path, level: str
) -> None:
    shoal = await agents.start("shoal-a", shoal=True)
    output = tmp_path / "monitor.out"
    command = [serf_binary(), "monitor", shoal.rpc, f"-log-level={level}"]
    with monitoring(command, output) as monitor:
        text = await joined_and_seen(agents, shoal, output, level)
        assert monitor.poll() is None
    join_line = next(line for line in text.splitlines() if "EventMemberJoin: serf-b" in line)
    assert re.fullmatch(
        rf"\s*{STAMP} \[INFO\] serf: EventMemberJoin: serf-b 127\.0\.0\.1", join_line
    ), join_line
    debug_lines = [line for line in text.splitlines() if "[DEBUG]" in line]
    if level == "info":
        assert debug_lines == []


async def test_swim_monitor_shows_the_lines_and_the_agents_end(
    agents: Agents, tmp_path: Path
) -> None:
    shoal = await agents.start("shoal-a", shoal=True)
    output = tmp_path / "monitor.out"
    command = [sys.executable, "-m", "swim.cli", "monitor", shoal.rpc, "-log-level=INFO"]
    with monitoring(command, output) as monitor:
        text = await joined_and_seen(agents, shoal, output, "swim")
        assert "[DEBUG]" not in text
        shoal.interrupt()  # it leaves, logs its leave, and exits
        status = monitor.wait(STOP_LIMIT + 5)
    text = output.read_text()
    assert status == 1, text
    assert "[INFO] agent: caught SIGINT: leaving gracefully" in text
    assert text.endswith(
        "Remote side ended the monitor! This usually means that the\n"
        "remote side has exited or crashed.\n"
    )
    assert "Traceback" not in text


async def test_swim_monitor_refuses_an_unknown_level(agents: Agents) -> None:
    shoal = await agents.start("shoal-a", shoal=True)
    done = subprocess.run(
        [sys.executable, "-m", "swim.cli", "monitor", shoal.rpc, "-log-level=loud"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == "Error starting monitor: Unknown log level: LOUD\n"


async def test_swim_monitor_reads_a_serf_agents_lines(agents: Agents, tmp_path: Path) -> None:
    serf = await agents.start("serf-a")
    output = tmp_path / "monitor.out"
    command = [sys.executable, "-m", "swim.cli", "monitor", serf.rpc, "-log-level=debug"]
    with monitoring(command, output) as monitor:

        async def shown() -> None:
            # serf's agent replays the lines it wrote before the monitor started
            assert "[INFO] serf: EventMemberJoin: serf-a 127.0.0.1" in output.read_text()

        await eventually(shown, SEEN, "serf's own join in swim monitor's output")
        assert monitor.poll() is None
