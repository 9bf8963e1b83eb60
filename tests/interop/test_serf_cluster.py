"""Mixed clusters: real `serf agent` processes (Serf 0.9.4) and shoal nodes on loopback.

Each test starts its own agents and nodes and checks both sides' views: `serf members
-format=json` for the agents, ``node.serf.members()`` for shoal.  Every test runs under asyncio
and under trio (``both_backends``): the shoal nodes are the runtime on either event loop.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from anyio.abc import TaskStatus

from swim import wire
from swim.members import MemberState
from swim.node import JoinError, Node
from swim.serf.layer import LEAVE_PROPAGATE_DELAY, SerfQuery, SerfUserEvent
from swim.suspicion import suspicion_bounds
from tests.interop.conftest import (
    LOCAL,
    Agent,
    Agents,
    Shoal,
    agent_view,
    eventually,
    seed_of,
    shoal,
    shoal_view,
)

CONVERGE = 3 * LOCAL.push_pull_interval
"""How long a handful of members may take to agree on who is alive, or that one left.  Gossip
often does it in well under a second, but the local profile sends each broadcast only
RetransmitMult * ceil(log10(n + 1)) = 2 times, so a member can miss a piece of news (in an
all-Go cluster too); a push-pull repairs that.  memberlist runs a node's first push-pull a
random [1, 2) intervals after it starts, with a random partner, so the repair usually lands
within two intervals; three leave room for an unlucky choice of partners."""
SCHEDULING_MARGIN = 4.0
"""Slack for process scheduling on top of a protocol bound."""


def expected(members: dict[str, dict[str, str]], status: str = "alive") -> dict[str, object]:
    return {name: (status, tags) for name, tags in members.items()}


async def views_agree(
    agents: list[Agent], nodes: list[Node], members: dict[str, dict[str, str]]
) -> None:
    """Every agent and every shoal node sees exactly ``members`` alive, with their tags."""
    want = expected(members)
    for agent in agents:
        assert agent_view(await agent.members()) == want, f"{agent.name}'s view"
    for node in nodes:
        assert shoal_view(node) == want, f"{node.name}'s view"


# ---------------------------------------------------------------------------------------------
# 1. Joining in both directions


@pytest.mark.both_backends
@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
async def test_shoal_joins_an_agent_and_an_agent_joins_shoal(
    agents: Agents, encrypted: bool
) -> None:
    key = os.urandom(32) if encrypted else None
    tags = {
        "agent-1": {"role": "agent", "n": "1"},
        "agent-2": {"role": "agent", "n": "2"},
        "shoal-1": {"role": "shoal", "lang": "py"},
    }
    first = await agents.start("agent-1", tags=tags["agent-1"], encrypt=key)
    second = await agents.start("agent-2", tags=tags["agent-2"], encrypt=key)
    async with shoal() as cluster:
        node = await cluster.start("shoal-1", tags["shoal-1"], key=key)
        assert await node.join([first.seed]) == 1  # shoal joins an agent
        await second.cli("join", seed_of(node))  # an agent joins shoal

        async def converged() -> None:
            # each agent learned of shoal-1 from a push-pull with it (the agents learning of
            # each other through shoal's gossip is test 2's business)
            for agent in (first, second):
                view = agent_view(await agent.members())
                assert view["shoal-1"] == ("alive", tags["shoal-1"]), agent.name
            assert shoal_view(node) == expected(tags)

        await eventually(converged, CONVERGE, "the agents and shoal alive with their tags")
        listed = (await first.members())["shoal-1"]
        assert (listed["addr"], listed["port"]) == (seed_of(node), node.address[1])
        assert listed["protocol"] == {"min": 2, "max": 5, "version": 5}
        if key is not None:
            # a node with another key cannot get in
            intruder = await cluster.start("intruder", {}, key=bytes(32))
            with pytest.raises(JoinError):
                await intruder.join([first.seed])
            assert "intruder" not in await first.members()


# ---------------------------------------------------------------------------------------------
# 2. A mixed cluster converges


@pytest.mark.both_backends
async def test_three_agents_and_three_shoal_nodes_converge(agents: Agents) -> None:
    tags = {f"agent-{i}": {"kind": "agent", "i": str(i)} for i in range(3)} | {
        f"shoal-{i}": {"kind": "shoal", "i": str(i)} for i in range(3)
    }
    async with shoal() as cluster:
        a0 = await agents.start("agent-0", tags=tags["agent-0"])
        a1 = await agents.start("agent-1", tags=tags["agent-1"], join=[a0])
        s0 = await cluster.start("shoal-0", tags["shoal-0"])
        await s0.join([a1.seed])
        s1 = await cluster.start("shoal-1", tags["shoal-1"])
        await s1.join([seed_of(s0)])  # shoal through shoal
        a2 = await agents.start("agent-2", tags=tags["agent-2"], join=[s1])  # agent through shoal
        s2 = await cluster.start("shoal-2", tags["shoal-2"])
        await s2.join([a2.seed])

        async def converged() -> None:
            await views_agree([a0, a1, a2], [s0, s1, s2], tags)

        took = await eventually(converged, CONVERGE, "six members alive in all six views")
        print(f"six members converged after {took:.1f} s (bound {CONVERGE:.0f} s)")
        for node in (s0, s1, s2):  # the engines agree with the Serf layers
            assert {m.name: m.state for m in node.members()} == dict.fromkeys(
                tags, MemberState.ALIVE
            )


# ---------------------------------------------------------------------------------------------
# Helpers for the tests below: every new member joins every member before it, so that the
# cluster is complete at once (the gossip of membership news is test 2's business).


async def mesh(
    agents: Agents,
    cluster: Shoal,
    names: list[str],
    *,
    key: bytes | None = None,
    agent_flags: dict[str, list[str]] | None = None,
    node_options: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Agent], dict[str, Node]]:
    """Agents (``agent-*``) and shoal nodes (``shoal-*``), each tagged ``kind``, each joining
    all the members started before it; waits until every view has every member alive.
    ``agent_flags`` and ``node_options`` add per-member agent flags and ``Node`` arguments."""
    started: list[Agent | Node] = []
    by_agent: dict[str, Agent] = {}
    by_node: dict[str, Node] = {}
    for name in names:
        kind = name.split("-")[0]
        if kind == "agent":
            flags = (agent_flags or {}).get(name, [])
            agent = await agents.start(
                name, tags={"kind": kind}, encrypt=key, join=started, extra=flags
            )
            by_agent[name] = agent
            started.append(agent)
        else:
            options = (node_options or {}).get(name, {})
            node = await cluster.start(name, {"kind": kind}, key=key, **options)
            if started:
                assert await node.join([seed_of(m) for m in started]) == len(started)
            by_node[name] = node
            started.append(node)
    everyone = {name: {"kind": name.split("-")[0]} for name in names}

    async def complete() -> None:
        await views_agree(list(by_agent.values()), list(by_node.values()), everyone)

    await eventually(complete, CONVERGE, f"{names} alive in every view")
    return by_agent, by_node


def serf_status(node: Node, name: str) -> str:
    """How ``node``'s Serf layer sees ``name``, "absent" if it does not know it."""
    for member in node.serf.members():
        if member.name == name:
            return member.status.value
    return "absent"


