"""The attack suite of issue 12: targeted input against a live `swim agent` in a mixed cluster.

Each test starts a fresh cluster of one real `serf agent` (Serf 0.9.4) and one `swim agent`
subprocess joined to it (fresh, so that one attack's damage cannot fail the next one's checks,
and each failure names its own attack), attacks the shoal agent from plain sockets on loopback
with bytes built by shoal's own encoders (:mod:`tests.interop.attacker`), and then runs the one
shared check, :func:`assert_unharmed`:

* the shoal agent still runs, answers RPC (``members``) within :data:`RPC_LIMIT`, and its RSS
  stays within :data:`SHOAL_RSS_GROWTH` of what it was before the attack;
* the serf agent answers RPC within :data:`RPC_LIMIT`, its RSS stays within
  :data:`SERF_RSS_GROWTH`, it sees the shoal agent alive (`serf members -format=json`), it never
  marked it failed, and it knows no member but the cluster's own (none of the attack's fakes);
* the shoal agent's log has no traceback, no control character but the newlines between
  records, and no line that is not one of its records (a forged line).

Attack-specific expectations (CPU share, a join in time, refused replays, a graceful leave)
are checked in the same pass, so that a failure lists every check that failed.  Each test
prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from swim import wire
from swim.rpc import RpcClient, RpcConnectionError, RpcError, RpcMember
from swim.wire import lzw
from swim.wire import serf as serf_wire
from swim.wire.limits import MAX_DECOMPRESSED_BYTES
from swim.wire.messages import Ping, encode
from tests.interop import attacker
from tests.interop.attacker import Datagrams
from tests.interop.conftest import LOCAL, LOOPBACK, Agent, Agents, eventually

MiB = 1 << 20

RPC_LIMIT = 2.0
"""Seconds within which an agent must answer an RPC ``members`` (connect, handshake, reply)."""
SHOAL_RSS_GROWTH = 100 * MiB
"""How much the shoal agent's RSS may grow over its baseline (VmRSS once the cluster has
formed: 37 to 39 MiB today).  A healthy agent grows by a few MiB across any of these attacks;
100 MiB leaves room for the allocator and for transient buffers of a refused packet or stream
(a 64 KiB datagram, a 20 MiB stream), while any attack that keeps its payload or its fake
members around (4 x 30 MB user events, 100,000 members) exceeds it."""
SERF_RSS_GROWTH = 50 * MiB
"""How much the serf agent's RSS may grow over its baseline (9 to 10 MiB today).  It only ever sees
the shoal agent's own traffic, so it should grow by next to nothing; 50 MiB is far above noise
and far below what absorbing a flood of members or 30 MB events costs it."""
CPU_LIMIT = 0.5
"""The share of one core the shoal agent may use while it receives 15 LZW bombs a second."""
SETTLE_LIMIT = 5.0
"""After an attack, how long serf may take to see the shoal agent alive again."""
OBSERVE = 2.0
"""How long each attack lets the agent chew on what it was sent before the checks (two probe
intervals, twenty gossip rounds of the local profile)."""
WATCH_EVERY = 0.25
"""How often the responsiveness watch times an RPC round trip during an attack."""
CONVERGE = 10.0
"""How long the two agents may take to see each other alive when the cluster starts."""
KEY = bytes(range(32))
"""The gossip key of the encrypted cluster: the attacker of the replay test knows it."""

SERF_NAME = "serf-0"
SHOAL_NAME = "shoal-0"
RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\] [\w.]+: "
)
"""How every line of the shoal agent's log starts (``logging.basicConfig`` in swim.agent)."""
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""Control characters: none may reach the log (newline and tab may, between records)."""


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclass(frozen=True)
class Setup:
    """How the cluster for one attack starts."""

    key: bytes | None = None
    """Both agents encrypt with this key."""
    full_disk: bool = False
    """The shoal agent keeps a snapshot on a 1 MiB tmpfs of its own, which the test can fill."""


@dataclass
class Cluster:
    """One serf agent and one shoal agent that joined it, with their RSS before the attack."""

    agents: Agents
    serf: Agent
    shoal: Agent
    baseline: dict[str, int]
    disk: Path | None = None
    legit: set[str] = field(default_factory=lambda: {SERF_NAME, SHOAL_NAME})
    """Every member the cluster really has; any other name in a view is the attacker's."""


