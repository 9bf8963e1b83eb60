"""Graceful shutdown as a state machine: the design note's five steps, with no I/O.

``SERVING`` -> :meth:`Lifecycle.drain` -> ``DRAINING`` (announced; new work refused) ->
:meth:`Lifecycle.leave` once idle or past the deadline -> ``LEAVING`` ->
:meth:`Lifecycle.stopped` -> ``STOPPED``.  The lifecycle tracks the work in flight (requests
and registered background tasks); the runtime waits, cancels what :meth:`leave` returns as cut
off, leaves the cluster, and reports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    LEAVING = "leaving"
    STOPPED = "stopped"


class NotAccepting(RuntimeError):
    """New work was refused because the node is draining or stopped."""


class Kind(enum.Enum):
    REQUEST = "request"
    TASK = "task"


@dataclass(frozen=True, slots=True)
class Work:
    """One request or background task in flight."""

    id: int
    name: str
    kind: Kind
    started: float

    def __str__(self) -> str:
        return f"{self.kind.value} {self.name!r}"


@dataclass(frozen=True, slots=True)
class DrainReport:
    """How a drain went: what had to be cut off at the deadline, and whether we left."""

    cut_off: tuple[Work, ...]
    started: float
    finished: float
    left: bool

    @property
    def clean(self) -> bool:
        """Everything finished in time and the leave went out."""
        return not self.cut_off and self.left

    def __str__(self) -> str:
        """Durations in seconds from the start of the drain (the clock's own values mean
        nothing to a reader)."""
        took = f"drained in {self.finished - self.started:.1f} s"
        cut = ", ".join(
            f"{work} (running {self.started - work.started:.1f} s when the drain began)"
            for work in self.cut_off
        )
        cut = f"; cut off: {cut}" if cut else ""
        return f"{took}{cut}{'' if self.left else '; the leave did not complete'}"


class Lifecycle:
    """One node's serving state and the work it has in flight."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.phase = Phase.SERVING
        self.drain_started: float | None = None
        self.deadline: float | None = None
        self._work: dict[int, Work] = {}
        self._serial = 0
        self._cut_off: tuple[Work, ...] = ()

    def accepting(self) -> bool:
        """Whether new requests and tasks may start."""
        return self.phase is Phase.SERVING

    @property
    def in_flight(self) -> list[Work]:
        """The work still running, oldest first."""
        return list(self._work.values())

    @property
    def idle(self) -> bool:
        return not self._work

    def begin(self, name: str, kind: Kind, now: float) -> Work:
        """Start tracking a request or task; :class:`NotAccepting` once draining."""
        if self.phase is not Phase.SERVING:
            since = now - (self.drain_started or now)
            raise NotAccepting(
                f"node {self.node!r} is {self.phase.value} (the drain began {since:.1f} s ago) "
                f"and accepts no new {kind.value}s; send {name!r} to another instance"
            )
        self._serial += 1
        work = Work(self._serial, name, kind, now)
        self._work[work.id] = work
        return work

    def end(self, work: Work) -> None:
        """``work`` is over, finished or cancelled."""
        self._work.pop(work.id, None)

    def drain(self, now: float, timeout: float) -> float:
        """Stop accepting new work; returns the deadline for what is in flight."""
        if self.phase is not Phase.SERVING:
            raise RuntimeError(f"node {self.node!r} is already {self.phase.value}; drain once")
        if timeout < 0:
            raise ValueError(f"drain timeout={timeout} must be 0 or more seconds")
        self.phase = Phase.DRAINING
        self.drain_started = now
        self.deadline = now + timeout
        return self.deadline

    def leave(self) -> tuple[Work, ...]:
        """Move on to leaving; returns the work still in flight, which must be cancelled."""
        if self.phase is not Phase.DRAINING:
            raise RuntimeError(f"node {self.node!r} is {self.phase.value}, not draining")
        self.phase = Phase.LEAVING
        self._cut_off = tuple(self._work.values())
        return self._cut_off

    def stopped(self, now: float, *, left: bool) -> DrainReport:
        """The node left (or tried to); the report of the whole drain."""
        if self.phase is not Phase.LEAVING or self.drain_started is None:
            raise RuntimeError(f"node {self.node!r} is {self.phase.value}, not leaving")
        self.phase = Phase.STOPPED
        return DrainReport(self._cut_off, self.drain_started, now, left)