def failure_bound(members: int) -> float:
    """The longest a crash may go unnoticed in the local profile, from the reference's
    formulas (memberlist state.go, sections 4.2-4.3): a member probes the others round-robin
    and reshuffles at each wrap, so it probes the crashed one within 2 * (members - 1) probe
    intervals; that probe fails after one probe interval (a healthy prober); the suspicion then
    lasts at most its longest timeout (it starts there when k = SuspicionMult - 2 >= 1
    confirmations are expected, at its shortest when members - 2 < k); the dead message then
    needs a few gossip rounds, which the scheduling margin covers."""
    shortest, longest = suspicion_bounds(
        LOCAL.suspicion_mult, LOCAL.suspicion_max_timeout_mult, members, LOCAL.probe_interval
    )
    k = LOCAL.suspicion_mult - 2
    timeout = longest if members - 2 >= k >= 1 else shortest
    detection = 2 * (members - 1) * LOCAL.probe_interval + LOCAL.probe_interval
    return detection + timeout + SCHEDULING_MARGIN


# ---------------------------------------------------------------------------------------------
# 3. Crashes


@pytest.mark.both_backends
async def test_crashes_are_detected_both_ways_within_the_suspicion_bounds(
    agents: Agents,
) -> None:
    # Six members, so that four are still alive to confirm each other's suspicion of the
    # second crash (with fewer, a lost suspect message leaves each suspicion unconfirmed, at
    # its longest timeout).
    names = ["agent-0", "agent-1", "agent-2", "shoal-0", "shoal-1", "shoal-2"]
    bound = failure_bound(len(names))
    # min = 3 * max(1, log10(6)) * 1 s = 3 s; max = 6 * min = 18 s; k = 1
    assert bound == pytest.approx(11 * LOCAL.probe_interval + 18.0 + SCHEDULING_MARGIN)
    async with shoal() as cluster:
        by_agent, by_node = await mesh(agents, cluster, names)
        live_agents = [by_agent["agent-1"], by_agent["agent-2"]]
        live_nodes = [by_node["shoal-1"], by_node["shoal-2"]]

        by_agent["agent-0"].kill()  # kill -9

        async def agent_failed() -> None:
            for node in [by_node["shoal-0"], *live_nodes]:
                assert serf_status(node, "agent-0") == "failed", node.name
                # the engine agrees (or has already reaped it, GossipToTheDeadTime later)
                dead = node.member("agent-0")
                assert dead is None or dead.state is MemberState.DEAD, node.name
            for agent in live_agents:
                assert (await agent.statuses())["agent-0"] == "failed", agent.name

        took = await eventually(agent_failed, bound, "shoal marks the killed agent failed")
        print(f"killed agent marked failed after {took:.1f} s (bound {bound:.1f} s)")

        cluster.crash("shoal-0")  # no leave: its sockets just close

        async def node_failed() -> None:
            for agent in live_agents:
                assert (await agent.statuses())["shoal-0"] == "failed", agent.name
            for node in live_nodes:
                assert serf_status(node, "shoal-0") == "failed", node.name

        took = await eventually(node_failed, bound, "agents mark the crashed shoal node failed")
        print(f"crashed shoal node marked failed after {took:.1f} s (bound {bound:.1f} s)")
        for agent in live_agents:
            statuses = await agent.statuses()
            assert [statuses[n.name] for n in live_nodes] == ["alive", "alive"]
        for node in live_nodes:
            assert [serf_status(node, a.name) for a in live_agents] == ["alive", "alive"]


