"""Failover: which instance next, and which ones this process avoids for now.

A connection failure marks the instance locally unavailable.  The mark clears when gossip shows
the instance alive at a newer incarnation than when it failed (it restarted, or refuted a
suspicion), or after a cool-down.  A :class:`CallPlan` runs one call's attempts within a retry
budget and a deadline.  No I/O and no clock: ``now`` is always passed in, so the trio helper and
a simulator drive the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from discovery.balancer import Strategy, preferred
from discovery.catalog import Health, Instance

_PRUNE_AT = 4096
"""Marks kept before expired ones are swept (marks of instances never seen again)."""


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
    ``cooldown`` is how long a failed instance is avoided unless gossip clears it sooner.
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

    def plan(self, service: str, now: float, deadline: float | None = None) -> CallPlan:
        """The attempts of one call to ``service``, which must end by ``deadline``."""
        return CallPlan(self, service, now, deadline)


class CallPlan:
    """One call's attempts: :meth:`next` says where to try, :meth:`failed` records a failure.

    An instance is tried at most once per call.  Marked instances are tried only when no other
    candidate remains, so a blip that marked every instance does not fail calls until the
    cool-down ends.
    """

    def __init__(
        self, policy: FailoverPolicy, service: str, now: float, deadline: float | None
    ) -> None:
        self.policy = policy
        self.service = service
        self.started = now
        self.deadline = deadline
        self.attempts: list[Attempt] = []
        self._tried: set[tuple[str, str, str]] = set()
        self.reason = ""
        """Why :meth:`next` returned None."""

    def next(
        self, candidates: Sequence[Instance], strategy: Strategy, now: float
    ) -> Instance | None:
        """The instance to try now, or None when the call must give up (see :attr:`reason`)."""
        if self.deadline is not None and now >= self.deadline:
            self.reason = f"deadline of {self.deadline - self.started:g} s passed"
            return None
        if len(self.attempts) > self.policy.retries:
            self.reason = f"retry budget of {self.policy.retries} spent"
            return None
        pool = [i for i in candidates if i.health.available and i.key not in self._tried]
        if not pool:
            self.reason = "no other instance available"
            return None
        best = preferred(pool, lambda i: self.policy.is_marked(i, now))
        choice = strategy.pick(self.service, best)
        self._tried.add(choice.key)
        return choice

    def failed(self, instance: Instance, error: str, now: float, *, mark: bool = True) -> None:
        """The attempt on ``instance`` failed; ``mark`` it unavailable when the failure is the
        instance's (a refused or broken connection), not the call's (its deadline)."""
        self.attempts.append(Attempt(instance, error))
        if mark:
            self.policy.mark(instance, now)

    def error(self) -> CallFailed:
        """The error to raise once :meth:`next` has returned None."""
        return CallFailed(self.service, self.reason, self.attempts)
