"""Real packet loss side by side: a cluster of ``serf agent`` and a cluster of ``swim agent``.

Both clusters (``--nodes`` agents each, every agent its own process) run at the same time with
the same flags (``-profile``, one ``-encrypt`` key for both), in a private network namespace that
the script creates (``ip netns add``, loopback up) and deletes at the end, whatever ends the run.
The agents bind 127.0.0.1 inside it.  Faults are nftables rules in a table of that namespace,
on the input hook only (dropping on output makes ``sendto`` fail with EPERM, which is not what
loss looks like) and only for the gossip ports, TCP and UDP alike, never the RPC ports:

- ``uniform``: every packet to or from a gossip port is dropped with probability ``--loss``
  (``numgen random mod 100 < P drop``): UDP datagrams, TCP segments to a gossip port and TCP
  segments from one (the replies on streams an agent accepted).
- ``ingress``: the same loss, only for what is sent to one member of each cluster (``--target``,
  the last by default, as in the simulator's ``lossy-member``): UDP to its port and the TCP
  streams others open to it.  Replies on streams it opens itself arrive at an ephemeral port and
  pass.
- ``flap``: one member of each cluster (``--target``) is cut off from the others for
  ``--flap-on`` seconds, then let through for ``--flap-off`` seconds, and so on (5 and 5, as the
  simulator's ``flapping`` scenario): everything sent to its port is dropped.  It can still
  send, and the replies on streams it opens pass (as through a stateful firewall that drops new
  inbound traffic).

Agents start ``--start-gap`` (0.1 s) apart in each cluster, alternating kinds, serf first, each
joining its cluster's first agent.  The faults apply once both clusters have converged
(``--faults-from start``: from the first start; then every agent but the first joins with
``-retry-join``, retried every ``--retry-interval``, because an agent whose ``-join`` dial is
lost exits, as the local profile's 1 s TCP timeout makes likely under loss).  The script keeps
one RPC connection open to every agent and polls ``members`` over all of them at once, as
``serf members`` would:

1. Start-up convergence: from the last start of a kind until every agent of that kind lists all
   of its members alive (polled every ``--converge-poll`` s, for up to ``--converge-timeout``).
2. The window, ``--duration`` s from then (polled every ``--interval`` s).  Nobody fails for
   real, so a live member reported "failed" is a false failure: counted as distinct members,
   as transitions (an observer's view of a member turning "failed") and at the end.
3. With ``--kill``, at the middle of the window one member of each cluster (the same position,
   never the target) gets ``kill -9`` at the same moment, and the survivors are polled back to
   back (at most every ``--poll`` s) until each reports it failed: "first failed" is the first
   survivor to, "failed everywhere" the last.

The agents' logs, cut at the window's start, the kill and the window's end, add what polls
cannot see: suspicions ("suspect X has failed, no acks received", one line per failed probe),
declarations ("marking X as failed, suspect timeout reached") and refutations ("refuting a
suspect message", "refuting a dead message").  memberlist and shoal write the same words.
Per node-hour rates divide the window's counts by the hours the live members ran in it.
``--json FILE`` writes all the figures, for ``benchmarks/`` scripts that compare the
simulator's rates against them.  Ratios are shoal / serf, from the same run.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), ``ip`` (iproute2), ``nft`` (nftables) and ``serf``.

    python benchmarks/loss.py [--nodes 20] [--profile lan] [--fault uniform] [--loss 0.2]
        [--duration 300] [--kill] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import trio

# Run as a file, this script's own directory comes first on sys.path; the agent code it
# shares with its siblings is imported from the repository root, as ``benchmarks.agents``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agents import (
    CLK_TCK,
    REPO,
    Agent,
    BenchError,
    Program,
    check_running,
    cpu_ticks,
    free_ports,
    serf_program,
    serf_version,
    shoal_program,
    start_agent,
    stop_all,
    until_terminated,
)
from benchmarks.serf_side_by_side import (
    DECLARED,
    KINDS,
    REFUTED,
    SUSPECTED,
    ClusterRecord,
    View,
    connect_all,
    converged,
    describe,
    detect,
    falsely_failed,
    gaps,
    live,
    log_text,
    poll,
    ratio,
    seconds,
    watch,
)

CLONE_NEWNET = 0x40000000
TABLE = "shoal_loss"
"""The nftables table (family inet) of the faults, inside the namespace."""
FAULTS = ("uniform", "ingress", "flap")


class Namespace:
    """A network namespace of this script's own, loopback up.  While the context is open this
    process (so every agent, ``nft`` and socket it starts) lives in it; closing the context
    returns the process to its own namespace, kills whatever still runs in the private one and
    deletes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._home: int | None = None
        self.leftovers: list[int] = []
        """Processes still in the namespace at the end (killed), for the report."""

    def __enter__(self) -> Namespace:
        command(["ip", "netns", "add", self.name])
        try:
            command(["ip", "-n", self.name, "link", "set", "lo", "up"])
            self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                setns(target)
            finally:
                os.close(target)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._home is not None:
            setns(self._home)
            os.close(self._home)
            self._home = None
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
                self.leftovers.append(pid)
            except ProcessLookupError:
                pass
        try:
            command(["ip", "netns", "delete", self.name])
        except BenchError as exc:
            print(f"loss: could not delete namespace {self.name}: {exc}")

    def pids(self) -> list[int]:
        try:
            listed = command(["ip", "netns", "pids", self.name])
        except BenchError:
            return []
        return [int(pid) for pid in listed.split() if int(pid) != os.getpid()]