# ---------------------------------------------------------------------------------------------
# 4. Graceful leaves


@pytest.mark.both_backends
async def test_graceful_leaves_read_left_on_both_sides(agents: Agents) -> None:
    names = ["agent-0", "agent-1", "agent-2", "shoal-0", "shoal-1"]
    async with shoal() as cluster:
        by_agent, by_node = await mesh(agents, cluster, names)
        a0, a1, a2 = by_agent["agent-0"], by_agent["agent-1"], by_agent["agent-2"]
        s0, s1 = by_node["shoal-0"], by_node["shoal-1"]

        with anyio.fail_after(LOCAL.leave_timeout + 2.0):
            await s0.leave()
        # then the application exits, as an agent does after its LeavePropagateDelay
        await anyio.sleep(LEAVE_PROPAGATE_DELAY)
        cluster.crash("shoal-0")

        async def shoal_left() -> None:
            for agent in (a0, a1, a2):
                assert (await agent.statuses())["shoal-0"] == "left", agent.name
            assert serf_status(s1, "shoal-0") == "left"

        await eventually(shoal_left, CONVERGE, "agents read the shoal node as left")

        await a0.cli("leave")  # `serf leave`: the agent leaves and exits
        a2.interrupt()  # SIGINT: the agent leaves gracefully too

        async def agents_left() -> None:
            for name in ("agent-0", "agent-2"):
                assert serf_status(s1, name) == "left", name
                # the engine saw the agent's own dead message (left), unless gossip lost it
                # and the Serf status came from a push-pull after a failure (dead or reaped)
                member = s1.member(name)
                assert member is None or member.state in (MemberState.LEFT, MemberState.DEAD)
                assert (await a1.statuses())[name] == "left", name

        await eventually(agents_left, CONVERGE, "shoal reads the agents as left")
        assert serf_status(s1, "agent-1") == "alive"


# ---------------------------------------------------------------------------------------------
# 5. User events and queries, both ways

QUERY_ATTEMPTS = 5
"""Gossip in the local profile loses a query at some member about once in ten tries, in an
all-Go cluster as in a mixed one (each node sends a broadcast only twice): a query that did not
reach every member is asked again, up to this many times."""

GOSSIP_WAIT = 3.0
"""An event that has not reached every member by then was lost by the gossip."""
QUERY_TIMEOUT = 1.0
"""Queries from the tests wait this long for answers (a few gossip rounds and a reply)."""

T = TypeVar("T")


async def until_complete(
    ask: Callable[[], Awaitable[T]], complete: Callable[[T], bool], what: str
) -> T:
    """Ask again until ``complete`` holds for the answer (see :data:`QUERY_ATTEMPTS`)."""
    for _ in range(QUERY_ATTEMPTS):
        answer = await ask()
        if complete(answer):
            return answer
    raise AssertionError(f"{what}: incomplete after {QUERY_ATTEMPTS} attempts: {answer!r}")


