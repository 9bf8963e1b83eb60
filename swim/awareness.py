"""Lifeguard's local health (memberlist's ``awareness.go``).

A member that misses acks, needs to refute suspicions of itself, or gets no nacks from the
helpers it asked is probably the slow one: its health score rises, and it stretches its own
probe intervals and timeouts by ``score + 1`` so that it accuses others less readily.  Acks
bring the score back down.
"""

from __future__ import annotations


class Awareness:
    """The local health score, ``0`` (healthy) to ``max_multiplier - 1``."""

    __slots__ = ("_enabled", "_top", "score")

    def __init__(self, max_multiplier: int, *, enabled: bool = True) -> None:
        self._top = max_multiplier - 1
        self._enabled = enabled
        self.score = 0

    def apply(self, delta: int) -> None:
        """Raise (or lower) the score by ``delta``, within its bounds; a no-op without
        Lifeguard."""
        if self._enabled:
            self.score = min(self._top, max(0, self.score + delta))

    def scale(self, duration: float) -> float:
        """``duration`` stretched by the score, as probe intervals are."""
        return duration * (self.score + 1)