def full_disk_wrapper(disk: Path) -> list[str]:
    """A command prefix that runs the agent in a mount namespace of its own with a 1 MiB tmpfs
    on ``disk`` (nothing leaks to the machine's mounts, and the mount ends with the agent)."""
    if shutil.which("unshare") is None:
        pytest.fail("the full-disk attack needs `unshare` (util-linux)", pytrace=False)
    mount = 'mount -t tmpfs -o size=1m attack-disk "$0" && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, str(disk)]


@pytest.fixture
async def cluster(agents: Agents, request: pytest.FixtureRequest) -> Cluster:
    """A serf agent, and a shoal agent that joined it, both alive in both views (see
    :class:`Setup`; tests pick one with indirect parametrization)."""
    setup: Setup = getattr(request, "param", Setup())
    serf = await agents.start(SERF_NAME, encrypt=setup.key)
    disk: Path | None = None
    wrapper: list[str] = []
    extra: list[str] = []
    if setup.full_disk:
        disk = agents.directory / "disk"
        disk.mkdir()
        wrapper = full_disk_wrapper(disk)
        extra = [f"-snapshot={disk / 'shoal.snapshot'}"]
    shoal = await agents.start(
        SHOAL_NAME, shoal=True, encrypt=setup.key, join=[serf], extra=extra, wrapper=wrapper
    )

    async def formed() -> None:
        for agent in (serf, shoal):
            statuses = await agent.statuses()
            assert statuses == {SERF_NAME: "alive", SHOAL_NAME: "alive"}, agent.name

    await eventually(formed, CONVERGE, "the serf and shoal agents alive in both views")
    baseline = {agent.name: attacker.rss_bytes(agent.pid) for agent in (serf, shoal)}
    return Cluster(agents, serf, shoal, baseline, disk)


# ---------------------------------------------------------------------------------------------
# Measuring


async def rpc_members(agent: Agent, limit: float = RPC_LIMIT) -> tuple[float, list[RpcMember]]:
    """Connect to ``agent``'s RPC, shake hands and list the members, within ``limit``
    seconds; how long it took and the members.  Raises :class:`AssertionError` otherwise."""
    start = trio.current_time()
    try:
        with trio.fail_after(limit):
            async with RpcClient.connect(agent.rpc_address, timeout=limit) as client:
                members = await client.members()
    except trio.TooSlowError:
        raise AssertionError(f"{agent.name} did not answer RPC members in {limit:g} s") from None
    except (RpcConnectionError, RpcError, OSError) as exc:
        raise AssertionError(f"{agent.name} RPC members failed: {exc}") from None
    return trio.current_time() - start, members


async def rpc_stats(agent: Agent, limit: float = RPC_LIMIT) -> dict[str, dict[str, str]]:
    """``agent``'s RPC stats (``serf info``), within ``limit`` seconds."""
    try:
        with trio.fail_after(limit):
            async with RpcClient.connect(agent.rpc_address, timeout=limit) as client:
                return await client.stats()
    except trio.TooSlowError:
        raise AssertionError(f"{agent.name} did not answer RPC stats in {limit:g} s") from None
    except (RpcConnectionError, RpcError, OSError) as exc:
        raise AssertionError(f"{agent.name} RPC stats failed: {exc}") from None


async def shoal_counts(agent: Agent) -> str:
    """The shoal agent's member and packet counts, for the notes (it may be too busy)."""
    try:
        stats = await rpc_stats(agent, limit=10.0)
    except AssertionError as exc:
        return str(exc)
    return (
        f"shoal's view: {stats['serf']['members']} members; "
        f"{stats['memberlist']['packets_in']} packets in, "
        f"{stats['memberlist']['decode_errors']} undecodable"
    )


@dataclass
class Watch:
    """How the shoal agent answered RPC while an attack ran: every round trip, timed, and the
    one still waiting when the attack ended."""

    times: list[float] = field(default_factory=list)
    failures: int = 0
    waiting_since: float | None = None
    still_waiting: float = 0.0

    def summary(self) -> str:
        late = sum(1 for t in self.times if t > RPC_LIMIT)
        text = (
            f"RPC during the attack: worst {max(self.times, default=0.0):.2f} s, {late} of "
            f"{len(self.times)} over {RPC_LIMIT:g} s, {self.failures} failed"
        )
        if self.still_waiting:
            text += f", one unanswered after {self.still_waiting:.1f} s"
        return text