async def serf_query(agent: Agent, *args: str) -> dict[str, Any]:
    """``serf query -format=json ARGS`` through ``agent``: its acks and responses."""
    _, out = await agent.cli("query", "-format=json", *args)
    result: dict[str, Any] = json.loads(out)
    return result


def acked_by(*names: str) -> Callable[[dict[str, Any]], bool]:
    # serf prints null, not [], when no ack came in time: that is incomplete too, ask again
    return lambda result: sorted(result["Acks"] or []) == sorted(names)


@dataclass
class Listener:
    """Records the user events a shoal node receives, and answers its queries with
    ``"<node>:<payload>"``."""

    node: Node
    events: list[tuple[str, bytes]] = field(default_factory=list)

    async def run(self, task_status: TaskStatus[None]) -> None:
        stream = self.node.events()
        task_status.started()
        async for event in stream:
            if isinstance(event, SerfUserEvent):
                self.events.append((event.name, event.payload))
            elif isinstance(event, SerfQuery):
                answer = f"{self.node.name}:{event.payload.decode()}".encode()
                await self.node.respond(event, answer)


async def delivered(
    send: Callable[[int], Awaitable[None]], arrived: Callable[[int], bool], what: str
) -> None:
    """Send event number 0, 1, ... until one arrives everywhere within :data:`GOSSIP_WAIT`
    (gossip loses an event at some member about once in ten tries; that member would get it
    only with the next push-pull, up to 30 s later)."""
    for attempt in range(QUERY_ATTEMPTS):
        await send(attempt)
        with anyio.move_on_after(GOSSIP_WAIT):
            while not arrived(attempt):
                await anyio.sleep(0.05)
            return
    raise AssertionError(f"{what}: never arrived everywhere in {QUERY_ATTEMPTS} tries")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.both_backends
async def test_user_events_and_queries_flow_both_ways(agents: Agents) -> None:
    received = {name: agents.directory / f"{name}.events" for name in ("agent-0", "agent-1")}
    flags = {
        name: [f"-event-handler=user:py-event=cat >> {path}"] for name, path in received.items()
    }
    flags["agent-0"].append("-event-handler=query:ping=printf pong")
    names = ["agent-0", "agent-1", "shoal-0", "shoal-1"]
    async with shoal() as cluster:
        by_agent, by_node = await mesh(agents, cluster, names, agent_flags=flags)
        a0, a1 = by_agent["agent-0"], by_agent["agent-1"]
        s0, s1 = by_node["shoal-0"], by_node["shoal-1"]
        listeners = [Listener(s0), Listener(s1)]
        for listener in listeners:
            await cluster.nursery.start(listener.run)

        # `serf event` reaches every shoal node, once
        async def serf_event(attempt: int) -> None:
            await a1.cli("event", "deploy", f"v{attempt}")

        def at_shoal(attempt: int) -> bool:
            sent = ("deploy", f"v{attempt}".encode())
            return all(sent in listener.events for listener in listeners)

        await delivered(serf_event, at_shoal, "`serf event deploy`")

        # a shoal user event reaches the agents (their handlers append the payload)
        async def shoal_event(attempt: int) -> None:
            await s0.user_event("py-event", f"hello {attempt}".encode(), coalesce=False)

        def at_agents(attempt: int) -> bool:
            # the shoal nodes must have it too: with the local profile's two sends per
            # broadcast a small cluster sometimes misses one, so the event is sent again
            sent = ("py-event", f"hello {attempt}".encode())
            return all(f"hello {attempt}" in lines(path) for path in received.values()) and all(
                sent in listener.events for listener in listeners
            )

        await delivered(shoal_event, at_agents, "the shoal user event")
        await anyio.sleep(1.0)  # every re-gossiped copy has arrived by now
        for listener in listeners:
            assert len(set(listener.events)) == len(listener.events), listener.node.name
            # shoal nodes see the shoal event too (its sender included, as in Serf)
            assert {name for name, _ in listener.events} == {"deploy", "py-event"}
        for name, path in received.items():
            assert len(set(lines(path))) == len(lines(path)), f"{name} ran its handler twice"
        assert "Received event: user-event: py-event" in a1.log()

        # `serf query`: shoal nodes ack and answer; agents without a handler only ack
        result = await until_complete(
            lambda: serf_query(a1, "-timeout=1s", "uptime", "now"), acked_by(*names), "uptime"
        )
        assert result["Responses"] == {"shoal-0": "shoal-0:now", "shoal-1": "shoal-1:now"}
        await until_complete(
            lambda: serf_query(a1, "-timeout=1s", "-tag", "kind=sho.l", "uptime", "x"),
            acked_by("shoal-0", "shoal-1"),
            "uptime for tag kind=sho.l",
        )
        result = await until_complete(
            lambda: serf_query(a0, "-timeout=1s", "-node=shoal-1", "uptime", "y"),
            acked_by("shoal-1"),
            "uptime for shoal-1",
        )
        assert result["Responses"] == {"shoal-1": "shoal-1:y"}

        # a shoal query: agents ack it, agent-0's handler answers it
        answered = await until_complete(
            lambda: s0.query("ping", b"?", request_ack=True, timeout=QUERY_TIMEOUT),
            lambda r: sorted(r.acks) == sorted(names),
            "ping from shoal-0",
        )
        assert answered.answers == {
            "agent-0": b"pong",
            "shoal-0": b"shoal-0:?",
            "shoal-1": b"shoal-1:?",
        }
        filtered = await until_complete(
            lambda: s1.query(
                "ping", b"!", request_ack=True, tags={"kind": "^agent$"}, timeout=QUERY_TIMEOUT
            ),
            lambda r: sorted(r.acks) == ["agent-0", "agent-1"],
            "ping from shoal-1 to the agents",
        )
        assert filtered.answers == {"agent-0": b"pong"}
        cluster.nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# 6. Key rotation with `serf keys`


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


