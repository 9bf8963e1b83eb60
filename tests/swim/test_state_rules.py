"""State rules: incarnations, refutation, staleness, dead and left, reaping, names, metadata."""

from __future__ import annotations

import logging
import random

import pytest

from swim import wire
from swim.config import Config
from swim.engine import Engine, MetadataTooLarge
from swim.events import (
    Isolated,
    LeaveCompleted,
    MemberConflict,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    Reconnected,
)
from swim.members import MemberState

from .conftest import ME, STRANGER, address_of, alive, feed, make_engine, sent_messages


def queued_alive_about_me(engine: Engine) -> wire.Alive:
    engine.tick(engine.next_deadline() or 0.0)
    for _ in range(50):
        for _, message in sent_messages(engine, wire.Alive):
            assert isinstance(message, wire.Alive)
            if message.node == "me":
                return message
        engine.tick(engine.next_deadline() or 0.0)
    raise AssertionError("no alive about us was sent")


@pytest.mark.parametrize(("ours", "accused", "expected"), [(1, 1, 2), (1, 5, 6), (9, 9, 10)])
def test_refutation_takes_max_of_ours_plus_one_and_accused_plus_one(
    ours: int, accused: int, expected: int
) -> None:
    engine = make_engine(peers=3)
    engine._table.me.incarnation = ours
    feed(engine, 0.0, wire.Suspect(incarnation=accused, node="me", from_node="p0"))
    assert engine.local_member.incarnation == expected
    assert engine.local_member.state is MemberState.ALIVE
    assert queued_alive_about_me(engine).incarnation == expected
    assert engine.health_score == 1  # a refutation costs a point of health
    assert engine.statistics().suspicions_refuted == 1


def test_stale_accusations_are_not_refuted_but_the_accuser_is_told_our_incarnation() -> None:
    # The accuser missed our refutation (say, during a partition); memberlist never refutes an
    # old accusation again, so without a word from us its suspicion runs out into a failure.
    engine = make_engine(peers=3)
    engine._table.me.incarnation = 9
    queued = engine.queued_broadcasts
    feed(engine, 0.0, wire.Suspect(incarnation=3, node="me", from_node="p0"), source=STRANGER)
    feed(engine, 0.0, wire.Dead(incarnation=4, node="me", from_node="p1"), source=STRANGER)
    assert engine.local_member.incarnation == 9
    assert engine.statistics().suspicions_refuted == 0
    told = [(dst, m.incarnation) for dst, m in sent_messages(engine, wire.Alive) if m.node == "me"]
    assert told == [(address_of(0), 9), (address_of(1), 9)]
    assert engine.queued_broadcasts == queued  # told directly, not gossiped to everyone


def test_the_member_that_relays_a_stale_accusation_is_told_too() -> None:
    engine = make_engine(peers=3)
    engine._table.me.incarnation = 9
    feed(engine, 0.0, wire.Dead(incarnation=4, node="me", from_node="p0"), source=address_of(2))
    told = sorted(dst for dst, m in sent_messages(engine, wire.Alive) if m.node == "me")
    assert told == [address_of(0), address_of(2)]


def test_stale_accusations_from_strangers_or_while_leaving_get_no_answer() -> None:
    engine = make_engine(peers=3)
    engine._table.me.incarnation = 9
    feed(engine, 0.0, wire.Suspect(incarnation=3, node="me", from_node="stranger"), source=STRANGER)
    assert sent_messages(engine, wire.Alive) == []
    engine.leave(0.0)
    engine.take_datagrams()
    feed(engine, 0.0, wire.Suspect(incarnation=3, node="me", from_node="p0"))
    assert sent_messages(engine, wire.Alive) == []


def test_a_forged_alive_about_us_is_refuted_above_our_incarnation() -> None:
    engine = make_engine(peers=3)
    engine._table.me.incarnation = 4
    forged = alive("me", 0, incarnation=4, meta=b"forged")
    forged.addr, forged.port = bytes((10, 0, 0, 1)), 7946
    feed(engine, 0.0, forged)
    assert engine.local_member.incarnation == 5  # max(ours + 1, accused + 1)
    assert queued_alive_about_me(engine).meta == b""


def test_dead_about_us_is_refuted() -> None:
    engine = make_engine(peers=3)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="me", from_node="p0"))
    assert engine.local_member.state is MemberState.ALIVE
    assert engine.local_member.incarnation == 2