@asynccontextmanager
async def watching(agent: Agent) -> AsyncIterator[Watch]:
    """Time an RPC round trip to ``agent`` every :data:`WATCH_EVERY` seconds while the block
    runs (each waits at most 30 s: a blocked agent shows as a long one)."""
    watch = Watch()

    async def loop() -> None:
        while True:
            start = watch.waiting_since = trio.current_time()
            try:
                await rpc_members(agent, limit=30.0)
            except AssertionError:
                watch.failures += 1
            watch.waiting_since = None
            watch.times.append(trio.current_time() - start)
            await trio.sleep(WATCH_EVERY)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        yield watch
        if watch.waiting_since is not None:
            watch.still_waiting = trio.current_time() - watch.waiting_since
        nursery.cancel_scope.cancel()


async def anti_entropy(cluster: Cluster) -> str:
    """Have serf push-pull with the shoal agent now (`serf join`, as the periodic
    anti-entropy would within 15 s): the path by which accepted junk reaches serf."""
    start = trio.current_time()
    status, out = await cluster.serf.cli("join", cluster.shoal.seed, check=False)
    took = trio.current_time() - start
    return f"serf push-pull with shoal: exit {status} after {took:.1f} s: {out.strip()[:200]}"


async def serf_view(agent: Agent) -> dict[str, str]:
    """Every member's status as `serf members -format=json` through ``agent`` shows it;
    :class:`AssertionError` when the command fails, hangs or prints no JSON."""
    try:
        return await agent.statuses()
    except trio.TooSlowError:
        raise AssertionError(f"`serf members` through {agent.name} hung") from None
    except json.JSONDecodeError as exc:
        raise AssertionError(f"`serf members` through {agent.name}: not JSON ({exc})") from None


def mib(size: int) -> str:
    return f"{size / MiB:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# The shared check


def raw_log(agent: Agent) -> str:
    """``agent``'s log exactly as written: no newline translation, which would turn a carriage
    return from the network into a line break and hide it."""
    return agent.log_path.read_bytes().decode(errors="replace")


def log_problems(text: str) -> list[str]:
    """What is wrong with a shoal agent's log: tracebacks, control characters, forged lines."""
    problems = []
    if "Traceback" in text:
        at = text.index("Traceback")
        problems.append(f"shoal log has a traceback: {text[at : at + 600]!r}")
    controls = CONTROL.findall(text)
    if controls:
        found = sorted(set(controls))
        problems.append(f"shoal log has {len(controls)} raw control character(s): {found!r}")
    foreign = [line for line in text.split("\n") if line and not RECORD.match(line)]
    if foreign:
        problems.append(
            f"shoal log has {len(foreign)} line(s) that are no log record of its own, "
            f"the first: {foreign[0][:200]!r}"
        )
    return problems


