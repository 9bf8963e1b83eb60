"""Failure detection side by side: a cluster of ``serf agent`` and a cluster of ``swim agent``.

Both clusters (``--nodes`` agents each, 20 by default, every agent its own process on 127.0.0.1)
run at the same time with the same flags: ``-profile`` (lan by default) and one ``-encrypt`` key.
The script keeps one RPC connection open to every agent (:class:`swim.rpc.RpcClient`, which
speaks Serf's RPC to either) and polls ``members`` over them, as ``serf members`` would.

1. Convergence: every agent lists every member of its cluster, all alive.
2. A quiet period (``--quiet`` s): nobody is killed, so any member that any agent reports
   "failed" is a false failure.
3. ``--kills`` times: one member of each cluster (the same position in both) gets ``kill -9`` at
   the same moment; the survivors are polled back to back (at most every ``--poll`` s) until
   every one of them reports it "failed", or ``--detect-timeout`` passes.  Recorded per kill:
   "first failed" (the first survivor to report it) and "failed everywhere" (the last), from the
   kill.  A ``--settle`` period follows each detection.  A live member reported failed during
   this phase is a false failure too.

The agents' logs, read from the start of the quiet period on, add how often a live member was
suspected ("... has failed, no acks received") and declared failed ("marking ... as failed")
(memberlist and shoal log both lines at INFO); a suspicion refuted in time never shows in
``members``.  Ratios are shoal / serf, measured in the same run.

    python benchmarks/serf_side_by_side.py [--nodes 20] [--kills 3] [--profile lan]
        [--quiet 60] [--settle 10] [--poll 0.1]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from swim.rpc import RpcClient, RpcConnectionError, RpcError

# Run as a file, this script's own directory comes first on sys.path; the agent code it
# shares with its sibling is imported from the repository root, as ``benchmarks.agents``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agents import (
    CLK_TCK,
    Agent,
    BenchError,
    check_running,
    cpu_ticks,
    free_ports,
    serf_version,
    start_agent,
    stop_all,
    until_terminated,
)

KINDS = ("serf", "shoal")
SUSPECTED = re.compile(r"suspect (\S+) has failed, no acks received", re.IGNORECASE)
DECLARED = re.compile(r"marking (\S+) as failed, suspect timeout reached", re.IGNORECASE)
REFUTED = re.compile(r"refuting a (suspect|dead) message \(from: ([^)]*)\)", re.IGNORECASE)
"""memberlist logs these three at INFO, INFO and WARN; shoal at INFO, with the same words."""


@dataclass
class View:
    """One agent's answer to ``members``: when it arrived and each member's status."""

    at: float
    statuses: dict[str, str]


@dataclass
class Detection:
    """One kill in one cluster: seconds from the kill until each survivor reported it failed."""

    victim: str
    survivors: int
    seen: dict[str, float] = field(default_factory=dict)

    @property
    def first(self) -> float | None:
        return min(self.seen.values()) if self.seen else None

    @property
    def everywhere(self) -> float | None:
        return max(self.seen.values()) if len(self.seen) == self.survivors else None


@dataclass
class ClusterRecord:
    """What one cluster did over the run."""

    agents: list[Agent]
    converged_after: float | None = None
    quiet_false: set[tuple[str, str]] = field(default_factory=set)
    """(observer, member) pairs seen "failed" during the quiet period."""
    kill_false: set[tuple[str, str]] = field(default_factory=set)
    """(observer, member) pairs seen "failed" for a live member while kills went on."""
    detections: list[Detection] = field(default_factory=list)
    unanswered: int = 0
    """Polls the agent did not answer within --rpc-timeout."""
    quiet_cpu: float = 0.0
    """CPU seconds per second per agent during the quiet period (with the polling)."""
    log_offsets: dict[str, int] = field(default_factory=dict)
    poll_rounds: list[float] = field(default_factory=list)
    """While detecting: the time from one poll round's start to the next one's."""


async def connect_all(stack: AsyncExitStack, agents: Sequence[Agent], seconds: float) -> None:
    """Open an RPC connection to every agent, retrying while they start."""
    deadline = trio.current_time() + seconds
    for agent in agents:
        while agent.client is None:
            check_running([agent])
            try:
                agent.client = await stack.enter_async_context(
                    RpcClient.connect(agent.rpc_addr, timeout=5.0)
                )
            except RpcConnectionError as exc:
                if trio.current_time() > deadline:
                    raise BenchError(f"{agent.name}: {exc}") from None
                await trio.sleep(0.5)


async def poll(
    agents: Sequence[Agent], record: Mapping[str, ClusterRecord], timeout: float
) -> dict[str, View]:
    """Ask every agent for its members at once; the views that came back within ``timeout``."""
    views: dict[str, View] = {}

    async def ask(agent: Agent) -> None:
        assert agent.client is not None
        with trio.move_on_after(timeout):
            try:
                listed = await agent.client.members()
            except (RpcError, RpcConnectionError):
                record[agent.kind].unanswered += 1
                return
            views[agent.name] = View(trio.current_time(), {m.name: m.status for m in listed})
            return
        record[agent.kind].unanswered += 1

    async with trio.open_nursery() as nursery:
        for agent in agents:
            nursery.start_soon(ask, agent)
    return views


def live(agents: Iterable[Agent]) -> list[Agent]:
    return [agent for agent in agents if agent.killed_at is None]


def converged(cluster: Sequence[Agent], views: dict[str, View]) -> bool:
    names = {agent.name for agent in cluster}
    return all(
        agent.name in views
        and set(views[agent.name].statuses) == names
        and all(status == "alive" for status in views[agent.name].statuses.values())
        for agent in cluster
    )


def gaps(cluster: Sequence[Agent], views: dict[str, View]) -> str:
    """Which agents' views lack which members (or are not alive), for progress lines."""
    names = {agent.name for agent in cluster}
    short = []
    for agent in cluster:
        view = views.get(agent.name)
        if view is None:
            short.append(f"{agent.name} did not answer")
            continue
        alive = {name for name, status in view.statuses.items() if status == "alive"}
        if alive != names:
            short.append(f"{agent.name} lacks {', '.join(sorted(names - alive)) or '-'}")
    return f"{len(short)} of {len(cluster)} views incomplete: " + "; ".join(short[:4])


