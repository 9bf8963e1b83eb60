"""Refutations that reach those who missed them: suspicion checks, corrections of stale news by
any member that knows better, refutations sent to the accuser, and verdicts told to the dead.

Under loss a gossiped refutation misses a member now and then; memberlist's member then
declares a live member failed (tens of times in five minutes at 20% loss, measured in
benchmarks/README.md).  Each rule here closes one way that happens; all in virtual time.
"""

from __future__ import annotations

from swim import wire
from swim.config import Config
from swim.engine import Engine
from swim.events import MemberAlive, MemberFailed
from swim.members import Address, MemberState
from swim.state import SUSPICION_CHECKS

from .conftest import address_of, alive, feed, make_engine, sent, sent_messages

QUIET = Config.lan(compression=False, push_pull_interval=0.0, reconnect_interval=0.0)


def run_until(engine: Engine, end: float) -> list[tuple[float, Address, list[wire.Message]]]:
    """Fire every timer up to ``end``, every peer acking our pings at once (p1 too: it lives,
    only its refutation was lost); the datagrams sent, with when."""
    out: list[tuple[float, Address, list[wire.Message]]] = []
    while (deadline := engine.next_deadline()) is not None and deadline <= end:
        engine.tick(deadline)
        for destination, messages in sent(engine):
            out.append((deadline, destination, messages))
            for message in messages:
                if isinstance(message, wire.Ping):
                    feed(engine, deadline, wire.Ack(seq_no=message.seq_no), source=destination)
        engine.take_stream_requests()
    return out


def suspect_p1(engine: Engine) -> None:
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="p1", from_node="p0"))
    engine.take_datagrams()
    engine.take_events()


def checks(
    datagrams: list[tuple[float, Address, list[wire.Message]]],
) -> list[tuple[float, Address]]:
    """(time, destination) of each datagram that passed on the suspicion about p1 alone: a
    check (the gossip of the suspicion is over by then; a probe's ping carries one too)."""
    return [
        (round(when, 3), destination)
        for when, destination, messages in datagrams
        if len(messages) == 1
        and isinstance(messages[0], wire.Suspect)
        and messages[0].node == "p1"
        and messages[0].from_node == "p0"
    ]


def test_before_a_suspicion_runs_out_it_is_passed_to_the_suspect_and_others() -> None:
    engine = make_engine(QUIET, peers=9)  # n = 10: the longest timeout, 24 s
    suspect_p1(engine)
    done = checks(run_until(engine, 24.0 - 0.001))
    assert sorted({when for when, _ in done}) == [21.0, 22.0, 23.0]  # the last intervals
    assert engine.statistics().suspicion_checks == SUSPICION_CHECKS
    at_21 = [destination for when, destination in done if when == 21.0]
    assert address_of(1) in at_21 and len(set(at_21)) == 1 + QUIET.gossip_nodes


def test_an_answer_to_a_check_ends_the_suspicion() -> None:
    engine = make_engine(QUIET, peers=9)
    suspect_p1(engine)
    run_until(engine, 21.0)
    feed(engine, 21.01, alive("p1", 1, incarnation=2), source=address_of(4))  # a bystander's
    events = engine.take_events()
    assert any(isinstance(e, MemberAlive) and e.member.name == "p1" for e in events)
    run_until(engine, 60.0)
    assert not any(isinstance(e, MemberFailed) for e in engine.take_events())


def test_a_suspect_whose_answers_are_lost_still_fails_on_time() -> None:
    engine = make_engine(QUIET, peers=9)
    suspect_p1(engine)
    run_until(engine, 24.0 - 0.001)
    assert not any(isinstance(e, MemberFailed) for e in engine.take_events())
    run_until(engine, 24.0)
    assert [e.member.name for e in engine.take_events() if isinstance(e, MemberFailed)] == ["p1"]


