"""``swim demo``: a five-node cluster on loopback living through a crash, a restart and a leave.

Everything runs in one process: real :class:`~swim.node.Node` objects on UDP and TCP sockets
bound to 127.0.0.1, with memberlist's loopback timers.  Each node's view of the others is kept up
to date from its events, and the demo prints when a change first shows up and when it has
reached every live node.  Times come from ``anyio.current_time()``, so the demo runs unchanged in
virtual time (the tests drive it with trio's ``MockClock``), and every stage has a deadline, so
a broken runtime makes the demo fail loudly instead of hanging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from swim.config import Config
from swim.members import MemberState
from swim.node import Node

LOOPBACK = "127.0.0.1"
# memberlist's loopback profile, but with LAN's retransmit_mult: with only 2 transmits per
# broadcast a 5-node cluster joined through one seed often misses news by gossip alone and waits
# for push-pull, which comes every 5 s here instead of 15.
CONFIG = Config.local(retransmit_mult=4, push_pull_interval=5.0)
NAMES = ("n0", "n1", "n2", "n3", "n4")
SEED = "n0"  # everyone joins through it
VICTIM = "n4"  # killed without a leave, then restarted
LEAVER = "n2"  # leaves gracefully at the end
STAGE_LIMIT = 30.0  # seconds (virtual under MockClock) any one wait may take

WORDS = {
    MemberState.ALIVE: "alive",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "failed",
    MemberState.LEFT: "left",
}
"""How the demo names each state (a dead member is one declared failed)."""

Say = Callable[[str], None]
T = TypeVar("T")


class DemoError(RuntimeError):
    """A stage of the demo did not complete in time: something in the runtime is wrong."""


@dataclass(frozen=True, slots=True)
class _Change:
    """``observer`` saw ``member`` move to ``state`` at time ``at``."""

    at: float
    observer: str
    member: str
    state: MemberState


class _Cluster:
    """The demo's nodes, each in its own cancel scope so that it can be killed, and what every
    running node currently believes about the others, refreshed whenever it reports an event."""

    def __init__(self, nursery: TaskGroup, say: Say) -> None:
        self._nursery = nursery
        self.say = say
        self.start_time = anyio.current_time()
        self.nodes: dict[str, Node] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self.views: dict[str, dict[str, tuple[MemberState, float]]] = {}
        self.changes: list[_Change] = []
        self._changed = anyio.Event()

    def stamp(self, text: str, at: float | None = None) -> None:
        """Print ``text`` behind the time since the demo began (``at``, or now)."""
        at = anyio.current_time() if at is None else at
        self.say(f"[{at - self.start_time:6.2f}s] {text}")

    async def start(self, name: str) -> Node:
        """Start node ``name`` on a free loopback port and follow its view."""

        async def run(task_status: TaskStatus[Node] = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.CancelScope() as scope:
                self._scopes[name] = scope
                async with Node(CONFIG, name=name, bind=(LOOPBACK, 0)) as node:
                    events = node.events()
                    self.views[name] = {}
                    self._refresh(node)
                    task_status.started(node)
                    async for _ in events:
                        self._refresh(node)

        node: Node = await self._nursery.start(run)
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """Stop ``name`` without a leave: its sockets close and it says nothing more."""
        self._scopes.pop(name).cancel()
        del self.nodes[name], self.views[name]

    def _refresh(self, node: Node) -> None:
        now = anyio.current_time()
        old = self.views[node.name]
        new: dict[str, tuple[MemberState, float]] = {}
        for member in node.members():
            if member.name == node.name:
                continue
            previous = old.get(member.name)
            if previous is not None and previous[0] is member.state:
                new[member.name] = previous
            else:
                new[member.name] = (member.state, now)
                self.changes.append(_Change(now, node.name, member.name, member.state))
        self.views[node.name] = new
        self._changed.set()

    async def wait_for(self, check: Callable[[], T | None], what: str) -> T:
        """Wait until ``check`` returns something, re-checking at every change of any view;
        raises :class:`DemoError` naming ``what`` after :data:`STAGE_LIMIT` seconds."""
        try:
            with anyio.fail_after(STAGE_LIMIT):
                while (result := check()) is None:
                    if self._changed.is_set():
                        self._changed = anyio.Event()
                    await self._changed.wait()
        except TimeoutError:
            raise DemoError(
                f"the demo stalled: {what} did not happen within {STAGE_LIMIT:g} s"
            ) from None
        return result

    def first(self, member: str, state: MemberState, since: float) -> _Change | None:
        """The first time since ``since`` that any node saw ``member`` in ``state``."""
        for change in self.changes:
            if change.at >= since and change.member == member and change.state is state:
                return change
        return None

    def reached(self, members: list[str], state: MemberState, since: float) -> float | None:
        """When every running node (but the member itself) came to see each of ``members`` in
        ``state``, if they all do now; ``since`` when there is nobody to ask."""
        times = []
        for observer, view in self.views.items():
            for member in members:
                if member == observer:
                    continue
                seen = view.get(member)
                if seen is None or seen[0] is not state:
                    return None
                times.append(seen[1])
        return max(times, default=since)

    def table(self) -> list[str]:
        """Every node's view: a row per node, saying how it sees each member ("." is itself)."""
        rows = ["   " + "view of".ljust(10) + "".join(f"{name:>8}" for name in NAMES)]
        for observer in NAMES:
            view = self.views.get(observer)
            if view is None:
                rows.append(f"   {observer:<10}(down)")
                continue
            cells = [
                "." if name == observer else (WORDS[view[name][0]] if name in view else "?")
                for name in NAMES
            ]
            rows.append(f"   {observer:<10}" + "".join(f"{cell:>8}" for cell in cells))
        return rows


