"""The invariant checks: they hold on sound runs and catch broken ones."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings

from simulator import faults
from simulator.check import (
    check,
    crashes_detected,
    disturbances,
    incarnations_never_decrease,
    left_stays_left,
    no_false_failures,
    quiet,
    views_agree,
)
from simulator.cluster import Cluster
from simulator.explore import explore_seed, play, random_schedule
from simulator.faults import Fault
from simulator.metrics import FalseAlarm, Observation
from simulator.strategies import schedules

NAMES = [f"n{i}" for i in range(6)]


def settled(cluster: Cluster) -> Cluster:
    cluster.run_until(cluster.now + 60.0)
    return cluster


def test_a_calm_run_keeps_every_invariant() -> None:
    cluster = Cluster(6, seed=1)
    schedule: list[Fault] = [faults.Crash(5.0, "n5"), faults.Leave(6.0, "n4"), faults.Join(7.0)]
    cluster.schedule(*schedule)
    cluster.run_until(90.0)
    assert quiet(cluster, schedule)
    assert check(cluster, schedule) == []


def test_views_that_disagree_are_caught() -> None:
    cluster = Cluster(4, seed=2)
    cluster.partition([["n0", "n1"], ["n2", "n3"]])
    cluster.run_until(40.0)
    (violation,) = views_agree(cluster)
    assert violation.invariant == "agreement"
    assert "n0 lacks ['n2', 'n3']" in violation.detail


def test_a_late_detection_is_caught() -> None:
    cluster = settled(Cluster(4, seed=3))
    cluster.crash("n3")
    cluster.pause("n0", 500.0)  # n0 will never mark it failed
    cluster.run_until(cluster.now + cluster.detection_bound() + 1.0)
    (violation,) = crashes_detected(cluster, [])
    assert "n3 crashed" in violation.detail and "marked failed by 2 of 3" in violation.detail
    assert crashes_detected(cluster, [faults.Pause(10.0, "n0", 500.0)]) == []


def test_false_failures_are_caught() -> None:
    cluster = Cluster(3, seed=4)
    cluster.metrics.false_failures.append(FalseAlarm(1.0, "n0", "n1", "failed", 1))
    (violation,) = no_false_failures(cluster)
    assert "n0 marked n1 (incarnation 1) failed at 1.000" in violation.detail


def test_an_incarnation_going_down_is_caught_unless_a_process_restarted() -> None:
    cluster = Cluster(3, seed=5)
    log = cluster.metrics.observations
    log.append(Observation(1.0, "n0", "suspect", "n1", 4, "suspect"))
    log.append(Observation(2.0, "n0", "joined", "n1", 2, "alive"))
    (violation,) = incarnations_never_decrease(cluster)
    assert "n0 saw n1 go from incarnation 4 to 2 (joined) at 2.000" in violation.detail
    cluster.metrics.starts.append((0.5, "n1", 1))  # a new n1 process may be behind the join
    assert incarnations_never_decrease(cluster) == []
    log.append(Observation(3.0, "n2", "suspect", "n1", 5, "suspect"))
    log.append(Observation(5.0, "n2", "failed", "n1", 3, "dead"))
    assert len(incarnations_never_decrease(cluster)) == 1  # not a join: no excuse
    cluster.metrics.starts.append((4.0, "n2", 1))  # a new observer starts from a fresh view
    assert incarnations_never_decrease(cluster) == []


def test_a_left_member_coming_back_at_an_old_incarnation_is_caught() -> None:
    cluster = Cluster(3, seed=6)
    log = cluster.metrics.observations
    log.append(Observation(1.0, "n0", "left", "n2", 3, "left"))
    log.append(Observation(5.0, "n0", "joined", "n2", 3, "alive"))
    (violation,) = left_stays_left(cluster)
    assert "n0 saw n2 alive at incarnation 3 at 5.000 after it left" in violation.detail
    log.append(Observation(6.0, "n1", "left", "n2", 3, "left"))
    log.append(Observation(7.0, "n1", "joined", "n2", 4, "alive"))
    assert len(left_stays_left(cluster)) == 1


def test_disturbances_end_at_their_duration_or_at_a_repair() -> None:
    schedule: list[Fault] = [
        faults.Split.halves(5.0, NAMES),
        faults.Repair(20.0),
        faults.Pause(30.0, "n1", 4.0),
        faults.Slow(40.0, "n2", 1.0),
        faults.Crash(50.0, "n3"),
    ]
    assert disturbances(schedule, 100.0) == [(5.0, 20.0), (30.0, 34.0), (40.0, 100.0)]


def test_a_few_random_schedules_keep_every_invariant() -> None:
    for seed in (1, 2, 3):
        outcome = explore_seed(seed, nodes=6, window=40.0)
        assert outcome.violations == (), (seed, outcome.schedule)


def test_random_schedules_depend_on_the_seed_only() -> None:
    first = random_schedule(random.Random("explore:5"), NAMES, 60.0)
    assert first == random_schedule(random.Random("explore:5"), NAMES, 60.0)
    assert all(5.0 <= fault.at <= 58.0 for fault in first)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schedules(NAMES, window=30.0, max_faults=3))
def test_hypothesis_schedules_keep_every_invariant(schedule: list[Fault]) -> None:
    _, violations = play(schedule, nodes=len(NAMES), seed=1, window=30.0)
    assert violations == []