def test_refutations_are_logged_as_memberlist_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    # benchmarks/loss.py counts refutations in both kinds of agent's logs by these lines.
    engine = make_engine(peers=3)
    with caplog.at_level(logging.INFO, logger="swim.engine"):
        feed(engine, 0.0, wire.Suspect(incarnation=1, node="me", from_node="p0"))
        feed(engine, 0.0, wire.Dead(incarnation=2, node="me", from_node="p1"))
    assert [r.getMessage() for r in caplog.records] == [
        "refuting a suspect message (from: p0)",
        "refuting a dead message (from: p1)",
    ]


def test_stale_messages_are_ignored() -> None:
    engine = make_engine(peers=3)
    feed(engine, 0.0, alive("p0", 0, incarnation=5))
    feed(engine, 0.0, wire.Suspect(incarnation=4, node="p0", from_node="p1"))
    feed(engine, 0.0, wire.Dead(incarnation=4, node="p0", from_node="p1"))
    feed(engine, 0.0, alive("p0", 0, incarnation=5, meta=b"changed"))
    member = engine.member("p0")
    assert member is not None
    assert (member.state, member.incarnation, member.meta) == (MemberState.ALIVE, 5, b"")


def test_newer_alive_updates_metadata_with_an_event() -> None:
    engine = make_engine(peers=3)
    feed(engine, 0.0, alive("p0", 0, incarnation=2, meta=b"v2"))
    (event,) = engine.take_events()
    assert isinstance(event, MemberUpdated)
    assert (event.old_meta, event.member.meta) == (b"", b"v2")


def test_dead_and_left_are_distinguished_by_the_sender() -> None:
    engine = make_engine(peers=3)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p0", from_node="p1"))
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p1", from_node="p1"))
    events = engine.take_events()
    assert [type(e) for e in events] == [MemberFailed, MemberLeft]
    assert engine.member("p0").state is MemberState.DEAD  # type: ignore[union-attr]
    assert engine.member("p1").state is MemberState.LEFT  # type: ignore[union-attr]


def test_dead_members_get_gossip_for_a_while_then_are_reaped() -> None:
    config = Config.lan(compression=False, push_pull_interval=0.0, reconnect_interval=0.0)
    engine = make_engine(config, peers=3)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p0", from_node="p1"))
    dead_address = engine.member("p0").address  # type: ignore[union-attr]
    engine.broadcast(b"news", 0.0)
    targets = set()
    now = 0.0
    while now < 20.0:
        now = engine.next_deadline() or now
        engine.tick(now)
        targets |= {dst for dst, _ in engine.take_datagrams()}
        engine.broadcast(b"more news", now)
        engine.take_stream_requests()
    assert dead_address in targets  # within GossipToTheDeadTime
    while now < 70.0:
        now = engine.next_deadline() or now
        engine.tick(now)
        engine.take_datagrams()
        engine.take_stream_requests()
    assert engine.member("p0") is None  # reaped at a probe round after 30 s


def test_left_members_are_reaped_too() -> None:
    engine = make_engine(peers=3)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p0", from_node="p0"))
    now = 0.0
    while now < 80.0:
        now = engine.next_deadline() or now
        engine.tick(now)
        engine.take_datagrams()
        engine.take_stream_requests()
    assert engine.member("p0") is None


def test_metadata_change_bumps_our_incarnation_and_is_announced() -> None:
    engine = make_engine(peers=3)
    engine.update_meta(b"role=web", 0.0)
    assert engine.local_member.incarnation == 2
    message = queued_alive_about_me(engine)
    assert (message.meta, message.incarnation) == (b"role=web", 2)


def test_metadata_over_the_limit_is_a_clear_error() -> None:
    engine = make_engine(peers=1)
    with pytest.raises(MetadataTooLarge, match="513 bytes, over the limit of 512"):
        engine.update_meta(bytes(513), 0.0)
    bigger = Config.lan(meta_max_size=1024)
    Engine("big", ME, bigger, random.Random(1), meta=bytes(1000))
    with pytest.raises(MetadataTooLarge):
        Engine("big", ME, Config.lan(), random.Random(1), meta=bytes(1000))


