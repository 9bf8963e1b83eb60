"""Serf-enabled clusters in the simulator: tags, user events and queries, in virtual time."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

from simulator import Cluster, SimulationError, faults
from simulator.scenarios import run
from swim.serf.layer import AGENT_COALESCE_PERIOD, AGENT_QUIESCENT_PERIOD


def serf_cluster(nodes: int = 12, seed: int = 1, **options: object) -> Cluster:
    return Cluster(nodes, seed=seed, serf=True, **options)  # type: ignore[arg-type]


def test_a_user_event_reaches_every_member_once() -> None:
    cluster = serf_cluster()
    cluster.run_until(5.0)
    cluster.user_event("n3", "deploy", b"v1")
    cluster.run_for(10.0)
    (report,) = cluster.results().user_events
    assert (report.name, report.sender, report.members) == ("deploy", "n3", 12)
    assert len(report.delays) == 12 and report.duplicates == 0
    assert report.delays[-1] < 2.0  # gossip reaches a dozen members in a few rounds


def test_an_event_sent_during_a_split_reaches_the_other_side_once_it_heals() -> None:
    cluster = serf_cluster()
    cluster.schedule(faults.Split.halves(5.0, cluster.names(), 20.0))
    cluster.at(10.0, lambda: cluster.user_event("n0", "during-split"))
    cluster.run_until(15.0)
    (during,) = cluster.results().user_events
    assert len(during.delays) == 6  # the sender's half only
    cluster.run_until(120.0)  # the halves' push-pulls carry the recent events across
    (after,) = cluster.results().user_events
    assert len(after.delays) == 12 and after.duplicates == 0


def test_a_burst_of_coalescable_events_delivers_only_the_newest() -> None:
    cluster = serf_cluster(
        coalesce_period=AGENT_COALESCE_PERIOD, quiescent_period=AGENT_QUIESCENT_PERIOD
    )
    cluster.run_until(5.0)
    for version in range(4):
        send = functools.partial(cluster.user_event, "n1", "x", bytes([version]))
        cluster.at(5.0 + 0.1 * version, send)
    cluster.run_until(20.0)
    reports = sorted(cluster.results().user_events, key=lambda r: r.ltime)
    assert [len(r.delays) for r in reports] == [0, 0, 0, 12]
    assert all(r.coalesce for r in reports)


def test_every_member_answers_a_query_and_a_filter_narrows_who() -> None:
    cluster = serf_cluster()
    cluster.run_until(5.0)
    cluster.query("n2", "who", timeout=5.0)
    cluster.query("n2", "some", nodes=["n4", "n5"], request_ack=True, timeout=5.0)
    cluster.run_for(10.0)
    everyone, some = cluster.results().queries
    assert everyone.answers == 12 and everyone.done_at is not None
    assert (some.acks, some.answers) == (2, 2)


def test_new_tags_reach_every_members_serf_view() -> None:
    cluster = serf_cluster()
    cluster.run_until(5.0)
    cluster.set_tags("n7", {"role": "db"})
    cluster.run_for(5.0)
    for name in cluster.names():
        tags = {m.name: m.tags for m in cluster.serf(name).members()}
        assert tags["n7"] == {"role": "db"}, name


def test_events_keep_reaching_members_under_churn() -> None:
    cluster = serf_cluster(16, seed=4)
    cluster.schedule(faults.Churn(5.0, 60.0, crash_rate=0.1, join_rate=0.05, restart_after=10.0))
    for index, at in enumerate(range(10, 60, 5)):
        cluster.at(float(at), functools.partial(_send_from_a_running_member, cluster, index))
    cluster.run_until(100.0)
    reports = cluster.results().user_events
    assert len(reports) == 10
    assert all(r.duplicates == 0 for r in reports)
    assert min(r.reach for r in reports) >= 0.75  # members that crashed meanwhile miss some


def _send_from_a_running_member(cluster: Cluster, index: int) -> None:
    running = cluster.running()
    cluster.user_event(running[index % len(running)], f"e{index}")


def test_a_cluster_without_serf_says_so() -> None:
    cluster = Cluster(3, seed=1)
    with pytest.raises(SimulationError, match="runs no Serf layer; make the cluster serf=True"):
        cluster.user_event("n0", "x")


def test_the_serf_scenario_is_deterministic_across_processes() -> None:
    _, results = run("serf", nodes=16, seed=3, duration=60.0)
    code = (
        "from simulator.scenarios import run;"
        "print(run('serf', nodes=16, seed=3, duration=60.0)[1].trace_hash)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert other.stdout.strip() == results.trace_hash
    assert results.user_events and results.queries
