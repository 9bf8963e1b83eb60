"""No false failures under uniform packet loss: the figures of benchmarks/loss.py's runs, in
virtual time (memberlist, and shoal before its suspicion checks, declared live members failed
15 to 19 times in each 20-member run here, 0 to 5 times in each 50-member one)."""

from __future__ import annotations

import pytest

from simulator.scenarios import run


@pytest.mark.parametrize(
    ("nodes", "profile", "seconds", "seed"),
    [(20, "local", 300.0, 1), (20, "local", 300.0, 2), (50, "lan", 120.0, 3)],
)
def test_a_fifth_of_all_packets_lost_raises_suspicions_but_fails_no_one(
    nodes: int, profile: str, seconds: float, seed: int
) -> None:
    _, results = run("steady", nodes=nodes, seed=seed, duration=seconds, loss=0.2, profile=profile)
    assert len(results.false_suspicions) > 100  # the loss is real: probes do fail
    assert results.false_failures == ()


def test_a_member_that_crashes_during_the_loss_is_still_found_failed_by_everyone() -> None:
    _, results = run("crash", nodes=20, seed=4, duration=60.0, loss=0.2, profile="local")
    (crash,) = results.crashes
    assert crash.all_failed is not None and crash.all_failed < 15.0
    assert results.false_failures == ()