def setns(fd: int) -> None:
    """Move this thread (and the threads and processes it starts from now on) into the network
    namespace open at ``fd``.  ``os.setns`` is Python 3.12's; this is the same call."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a short system command; its output, or BenchError with its complaint."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit status {done.returncode}"
        raise BenchError(f"{' '.join(argv)}: {why}")
    return done.stdout


class Faults:
    """The fault's nftables table: sets of ports (all gossip ports; those with loss; those cut
    off), counters of what reaches them and drop rules, on the input hook."""

    def __init__(
        self, fault: str, loss: float, gossip: Sequence[int], targets: Sequence[int]
    ) -> None:
        self.fault = fault
        self.percent = round(loss * 100)
        self.gossip = list(gossip)
        self.targets = list(targets)
        self.created = False
        self.cuts = 0
        """How many times the flap fault cut its targets off."""
        self.cut_seconds = 0.0

    def script(self) -> str:
        def ports(values: Sequence[int]) -> str:
            return f"elements = {{ {', '.join(str(p) for p in values)} }}" if values else ""

        lossy = self.gossip if self.fault == "uniform" else self.targets
        lossy = lossy if self.fault != "flap" else []
        both = "meta l4proto { tcp, udp }"
        loss = f"numgen random mod 100 < {self.percent}"
        rules = [
            f'{both} th dport @gossip counter comment "to a gossip port"',
            'tcp sport @gossip tcp dport != @gossip counter comment "tcp from a gossip port"',
            f'{both} th dport @targets counter comment "to a target"',
            f'{both} th dport @cut counter drop comment "cut"',
            f'{both} th dport @lossy {loss} counter drop comment "lost"',
        ]
        if self.fault == "uniform":
            rules.append(
                f"tcp sport @lossy tcp dport != @gossip {loss} counter drop"
                ' comment "lost, tcp from"'
            )
        return (
            f"table inet {TABLE} {{\n"
            f"  set gossip {{ type inet_service; {ports(self.gossip)} }}\n"
            f"  set targets {{ type inet_service; {ports(self.targets)} }}\n"
            f"  set lossy {{ type inet_service; {ports(lossy)} }}\n"
            f"  set cut {{ type inet_service; }}\n"
            f"  chain input {{\n"
            f"    type filter hook input priority -300; policy accept;\n"
            + "".join(f"    {rule}\n" for rule in rules)
            + "  }\n}\n"
        )

    def create(self) -> None:
        command(["nft", "-f", "-"], self.script())
        self.created = True

    def delete(self) -> None:
        if self.created:
            self.created = False
            command(["nft", "delete", "table", "inet", TABLE])

    def counters(self) -> dict[str, int]:
        """Packets per counter (by its comment) so far."""
        listing = json.loads(command(["nft", "-j", "list", "table", "inet", TABLE]))
        counts: dict[str, int] = {}
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule and "comment" in rule:
                counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
                counts[rule["comment"]] = int(counter["packets"])
        return counts

    async def flap(self, on: float, off: float) -> None:
        """Cut the targets off for ``on`` seconds, let them through for ``off`` seconds, and
        so on until cancelled (then they are let through again)."""
        elements = "{ " + ", ".join(str(p) for p in self.targets) + " }"
        while True:
            cut_at = trio.current_time()
            try:
                await trio.run_process(["nft", "add", "element", "inet", TABLE, "cut", elements])
                self.cuts += 1
                await trio.sleep(on)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.run_process(["nft", "flush", "set", "inet", TABLE, "cut"])
                self.cut_seconds += trio.current_time() - cut_at
            await trio.sleep(off)


@dataclass
class Phase:
    """Live members seen "failed" by the polls during one phase of the run."""

    members: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    """(observer, member)."""
    transitions: int = 0
    """Times an observer's view of a live member turned "failed"."""


