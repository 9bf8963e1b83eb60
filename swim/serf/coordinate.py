"""Serf's Vivaldi network coordinates, sans-IO: RTTs come in as numbers, nothing reads a clock.

Each member keeps a coordinate in an 8-dimensional Euclidean space plus a height (the access
link's share of every RTT) and an adjustment (a correction learned from recent errors); the
distance between two coordinates estimates the RTT between their members.  Every direct ping
that is acked within the probe timeout moves our coordinate towards or away from the peer's
(Serf's ``coordinate`` package: ``client.go``, ``coordinate.go``, ``config.go``):

- the RTT goes through a per-peer median filter of the last three samples;
- the Vivaldi step: our error estimate blends in how wrong the distance was, weighted by our
  error against the peer's, and we move along the line between us by ``CC * weight *
  (rtt - distance)``, the height taking its share;
- the adjustment is the mean of the last 20 ``rtt - raw distance`` samples, halved;
- gravity pulls us back towards the origin, so the whole cluster does not drift away.

A peer's coordinate is checked before use: eight dimensions, finite, and of plausible size
(Serf checks only the first two; a huge or negative-error coordinate from a hostile member
would throw ours far off).  Pure floats and tuples: one update costs a few microseconds.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from swim.wire.serf import Coordinate

MAX_RTT = 10.0
"""Seconds: an RTT above this (or below zero) is refused, as Serf refuses it."""
ZERO_THRESHOLD = 1.0e-6
"""Below this a distance, an error or an RTT counts as zero (Serf's ``zeroThreshold``)."""
MAX_PLAUSIBLE_SECONDS = 1000.0
"""Largest magnitude a peer's coordinate component, height, adjustment or error may have: a
hundred times the longest RTT Serf accepts; beyond it the coordinate is hostile or broken."""


@dataclass(frozen=True, slots=True)
class VivaldiConfig:
    """Serf's ``coordinate.DefaultConfig()``; Serf never changes it, and nor do we."""

    dimensionality: int = 8
    error_max: float = 1.5
    """The error a new coordinate starts with, and the most it may reach."""
    ce: float = 0.25
    """How fast the error estimate follows observed errors."""
    cc: float = 0.25
    """How far one observation moves the coordinate."""
    adjustment_window: int = 20
    height_min: float = 10.0e-6
    latency_filter_size: int = 3
    gravity_rho: float = 150.0
    """Seconds: the distance from the origin at which gravity starts to matter."""


DEFAULT_CONFIG = VivaldiConfig()


class CoordinateRejected(ValueError):
    """A peer's coordinate or an RTT that the update refuses; ``str()`` says why."""


def new_coordinate(config: VivaldiConfig = DEFAULT_CONFIG) -> Coordinate:
    """The coordinate a member starts from: the origin, with the largest error."""
    return Coordinate(
        vec=(0.0,) * config.dimensionality,
        error=config.error_max,
        adjustment=0.0,
        height=config.height_min,
    )


def _raw_distance(a: Coordinate, b: Coordinate) -> float:
    return math.dist(a.vec, b.vec) + a.height + b.height


def distance(a: Coordinate, b: Coordinate) -> float:
    """The RTT in seconds that ``a`` and ``b`` estimate between their members, adjustments
    included unless they would make it negative (Serf's ``DistanceTo``).  Raises ValueError
    when their dimensions differ."""
    if len(a.vec) != len(b.vec):
        raise ValueError(f"coordinates of {len(a.vec)} and {len(b.vec)} dimensions")
    raw = _raw_distance(a, b)
    adjusted = raw + a.adjustment + b.adjustment
    return adjusted if adjusted > 0.0 else raw


def is_valid(coordinate: Coordinate) -> bool:
    """No component is NaN or infinite (Serf's ``IsValid``)."""
    if math.isfinite(sum(coordinate.vec) + coordinate.error + coordinate.adjustment):
        return math.isfinite(coordinate.height)  # finite sum: each part finite (or it is inf)
    values = (*coordinate.vec, coordinate.error, coordinate.adjustment, coordinate.height)
    return all(math.isfinite(value) for value in values)  # or a sum of huge ones overflowed


def problem(coordinate: Coordinate, config: VivaldiConfig = DEFAULT_CONFIG) -> str | None:
    """Why a peer's coordinate cannot be used, or None."""
    if len(coordinate.vec) != config.dimensionality:
        return f"{len(coordinate.vec)} dimensions, not {config.dimensionality}"
    if not is_valid(coordinate):
        return "a component is NaN or infinite"
    limit = MAX_PLAUSIBLE_SECONDS
    if max(map(abs, coordinate.vec)) > limit or abs(coordinate.adjustment) > limit:
        return f"a component is over {limit:g} s"
    if not (0.0 <= coordinate.error <= limit and 0.0 <= coordinate.height <= limit):
        return f"error or height outside 0..{limit:g}"
    return None


class CoordinateClient:
    """One member's coordinate, updated from its direct pings (Serf's ``coordinate.Client``).

    ``rng`` only picks a direction when two coordinates coincide (every member starts at the
    origin).  The latency filter keeps a few samples per peer; :meth:`forget` drops a peer's
    when it leaves the view, so memory follows the member count.
    """

    def __init__(self, rng: random.Random, config: VivaldiConfig = DEFAULT_CONFIG) -> None:
        if config.dimensionality <= 0:
            raise ValueError("dimensionality must be > 0")
        self.config = config
        self._rng = rng
        self._coordinate = new_coordinate(config)
        self._origin = new_coordinate(config)
        self._adjustment_index = 0
        self._adjustment_samples = [0.0] * config.adjustment_window
        self._latency_samples: dict[str, list[float]] = {}
        self.resets = 0
        """How often the coordinate became invalid and started over (Serf's ``Resets``)."""

    @property
    def coordinate(self) -> Coordinate:
        """Our coordinate as it stands (immutable: a new one after each update)."""
        return self._coordinate

    def forget(self, node: str) -> None:
        """Drop what the latency filter holds about ``node``."""
        self._latency_samples.pop(node, None)

    def distance_to(self, other: Coordinate) -> float:
        """The estimated RTT in seconds from us to ``other``."""
        return distance(self._coordinate, other)

    def update(self, node: str, other: Coordinate, rtt: float) -> Coordinate:
        """Take one observation: ``node``, at ``other``, answered a ping in ``rtt`` seconds.
        Returns our new coordinate; raises :class:`CoordinateRejected` for an unusable
        ``other`` or an RTT outside [0, :data:`MAX_RTT`]."""
        why = problem(other, self.config)
        if why is not None:
            raise CoordinateRejected(f"coordinate from {node}: {why}")
        if not 0.0 <= rtt <= MAX_RTT:  # also refuses NaN
            raise CoordinateRejected(f"RTT of {rtt!r} s is outside 0..{MAX_RTT:g} s")
        rtt = self._filtered(node, rtt)
        self._update_vivaldi(other, rtt)
        self._update_adjustment(other, rtt)
        self._update_gravity()
        if not is_valid(self._coordinate):
            self.resets += 1
            self._coordinate = new_coordinate(self.config)
        return self._coordinate

    def _filtered(self, node: str, rtt: float) -> float:
        """The median of the last few RTTs to ``node``, this one included."""
        samples = self._latency_samples.get(node)
        if samples is None:
            samples = self._latency_samples[node] = []
        samples.append(rtt)
        if len(samples) > self.config.latency_filter_size:
            del samples[0]
        ordered = sorted(samples)
        return ordered[len(ordered) // 2]

    def _update_vivaldi(self, other: Coordinate, rtt: float) -> None:
        config, mine = self.config, self._coordinate
        dist = distance(mine, other)
        rtt = max(rtt, ZERO_THRESHOLD)
        wrongness = abs(dist - rtt) / rtt
        total_error = max(mine.error + other.error, ZERO_THRESHOLD)
        weight = mine.error / total_error
        error = config.ce * weight * wrongness + mine.error * (1.0 - config.ce * weight)
        force = config.cc * weight * (rtt - dist)
        self._coordinate = self._apply_force(mine, force, other, error=min(error, config.error_max))

    def _update_adjustment(self, other: Coordinate, rtt: float) -> None:
        window = self.config.adjustment_window
        if window == 0:
            return
        mine = self._coordinate
        self._adjustment_samples[self._adjustment_index] = rtt - _raw_distance(mine, other)
        self._adjustment_index = (self._adjustment_index + 1) % window
        adjustment = sum(self._adjustment_samples) / (2.0 * window)
        self._coordinate = Coordinate(mine.vec, mine.error, adjustment, mine.height)

    def _update_gravity(self) -> None:
        mine = self._coordinate
        force = -((distance(self._origin, mine) / self.config.gravity_rho) ** 2)
        self._coordinate = self._apply_force(mine, force, self._origin, error=mine.error)

    def _apply_force(
        self, mine: Coordinate, force: float, other: Coordinate, *, error: float
    ) -> Coordinate:
        """``mine`` moved by ``force`` along the unit vector from ``other`` (Serf's
        ``ApplyForce``), with ``error`` as its new error."""
        unit, magnitude = self._unit_vector_at(mine.vec, other.vec)
        vec = tuple([x + u * force for x, u in zip(mine.vec, unit, strict=True)])
        height = mine.height
        if magnitude > ZERO_THRESHOLD:
            height += (height + other.height) * force / magnitude
            height = max(height, self.config.height_min)
        return Coordinate(vec, error, mine.adjustment, height)

    def _unit_vector_at(
        self, a: tuple[float, ...], b: tuple[float, ...]
    ) -> tuple[tuple[float, ...], float]:
        """The unit vector from ``b`` to ``a`` and the distance between them; a random
        direction (and distance 0) when they coincide."""
        magnitude = math.dist(a, b)
        if magnitude > ZERO_THRESHOLD:
            return tuple([(x - y) / magnitude for x, y in zip(a, b, strict=True)]), magnitude
        direction = [self._rng.random() - 0.5 for _ in a]
        spread = math.hypot(*direction)
        if spread > ZERO_THRESHOLD:
            return tuple([d / spread for d in direction]), 0.0
        return (1.0,) + (0.0,) * (len(a) - 1), 0.0
