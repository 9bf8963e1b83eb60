"""Members as users see them, and the engine's sampling structure."""

from __future__ import annotations

import enum
import functools
import ipaddress
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

Address = tuple[str, int]
"""A host (an IP literal) and a port."""


class MemberState(enum.Enum):
    """Where a member stands in this node's view."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Member:
    """A snapshot of one member: events carry these, and ``members()`` returns them."""

    name: str
    address: Address
    meta: bytes
    incarnation: int
    state: MemberState
    vsn: bytes
    """pmin, pmax, pcur, dmin, dmax, dcur as the member advertises them."""

    @property
    def protocol_max(self) -> int:
        """The highest memberlist protocol version the member understands."""
        return self.vsn[1]


MAX_NAME_BYTES = 256
"""The longest member name accepted, in UTF-8 bytes (a host name is at most 253)."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a member's, or None.  Names end up in logs, tables, files and
    handlers' environments, so they must be non-empty printable text of bounded length."""
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_BYTES or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} bytes"
    if not name.isprintable():
        return "the name holds control characters or other unprintable ones"
    return None


@functools.lru_cache(maxsize=1 << 16)
def address_of(raw: bytes, port: int) -> Address:
    """The socket address for a wire address (4 or 16 bytes), one shared tuple per address
    for every engine in the process: a simulated cluster holds n² member entries."""
    return (socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw), port)


def peer_address(host: str, port: int) -> Address:
    """A socket peer's address as members advertise theirs: an IPv4 peer reaching an IPv6
    socket shows as ``::ffff:a.b.c.d``, which is ``a.b.c.d`` to everyone else."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:], port
    return host, port


def ip_text(raw: bytes) -> str:
    """The text form of a 4- or 16-byte address as it travels in messages."""
    return str(ipaddress.ip_address(raw))


def ip_bytes(host: str) -> bytes:
    """The wire form of an IP literal (4 bytes for IPv4, 16 for IPv6)."""
    return ipaddress.ip_address(host).packed


T = TypeVar("T")


class RandomSet(Generic[T]):
    """A set with O(1) add, remove and uniform random pick, so sampling k members costs O(k)
    however large the cluster is (memberlist's ``kRandomNodes`` scans every member).

    Iteration follows insertion and swap-removal order, which depends only on the operations,
    never on hashing, so it is deterministic.
    """

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._index: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def add(self, item: T) -> None:
        """Insert ``item`` if absent."""
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: T) -> None:
        """Remove ``item`` if present, moving the last item into its slot."""
        position = self._index.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._index[last] = position

    def sample(
        self, rng: random.Random, k: int, accept: Callable[[T], bool] = lambda _: True
    ) -> list[T]:
        """Up to ``k`` distinct items passing ``accept``, uniformly at random.

        Draws at most ``4 * k + 8`` times, so a set crowded with rejected items may give fewer
        than ``k``; callers exclude only a handful (themselves, a probe target).
        """
        size = len(self._items)
        if size == 0 or k <= 0:
            return []
        if size <= 2 * k + 2:  # small sets: shuffle a copy, which also finds every match
            pool = [item for item in self._items if accept(item)]
            rng.shuffle(pool)
            return pool[:k]
        picked: list[T] = []
        seen: set[int] = set()
        for _ in range(4 * k + 8):
            position = rng.randrange(size)
            if position in seen:
                continue
            seen.add(position)
            item = self._items[position]
            if accept(item):
                picked.append(item)
                if len(picked) == k:
                    break
        return picked

    def choice(self, rng: random.Random) -> T | None:
        """One item at random, or None when empty."""
        return self._items[rng.randrange(len(self._items))] if self._items else None
