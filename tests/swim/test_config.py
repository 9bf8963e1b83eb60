"""Config: memberlist's profiles, and errors that name the field and the valid range."""

from __future__ import annotations

import pytest

from swim.config import Config, ConfigError


def test_lan_profile_holds_memberlists_defaults() -> None:
    c = Config.lan()
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks) == (1.0, 0.5, 3)
    assert (c.retransmit_mult, c.suspicion_mult, c.suspicion_max_timeout_mult) == (4, 4, 6)
    assert (c.push_pull_interval, c.gossip_interval, c.gossip_nodes) == (30.0, 0.2, 3)
    assert (c.gossip_to_the_dead_time, c.tcp_timeout, c.awareness_max_multiplier) == (30.0, 10.0, 8)
    assert (c.udp_buffer_size, c.meta_max_size) == (1400, 512)


def test_wan_and_local_profiles() -> None:
    w = Config.wan()
    assert (w.probe_interval, w.probe_timeout, w.suspicion_mult, w.gossip_nodes) == (5.0, 3.0, 6, 4)
    assert (w.gossip_interval, w.push_pull_interval, w.tcp_timeout) == (0.5, 60.0, 30.0)
    lo = Config.local()
    assert (lo.probe_timeout, lo.indirect_checks, lo.retransmit_mult, lo.suspicion_mult) == (
        0.2,
        1,
        2,
        3,
    )
    assert (lo.gossip_interval, lo.push_pull_interval, lo.gossip_to_the_dead_time) == (
        0.1,
        15.0,
        15.0,
    )
    assert Config.profile("wan") == w


def test_vsn_advertises_what_a_serf_agent_does() -> None:
    assert Config.lan().vsn == bytes((1, 5, 2, 2, 5, 5))


def test_replace_validates_and_leaves_the_original_alone() -> None:
    base = Config.lan()
    faster = base.replace(probe_interval=0.5, probe_timeout=0.25)
    assert faster.probe_interval == 0.5 and base.probe_interval == 1.0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"probe_interval": -1.0}, ["probe_interval=-1.0", "0.001", "3600"]),
        ({"indirect_checks": 100}, ["indirect_checks=100", "0", "32"]),
        ({"gossip_nodes": 1.5}, ["gossip_nodes=1.5", "integer"]),
        ({"lifeguard": "yes"}, ["lifeguard", "True or False"]),
        ({"probe_timeout": 2.0}, ["probe_timeout=2.0", "probe_interval=1.0"]),
        ({"meta_max_size": 1390}, ["meta_max_size=1390", "udp_buffer_size"]),
        ({"suspicion_mult": float("nan")}, ["suspicion_mult"]),
        ({"push_pull_interval": float("inf")}, ["push_pull_interval=inf"]),
        ({"no_such_field": 1}, ["no_such_field"]),
    ],
)
def test_bad_values_name_the_field_the_value_and_the_range(
    changes: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as error:
        Config.lan().replace(**changes)
    for word in words:
        assert word in str(error.value)


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="lan, wan or local"):
        Config.profile("moon")
