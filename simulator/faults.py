"""Faults as data: what happens to which node, when, and for how long.

A schedule is a list of these frozen dataclasses; each knows its time (``at``) and how to apply
itself to a :class:`~simulator.cluster.Cluster`.  They round-trip through plain dicts
(``to_dict`` / :func:`from_dict`), so a schedule found by ``explore`` can be printed, saved as
JSON and replayed exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from simulator.cluster import Cluster, Scheduled


class ScheduleError(ValueError):
    """A fault description cannot be read; the message names the field and the fix."""


class Fault(Scheduled, Protocol):
    """Anything a cluster can apply at a time, and describe as plain data."""

    def to_dict(self) -> dict[str, Any]:
        """A plain description that :func:`from_dict` reads back."""
        ...


class _Plain:
    """``to_dict`` for the fault dataclasses: the kind, then every field."""

    __slots__ = ()
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {"fault": self.kind, **fields}


@dataclass(frozen=True, slots=True)
class Crash(_Plain):
    """``node`` dies without a word; with ``restart_after``, it comes back that much later."""

    kind: ClassVar[str] = "crash"
    at: float
    node: str
    restart_after: float | None = None
    new_address: bool = False

    def apply(self, cluster: Cluster) -> None:
        cluster.crash(self.node)
        if self.restart_after is not None:
            cluster.schedule(Restart(cluster.now + self.restart_after, self.node, self.new_address))


@dataclass(frozen=True, slots=True)
class Restart(_Plain):
    """``node`` starts again with a fresh engine (crashed first if it still runs)."""

    kind: ClassVar[str] = "restart"
    at: float
    node: str
    new_address: bool = False

    def apply(self, cluster: Cluster) -> None:
        cluster.restart(self.node, new_address=self.new_address)


@dataclass(frozen=True, slots=True)
class Leave(_Plain):
    """``node`` leaves gracefully and stops."""

    kind: ClassVar[str] = "leave"
    at: float
    node: str

    def apply(self, cluster: Cluster) -> None:
        cluster.leave(self.node)


@dataclass(frozen=True, slots=True)
class Join(_Plain):
    """A new member (named ``node``, or the next free ``nK``) joins through running ones."""

    kind: ClassVar[str] = "join"
    at: float
    node: str | None = None

    def apply(self, cluster: Cluster) -> None:
        cluster.add_node(self.node)


@dataclass(frozen=True, slots=True)
class Split(_Plain):
    """A partition: traffic between ``groups`` is cut, except between ``allowed`` pairs of
    group indexes; nodes in no group reach everyone.  Repaired after ``duration``, if given."""

    kind: ClassVar[str] = "split"
    at: float
    groups: tuple[tuple[str, ...], ...]
    allowed: tuple[tuple[int, int], ...] = ()
    duration: float | None = None

    def apply(self, cluster: Cluster) -> None:
        cluster.partition(self.groups, self.allowed, self.duration)

    @classmethod
    def halves(cls, at: float, names: Sequence[str], duration: float | None = None) -> Split:
        """Two halves that cannot reach each other."""
        middle = len(names) // 2
        return cls(at, (tuple(names[:middle]), tuple(names[middle:])), (), duration)

    @classmethod
    def isolate(
        cls, at: float, node: str, names: Sequence[str], duration: float | None = None
    ) -> Split:
        """``node`` alone, cut from everyone else."""
        return cls(at, ((node,), tuple(n for n in names if n != node)), (), duration)

    @classmethod
    def ring(
        cls, at: float, names: Sequence[str], parts: int = 4, duration: float | None = None
    ) -> Split:
        """``parts`` groups in a ring: each reaches only its two neighbours."""
        if parts < 3:
            raise ScheduleError(f"a ring needs parts >= 3, got {parts}; use halves for 2")
        groups = tuple(tuple(names[i::parts]) for i in range(parts))
        allowed = tuple((i, (i + 1) % parts) for i in range(parts))
        return cls(at, groups, allowed, duration)

    @classmethod
    def bridge(cls, at: float, names: Sequence[str], duration: float | None = None) -> Split:
        """Two halves that cannot reach each other, and one node (the first) that reaches
        both: the classic case where indirect probes through the bridge keep both sides up."""
        rest = names[1:]
        middle = len(rest) // 2
        groups = (tuple(rest[:middle]), tuple(rest[middle:]), (names[0],))
        return cls(at, groups, ((0, 2), (1, 2)), duration)


@dataclass(frozen=True, slots=True)
class OneWay(_Plain):
    """Traffic from ``sources`` to ``targets`` is cut; the other direction still flows."""

    kind: ClassVar[str] = "one-way"
    at: float
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    duration: float | None = None

    def apply(self, cluster: Cluster) -> None:
        cluster.cut(self.sources, self.targets, self.duration)


@dataclass(frozen=True, slots=True)
class Repair(_Plain):
    """Every cut is removed."""

    kind: ClassVar[str] = "repair"
    at: float

    def apply(self, cluster: Cluster) -> None:
        cluster.repair()


@dataclass(frozen=True, slots=True)
class LinkChange(_Plain):
    """Paths to or from ``nodes`` (all paths when None) get a different loss or latency."""

    kind: ClassVar[str] = "link"
    at: float
    loss: float | None = None
    latency: float | None = None
    jitter: float | None = None
    duplicate: float | None = None
    nodes: tuple[str, ...] | None = None
    duration: float | None = None
    direction: str = "both"
    """``in``: only what arrives at ``nodes``; ``out``: only what leaves them."""

    def apply(self, cluster: Cluster) -> None:
        changes = {
            name: value
            for name, value in (
                ("loss", self.loss),
                ("latency", self.latency),
                ("jitter", self.jitter),
                ("duplicate", self.duplicate),
            )
            if value is not None
        }
        cluster.set_link(self.nodes, self.duration, self.direction, **changes)


@dataclass(frozen=True, slots=True)
class Flap(_Plain):
    """Traffic from ``sources`` to ``targets`` is cut for ``period`` seconds, then flows for
    ``period`` seconds, and so on for ``duration`` seconds: a link that comes and goes."""

    kind: ClassVar[str] = "flap"
    at: float
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    period: float
    duration: float

    def apply(self, cluster: Cluster) -> None:
        if self.period <= 0:
            raise ScheduleError(f"flap period={self.period} must be > 0 seconds")
        cluster.cut(self.sources, self.targets, min(self.period, self.duration))
        rest = self.duration - 2 * self.period
        if rest > 0:
            cluster.schedule(
                dataclasses.replace(self, at=cluster.now + 2 * self.period, duration=rest)
            )


@dataclass(frozen=True, slots=True)
class Pause(_Plain):
    """``node`` is frozen for ``duration`` seconds (a stop-the-world pause)."""

    kind: ClassVar[str] = "pause"
    at: float
    node: str
    duration: float

    def apply(self, cluster: Cluster) -> None:
        cluster.pause(self.node, self.duration)


@dataclass(frozen=True, slots=True)
class Slow(_Plain):
    """``node`` handles every message ``delay`` seconds late, for ``duration`` or for good."""

    kind: ClassVar[str] = "slow"
    at: float
    node: str
    delay: float
    duration: float | None = None

    def apply(self, cluster: Cluster) -> None:
        cluster.slow(self.node, self.delay, self.duration)


@dataclass(frozen=True, slots=True)
class Churn(_Plain):
    """From ``at`` to ``end``, members crash, leave and join as Poisson processes with these
    rates (events per second, cluster-wide); crashed and departed members come back after
    ``restart_after`` seconds when it is set.  Never goes below ``min_members`` running."""

    kind: ClassVar[str] = "churn"
    at: float
    end: float
    crash_rate: float = 0.0
    leave_rate: float = 0.0
    join_rate: float = 0.0
    restart_after: float | None = None
    min_members: int = 2

    def apply(self, cluster: Cluster) -> None:
        total = self.crash_rate + self.leave_rate + self.join_rate
        if total <= 0:
            return
        rng = cluster.random_for(f"churn:{self.at!r}")

        def step() -> None:
            draw = rng.random() * total
            members = cluster.running()
            if draw < self.join_rate:
                cluster.add_node()
            elif len(members) > self.min_members:
                victim = rng.choice(members)
                if draw < self.join_rate + self.crash_rate:
                    cluster.crash(victim)
                else:
                    cluster.leave(victim)
                if self.restart_after is not None:
                    cluster.schedule(Restart(cluster.now + self.restart_after, victim))
            schedule_next()

        def schedule_next() -> None:
            when = cluster.now + rng.expovariate(total)
            if when <= self.end:
                cluster.at(when, step)

        schedule_next()


@dataclass(frozen=True, slots=True)
class UserEvent(_Plain):
    """``node`` sends a Serf user event (a Serf-enabled cluster)."""

    kind: ClassVar[str] = "user-event"
    at: float
    node: str
    name: str
    payload: str = ""
    coalesce: bool = False

    def apply(self, cluster: Cluster) -> None:
        if cluster.is_running(self.node):
            cluster.user_event(self.node, self.name, self.payload.encode(), self.coalesce)


@dataclass(frozen=True, slots=True)
class Query(_Plain):
    """``node`` asks a Serf query of every member (a Serf-enabled cluster); ``timeout`` 0
    takes Serf's default."""

    kind: ClassVar[str] = "query"
    at: float
    node: str
    name: str
    payload: str = ""
    timeout: float = 0.0

    def apply(self, cluster: Cluster) -> None:
        if cluster.is_running(self.node):
            timeout = self.timeout or None
            cluster.query(self.node, self.name, self.payload.encode(), timeout=timeout)


