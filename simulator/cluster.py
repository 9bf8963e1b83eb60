"""A cluster of engines on the virtual network, in virtual time: the simulator's core.

One heap orders everything that will happen (a datagram arriving, a stream's request or reply
arriving, a node's next timer, a scheduled fault) by ``(time, sequence number)``; the sequence
number breaks ties in the order things were scheduled, so a run depends only on its seed and
parameters.  Every node keeps one live timer entry at its engine's ``next_deadline()``; an entry
whose sequence number is no longer the node's is stale and skipped.  A node is woken only by
its deadline or by something delivered to it.

Each node is a :class:`~swim.stack.MemberStack` (with a Serf layer when the cluster has tags),
driven as the trio runtime drives it (``swim/node.py``): datagrams to ``receive_datagram``,
the bytes of inbound streams to an ``incoming()`` reader and ``answer`` (whose reply travels
back), outcomes of outbound streams to ``stream_finished`` (a cut path times out at the
request's deadline, a stopped peer refuses), ``tick`` at each deadline, and the seeds to
``rejoin`` when the stack asks for them.  The simulator makes no protocol decision.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import heapq
import ipaddress
import itertools
import math
import random
import time as wallclock
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, Unpack

from simulator.metrics import (
    CoordinateReport,
    Metrics,
    NodeTraffic,
    Observation,
    Results,
    SerfMetrics,
    SpreadCurve,
    TrafficSummary,
    detection_bound,
)
from simulator.network import (
    PROFILE_LINKS,
    UDP_MAX_PAYLOAD,
    Cut,
    Link,
    Network,
    Partition,
)
from simulator.trace import Trace
from swim import wire
from swim.config import Config
from swim.engine import Engine, StreamRequest
from swim.events import (
    JoinCompleted,
    LeaveCompleted,
    MemberAlive,
    MemberConflict,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
)
from swim.members import Address
from swim.serf.coordinate import distance
from swim.serf.layer import (
    QueryAck,
    QueryAnswer,
    QueryDone,
    QueryOptions,
    Serf,
    SerfError,
    SerfQuery,
    SerfUserEvent,
)
from swim.stack import UNREADABLE_REPLY, MemberStack, RejoinDue, StackEvent
from swim.wire.serf import Coordinate

PORT = 7946
SOCKET_BUFFER_BYTES = 212_992
"""A paused node's UDP receive buffer (Linux's default ``rmem_default``): datagrams beyond it
are dropped, as the kernel drops them."""
SYN_TIMEOUT = 1.0
"""TCP's initial retransmission timeout for a lost SYN (it doubles on each loss)."""
DATA_TIMEOUT = 0.2
"""TCP's minimum retransmission timeout for lost data (Linux's ``TCP_RTO_MIN``)."""
REJOIN_INTERVAL = 5.0
"""The first wait between rejoin attempts while isolated (the trio runtime's default)."""
COORDINATE_PAIRS = 2000
"""Pairs of members whose estimated RTT a report compares with the true one, at most (a random
sample of them in larger clusters: all pairs would be quadratic)."""
RETRIES = 6
"""Retransmissions of one segment before TCP gives up (Linux's ``tcp_syn_retries``); the
doubling timeouts outlast any stream deadline by then."""

_DATAGRAM, _TIMER, _REQUEST, _REPLY, _ACTION, _LATE = range(6)
_YOUNG_COLLECTION_EVERY = 20_000
"""Allocations between the cyclic collector's young collections during a run (CPython's
default is 700; a run allocates and frees a packet's objects at every step)."""


