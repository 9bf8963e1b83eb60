"""Probing: direct pings, indirect probes with nacks, TCP fallback, the buddy system, health."""

from __future__ import annotations

import itertools

import pytest

from swim import wire
from swim.config import Config
from swim.engine import Engine
from swim.events import MemberSuspect
from swim.members import MemberState

from .conftest import address_of, alive, feed, make_engine, sent, sent_messages


def run_until_probe(engine: Engine, start: float = 0.0) -> tuple[float, wire.Ping]:
    """Advance time until the engine sends a ping; return when and the ping."""
    now = start
    for _ in range(1000):
        now = engine.next_deadline() or now
        engine.tick(now)
        pings = sent_messages(engine, wire.Ping)
        if pings:
            return now, pings[0][1]
    raise AssertionError("no probe")


def test_each_member_is_probed_once_per_round() -> None:
    engine = make_engine(peers=8)
    targets: list[str] = []
    now = 0.0
    while len(targets) < 16:
        now, ping = run_until_probe(engine, now)
        targets.append(ping.node)
        feed(engine, now, wire.Ack(seq_no=ping.seq_no))
    assert sorted(targets[:8]) == [f"p{i}" for i in range(8)]
    assert sorted(targets[8:]) == [f"p{i}" for i in range(8)]


def test_probes_happen_once_per_probe_interval_when_acked() -> None:
    engine = make_engine(peers=3)
    times = []
    now = 0.0
    for _ in range(5):
        now, ping = run_until_probe(engine, now)
        times.append(now)
        feed(engine, now + 0.01, wire.Ack(seq_no=ping.seq_no))
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [1.0] * 4


def test_ping_carries_queued_broadcasts() -> None:
    # with gossip rounds off, piggybacking on probes is the only way news leaves
    engine = make_engine(Config.lan(compression=False, gossip_nodes=0), peers=3)
    feed(engine, 0.0, alive("newcomer", 50))
    now = 0.0
    for _ in range(100):
        now = engine.next_deadline() or now
        engine.tick(now)
        with_ping = [m for _, m in sent(engine) if any(isinstance(x, wire.Ping) for x in m)]
        if with_ping:
            assert any(isinstance(m, wire.Alive) and m.node == "newcomer" for m in with_ping[0])
            return
    raise AssertionError("no ping")


def test_an_ack_lowers_the_health_score() -> None:
    engine = make_engine(peers=3)
    engine._awareness.score = 3
    now, ping = run_until_probe(engine)
    feed(engine, now, wire.Ack(seq_no=ping.seq_no))
    assert engine.health_score == 2


def test_missed_probe_asks_helpers_with_nacks_and_tries_tcp() -> None:
    engine = make_engine(peers=6)
    now, ping = run_until_probe(engine)
    engine.tick(now + 0.5)  # probe timeout: no ack
    requests = sent_messages(engine, wire.IndirectPing)
    assert len(requests) == 3  # IndirectChecks
    helpers = {dst for dst, _ in requests}
    assert len(helpers) == 3
    for _, request in requests:
        assert isinstance(request, wire.IndirectPing)
        assert request.node == ping.node and request.seq_no == ping.seq_no and request.nack
    streams = engine.take_stream_requests()
    assert len(streams) == 1
    assert streams[0].deadline == now + 1.0
    target = wire.StreamReader(engine.wire_options).receive_data(streams[0].data)
    assert isinstance(target, wire.Ping) and target.node == ping.node


def test_tcp_fallback_can_be_disabled() -> None:
    engine = make_engine(Config.lan(compression=False, disable_tcp_pings=True), peers=6)
    now, _ = run_until_probe(engine)
    engine.tick(now + 0.5)
    assert engine.take_stream_requests() == []


def test_missed_nacks_raise_the_health_score_and_received_ones_do_not() -> None:
    engine = make_engine(peers=6)
    now, ping = run_until_probe(engine)
    engine.tick(now + 0.5)
    engine.take_stream_requests()
    feed(engine, now + 0.9, wire.Nack(seq_no=ping.seq_no))  # one helper of three answers
    engine.tick(now + 1.0)
    assert engine.health_score == 2  # 3 expected nacks - 1 received
    assert any(isinstance(e, MemberSuspect) for e in engine.take_events())


