"""Serf's network coordinates in the simulator: on the WAN link model, where each pair of members
has its own latency (a latency matrix from their positions), minutes of simulated probing bring
the estimates close to the true round trips."""

from __future__ import annotations

import pytest

from simulator.cluster import Cluster
from simulator.metrics import CoordinateReport
from simulator.report import summary
from simulator.scenarios import run


def report(cluster: Cluster) -> CoordinateReport:
    coordinates = cluster.results().coordinates
    assert coordinates is not None
    return coordinates


def test_coordinates_converge_on_the_latency_matrix() -> None:
    cluster = Cluster(16, seed=1, profile="wan", serf=True)
    cluster.run_until(60.0)
    early = report(cluster)
    cluster.run_until(300.0)
    late = report(cluster)
    assert late.pairs == 16 * 15  # every member probed every other by now
    # RTTs here range over tens to a couple of hundred milliseconds
    assert 0.05 < late.median_rtt < 0.3
    assert late.median_error < early.median_error
    assert late.median_relative_error < 0.10
    assert late.median_error < 0.010 and late.p90_error < 0.030


def test_estimates_are_what_serf_rtt_would_print_at_each_member() -> None:
    cluster = Cluster(4, seed=2, profile="lan", serf=True)
    cluster.run_until(60.0)
    samples = cluster.coordinate_samples()
    assert len(samples) == 4 * 3
    for estimated, true in samples:
        assert true == pytest.approx(2 * (0.0005 + 0.0001))  # the LAN link, both ways
        assert estimated == pytest.approx(true, rel=0.5)


def test_a_cluster_without_serf_layers_reports_no_coordinates() -> None:
    cluster = Cluster(4, seed=3)
    cluster.run_until(10.0)
    assert cluster.results().coordinates is None


def test_the_coordinates_scenario_reports_the_error() -> None:
    _, results = run("coordinates", nodes=8, seed=4, duration=120.0, profile="wan")
    assert results.coordinates is not None and results.coordinates.pairs > 0
    assert "network coordinates: median error" in summary(results, 1.0)
    assert results.to_dict()["coordinates"]["pairs"] == results.coordinates.pairs
