"""The cluster driving real engines: delivery, streams, faults, and views kept in step."""

from __future__ import annotations

import random

import pytest

from simulator import cluster as cluster_module
from simulator.cluster import Cluster, SimulationError
from simulator.metrics import ALIVE


def assert_event_views_match_engines(cluster: Cluster) -> None:
    """The views rebuilt from events agree with every running engine's own member list."""
    for name in cluster.running():
        engine_view = cluster.view(name)
        event_view = cluster.metrics.view(name)
        assert {m: event_view.get(m) for m in engine_view} == engine_view, name


def reliable(cluster: Cluster, source: str, target: str, ids: list[int]) -> None:
    """Send a reliable message and note its stream id."""
    cluster.command(source, lambda engine, now: ids.append(engine.send_reliable(target, b"x", now)))


def stream_outcomes(cluster: Cluster, client: str, ids: list[int]) -> list[str]:
    """The errors ("" for none) of ``client``'s streams with these ids, in order."""
    wanted = [str(i) for i in ids]
    return [
        payload.decode()
        for _, kind, source, stream, payload in cluster.trace.records
        if kind == "stream-done" and source == client and stream in wanted
    ]


def test_a_converged_start_gives_every_node_every_member() -> None:
    cluster = Cluster(6, seed=1)
    everyone = dict.fromkeys(cluster.names(), ALIVE)
    for name in cluster.names():
        assert cluster.view(name) == everyone
    assert cluster.agreed()
    cluster.run_until(20.0)
    assert cluster.agreed()
    assert_event_views_match_engines(cluster)


def test_a_join_start_converges_through_the_first_node() -> None:
    cluster = Cluster(6, seed=2, start="join")
    assert not cluster.agreed()
    reached = cluster.run_until(lambda c: c.agreed(), limit=30.0)
    assert reached is not None and reached < 5.0
    assert_event_views_match_engines(cluster)


def test_run_until_a_condition_returns_none_when_the_limit_passes() -> None:
    cluster = Cluster(3, seed=1)
    assert cluster.run_until(lambda c: False, limit=2.0) is None
    assert cluster.now == 2.0
    with pytest.raises(SimulationError, match="needs limit="):
        cluster.run_until(lambda c: True)


def test_views_from_events_follow_the_engines_through_crash_restart_and_leave() -> None:
    cluster = Cluster(8, seed=3)
    cluster.at(5.0, lambda: cluster.crash("n7"))
    cluster.at(25.0, lambda: cluster.restart("n7"))
    cluster.at(30.0, lambda: cluster.leave("n6"))
    cluster.at(31.0, lambda: cluster.add_node("late"))
    cluster.run_until(90.0)
    assert "n6" not in cluster.running() and "late" in cluster.running()
    assert cluster.agreed()
    assert_event_views_match_engines(cluster)


def test_a_node_that_leaves_stops_once_its_leave_went_out() -> None:
    cluster = Cluster(5, seed=4)
    cluster.run_until(2.0)
    cluster.leave("n4")
    assert cluster.nodes["n4"].running  # still sending its leave
    cluster.run_for(5.0)
    assert not cluster.nodes["n4"].running
    assert all(cluster.view(name)["n4"] == "left" for name in cluster.running())


def test_a_restart_at_a_new_address_takes_its_name_back() -> None:
    cluster = Cluster(6, seed=5)
    old = cluster.nodes["n5"].address
    cluster.at(3.0, lambda: cluster.crash("n5"))
    cluster.at(40.0, lambda: cluster.restart("n5", new_address=True))
    cluster.run_until(100.0)
    new = cluster.nodes["n5"].address
    assert new != old
    assert cluster.agreed()
    for name in cluster.running():
        assert cluster.engine(name).member("n5").address == new  # type: ignore[union-attr]


def test_total_loss_cuts_a_node_off_and_is_counted() -> None:
    cluster = Cluster(5, seed=6)
    cluster.set_link(["n4"], loss=1.0)
    cluster.run_until(20.0)
    assert cluster.network_counts["lost"] > 0
    assert all(cluster.view(name)["n4"] == "dead" for name in ("n0", "n1", "n2", "n3"))


def test_duplicated_datagrams_do_no_harm() -> None:
    cluster = Cluster(5, seed=7)
    cluster.set_link(duplicate=1.0)
    cluster.run_until(20.0)
    assert cluster.network_counts["duplicated"] > 0
    assert cluster.agreed() and not cluster.metrics.false_suspicions


def test_datagrams_over_the_udp_limit_never_arrive() -> None:
    cluster = Cluster(3, seed=8)
    noise = random.Random(1).randbytes(70_000)  # incompressible
    cluster.command("n0", lambda engine, now: engine.send("n1", noise, now))
    cluster.run_for(1.0)
    assert cluster.network_counts["oversized"] == 1


def test_a_reliable_message_arrives_over_a_stream() -> None:
    cluster = Cluster(3, seed=9, keep_trace=True)
    ids: list[int] = []
    reliable(cluster, "n0", "n1", ids)
    cluster.run_for(1.0)
    assert stream_outcomes(cluster, "n0", ids) == [""]
    received = [r for r in cluster.trace.records if r[1] == "event" and r[2] == "n1"]
    assert any(b"UserMessage(payload=b'x'" in payload for *_, payload in received)