async def run_demo(say: Say = print) -> None:
    """Run the five acts (converge, crash, restart, leave, summary); raises
    :class:`DemoError` if one of them does not complete in time."""
    failure: DemoError | None = None
    async with anyio.create_task_group() as nursery:
        cluster = _Cluster(nursery, say)
        try:
            await _acts(cluster)
        except DemoError as exc:  # raised once the nodes are down, not inside a group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _acts(cluster: _Cluster) -> None:
    timings = [
        ("cluster converged after the start", await _converge(cluster)),
        *await _crash(cluster),
        ("restart -> alive at every node", await _restart(cluster)),
        ("graceful leave -> left at every node", await _leave(cluster)),
    ]
    cluster.say("\nSummary (seconds)")
    for label, seconds in timings:
        cluster.say(f"   {label:<38} {seconds:6.2f}")
    cluster.say(f"   {'whole demo':<38} {anyio.current_time() - cluster.start_time:6.2f}")


async def _converge(cluster: _Cluster) -> float:
    cluster.say(
        f"Five nodes on {LOOPBACK}: a probe every {CONFIG.probe_interval:g} s, gossip every "
        f"{CONFIG.gossip_interval:g} s, a push-pull every {CONFIG.push_pull_interval:g} s\n"
    )
    began = anyio.current_time()
    nodes = [await cluster.start(name) for name in NAMES]
    ports = ", ".join(f"{node.name} :{node.address[1]}" for node in nodes)
    cluster.stamp(f"started {ports}")
    seed = _seed_of(cluster.nodes[SEED])
    for node in nodes:
        if node.name != SEED:
            await node.join([seed])
    cluster.stamp(f"every node joined through {SEED} at {seed}")
    done = await cluster.wait_for(
        lambda: cluster.reached(list(NAMES), MemberState.ALIVE, began), "convergence"
    )
    cluster.stamp(f"converged: every node sees all {len(NAMES)} alive", done)
    return done - began


async def _crash(cluster: _Cluster) -> list[tuple[str, float]]:
    cluster.say(f"\nKill {VICTIM}: no leave, its sockets just close")
    killed = anyio.current_time()
    cluster.kill(VICTIM)
    cluster.stamp(f"{VICTIM} killed")
    suspected = await _first_seen(cluster, VICTIM, MemberState.SUSPECT, killed)
    failed = await _first_seen(cluster, VICTIM, MemberState.DEAD, killed)
    everywhere = await _seen_everywhere(cluster, VICTIM, MemberState.DEAD, killed, "live")
    for row in cluster.table():
        cluster.say(row)
    return [
        ("kill -> first suspicion", suspected),
        ("kill -> first declared failed", failed),
        ("kill -> failed at every live node", everywhere),
    ]


async def _restart(cluster: _Cluster) -> float:
    cluster.say(f"\nRestart {VICTIM}: same name, new port")
    began = anyio.current_time()
    node = await cluster.start(VICTIM)
    await node.join([_seed_of(cluster.nodes[SEED])])
    cluster.stamp(f"{VICTIM} is back on :{node.address[1]} and joined through {SEED}")
    done = await cluster.wait_for(
        lambda: cluster.reached(list(cluster.nodes), MemberState.ALIVE, began),
        f"{VICTIM}'s rejoin",
    )
    others = len(cluster.views) - 1
    cluster.stamp(
        f"{VICTIM} alive again at {others}/{others} nodes, and sees them all alive "
        f"(+{done - began:.2f} s)",
        done,
    )
    return done - began


async def _leave(cluster: _Cluster) -> float:
    cluster.say(f"\n{LEAVER} leaves gracefully")
    began = anyio.current_time()
    cluster.stamp(f"{LEAVER} announces its leave")
    await cluster.nodes[LEAVER].leave()
    await _first_seen(cluster, LEAVER, MemberState.LEFT, began)
    everywhere = await _seen_everywhere(cluster, LEAVER, MemberState.LEFT, began, "other")
    cluster.kill(LEAVER)  # and its process exits
    for row in cluster.table():
        cluster.say(row)
    return everywhere


async def _first_seen(cluster: _Cluster, member: str, state: MemberState, since: float) -> float:
    """Wait until some node sees ``member`` in ``state`` and say which; the delay since
    ``since``."""
    word = WORDS[state]
    change = await cluster.wait_for(
        lambda: cluster.first(member, state, since), f"{member} seen {word} by any node"
    )
    delay = change.at - since
    cluster.stamp(f"{change.observer} sees {member} {word:<8} (+{delay:.2f} s)", change.at)
    return delay


async def _seen_everywhere(
    cluster: _Cluster, member: str, state: MemberState, since: float, which: str
) -> float:
    """Wait until every other running node sees ``member`` in ``state``; the delay since
    ``since``."""
    word = WORDS[state]
    done = await cluster.wait_for(
        lambda: cluster.reached([member], state, since), f"{member} {word} at every node"
    )
    count = len(cluster.views) - (member in cluster.views)
    delay = done - since
    cluster.stamp(f"{member} now {word} at {count}/{count} {which} nodes (+{delay:.2f} s)", done)
    return delay


def _seed_of(node: Node) -> str:
    host, port = node.address
    return f"{host}:{port}"