@dataclass
class LogCounts:
    """Lines of a cluster's logs in one phase."""

    suspected: int = 0
    """Failed probes of live members ("suspect X has failed, no acks received")."""
    declared: int = 0
    """Live members declared failed ("marking X as failed, suspect timeout reached")."""
    refuted: int = 0
    """Members refuting a suspicion or a death of their own."""
    victim_suspected: int = 0
    victim_declared: int = 0


@dataclass
class LossRecord(ClusterRecord):
    """What one cluster did over the run."""

    last_start: float = 0.0
    startup: Phase = field(default_factory=Phase)
    window: Phase = field(default_factory=Phase)
    failed: set[tuple[str, str]] = field(default_factory=set)
    """(observer, live member) pairs "failed" in the latest answer of each observer."""
    marks: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per agent, its log's size at "window", "kill" and "end"."""
    live_seconds: float = 0.0
    cpu: float | None = None
    """CPU seconds per second per agent in the window (the members that were not killed)."""
    """Seconds the members of the cluster were alive in the window, summed."""
    logs: dict[str, LogCounts] = field(default_factory=dict)
    """Per phase ("startup", "window")."""


@dataclass
class Run:
    """The whole run, for the report and the JSON."""

    records: dict[str, LossRecord]
    counters: dict[str, int] = field(default_factory=dict)
    window: float = 0.0
    victim: int | None = None
    loads: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    cuts: int = 0
    cut_seconds: float = 0.0
    poller_cpu: float = 0.0
    """This script's CPU seconds per second in the window."""


def observe(
    agents: Sequence[Agent], records: Mapping[str, LossRecord], phase: str, views: dict[str, View]
) -> None:
    """Note the live members each view shows "failed", for ``phase``."""
    for agent, member, falsely in falsely_failed(agents, views):
        record = records[agent.kind]
        into = record.startup if phase == "startup" else record.window
        pair = (agent.name, member)
        if not falsely:
            record.failed.discard(pair)
            continue
        if pair not in record.failed:
            record.failed.add(pair)
            into.transitions += 1
        into.members.add(member)
        into.pairs.add(pair)


def mark(records: Mapping[str, LossRecord], name: str) -> None:
    """Note every agent's log size now, as the start or end of a phase."""
    for record in records.values():
        for agent in record.agents:
            try:
                size = agent.log.stat().st_size
            except OSError:
                size = 0
            record.marks.setdefault(agent.name, {})[name] = size


