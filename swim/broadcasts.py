"""The retransmit-limited broadcast queue (memberlist's ``TransmitLimitedQueue``)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass


def retransmit_limit(retransmit_mult: int, members: int) -> int:
    """How many times a broadcast is sent: ``retransmit_mult * ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(members + 1))


@dataclass(slots=True, eq=False)
class _Broadcast:
    message: bytes
    key: str | None
    serial: int
    transmits: int = 0
    on_done: Callable[[], None] | None = None

    def order(self) -> tuple[int, int, int]:
        # fewest transmits first, then the largest, then the newest
        return (self.transmits, -len(self.message), -self.serial)


class BroadcastQueue:
    """Messages waiting to be piggybacked, each sent a limited number of times.

    A new message with the same ``key`` (memberlist's named broadcast: the member it is about)
    replaces the queued one, so stale news about a member is never sent.  ``on_done`` runs when
    a message has been sent its full count or is replaced.
    """

    def __init__(self) -> None:
        self._ordered: list[tuple[tuple[int, int, int], _Broadcast]] = []
        self._by_key: dict[str, _Broadcast] = {}
        self._sizes: dict[int, int] = {}  # message size -> how many queued, for an early stop
        self._serial = 0

    def __len__(self) -> int:
        return len(self._ordered)

    def queue(
        self, message: bytes, key: str | None = None, on_done: Callable[[], None] | None = None
    ) -> None:
        """Queue ``message``, replacing any queued message with the same ``key``."""
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._remove(old)
                if old.on_done is not None:
                    old.on_done()
        self._serial += 1
        item = _Broadcast(message, key, self._serial, on_done=on_done)
        if key is not None:
            self._by_key[key] = item
        self._insert(item)

    def take(self, overhead: int, limit: int, transmit_limit: int) -> list[bytes]:
        """Messages for one packet: the least-sent first, then the largest, each costing its
        size plus ``overhead``, together at most ``limit`` bytes."""
        if not self._ordered or limit <= overhead:
            return []
        smallest = min(self._sizes) + overhead
        taken: list[int] = []
        room = limit
        for position, (_, item) in enumerate(self._ordered):
            if room < smallest:
                break
            cost = len(item.message) + overhead
            if cost <= room:
                room -= cost
                taken.append(position)
        if not taken:
            return []
        chosen = [self._ordered[position][1] for position in taken]
        for position in reversed(taken):
            del self._ordered[position]
        messages = []
        for item in chosen:
            messages.append(item.message)
            item.transmits += 1
            if item.transmits >= transmit_limit:
                self._forget(item)
                if item.on_done is not None:
                    item.on_done()
            else:
                bisect.insort(self._ordered, (item.order(), item))
        return messages

    def prune(self, max_retain: int) -> None:
        """Drop the most-sent messages until at most ``max_retain`` remain."""
        while len(self._ordered) > max_retain:
            _, item = self._ordered.pop()
            self._forget(item)

    def _insert(self, item: _Broadcast) -> None:
        bisect.insort(self._ordered, (item.order(), item))
        size = len(item.message)
        self._sizes[size] = self._sizes.get(size, 0) + 1

    def _remove(self, item: _Broadcast) -> None:
        entry = (item.order(), item)
        position = bisect.bisect_left(self._ordered, entry)
        del self._ordered[position]
        self._forget(item)

    def _forget(self, item: _Broadcast) -> None:
        """Drop the bookkeeping of an item already out of ``_ordered``."""
        if item.key is not None and self._by_key.get(item.key) is item:
            del self._by_key[item.key]
        size = len(item.message)
        count = self._sizes[size] - 1
        if count:
            self._sizes[size] = count
        else:
            del self._sizes[size]
