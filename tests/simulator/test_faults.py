"""Faults as data: shapes, round trips through JSON, churn."""

from __future__ import annotations

import json

import pytest

from simulator import faults
from simulator.cluster import Cluster
from simulator.faults import Fault, ScheduleError, from_dict

NAMES = [f"n{i}" for i in range(8)]

EVERY_KIND: list[Fault] = [
    faults.Crash(1.0, "n1", restart_after=2.0, new_address=True),
    faults.Restart(2.0, "n1"),
    faults.Leave(3.0, "n2"),
    faults.Join(4.0, "extra"),
    faults.Split.ring(5.0, NAMES, 4, 10.0),
    faults.OneWay(6.0, ("n0",), ("n3", "n4"), 2.5),
    faults.Repair(7.0),
    faults.LinkChange(8.0, loss=0.1, latency=0.01, nodes=("n5",), duration=3.0),
    faults.LinkChange(8.5, loss=0.2, nodes=("n5",), direction="in"),
    faults.Flap(8.7, ("n0", "n1"), ("n5",), period=2.0, duration=10.0),
    faults.Pause(9.0, "n6", 4.0),
    faults.Slow(10.0, "n7", 1.5),
    faults.Churn(11.0, 20.0, crash_rate=0.1, join_rate=0.1, restart_after=5.0),
]


@pytest.mark.parametrize("fault", EVERY_KIND, ids=lambda f: f.to_dict()["fault"])
def test_every_fault_survives_a_json_round_trip(fault: Fault) -> None:
    assert from_dict(json.loads(json.dumps(fault.to_dict()))) == fault


def test_a_bad_description_names_the_problem() -> None:
    with pytest.raises(ScheduleError, match="unknown fault kind 'flood'"):
        from_dict({"fault": "flood", "at": 1.0})
    with pytest.raises(ScheduleError, match="bad crash fault"):
        from_dict({"fault": "crash", "at": 1.0})


def test_partition_shapes() -> None:
    halves = faults.Split.halves(1.0, NAMES)
    assert halves.groups == (tuple(NAMES[:4]), tuple(NAMES[4:])) and not halves.allowed
    alone = faults.Split.isolate(1.0, "n3", NAMES)
    assert alone.groups[0] == ("n3",) and "n3" not in alone.groups[1]
    ring = faults.Split.ring(1.0, NAMES, 4)
    assert ring.groups[0] == ("n0", "n4") and (3, 0) in ring.allowed
    bridge = faults.Split.bridge(1.0, NAMES)
    assert bridge.groups[2] == ("n0",) and bridge.allowed == ((0, 2), (1, 2))
    with pytest.raises(ScheduleError, match="parts >= 3"):
        faults.Split.ring(1.0, NAMES, 2)


def test_across_a_bridge_the_halves_fail_each_other_but_the_bridge_fails_no_one() -> None:
    """Each half fails the other (indirect probes through the bridge do not always help),
    and the Dead messages cross the bridge.  memberlist's bridge then marks members it
    reaches directly as failed until they refute (2 to 8 false failures in this run before
    suspicion checks); it now passes its suspicions to the accused first, and their
    answers keep it from declaring them failed."""
    cluster = Cluster(9, seed=1)
    cluster.schedule(faults.Split.bridge(2.0, cluster.names()))
    cluster.run_until(60.0)
    results = cluster.results()
    assert results.network["cut"] > 0
    assert results.events["failed"] > 0  # across the cut: true failures, for the halves
    assert any(alarm.observer == "n0" for alarm in results.false_suspicions)
    assert results.false_failures == ()


def test_a_flapping_link_is_cut_and_open_by_turns_and_only_one_way() -> None:
    cluster = Cluster(3, seed=1)
    cluster.schedule(faults.Flap(1.0, ("n0",), ("n2",), period=2.0, duration=7.0))
    seen: list[tuple[float, bool, bool]] = []
    for step in range(20):
        cluster.run_until(0.5 + 0.5 * step)
        blocked = cluster.network.blocked
        seen.append((cluster.now, blocked("n0", "n2"), blocked("n2", "n0")))
    cut_at = [when for when, there, _ in seen if there]
    assert cut_at == [1.0, 1.5, 2.0, 2.5, 5.0, 5.5, 6.0, 6.5]  # cut 1-3 and 5-7, then done
    assert not any(back for _, _, back in seen)  # the other way always flows


def test_loss_at_one_members_ingress_leaves_what_it_sends_alone() -> None:
    cluster = Cluster(3, seed=1)
    cluster.set_link(["n2"], direction="in", loss=1.0)
    assert cluster.network.link("n0", "n2").loss == 1.0
    assert cluster.network.link("n2", "n0").loss == 0.0
    assert cluster.network.link("n0", "n1").loss == 0.0


def test_churn_crashes_leaves_and_joins_within_its_window() -> None:
    cluster = Cluster(10, seed=2)
    cluster.schedule(
        faults.Churn(5.0, 40.0, crash_rate=0.2, leave_rate=0.1, join_rate=0.1, min_members=6)
    )
    cluster.run_until(40.0)
    notes = [r for r in cluster.results().crashes]
    joined = [name for name in cluster.names() if name not in [f"n{i}" for i in range(10)]]
    assert notes and joined
    assert all(5.0 <= crash.at <= 40.0 for crash in notes)
    assert len(cluster.running()) >= 6
