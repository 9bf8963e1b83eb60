"""The virtual network: what a link does to a packet, and which paths are cut.

A :class:`Link` describes one direction of a path: a fixed latency, a random part drawn from a
distribution (so packets overtake each other: reordering comes from jitter), loss, duplication
and bandwidth.  :class:`Network` holds the default link, per-link overrides and the cuts
(partitions and one-way cuts); it answers "is this path open?" and "which link carries it?".
It never looks inside a packet.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

DISTRIBUTIONS = ("exponential", "uniform", "normal", "pareto")
"""Shapes of a link's random latency; ``jitter`` is the mean of the random part."""

UDP_MAX_PAYLOAD = 65_507
"""The largest IPv4 UDP payload; larger datagrams never arrive."""


class NetworkError(ValueError):
    """A network parameter or a rule is invalid; the message names it and the valid range."""


@dataclass(frozen=True, slots=True)
class Link:
    """One direction of a path between two nodes; times in seconds, rates in [0, 1].

    A packet's one-way delay is ``latency + distance * d + random part + size / bandwidth``,
    where ``d`` is the distance between the two nodes' positions in the unit square (so that
    links have different fixed latencies, as across a WAN) and the random part has mean
    ``jitter``.  Each packet is lost with probability ``loss`` and delivered twice with
    probability ``duplicate``.
    """

    latency: float = 0.0005
    jitter: float = 0.0001
    distribution: str = "exponential"
    loss: float = 0.0
    duplicate: float = 0.0
    bandwidth: float = 125e6
    """Bytes per second (1 Gbit/s); 0 means unlimited."""
    distance: float = 0.0
    """Seconds of latency per unit of distance between the endpoints' positions."""

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "bandwidth", "distance"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise NetworkError(f"Link.{name}={value!r} must be a finite number >= 0")
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise NetworkError(f"Link.{name}={value!r} must be a probability in [0, 1]")
        if self.distribution not in DISTRIBUTIONS:
            raise NetworkError(
                f"Link.distribution={self.distribution!r} is unknown; "
                f"choose one of {', '.join(DISTRIBUTIONS)}"
            )

    def replace(self, **changes: Any) -> Link:
        """A copy with ``changes`` applied and validated."""
        return replace(self, **changes)

    def random_delay(self, rng: random.Random) -> float:
        """One draw of the random part of the latency (mean ``jitter``)."""
        jitter = self.jitter
        if not jitter:
            return 0.0
        shape = self.distribution
        if shape == "exponential":
            return rng.expovariate(1.0 / jitter)
        if shape == "uniform":
            return rng.random() * 2.0 * jitter
        if shape == "normal":  # half-normal with mean ``jitter``
            return abs(rng.gauss(0.0, jitter * math.sqrt(math.pi / 2.0)))
        # Pareto with shape 3 (heavy tail, finite variance) scaled to mean ``jitter``
        return (rng.paretovariate(3.0) - 1.0) * 2.0 * jitter


PROFILE_LINKS: dict[str, Link] = {
    "lan": Link(latency=0.0005, jitter=0.0001),
    "wan": Link(latency=0.010, jitter=0.005, distance=0.100),
    "local": Link(latency=0.00005, jitter=0.00001, bandwidth=0.0),
}
"""The default link for each engine profile: a data centre, a continent, one host."""