@contextlib.contextmanager
def _collector_spared() -> Iterator[None]:
    """Keep CPython's cyclic collector off the objects that exist when a run starts.

    A converged cluster of n nodes holds n² member entries that live for the whole run; the
    collector would walk them all at each full collection, and young collections every 700
    allocations add up too.  Freezing them (``gc.freeze``) and collecting young objects less
    often makes a 1,000-node run about a fifth faster.  Both settings are restored after.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], _YOUNG_COLLECTION_EVERY), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


_EVENT_KINDS: dict[type, str] = {
    MemberJoined: "joined",
    MemberUpdated: "updated",
    MemberSuspect: "suspect",
    MemberAlive: "alive",
    MemberFailed: "failed",
    MemberLeft: "left",
}
_MEMBER_EVENTS = (MemberJoined, MemberUpdated, MemberSuspect, MemberAlive, MemberFailed, MemberLeft)


class Scheduled(Protocol):
    """What :meth:`Cluster.schedule` applies at its time (the faults of
    :mod:`simulator.faults`, and any object of this shape)."""

    @property
    def at(self) -> float:
        """When it happens, in virtual seconds."""
        ...

    def apply(self, cluster: Cluster) -> None:
        """Make it happen now."""
        ...


class SimulationError(RuntimeError):
    """A request the simulation cannot carry out; the message says why and what to do."""


class _Stream:
    """One outbound stream: who asked (which engine: a restart makes a new one) and whether
    its outcome was delivered already."""

    __slots__ = ("client", "done", "request", "stack")

    def __init__(self, client: SimNode, request: StreamRequest) -> None:
        self.client = client
        self.stack = client.stack
        self.request = request
        self.done = False


class SimNode:
    """One member's process and host: its member stack and engine (replaced on restart),
    address, state, traffic counters.  Counters add up over every incarnation of the
    process."""

    __slots__ = (
        "address",
        "backlog",
        "backlog_bytes",
        "bytes_in",
        "bytes_out",
        "datagrams_in",
        "datagrams_out",
        "engine",
        "health",
        "instance",
        "leaving",
        "name",
        "paused",
        "position",
        "running",
        "seconds",
        "seeds",
        "slow",
        "stack",
        "started_at",
        "stream_bytes_in",
        "stream_bytes_out",
        "streams_in",
        "streams_out",
        "tag",
        "timer_at",
        "timer_seq",
    )

    def __init__(self, name: str, address: Address, position: tuple[float, float]) -> None:
        self.name = name
        self.tag = name.encode() + b"\0"
        self.address = address
        self.position = position
        self.stack: MemberStack | None = None
        self.engine: Engine | None = None
        self.instance = -1
        self.running = False
        self.leaving = False
        self.paused = False
        self.slow = 0.0
        self.backlog: list[tuple[Any, ...]] = []
        self.backlog_bytes = 0
        self.seeds: list[Address] = []
        self.timer_seq = -1
        self.timer_at = math.inf
        self.health = 0
        self.started_at = 0.0
        self.seconds = 0.0
        self.datagrams_out = self.bytes_out = self.datagrams_in = self.bytes_in = 0
        self.streams_out = self.stream_bytes_out = self.streams_in = self.stream_bytes_in = 0

    def traffic(self, now: float) -> NodeTraffic:
        """This node's counters, with its running time up to ``now``."""
        seconds = self.seconds + (now - self.started_at if self.running else 0.0)
        return NodeTraffic(
            name=self.name,
            seconds=seconds,
            datagrams_out=self.datagrams_out,
            bytes_out=self.bytes_out,
            datagrams_in=self.datagrams_in,
            bytes_in=self.bytes_in,
            streams_out=self.streams_out,
            stream_bytes_out=self.stream_bytes_out,
            streams_in=self.streams_in,
            stream_bytes_in=self.stream_bytes_in,
        )