def count_logs(record: LossRecord, victim: str | None) -> None:
    """Count the lines of every phase in the cluster's logs: start-up up to "window", the
    window from there to "end".  Lines about the victim count as about a live member up to
    "kill"."""
    for phase, start, end in (("startup", None, "window"), ("window", "window", "end")):
        counts = record.logs.setdefault(phase, LogCounts())
        for agent in record.agents:
            marks = record.marks.get(agent.name, {})
            first = marks.get(start, 0) if start else 0
            last = marks.get(end)
            kill = marks.get("kill")
            pieces = [(first, last, False)]
            if phase == "window" and kill is not None:
                pieces = [(first, kill, False), (kill, last, True)]
            for begin, stop, dead in pieces:
                text = log_text(agent, begin, stop)
                for match in SUSPECTED.finditer(text):
                    if dead and match.group(1) == victim:
                        counts.victim_suspected += 1
                    else:
                        counts.suspected += 1
                for match in DECLARED.finditer(text):
                    if dead and match.group(1) == victim:
                        counts.victim_declared += 1
                    else:
                        counts.declared += 1
                counts.refuted += sum(1 for _ in REFUTED.finditer(text))


def joining(args: argparse.Namespace, kind: str, seed: str) -> tuple[Program, str]:
    """What an agent of ``kind`` after the first runs, and its ``-join``: with faults from the
    start, ``-retry-join`` instead, so that a lost join dial is retried (both agents support
    it) rather than fatal."""
    program = serf_program(args.serf) if kind == "serf" else shoal_program()
    if args.faults_from != "start":
        return program, seed
    retry = (f"-retry-join={seed}", f"-retry-interval={args.retry_interval:g}s")
    return Program(program.command, (*program.flags, *retry), program.checkout), ""


async def run(args: argparse.Namespace, agents: list[Agent], outcome: Run) -> Run:
    n = args.nodes
    ports = free_ports(4 * n)
    plan = {
        kind: [(ports[2 * (k * n + i)], ports[2 * (k * n + i) + 1]) for i in range(n)]
        for k, kind in enumerate(KINDS)
    }
    records = outcome.records
    clusters = {kind: records[kind].agents for kind in KINDS}
    targets = [] if args.fault == "uniform" else [plan[kind][args.target][0] for kind in KINDS]
    faults = Faults(args.fault, args.loss, [p for kind in KINDS for p, _ in plan[kind]], targets)
    outcome.loads["start"] = os.getloadavg()
    try:
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:

            def start_faults() -> None:
                faults.create()
                if args.fault == "flap":
                    nursery.start_soon(faults.flap, args.flap_on, args.flap_off)

            if args.faults_from == "start":
                start_faults()
            for kind in KINDS:
                first = start_agent(agents, args, kind, 0, ports=plan[kind][0], join="")
                clusters[kind].append(first)
            await connect_all(stack, [clusters[kind][0] for kind in KINDS], 30.0)
            for i in range(1, n):
                for kind in KINDS:
                    seed = f"127.0.0.1:{clusters[kind][0].port}"
                    program, join = joining(args, kind, seed)
                    agent = start_agent(
                        agents, args, kind, i, ports=plan[kind][i], join=join, program=program
                    )
                    clusters[kind].append(agent)
                    records[kind].last_start = trio.current_time()
                    await trio.sleep(args.start_gap / 2)
            await connect_all(stack, agents, args.converge_timeout)
            await converge(args, agents, records)

            mark(records, "window")
            ticks = {agent.name: cpu_ticks(agent.process.pid) for agent in agents}
            poller = time.process_time()
            outcome.loads["window"] = os.getloadavg()
            if args.faults_from == "window":
                start_faults()
            window_start = trio.current_time()
            end = window_start + args.duration
            print(
                f"window: {args.duration:g} s, polling every {args.interval:g} s"
                + (f", kill at {args.duration / 2:g} s" if args.kill else "")
            )
            during = partial(observe, agents, records, "window")
            if args.kill:
                await watch(
                    agents,
                    records,
                    seconds=args.duration / 2,
                    interval=args.interval,
                    observe=during,
                    timeout=args.rpc_timeout,
                )
                choices = [i for i in range(1, n) if not targets or i != args.target]
                outcome.victim = random.Random(args.seed).choice(choices)
                mark(records, "kill")
                await detect(
                    args,
                    agents,
                    records,
                    outcome.victim,
                    timeout=max(1.0, min(args.detect_timeout, end - trio.current_time())),
                    observe=during,
                )
                line = "; ".join(f"{k}: {describe(records[k].detections[-1])}" for k in KINDS)
                print(f"kill: {line}")
            await watch(
                agents,
                records,
                seconds=max(0.0, end - trio.current_time()),
                interval=args.interval,
                observe=during,
                timeout=args.rpc_timeout,
            )
            window_end = trio.current_time()
            mark(records, "end")
            for record in records.values():
                kept = live(record.agents)
                used = sum(cpu_ticks(a.process.pid) - ticks[a.name] for a in kept)
                record.cpu = used / CLK_TCK / (trio.current_time() - window_start) / len(kept)
            outcome.poller_cpu = (time.process_time() - poller) / (
                trio.current_time() - window_start
            )
            outcome.window = window_end - window_start
            outcome.loads["end"] = os.getloadavg()
            if faults.created:
                outcome.counters = faults.counters()
            nursery.cancel_scope.cancel()
    finally:
        outcome.cuts, outcome.cut_seconds = faults.cuts, faults.cut_seconds
        faults.delete()
    for record in records.values():
        record.live_seconds = sum(
            min(window_end, agent.killed_at or window_end) - window_start for agent in record.agents
        )
    return outcome


