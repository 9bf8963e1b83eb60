"""`swim agent` run as operators run `serf agent`, against real Serf agents and the real `serf`
command: retried joins to a seed that comes up later, the key and the RPC token from a config
file, and membership changes logged as serf logs them."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from tests.interop.conftest import (
    LOCAL,
    LOOPBACK,
    Agent,
    Agents,
    eventually,
    free_port,
    serf_cli,
)

CONVERGE = 3 * LOCAL.push_pull_interval + 4.0
"""How long two agents may take to see each other alive once one has joined the other (see
test_serf_cluster.CONVERGE), with slack for process scheduling."""


async def alive_together(first: Agent, second: Agent) -> None:
    for agent in (first, second):
        statuses = await agent.statuses()
        assert statuses == {first.name: "alive", second.name: "alive"}, agent.name


async def logged(agent: Agent, line: str, limit: float = CONVERGE) -> None:
    """Wait until ``agent``'s log holds ``line``."""

    async def check() -> None:
        assert line in agent.log(), f"{agent.name} has not logged {line!r}"

    await eventually(check, limit, f"{agent.name} logs {line!r}")


@pytest.mark.parametrize("seed_kind", ["serf", "shoal"])
async def test_retry_join_reaches_a_seed_that_starts_later(agents: Agents, seed_kind: str) -> None:
    port = free_port()
    waiting = await agents.start(
        "shoal-1", shoal=True, extra=[f"-retry-join={LOOPBACK}:{port}", "-retry-interval=1s"]
    )
    await logged(waiting, f"-retry-join: could not join the cluster: {LOOPBACK}:{port}")
    seed = await agents.start("seed", shoal=seed_kind == "shoal", port=port)
    await eventually(lambda: alive_together(waiting, seed), CONVERGE, "both alive")
    assert waiting.process.poll() is None  # it kept running all along
    await logged(waiting, f"swim.serf: EventMemberJoin: seed {LOOPBACK}")
    await logged(seed, f"serf: EventMemberJoin: shoal-1 {LOOPBACK}")  # serf's own words
    seed.interrupt()  # a graceful leave
    await logged(waiting, f"swim.serf: EventMemberLeave: seed {LOOPBACK}")


async def test_a_config_file_with_the_key_joins_an_encrypted_serf_agent(
    agents: Agents, tmp_path: Path
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    serf = await agents.start("serf-1", encrypt=base64.b64decode(key))
    config = tmp_path / "shoal.json"
    settings = {
        "encrypt_key": key,
        "rpc_auth": "s3cret",
        "start_join": [serf.seed],
        "tags": {"role": "shoal"},
    }
    config.write_text(json.dumps(settings))
    config.chmod(0o600)
    shoal = await agents.start(
        "shoal-1", shoal=True, extra=[f"-config-file={config}"], auth="s3cret"
    )
    command_line = Path(f"/proc/{shoal.pid}/cmdline").read_bytes()  # what any local user reads
    assert key.encode() not in command_line and b"s3cret" not in command_line

    async def joined() -> None:
        await alive_together(serf, shoal)
        assert (await serf.members())["shoal-1"]["tags"] == {"role": "shoal"}

    await eventually(joined, CONVERGE, "shoal-1 in the encrypted cluster")
    status, out = await serf_cli("members", shoal.rpc, "-rpc-auth=wrong", check=False)
    assert status != 0 and "Invalid authentication token" in out
    assert "chmod 600" not in shoal.log()  # only its owner can read the file
    serf.kill()
    await logged(shoal, f"swim.serf: EventMemberFailed: serf-1 {LOOPBACK}")