def falsely_failed(
    agents: Sequence[Agent], views: dict[str, View]
) -> Iterator[tuple[Agent, str, bool]]:
    """Every (observer, member) of the views, and whether it shows a live member failed."""
    alive = {agent.name for agent in live(agents)}
    for agent in agents:
        view = views.get(agent.name)
        if view is not None:
            for member, status in view.statuses.items():
                yield agent, member, status == "failed" and member in alive


def false_failures(
    agents: Sequence[Agent], views: dict[str, View], into: Mapping[str, set[tuple[str, str]]]
) -> None:
    """Add every (observer, member) where a live member shows as failed."""
    for agent, member, falsely in falsely_failed(agents, views):
        if falsely:
            into[agent.kind].add((agent.name, member))


async def watch(
    agents: Sequence[Agent],
    record: Mapping[str, ClusterRecord],
    *,
    seconds: float,
    interval: float,
    into: Mapping[str, set[tuple[str, str]]] | None = None,
    observe: Callable[[dict[str, View]], None] | None = None,
    timeout: float,
) -> None:
    """Poll every live agent each ``interval`` for ``seconds``, noting false failures
    ``into`` (or handing each round's views to ``observe`` instead)."""
    if observe is None:
        assert into is not None
        observe = partial(false_failures, agents, into=into)
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        started = trio.current_time()
        check_running(agents)
        observe(await poll(live(agents), record, timeout))
        await trio.sleep(max(0.0, min(end, started + interval) - trio.current_time()))


