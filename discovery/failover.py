"""Failover: which instance next, and which ones this process avoids for now.

A connection failure marks the instance locally unavailable.  The mark clears when gossip shows
the instance alive at a newer incarnation than when it failed (it restarted, or refuted a
suspicion), or after a cool-down.  A :class:`CallPlan` is one call with failover as a sans-IO
state machine: it says what to do next (:class:`Lookup` the service, :class:`Try` an instance,
:class:`Done`, or :class:`GiveUp` with the error to raise) and is told how each step went, with
``now``.  :meth:`discovery.client.Discovery.call` drives it over real connections and
:mod:`discovery.simulation` in virtual time, so both fail over by the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from discovery.balancer import Strategy, preferred
from discovery.catalog import Health, Instance

_PRUNE_AT = 4096
"""Marks kept before expired ones are swept (marks of instances never seen again)."""

DEADLINE_PASSED = "deadline passed"
"""The error of an attempt still running at the call's deadline."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a call, and why it failed."""

    instance: Instance
    error: str


class CallFailed(Exception):
    """Every attempt a call was allowed failed; ``attempts`` lists each one and why."""

    def __init__(self, service: str, reason: str, attempts: Sequence[Attempt]) -> None:
        self.service = service
        self.reason = reason
        self.attempts = tuple(attempts)
        tried = "; ".join(f"{a.instance}: {a.error}" for a in attempts)
        super().__init__(f"call to {service!r} failed ({reason}) after: {tried}")


@dataclass(frozen=True, slots=True)
class _Mark:
    incarnation: int
    until: float


class FailoverPolicy:
    """Local unavailability marks, and the retry budget for calls.

    ``retries`` is how many further instances a call may try after the first fails;
    ``cooldown`` is how long a failed instance is avoided unless gossip clears it sooner (0:
    not at all).
    """

    def __init__(self, *, retries: int = 2, cooldown: float = 30.0) -> None:
        if retries < 0:
            raise ValueError(f"retries={retries} must be 0 or more")
        if cooldown < 0:
            raise ValueError(f"cooldown={cooldown} must be 0 or more seconds")
        self.retries = retries
        self.cooldown = cooldown
        self._marks: dict[tuple[str, str, str], _Mark] = {}

    def mark(self, instance: Instance, now: float) -> None:
        """Avoid ``instance`` from now on, until it comes back or the cool-down passes."""
        if len(self._marks) >= _PRUNE_AT:
            self._marks = {k: m for k, m in self._marks.items() if m.until > now}
        self._marks[instance.key] = _Mark(instance.incarnation, now + self.cooldown)

    def is_marked(self, instance: Instance, now: float) -> bool:
        """Whether ``instance`` is still avoided; a mark that no longer holds is dropped."""
        mark = self._marks.get(instance.key)
        if mark is None:
            return False
        back = instance.health is Health.ALIVE and instance.incarnation > mark.incarnation
        if back or now >= mark.until:
            del self._marks[instance.key]
            return False
        return True

    def plan(
        self, service: str, strategy: Strategy, now: float, deadline: float | None = None
    ) -> CallPlan:
        """One call to ``service``, choosing with ``strategy``, which must end by ``deadline``."""
        return CallPlan(self, strategy, service, now, deadline)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Look the service up (again: gossip may have news) and pass what was found, or the
    lookup's error, to :meth:`CallPlan.resolved`."""


@dataclass(frozen=True, slots=True)
class Try:
    """Send the request to ``instance``, and tell the plan how it went:
    :meth:`~CallPlan.finished`, :meth:`~CallPlan.failed`, or :meth:`~CallPlan.tick` at its
    :meth:`~CallPlan.next_deadline`."""

    instance: Instance


