"""Serf's network coordinates between `swim agent` and real `serf agent` processes: the real
`serf rtt` against shoal agents, `swim rtt` against Serf agents, each side accepting the other's
ack payloads, and `-disable-coordinates`.

Loopback round trips are a fraction of a millisecond, so after some probing every estimate must
be a few milliseconds at most; each wait polls within a deadline.
"""

from __future__ import annotations

import re
import sys

import anyio

from swim.rpc import RpcClient
from tests.interop.conftest import CLI_LIMIT, LOCAL, Agent, Agents, eventually, serf_environment

CONVERGE = 3 * LOCAL.push_pull_interval + 4.0
"""How long agents may take to see each other alive once joined (see test_agent_ops)."""
PROBING = 30.0
"""How long coordinates may take to settle: with four members in the local profile each is
probed every few seconds, and a handful of probes brings an estimate near the loopback RTT."""
PLAUSIBLE_MS = 5.0
"""The most an estimate between two processes on loopback may say."""
ESTIMATE = re.compile(r"^Estimated (\S+) <-> (\S+) rtt: (\d+\.\d{3}) ms$")
COORDINATE_ERRORS = ("Unsupported ping version", "Failed to decode coordinate", "coordinate")
"""What Serf logs (at ERR) about an ack payload it cannot use."""


async def swim_cli(*args: str) -> tuple[int, str]:
    """Run the `swim` command (this interpreter's); its status and everything it printed."""
    command = [sys.executable, "-m", "swim.cli", *args]
    with anyio.fail_after(CLI_LIMIT):
        done = await anyio.run_process(command, check=False, env=serf_environment())
    return done.returncode, (done.stdout + done.stderr).decode()


def estimate(out: str, first: str, second: str) -> float:
    """The milliseconds in `serf rtt`'s line about ``first`` and ``second``."""
    found = ESTIMATE.match(out.strip())
    assert found is not None, out
    assert found.group(1, 2) == (first, second)
    return float(found.group(3))


def plausible(run: tuple[int, str], first: str, second: str) -> float:
    """The estimate `serf rtt` (or `swim rtt`) printed, checked to be a few ms at most."""
    status, out = run
    assert status == 0, out
    milliseconds = estimate(out, first, second)
    assert 0.0 < milliseconds <= PLAUSIBLE_MS, out
    return milliseconds


async def all_alive(agents: list[Agent]) -> None:
    names = {agent.name for agent in agents}
    for agent in agents:
        statuses = await agent.statuses()
        assert set(statuses) == names and set(statuses.values()) == {"alive"}, statuses


async def test_rtt_between_shoal_and_serf_agents_in_one_cluster(agents: Agents) -> None:
    shoal_1 = await agents.start("shoal-1", shoal=True)
    serf_1 = await agents.start("serf-1", join=[shoal_1])
    shoal_2 = await agents.start("shoal-2", shoal=True, join=[serf_1])
    serf_2 = await agents.start("serf-2", join=[shoal_2])
    everyone = [shoal_1, serf_1, shoal_2, serf_2]
    await eventually(lambda: all_alive(everyone), CONVERGE, "all four alive")

    async def estimates() -> None:
        # serf rtt against a shoal agent: between two shoal members, and (one name) between
        # a Serf member and the agent itself, so shoal took Serf's payloads
        plausible(await shoal_1.cli("rtt", "shoal-1", "shoal-2", check=False), "shoal-1", "shoal-2")
        plausible(await shoal_1.cli("rtt", "serf-1", check=False), "serf-1", "shoal-1")
        # a Serf agent holds shoal members' coordinates: Serf took shoal's payloads
        plausible(await serf_1.cli("rtt", "shoal-2", check=False), "shoal-2", "serf-1")
        # swim rtt against Serf agents, as serf rtt
        plausible(await swim_cli("rtt", serf_2.rpc, "serf-1", "serf-2"), "serf-1", "serf-2")
        plausible(await swim_cli("rtt", serf_2.rpc, "shoal-1"), "shoal-1", "serf-2")

    await eventually(estimates, CONVERGE + PROBING, "plausible estimates everywhere", every=1.0)
    for serf_agent in (serf_1, serf_2):
        lines = [line for line in serf_agent.log().splitlines() if "[ERR]" in line]
        assert not [line for line in lines if any(e in line for e in COORDINATE_ERRORS)], lines
    for shoal_agent in (shoal_1, shoal_2):
        async with RpcClient.connect(shoal_agent.rpc_address) as client:
            figures = (await client.stats())["serf"]
        assert figures["coordinates_rejected"] == "0", figures


async def test_disable_coordinates_sends_none_and_answers_none(agents: Agents) -> None:
    quiet = await agents.start("quiet", shoal=True, extra=["-disable-coordinates"])
    serf_1 = await agents.start("serf-1", join=[quiet])
    serf_2 = await agents.start("serf-2", join=[quiet])
    await eventually(lambda: all_alive([quiet, serf_1, serf_2]), CONVERGE, "all alive")

    async def serf_agents_probed_each_other() -> None:
        plausible(await serf_1.cli("rtt", "serf-2", check=False), "serf-2", "serf-1")
        plausible(await serf_2.cli("rtt", "serf-1", check=False), "serf-1", "serf-2")

    # by then each member has probed the others too (one probe ring holds two peers)
    await eventually(serf_agents_probed_each_other, CONVERGE + PROBING, "Serf's coordinates")
    status, out = await serf_1.cli("rtt", "quiet", check=False)
    assert status == 1 and 'Could not find a coordinate for node "quiet"' in out, out
    status, out = await quiet.cli("rtt", "serf-1", check=False)  # it ignores Serf's payloads
    assert status == 1 and 'Could not find a coordinate for node "serf-1"' in out, out
    status, out = await swim_cli("rtt", quiet.rpc, "quiet", "serf-1")
    assert status == 1 and 'Could not find a coordinate for node "quiet"' in out, out
    assert "-disable-coordinates" in out
    for serf_agent in (serf_1, serf_2):  # an empty payload is no error to Serf
        assert "[ERR]" not in serf_agent.log(), serf_agent.log()