async def assert_unharmed(
    cluster: Cluster,
    attack: str,
    *,
    failures: Sequence[str] = (),
    notes: Sequence[str] = (),
    refused_names: Collection[str] = (),
    serf_log_free_of: Sequence[str] = (),
) -> None:
    """The shared check after each attack (see the module docstring), plus the attack's own
    ``failures``; prints what was measured, then fails listing every check that failed.
    ``refused_names`` must be in neither agent's view; ``serf_log_free_of`` are strings the
    attack must not have made serf log."""
    problems = list(failures)
    measured = list(notes)
    serf, shoal = cluster.serf, cluster.shoal

    # the shoal agent
    if shoal.process.poll() is not None:
        problems.append(f"the shoal agent exited with status {shoal.process.returncode}")
    else:
        try:
            took, members = await rpc_members(shoal)
            measured.append(f"shoal RPC members: {took:.2f} s, {len(members)} members")
            accepted = sorted(m.name for m in members if m.name in refused_names)
            if accepted:
                problems.append(f"shoal accepted {len(accepted)} bad member(s): {accepted[:5]!r}")
        except AssertionError as exc:
            problems.append(str(exc))
        rss, before = attacker.rss_bytes(shoal.pid), cluster.baseline[shoal.name]
        measured.append(f"shoal RSS {mib(before)} -> {mib(rss)}")
        if rss > before + SHOAL_RSS_GROWTH:
            problems.append(
                f"shoal RSS grew from {mib(before)} to {mib(rss)}, "
                f"over the {mib(SHOAL_RSS_GROWTH)} allowed"
            )

    # the serf agent
    if serf.process.poll() is not None:
        problems.append(f"the serf agent exited with status {serf.process.returncode}")
    else:
        try:
            took, _ = await rpc_members(serf)
            measured.append(f"serf RPC members: {took:.2f} s")
        except AssertionError as exc:
            problems.append(str(exc))
        rss, before = attacker.rss_bytes(serf.pid), cluster.baseline[serf.name]
        measured.append(f"serf RSS {mib(before)} -> {mib(rss)}")
        if rss > before + SERF_RSS_GROWTH:
            problems.append(
                f"serf RSS grew from {mib(before)} to {mib(rss)}, "
                f"over the {mib(SERF_RSS_GROWTH)} allowed"
            )
        view: dict[str, str] = {}

        async def shoal_alive() -> None:
            view.clear()
            view.update(await serf_view(serf))
            assert view.get(SHOAL_NAME) == "alive"

        try:
            await eventually(shoal_alive, SETTLE_LIMIT, "serf sees the shoal agent alive")
        except AssertionError as exc:
            problems.append(
                f"serf does not see the shoal agent alive (it says {view.get(SHOAL_NAME)!r}): "
                f"{str(exc).splitlines()[0]}"
            )
        fakes = sorted(name for name in view if name not in cluster.legit)
        measured.append(f"serf's view: {len(view)} members, {len(fakes)} fake")
        if fakes:
            problems.append(f"serf absorbed {len(fakes)} fake member(s): {fakes[:5]!r}")
    serf_log = raw_log(serf)
    if f"EventMemberFailed: {SHOAL_NAME} " in serf_log:
        problems.append("serf marked the shoal agent failed during the attack")
    for text in serf_log_free_of:
        if text in serf_log:
            problems.append(f"serf logged {text[:80]!r}")

    # the shoal agent's log
    problems += log_problems(raw_log(shoal))

    print(f"\n[{attack}]\n  " + "\n  ".join(measured))
    if problems:
        print("  FAILED:\n    " + "\n    ".join(problems))
    assert not problems, f"{attack}: " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# 0. No attack: the checks hold for a healthy cluster


async def test_a_quiet_cluster_passes_the_checks(cluster: Cluster) -> None:
    await trio.sleep(OBSERVE)
    notes = [await anti_entropy(cluster)]
    await assert_unharmed(cluster, "no attack", notes=notes)


# ---------------------------------------------------------------------------------------------
# 1. Oversized Serf user events

BIG_EVENTS = 4
BIG_EVENT_PAYLOAD = 30_000_000
"""Each event's payload: Serf refuses user events over 9 KiB; this one compresses to ~23 KB."""


async def test_oversized_user_events(cluster: Cluster) -> None:
    packets = [
        attacker.big_user_event_packet(f"oversized-{i}", 100 + i, BIG_EVENT_PAYLOAD)
        for i in range(BIG_EVENTS)
    ]
    notes = [f"{BIG_EVENTS} datagrams of {max(map(len, packets))} bytes at most"]
    async with watching(cluster.shoal) as watch, Datagrams() as udp:
        await udp.send(packets, cluster.shoal.address, per_second=4)
        await trio.sleep(OBSERVE)
        notes.append(await anti_entropy(cluster))
    notes.append(watch.summary())
    notes.append(await shoal_counts(cluster.shoal))
    await assert_unharmed(
        cluster,
        "oversized user events",
        notes=notes,
        serf_log_free_of=["user-event: oversized"],
    )


# ---------------------------------------------------------------------------------------------
# 2. LZW bombs

BOMB_SIZE = MAX_DECOMPRESSED_BYTES + MiB
"""Each bomb inflates past the 40 MiB that a decompression may produce."""
BOMBS_PER_SECOND = 15
BOMB_SECONDS = 10


async def test_lzw_bombs_cost_under_half_a_core(cluster: Cluster) -> None:
    bomb = attacker.lzw_bomb(BOMB_SIZE)
    assert len(bomb) <= 33_000
    pid = cluster.shoal.pid
    async with watching(cluster.shoal) as watch, Datagrams() as udp:
        cpu, start = attacker.cpu_seconds(pid), trio.current_time()
        sent = await udp.send(
            [bomb] * (BOMBS_PER_SECOND * BOMB_SECONDS),
            cluster.shoal.address,
            per_second=BOMBS_PER_SECOND,
        )
        used, elapsed = attacker.cpu_seconds(pid) - cpu, trio.current_time() - start
    share = used / elapsed
    notes = [
        f"{sent} bombs of {len(bomb)} bytes in {elapsed:.1f} s: shoal used {used:.1f} s of CPU, "
        f"{share:.2f} of a core",
        watch.summary(),
        await shoal_counts(cluster.shoal),
    ]
    failures: list[str] = []
    if share >= CPU_LIMIT:
        failures.append(f"shoal used {share:.2f} of a core under LZW bombs (limit {CPU_LIMIT})")
    await assert_unharmed(cluster, "LZW bombs", failures=failures, notes=notes)


