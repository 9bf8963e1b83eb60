"""Calls through discovery's own decisions in the simulator: failover under churn, drains."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from discovery.simulation import (
    CUT_OFF,
    NOT_ACCEPTING,
    REFUSED,
    TIMED_OUT,
    Calls,
    Comparison,
    CrashInstance,
    DrainInstance,
    Scenario,
    ScenarioError,
    churn_schedule,
    client_names,
    compare,
    instance_names,
    simulate,
)
from simulator import faults
from simulator.cluster import SimulationError

ROOT = Path(__file__).resolve().parents[2]

CHURN = Scenario(
    instances=5,
    clients=3,
    calls=Calls(rate=10.0, retries=2),
    end=130.0,
    faults=churn_schedule(
        instance_names("api", 5),
        start=15.0,
        end=125.0,
        interval=10.0,
        down=5.0,
        drain_share=0.4,
        seed=3,
    ),
    seed=3,
)
"""Five instances; every 10 s one crashes or drains and is back 5 s later."""

SLOW_CALLS = Calls(rate=10.0, service_time=1.0, timeout=5.0)
"""Requests that take a second, so that a drain waits long enough for its news to spread."""


@pytest.fixture(scope="module")
def churn() -> Comparison:
    return compare(CHURN)


def test_with_failover_and_enough_instances_no_call_fails(churn: Comparison) -> None:
    arm = churn.with_failover
    assert arm.most_down == 1
    kinds = {type(fault) for fault in CHURN.faults}
    assert kinds == {CrashInstance, DrainInstance}
    # the churn did hit calls: failover absorbed refusals, resets and draining refusals
    assert arm.retried > 0
    assert arm.attempt_errors[REFUSED] > 0
    assert arm.attempt_errors[NOT_ACCEPTING] > 0
    assert arm.failed == 0
    assert arm.failed_after_budget == 0
    assert sum(arm.failed_per_bucket) == 0
    assert sum(arm.calls_per_bucket) == arm.calls > 3000


def test_without_failover_calls_fail_and_failover_fails_fewer(churn: Comparison) -> None:
    with_failover, without = churn.with_failover, churn.without_failover
    assert without.calls == with_failover.calls  # the same arrivals: a fair comparison
    assert without.share_failed > 0.005
    assert with_failover.share_failed < without.share_failed
    assert without.failures == {"retry budget of 0 spent": without.failed}
    assert without.failed_after_budget == without.failed
    assert without.retried == 0
    # failures come in bursts after each fault, not spread over the run
    assert 0 < sum(1 for count in without.failed_per_bucket if count) < len(CHURN.faults) * 2


def test_both_arms_live_through_the_same_membership() -> None:
    crashes = churn_schedule(
        instance_names("api", 5), start=15.0, end=60.0, interval=10.0, down=5.0, seed=4
    )
    comparison = compare(Scenario(calls=Calls(rate=10.0), end=65.0, faults=crashes, seed=4))
    # calls never touch the engines or the cluster's randomness: only the policy differs
    assert comparison.with_failover.trace_hash == comparison.without_failover.trace_hash
    assert comparison.with_failover.fault_log == comparison.without_failover.fault_log


def test_drained_instances_stop_being_chosen_and_no_call_is_lost() -> None:
    names = instance_names("api", 5)
    drains = tuple(
        DrainInstance(20.0 + 10.0 * index, name, restart_after=3.0)
        for index, name in enumerate(names)
    )
    scenario = Scenario(calls=SLOW_CALLS, end=75.0, faults=drains, seed=1)
    comparison = compare(scenario)
    arm = comparison.with_failover
    assert [drain.instance for drain in arm.drains] == names
    for drain in arm.drains:
        assert drain.report.clean  # every request in flight finished, and it left
        assert drain.clients_saw_draining >= 1  # the draining record spread before it left
        assert drain.chosen_while_known_draining == 0
    assert sum(drain.refused for drain in arm.drains) > 0  # refused before the news spread
    assert arm.failed == 0
    assert comparison.without_failover.failed == sum(
        drain.refused for drain in comparison.without_failover.drains
    )


def test_a_draining_instance_is_still_chosen_when_it_is_the_only_one() -> None:
    drain = DrainInstance(20.0, "api-0", restart_after=5.0)
    scenario = Scenario(instances=1, clients=2, calls=SLOW_CALLS, end=40.0, faults=(drain,))
    arm = simulate(scenario)
    (outcome,) = arm.drains
    assert outcome.chosen_while_known_draining > 0
    assert arm.failures["no other instance available"] > 0  # refused, and nowhere else to go
    assert arm.failures["NoInstances"] > 0  # while it was gone


def test_requests_outlasting_the_drain_timeout_are_cut_off_and_retried() -> None:
    drain = DrainInstance(20.0, "api-0", timeout=0.2, restart_after=5.0)
    comparison = compare(Scenario(calls=SLOW_CALLS, end=40.0, faults=(drain,), seed=1))
    (outcome,) = comparison.with_failover.drains
    assert len(outcome.report.cut_off) > 0
    assert comparison.with_failover.attempt_errors[CUT_OFF] == len(outcome.report.cut_off)
    assert comparison.with_failover.failed == 0
    assert comparison.without_failover.failed == len(outcome.report.cut_off)


def test_an_unanswering_instance_fails_attempts_after_the_connect_timeout() -> None:
    pause = faults.Pause(20.0, "api-1", 3.0)
    calls = Calls(rate=10.0, connect_timeout=0.5)
    comparison = compare(Scenario(calls=calls, end=40.0, network_faults=(pause,), seed=1))
    timed_out = [a for a in comparison.with_failover.attempt_log if a.error == TIMED_OUT]
    assert timed_out
    assert all(a.finished - a.started == pytest.approx(0.5) for a in timed_out)
    assert comparison.with_failover.failed == 0
    assert comparison.without_failover.failed > 0


def test_a_connect_timeout_beyond_the_call_timeout_leaves_failover_nothing_to_do() -> None:
    everyone = instance_names("api", 5) + client_names(3)
    cut = faults.Split.isolate(20.0, "api-1", everyone, 5.0)
    calls = Calls(rate=10.0, connect_timeout=3.0, timeout=1.0)
    arm = simulate(Scenario(calls=calls, end=40.0, network_faults=(cut,), seed=1))
    assert arm.failed > 0
    assert arm.failures == {"deadline of 1 s passed": arm.failed}


def test_the_same_seed_gives_the_same_results() -> None:
    scenario = Scenario(calls=Calls(rate=10.0), end=60.0, faults=CHURN.faults[:3], seed=5)
    first, second = compare(scenario), compare(scenario)
    assert first == second
    assert first.with_failover.trace_hash == second.with_failover.trace_hash
    other = simulate(Scenario(calls=Calls(rate=10.0), end=60.0, faults=CHURN.faults[:3], seed=6))
    assert other.trace_hash != first.with_failover.trace_hash
    assert other.call_log != first.with_failover.call_log


DIGEST = """
import hashlib
from discovery.simulation import Calls, Scenario, compare, churn_schedule, instance_names
schedule = churn_schedule(instance_names("api", 4), start=12, end=40, interval=8, down=4,
                          drain_share=0.5, seed=2)
