"""Graceful shutdown as a sans-IO state machine: the design note's five steps.

Inputs are method calls that carry ``now``: work begins and ends (:meth:`Lifecycle.begin`,
:meth:`Lifecycle.end`), the drain starts (:meth:`~Lifecycle.drain`), the announcement went out
(:meth:`~Lifecycle.announced`), a deadline passed (:meth:`~Lifecycle.tick`), the leave completed
(:meth:`~Lifecycle.left`).  Outputs are what the driver must do next
(:meth:`~Lifecycle.take_actions`) and when to call :meth:`~Lifecycle.tick`
(:meth:`~Lifecycle.next_deadline`)::

    SERVING --drain()--> DRAINING   Announce; new work is refused
        once announced and idle, or at the drain deadline:
            CutOff what is still in flight, and wait up to cancel_grace for it to stop
    --> LEAVING   Leave --left()--> STOPPED   Finished(report)

Every input carries ``now``, as the engine's do, but only :meth:`~Lifecycle.tick` acts on a
deadline: a driver delivers what happened at an instant before it ticks at that instant.
:class:`~discovery.host.ServiceHost` drives it over AnyIO and :mod:`discovery.simulation` in
virtual time, so both drain by the same rules.
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


@dataclass(frozen=True, slots=True)
class Announce:
    """Publish the node's tags with ``svc-draining=1``, giving up at ``by``; then call
    :meth:`Lifecycle.announced`, whether it went out or not."""

    by: float


@dataclass(frozen=True, slots=True)
class CutOff:
    """Cancel this work, still running at the drain deadline; call :meth:`Lifecycle.end` for
    each as it stops."""

    work: tuple[Work, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the cluster, then call :meth:`Lifecycle.left`."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The drain is over; ``report`` says how it went."""

    report: DrainReport


Action = Announce | CutOff | Leave | Finished


class Lifecycle:
    """One node's serving state, the work it has in flight, and its drain.

    ``cancel_grace`` is how long the drain waits, after cutting off work at its deadline, for
    that work to stop before it leaves anyway.
    """

    def __init__(self, node: str, *, cancel_grace: float = 1.0) -> None:
        if cancel_grace < 0:
            raise ValueError(f"cancel_grace={cancel_grace} must be 0 or more seconds")
        self.node = node
        self._cancel_grace = cancel_grace
        self._phase = Phase.SERVING
        self._work: dict[int, Work] = {}
        self._serial = 0
        self._actions: list[Action] = []
        self._started = 0.0
        self._announcing = False
        self._late = False
        """The drain deadline has passed (and what ran then was cut off)."""
        self._leave_by = 0.0
        """The drain deadline, then the end of the cancel grace."""
        self._cut_off: tuple[Work, ...] = ()

    # ------------------------------------------------------------------ queries

    @property
    def phase(self) -> Phase:
        return self._phase

    def accepting(self) -> bool:
        """Whether new requests and tasks may start."""
        return self._phase is Phase.SERVING

    @property
    def in_flight(self) -> list[Work]:
        """The work still running, oldest first."""
        return list(self._work.values())

    # ------------------------------------------------------------------ inputs

    def begin(self, name: str, kind: Kind, now: float) -> Work:
        """Start tracking a request or task; :class:`NotAccepting` once draining."""
        if self._phase is not Phase.SERVING:
            raise NotAccepting(
                f"node {self.node!r} is {self._phase.value} (the drain began "
                f"{now - self._started:.1f} s ago) and accepts no new {kind.value}s; "
                f"send {name!r} to another instance"
            )
        self._serial += 1
        work = Work(self._serial, name, kind, now)
        self._work[work.id] = work
        return work

    def end(self, work: Work, now: float) -> None:
        """``work`` is over, finished or cancelled."""
        self._work.pop(work.id, None)
        self._settle()

    def drain(self, now: float, timeout: float) -> None:
        """Stop accepting new work, announce it, and give what is in flight until
        ``now + timeout``."""
        if self._phase is not Phase.SERVING:
            raise RuntimeError(f"node {self.node!r} is already {self._phase.value}; drain once")
        if timeout < 0:
            raise ValueError(f"drain timeout={timeout} must be 0 or more seconds")
        self._phase = Phase.DRAINING
        self._started = now
        self._leave_by = now + timeout
        self._announcing = True
        self._actions.append(Announce(self._leave_by))

    def announced(self, now: float) -> None:
        """The :class:`Announce` is over: the tags went out, or the driver gave up on them."""
        if not self._announcing:
            raise RuntimeError(f"node {self.node!r} is {self._phase.value}, not announcing")
        self._announcing = False
        self._settle()

    def tick(self, now: float) -> None:
        """Time has reached :meth:`next_deadline` (an early call does nothing).  Only a tick
        acts on a deadline: deliver the inputs of the same instant first, and work that ends
        exactly at the deadline counts as finished in time."""
        if self._phase is not Phase.DRAINING or now < self._leave_by:
            return
        if not self._late:  # the drain deadline: cut off what still runs
            self._late = True
            self._leave_by = now + self._cancel_grace
            if self._work:
                self._cut_off = tuple(self._work.values())
                self._actions.append(CutOff(self._cut_off))
        if not self._work or now >= self._leave_by:  # what ignores its cancellation stays behind
            self._leave()

    def left(self, now: float, *, ok: bool) -> None:
        """The :class:`Leave` is over; ``ok`` when the node left, False when it could not."""
        if self._phase is not Phase.LEAVING:
            raise RuntimeError(f"node {self.node!r} is {self._phase.value}, not leaving")
        self._phase = Phase.STOPPED
        self._actions.append(Finished(DrainReport(self._cut_off, self._started, now, ok)))

    # ------------------------------------------------------------------ outputs

    def take_actions(self) -> list[Action]:
        """What the driver must do now, in order; each is handed out once."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """When to call :meth:`tick` if no other input comes first; None while nothing is
        timed (serving, leaving, stopped)."""
        return self._leave_by if self._phase is Phase.DRAINING else None

    # ------------------------------------------------------------------ the rules

    def _settle(self) -> None:
        """Leave once nothing holds the drain: neither the work in flight nor, until the
        deadline, the announcement."""
        waiting = self._work or (self._announcing and not self._late)
        if self._phase is Phase.DRAINING and not waiting:
            self._leave()

    def _leave(self) -> None:
        self._phase = Phase.LEAVING
        self._actions.append(Leave())
