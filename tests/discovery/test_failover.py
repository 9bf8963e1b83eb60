"""Failover decisions, driven by hand the way a simulator would drive them."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.balancer import Random, RoundRobin
from discovery.catalog import Health, Instance
from discovery.failover import CallFailed, FailoverPolicy


def instance(node: str, incarnation: int = 1, **changes: object) -> Instance:
    base = Instance("web", node, ("10.0.0.1", 80), incarnation=incarnation)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_mark_clears_after_the_cooldown() -> None:
    policy = FailoverPolicy(cooldown=30.0)
    a = instance("a")
    policy.mark(a, now=100.0)
    assert policy.is_marked(a, 129.9)
    assert not policy.is_marked(a, 130.0)
    assert not policy.is_marked(a, 100.0)  # cleared for good


def test_a_mark_clears_when_gossip_shows_a_newer_incarnation_alive() -> None:
    policy = FailoverPolicy()
    policy.mark(instance("a", 3), now=0.0)
    assert policy.is_marked(instance("a", 3), 1.0)
    assert policy.is_marked(instance("a", 4, health=Health.SUSPECT), 1.0)
    assert not policy.is_marked(instance("a", 4), 1.0)


def test_a_plan_tries_each_instance_once_and_marks_failures() -> None:
    policy = FailoverPolicy(retries=5)
    pool = [instance("a"), instance("b")]
    plan = policy.plan("web", now=0.0)
    first = plan.next(pool, RoundRobin(), 0.0)
    assert first is not None
    plan.failed(first, "Connection refused", 0.0)
    second = plan.next(pool, RoundRobin(), 0.0)
    assert second is not None and second != first
    plan.failed(second, "Connection reset", 0.0)
    assert plan.next(pool, RoundRobin(), 0.0) is None
    error = plan.error()
    assert isinstance(error, CallFailed)
    assert str(error) == (
        "call to 'web' failed (no other instance available) after: "
        f"{first}: Connection refused; {second}: Connection reset"
    )
    # the next call avoids both while others exist, and falls back to them when none do
    again = policy.plan("web", now=1.0)
    assert again.next([*pool, instance("c")], RoundRobin(), 1.0) == instance("c")
    assert policy.plan("web", now=1.0).next(pool, RoundRobin(), 1.0) in pool


def test_the_budget_and_the_deadline_end_a_call() -> None:
    pool = [instance(n) for n in "abcd"]
    plan = FailoverPolicy(retries=1).plan("web", now=0.0)
    for _ in range(2):
        choice = plan.next(pool, RoundRobin(), 0.0)
        assert choice is not None
        plan.failed(choice, "refused", 0.0)
    assert plan.next(pool, RoundRobin(), 0.0) is None
    assert plan.reason == "retry budget of 1 spent"
    timed = FailoverPolicy().plan("web", now=10.0, deadline=12.5)
    assert timed.next(pool, RoundRobin(), 12.5) is None
    assert timed.reason == "deadline of 2.5 s passed"


def test_a_deadline_failure_does_not_mark_the_instance() -> None:
    policy = FailoverPolicy()
    plan = policy.plan("web", now=0.0)
    plan.failed(instance("a"), "deadline passed", 0.0, mark=False)
    assert not policy.is_marked(instance("a"), 0.0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="retries=-1"):
        FailoverPolicy(retries=-1)


@settings(max_examples=200)
@given(
    instances=st.integers(1, 8),
    crashed=st.data(),
    retries=st.integers(0, 4),
    seed=st.integers(0, 2**32),
)
def test_with_enough_instances_no_call_fails_after_the_budget(
    instances: int, crashed: st.DataObject, retries: int, seed: int
) -> None:
    """Crashed instances refuse connections; gossip has not noticed.  While a live instance
    exists, a call fails only when it meets more crashed instances than it may retry, and once
    each crashed instance has failed one call (and so is marked), no call fails at all."""
    pool = [instance(f"n{i}") for i in range(instances)]
    down = crashed.draw(st.sets(st.sampled_from([i.node for i in pool])))
    policy = FailoverPolicy(retries=retries)
    strategy = Random(random.Random(seed))
    marked: set[str] = set()
    for call in range(30):
        now = float(call)
        everyone_marked = marked == down
        plan = policy.plan("web", now)
        while (choice := plan.next(pool, strategy, now)) is not None:
            if choice.node not in down:
                break
            plan.failed(choice, "refused", now)
            marked.add(choice.node)
        if len(down) < instances and (len(down) <= retries or everyone_marked):
            assert choice is not None, plan.reason