async def converge(
    args: argparse.Namespace, agents: list[Agent], records: Mapping[str, LossRecord]
) -> None:
    """Poll until every agent of each kind lists all of its members alive (or the time is up:
    then the run goes on, with that kind's convergence unknown)."""
    clusters = {kind: records[kind].agents for kind in KINDS}
    deadline = max(r.last_start for r in records.values()) + args.converge_timeout
    reported = trio.current_time()
    while any(records[kind].converged_after is None for kind in KINDS):
        if trio.current_time() > deadline:
            print(f"  no convergence within {args.converge_timeout:g} s; the window starts now")
            break
        started = trio.current_time()
        check_running(agents)
        views = await poll(agents, records, args.rpc_timeout)
        observe(agents, records, "startup", views)
        for kind in KINDS:
            record = records[kind]
            if record.converged_after is None and converged(clusters[kind], views):
                at = max(views[agent.name].at for agent in clusters[kind])
                record.converged_after = at - record.last_start
        if trio.current_time() - reported >= 10.0:
            reported = trio.current_time()
            for kind in KINDS:
                if records[kind].converged_after is None:
                    since = reported - records[kind].last_start
                    print(f"  {kind}, {since:.0f} s: {gaps(clusters[kind], views)}")
        await trio.sleep(max(0.0, started + args.converge_poll - trio.current_time()))
    print(
        "converged after the last start: "
        + ", ".join(f"{kind} {seconds(records[kind].converged_after)}" for kind in KINDS)
    )


def describe_fault(args: argparse.Namespace) -> str:
    percent = f"{round(args.loss * 100)}%"
    if args.fault == "uniform":
        return f"uniform loss of {percent} on every gossip port"
    if args.fault == "ingress":
        return f"loss of {percent} at member {args.target:02d}'s ingress only"
    return (
        f"member {args.target:02d}'s ingress cut for {args.flap_on:g} s "
        f"every {args.flap_on + args.flap_off:g} s"
    )


