"""Failover decisions and the call-with-failover machine, driven by hand: no sockets, no trio."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.balancer import LeastOutstanding, Random, RoundRobin
from discovery.catalog import Health, Instance, NoInstances, UnknownService
from discovery.failover import (
    Attempt,
    CallFailed,
    CallPlan,
    Done,
    FailoverPolicy,
    GiveUp,
    Lookup,
    Try,
)


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


def call(policy: FailoverPolicy, now: float = 0.0, deadline: float | None = None) -> CallPlan:
    return policy.plan("web", RoundRobin(), now, deadline)


def test_a_call_looks_up_tries_one_instance_and_is_done() -> None:
    strategy = LeastOutstanding()
    plan = FailoverPolicy().plan("web", strategy, now=0.0)
    assert plan.step == Lookup()
    a = instance("a")
    assert plan.resolved([a], 0.0) == Try(a)
    assert strategy.outstanding(a) == 1  # the strategy counts the attempt in flight
    assert plan.finished(0.1) == Done(a)
    assert strategy.outstanding(a) == 0 and plan.attempts == []


def test_a_failed_attempt_marks_the_instance_and_the_call_moves_on() -> None:
    policy = FailoverPolicy(retries=5)
    pool = [instance("a"), instance("b")]
    plan = call(policy)
    first = plan.resolved(pool, 0.0)
    assert isinstance(first, Try)
    assert plan.failed("Connection refused", 0.0) == Lookup()  # gossip may have news
    assert policy.is_marked(first.instance, 0.0)
    second = plan.resolved(pool, 0.0)
    assert isinstance(second, Try) and second.instance != first.instance
    plan.failed("Connection reset", 0.0)
    gave_up = plan.resolved(pool, 0.0)  # each instance once per call
    assert isinstance(gave_up, GiveUp) and isinstance(gave_up.error, CallFailed)
    assert str(gave_up.error) == (
        "call to 'web' failed (no other instance available) after: "
        f"{first.instance}: Connection refused; {second.instance}: Connection reset"
    )
    # the next calls avoid both while another exists, and fall back to them when none does
    assert call(policy, 1.0).resolved([*pool, instance("c")], 1.0) == Try(instance("c"))
    assert call(policy, 1.0).resolved(pool, 1.0) in (Try(pool[0]), Try(pool[1]))


def test_a_marked_instance_is_chosen_again_once_gossip_shows_it_back() -> None:
    policy, strategy = FailoverPolicy(), RoundRobin()
    a, b = instance("a", 3), instance("b")
    policy.mark(a, now=0.0)

    def picks(pool: list[Instance]) -> list[str]:
        steps = [policy.plan("web", strategy, 1.0).resolved(pool, 1.0) for _ in range(4)]
        return [step.instance.node for step in steps if isinstance(step, Try)]

    assert picks([a, b]) == ["b"] * 4
    assert picks([instance("a", 4), b]) == ["a", "b", "a", "b"]  # it restarted


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_the_retry_budget_ends_a_call_without_another_lookup(retries: int) -> None:
    pool = [instance(n) for n in "abcdef"]
    plan = call(FailoverPolicy(retries=retries))
    steps = []
    for _ in range(retries + 1):
        plan.resolved(pool, 0.0)
        steps.append(plan.failed("refused", 0.0))
    assert steps[:-1] == [Lookup()] * retries
    (gave_up,) = steps[-1:]
    assert isinstance(gave_up, GiveUp) and isinstance(gave_up.error, CallFailed)
    assert gave_up.error.reason == f"retry budget of {retries} spent"
    assert len(gave_up.error.attempts) == retries + 1


def test_the_deadline_cuts_the_attempt_short_and_marks_nothing() -> None:
    policy, strategy = FailoverPolicy(), LeastOutstanding()
    a = instance("a")
    plan = policy.plan("web", strategy, now=10.0, deadline=12.5)
    trying = plan.resolved([a], 10.0)
    assert plan.next_deadline() == 12.5
    assert plan.tick(12.0) == trying  # early: nothing changes
    gave_up = plan.tick(12.5)
    assert isinstance(gave_up, GiveUp) and isinstance(gave_up.error, CallFailed)
    assert gave_up.error.reason == "deadline of 2.5 s passed"
    assert gave_up.error.attempts == (Attempt(a, "deadline passed"),)
    assert not policy.is_marked(a, 12.5)  # the call ran out of time, not the instance
    assert strategy.outstanding(a) == 0
    assert plan.next_deadline() is None


def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    a, b = instance("a"), instance("b")
    after_a_failure = call(FailoverPolicy(), 0.0, deadline=1.0)
    after_a_failure.resolved([a, b], 0.0)
    gave_up = after_a_failure.failed("refused", 1.0)
    assert isinstance(gave_up, GiveUp) and "deadline of 1 s passed" in str(gave_up.error)
    slow_lookup = call(FailoverPolicy(), 0.0, deadline=1.0)
    gave_up = slow_lookup.resolved([a, b], 1.5)
    assert isinstance(gave_up, GiveUp) and "deadline of 1 s passed" in str(gave_up.error)


def test_with_nothing_to_try_the_call_fails_with_the_lookups_own_error() -> None:
    unknown = UnknownService("web", ["core"])
    assert call(FailoverPolicy()).resolved(unknown, 0.0) == GiveUp(unknown)
    none_left = NoInstances("web", "2 failed")
    assert call(FailoverPolicy()).resolved(none_left, 0.0) == GiveUp(none_left)
    # after a failed attempt, a lookup that finds nothing leaves nothing else to try
    plan = call(FailoverPolicy())
    plan.resolved([instance("a")], 0.0)
    plan.failed("refused", 0.0)
    gave_up = plan.resolved(none_left, 0.0)
    assert isinstance(gave_up, GiveUp) and isinstance(gave_up.error, CallFailed)
    assert gave_up.error.reason == "no other instance available"


def test_failed_and_left_instances_are_never_tried() -> None:
    gone = [instance("a", health=Health.FAILED), instance("b", health=Health.LEFT)]
    gave_up = call(FailoverPolicy()).resolved(gone, 0.0)
    assert isinstance(gave_up, GiveUp) and isinstance(gave_up.error, CallFailed)
    assert gave_up.error.attempts == ()


def test_steps_out_of_order_are_refused() -> None:
    plan = call(FailoverPolicy())
    with pytest.raises(RuntimeError, match="is at Lookup, not Try: finished"):
        plan.finished(0.0)
    plan.resolved([instance("a")], 0.0)
    with pytest.raises(RuntimeError, match="is at Try, not Lookup: resolved"):
        plan.resolved([instance("a")], 0.0)
    plan.finished(0.0)
    with pytest.raises(RuntimeError, match="is at Done, not Try: failed"):
        plan.failed("refused", 0.0)


def test_without_a_cooldown_a_failure_marks_nothing() -> None:
    policy = FailoverPolicy(retries=0, cooldown=0.0)
    plan = call(policy)
    plan.resolved([instance("a")], 0.0)
    plan.failed("refused", 0.0)
    assert not policy.is_marked(instance("a"), 0.0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="retries=-1"):
        FailoverPolicy(retries=-1)
    with pytest.raises(ValueError, match="cooldown=-1"):
        FailoverPolicy(cooldown=-1)


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
    for index in range(30):
        now = float(index)
        everyone_marked = marked == down
        plan = policy.plan("web", strategy, now)
        step = plan.resolved(pool, now)
        while isinstance(step, Try) and step.instance.node in down:
            marked.add(step.instance.node)
            if isinstance(plan.failed("refused", now), Lookup):
                step = plan.resolved(pool, now)
            else:
                step = plan.step
        if len(down) < instances and (len(down) <= retries or everyone_marked):
            assert isinstance(step, Try), step