async def run(args: argparse.Namespace, agents: list[Agent]) -> dict[str, ClusterRecord]:
    n = args.nodes
    ports = free_ports(4 * n)
    plan = {
        kind: [(ports[2 * (k * n + i)], ports[2 * (k * n + i) + 1]) for i in range(n)]
        for k, kind in enumerate(KINDS)
    }
    record = {kind: ClusterRecord([]) for kind in KINDS}
    clusters = {kind: record[kind].agents for kind in KINDS}
    async with AsyncExitStack() as stack:
        for kind in KINDS:
            clusters[kind].append(start_agent(agents, args, kind, 0, ports=plan[kind][0], join=""))
        await connect_all(stack, [clusters[kind][0] for kind in KINDS], 30.0)
        started = trio.current_time()
        for i in range(1, n):
            for kind in KINDS:
                join = f"127.0.0.1:{clusters[kind][0].port}"
                agent = start_agent(agents, args, kind, i, ports=plan[kind][i], join=join)
                clusters[kind].append(agent)
            await trio.sleep(args.start_gap)
        await connect_all(stack, agents, args.converge_timeout)

        reported = trio.current_time()
        while any(record[kind].converged_after is None for kind in KINDS):
            if trio.current_time() - started > args.converge_timeout:
                raise BenchError(f"no convergence within {args.converge_timeout:g} s")
            check_running(agents)
            views = await poll(agents, record, args.rpc_timeout)
            for kind in KINDS:
                if record[kind].converged_after is None and converged(clusters[kind], views):
                    record[kind].converged_after = trio.current_time() - started
            if trio.current_time() - reported >= 10.0:
                reported = trio.current_time()
                for kind in KINDS:
                    if record[kind].converged_after is None:
                        print(
                            f"  {kind}, {reported - started:.0f} s: {gaps(clusters[kind], views)}"
                        )
            await trio.sleep(0.5)
        print(
            "converged after the first join: "
            + ", ".join(f"{kind} {record[kind].converged_after:.1f} s" for kind in KINDS)
        )

        for agent in agents:
            record[agent.kind].log_offsets[agent.name] = agent.log.stat().st_size
        print(f"quiet period: {args.quiet:g} s, polling every {args.quiet_poll:g} s")
        ticks = {agent.name: cpu_ticks(agent.process.pid) for agent in agents}
        quiet_start = trio.current_time()
        quiet = {kind: record[kind].quiet_false for kind in KINDS}
        await watch(
            agents,
            record,
            seconds=args.quiet,
            interval=args.quiet_poll,
            into=quiet,
            timeout=args.rpc_timeout,
        )
        elapsed = trio.current_time() - quiet_start
        for kind in KINDS:
            used = sum(cpu_ticks(a.process.pid) - ticks[a.name] for a in clusters[kind])
            record[kind].quiet_cpu = used / CLK_TCK / elapsed / n
        print(f"load average after the quiet period: {os.getloadavg()[0]:.2f}")

        victims = random.Random(args.seed).sample(range(1, n), args.kills)
        during = {kind: record[kind].kill_false for kind in KINDS}
        for number, index in enumerate(victims, 1):
            await detect(args, agents, record, index)
            line = "; ".join(f"{kind}: {describe(record[kind].detections[-1])}" for kind in KINDS)
            print(f"kill {number}/{len(victims)}: {line}")
            await watch(
                agents,
                record,
                seconds=args.settle,
                interval=args.quiet_poll,
                into=during,
                timeout=args.rpc_timeout,
            )
    return record


