"""The member stack's timers: one heap, each timer named by its kind and the member it is for.

A sans-IO state machine cannot sleep; it asks to be called back.  :class:`Timers` keeps every
pending callback of one stack (engine and Serf layer alike) in one heap, so its driver needs
one deadline and one ``tick``.  Timers are typed (:class:`TimerKind`) so that a trace or a
debugger can say what is pending ("suspicion of n5 at 31.2 s") instead of showing closures.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable
from dataclasses import dataclass


class TimerKind(enum.Enum):
    """What a timer is for."""

    PROBE = "probe"
    """The next probe of the ring."""
    PROBE_TIMEOUT = "probe-timeout"
    """A probe's direct ack is late: ask others to probe, try TCP."""
    PROBE_END = "probe-end"
    """A probe's interval ran out without an ack."""
    RELAY_NACK = "relay-nack"
    """A helper tells the requester that the target has not answered yet."""
    RELAY_END = "relay-end"
    """A helper stops waiting for the target's ack."""
    GOSSIP = "gossip"
    PUSH_PULL = "push-pull"
    RECONNECT = "reconnect"
    SUSPICION = "suspicion"
    """A suspicion ran out: the member is declared dead."""
    ANNOUNCE = "announce"
    """Our new alive (new metadata) goes to the next few members in turn."""
    SUSPICION_CHECK = "suspicion-check"
    """Ask a suspect, and a few others, whether it has refuted (we may have missed it)."""
    STREAM = "stream"
    """A stream's deadline."""
    LEAVE = "leave"
    """A leave stops waiting for its broadcast."""
    FOLLOW_UP_JOIN = "follow-up-join"
    """The second push-pull with a seed after a join."""
    REJOIN = "rejoin"
    """An isolated member tries its seeds again."""
    ISOLATION_LIMIT = "isolation-limit"
    """An isolated member gives up (``exit_when_isolated``)."""
    SERF_REAP = "serf-reap"
    SERF_INTENT = "serf-intent"
    """An intent about an unknown member is forgotten."""
    SERF_QUERY = "serf-query"
    """One of our queries times out."""
    SERF_COALESCE = "serf-coalesce"
    SERF_LEAVE = "serf-leave"
    """Serf's leave intent is out (or its time is up): the engine leaves."""


@dataclass(slots=True, eq=False)
class Timer:
    """A pending callback; :meth:`cancel` it to keep it from running."""

    deadline: float
    kind: TimerKind
    subject: str
    """The member (or query, or stream) it is about; empty when it is about this node."""
    action: Callable[[], None]
    active: bool = True

    def cancel(self) -> None:
        self.active = False


class Timers:
    """Every pending timer of one member stack, in deadline order (ties in scheduling order)."""

    __slots__ = ("_heap", "_serial", "now")

    def __init__(self, now: float) -> None:
        self.now = now
        """The latest time the stack was told of; it never goes back."""
        self._heap: list[tuple[float, int, Timer]] = []
        self._serial = 0

    def schedule(
        self, deadline: float, kind: TimerKind, action: Callable[[], None], subject: str = ""
    ) -> Timer:
        """Run ``action`` once ``deadline`` has passed."""
        timer = Timer(deadline, kind, subject, action)
        self._serial += 1
        heapq.heappush(self._heap, (deadline, self._serial, timer))
        return timer

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or None."""
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> None:
        """Advance to ``now`` and run every timer due by then, in order."""
        self.now = max(self.now, now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.active:
                timer.active = False
                timer.action()

    def pending(self) -> list[Timer]:
        """The active timers in deadline order, for tracing and debugging."""
        return [timer for _, _, timer in sorted(self._heap) if timer.active]
