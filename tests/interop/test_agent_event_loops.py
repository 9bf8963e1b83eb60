"""``swim agent -event-loop=...``: on trio and on asyncio alike, the agent is a full member of
a real Serf cluster and answers the real `serf` command."""

from __future__ import annotations

import pytest

from tests.interop.conftest import STOP_LIMIT, Agents, eventually


@pytest.mark.parametrize("event_loop", ["trio", "asyncio"])
async def test_the_agent_on_either_event_loop_joins_serves_rpc_and_leaves(
    agents: Agents, event_loop: str
) -> None:
    serf = await agents.start("serf-a", tags={"role": "db"})
    shoal = await agents.start(
        "shoal-a",
        shoal=True,
        tags={"role": "web"},
        join=[serf],
        extra=[f"-event-loop={event_loop}"],
    )

    async def both_see_both() -> None:
        for agent in (serf, shoal):
            members = await agent.members()
            assert {name: m["status"] for name, m in members.items()} == {
                "serf-a": "alive",
                "shoal-a": "alive",
            }, agent.name
            assert members["shoal-a"]["tags"] == {"role": "web"}

    await eventually(both_see_both, 10.0, "serf and shoal see each other alive")
    assert f", on {event_loop}\n" in shoal.log()

    await shoal.cli("tags", "-set", "zone=b")  # through shoal's RPC, seen by serf

    async def serf_sees_the_new_tag() -> None:
        assert (await serf.members())["shoal-a"]["tags"] == {"role": "web", "zone": "b"}

    await eventually(serf_sees_the_new_tag, 10.0, "serf sees the tag set through shoal's RPC")

    shoal.interrupt()  # leaves gracefully, as serf agent does on SIGINT
    assert shoal.process.wait(STOP_LIMIT) == 0, shoal.log()

    async def serf_sees_it_left() -> None:
        assert (await serf.statuses())["shoal-a"] == "left"

    await eventually(serf_sees_it_left, 10.0, "serf sees shoal left, not failed")