async def detect(
    args: argparse.Namespace,
    agents: list[Agent],
    record: Mapping[str, ClusterRecord],
    index: int,
    *,
    timeout: float | None = None,
    observe: Callable[[dict[str, View]], None] | None = None,
) -> None:
    """Kill member ``index`` of both clusters and poll the survivors until each reports it
    failed (or ``timeout`` passes, --detect-timeout by default).  Each round's views go to
    ``observe``; by default, live members seen failed are added to the records' kill_false."""
    victims = [record[kind].agents[index] for kind in KINDS]
    for victim in victims:
        victim.process.send_signal(signal.SIGKILL)
        victim.killed_at = trio.current_time()
    for victim in victims:
        victim.process.wait(timeout=5.0)
        record[victim.kind].detections.append(
            Detection(victim.name, len(live(record[victim.kind].agents)))
        )
    during = {kind: record[kind].kill_false for kind in KINDS}
    if observe is None:
        observe = partial(false_failures, agents, into=during)
    kind_of = {agent.name: agent.kind for agent in agents}
    wait = args.detect_timeout if timeout is None else timeout
    deadline = max(v.killed_at or 0.0 for v in victims) + wait
    previous: float | None = None
    while trio.current_time() < deadline:
        started = trio.current_time()
        check_running(agents)
        if all(a.name in record[a.kind].detections[-1].seen for a in live(agents)):
            return
        if previous is not None:
            for kind in KINDS:
                record[kind].poll_rounds.append(started - previous)
        previous = started
        views = await poll(live(agents), record, args.rpc_timeout)
        observe(views)
        for victim in victims:
            detection = record[victim.kind].detections[-1]
            assert victim.killed_at is not None
            for observer, view in views.items():
                if (
                    kind_of[observer] == victim.kind
                    and observer not in detection.seen
                    and view.statuses.get(victim.name) == "failed"
                ):
                    detection.seen[observer] = view.at - victim.killed_at
        await trio.sleep(max(0.0, started + args.poll - trio.current_time()))


def describe(detection: Detection) -> str:
    first, everywhere = detection.first, detection.everywhere
    if first is None:
        return f"{detection.victim} never reported failed"
    if everywhere is None:
        return (
            f"{detection.victim} first {first:.2f} s, "
            f"only {len(detection.seen)}/{detection.survivors} by the timeout"
        )
    return f"{detection.victim} first {first:.2f} s, everywhere {everywhere:.2f} s"


def log_text(agent: Agent, start: int = 0, end: int | None = None) -> str:
    """The agent's log from byte ``start`` up to ``end`` (the end of the file by default);
    empty if it cannot be read."""
    try:
        with agent.log.open("rb") as log:
            log.seek(start)
            data = log.read() if end is None else log.read(max(0, end - start))
    except OSError:
        return ""
    return data.decode(errors="replace")


