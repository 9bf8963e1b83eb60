"""Instance selection: which of the equally good instances gets the next request.

:func:`preferred` narrows the candidates to the best tier (healthy and confirmed first, then
those only the cache file vouches for, then suspect, draining, and finally those marked locally
unavailable); a :class:`Strategy` picks one of them.  No I/O, no clock; randomness comes from a
``random.Random`` handed in, so a simulator can replay every choice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from discovery.catalog import Health, Instance


def tier(instance: Instance, unavailable: bool) -> int:
    """Lower is better: healthy, stale (cache only), suspect, draining, marked unavailable."""
    if unavailable:
        return 4
    if instance.health is Health.DRAINING:
        return 3
    if instance.health is Health.SUSPECT:
        return 2
    return 1 if instance.stale else 0


def preferred(
    candidates: Sequence[Instance], unavailable: Callable[[Instance], bool] = lambda _: False
) -> list[Instance]:
    """The candidates of the best tier present: suspect, draining and locally unavailable
    instances are chosen only when nothing better exists."""
    if not candidates:
        return []
    tiers = [tier(i, unavailable(i)) for i in candidates]
    best = min(tiers)
    return [i for i, t in zip(candidates, tiers, strict=True) if t == best]


class Strategy:
    """Picks one instance out of a non-empty list of equally preferred ones; told when a
    request to an instance starts and finishes, for strategies that count them."""

    def pick(self, service: str, candidates: Sequence[Instance]) -> Instance:
        raise NotImplementedError

    def started(self, instance: Instance) -> None:
        """A request to ``instance`` began."""

    def finished(self, instance: Instance) -> None:
        """A request to ``instance`` ended, however it ended."""


class RoundRobin(Strategy):
    """Each service's instances in turn."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, service: str, candidates: Sequence[Instance]) -> Instance:
        turn = self._next.get(service, 0)
        self._next[service] = turn + 1
        return candidates[turn % len(candidates)]


class Random(Strategy):
    """Uniformly at random."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, service: str, candidates: Sequence[Instance]) -> Instance:
        return candidates[self._rng.randrange(len(candidates))]


class Weighted(Strategy):
    """At random, in proportion to each instance's advertised weight; weight 0 is chosen only
    when every candidate has weight 0."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, service: str, candidates: Sequence[Instance]) -> Instance:
        total = sum(i.weight for i in candidates)
        if total == 0:
            return candidates[self._rng.randrange(len(candidates))]
        point = self._rng.randrange(total)
        for instance in candidates:
            point -= instance.weight
            if point < 0:
                return instance
        raise AssertionError("unreachable: the point lies below the total weight")


class LeastOutstanding(Strategy):
    """The instance with the fewest requests in flight from this process; ties in turn."""

    def __init__(self) -> None:
        self._outstanding: dict[tuple[str, str, str], int] = {}
        self._turns = RoundRobin()

    def outstanding(self, instance: Instance) -> int:
        return self._outstanding.get(instance.key, 0)

    def pick(self, service: str, candidates: Sequence[Instance]) -> Instance:
        fewest = min(self.outstanding(i) for i in candidates)
        return self._turns.pick(service, [i for i in candidates if self.outstanding(i) == fewest])

    def started(self, instance: Instance) -> None:
        self._outstanding[instance.key] = self.outstanding(instance) + 1

    def finished(self, instance: Instance) -> None:
        left = self.outstanding(instance) - 1
        if left > 0:
            self._outstanding[instance.key] = left
        else:
            self._outstanding.pop(instance.key, None)
