"""Measurements taken from the run as it happens, and the plain-data reports built from them.

:class:`Metrics` is told about every membership event, every node that starts or departs and
every repaired partition.  From that it keeps each node's view as a log of changes (compact:
the initial members plus what changed, when), detection times of each crash, false alarms, the
moment views agree after a repair, and each node's health score over time.  Reports are frozen
dataclasses with ``to_dict`` so that they turn into tables, plots and JSON without glue.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol

from swim.config import Config
from swim.suspicion import suspicion_bounds

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"


def detection_bound(config: Config, members: int) -> float:
    """Seconds within which every live member marks a crashed one failed (the profile's bound).

    Twelve protocol periods for some member to probe it (each period misses with probability
    about 1/e, so 12 miss with about 6e-6), the failing probe stretched by the worst local
    health, the longest suspicion timeout, and twenty gossip rounds per doubling of the cluster
    to spread the news (generous, so that loss does not break it).
    """
    _, longest = suspicion_bounds(
        config.suspicion_mult, config.suspicion_max_timeout_mult, members, config.probe_interval
    )
    probing = config.probe_interval * (12 + config.awareness_max_multiplier)
    spreading = config.gossip_interval * 20 * math.ceil(math.log2(max(2, members)))
    return probing + longest + spreading


class Observation(NamedTuple):
    """One node's view changed: ``observer`` now holds ``member`` in ``state``."""

    time: float
    observer: str
    kind: str
    """The event: joined, updated, suspect, alive, failed, left or conflict."""
    member: str
    incarnation: int
    state: str
    """The member's state in the observer's view after the event."""


class World(Protocol):
    """What the metrics need to know about the simulated world to judge an alarm."""

    def answering(self, observer: str, member: str) -> bool:
        """Whether ``member`` runs, is not paused, and the path to and from ``observer`` is
        open (so a suspicion of it by ``observer`` is false)."""
        ...


@dataclass(frozen=True, slots=True)
class CrashReport:
    """How the cluster noticed one crash; delays in seconds after it, None if never."""

    node: str
    at: float
    observers: int
    """Running members that held the node alive or suspect when it crashed."""
    first_suspicion: float | None
    first_failed: float | None
    all_failed: float | None
    """When the last of those observers (still running) marked it failed."""
    failed_by: int
    restarted_at: float | None
    """Set when the node came back before every observer marked it failed."""


@dataclass(frozen=True, slots=True)
class FalseAlarm:
    """A member that was running, not paused and reachable was suspected or marked failed."""

    time: float
    observer: str
    member: str
    kind: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class ConvergenceReport:
    """After the network was whole again at ``repaired_at``: when every running member first
    held exactly the running members alive (None: not within the run)."""

    repaired_at: float
    agreed_after: float | None


@dataclass(frozen=True, slots=True)
class SpreadCurve:
    """When each observer learned a membership change (seconds after ``since``, sorted)."""

    member: str
    kind: str
    since: float
    delays: tuple[float, ...]
    observers: int
    """How many running members could learn it; ``len(delays) / observers`` is the reach."""

    def time_to(self, fraction: float) -> float | None:
        """Seconds until ``fraction`` of the observers knew, or None if that never happened."""
        needed = max(1, math.ceil(fraction * self.observers))
        return self.delays[needed - 1] if len(self.delays) >= needed else None

    def points(self) -> list[tuple[float, float]]:
        """(delay, fraction of observers that know) at each step, for plotting."""
        total = max(1, self.observers)
        return [(delay, (i + 1) / total) for i, delay in enumerate(self.delays)]


@dataclass(frozen=True, slots=True)
class UserEventReport:
    """How one Serf user event reached the members running when it was sent."""

    name: str
    ltime: int
    sender: str
    sent_at: float
    coalesce: bool
    """It may be coalesced away by a newer event of its name (then some never deliver it)."""
    members: int
    """Members running when it was sent, the sender included: who should deliver it."""
    delays: tuple[float, ...]
    """Seconds after ``sent_at`` at which each member delivered it, sorted."""
    duplicates: int
    """Deliveries beyond the first at some member (Serf delivers each event once)."""

    @property
    def reach(self) -> float:
        return len(self.delays) / max(1, self.members)


@dataclass(frozen=True, slots=True)
class QueryReport:
    """What one Serf query collected before it timed out."""

    name: str
    sender: str
    sent_at: float
    members: int
    """Members running when it was sent, the sender included."""
    acks: int
    answers: int
    answer_delays: tuple[float, ...]
    """Seconds after ``sent_at`` at which each answer arrived, sorted."""
    done_at: float | None
    """When it timed out (None: not yet)."""


@dataclass(frozen=True, slots=True)
class NodeTraffic:
    """What one node sent and received over the run (all its incarnations together)."""

    name: str
    seconds: float
    datagrams_out: int
    bytes_out: int
    datagrams_in: int
    bytes_in: int
    streams_out: int
    stream_bytes_out: int
    streams_in: int
    stream_bytes_in: int


@dataclass(frozen=True, slots=True)
class TrafficSummary:
    """Per node per second of running time, over every node: the mean and the busiest."""

    datagrams_per_node_second: float
    bytes_per_node_second: float
    max_datagrams_per_node_second: float
    max_bytes_per_node_second: float
    streams_per_node_second: float
    stream_bytes_per_node_second: float

    @classmethod
    def of(cls, nodes: Iterable[NodeTraffic]) -> TrafficSummary:
        """Summarise ``nodes`` (datagrams and bytes counted when sent)."""
        rows = [node for node in nodes if node.seconds > 0]
        seconds = sum(node.seconds for node in rows) or 1.0
        return cls(
            datagrams_per_node_second=sum(n.datagrams_out for n in rows) / seconds,
            bytes_per_node_second=sum(n.bytes_out for n in rows) / seconds,
            max_datagrams_per_node_second=max(
                (n.datagrams_out / n.seconds for n in rows), default=0.0
            ),
            max_bytes_per_node_second=max((n.bytes_out / n.seconds for n in rows), default=0.0),
            streams_per_node_second=sum(n.streams_out for n in rows) / seconds,
            stream_bytes_per_node_second=sum(n.stream_bytes_out for n in rows) / seconds,
        )


@dataclass(frozen=True, slots=True)
class CoordinateReport:
    """How well Serf's network coordinates estimate round trips: for pairs (observer, member)
    where the observer holds the member's coordinate, the distance from its own to it (what
    ``serf rtt`` prints there) against the link model's mean RTT, in seconds."""

    pairs: int
    median_rtt: float
    median_error: float
    """The median of |estimated RTT - true RTT|."""
    p90_error: float
    median_relative_error: float
    """The median of |estimated - true| / true."""

    @classmethod
    def of(cls, samples: Iterable[tuple[float, float]]) -> CoordinateReport | None:
        """The report for (estimated, true) RTT pairs; None when there are none."""
        pairs = list(samples)
        if not pairs:
            return None
        errors = sorted(abs(estimated - true) for estimated, true in pairs)
        relative = sorted(abs(estimated - true) / true for estimated, true in pairs if true > 0)
        return cls(
            pairs=len(pairs),
            median_rtt=_median(sorted(true for _, true in pairs)),
            median_error=_median(errors),
            p90_error=errors[min(len(errors) - 1, int(0.9 * len(errors)))],
            median_relative_error=_median(relative) if relative else 0.0,
        )


def _median(ordered: list[float]) -> float:
    return ordered[len(ordered) // 2]


@dataclass(frozen=True, slots=True)
class Results:
    """Everything a run measured, as plain data; ``to_dict`` gives JSON-ready dicts."""

    seed: int
    nodes: int
    duration: float
    node_seconds: float
    running: int
    trace_hash: str
    agreed: bool
    """Whether, at the end, every running member holds exactly the running members alive."""
    crashes: tuple[CrashReport, ...]
    false_suspicions: tuple[FalseAlarm, ...]
    false_failures: tuple[FalseAlarm, ...]
    convergence: tuple[ConvergenceReport, ...]
    spreads: tuple[SpreadCurve, ...]
    """How each crash (failed), leave (left) and new member (joined) reached the others."""
    traffic: TrafficSummary
    network: dict[str, int]
    """Datagrams lost, cut, oversized, duplicated, unroutable, sent to a stopped node, or
    dropped from a paused node's full socket buffer."""
    events: dict[str, int]
    """Membership events seen, by kind, summed over observers."""
    max_health: int
    """The worst local health score any node reached."""
    unhealthy_node_seconds: float
    """Node-seconds spent with a health score above 0."""
    user_events: tuple[UserEventReport, ...] = ()
    """Each Serf user event sent (Serf-enabled clusters)."""
    queries: tuple[QueryReport, ...] = ()
    """Each Serf query sent (Serf-enabled clusters)."""
    coordinates: CoordinateReport | None = None
    """How well network coordinates estimate RTTs at the end (Serf-enabled clusters)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific figures."""

    def to_dict(self) -> dict[str, Any]:
        """The results as JSON-ready nested dicts and lists."""
        return asdict(self)


class _Crash:
    __slots__ = (
        "all_failed",
        "at",
        "failed_by",
        "first_failed",
        "first_suspicion",
        "node",
        "observers",
        "pending",
        "restarted_at",
    )

    def __init__(self, node: str, at: float, observers: list[str]) -> None:
        self.node = node
        self.at = at
        self.observers = len(observers)
        self.pending = dict.fromkeys(observers)
        self.first_suspicion: float | None = None
        self.first_failed: float | None = None
        self.all_failed: float | None = None
        self.failed_by = 0
        self.restarted_at: float | None = None

    @property
    def open(self) -> bool:
        return self.all_failed is None and self.restarted_at is None

    def drop(self, observer: str, now: float) -> None:
        """``observer`` marked the node failed or stopped running: one fewer to wait for."""
        if observer in self.pending:
            del self.pending[observer]
            if not self.pending and self.open:
                self.all_failed = now - self.at

    def report(self) -> CrashReport:
        return CrashReport(
            node=self.node,
            at=self.at,
            observers=self.observers,
            first_suspicion=self.first_suspicion,
            first_failed=self.first_failed,
            all_failed=self.all_failed,
            failed_by=self.failed_by,
            restarted_at=self.restarted_at,
        )


class Metrics:
    """Records what the reports need, at O(1) per event (O(n) per node start or departure)."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.observations: list[Observation] = []
        self.initial: dict[str, None] = {}
        """Members every warm-started node begins with, all alive (ordered)."""
        self._warm: dict[str, bool] = {}  # observer -> starts from ``initial``
        self._changes: dict[str, dict[str, str]] = {}  # observer -> member -> state
        self.members: dict[str, None] = {}
        """Nodes that run and have not begun to leave: who every view should hold alive."""
        self._mismatch: dict[str, int] = {}
        self._disagreeing = 0
        self._crashes: list[_Crash] = []
        self._open_crashes: dict[str, _Crash] = {}
        self._convergence: list[list[float | None]] = []  # [repaired_at, agreed_after]
        self.false_suspicions: list[FalseAlarm] = []
        self.false_failures: list[FalseAlarm] = []
        self.event_counts: dict[str, int] = {}
        self.health: dict[str, list[tuple[float, int]]] = {}
        """Each node's health score over time: (time, score) at every change."""
        self.starts: list[tuple[float, str, int]] = []
        """(time, name, instance) each time a node (re)started."""
        self.changes: list[tuple[float, str, str, int]] = []
        """(time, member, kind, observers) of each crash (failed), leave (left) and new member
        (joined), with how many other members were running then: the changes whose spread
        the results follow."""

    # ------------------------------------------------------------------ views

    def state(self, observer: str, member: str) -> str | None:
        """``member``'s state in ``observer``'s view as events told it (None: unknown)."""
        state = self._changes[observer].get(member)
        if state is None and self._warm[observer] and member in self.initial:
            return ALIVE
        return state

    def view(self, observer: str) -> dict[str, str]:
        """``observer``'s whole view, member -> state, as events told it."""
        out = dict.fromkeys(self.initial, ALIVE) if self._warm[observer] else {}
        out.update(self._changes[observer])
        return out

    @property
    def agreed(self) -> bool:
        """Every running member holds exactly the running members alive."""
        return self._disagreeing == 0 and bool(self.members)

    def _set_mismatch(self, observer: str, value: int) -> None:
        old = self._mismatch.get(observer, 0)
        self._mismatch[observer] = value
        self._disagreeing += (value > 0) - (old > 0)

    def _count_mismatch(self, observer: str) -> int:
        members = self.members
        wrong = sum(self.state(observer, m) != ALIVE for m in members)
        known = self.view(observer)
        return wrong + sum(state == ALIVE and m not in members for m, state in known.items())

    # ------------------------------------------------------------------ lifecycle

    def started(self, name: str, instance: int, now: float, warm: bool) -> None:
        """A node (re)started: warm ones know ``initial``, others only themselves."""
        self.starts.append((now, name, instance))
        self._warm[name] = warm
        self._changes[name] = {} if warm else {name: ALIVE}
        crash = self._open_crashes.pop(name, None)
        if crash is not None:
            crash.restarted_at = now
        self.health.setdefault(name, []).append((now, 0))
        self._join_membership(name, now)

    def _join_membership(self, name: str, now: float) -> None:
        self.members[name] = None
        for observer in self.members:
            if observer != name:
                seen = self.state(observer, name) == ALIVE
                self._set_mismatch(observer, self._mismatch[observer] + (-1 if seen else 1))
        self._set_mismatch(name, self._count_mismatch(name))
        self._check_agreement(now)

    def added(self, name: str, now: float) -> None:
        """A new member joined a running cluster: follow the spread of its arrival."""
        self.changes.append((now, name, "joined", len(self.members) - (name in self.members)))

    def departed(self, name: str, now: float, crashed: bool) -> None:
        """A node crashed or began to leave: views should drop it; a crash starts a report."""
        if name not in self.members:
            return
        del self.members[name]
        self.changes.append((now, name, "failed" if crashed else "left", len(self.members)))
        self._set_mismatch(name, 0)
        del self._mismatch[name]
        observers = []
        for observer in self.members:
            state = self.state(observer, name)
            seen = state == ALIVE
            self._set_mismatch(observer, self._mismatch[observer] + (1 if seen else -1))
            if state in (ALIVE, SUSPECT):
                observers.append(observer)
        for crash in list(self._open_crashes.values()):
            crash.drop(name, now)
            if not crash.open:
                del self._open_crashes[crash.node]
        if crashed:
            crash = _Crash(name, now, observers)
            self._crashes.append(crash)
            if crash.pending:
                self._open_crashes[name] = crash
            else:
                crash.all_failed = 0.0
        self._check_agreement(now)

    def repaired(self, now: float) -> None:
        """The last cut was removed: time how long views take to agree again."""
        self._convergence.append([now, None])
        self._check_agreement(now)

    def _check_agreement(self, now: float) -> None:
        if self._disagreeing or not self.members:
            return
        for entry in self._convergence:
            if entry[1] is None:
                start = entry[0]
                assert start is not None
                entry[1] = now - start

    # ------------------------------------------------------------------ events

    def observed(self, observation: Observation) -> None:
        """An observer's engine reported a membership event."""
        self.observations.append(observation)
        now, observer, kind, member, incarnation, state = observation
        self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
        old = self.state(observer, member)
        self._changes[observer][member] = state
        if observer in self.members and (old == ALIVE) != (state == ALIVE):
            running = member in self.members
            delta = (-1 if running else 1) if state == ALIVE else (1 if running else -1)
            self._set_mismatch(observer, self._mismatch[observer] + delta)
            if delta < 0:
                self._check_agreement(now)
        if kind not in ("suspect", "failed") or member == observer:
            return
        if self._world.answering(observer, member):
            alarm = FalseAlarm(now, observer, member, kind, incarnation)
            (self.false_suspicions if kind == "suspect" else self.false_failures).append(alarm)
        crash = self._open_crashes.get(member)
        if crash is None:
            return
        delay = now - crash.at
        if kind == "suspect":
            if crash.first_suspicion is None:
                crash.first_suspicion = delay
            return
        if crash.first_failed is None:
            crash.first_failed = delay
        if observer in crash.pending:
            crash.failed_by += 1
            crash.drop(observer, now)
            if not crash.open:
                del self._open_crashes[member]

    def health_changed(self, name: str, now: float, score: int) -> None:
        """``name``'s local health score is now ``score``."""
        self.health[name].append((now, score))

    # ------------------------------------------------------------------ reports

    def crash_reports(self) -> tuple[CrashReport, ...]:
        """One report per crash, in the order they happened."""
        return tuple(crash.report() for crash in self._crashes)

    def convergence_reports(self) -> tuple[ConvergenceReport, ...]:
        """One report per repair, in order."""
        out = []
        for start, after in self._convergence:
            assert start is not None
            out.append(ConvergenceReport(start, after))
        return tuple(out)

    def spread(self, member: str, kind: str, since: float, observers: int) -> SpreadCurve:
        """When each other member first reported ``kind`` about ``member`` after ``since``."""
        first: dict[str, float] = {}
        for obs in self.observations:
            if (
                obs.time >= since
                and obs.member == member
                and obs.kind == kind
                and obs.observer != member
                and obs.observer not in first
            ):
                first[obs.observer] = obs.time - since
        return SpreadCurve(member, kind, since, tuple(sorted(first.values())), observers)

    def spreads(self) -> tuple[SpreadCurve, ...]:
        """The spread of every recorded change among the members running when it happened."""
        return tuple(
            self.spread(member, kind, since, observers)
            for since, member, kind, observers in self.changes
        )

    def alive_timeline(self, observer: str) -> list[tuple[float, int]]:
        """How many members ``observer`` held alive (itself included), at each change: the
        compact form of its view over time, for plotting."""
        alive = {m for m, state in self.view_at_start(observer).items() if state == ALIVE}
        start = next((t for t, name, _ in reversed(self.starts) if name == observer), 0.0)
        out = [(start, len(alive))]
        for obs in self.observations:
            if obs.observer != observer or obs.time < start:
                continue
            if obs.state == ALIVE:
                alive.add(obs.member)
            else:
                alive.discard(obs.member)
            if len(alive) != out[-1][1]:
                out.append((obs.time, len(alive)))
        return out

    def view_at_start(self, observer: str) -> dict[str, str]:
        """What ``observer``'s latest process began with: everyone (warm) or itself."""
        if self._warm[observer]:
            return dict.fromkeys(self.initial, ALIVE)
        return {observer: ALIVE}

    def unhealthy_seconds(self, until: float) -> float:
        """Node-seconds spent with a health score above 0, up to ``until``."""
        total = 0.0
        for timeline in self.health.values():
            for (start, score), (end, _) in itertools.pairwise([*timeline, (until, 0)]):
                if score > 0:
                    total += end - start
        return total


class _UserEvent:
    __slots__ = ("coalesce", "delivered", "duplicates", "key", "members", "sender", "sent_at")

    def __init__(
        self, key: tuple[str, int], sender: str, sent_at: float, coalesce: bool, members: int
    ) -> None:
        self.key = key
        self.coalesce = coalesce
        self.sender = sender
        self.sent_at = sent_at
        self.members = members
        self.delivered: dict[str, float] = {}
        self.duplicates = 0


class _Query:
    __slots__ = ("acks", "answers", "done_at", "members", "name", "sender", "sent_at")

    def __init__(self, name: str, sender: str, sent_at: float, members: int) -> None:
        self.name = name
        self.sender = sender
        self.sent_at = sent_at
        self.members = members
        self.acks = 0
        self.answers: list[float] = []
        self.done_at: float | None = None


class SerfMetrics:
    """What Serf-enabled runs measure: how user events spread and what queries collect."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, int], _UserEvent] = {}
        self._queries: dict[tuple[str, int], _Query] = {}  # (asker, query id)

    def event_sent(
        self, name: str, ltime: int, sender: str, now: float, *, coalesce: bool, members: int
    ) -> None:
        key = (name, ltime)
        self._events.setdefault(key, _UserEvent(key, sender, now, coalesce, members))

    def event_delivered(self, observer: str, name: str, ltime: int, now: float) -> None:
        event = self._events.get((name, ltime))
        if event is None:
            return
        if observer in event.delivered:
            event.duplicates += 1
        else:
            event.delivered[observer] = now

    def query_sent(self, asker: str, query_id: int, name: str, now: float, members: int) -> None:
        self._queries[(asker, query_id)] = _Query(name, asker, now, members)

    def query_arrival(self, asker: str, query_id: int, answer: bool, now: float) -> None:
        query = self._queries.get((asker, query_id))
        if query is None:
            return
        if answer:
            query.answers.append(now)
        else:
            query.acks += 1

    def query_done(self, asker: str, query_id: int, now: float) -> None:
        query = self._queries.get((asker, query_id))
        if query is not None:
            query.done_at = now

    def user_events(self) -> tuple[UserEventReport, ...]:
        return tuple(
            UserEventReport(
                name=e.key[0],
                ltime=e.key[1],
                sender=e.sender,
                sent_at=e.sent_at,
                coalesce=e.coalesce,
                members=e.members,
                delays=tuple(sorted(t - e.sent_at for t in e.delivered.values())),
                duplicates=e.duplicates,
            )
            for e in self._events.values()
        )

    def queries(self) -> tuple[QueryReport, ...]:
        return tuple(
            QueryReport(
                name=q.name,
                sender=q.sender,
                sent_at=q.sent_at,
                members=q.members,
                acks=q.acks,
                answers=len(q.answers),
                answer_delays=tuple(sorted(t - q.sent_at for t in q.answers)),
                done_at=q.done_at,
            )
            for q in self._queries.values()
        )