async def serf_keys(agent: Agent, *args: str) -> str:
    """``serf keys ARGS`` until every member reports success: a member the query missed makes
    the command fail (see :data:`QUERY_ATTEMPTS`), and install and use are idempotent."""
    out = ""
    for _ in range(QUERY_ATTEMPTS):
        status, out = await agent.cli("keys", *args, check=False)
        if status == 0:
            return out
    raise AssertionError(f"serf keys {' '.join(args)} kept failing:\n{out}")


async def cluster_keys(agent: Agent) -> dict[str, str]:
    """`serf keys -list`, answered by every member: each key with its "[holders/members]"."""
    out = await serf_keys(agent, "-list")
    lines = [line.split() for line in out.splitlines() if line and not line.startswith("==>")]
    return {key: count for key, count in lines}


@pytest.mark.both_backends
async def test_serf_keys_rotate_the_keyring_of_every_member(agents: Agents) -> None:
    old, new = os.urandom(32), os.urandom(32)
    keyring_file = agents.directory / "shoal-0.keyring"
    names = ["agent-0", "agent-1", "shoal-0", "shoal-1"]
    everyone = {name: {"kind": name.split("-")[0]} for name in names}
    all_of_them = f"[{len(names)}/{len(names)}]"
    async with shoal() as cluster:
        by_agent, by_node = await mesh(
            agents,
            cluster,
            names,
            key=old,
            node_options={"shoal-0": {"keyring_file": str(keyring_file)}},
        )
        a0, a1 = by_agent["agent-0"], by_agent["agent-1"]
        nodes = list(by_node.values())

        def keys() -> set[tuple[bytes, ...]]:
            rings = [node.engine.wire_options.keyring for node in nodes]
            return {ring.keys for ring in rings if ring is not None}

        assert "Successfully installed key" in await serf_keys(a0, "-install", b64(new))
        assert keys() == {(old, new)}
        assert await cluster_keys(a1) == {b64(old): all_of_them, b64(new): all_of_them}
        assert "Successfully changed primary key" in await serf_keys(a1, "-use", b64(new))
        assert keys() == {(new, old)}
        assert "Successfully removed key" in await serf_keys(a0, "-remove", b64(old))
        assert keys() == {(new,)}
        assert await cluster_keys(a1) == {b64(new): all_of_them}
        assert wire.Keyring.from_file(keyring_file).keys == (new,)
        # the operations are idempotent: removing the key again succeeds on every member
        assert "Successfully removed key" in await serf_keys(a1, "-remove", b64(old))

        # everyone still talks to everyone, with the new key only
        await anyio.sleep(2 * LOCAL.probe_interval)

        async def all_alive() -> None:
            await views_agree([a0, a1], nodes, everyone)

        await eventually(all_alive, CONVERGE, "every member alive after the rotation")
        newcomer = await cluster.start("newcomer", {}, key=new)
        assert await newcomer.join([a0.seed]) == 1