def test_a_stream_to_a_stopped_process_is_refused_and_a_cut_one_times_out() -> None:
    cluster = Cluster(4, seed=10, keep_trace=True)
    cluster.crash("n1")
    ids: list[int] = []
    reliable(cluster, "n0", "n1", ids)
    cluster.run_for(0.5)
    assert stream_outcomes(cluster, "n0", ids) == ["connection refused"]
    cluster.partition([["n0"], ["n2"]])
    reliable(cluster, "n0", "n2", ids)
    cluster.run_for(cluster.config.tcp_timeout - 1.0)
    assert stream_outcomes(cluster, "n0", ids) == ["connection refused"]
    cluster.run_for(1.5)
    assert stream_outcomes(cluster, "n0", ids) == ["connection refused", "timed out"]


def test_a_paused_node_handles_nothing_then_catches_up() -> None:
    cluster = Cluster(5, seed=11)
    cluster.run_until(5.0)
    node = cluster.nodes["n4"]
    cluster.pause("n4", 3.0)
    before = node.datagrams_in
    cluster.run_for(2.9)
    assert node.datagrams_in == before and node.backlog
    cluster.run_for(0.2)
    assert node.datagrams_in > before and not node.backlog
    cluster.run_for(20.0)
    assert cluster.agreed()


def test_a_paused_node_drops_datagrams_past_its_socket_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_module, "SOCKET_BUFFER_BYTES", 200)
    cluster = Cluster(6, seed=12)
    cluster.pause("n5", 10.0)
    cluster.run_until(10.0)
    assert cluster.network_counts["overflow"] > 0
    assert cluster.nodes["n5"].backlog_bytes <= 200


def test_a_slow_node_gets_suspected_and_refutes() -> None:
    cluster = Cluster(6, seed=13)
    cluster.slow("n5", 2.0, duration=20.0)
    cluster.run_until(60.0)
    suspected = [a for a in cluster.metrics.false_suspicions if a.member == "n5"]
    assert suspected
    assert cluster.agreed()


def test_an_encrypted_cluster_works_and_repeats_itself() -> None:
    hashes = []
    for _ in range(2):
        cluster = Cluster(5, seed=14, encrypt=True)
        cluster.at(2.0, lambda c=cluster: c.crash("n4"))  # type: ignore[misc]
        cluster.run_until(30.0)
        assert cluster.view("n0")["n4"] == "dead"
        hashes.append(cluster.trace.hash)
    plain = Cluster(5, seed=14)
    plain.run_until(30.0)
    assert hashes[0] == hashes[1] != plain.trace.hash


def test_mistakes_name_the_cause() -> None:
    cluster = Cluster(2, seed=1)
    with pytest.raises(SimulationError, match="no node named 'x'; known: n0, n1"):
        cluster.crash("x")
    with pytest.raises(SimulationError, match="'n0' exists"):
        cluster.add_node("n0")
    cluster.crash("n1")
    with pytest.raises(SimulationError, match="'n1' is not running"):
        cluster.command("n1", lambda engine, now: None)
    with pytest.raises(SimulationError, match="profile='moon' is unknown"):
        Cluster(2, profile="moon", config=cluster.config)


def test_an_isolated_node_rejoins_through_its_seeds_as_the_runtime_does() -> None:
    cluster = Cluster(5, seed=15, keep_trace=True)
    cluster.partition([["n4"], ["n0", "n1", "n2", "n3"]], duration=40.0)
    cluster.run_until(39.0)
    assert cluster.engine("n4").isolated
    attempts = [
        r
        for r in cluster.trace.records
        if r[1] == "event" and r[2] == "n4" and r[3] == "JoinCompleted"
    ]
    assert len(attempts) >= 2  # one at isolation, then after 5 s, 10 s, ...
    cluster.run_until(70.0)
    assert not cluster.engine("n4").isolated and cluster.agreed()


def test_a_node_carries_its_metadata_from_its_start_and_its_restart() -> None:
    cluster = Cluster(3, seed=1)
    cluster.add_node("svc", meta=b"first")
    cluster.run_until(5.0)
    member = cluster.engine("n0").member("svc")
    assert member is not None and member.meta == b"first"
    cluster.restart("svc", meta=b"second")
    cluster.run_until(10.0)
    member = cluster.engine("n0").member("svc")
    assert member is not None and member.meta == b"second"


def test_running_and_reachable_follow_pauses_cuts_crashes_and_leaves() -> None:
    cluster = Cluster(3, seed=1)
    assert cluster.is_running("n1") and cluster.reachable("n0", "n1")
    cluster.pause("n1", 1.0)
    assert cluster.is_running("n1") and not cluster.reachable("n0", "n1")
    cluster.run_until(2.0)
    assert cluster.reachable("n0", "n1")
    cluster.cut(["n1"], ["n0"], duration=1.0)  # one way is enough to break a connection
    assert not cluster.reachable("n0", "n1") and cluster.reachable("n2", "n1")
    cluster.run_until(4.0)
    assert cluster.reachable("n0", "n1")
    cluster.crash("n1")
    assert not cluster.is_running("n1") and not cluster.reachable("n0", "n1")
    cluster.leave("n2")
    assert cluster.is_running("n2")  # until its leave has gone out
    cluster.run_until(10.0)
    assert not cluster.is_running("n2")