def test_a_stale_accusation_is_answered_by_any_member_that_holds_the_newer_alive() -> None:
    engine = make_engine(QUIET, peers=4)
    feed(engine, 0.0, alive("p0", 0, incarnation=5), source=address_of(0))
    engine.take_datagrams()
    feed(engine, 1.0, wire.Suspect(incarnation=4, node="p0", from_node="p2"), source=address_of(3))
    feed(engine, 1.0, wire.Dead(incarnation=3, node="p0", from_node="p2"), source=address_of(3))
    told = [(dst, m.node, m.incarnation) for dst, m in sent_messages(engine, wire.Alive)]
    assert told == [(address_of(3), "p0", 5)] * 2
    assert engine.statistics().stale_news_corrected == 2
    member = engine.member("p0")
    assert member is not None and member.state is MemberState.ALIVE


def test_stale_news_from_a_stranger_or_about_a_member_we_hold_suspect_gets_no_answer() -> None:
    engine = make_engine(QUIET, peers=4)
    feed(engine, 0.0, alive("p0", 0, incarnation=5), source=address_of(0))
    feed(engine, 0.0, wire.Suspect(incarnation=5, node="p0", from_node="p1"))
    engine.take_datagrams()
    feed(engine, 1.0, wire.Suspect(incarnation=4, node="p0", from_node="p2"), source=address_of(3))
    feed(
        engine, 1.0, wire.Suspect(incarnation=4, node="p1", from_node="p2"), source=("10.9.9.9", 1)
    )
    assert sent_messages(engine, wire.Alive) == []


def test_a_refutation_goes_straight_to_the_accuser_and_the_relayer_as_well() -> None:
    engine = make_engine(QUIET, peers=4)
    feed(engine, 0.0, wire.Suspect(incarnation=1, node="me", from_node="p2"), source=address_of(3))
    told = sorted(dst for dst, m in sent_messages(engine, wire.Alive) if m.node == "me")
    assert told == [address_of(2), address_of(3)]
    assert engine.local_member.incarnation == 2


def test_a_late_confirmation_that_ends_the_timeout_at_once_waits_for_one_check() -> None:
    engine = make_engine(QUIET, peers=9)
    suspect_p1(engine)
    run_until(engine, 5.0)  # no check yet: they come in the last intervals before 24 s
    feed(engine, 5.0, wire.Suspect(incarnation=1, node="p1", from_node="p2"))
    feed(engine, 5.0, wire.Suspect(incarnation=1, node="p1", from_node="p3"))  # 4 s: past
    run_until(engine, 5.0 + QUIET.probe_timeout - 0.001)
    assert engine.statistics().suspicion_checks == 1
    assert not any(isinstance(e, MemberFailed) for e in engine.take_events())
    run_until(engine, 5.0 + QUIET.probe_timeout)
    assert [e.member.name for e in engine.take_events() if isinstance(e, MemberFailed)] == ["p1"]


def test_a_member_declared_dead_is_told_the_verdict_at_doubling_waits() -> None:
    engine = make_engine(QUIET, peers=2)  # n = 3: the shortest timeout at once, 4 s
    suspect_p1(engine)
    run_until(engine, 4.0)
    assert any(isinstance(e, MemberFailed) for e in engine.take_events())
    verdicts = [
        round(when - 4.0, 3)
        for when, destination, messages in run_until(engine, 60.0)
        if destination == address_of(1) and any(isinstance(m, wire.Dead) for m in messages)
    ]
    later = [after for after in verdicts if after >= 1.0]  # the verdict's gossip is over by then
    assert later == [1.0, 3.0, 7.0, 15.0]  # doubling, until gossip_to_the_dead_time (30 s)
    assert engine.statistics().verdicts_told == 4
    feed(engine, 20.0, alive("p1", 1, incarnation=2), source=address_of(1))  # its refutation
    member = engine.member("p1")
    assert member is not None and member.state is MemberState.ALIVE