# ---------------------------------------------------------------------------------------------
# 3. Member floods

FLOOD_MEMBERS = 100_000
FAKE_ALIVES = 10_000
FLOOD_STREAM_LIMIT = 60.0
"""How long the attacker waits for the shoal agent's push-pull reply."""


async def test_push_pull_with_100000_members(cluster: Cluster) -> None:
    attacker.assert_closed(attacker.fake_address("push-pull", 0))
    states = [
        attacker.state(f"flood-{i}", attacker.fake_address("push-pull", i))
        for i in range(FLOOD_MEMBERS)
    ]
    data = attacker.push_pull(states)
    notes = [f"one push-pull of {len(data) / MiB:.1f} MiB with {FLOOD_MEMBERS} member states"]
    async with watching(cluster.shoal) as watch:
        start = trio.current_time()
        reply = await attacker.send_stream(cluster.shoal.address, data, FLOOD_STREAM_LIMIT)
        notes.append(f"reply of {len(reply)} bytes after {trio.current_time() - start:.1f} s")
        await trio.sleep(OBSERVE)
        notes.append(await anti_entropy(cluster))
    notes.append(watch.summary())
    notes.append(await shoal_counts(cluster.shoal))
    await assert_unharmed(cluster, "push-pull with 100,000 members", notes=notes)


async def test_10000_fake_alive_messages(cluster: Cluster) -> None:
    attacker.assert_closed(attacker.fake_address("gossip", 0))
    messages = [
        attacker.alive(f"gossip-{i}", attacker.fake_address("gossip", i))
        for i in range(FAKE_ALIVES)
    ]
    packets = attacker.gossip_packets(messages)
    notes = [f"{FAKE_ALIVES} alive messages in {len(packets)} datagrams of at most 1400 bytes"]
    async with watching(cluster.shoal) as watch, Datagrams() as udp:
        start = trio.current_time()
        await udp.send(packets, cluster.shoal.address, per_second=500)
        notes.append(f"sent in {trio.current_time() - start:.1f} s")
        await trio.sleep(OBSERVE)
        notes.append(await anti_entropy(cluster))
    notes.append(watch.summary())
    notes.append(await shoal_counts(cluster.shoal))
    await assert_unharmed(cluster, "10,000 fake alive messages", notes=notes)


# ---------------------------------------------------------------------------------------------
# 4. RPC connections

RPC_ROUNDS = 8
RPC_CONNECTIONS = 500
RPC_ROUND_LIMIT = 30.0
"""How long one round of connections may take to open and close."""
RPC_ROUND_RSS_GROWTH = 50 * MiB
"""How far over its baseline the shoal agent's RSS may be at the end of any round, once every
connection of the round is closed: 500 connections open at once may cost it some 100 KiB each
while they last, but closed ones must leave nothing behind that adds up round after round."""


async def rpc_round(agent: Agent, connections: int, handshake: bool) -> int:
    """Open ``connections`` RPC connections at once (each shaking hands if ``handshake``),
    then close them all; how many opened."""
    opened = 0
    all_open = trio.Event()

    async def one() -> None:
        nonlocal opened
        try:
            if handshake:
                async with RpcClient.connect(agent.rpc_address, timeout=RPC_ROUND_LIMIT):
                    opened += 1
                    if opened == connections:
                        all_open.set()
                    await all_open.wait()
            else:
                stream = await trio.open_tcp_stream(LOOPBACK, agent.rpc_port)
                async with stream:
                    opened += 1
                    if opened == connections:
                        all_open.set()
                    await all_open.wait()
        except (OSError, RpcConnectionError, RpcError):
            return

    with trio.move_on_after(RPC_ROUND_LIMIT):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)
            with trio.move_on_after(RPC_ROUND_LIMIT / 2):
                await all_open.wait()
            all_open.set()
    return opened


