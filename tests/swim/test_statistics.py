"""The engine's statistics snapshot moves as the protocol works: probes, acks, suspicions,
refutations and failures, and the members by state, in virtual time on the simulator."""

from __future__ import annotations

from simulator.cluster import Cluster
from swim.engine import Statistics


def _totals(cluster: Cluster, names: list[str]) -> dict[str, int]:
    """Each counter summed over the named members."""
    snapshots = [cluster.engine(name).statistics() for name in names]
    return {field: sum(getattr(s, field) for s in snapshots) for field in Statistics.__slots__}


def test_a_quiet_cluster_counts_probes_acks_and_traffic_but_no_suspicion() -> None:
    cluster = Cluster(4, seed=3)
    before = cluster.engine("n0").statistics()
    cluster.run_for(10.0)
    after = cluster.engine("n0").statistics()
    assert after.probes - before.probes >= 9  # one a second
    assert after.acks - before.acks >= 9
    assert after.packets_out > before.packets_out and after.bytes_out > before.bytes_out
    assert after.packets_in > before.packets_in and after.bytes_in > before.bytes_in
    assert (after.suspicions_raised, after.failures_declared, after.dropped_packets) == (0, 0, 0)
    assert (after.members_alive, after.members_suspect, after.members_dead) == (4, 0, 0)
    assert after.members == 4
    assert after.health_score == 0


def test_a_crashed_member_is_suspected_declared_failed_and_counted_dead() -> None:
    cluster = Cluster(5, seed=4)
    cluster.run_for(2.0)
    cluster.crash("n4")
    survivors = ["n0", "n1", "n2", "n3"]
    assert cluster.run_until(lambda c: c.view("n0")["n4"] == "dead", limit=60.0) is not None
    cluster.run_for(5.0)
    totals = _totals(cluster, survivors)
    assert totals["suspicions_raised"] >= 1
    assert totals["failures_declared"] >= 1
    assert totals["indirect_probes"] >= 1  # the prober asked others before suspecting
    for name in survivors:
        stats = cluster.engine(name).statistics()
        assert (stats.members_alive, stats.members_dead, stats.members_suspect) == (4, 1, 0)


def test_a_paused_member_refutes_its_suspicion_and_counts_it() -> None:
    cluster = Cluster(5, seed=5)
    cluster.run_for(2.0)
    cluster.pause("n2", 3.0)
    assert (
        cluster.run_until(
            lambda c: cluster.engine("n2").statistics().suspicions_refuted > 0, limit=30.0
        )
        is not None
    )
    cluster.run_for(10.0)
    assert cluster.engine("n2").statistics().members_alive == 5
    assert _totals(cluster, ["n0", "n1", "n3", "n4"])["suspicions_raised"] >= 1