def test_a_failed_probe_without_helpers_adds_one() -> None:
    engine = make_engine(Config.lan(compression=False, disable_tcp_pings=True), peers=1)
    now, _ = run_until_probe(engine)
    engine.tick(now + 1.0)
    assert engine.health_score == 1


def test_health_stretches_a_failing_probe_and_is_capped() -> None:
    engine = make_engine(Config.lan(compression=False, disable_tcp_pings=True), peers=1)
    engine._awareness.score = 7
    now, _ = run_until_probe(engine)
    engine.tick(now + 7.9)
    assert not any(isinstance(e, MemberSuspect) for e in engine.take_events())
    engine.tick(now + 8.0)  # probe interval x (7 + 1)
    assert any(isinstance(e, MemberSuspect) for e in engine.take_events())
    assert engine.health_score == 7


def test_an_indirect_ack_saves_the_probe() -> None:
    engine = make_engine(peers=6)
    now, ping = run_until_probe(engine)
    engine.tick(now + 0.5)
    feed(engine, now + 0.7, wire.Ack(seq_no=ping.seq_no))
    engine.tick(now + 2.0)
    assert not any(isinstance(e, MemberSuspect) for e in engine.take_events())


def test_a_tcp_ack_saves_the_probe() -> None:
    engine = make_engine(peers=6)
    now, ping = run_until_probe(engine)
    engine.tick(now + 0.5)
    (stream,) = engine.take_stream_requests()
    engine.stream_finished(stream.stream_id, wire.Ack(seq_no=ping.seq_no), now + 0.6)
    engine.tick(now + 2.0)
    assert not any(isinstance(e, MemberSuspect) for e in engine.take_events())


def test_buddy_system_pings_a_suspect_with_the_suspicion() -> None:
    engine = make_engine(peers=1)
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p0", from_node="someone"))
    now, _ = 0.0, None
    for _ in range(100):
        now = engine.next_deadline() or now
        engine.tick(now)
        packets = [msgs for _, msgs in sent(engine) if any(isinstance(m, wire.Ping) for m in msgs)]
        if packets:
            kinds = [type(m) for m in packets[0]]
            assert kinds == [wire.Ping, wire.Suspect]
            return
    raise AssertionError("no ping to the suspect")


def test_helper_relays_the_ack_to_the_requester() -> None:
    engine = make_engine(peers=2)
    requester = address_of(0)
    target = alive("p1", 1)
    feed(
        engine,
        0.0,
        wire.IndirectPing(
            seq_no=77,
            target=target.addr,
            port=target.port,
            node="p1",
            nack=True,
            source_addr=bytes((10, 0, 0, 2)),
            source_port=7946,
            source_node="p0",
        ),
    )
    ((dst, ping),) = sent_messages(engine, wire.Ping)
    assert dst == address_of(1)
    assert isinstance(ping, wire.Ping)
    feed(engine, 0.1, wire.Ack(seq_no=ping.seq_no))
    acks = sent_messages(engine, wire.Ack)
    assert acks == [(requester, wire.Ack(seq_no=77))]
    engine.tick(1.0)
    assert sent_messages(engine, wire.Nack) == []


def test_helper_sends_a_nack_when_the_target_is_silent() -> None:
    engine = make_engine(peers=2)
    target = alive("p1", 1)
    feed(
        engine,
        0.0,
        wire.IndirectPing(seq_no=78, target=target.addr, port=target.port, node="p1", nack=True),
        source=address_of(0),
    )
    engine.take_datagrams()
    # at 80% of what the requester has left to wait (0.5 s of its 1 s probe), so that the
    # nack reaches it before its probe ends
    engine.tick(0.39)
    assert sent_messages(engine, wire.Nack) == []
    engine.tick(0.4)
    assert sent_messages(engine, wire.Nack) == [(address_of(0), wire.Nack(seq_no=78))]