async def test_rpc_connection_rounds(cluster: Cluster) -> None:
    shoal = cluster.shoal
    baseline = cluster.baseline[shoal.name]
    notes: list[str] = []
    failures: list[str] = []
    async with watching(shoal) as watch:
        for number in range(1, RPC_ROUNDS + 1):
            handshake = number % 2 == 0
            start = trio.current_time()
            opened = await rpc_round(shoal, RPC_CONNECTIONS, handshake)
            await trio.sleep(0.5)  # the agent closes its ends
            rss = attacker.rss_bytes(shoal.pid)
            notes.append(
                f"round {number} ({'handshake' if handshake else 'connect/close'}): "
                f"{opened}/{RPC_CONNECTIONS} opened in {trio.current_time() - start:.1f} s, "
                f"shoal RSS {mib(rss)}"
            )
            if rss > baseline + RPC_ROUND_RSS_GROWTH and not failures:
                failures.append(
                    f"after round {number} of {RPC_CONNECTIONS} RPC connections shoal RSS is "
                    f"{mib(rss)}, over its baseline {mib(baseline)} + {mib(RPC_ROUND_RSS_GROWTH)}"
                )
    notes.append(watch.summary())
    await assert_unharmed(cluster, "RPC connections", failures=failures, notes=notes)


# ---------------------------------------------------------------------------------------------
# 5. A full disk

FULL_DISK_WAIT = 3.0
"""How long the agent runs on a full disk before the checks: six snapshot flushes."""
LEAVE_LIMIT = LOCAL.leave_timeout + 5.0
"""How long a SIGTERM'd agent may take to be seen as left and to exit."""


def fill(directory: Path) -> int:
    """Write to ``directory`` until its file system is full; how many bytes that took."""
    written = 0
    chunk = bytes(64 * 1024)
    with open(directory / "filler", "wb", buffering=0) as filler:
        for _ in range(1024):  # 64 MiB at most: the tmpfs holds 1 MiB
            try:
                written += filler.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written
    raise AssertionError(f"{directory} took {written} bytes and is still not full")


@pytest.mark.parametrize("cluster", [Setup(full_disk=True)], indirect=True, ids=["snapshot"])
async def test_full_disk(cluster: Cluster) -> None:
    shoal, serf = cluster.shoal, cluster.serf
    assert cluster.disk is not None
    failures: list[str] = []
    # the tmpfs is mounted in the agent's own mount namespace: reach it through its root
    disk = Path(f"/proc/{shoal.pid}/root") / cluster.disk.relative_to("/")
    written = fill(disk)
    notes = [f"filled the snapshot's disk with {written} bytes"]
    await trio.sleep(FULL_DISK_WAIT)
    if shoal.process.poll() is not None:
        failures.append(f"the shoal agent exited on a full disk ({shoal.process.returncode})")
    else:
        try:
            await assert_unharmed(cluster, "full disk, running", notes=notes)
        except AssertionError as exc:
            failures.append(str(exc))
        shoal.process.send_signal(signal.SIGTERM)
        start = trio.current_time()
        view: dict[str, str] = {}

        async def left() -> None:
            view.clear()
            view.update(await serf_view(serf))
            assert view.get(SHOAL_NAME) == "left"

        try:
            took = await eventually(left, LEAVE_LIMIT, "serf sees the shoal agent left")
            notes.append(f"serf saw the shoal agent left {took:.1f} s after SIGTERM")
        except AssertionError:
            failures.append(f"after SIGTERM serf sees the shoal agent {view.get(SHOAL_NAME)!r}")
        with trio.move_on_at(start + LEAVE_LIMIT):
            while shoal.process.poll() is None:
                await trio.sleep(0.05)
        status = shoal.process.poll()
        if status is None:
            failures.append(f"the shoal agent still runs {LEAVE_LIMIT:g} s after SIGTERM")
        else:
            notes.append(f"the shoal agent exited with status {status} after SIGTERM")
    failures += log_problems(raw_log(shoal))
    print("\n[full disk]\n  " + "\n  ".join(notes))
    if failures:
        print("  FAILED:\n    " + "\n    ".join(failures))
    assert not failures, "full disk: " + "; ".join(failures)


# ---------------------------------------------------------------------------------------------
# 6. Names and tags from the network