@dataclass(frozen=True, slots=True)
class Done:
    """The call is over: ``instance`` answered."""

    instance: Instance


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The call failed: raise ``error``.  It is the lookup's :class:`~discovery.catalog.
    UnknownService` or :class:`~discovery.catalog.NoInstances` when there was nothing to try
    at all, else :class:`CallFailed` listing every attempt."""

    error: LookupError | CallFailed


Step = Lookup | Try | Done | GiveUp
_S = TypeVar("_S", Lookup, Try)


class CallPlan:
    """One call's attempts, as a state machine; :attr:`step` is what the driver must do now.

    It starts with :class:`Lookup`.  The strategy picks among the best candidates (see
    :func:`~discovery.balancer.preferred`), and is told when each attempt starts and ends.  An
    instance is tried at most once per call.  A failed attempt marks its instance; marked
    instances are tried only when no other candidate remains, so a blip that marked every
    instance does not fail calls until the cool-down ends.  An attempt cut short by the
    deadline marks nothing: the failure is the call's, not the instance's.
    """

    def __init__(
        self,
        policy: FailoverPolicy,
        strategy: Strategy,
        service: str,
        now: float,
        deadline: float | None,
    ) -> None:
        self.policy = policy
        self.strategy = strategy
        self.service = service
        self.started = now
        self.deadline = deadline
        self.attempts: list[Attempt] = []
        """The failed attempts so far."""
        self.step: Step = Lookup()
        self._tried: set[tuple[str, str, str]] = set()

    # ------------------------------------------------------------------ inputs

    def resolved(self, found: Sequence[Instance] | LookupError, now: float) -> Step:
        """The service's instances as just looked up, or why the lookup failed: the next step
        is :class:`Try` or :class:`GiveUp`."""
        self._expect(Lookup, "resolved")
        if isinstance(found, LookupError):
            if not self.attempts:
                return self._go(GiveUp(found))
            found = []  # after a failure, nothing found is nothing left to try
        reason = self._spent(now)
        if reason is None:
            pool = [i for i in found if i.health.available and i.key not in self._tried]
            if pool:
                best = preferred(pool, lambda i: self.policy.is_marked(i, now))
                choice = self.strategy.pick(self.service, best)
                self._tried.add(choice.key)
                self.strategy.started(choice)
                return self._go(Try(choice))
            reason = "no other instance available"
        return self._give_up(reason)

    def finished(self, now: float) -> Step:
        """The attempt is over without a connection failure: it answered (or raised something
        the call does not retry, or was cancelled, which the driver passes on).  :class:`Done`."""
        instance = self._expect(Try, "finished").instance
        self.strategy.finished(instance)
        return self._go(Done(instance))

    def failed(self, error: str, now: float) -> Step:
        """The attempt failed to connect or broke (``error`` says how): the instance is marked,
        and the next step is another :class:`Lookup`, or :class:`GiveUp` when the deadline or
        the retry budget leaves no further attempt."""
        instance = self._expect(Try, "failed").instance
        self.strategy.finished(instance)
        self.attempts.append(Attempt(instance, error))
        self.policy.mark(instance, now)
        reason = self._spent(now)
        return self._go(Lookup()) if reason is None else self._give_up(reason)

    def tick(self, now: float) -> Step:
        """Time has reached :meth:`next_deadline`: the attempt in flight is cut short and the
        call gives up.  Before it, nothing changes."""
        late = self._late(now)
        if not isinstance(self.step, Try) or late is None:
            return self.step
        instance = self.step.instance
        self.strategy.finished(instance)
        self.attempts.append(Attempt(instance, DEADLINE_PASSED))
        return self._give_up(late)

    # ------------------------------------------------------------------ outputs

    def next_deadline(self) -> float | None:
        """When an attempt in flight must be cut short (call :meth:`tick`); None when no
        attempt is in flight or the call has no deadline."""
        return self.deadline if isinstance(self.step, Try) else None

    # ------------------------------------------------------------------ the rules

    def _late(self, now: float) -> str | None:
        """Why the call is out of time, or None."""
        if self.deadline is not None and now >= self.deadline:
            return f"deadline of {self.deadline - self.started:g} s passed"
        return None

    def _spent(self, now: float) -> str | None:
        """Why no further attempt may start now, or None."""
        late = self._late(now)
        if late is None and len(self.attempts) > self.policy.retries:
            return f"retry budget of {self.policy.retries} spent"
        return late

    def _expect(self, step: type[_S], what: str) -> _S:
        current = self.step
        if not isinstance(current, step):
            raise RuntimeError(
                f"the call to {self.service!r} is at {type(current).__name__}, not "
                f"{step.__name__}: {what}() does not apply"
            )
        return current

    def _give_up(self, reason: str) -> Step:
        return self._go(GiveUp(CallFailed(self.service, reason, self.attempts)))

    def _go(self, step: Step) -> Step:
        self.step = step
        return step
