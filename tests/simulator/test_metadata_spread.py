"""A tag change reaches every live member within a few probe intervals, under loss too (issue
15: in 3 of 12 real five-member runs it took 15 to 27 s, until a push-pull; here, before the
sweep, 29 of 100 runs took over 5 s even without loss)."""

from __future__ import annotations

import pytest

from simulator.cluster import Cluster
from simulator.network import PROFILE_LINKS

RUNS = 100
WITHIN = 3.0
"""Three probe intervals of the local profile."""


def spread_time(seed: int, loss: float) -> float | None:
    cluster = Cluster(
        5, seed=seed, profile="local", link=PROFILE_LINKS["local"].replace(loss=loss), serf=True
    )
    cluster.run_until(10.0)
    changed = cluster.names()[seed % 5]
    cluster.set_tags(changed, {"service": "api-v2"})
    incarnation = cluster.engine(changed).local_member.incarnation
    start = cluster.now

    def everyone_has_it(c: Cluster) -> bool:
        for observer in c.running():
            member = c.engine(observer).member(changed)
            if member is None or member.incarnation < incarnation:
                return False
        return True

    reached = cluster.run_until(everyone_has_it, limit=start + 60.0, poll=0.05)
    return None if reached is None else reached - start


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_a_tag_change_reaches_every_member_within_three_probe_intervals_in_99_of_100_runs(
    loss: float,
) -> None:
    times = [spread_time(seed, loss) for seed in range(RUNS)]
    late = [t for t in times if t is None or t > WITHIN]
    assert len(late) <= RUNS // 100, late
