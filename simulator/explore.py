"""Random fault schedules, played and checked against the invariants.

Each seed gives one schedule (:func:`random_schedule`, from a generator seeded by the seed
alone) and one run: faults within the first ``window`` seconds, every one of them over by
then, then a calm of :func:`settle_time` seconds after which views must agree.  A seed that
breaks an invariant is reported with its schedule and the command that replays it.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from simulator.check import Violation, check
from simulator.cluster import Cluster
from simulator.faults import (
    Crash,
    Fault,
    Join,
    Leave,
    LinkChange,
    OneWay,
    Pause,
    Slow,
    Split,
)
from simulator.metrics import Results, detection_bound
from simulator.scenarios import build_cluster

FAULT_KINDS = (
    "crash",
    "restart",
    "leave",
    "join",
    "halves",
    "isolate",
    "ring",
    "bridge",
    "one-way",
    "loss",
    "pause",
    "slow",
)
"""What a random schedule draws from."""

FIRST_FAULT = 5.0
"""No fault before this time, so that every run starts from a settled cluster."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One explored seed: its schedule, what it broke, and the run's results."""

    seed: int
    schedule: tuple[Fault, ...]
    violations: tuple[Violation, ...]
    results: Results


def settle_time(cluster: Cluster) -> float:
    """Seconds of calm after the last fault before views must agree: the detection bound
    (crashes are noticed) plus three reconnect intervals (a healed partition is found again,
    which each side attempts with probability ``departed / alive`` per interval)."""
    return detection_bound(cluster.config, len(cluster.names())) + 3 * (
        cluster.config.reconnect_interval
    )


def make_fault(
    kind: str, *, at: float, lasting: float, node: str, order: Sequence[str], level: float
) -> Fault:
    """One fault of ``kind`` at ``at`` lasting ``lasting`` seconds (for those that last),
    hitting ``node`` (for those that hit one) or splitting ``order`` (for partitions).
    ``level`` in [0, 1) sets the intensity: loss, pause length, slowness, new address."""
    if kind == "crash":
        return Crash(at, node)
    if kind == "restart":
        return Crash(at, node, restart_after=lasting, new_address=level < 0.3)
    if kind == "leave":
        return Leave(at, node)
    if kind == "join":
        return Join(at)
    if kind == "halves":
        return Split.halves(at, order, lasting)
    if kind == "isolate":
        return Split.isolate(at, node, order, lasting)
    if kind == "ring":
        return Split.ring(at, order, 3, lasting)
    if kind == "bridge":
        return Split.bridge(at, order, lasting)
    if kind == "one-way":
        middle = len(order) // 2
        return OneWay(at, tuple(order[:middle]), tuple(order[middle:]), lasting)
    if kind == "loss":
        return LinkChange(at, loss=round(0.01 + 0.29 * level, 3), duration=lasting)
    if kind == "pause":
        return Pause(at, node, round(min(lasting, 0.5 + 29.5 * level), 3))
    if kind == "slow":
        return Slow(at, node, round(0.1 + 1.9 * level, 3), lasting)
    raise ValueError(f"unknown fault kind {kind!r}; choose one of {', '.join(FAULT_KINDS)}")


def random_schedule(rng: random.Random, names: Sequence[str], window: float) -> list[Fault]:
    """One to four faults, all over by ``window``, each from :data:`FAULT_KINDS`."""
    faults = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(FAULT_KINDS)
        at = round(rng.uniform(FIRST_FAULT, window - 2.0), 3)
        lasting = round(rng.uniform(1.0, window - at), 3)
        node = rng.choice(names)
        order = rng.sample(list(names), len(names))
        level = rng.random()
        faults.append(make_fault(kind, at=at, lasting=lasting, node=node, order=order, level=level))
    return sorted(faults, key=lambda fault: fault.at)


def play(
    schedule: Sequence[Fault],
    *,
    nodes: int,
    seed: int,
    window: float,
    profile: str = "lan",
    progress: Callable[[float], None] | None = None,
) -> tuple[Cluster, list[Violation]]:
    """Run ``schedule`` on a fresh cluster, let it settle, and check every invariant."""
    cluster = build_cluster(nodes=nodes, seed=seed, profile=profile, progress=progress)
    cluster.schedule(*schedule)
    cluster.run_until(window + settle_time(cluster))
    return cluster, check(cluster, schedule)


def explore_seed(seed: int, *, nodes: int, window: float, profile: str = "lan") -> Outcome:
    """Draw the schedule of ``seed``, play it and check it."""
    names = [f"n{i}" for i in range(nodes)]
    schedule = random_schedule(random.Random(f"explore:{seed}"), names, window)
    cluster, violations = play(schedule, nodes=nodes, seed=seed, window=window, profile=profile)
    return Outcome(seed, tuple(schedule), tuple(violations), cluster.results())


def replay_command(seed: int, *, nodes: int, window: float, profile: str) -> str:
    """The command line that explores exactly this seed again."""
    args = [
        "python", "-m", "simulator", "explore", "--seeds", "1", "--first-seed", str(seed),
        "--nodes", str(nodes), "--window", repr(window), "--profile", profile,
    ]  # fmt: skip
    return shlex.join(args)