def test_helper_relays_a_late_ack_after_its_nack_until_the_probe_timeout() -> None:
    engine = make_engine(peers=2)
    target = alive("p1", 1)
    request = wire.IndirectPing(
        seq_no=79, target=target.addr, port=target.port, node="p1", nack=True
    )
    feed(engine, 0.0, request, source=address_of(0))
    ((_, ping),) = sent_messages(engine, wire.Ping)
    engine.tick(0.4)
    assert sent_messages(engine, wire.Nack) == [(address_of(0), wire.Nack(seq_no=79))]
    feed(engine, 0.45, wire.Ack(seq_no=ping.seq_no), source=address_of(1))
    assert sent_messages(engine, wire.Ack) == [(address_of(0), wire.Ack(seq_no=79))]


@pytest.mark.parametrize("profile", ["lan", "wan", "local"])
def test_a_nack_fits_in_what_the_requester_has_left_to_wait(profile: str) -> None:
    config = Config.profile(profile, compression=False)
    engine = make_engine(config, peers=2)
    target = alive("p1", 1)
    request = wire.IndirectPing(
        seq_no=80, target=target.addr, port=target.port, node="p1", nack=True
    )
    feed(engine, 0.0, request, source=address_of(0))
    engine.take_datagrams()
    nacked_at = None
    while (deadline := engine.next_deadline()) is not None and nacked_at is None:
        engine.tick(deadline)
        if sent_messages(engine, wire.Nack):
            nacked_at = deadline
    assert nacked_at is not None
    assert config.probe_timeout + nacked_at < config.probe_interval


def test_pings_for_another_name_are_ignored_and_others_answered() -> None:
    engine = make_engine(peers=1)
    feed(engine, 0.0, wire.Ping(seq_no=5, node="someone-else"), source=address_of(0))
    assert sent_messages(engine, wire.Ack) == []
    feed(engine, 0.0, wire.Ping(seq_no=6, node="me"), source=address_of(0))
    assert sent_messages(engine, wire.Ack) == [(address_of(0), wire.Ack(seq_no=6))]


@pytest.mark.parametrize("verdict", [wire.Dead, wire.Suspect])
def test_a_ping_from_a_member_held_dead_or_suspect_is_answered_with_the_verdict(
    verdict: type[wire.Dead] | type[wire.Suspect],
) -> None:
    # It is up and reaches us but never heard of our verdict, or its refutation missed us
    # (say, a short partition ended): the suspicion in the ack makes it refute (or tell us
    # its newer incarnation), and that reaches us.
    engine = make_engine(peers=2)
    feed(engine, 0.0, verdict(incarnation=1, node="p0", from_node="p1"))
    engine.take_datagrams()
    ping = wire.Ping(seq_no=7, node="me", source_node="p0")
    feed(engine, 1.0, ping, source=address_of(0))
    ((destination, messages),) = sent(engine)
    assert destination == address_of(0)
    assert messages == [
        wire.Ack(seq_no=7),
        wire.Suspect(incarnation=1, node="p0", from_node="me"),
    ]
    feed(engine, 1.1, alive("p0", 0, incarnation=2))  # its refutation
    p0 = engine.member("p0")
    assert p0 is not None and p0.state is MemberState.ALIVE


def test_tcp_ping_is_answered_on_the_stream() -> None:
    engine = make_engine(peers=1)
    reply = engine.handle_stream(wire.Ping(seq_no=9, node="me"), address_of(0), 0.0)
    assert reply is not None
    assert wire.StreamReader(engine.wire_options).receive_data(reply) == wire.Ack(seq_no=9)