def shoal_commit() -> str:
    try:
        head = command(["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"]).strip()
        dirty = command(["git", "-C", str(REPO), "status", "--porcelain", "-uno"]).strip()
    except BenchError:
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def figures(args: argparse.Namespace, outcome: Run) -> dict[str, Any]:
    """Everything the report shows, as plain data (the --json file)."""
    kinds: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        record = outcome.records[kind]
        hours = record.live_seconds / 3600
        window = record.logs.get("window", LogCounts())
        startup = record.logs.get("startup", LogCounts())
        detection = record.detections[-1] if record.detections else None

        def per_hour(count: int, hours: float = hours) -> float | None:
            return count / hours if hours > 0 else None

        kinds[kind] = {
            "convergence_s": record.converged_after,
            "node_hours": hours,
            "false_failed_members": len(record.window.members),
            "false_failed_pairs": len(record.window.pairs),
            "false_failed_transitions": record.window.transitions,
            "still_failed_at_end": len({member for _, member in record.failed}),
            "false_suspicions": window.suspected,
            "false_failures": window.declared,
            "refutations": window.refuted,
            "false_suspicions_per_node_hour": per_hour(window.suspected),
            "false_failures_per_node_hour": per_hour(window.declared),
            "false_failed_transitions_per_node_hour": per_hour(record.window.transitions),
            "refutations_per_node_hour": per_hour(window.refuted),
            "crash": None
            if detection is None
            else {
                "victim": detection.victim,
                "first_failed_s": detection.first,
                "failed_everywhere_s": detection.everywhere,
                "survivors": detection.survivors,
                "reported": len(detection.seen),
                "suspicions_logged": window.victim_suspected,
                "declarations_logged": window.victim_declared,
            },
            "startup": {
                "false_failed_members": len(record.startup.members),
                "false_failed_transitions": record.startup.transitions,
                "false_suspicions": startup.suspected,
                "false_failures": startup.declared,
                "refutations": startup.refuted,
            },
            "polls_unanswered": record.unanswered,
            "cpu_per_agent": record.cpu,
        }
    ratios: dict[str, float | None] = {}
    for key, value in kinds["shoal"].items():
        theirs = kinds["serf"][key]
        if isinstance(value, int | float) and isinstance(theirs, int | float) and theirs > 0:
            ratios[key] = value / theirs
    seen = outcome.counters.get("to a gossip port", 0) + outcome.counters.get(
        "tcp from a gossip port", 0
    )
    dropped = sum(v for k, v in outcome.counters.items() if k.startswith("lost"))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": sys.argv,
        "nodes": args.nodes,
        "profile": args.profile,
        "fault": args.fault,
        "fault_description": describe_fault(args),
        "loss": args.loss if args.fault != "flap" else None,
        "target": None if args.fault == "uniform" else args.target,
        "flap": {"on_s": args.flap_on, "off_s": args.flap_off, "cuts": outcome.cuts}
        if args.fault == "flap"
        else None,
        "faults_from": args.faults_from,
        "duration_s": args.duration,
        "window_s": outcome.window,
        "kill": args.kill,
        "versions": {
            "serf": serf_version(args.serf),
            "shoal": shoal_commit(),
            "python": sys.version.split()[0],
            "trio": trio.__version__,
            "nft": command(["nft", "--version"]).strip(),
        },
        "load_average": {k: list(v) for k, v in outcome.loads.items()},
        "poller_cpu": outcome.poller_cpu,
        "packets": {
            "to_or_from_gossip_ports": seen,
            "to_targets": outcome.counters.get("to a target", 0),
            "lost": dropped,
            "cut": outcome.counters.get("cut", 0),
        },
        "kinds": kinds,
        "ratios": ratios,
    }