@dataclass(frozen=True, slots=True)
class Tags(_Plain):
    """``node`` advertises new Serf tags (a Serf-enabled cluster)."""

    kind: ClassVar[str] = "tags"
    at: float
    node: str
    tags: tuple[tuple[str, str], ...]

    def apply(self, cluster: Cluster) -> None:
        if cluster.is_running(self.node):
            cluster.set_tags(self.node, dict(self.tags))


FAULTS: dict[str, type[Any]] = {
    kind.kind: kind
    for kind in (
        Crash,
        Restart,
        Leave,
        Join,
        Split,
        OneWay,
        Flap,
        Repair,
        LinkChange,
        Pause,
        Slow,
        Churn,
        UserEvent,
        Query,
        Tags,
    )
}
"""Every fault type by its ``kind`` name."""


def _freeze(value: Any) -> Any:
    """JSON lists back to the tuples the dataclasses hold."""
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def from_dict(data: dict[str, Any]) -> Fault:
    """The fault a ``to_dict`` produced."""
    fields = dict(data)
    kind = fields.pop("fault", None)
    factory = FAULTS.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ScheduleError(f"unknown fault kind {kind!r}; known: {', '.join(FAULTS)}")
    try:
        fault: Fault = factory(**{name: _freeze(value) for name, value in fields.items()})
    except TypeError as exc:
        raise ScheduleError(f"bad {kind} fault {data!r}: {exc}") from None
    return fault