class Cluster:
    """Engines on a virtual network in virtual time; one ``seed`` fixes everything.

    ``nodes`` members named ``n0``, ``n1``, ... start at time 0.  With ``start="converged"``
    (the default) each begins knowing every other, as after a completed join (see
    :meth:`_warm_start`); with ``start="join"`` each joins through ``n0`` and the run includes
    the join storm.  ``profile`` picks the engine timers (lan, wan, local) and the default
    link; ``config`` and ``link`` override them (``compress`` applies to the profile's config
    only).  ``encrypt`` gives every node the same AES key with deterministic nonces.
    ``serf`` gives every node a Serf layer (tags, user events, queries), which coalesces user
    events over ``coalesce_period`` / ``quiescent_period`` when they are set (as a Serf agent
    does: 3 s / 1 s); with ``answer_queries`` every member answers every query it is asked
    with its name.  ``keep_trace`` keeps every trace record (small runs only).  ``progress`` is
    called with the virtual time now and then while running.
    """

    def __init__(
        self,
        nodes: int = 0,
        *,
        seed: int = 0,
        profile: str = "lan",
        config: Config | None = None,
        link: Link | None = None,
        encrypt: bool = False,
        compress: bool = True,
        start: str = "converged",
        serf: bool = False,
        coalesce_period: float = 0.0,
        quiescent_period: float = 0.0,
        answer_queries: bool = True,
        keep_trace: bool = False,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        if start not in ("converged", "join"):
            raise SimulationError(f"start={start!r} is unknown; use 'converged' or 'join'")
        if nodes < 0:
            raise SimulationError(f"nodes={nodes} must be >= 0")
        if profile not in PROFILE_LINKS:
            raise SimulationError(f"profile={profile!r} is unknown; choose lan, wan or local")
        self.seed = seed
        self.profile = profile
        self.config = config or Config.profile(profile, compression=compress)
        self.network = Network(link or PROFILE_LINKS[profile], self.random_for("network"))
        self.trace = Trace(keep=keep_trace)
        self.metrics = Metrics(self)
        self.serf_metrics = SerfMetrics()
        self._serf = serf
        self._coalescing = (coalesce_period, quiescent_period)
        self._answer_queries = answer_queries
        self.now = 0.0
        self.progress = progress
        self.network_counts = dict.fromkeys(
            ("lost", "cut", "oversized", "duplicated", "unroutable", "stopped", "overflow"), 0
        )
        self.nodes: dict[str, SimNode] = {}
        """Every node ever started, by name, in creation order."""
        self._key = hashlib.sha256(f"{seed}:key".encode()).digest() if encrypt else None
        self._rng = self.random_for("cluster")
        self._by_address: dict[Address, SimNode] = {}
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._next_address = 1
        self._next_name = 0
        self._initial = nodes
        for _ in range(nodes):
            self._create(self._new_name())
        if start == "converged":
            self._warm_start()
        else:
            first = next(iter(self.nodes.values()), None)
            for node in self.nodes.values():
                seeds = [first.address] if first is not None and node is not first else []
                self._start(node, warm=False, seeds=seeds)
            for node in self.nodes.values():
                if node is not first:
                    self._stack(node).join(node.seeds, 0.0)
                    self._flush(node)

    # ------------------------------------------------------------------ queries

    def names(self) -> list[str]:
        """Every node's name, in creation order (stopped ones included)."""
        return list(self.nodes)

    def running(self) -> list[str]:
        """Members that run and have not begun to leave, in creation order."""
        return list(self.metrics.members)

    def engine(self, name: str) -> Engine:
        """``name``'s current (or last) engine."""
        return self._engine(self._node(name))

    def serf(self, name: str) -> Serf:
        """``name``'s current (or last) Serf layer."""
        serf = self._stack(self._node(name)).serf
        if serf is None:
            raise SimulationError(f"node {name!r} runs no Serf layer; make the cluster serf=True")
        return serf

    def view(self, name: str) -> dict[str, str]:
        """``name``'s view from its engine: member -> state."""
        return {m.name: m.state.value for m in self.engine(name).members()}

    def agreed(self) -> bool:
        """Whether every running member holds exactly the running members alive."""
        return self.metrics.agreed

    def detection_bound(self) -> float:
        """The profile's bound on the time for every live member to mark a crash failed."""
        return detection_bound(self.config, max(2, len(self.metrics.members)))

    def spread(self, member: str, kind: str, since: float) -> SpreadCurve:
        """When each running member first reported ``kind`` (joined, failed, left, ...) about
        ``member`` after ``since`` (the member itself not counted)."""
        members = self.metrics.members
        return self.metrics.spread(member, kind, since, len(members) - (member in members))

    def alive_timeline(self, name: str) -> list[tuple[float, int]]:
        """How many members ``name`` held alive over time: (time, count) at each change."""
        return self.metrics.alive_timeline(name)

    def health_timeline(self, name: str) -> list[tuple[float, int]]:
        """``name``'s local health score over time: (time, score) at each change."""
        return list(self.metrics.health.get(name, []))

    def traffic(self) -> list[NodeTraffic]:
        """Each node's traffic counters."""
        return [node.traffic(self.now) for node in self.nodes.values()]

    def answering(self, observer: str, member: str) -> bool:
        """Whether ``member`` runs, is not paused, the paths to and from ``observer`` are open,
        and it did not restart within the detection bound (a suspicion of it may still be
        about its previous incarnation)."""
        node = self.nodes.get(member)
        if node is None or not node.running or node.leaving or node.paused:
            return False
        if node.instance > 0 and self.now - node.started_at < self.detection_bound():
            return False
        network = self.network
        return not network.has_cuts or not (
            network.blocked(observer, member) or network.blocked(member, observer)
        )

    def mean_rtt(self, a: str, b: str) -> float:
        """The round trip between ``a`` and ``b`` that the links give on average (latency,
        distance and mean jitter both ways; a small packet's transmission time is left out)."""
        first, second = self._node(a), self._node(b)
        apart = math.dist(first.position, second.position)
        rtt = 0.0
        for source, target in ((a, b), (b, a)):
            link = self.network.link(source, target)
            rtt += link.latency + link.jitter + link.distance * apart
        return rtt

    def coordinate_samples(self, max_pairs: int = COORDINATE_PAIRS) -> list[tuple[float, float]]:
        """(estimated, mean) RTTs for up to ``max_pairs`` pairs of running members where the
        first holds the second's coordinate: the estimate is what ``serf rtt`` prints there."""
        pairs: list[tuple[str, str, Coordinate, Coordinate]] = []
        for name in self.running():
            serf = self._stack(self._node(name)).serf
            if serf is None:
                continue
            held = serf.coordinates()
            mine = held.get(name)
            if mine is None:
                continue
            pairs += [
                (name, member, mine, theirs)
                for member, theirs in held.items()
                if member != name and self.is_running(member)
            ]
        if len(pairs) > max_pairs:
            pairs = self.random_for("coordinates").sample(pairs, max_pairs)
        return [(distance(mine, theirs), self.mean_rtt(a, b)) for a, b, mine, theirs in pairs]

    def is_running(self, name: str) -> bool:
        """Whether ``name``'s process runs: false once it crashed, or once its leave went out
        (a leaving node runs until then); a paused node still runs."""
        return self._node(name).running

    def reachable(self, source: str, target: str) -> bool:
        """Whether a connection from ``source`` to ``target`` would be answered now:
        ``target`` runs, is not paused, and no cut blocks either direction between them."""
        client, server = self._node(source), self._node(target)
        return server.running and not server.paused and not self._cut_between(client, server)

    def results(self, extra: dict[str, Any] | None = None) -> Results:
        """What the run measured so far, as plain data."""
        metrics = self.metrics
        traffic = self.traffic()
        return Results(
            seed=self.seed,
            nodes=self._initial,
            duration=self.now,
            node_seconds=sum(node.seconds for node in traffic),
            running=len(metrics.members),
            trace_hash=self.trace.hash,
            agreed=metrics.agreed,
            crashes=metrics.crash_reports(),
            false_suspicions=tuple(metrics.false_suspicions),
            false_failures=tuple(metrics.false_failures),
            convergence=metrics.convergence_reports(),
            spreads=metrics.spreads(),
            traffic=TrafficSummary.of(traffic),
            network=dict(self.network_counts),
            events=dict(metrics.event_counts),
            user_events=self.serf_metrics.user_events(),
            queries=self.serf_metrics.queries(),
            coordinates=CoordinateReport.of(self.coordinate_samples()) if self._serf else None,
            max_health=max((s for t in metrics.health.values() for _, s in t), default=0),
            unhealthy_node_seconds=metrics.unhealthy_seconds(self.now),
            extra=dict(extra or {}),
        )

    # ------------------------------------------------------------------ running

    def run_until(
        self,
        until: float | Callable[[Cluster], bool],
        *,
        limit: float | None = None,
        poll: float = 0.1,
    ) -> float | None:
        """Run to virtual time ``until``; or, given a condition, until it holds (checked
        every ``poll`` seconds) or ``limit`` passes.  Returns the time reached, or None when
        the condition did not hold by ``limit``."""
        if not callable(until):
            self._run(float(until))
            return self.now
        if limit is None:
            raise SimulationError("run_until(condition) needs limit=<virtual time> to stop at")
        while not until(self):
            if self.now >= limit:
                return None
            self._run(min(self.now + poll, limit))
        return self.now

    def run_for(self, seconds: float) -> float:
        """Run ``seconds`` more of virtual time."""
        self._run(self.now + seconds)
        return self.now

    def at(self, time: float, action: Callable[[], object]) -> None:
        """Call ``action`` at virtual time ``time`` (now, if that has passed)."""
        heapq.heappush(self._heap, (max(time, self.now), next(self._seq), _ACTION, action))

    def _run(self, end: float) -> None:
        with _collector_spared():
            self._run_events(end)

    def _run_events(self, end: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        replace = heapq.heapreplace
        flush = self._flush
        seq = self._seq
        progress = self.progress
        handled = 0
        next_report = wallclock.monotonic() + 0.5 if progress is not None else math.inf
        while heap and heap[0][0] <= end:
            entry = heap[0]
            now = self.now = entry[0]
            kind = entry[2]
            if kind == _TIMER:
                node = entry[3]
                if node.timer_seq != entry[1] or node.paused:
                    pop(heap)
                    if node.timer_seq == entry[1]:
                        node.timer_seq, node.timer_at = -1, math.inf
                    continue
                # the node's next timer replaces this entry at the root: one sift, not two
                node.stack.tick(now)
                deadline = flush(node, False)
                if deadline is None or not node.running:
                    pop(heap)  # still the root: whatever was pushed meanwhile comes later
                    node.timer_seq, node.timer_at = -1, math.inf
                else:
                    number = next(seq)
                    node.timer_seq = number
                    node.timer_at = deadline
                    replace(heap, (deadline if deadline > now else now, number, _TIMER, node))
            else:
                pop(heap)
                if kind == _DATAGRAM:
                    self._deliver(entry, False)
                elif kind == _REQUEST:
                    self._serve(entry, False)
                elif kind == _REPLY:
                    self._finish(entry, False)
                elif kind == _ACTION:
                    entry[3]()
                else:  # _LATE: an input a slow node handles only now
                    self._dispatch_input(entry[3], True)
            handled += 1
            if handled & 1023 == 0 and wallclock.monotonic() >= next_report:
                assert progress is not None
                progress(now)
                next_report = wallclock.monotonic() + 0.5
        self.now = max(self.now, end)

    def _dispatch_input(self, entry: tuple[Any, ...], late: bool) -> None:
        kind = entry[2]
        if kind == _DATAGRAM:
            self._deliver(entry, late)
        elif kind == _REQUEST:
            self._serve(entry, late)
        else:
            self._finish(entry, late)

    def _hold(self, node: SimNode, entry: tuple[Any, ...], late: bool, size: int) -> bool:
        """Whether a paused or slow node takes ``entry`` later (it is then queued); a paused
        node's datagrams (``size`` > 0) are dropped once its socket buffer is full."""
        if node.paused:
            if size:
                if node.backlog_bytes + size > SOCKET_BUFFER_BYTES:
                    self.network_counts["overflow"] += 1
                    return True
                node.backlog_bytes += size
            node.backlog.append(entry)
            return True
        if node.slow and not late:
            heapq.heappush(self._heap, (self.now + node.slow, next(self._seq), _LATE, entry))
            return True
        return False

    # ------------------------------------------------------------------ datagrams

    def _deliver(self, entry: tuple[Any, ...], late: bool) -> None:
        _, _, _, node, data, source, source_address, address = entry
        now = self.now
        if not node.running or node.address != address:
            self.network_counts["stopped"] += 1
            return
        if (node.paused or node.slow) and self._hold(node, entry, late, len(data)):
            return
        node.datagrams_in += 1
        node.bytes_in += len(data)
        self.trace.datagram(now, source.tag, node.tag, data)
        node.stack.receive_datagram(data, source_address, now)
        self._flush(node)

    def _flush(self, node: SimNode, arm: bool = True) -> float | None:
        """Carry out what ``node``'s stack asked for and re-arm its timer; with ``arm``
        False, return the new deadline for the caller to arm (None: no timer needed)."""
        stack = node.stack
        assert stack is not None
        engine = stack.engine
        datagrams = engine.take_datagrams()
        if datagrams:
            self._send(node, datagrams)
        requests = engine.take_stream_requests()
        for request in requests:
            self._open_stream(node, request)
        events = stack.take_events()
        if events:
            self._on_events(node, events)
            if not node.running or node.stack is not stack:
                return None
        health = engine.health_score
        if health != node.health:
            node.health = health
            self.metrics.health_changed(node.name, self.now, health)
        deadline = engine.next_deadline()
        if not arm:
            return deadline
        if deadline is not None and deadline != node.timer_at:
            seq = next(self._seq)
            node.timer_seq = seq
            node.timer_at = deadline
            now = self.now
            heapq.heappush(self._heap, (deadline if deadline > now else now, seq, _TIMER, node))
        return None

    def _send(self, node: SimNode, datagrams: list[tuple[Address, bytes]]) -> None:
        now = self.now
        network = self.network
        counts = self.network_counts
        by_address = self._by_address
        heap = self._heap
        push = heapq.heappush
        seq = self._seq
        rng = network.rng
        name = node.name
        source_address = node.address
        cuts, rules, link = network.has_cuts, network.has_link_rules, network.default
        node.datagrams_out += len(datagrams)
        for address, data in datagrams:
            size = len(data)
            node.bytes_out += size
            target = by_address.get(address)
            if target is None:
                counts["unroutable"] += 1
                continue
            if size > UDP_MAX_PAYLOAD:
                counts["oversized"] += 1
                continue
            if cuts and network.blocked(name, target.name):
                counts["cut"] += 1
                continue
            if rules:
                link = network.link(name, target.name)
            if link.loss and rng.random() < link.loss:
                counts["lost"] += 1
                continue
            copies = 1
            if link.duplicate and rng.random() < link.duplicate:
                copies = 2
                counts["duplicated"] += 1
            for _ in range(copies):
                delay = link.latency
                if link.jitter:
                    delay += link.random_delay(rng)
                if link.bandwidth:
                    delay += size / link.bandwidth
                if link.distance:
                    delay += link.distance * math.dist(node.position, target.position)
                item = (
                    now + delay,
                    next(seq),
                    _DATAGRAM,
                    target,
                    data,
                    node,
                    source_address,
                    address,
                )
                push(heap, item)

    # ------------------------------------------------------------------ streams

    def _one_way(self, source: SimNode, target: SimNode, size: int) -> float:
        """One leg of a stream: the link's delay, plus TCP retransmissions of lost segments."""
        network = self.network
        link = network.link(source.name, target.name)
        delay = network.delay(link, math.dist(source.position, target.position), size)
        timeout = DATA_TIMEOUT
        for _ in range(RETRIES if link.loss else 0):
            if network.rng.random() >= link.loss:
                break
            delay += timeout
            timeout *= 2
        return delay

    def _connect_time(self, client: SimNode, server: SimNode) -> float:
        """The TCP handshake: SYN and SYN-ACK, with SYN retransmissions on loss."""
        link = self.network.link(client.name, server.name)
        extra = 0.0
        timeout = SYN_TIMEOUT
        for _ in range(RETRIES if link.loss else 0):
            if self.network.rng.random() >= link.loss:
                break
            extra += timeout
            timeout *= 2
        return extra + self._one_way(client, server, 0) + self._one_way(server, client, 0)

    def _cut_between(self, a: SimNode, b: SimNode) -> bool:
        network = self.network
        return network.has_cuts and (
            network.blocked(a.name, b.name) or network.blocked(b.name, a.name)
        )

    def _open_stream(self, client: SimNode, request: StreamRequest) -> None:
        """Connect, then send the request.  The outcome reaches the client once: a reply, a
        refusal (a host whose process is stopped), or "timed out" at the request's deadline
        (a cut path, a missing host, or anything slower), as ``trio.move_on_at`` gives it."""
        client.streams_out += 1
        client.stream_bytes_out += len(request.data)
        stream = _Stream(client, request)
        self._outcome(request.deadline, stream, None, "timed out")
        server = self._by_address.get(request.address)
        if server is None or self._cut_between(client, server):
            return
        connected = self.now + self._connect_time(client, server)
        if not server.running:
            self._outcome(connected, stream, None, "connection refused")
            return
        if not request.expects_reply:
            self._outcome(connected, stream, None, None)
        arrival = connected + self._one_way(client, server, len(request.data))
        heapq.heappush(self._heap, (arrival, next(self._seq), _REQUEST, server, stream))

    def _outcome(
        self, when: float, stream: _Stream, reply: bytes | None, error: str | None
    ) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), _REPLY, stream, reply, error))

    def _serve(self, entry: tuple[Any, ...], late: bool) -> None:
        _, _, _, server, stream = entry
        request, client = stream.request, stream.client
        if not server.running or server.address != request.address:
            back = self.now + self._one_way(server, client, 0)
            self._outcome(back, stream, None, "connection reset")
            return
        if self._cut_between(client, server) or self._hold(server, entry, late, 0):
            return
        stack = server.stack
        assert stack is not None
        server.streams_in += 1
        server.stream_bytes_in += len(request.data)
        self.trace.record(self.now, "stream", client.name, server.name, request.data)
        incoming = stack.incoming()
        incoming.receive_data(request.data)
        reply = None
        if incoming.message is not None:
            reply = stack.answer(incoming, client.address, self.now)
            self._flush(server)
        if stream.done or not request.expects_reply:
            return
        if reply is None:
            back = self.now + self._one_way(server, client, 0)
            self._outcome(back, stream, None, UNREADABLE_REPLY)
            return
        server.stream_bytes_out += len(reply)
        self._outcome(self.now + self._one_way(server, client, len(reply)), stream, reply, None)

    def _finish(self, entry: tuple[Any, ...], late: bool) -> None:
        _, _, _, stream, reply, error = entry
        client = stream.client
        stack = stream.stack
        if stream.done:
            return
        if not client.running or client.stack is not stack:
            stream.done = True
            return
        server = self._by_address.get(stream.request.address)
        if reply is not None and server is not None and self._cut_between(client, server):
            return  # the reply is lost on the way; the deadline will time the stream out
        if self._hold(client, entry, late, 0):
            return
        stream.done = True
        incoming = None
        if reply is not None:
            client.stream_bytes_in += len(reply)
            incoming = stack.incoming()
            incoming.receive_data(reply)
            if incoming.message is None:
                error = UNREADABLE_REPLY
        request_id = str(stream.request.stream_id)
        self.trace.record(self.now, "stream-done", client.name, request_id, (error or "").encode())
        stack.stream_finished(stream.request.stream_id, incoming, self.now, error=error)
        self._flush(client)

    # ------------------------------------------------------------------ events

    def _on_events(self, node: SimNode, events: Sequence[StackEvent]) -> None:
        now = self.now
        metrics = self.metrics
        for event in events:
            self.trace.record(now, "event", node.name, type(event).__name__, repr(event).encode())
            if isinstance(event, MemberConflict):
                member = event.existing
                state = metrics.state(node.name, member.name) or member.state.value
                metrics.observed(
                    Observation(now, node.name, "conflict", member.name, member.incarnation, state)
                )
            elif isinstance(event, _MEMBER_EVENTS):
                member = event.member
                kind = _EVENT_KINDS[type(event)]
                metrics.observed(
                    Observation(
                        now, node.name, kind, member.name, member.incarnation, member.state.value
                    )
                )
            elif isinstance(event, LeaveCompleted):
                self._stop(node)
            elif isinstance(event, RejoinDue):
                self.at(now, functools.partial(self._rejoin, node, self._stack(node)))
            elif isinstance(event, JoinCompleted) and not event.joined:
                counts = metrics.event_counts
                counts["join-failed"] = counts.get("join-failed", 0) + 1
            elif isinstance(event, SerfUserEvent):
                self.serf_metrics.event_delivered(node.name, event.name, event.ltime, now)
            elif isinstance(event, SerfQuery):
                if self._answer_queries:
                    self.at(now, functools.partial(self._answer, node, self._stack(node), event))
            elif isinstance(event, QueryAck | QueryAnswer):
                answered = isinstance(event, QueryAnswer)
                self.serf_metrics.query_arrival(node.name, event.query_id, answered, now)
            elif isinstance(event, QueryDone):
                self.serf_metrics.query_done(node.name, event.query_id, now)

    def _answer(self, node: SimNode, stack: MemberStack, query: SerfQuery) -> None:
        """Answer ``query`` with our name, as a query handler would."""
        if node.running and node.stack is stack and stack.serf is not None:
            with contextlib.suppress(SerfError):  # timed out meanwhile (a paused node)
                stack.serf.respond(query, node.name.encode(), self.now)
            self._flush(node)

    def _rejoin(self, node: SimNode, stack: MemberStack) -> None:
        """Answer the stack's request to try its seeds again (unless it was replaced since)."""
        if node.running and node.stack is stack:
            stack.rejoin(node.seeds, self.now)
            self._flush(node)

    # ------------------------------------------------------------------ lifecycle

    def random_for(self, purpose: str) -> random.Random:
        """A generator for one purpose, seeded from the run's seed by a stable string (string
        seeds are hashed with SHA-512, so they do not depend on PYTHONHASHSEED)."""
        return random.Random(f"{self.seed}:{purpose}")

    def _new_name(self) -> str:
        name = f"n{self._next_name}"
        self._next_name += 1
        return name

    def _new_address(self) -> Address:
        host = str(ipaddress.IPv4Address(0x0A000000 + self._next_address))
        self._next_address += 1
        return (host, PORT)

    def _create(self, name: str) -> SimNode:
        if name in self.nodes:
            raise SimulationError(f"a node named {name!r} exists; pick another name")
        node = SimNode(name, self._new_address(), (self._rng.random(), self._rng.random()))
        self.nodes[name] = node
        self._by_address[node.address] = node
        return node

    def _node(self, name: str) -> SimNode:
        node = self.nodes.get(name)
        if node is None:
            raise SimulationError(f"no node named {name!r}; known: {', '.join(self.nodes)}")
        return node

    @staticmethod
    def _stack(node: SimNode) -> MemberStack:
        if node.stack is None:
            raise SimulationError(f"node {node.name!r} has never run")
        return node.stack

    def _engine(self, node: SimNode) -> Engine:
        return self._stack(node).engine

    def _new_stack(
        self, node: SimNode, meta: bytes, tags: Mapping[str, str] | None = None
    ) -> MemberStack:
        node.instance += 1
        label = f"{node.name}:{node.instance}"
        keyring = None
        if self._key is not None:
            prefix = hashlib.sha256(f"{self.seed}:nonce:{label}".encode()).digest()[:4]
            counter = itertools.count()
            keyring = wire.Keyring(
                [self._key], nonce_source=lambda: prefix + next(counter).to_bytes(8, "big")
            )
        rng = self.random_for(f"engine:{label}")
        return MemberStack(
            node.name,
            node.address,
            self.config,
            rng,
            meta=meta,
            keyring=keyring,
            tags=tags if tags is not None else ({} if self._serf else None),
            now=self.now,
            coalesce_period=self._coalescing[0],
            quiescent_period=self._coalescing[1],
            rejoin_interval=REJOIN_INTERVAL,
        )

    def _start(
        self,
        node: SimNode,
        warm: bool,
        seeds: list[Address],
        meta: bytes = b"",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        node.stack = self._new_stack(node, meta, tags)
        node.engine = node.stack.engine
        node.seeds = seeds
        node.running = True
        node.leaving = node.paused = False
        node.slow = 0.0
        node.backlog.clear()
        node.backlog_bytes = 0
        node.health = 0
        node.started_at = self.now
        node.timer_at = math.inf
        self.trace.record(self.now, "start", node.name, str(node.instance), b"")
        self.metrics.started(node.name, node.instance, self.now, warm)

    def _warm_start(self) -> None:
        """Start every node knowing every other, as after a completed join.

        Each engine assumes the same member list (``Engine.assume_converged``: merged as a
        join merges it, with no news gossiped, since everyone knows it).  The list is one
        object for all, so that names and bytes are shared and n² entries fit in memory.
        """
        nodes = list(self.nodes.values())
        self.metrics.initial.update(dict.fromkeys(self.nodes))
        for index, node in enumerate(nodes):
            others = self._rng.sample(range(len(nodes)), min(4, len(nodes)))
            seeds = [nodes[i].address for i in others if i != index][:3]
            self._start(node, warm=True, seeds=seeds)
        states = []
        for node in nodes:
            me = self._engine(node).local_member
            states.append(
                wire.PushNodeState(
                    name=me.name,
                    addr=ipaddress.ip_address(me.address[0]).packed,
                    port=me.address[1],
                    incarnation=me.incarnation,
                    state=wire.NodeState.ALIVE,
                    vsn=me.vsn,
                    meta=me.meta,
                )
            )
        for node in nodes:
            self._engine(node).assume_converged(states, 0.0)
            self._flush(node)

    def _stop(self, node: SimNode) -> None:
        if not node.running:
            return
        node.running = False
        node.paused = False
        node.backlog.clear()
        node.backlog_bytes = 0
        node.timer_seq = -1
        node.timer_at = math.inf
        node.seconds += self.now - node.started_at
        if node.health:
            node.health = 0
            self.metrics.health_changed(node.name, self.now, 0)

    def _seeds(self, exclude: str, count: int = 3) -> list[Address]:
        candidates = [self.nodes[name].address for name in self.metrics.members if name != exclude]
        return self._rng.sample(candidates, min(count, len(candidates)))

    def _note(self, what: str, name: str = "", detail: str = "") -> None:
        self.trace.record(self.now, "fault", what, name, detail.encode())

    # ------------------------------------------------------------------ faults

    def add_node(
        self,
        name: str | None = None,
        seeds: Sequence[str] | None = None,
        meta: bytes = b"",
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Start a new member now and join it through ``seeds`` (default: up to three random
        running members); ``meta`` (or, with a Serf layer, ``tags``) is its metadata from the
        start, so its join already carries it.  Returns its name."""
        node = self._create(name or self._new_name())
        self._note("join", node.name)
        seed_addresses = (
            [self._node(seed).address for seed in seeds]
            if seeds is not None
            else self._seeds(node.name)
        )
        self._start(node, warm=False, seeds=seed_addresses, meta=meta, tags=tags)
        self.metrics.added(node.name, self.now)
        if seed_addresses:
            self._stack(node).join(seed_addresses, self.now)
        self._flush(node)
        return node.name

    def user_event(
        self, name: str, event: str, payload: bytes = b"", coalesce: bool = True
    ) -> None:
        """``name`` sends a Serf user event to every member (a Serf-enabled cluster)."""
        serf = self._running_serf(name)
        ltime = serf.event_clock.time
        self._note("user-event", name, event)
        serf.user_event(event, payload, coalesce, self.now)
        members = len(self.metrics.members)
        self.serf_metrics.event_sent(
            event, ltime, name, self.now, coalesce=coalesce, members=members
        )
        self._flush(self._node(name))

    def query(
        self, name: str, query: str, payload: bytes = b"", **options: Unpack[QueryOptions]
    ) -> int:
        """``name`` asks a Serf query (a Serf-enabled cluster); returns its id.  What it
        collects is in the results' ``queries``."""
        serf = self._running_serf(name)
        self._note("query", name, query)
        query_id = serf.query(query, payload, self.now, **options)
        members = len(self.metrics.members)
        self.serf_metrics.query_sent(name, query_id, query, self.now, members)
        self._flush(self._node(name))
        return query_id

    def set_tags(self, name: str, tags: Mapping[str, str]) -> None:
        """``name`` advertises new Serf tags (a Serf-enabled cluster)."""
        serf = self._running_serf(name)
        self._note("tags", name, repr(sorted(tags.items())))
        serf.set_tags(tags, self.now)
        self._flush(self._node(name))

    def _running_serf(self, name: str) -> Serf:
        if not self._node(name).running:
            raise SimulationError(f"node {name!r} is not running; restart it first")
        return self.serf(name)

    def command(self, name: str, action: Callable[[Engine, float], object]) -> None:
        """Call ``action(engine, now)`` on ``name``'s running engine (``send``,
        ``send_reliable``, ``broadcast``, ``update_meta``, ...) and carry out what it asks."""
        node = self._node(name)
        if not node.running:
            raise SimulationError(f"node {name!r} is not running; restart it first")
        self._note("command", name)
        action(self._engine(node), self.now)
        self._flush(node)

    def crash(self, name: str) -> None:
        """Stop ``name`` now without a word (its process dies; the host stays up, so streams
        to it are refused)."""
        node = self._node(name)
        if not node.running:
            return
        self._note("crash", name)
        self.metrics.departed(name, self.now, crashed=not node.leaving)
        self._stop(node)

    def restart(
        self,
        name: str,
        new_address: bool = False,
        meta: bytes = b"",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``name`` again with a fresh engine (incarnation 1; it refutes stale news
        itself) and join it through running members; a running node is crashed first.
        ``meta`` or ``tags`` are its metadata from the start, as for :meth:`add_node`."""
        node = self._node(name)
        self.crash(name)
        if new_address:
            self._by_address.pop(node.address, None)
            node.address = self._new_address()
            self._by_address[node.address] = node
        self._note("restart", name, f"{node.address[0]}:{node.address[1]}")
        seeds = self._seeds(name)
        self._start(node, warm=False, seeds=seeds, meta=meta, tags=tags)
        if seeds:
            self._stack(node).join(seeds, self.now)
        self._flush(node)

    def leave(self, name: str) -> None:
        """Make ``name`` leave gracefully; it stops once its leave has gone out."""
        node = self._node(name)
        if not node.running or node.leaving:
            return
        self._note("leave", name)
        node.leaving = True
        self.metrics.departed(name, self.now, crashed=False)
        self._stack(node).leave(self.now)
        self._flush(node)

    def pause(self, name: str, duration: float) -> None:
        """Freeze ``name`` for ``duration`` seconds: it handles nothing, its datagrams queue
        in a socket buffer of :data:`SOCKET_BUFFER_BYTES`, its timers wait; when it resumes its
        overdue timers run first, then what queued, in arrival order."""
        node = self._node(name)
        if not node.running or node.paused:
            return
        self._note("pause", name, repr(duration))
        node.paused = True
        instance = node.instance
        self.at(self.now + duration, lambda: self._resume(node, instance))

    def _resume(self, node: SimNode, instance: int) -> None:
        if not node.running or not node.paused or node.instance != instance:
            return
        self._note("resume", node.name)
        node.paused = False
        self._stack(node).tick(self.now)
        self._flush(node)
        backlog, node.backlog, node.backlog_bytes = node.backlog, [], 0
        for entry in backlog:
            self._dispatch_input(entry, True)

    def slow(self, name: str, delay: float, duration: float | None = None) -> None:
        """Make ``name`` handle every datagram and stream ``delay`` seconds after it arrives
        (a starved process; its timers stay on time), for ``duration`` seconds or for good."""
        node = self._node(name)
        if not node.running:
            return
        self._note("slow", name, repr(delay))
        node.slow = delay
        if duration is not None:
            instance = node.instance

            def end() -> None:
                if node.instance == instance:
                    node.slow = 0.0

            self.at(self.now + duration, end)

    def partition(
        self,
        groups: Iterable[Iterable[str]],
        allowed: Iterable[tuple[int, int]] = (),
        duration: float | None = None,
    ) -> int:
        """Cut traffic between the groups (except the ``allowed`` pairs of group indexes);
        nodes in no group still reach everyone.  Returns a rule id for :meth:`repair`."""
        rule = Partition(tuple(tuple(g) for g in groups), tuple(allowed))
        for group in rule.groups:
            for name in group:
                self._node(name)
        return self._add_cut(rule, duration)

    def cut(
        self, sources: Iterable[str], targets: Iterable[str], duration: float | None = None
    ) -> int:
        """Cut traffic from ``sources`` to ``targets`` only (one way)."""
        return self._add_cut(Cut(tuple(sources), tuple(targets)), duration)

    def _add_cut(self, rule: Partition | Cut, duration: float | None) -> int:
        self._note("cut", "", repr(rule))
        rule_id = self.network.add_cut(rule)
        if duration is not None:
            self.at(self.now + duration, lambda: self.repair(rule_id))
        return rule_id

    def repair(self, rule_id: int | None = None) -> None:
        """Remove one cut (by id) or all of them; once none is left, time the convergence."""
        if not self.network.has_cuts:
            return
        self._note("repair", "", repr(rule_id))
        if rule_id is None:
            self.network.repair()
        else:
            self.network.remove_cut(rule_id)
        if not self.network.has_cuts:
            self.metrics.repaired(self.now)

    def set_link(
        self,
        nodes: Iterable[str] | None = None,
        duration: float | None = None,
        direction: str = "both",
        **changes: Any,
    ) -> int:
        """Change the link (``loss=0.1``, ``latency=0.05``, ...) of every path to or from
        ``nodes`` (all paths when None), or only into them (``direction="in"``: loss at their
        ingress) or out of them (``"out"``), for ``duration`` seconds or for good."""
        listed = None if nodes is None else tuple(nodes)
        link = self.network.default.replace(**changes)
        self._note("link", "", f"{listed} {direction} {changes}")
        rule_id = self.network.add_link(link, listed, direction)
        if duration is not None:
            self.at(self.now + duration, lambda: self.network.remove_link(rule_id))
        return rule_id

    def schedule(self, *faults: Scheduled) -> None:
        """Apply each fault at its time."""
        for fault in faults:
            self.at(fault.at, functools.partial(fault.apply, self))