def report(args: argparse.Namespace, data: dict[str, Any]) -> None:
    versions = data["versions"]
    print(
        f"\n{args.nodes} agents per kind, -profile={args.profile}, encrypted (one key for both), "
        f"both kinds running at once in one namespace\n"
        f"fault: {data['fault_description']} (TCP and UDP, input hook), "
        f"{'from the window on' if args.faults_from == 'window' else 'from the first start'}; "
        f"window {data['window_s']:.0f} s" + (", one kill -9 at mid-window" if args.kill else "")
    )
    print(
        f"serf: {versions['serf']}; shoal: {versions['shoal']}, Python {versions['python']}, "
        f"trio {versions['trio']}; {versions['nft']}"
    )
    loads = ", ".join(f"{k} {v[0]:.2f}" for k, v in data["load_average"].items())
    print(f"load average (1 min): {loads}")
    packets = data["packets"]
    if args.fault == "uniform" and packets["to_or_from_gossip_ports"]:
        dropped = packets["lost"] / packets["to_or_from_gossip_ports"]
        print(f"nftables dropped {dropped:.1%} of {packets['to_or_from_gossip_ports']:,} packets")
    elif args.fault == "ingress" and packets["to_targets"]:
        dropped = packets["lost"] / packets["to_targets"]
        print(f"nftables dropped {dropped:.1%} of {packets['to_targets']:,} packets to the targets")
    elif args.fault == "flap":
        print(
            f"cut {data['flap']['cuts']} times; dropped {packets['cut']:,} of "
            f"{packets['to_targets']:,} packets to the targets"
        )
    print()
    serf, shoal = data["kinds"]["serf"], data["kinds"]["shoal"]

    def row(label: str, ours: Any, theirs: Any, show: Callable[[Any], str] = str) -> None:
        numbers = isinstance(ours, int | float) and isinstance(theirs, int | float)
        print(
            f"{label:<46}{show(theirs):>12}{show(ours):>12}"
            f"{ratio(ours, theirs) if numbers else '-':>12}"
        )

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(f"{'':<46}{'serf':>12}{'shoal':>12}{'shoal/serf':>12}")
    row(
        "start-up convergence, from the last start",
        shoal["convergence_s"],
        serf["convergence_s"],
        seconds,
    )
    for label, key in (
        ('false "failed": live members (distinct)', "false_failed_members"),
        ('false "failed": transitions in polls', "false_failed_transitions"),
        ('false "failed": members still failed at end', "still_failed_at_end"),
        ("logs: suspicions of live members", "false_suspicions"),
        ("logs: live members declared failed", "false_failures"),
        ("logs: refutations", "refutations"),
    ):
        row(label, shoal[key], serf[key])
    for label, key in (
        ("per node-hour: false suspicions", "false_suspicions_per_node_hour"),
        ("per node-hour: false failures (declared)", "false_failures_per_node_hour"),
        ("per node-hour: refutations", "refutations_per_node_hour"),
    ):
        row(label, shoal[key], serf[key], rate)
    if args.kill and serf["crash"] and shoal["crash"]:
        for label, key in (
            ('crash: first "failed"', "first_failed_s"),
            ("crash: failed everywhere", "failed_everywhere_s"),
        ):
            row(label, shoal["crash"][key], serf["crash"][key], seconds)
        row(
            "crash: survivors that reported it",
            f"{shoal['crash']['reported']}/{shoal['crash']['survivors']}",
            f"{serf['crash']['reported']}/{serf['crash']['survivors']}",
        )
        row(
            "crash: suspicions of it (log lines)",
            shoal["crash"]["suspicions_logged"],
            serf["crash"]["suspicions_logged"],
        )
    for label, key in (
        ('start-up: live members seen "failed"', "false_failed_members"),
        ("start-up: suspicions of live members (logs)", "false_suspicions"),
        ("start-up: live members declared failed (logs)", "false_failures"),
    ):
        row(label, shoal["startup"][key], serf["startup"][key])
    row("polls unanswered in time", shoal["polls_unanswered"], serf["polls_unanswered"])

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    row(
        "CPU per agent in the window (of a core)",
        shoal["cpu_per_agent"],
        serf["cpu_per_agent"],
        share,
    )
    print(f"{'this script (the poller), CPU':<46}{share(data['poller_cpu']):>12}")
    print(
        f"  (node-hours in the window: serf {serf['node_hours']:.2f}, "
        f"shoal {shoal['node_hours']:.2f}; a suspicion is one failed probe's log line)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    flag = parser.add_argument
    flag("--nodes", type=int, default=20, help="agents per kind")
    flag("--profile", default="lan", choices=("lan", "local", "wan"))
    flag("--fault", default="uniform", choices=FAULTS)
    flag("--loss", type=float, default=0.2, help="drop probability (uniform, ingress)")
    flag("--duration", type=float, default=300.0, help="the window after convergence, s")
    flag("--kill", action="store_true", help="kill -9 one member of each kind at mid-window")
    flag("--target", type=int, default=None, help="the member ingress and flap hit (last)")
    flag("--flap-on", type=float, default=5.0, help="how long each cut lasts, s")
    flag("--flap-off", type=float, default=5.0, help="how long between cuts, s")
    flag("--faults-from", default="window", choices=("window", "start"), help="when faults begin")
    flag("--retry-interval", type=float, default=1.0, help="-retry-interval with faults from start")
    flag("--json", default=None, metavar="FILE", help="write the figures to FILE as JSON")
    flag("--interval", type=float, default=0.5, help="time between polls in the window, s")
    flag("--poll", type=float, default=0.1, help="least time between polls while detecting, s")
    flag("--converge-poll", type=float, default=0.25, help="time between start-up polls, s")
    flag("--converge-timeout", type=float, default=120.0, help="from the last start, s")
    flag("--detect-timeout", type=float, default=90.0, help="give up on a detection after, s")
    flag("--rpc-timeout", type=float, default=2.0, help="a poll not answered by then is missed")
    flag("--start-gap", type=float, default=0.1, help="pause between starts of one kind, s")
    flag("--seed", type=int, default=1, help="picks the member to kill")
    flag("--serf", default=shutil.which("serf") or "/usr/bin/serf")
    flag("--logs", default=None, help="keep the agents' logs in this directory")
    args = parser.parse_args()
    if args.target is None:
        args.target = args.nodes - 1
    if args.nodes < 3 or not 1 <= args.target < args.nodes:
        parser.error("need --nodes >= 3 and 1 <= --target < --nodes")
    if not 0 < args.loss <= 1 or abs(args.loss * 100 - round(args.loss * 100)) > 1e-9:
        parser.error("--loss is a probability in whole percent: 0.01 to 1")
    if not os.access(args.serf, os.X_OK):
        parser.error(f"no serf binary at {args.serf}; pass --serf PATH")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            parser.error(f"needs {tool} (apt-get install -y iproute2 nftables)")
    if os.geteuid() != 0:
        parser.error("needs root, for the network namespace and nftables")
    args.key = base64.b64encode(os.urandom(32)).decode()

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise BenchError("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    agents: list[Agent] = []
    outcome = Run({kind: LossRecord([]) for kind in KINDS})
    namespace = Namespace(f"shoal-loss-{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="shoal-loss-") as scratch:
        args.log_dir = args.logs or scratch
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        try:
            with namespace:
                print(f"namespace {namespace.name}; {describe_fault(args)}")
                try:
                    trio.run(until_terminated, partial(run, args, agents, outcome))
                finally:
                    # Whatever ended the run, a second signal must not stop the clean-up.
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    stop_all(agents)
        except BenchError as exc:
            sys.exit(f"loss: {exc}")
        except KeyboardInterrupt:
            sys.exit("loss: interrupted")
        finally:
            if namespace.leftovers:
                print(f"killed {len(namespace.leftovers)} processes left in the namespace")
        victim = None if outcome.victim is None else f"{outcome.victim:02d}"
        for kind in KINDS:
            count_logs(outcome.records[kind], victim and f"{kind}-{victim}")
        data = figures(args, outcome)
    report(args, data)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
