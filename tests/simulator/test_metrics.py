"""What a run measures: crash detection, false alarms, convergence, spread, health, traffic."""

from __future__ import annotations

import json

import pytest

from simulator import faults
from simulator.cluster import Cluster
from simulator.metrics import NodeTraffic, SpreadCurve, TrafficSummary


def test_a_crash_report_times_suspicion_failure_and_full_agreement() -> None:
    cluster = Cluster(10, seed=1)
    cluster.schedule(faults.Crash(10.0, "n9"))
    cluster.run_until(60.0)
    (crash,) = cluster.results().crashes
    assert crash.node == "n9" and crash.at == 10.0 and crash.observers == 9
    assert crash.first_suspicion is not None and crash.first_failed is not None
    assert crash.all_failed is not None
    assert 0 < crash.first_suspicion < crash.first_failed <= crash.all_failed
    assert crash.all_failed <= cluster.detection_bound()
    assert crash.failed_by == 9 and crash.restarted_at is None


def test_a_crash_report_notes_a_return_before_everyone_noticed() -> None:
    cluster = Cluster(10, seed=2)
    cluster.schedule(faults.Crash(10.0, "n9", restart_after=0.5))
    cluster.run_until(30.0)
    (crash,) = cluster.results().crashes
    assert crash.restarted_at == 10.5 and crash.all_failed is None


def test_loss_causes_false_suspicions_but_lifeguard_keeps_them_from_failing_anyone() -> None:
    cluster = Cluster(12, seed=3)
    cluster.set_link(loss=0.15)
    cluster.run_until(60.0)
    results = cluster.results()
    assert results.false_suspicions and not results.false_failures
    assert all(cluster.answering(a.observer, a.member) for a in results.false_suspicions[-1:])
    assert results.network["lost"] > 0


def test_suspicions_of_a_paused_or_cut_off_member_are_not_false() -> None:
    cluster = Cluster(8, seed=4)
    cluster.schedule(
        faults.Pause(5.0, "n7", 15.0), faults.Split.isolate(30.0, "n6", cluster.names(), 15.0)
    )
    cluster.run_until(44.0)
    results = cluster.results()
    assert results.events["failed"] >= 7  # n7 and n6 were each failed by the others
    assert not [a for a in results.false_failures if a.member in ("n6", "n7")]


def test_the_time_to_one_view_after_a_repair_is_measured() -> None:
    cluster = Cluster(10, seed=5)
    cluster.schedule(faults.Split.halves(5.0, cluster.names(), 40.0))
    cluster.run_until(150.0)
    (repair,) = cluster.results().convergence
    assert repair.repaired_at == 45.0
    assert repair.agreed_after is not None and repair.agreed_after < 100.0
    assert cluster.agreed()


def test_the_spread_curve_of_a_join_reaches_everyone() -> None:
    cluster = Cluster(16, seed=6)
    cluster.run_until(3.0)
    name = cluster.add_node()
    cluster.run_for(10.0)
    curve = cluster.spread(name, "joined", 3.0)
    assert curve.observers == 16 and len(curve.delays) == 16
    half, whole = curve.time_to(0.5), curve.time_to(1.0)
    assert half is not None and whole is not None and 0 < half <= whole < 5.0
    assert curve.points()[-1] == (whole, 1.0)


def test_results_follow_the_spread_of_every_crash_leave_and_join() -> None:
    cluster = Cluster(8, seed=11)
    cluster.schedule(faults.Crash(2.0, "n7"), faults.Leave(20.0, "n6"), faults.Join(30.0, "new"))
    cluster.run_until(45.0)
    spreads = {(curve.member, curve.kind): curve for curve in cluster.results().spreads}
    assert list(spreads) == [("n7", "failed"), ("n6", "left"), ("new", "joined")]
    assert [curve.observers for curve in spreads.values()] == [7, 6, 6]
    assert all(curve.time_to(1.0) is not None for curve in spreads.values())


def test_the_alive_count_over_time_follows_a_crash_and_a_join() -> None:
    cluster = Cluster(5, seed=12)
    cluster.schedule(faults.Crash(2.0, "n4"), faults.Join(30.0, "new"))
    cluster.run_until(40.0)
    counts = [count for _, count in cluster.alive_timeline("n0")]
    assert counts[0] == 5 and counts[-1] == 5 and 4 in counts
    assert cluster.alive_timeline("new")[-1][1] == 5


def test_a_spread_curve_says_when_a_fraction_was_never_reached() -> None:
    curve = SpreadCurve("x", "joined", 0.0, (0.1, 0.2), observers=4)
    assert curve.time_to(0.5) == 0.2 and curve.time_to(0.75) is None


def test_health_scores_are_recorded_at_each_change() -> None:
    cluster = Cluster(6, seed=7)
    cluster.schedule(faults.Slow(5.0, "n5", delay=2.0))  # its own probes fail: health rises
    cluster.run_until(40.0)
    timelines = {name: cluster.health_timeline(name) for name in cluster.names()}
    assert all(timeline[0] == (0.0, 0) for timeline in timelines.values())
    assert any(score > 0 for timeline in timelines.values() for _, score in timeline)
    assert cluster.results().max_health > 0


def test_per_node_traffic_is_flat_in_the_cluster_size() -> None:
    """SWIM's constant load: one probe and one ack per node per period, whatever n is."""
    rates = []
    for n in (8, 64):
        cluster = Cluster(n, seed=8)
        cluster.run_until(20.0)
        rates.append(cluster.results().traffic.datagrams_per_node_second)
    assert rates[0] == pytest.approx(2.0, rel=0.1)
    assert rates[1] == pytest.approx(rates[0], rel=0.1)


def test_a_traffic_summary_divides_by_running_time() -> None:
    rows = [
        NodeTraffic("a", 10.0, 20, 2000, 20, 2000, 1, 100, 1, 100),
        NodeTraffic("b", 5.0, 20, 500, 0, 0, 0, 0, 0, 0),
        NodeTraffic("c", 0.0, 0, 0, 0, 0, 0, 0, 0, 0),
    ]
    summary = TrafficSummary.of(rows)
    assert summary.datagrams_per_node_second == pytest.approx(40 / 15)
    assert summary.max_datagrams_per_node_second == pytest.approx(4.0)
    assert summary.max_bytes_per_node_second == pytest.approx(200.0)


def test_results_turn_into_json() -> None:
    cluster = Cluster(5, seed=9)
    cluster.schedule(faults.Crash(2.0, "n4"))
    cluster.run_until(30.0)
    data = json.loads(json.dumps(cluster.results({"note": "x"}).to_dict()))
    assert data["crashes"][0]["node"] == "n4"
    assert data["extra"] == {"note": "x"}
    assert len(data["trace_hash"]) == 64


def test_the_view_timeline_is_a_log_of_changes() -> None:
    cluster = Cluster(5, seed=10)
    cluster.schedule(faults.Crash(2.0, "n4"))
    cluster.run_until(30.0)
    changes = [o for o in cluster.metrics.observations if o.observer == "n0"]
    assert [o.state for o in changes if o.member == "n4"] == ["suspect", "dead"]
    assert cluster.metrics.view("n0")["n4"] == "dead"