def test_a_live_name_at_a_new_address_is_a_conflict_reported_once() -> None:
    engine = make_engine(peers=3)
    impostor = alive("p0", 40, incarnation=9)
    feed(engine, 0.0, impostor)
    feed(engine, 0.0, impostor)
    events = engine.take_events()
    assert len(events) == 1 and isinstance(events[0], MemberConflict)
    assert events[0].existing.name == "p0" and events[0].other == ("10.0.0.42", 7946)
    assert engine.member("p0").address == ("10.0.0.2", 7946)  # type: ignore[union-attr]


def test_a_restarted_node_takes_its_name_over_once_the_old_entry_is_dead() -> None:
    engine = make_engine(peers=3)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p0", from_node="p1"))
    engine.take_events()
    feed(engine, 1.0, alive("p0", 40, incarnation=1))  # new address, same incarnation
    (event,) = engine.take_events()
    assert isinstance(event, MemberJoined)
    assert event.member.address == ("10.0.0.42", 7946)


def test_reclaim_time_delays_the_takeover() -> None:
    config = Config.lan(compression=False, dead_node_reclaim_time=10.0)
    engine = make_engine(config, peers=3)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p0", from_node="p1"))
    engine.take_events()
    feed(engine, 5.0, alive("p0", 40, incarnation=2))
    assert isinstance(engine.take_events()[0], MemberConflict)
    feed(engine, 10.0, alive("p0", 40, incarnation=2))
    assert isinstance(engine.take_events()[0], MemberJoined)


def test_a_left_name_is_free_at_once() -> None:
    config = Config.lan(compression=False, dead_node_reclaim_time=1000.0)
    engine = make_engine(config, peers=3)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p0", from_node="p0"))
    engine.take_events()
    feed(engine, 0.1, alive("p0", 40, incarnation=2))
    assert isinstance(engine.take_events()[0], MemberJoined)


def test_alive_with_broken_versions_is_dropped() -> None:
    engine = make_engine(peers=1)
    bad = alive("odd", 5)
    bad.vsn = bytes((3, 1, 2, 2, 5, 5))  # pmin > pmax
    feed(engine, 0.0, bad)
    assert engine.member("odd") is None


def test_leave_gives_up_waiting_after_the_leave_timeout() -> None:
    # nothing can carry the announcement: no gossip rounds, no probe in the next 100 s
    config = Config.lan(compression=False, gossip_nodes=0, probe_interval=100.0, probe_timeout=1.0)
    engine = Engine("me", ME, config, random.Random(1), now=50.0)
    feed(engine, 50.0, alive("p0", 0))
    engine.take_events()
    engine.leave(50.0)
    assert isinstance(engine.take_events()[0], MemberLeft)
    engine.tick(54.9)
    assert engine.take_events() == []
    engine.tick(55.0)
    assert engine.take_events() == [LeaveCompleted(timed_out=True)]


def test_leave_alone_completes_at_once() -> None:
    engine = make_engine(peers=0)
    engine.leave(0.0)
    assert engine.take_events()[-1] == LeaveCompleted(timed_out=False)


def run_silently(engine: Engine, until: float) -> list[object]:
    events: list[object] = []
    now = 0.0
    while (deadline := engine.next_deadline()) is not None and deadline <= until:
        now = deadline
        engine.tick(now)
        engine.take_datagrams()
        engine.take_stream_requests()
        events += engine.take_events()
    return events


def test_silence_from_every_peer_reports_isolation_and_contact_ends_it() -> None:
    engine = make_engine(peers=3)
    events = run_silently(engine, 9.5)
    assert not any(isinstance(e, Isolated) for e in events)
    events = run_silently(engine, 12.0)
    assert [e for e in events if isinstance(e, Isolated)] == [Isolated(since=0.0)]
    assert engine.isolated
    feed(engine, 20.0, wire.Ping(seq_no=1, node="me"))
    assert engine.take_events() == [Reconnected(isolated_for=20.0)]
    assert not engine.isolated


def test_a_node_whose_peers_all_left_is_alone_not_isolated() -> None:
    engine = make_engine(peers=2)
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p0", from_node="p0"))
    feed(engine, 0.0, wire.Dead(incarnation=1, node="p1", from_node="p1"))
    assert not any(isinstance(e, Isolated) for e in run_silently(engine, 100.0))


def test_a_node_that_never_had_peers_is_not_isolated() -> None:
    engine = make_engine(peers=0)
    assert not any(isinstance(e, Isolated) for e in run_silently(engine, 100.0))