def test_without_lifeguard_a_suspect_gets_a_plain_ping() -> None:
    engine = make_engine(Config.lan(compression=False, lifeguard=False, gossip_nodes=0), peers=1)
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p0", from_node="someone"))
    now = 0.0
    for _ in range(100):
        now = engine.next_deadline() or now
        engine.tick(now)
        packets = [msgs for _, msgs in sent(engine) if any(isinstance(m, wire.Ping) for m in msgs)]
        if packets:
            # the queued gossip about p0 may ride along, but not our own buddy-system suspect
            assert not any(isinstance(m, wire.Suspect) and m.from_node == "me" for m in packets[0])
            return
    raise AssertionError("no ping to the suspect")


def wakes_while_acking(engine: Engine, start: float, end: float) -> list[float]:
    """Drive ``engine`` from ``start`` to ``end``, acking every ping at once; the times it
    asked to be woken at."""
    wakes: list[float] = []
    now = start
    for _ in range(10_000):
        deadline = engine.next_deadline()
        if deadline is None or deadline > end:
            return wakes
        now = max(now, deadline)
        wakes.append(now)
        engine.tick(now)
        for _, ping in sent_messages(engine, wire.Ping):
            feed(engine, now, wire.Ack(seq_no=ping.seq_no))
    raise AssertionError("the engine never went quiet")


def test_an_idle_node_wakes_only_to_probe() -> None:
    # With nothing to gossip, a gossip round sends nothing; a node with nothing queued must
    # not be woken for one (five wakes a second on LAN), nor for an answered probe's timeout.
    engine = make_engine(peers=5)
    wakes_while_acking(engine, 0.0, 10.0)  # the news of joining spreads and runs out
    assert engine.queued_broadcasts == 0
    wakes = wakes_while_acking(engine, 10.0, 20.0)
    assert len(wakes) == 10
    assert engine.statistics().probes >= 19


def test_news_goes_out_at_the_next_gossip_beat() -> None:
    engine = make_engine(peers=5)
    wakes_while_acking(engine, 0.0, 10.0)
    assert engine.queued_broadcasts == 0
    feed(engine, 10.05, alive("newcomer", 40))
    engine.take_datagrams()
    gossip_times = []
    now = 10.05
    while engine.queued_broadcasts and now < 20.0:
        now = engine.next_deadline() or now
        engine.tick(now)
        for _, messages in sent(engine):
            pings = [m for m in messages if isinstance(m, wire.Ping)]
            for ping in pings:
                feed(engine, now, wire.Ack(seq_no=ping.seq_no))
            news = any(isinstance(m, wire.Alive) and m.node == "newcomer" for m in messages)
            if news and not pings:  # a gossip round, not a piggyback on a probe
                gossip_times.append(now)
    assert gossip_times, "the news was never gossiped"
    assert gossip_times[0] - 10.05 <= engine.config.gossip_interval
    beats = [round(b - a, 6) for a, b in itertools.pairwise(gossip_times)]
    assert all(gap % engine.config.gossip_interval < 1e-6 for gap in beats)


def test_a_rejoin_restarts_the_loops_instead_of_adding_more() -> None:
    engine = make_engine(peers=5)
    engine.leave(0.0)
    wakes_while_acking(engine, 0.0, 10.0)
    engine.join([address_of(0)], 10.0)
    wakes_while_acking(engine, 10.0, 20.0)
    probes = engine.statistics().probes
    wakes_while_acking(engine, 20.0, 30.0)
    assert engine.statistics().probes - probes == 10


def test_a_failed_probe_accuses_only_the_incarnation_it_probed() -> None:
    # The member refuted, or came back at a new address, while the probe ran: the probe's
    # failure says nothing about the new incarnation (memberlist accuses the one it probed).
    engine = make_engine(peers=1)
    now, _ = run_until_probe(engine)
    feed(engine, now + 0.1, alive("p0", 0, incarnation=2))
    for _ in range(100):
        deadline = engine.next_deadline()
        if deadline is None or deadline > now + 1.5:
            break
        engine.tick(deadline)
    assert engine.statistics().probes == 1
    p0 = engine.member("p0")
    assert p0 is not None and p0.state is MemberState.ALIVE and p0.incarnation == 2
    assert [e for e in engine.take_events() if isinstance(e, MemberSuspect)] == []
