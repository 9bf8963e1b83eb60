"""Lifeguard's dynamic suspicion timeout (memberlist's ``suspicion.go``)."""

from __future__ import annotations

import math


def suspicion_bounds(
    suspicion_mult: int, max_timeout_mult: int, members: int, probe_interval: float
) -> tuple[float, float]:
    """The shortest and longest suspicion timeout for a cluster of ``members`` nodes.

    memberlist computes ``suspicion_mult * max(1, log10(max(1, n))) * probe_interval`` (log10 of
    n, although its comment says n + 1), and the longest is ``max_timeout_mult`` times that.
    """
    node_scale = max(1.0, math.log10(max(1, members)))
    shortest = suspicion_mult * node_scale * probe_interval
    return shortest, max_timeout_mult * shortest


class Suspicion:
    """One suspected member's timer: it starts at the longest timeout and shrinks toward the
    shortest as ``k`` independent members confirm the suspicion."""

    __slots__ = (
        "_confirmers",
        "_k",
        "_longest",
        "_shortest",
        "deadline",
        "incarnation",
        "start",
        "suspector",
    )

    def __init__(
        self,
        start: float,
        incarnation: int,
        *,
        suspector: str,
        k: int,
        shortest: float,
        longest: float,
    ) -> None:
        self.start = start
        self.incarnation = incarnation
        self.suspector = suspector
        """Who accused first (the ``from_node`` of the suspicion passed on when checking)."""
        self._k = k
        self._shortest = shortest
        self._longest = longest
        self._confirmers = {suspector}  # the first suspector does not count as a confirmation
        self.deadline = start + (longest if k >= 1 else shortest)

    @property
    def confirmations(self) -> int:
        """Independent confirmations so far."""
        return len(self._confirmers) - 1

    def confirm(self, sender: str) -> bool:
        """Count ``sender``'s confirmation; True when it is new (and so worth re-gossiping),
        in which case ``deadline`` may have moved closer."""
        if self.confirmations >= self._k or sender in self._confirmers:
            return False
        self._confirmers.add(sender)
        fraction = math.log(self.confirmations + 1) / math.log(self._k + 1)
        raw = self._longest - fraction * (self._longest - self._shortest)
        timeout = max(self._shortest, math.floor(1000.0 * raw) / 1000.0)  # whole ms, as Go
        self.deadline = self.start + timeout
        return True