result = compare(Scenario(instances=4, calls=Calls(rate=5.0, strategy="random"), end=45,
                          faults=schedule, seed=2))
print(hashlib.sha256(repr(result).encode()).hexdigest())
"""


def digest_in_a_fresh_process(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", DIGEST]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_results_do_not_depend_on_pythonhashseed() -> None:
    first = digest_in_a_fresh_process("0")
    assert len(first) == len(hashlib.sha256().hexdigest())
    assert digest_in_a_fresh_process("4242") == first


def test_a_bad_scenario_names_the_cause_and_the_fix() -> None:
    with pytest.raises(ScenarioError, match=r"Calls.rate=0 must be a finite number > 0"):
        Calls(rate=0)
    with pytest.raises(ScenarioError, match="strategy='fastest' is unknown; choose one of"):
        Calls(strategy="fastest")
    with pytest.raises(ScenarioError, match="unknown instance; the instances are api-0, api-1"):
        Scenario(instances=2, faults=(CrashInstance(20.0, "api-7"),))
    with pytest.raises(ScenarioError, match=r"before the calls start at 10\.0"):
        Scenario(faults=(CrashInstance(5.0, "api-0"),))
    with pytest.raises(ScenarioError, match="use CrashInstance or DrainInstance"):
        Scenario(network_faults=(faults.Crash(20.0, "api-0"),))
    with pytest.raises(ScenarioError, match=r"down=12.0 must lie in \[0, interval=10.0\)"):
        churn_schedule(["api-0"], start=10.0, end=20.0, interval=10.0, down=12.0)


def test_overlapping_faults_on_one_instance_are_refused_when_they_meet() -> None:
    overlapping = (CrashInstance(20.0, "api-0", restart_after=10.0), CrashInstance(25.0, "api-0"))
    with pytest.raises(SimulationError, match="api-0 is stopped, not serving; space the faults"):
        simulate(Scenario(calls=Calls(rate=5.0), end=40.0, faults=overlapping))


def test_calls_start_only_once_every_client_discovered_every_instance() -> None:
    with pytest.raises(SimulationError, match="the records have not spread yet, so raise start"):
        simulate(Scenario(start=0.0, end=10.0))
