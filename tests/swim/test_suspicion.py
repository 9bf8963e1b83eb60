"""Lifeguard's dynamic suspicion, timed in virtual seconds against memberlist's formulas."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from swim import wire
from swim.config import Config
from swim.events import MemberAlive, MemberFailed, MemberSuspect
from swim.suspicion import Suspicion, suspicion_bounds

from .conftest import alive, feed, make_engine, sent_messages


def failed_at(engine_events: Sequence[object], name: str) -> bool:
    return any(isinstance(e, MemberFailed) and e.member.name == name for e in engine_events)


def time_to_failure(peers: int, confirmations: int, config: Config, step: float = 0.001) -> float:
    """Seconds from a suspicion about p1 (raised by p0) to p1 being declared failed."""
    engine = make_engine(config, peers=peers - 1)  # peers - 1 others + us = n members
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p1", from_node="p0"))
    for i in range(confirmations):
        feed(engine, 0.0, wire.Suspect(incarnation=1, node="p1", from_node=f"p{i + 2}"))
    events = engine.take_events()
    assert any(isinstance(e, MemberSuspect) for e in events)
    now = 0.0
    while engine.next_deadline() is not None:
        now = engine.next_deadline() or now
        engine.tick(now)
        if failed_at(engine.take_events(), "p1"):
            return now
        engine.take_datagrams()
        engine.take_stream_requests()
    raise AssertionError("never failed")


@pytest.mark.parametrize(
    ("n", "confirmations", "expected"),
    [
        (100, 0, 48.0),  # the longest timeout: 6 x 8 s
        (100, 1, 8.0 * 6 - (0.6309297535714575) * 40.0),  # ln 2 / ln 3 of the way down
        (100, 2, 8.0),  # k = 2 confirmations reach the shortest timeout
        (10, 0, 24.0),
        (10, 1, 11.381),  # memberlist's 11.4 s, truncated to whole milliseconds as Go does
        (10, 2, 4.0),
        (1000, 0, 72.0),
    ],
)
def test_lan_suspicion_timeouts(n: int, confirmations: int, expected: float) -> None:
    config = Config.lan(compression=False, push_pull_interval=0.0, reconnect_interval=0.0)
    assert time_to_failure(n, confirmations, config) == pytest.approx(expected, abs=0.002)


def test_small_clusters_use_the_shortest_timeout_at_once() -> None:
    # with n - 2 < k, memberlist sets k = 0 and starts the timer at the minimum (4 s on LAN)
    config = Config.lan(compression=False, push_pull_interval=0.0, reconnect_interval=0.0)
    assert time_to_failure(3, 0, config) == pytest.approx(4.0)


def test_without_lifeguard_every_suspicion_lasts_the_shortest_timeout() -> None:
    config = Config.lan(
        compression=False, push_pull_interval=0.0, reconnect_interval=0.0, lifeguard=False
    )
    assert time_to_failure(100, 0, config) == pytest.approx(8.0)


def test_bounds_use_log10_of_n_as_memberlist_does() -> None:
    assert suspicion_bounds(4, 6, 10_000, 1.0) == (16.0, 96.0)
    assert suspicion_bounds(4, 6, 1, 1.0) == (4.0, 24.0)


def test_confirmations_count_once_per_member_and_never_the_suspector() -> None:
    s = Suspicion(0.0, 1, suspector="a", k=2, shortest=4.0, longest=24.0)
    assert not s.confirm("a")
    assert s.confirm("b")
    assert not s.confirm("b")
    assert s.confirm("c")
    assert not s.confirm("d")  # beyond k
    assert s.deadline == 4.0


def test_a_new_confirmation_is_regossiped_and_a_duplicate_is_not() -> None:
    engine = make_engine(peers=20)
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p1", from_node="p0"))
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p1", from_node="p5"))
    queued_before = engine.queued_broadcasts
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p1", from_node="p5"))
    assert engine.queued_broadcasts == queued_before
    # what goes out is the confirmation from p5 (it replaced p0's in the queue)
    engine.tick(1.0)
    gossiped = [m for _, m in sent_messages(engine, wire.Suspect) if m.node == "p1"]
    assert gossiped and all(m.from_node == "p5" for m in gossiped)


def test_refutation_ends_the_suspicion() -> None:
    engine = make_engine(peers=20)
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p1", from_node="p0"))
    feed(engine, 1.0, alive("p1", 1, incarnation=2))
    assert any(isinstance(e, MemberAlive) for e in engine.take_events())
    engine.tick(100.0)
    assert not failed_at(engine.take_events(), "p1")