FORGED = "2026/12/01 12:00:00 [INFO] forged"
"""A log line a member name must not be able to forge (Serf's log format)."""
BAD_NAMES = {
    "newline": "x\n" + FORGED,
    "carriage return": "x\r" + FORGED,
    "ANSI escapes": "\x1b[2J\x1b[31mansi\x1b[0m",
    "NUL": "nul\x00name",
    "empty": "",
    "10,000 characters": "n" * 10_000,
}
"""Names no member may have: each one would forge or garble a log line or a snapshot line, or
is far too long to be a name (memberlist 0.2.2 checks none of this: serf takes them all)."""
BIG_TAGS = {"blob": "t" * 4000}
"""Tags far over the 512 bytes of metadata memberlist allows."""


async def test_names_and_tags_from_the_network(cluster: Cluster) -> None:
    def address(index: int) -> tuple[bytes, int]:
        return attacker.fake_address("names", index)

    attacker.assert_closed(address(0))
    meta = serf_wire.encode_tags(BIG_TAGS, limit=1 << 16)
    packet_names = [*BAD_NAMES.values(), "big-tags"]
    # the same names again by push-pull (but the empty one, which cannot be told apart)
    stream_names = [f"{name} (by push-pull)" for name in BAD_NAMES.values() if name]
    stream_names.append("big-tags (by push-pull)")
    # each name twice, from two addresses: a conflict, which is worth a warning in the log
    messages = []
    for index, name in enumerate(packet_names):
        tags = meta if name == "big-tags" else b""
        messages.append(attacker.alive(name, address(2 * index), 1, tags))
        messages.append(attacker.alive(name, address(2 * index + 1), 2, tags))
    states = [
        attacker.state(name, address(100 + index), 1, meta if name.startswith("big-tags") else b"")
        for index, name in enumerate(stream_names)
    ]
    notes = [f"{len(messages)} alive messages, one push-pull of {len(states)} states"]
    async with Datagrams() as udp:
        await udp.send(messages, cluster.shoal.address, per_second=100)
        reply = await attacker.send_stream(
            cluster.shoal.address, attacker.push_pull(states), limit=10.0
        )
        notes.append(f"push-pull reply of {len(reply)} bytes")
        await trio.sleep(OBSERVE)
        notes.append(await anti_entropy(cluster))
    await assert_unharmed(
        cluster,
        "names and tags from the network",
        notes=notes,
        refused_names={*packet_names, *stream_names},
        serf_log_free_of=["\n" + FORGED, "\r" + FORGED, "\x1b[", "ansi", "big-tags"],
    )


# ---------------------------------------------------------------------------------------------
# 7. Stream slots

IDLE_STREAMS = 512
"""Idle connections the attacker holds to the gossip port: four times the agent's 128 slots."""
JOIN_LIMIT = 5.0
"""How long a real join through the attacked agent may take."""
JOINER = "serf-1"


async def hold_idle_streams(target: tuple[str, int], count: int, stop: trio.Event) -> int:
    """Keep ``count`` TCP connections to ``target`` open and silent until ``stop``, opening a
    new one whenever the agent closes one; how many connections were opened in all."""
    opened = 0

    async def one() -> None:
        nonlocal opened
        while not stop.is_set():
            try:
                stream = await trio.open_tcp_stream(*target)
            except OSError:
                await trio.sleep(0.05)
                continue
            opened += 1
            async with stream:
                await attacker.hold_silently(stream, stop)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return opened


async def test_idle_streams_do_not_block_a_join(cluster: Cluster) -> None:
    shoal = cluster.shoal
    joiner = await cluster.agents.start(JOINER)
    cluster.baseline[JOINER] = attacker.rss_bytes(joiner.pid)
    cluster.legit.add(JOINER)
    stop = trio.Event()
    notes: list[str] = []
    failures: list[str] = []
    async with trio.open_nursery() as nursery:
        opened: list[int] = []

        async def attack() -> None:
            opened.append(await hold_idle_streams(shoal.address, IDLE_STREAMS, stop))

        nursery.start_soon(attack)
        await trio.sleep(1.0)  # every slot taken, and the first ones timed out and re-taken
        start = trio.current_time()
        with trio.move_on_after(JOIN_LIMIT) as scope:
            status, out = await joiner.cli("join", shoal.seed, check=False)
        took = trio.current_time() - start
        if scope.cancelled_caught:
            failures.append(f"{JOINER} could not join through shoal in {JOIN_LIMIT:g} s")
        elif status != 0:
            failures.append(f"{JOINER} failed to join through shoal after {took:.1f} s: {out!r}")
        else:
            notes.append(f"{JOINER} joined through shoal in {took:.1f} s")
        stop.set()
    notes.append(f"the attacker opened {opened[0]} idle connections in all")
    try:
        stats = await rpc_stats(shoal)
        refused = stats["memberlist"].get("inbound_streams_refused")
        notes.append(f"shoal refused {refused} inbound streams")
    except AssertionError as exc:
        notes.append(str(exc))

    async def joined() -> None:
        assert (await serf_view(joiner)).get(SHOAL_NAME) == "alive"

    if not failures:
        try:
            await eventually(joined, SETTLE_LIMIT, f"{JOINER} sees the shoal agent alive")
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    await assert_unharmed(cluster, "idle streams", failures=failures, notes=notes)