@dataclass(frozen=True, slots=True)
class Partition:
    """Traffic between different groups is cut, except between the ``allowed`` pairs of group
    indexes (in both directions); nodes in no group keep talking to everyone."""

    groups: tuple[tuple[str, ...], ...]
    allowed: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Cut:
    """Traffic from any of ``sources`` to any of ``targets`` is cut (one way)."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]


class _PartitionRule:
    __slots__ = ("allowed", "group_of")

    def __init__(self, partition: Partition) -> None:
        self.group_of: dict[str, int] = {}
        for index, group in enumerate(partition.groups):
            for name in group:
                if name in self.group_of:
                    raise NetworkError(
                        f"node {name!r} is in two groups of a partition; "
                        "each node may be in at most one"
                    )
                self.group_of[name] = index
        count = len(partition.groups)
        self.allowed: frozenset[tuple[int, int]] = frozenset()
        pairs = set()
        for a, b in partition.allowed:
            if not (0 <= a < count and 0 <= b < count):
                raise NetworkError(f"allowed pair ({a}, {b}) names a group outside 0..{count - 1}")
            pairs.add((a, b))
            pairs.add((b, a))
        self.allowed = frozenset(pairs)

    def blocks(self, source: str, target: str) -> bool:
        a = self.group_of.get(source)
        b = self.group_of.get(target)
        return a is not None and b is not None and a != b and (a, b) not in self.allowed


class _CutRule:
    __slots__ = ("sources", "targets")

    def __init__(self, cut: Cut) -> None:
        self.sources = frozenset(cut.sources)
        self.targets = frozenset(cut.targets)

    def blocks(self, source: str, target: str) -> bool:
        return source in self.sources and target in self.targets


DIRECTIONS = ("both", "in", "out")
"""Which traffic of a node a link rule carries: to or from it, to it (its ingress), from it."""


class _LinkRule:
    __slots__ = ("direction", "link", "nodes")

    def __init__(self, link: Link, nodes: Iterable[str] | None, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise NetworkError(
                f"direction={direction!r} is unknown; choose one of {', '.join(DIRECTIONS)}"
            )
        self.link = link
        self.nodes = None if nodes is None else frozenset(nodes)
        self.direction = direction

    def carries(self, source: str, target: str) -> bool:
        nodes = self.nodes
        if nodes is None:
            return True
        if self.direction == "in":
            return target in nodes
        if self.direction == "out":
            return source in nodes
        return source in nodes or target in nodes


class Network:
    """The default link, per-node link overrides and the active cuts.

    Rules are kept in insertion order in dicts keyed by an id the caller gets back, so that a
    fault with a duration removes exactly what it added; nothing here iterates a set.
    """

    def __init__(self, link: Link, rng: random.Random) -> None:
        self.default = link
        self.rng = rng
        self._cuts: dict[int, _PartitionRule | _CutRule] = {}
        self._links: dict[int, _LinkRule] = {}
        self._serial = 0
        self.has_cuts = False
        self.has_link_rules = False

    def add_cut(self, rule: Partition | Cut) -> int:
        """Cut paths as ``rule`` says; returns an id for :meth:`remove_cut`."""
        self._serial += 1
        self._cuts[self._serial] = (
            _PartitionRule(rule) if isinstance(rule, Partition) else _CutRule(rule)
        )
        self.has_cuts = True
        return self._serial

    def remove_cut(self, rule_id: int) -> None:
        """Undo one cut (a no-op if already repaired)."""
        self._cuts.pop(rule_id, None)
        self.has_cuts = bool(self._cuts)

    def repair(self) -> None:
        """Remove every cut."""
        self._cuts.clear()
        self.has_cuts = False

    def blocked(self, source: str, target: str) -> bool:
        """Whether traffic from ``source`` to ``target`` is cut."""
        return any(rule.blocks(source, target) for rule in self._cuts.values())

    def add_link(
        self, link: Link, nodes: Iterable[str] | None = None, direction: str = "both"
    ) -> int:
        """Carry traffic to or from any of ``nodes`` (every path when None) over ``link``, or
        only what arrives at them (``direction="in"``) or leaves them (``"out"``); the newest
        matching rule wins.  Returns an id for :meth:`remove_link`."""
        rule = _LinkRule(link, nodes, direction)
        self._serial += 1
        self._links[self._serial] = rule
        self.has_link_rules = True
        return self._serial

    def remove_link(self, rule_id: int) -> None:
        """Undo one link override (a no-op if already removed)."""
        self._links.pop(rule_id, None)
        self.has_link_rules = bool(self._links)

    def link(self, source: str, target: str) -> Link:
        """The link carrying traffic from ``source`` to ``target``."""
        for rule in reversed(self._links.values()):
            if rule.carries(source, target):
                return rule.link
        return self.default

    def delay(self, link: Link, distance: float, size: int) -> float:
        """One packet's one-way delay over ``link`` between endpoints ``distance`` apart."""
        delay = link.latency + link.distance * distance + link.random_delay(self.rng)
        if link.bandwidth:
            delay += size / link.bandwidth
        return delay