def log_counts(record: ClusterRecord) -> tuple[int, int, int]:
    """From the quiet period on: lines suspecting a live member, lines declaring a live member
    failed, and lines suspecting a killed one (a check that the patterns match)."""
    killed = {d.victim for d in record.detections}
    suspected = declared = victims = 0
    for agent in record.agents:
        text = log_text(agent, record.log_offsets.get(agent.name, 0))
        for match in SUSPECTED.finditer(text):
            if match.group(1) in killed:
                victims += 1
            else:
                suspected += 1
        declared += sum(1 for m in DECLARED.finditer(text) if m.group(1) not in killed)
    return suspected, declared, victims


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def report(args: argparse.Namespace, record: dict[str, ClusterRecord]) -> None:
    encrypted = "encrypted (one key for both)" if args.key else "plaintext"
    print(
        f"\n{args.nodes} agents per cluster, -profile={args.profile}, {encrypted}, "
        f"{args.kills} kills, both clusters running at once"
    )
    print(f"serf: {serf_version(args.serf)}; shoal: Python {sys.version.split()[0]}\n")
    print(f"{'':<38}{'serf':>12}{'shoal':>12}{'shoal/serf':>12}")

    def stat(kind: str, pick: str, how: str) -> float | None:
        found = [d.first if pick == "first" else d.everywhere for d in record[kind].detections]
        values = [v for v in found if v is not None]
        if not values or len(values) < len(found):
            return None
        return float(statistics.median(values)) if how == "median" else max(values)

    for label, pick in (('first "failed"', "first"), ("failed everywhere", "everywhere")):
        for how in ("median", "max"):
            serf, shoal = stat("serf", pick, how), stat("shoal", pick, how)
            name = f"{label}, {how}"
            print(f"{name:<38}{seconds(serf):>12}{seconds(shoal):>12}{ratio(shoal, serf):>12}")
    print(
        '  (a "-" means some kill was not reported failed everywhere within '
        f"{args.detect_timeout:g} s; see the kill lines above)"
    )

    def pairs(found: set[tuple[str, str]]) -> str:
        return f"{len({member for _, member in found})} ({len(found)} views)"

    rows: list[tuple[str, Callable[[ClusterRecord], str]]] = [
        (f"false failures, quiet {args.quiet:g} s", lambda r: pairs(r.quiet_false)),
        ("false failures, during kills", lambda r: pairs(r.kill_false)),
    ]
    for label, show in rows:
        print(f"{label:<38}{show(record['serf']):>12}{show(record['shoal']):>12}")
    print("  (members reported failed while alive; in brackets, observer/member pairs)")
    counts = {kind: log_counts(record[kind]) for kind in KINDS}
    for i, label in enumerate(
        (
            "logs: suspicions of live members",
            "logs: live members declared failed",
            "logs: suspicions of killed members",
        )
    ):
        print(f"{label:<38}{counts['serf'][i]:>12}{counts['shoal'][i]:>12}")
    serf, shoal = record["serf"].quiet_cpu, record["shoal"].quiet_cpu
    print(
        f"{'CPU per agent, quiet period (of a core)':<38}{serf:>12.2%}{shoal:>12.2%}"
        f"{ratio(shoal, serf):>12}"
    )
    rounds = record["serf"].poll_rounds
    if rounds:
        mean, most = statistics.fmean(rounds) * 1000, max(rounds) * 1000
        print(f"{'poll round while detecting':<38}{mean:.0f} ms mean, {most:.0f} ms max")
    label = "polls unanswered in time"
    print(f"{label:<38}{record['serf'].unanswered:>12}{record['shoal'].unanswered:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    flag = parser.add_argument
    flag("--nodes", type=int, default=20, help="agents per cluster")
    flag("--kills", type=int, default=3, help="members killed, one at a time, in each cluster")
    flag("--profile", default="lan", choices=("lan", "wan", "local"))
    flag("--quiet", type=float, default=60.0, help="quiet period after convergence, s")
    flag("--settle", type=float, default=10.0, help="wait after each detection, s")
    flag("--poll", type=float, default=0.1, help="least time between polls while detecting, s")
    flag("--quiet-poll", type=float, default=0.5, help="time between polls otherwise, s")
    flag("--detect-timeout", type=float, default=90.0, help="give up on a detection after, s")
    flag("--converge-timeout", type=float, default=180.0)
    flag("--rpc-timeout", type=float, default=2.0, help="a poll not answered by then is missed")
    flag("--start-gap", type=float, default=0.1, help="pause between agent starts, s")
    flag("--seed", type=int, default=1, help="picks the members to kill")
    flag("--plaintext", action="store_true", help="no -encrypt (default: one key for both)")
    flag("--serf", default=shutil.which("serf") or "/usr/bin/serf")
    flag("--logs", default=None, help="keep the agents' logs in this directory")
    args = parser.parse_args()
    if args.nodes < 3 or not 0 < args.kills <= args.nodes - 2:
        parser.error("need --nodes >= 3 and 1 <= --kills <= nodes - 2")
    if not os.access(args.serf, os.X_OK):
        parser.error(f"no serf binary at {args.serf}; pass --serf PATH")
    args.key = None if args.plaintext else base64.b64encode(os.urandom(32)).decode()
    agents: list[Agent] = []
    with tempfile.TemporaryDirectory(prefix="shoal-side-by-side-") as scratch:
        args.log_dir = args.logs or scratch
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        wall, cpu = time.monotonic(), time.process_time()
        try:
            record = trio.run(until_terminated, partial(run, args, agents))
        except BenchError as exc:
            sys.exit(f"serf_side_by_side: {exc}")
        finally:
            stop_all(agents)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        report(args, record)
        print(f"{'this script (the poller), CPU':<38}{cpu / wall:.1%} of a core over {wall:.0f} s")


if __name__ == "__main__":
    main()