# ---------------------------------------------------------------------------------------------
# 8. Replays

REPLAYS = 500
REPLAY_COUNTED = 0.9
"""The share of the replays the agent must count as refused (loopback may drop a few)."""


@pytest.mark.parametrize("cluster", [Setup(key=KEY)], indirect=True, ids=["encrypted"])
async def test_replayed_encrypted_pings(cluster: Cluster) -> None:
    shoal = cluster.shoal
    options = wire.WireOptions(keyring=wire.Keyring([KEY]))
    before = (await rpc_stats(shoal))["memberlist"]
    async with Datagrams() as udp:
        host, port = udp.address
        ping = Ping(
            seq_no=4242,
            node=SHOAL_NAME,
            source_addr=bytes(map(int, host.split("."))),
            source_port=port,
            source_node="replayer",
        )
        packet = wire.encode_packet([encode(ping)], options)  # encrypted once, sent many times
        async with trio.open_nursery() as nursery:
            acks: list[int] = []

            async def count() -> None:
                acks.append(await udp.count_replies(quiet=1.0))

            nursery.start_soon(count)
            await udp.send([packet] * REPLAYS, shoal.address, per_second=500)
    after = (await rpc_stats(shoal))["memberlist"]
    received = int(after["packets_in"]) - int(before["packets_in"])
    notes = [
        f"{REPLAYS} copies of one encrypted ping: {received} packets reached shoal, "
        f"{acks[0]} acks came back"
    ]
    failures: list[str] = []
    if acks[0] > 1:
        failures.append(f"shoal answered {acks[0]} copies of one encrypted ping (at most 1)")
    if "replays_refused" in after:
        refused = int(after["replays_refused"]) - int(before.get("replays_refused", "0"))
        notes.append(f"replays_refused went up by {refused}")
        if refused < REPLAY_COUNTED * (REPLAYS - 1):
            failures.append(f"shoal counted {refused} of {REPLAYS - 1} replays as refused")
    else:
        notes.append("shoal's stats have no replays_refused counter")
    await assert_unharmed(cluster, "replayed encrypted pings", failures=failures, notes=notes)


# ---------------------------------------------------------------------------------------------
# The attacker's tools


def test_attacker_streams_inflate_to_what_they_claim() -> None:
    for prefix in (b"", b"\x08\x03", bytes(range(256)) * 3):
        for count in (0, 1, 2, 3837, 3838, 3839, 3838 * 3839 // 2 + 1, 5_000_000):
            stream = attacker.lzw_run(prefix, 0, count)
            assert lzw.decompress(stream, 1 << 30) == prefix + bytes(count)
    packet = attacker.big_user_event_packet("e", 7, BIG_EVENT_PAYLOAD)
    assert len(packet) < 25_000
    compressed = wire.decode(packet)
    assert isinstance(compressed, wire.Compress)
    user = wire.decode(lzw.decompress(compressed.buf, 1 << 30))
    assert isinstance(user, wire.User)
    event = serf_wire.decode_serf(user.payload)
    assert isinstance(event, serf_wire.UserEvent)
    assert (event.name, event.ltime, len(event.payload)) == ("e", 7, BIG_EVENT_PAYLOAD)
    assert len(attacker.lzw_bomb(BOMB_SIZE)) < 33_000
    for datagram in (packet, attacker.lzw_bomb(BOMB_SIZE)):  # refused by every receiver
        with pytest.raises(wire.DecodeError, match="decompressed size exceeds"):
            wire.decode_packet(datagram, wire.WireOptions())
