"""Selection: tiers first, then the strategy among equals."""

from __future__ import annotations

import collections
import dataclasses
import random

from discovery.balancer import LeastOutstanding, Random, RoundRobin, Weighted, preferred
from discovery.catalog import Health, Instance


def instance(node: str, **changes: object) -> Instance:
    return dataclasses.replace(Instance("web", node, ("10.0.0.1", 80)), **changes)  # type: ignore[arg-type]


def test_healthy_confirmed_instances_come_first() -> None:
    healthy = instance("a")
    stale = instance("b", stale=True)
    suspect = instance("c", health=Health.SUSPECT)
    draining = instance("d", health=Health.DRAINING)
    marked = instance("e", incarnation=9)
    pool = [marked, draining, suspect, stale, healthy]

    def unavailable(i: Instance) -> bool:
        return i == marked

    assert preferred(pool, unavailable) == [healthy]
    assert preferred(pool[:4], unavailable) == [stale]
    assert preferred(pool[:3], unavailable) == [suspect]
    assert preferred(pool[:2], unavailable) == [draining]
    assert preferred(pool[:1], unavailable) == [marked]
    assert preferred([]) == []


def test_round_robin_takes_turns_per_service() -> None:
    pool = [instance("a"), instance("b"), instance("c")]
    strategy = RoundRobin()
    assert [strategy.pick("web", pool).node for _ in range(4)] == ["a", "b", "c", "a"]
    assert strategy.pick("api", pool).node == "a"


def test_random_is_uniform_and_reproducible() -> None:
    pool = [instance("a"), instance("b")]
    picks = [Random(random.Random(7)).pick("web", pool).node for _ in range(3)]
    assert len(set(picks)) == 1  # same seed, same choice
    strategy = Random(random.Random(1))
    counts = collections.Counter(strategy.pick("web", pool).node for _ in range(2000))
    assert 900 < counts["a"] < 1100


def test_weighted_follows_the_weights_and_skips_zero() -> None:
    pool = [instance("a", weight=300), instance("b", weight=100), instance("z", weight=0)]
    strategy = Weighted(random.Random(3))
    counts = collections.Counter(strategy.pick("web", pool).node for _ in range(4000))
    assert counts["z"] == 0
    assert 2.6 < counts["a"] / counts["b"] < 3.4
    zeros = [instance("a", weight=0), instance("b", weight=0)]
    assert {strategy.pick("web", zeros).node for _ in range(50)} == {"a", "b"}


def test_least_outstanding_picks_the_least_busy() -> None:
    a, b, c = instance("a"), instance("b"), instance("c")
    strategy = LeastOutstanding()
    strategy.started(a)
    strategy.started(a)
    strategy.started(b)
    assert strategy.pick("web", [a, b, c]) == c
    strategy.started(c)
    assert strategy.pick("web", [a, b, c]) in (b, c)
    strategy.finished(a)
    strategy.finished(a)
    assert strategy.pick("web", [a, b, c]) == a
    assert strategy.outstanding(a) == 0
