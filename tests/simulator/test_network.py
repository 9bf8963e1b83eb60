"""The virtual network on its own: links, delays, partitions, cuts and link overrides."""

from __future__ import annotations

import random
import statistics

import pytest

from simulator.network import DISTRIBUTIONS, Cut, Link, Network, NetworkError, Partition


def test_a_link_refuses_values_out_of_range_and_names_the_field() -> None:
    with pytest.raises(NetworkError, match=r"Link\.loss=1\.5 must be a probability"):
        Link(loss=1.5)
    with pytest.raises(NetworkError, match=r"Link\.latency=-1"):
        Link(latency=-1)
    with pytest.raises(NetworkError, match="choose one of exponential"):
        Link(distribution="gamma")


@pytest.mark.parametrize("shape", DISTRIBUTIONS)
def test_the_random_part_of_the_latency_has_mean_jitter(shape: str) -> None:
    link = Link(jitter=0.01, distribution=shape)
    rng = random.Random(1)
    draws = [link.random_delay(rng) for _ in range(20_000)]
    assert min(draws) >= 0.0
    assert statistics.fmean(draws) == pytest.approx(0.01, rel=0.05)


def test_delay_adds_latency_distance_and_transfer_time() -> None:
    network = Network(Link(), random.Random(1))
    link = Link(latency=0.01, jitter=0.0, distance=0.1, bandwidth=1000.0)
    assert network.delay(link, 0.5, 100) == pytest.approx(0.01 + 0.05 + 0.1)


def test_a_partition_cuts_between_groups_and_spares_unlisted_nodes() -> None:
    network = Network(Link(), random.Random(1))
    network.add_cut(Partition((("a", "b"), ("c",))))
    assert network.blocked("a", "c") and network.blocked("c", "b")
    assert not network.blocked("a", "b")
    assert not network.blocked("a", "x") and not network.blocked("x", "c")


def test_a_ring_lets_each_group_reach_only_its_neighbours() -> None:
    network = Network(Link(), random.Random(1))
    network.add_cut(Partition((("a",), ("b",), ("c",), ("d",)), ((0, 1), (1, 2), (2, 3), (3, 0))))
    assert not network.blocked("a", "b") and not network.blocked("b", "a")
    assert not network.blocked("a", "d")
    assert network.blocked("a", "c") and network.blocked("b", "d")


def test_a_one_way_cut_leaves_the_other_direction_open() -> None:
    network = Network(Link(), random.Random(1))
    rule = network.add_cut(Cut(("a",), ("b", "c")))
    assert network.blocked("a", "b") and not network.blocked("b", "a")
    network.remove_cut(rule)
    assert not network.has_cuts and not network.blocked("a", "b")


def test_repair_removes_every_cut() -> None:
    network = Network(Link(), random.Random(1))
    network.add_cut(Cut(("a",), ("b",)))
    network.add_cut(Partition((("a",), ("c",))))
    network.repair()
    assert not network.has_cuts and not network.blocked("a", "c")


def test_a_node_in_two_groups_is_refused() -> None:
    with pytest.raises(NetworkError, match="'a' is in two groups"):
        Network(Link(), random.Random(1)).add_cut(Partition((("a",), ("a", "b"))))


def test_the_newest_matching_link_rule_wins_and_can_be_removed() -> None:
    default = Link()
    network = Network(default, random.Random(1))
    lossy = Link(loss=0.5)
    slow = Link(latency=1.0)
    everywhere = network.add_link(lossy)
    around_b = network.add_link(slow, ["b"])
    assert network.link("a", "b") is slow and network.link("b", "c") is slow
    assert network.link("a", "c") is lossy
    network.remove_link(around_b)
    network.remove_link(everywhere)
    assert network.link("a", "b") is default and not network.has_link_rules


def test_a_link_rule_may_carry_only_a_nodes_ingress_or_egress() -> None:
    network = Network(Link(), random.Random(1))
    inbound, outbound = Link(loss=0.5), Link(latency=1.0)
    network.add_link(inbound, ["b"], direction="in")
    assert network.link("a", "b") is inbound and network.link("b", "a") is network.default
    network.add_link(outbound, ["b"], direction="out")
    assert network.link("b", "a") is outbound and network.link("a", "b") is inbound
    with pytest.raises(NetworkError, match="direction='up' is unknown"):
        network.add_link(inbound, ["b"], direction="up")
