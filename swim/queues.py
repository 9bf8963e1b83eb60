"""The bounded, lossy queue behind every subscription (node events, service watches).

A producer must never wait for a slow subscriber, and a subscriber must never grow the
producer's memory without bound: the queue keeps at most ``capacity`` items, drops the oldest
unread ones when full, and tells the subscriber how many it lost before the next item, instead
of leaving a silent gap.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")
L = TypeVar("L")


class LossyQueue(Generic[T, L]):
    """Items for one subscriber, up to ``capacity``; iterate it with ``async for``.  After a
    loss, the next item is ``lost(count)``."""

    def __init__(self, capacity: int, lost: Callable[[int], L]) -> None:
        if capacity < 1:
            raise ValueError(f"a subscription needs room for at least 1 item, not {capacity}")
        self.capacity = capacity
        self._lost_marker = lost
        self._items: collections.deque[T] = collections.deque()
        self._lost = 0
        self._ready = anyio.Event()

    def put(self, item: T) -> None:
        """Add ``item``, dropping the oldest unread one when full; never blocks."""
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self._lost += 1
        self._items.append(item)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    def __aiter__(self) -> LossyQueue[T, L]:
        return self

    async def __anext__(self) -> T | L:
        await anyio.lowlevel.checkpoint()  # a busy queue still yields and notices cancellation
        while not self._items:
            self._ready = anyio.Event()
            await self._ready.wait()
        if self._lost:
            lost, self._lost = self._lost, 0
            return self._lost_marker(lost)
        return self._items.popleft()
