"""Anti-entropy and joining: push-pull exchanges, merge rules, version checks."""

from __future__ import annotations

import itertools

from swim import wire
from swim.config import Config
from swim.events import JoinCompleted, MemberFailed, MemberJoined, MemberLeft, MemberSuspect
from swim.members import MemberState

from .conftest import ME, VSN, address_of, alive, make_engine


def state(
    name: str, index: int, kind: wire.NodeState, incarnation: int = 1, vsn: bytes = VSN
) -> wire.PushNodeState:
    a = alive(name, index, incarnation)
    return wire.PushNodeState(
        name=name, addr=a.addr, port=a.port, incarnation=incarnation, state=kind, vsn=vsn
    )


def test_join_push_pulls_with_every_seed_and_reports_each_outcome() -> None:
    engine = make_engine()
    seeds = [address_of(0), address_of(1), ME]
    join_id = engine.join(seeds, 0.0)
    requests = engine.take_stream_requests()
    assert [r.address for r in requests] == seeds[:2]
    for request in requests:
        sent = wire.StreamReader(engine.wire_options).receive_data(request.data)
        assert isinstance(sent, wire.PushPull) and sent.join
        assert [s.name for s in sent.states] == ["me"]
    reply = wire.PushPull([state("p0", 0, wire.NodeState.ALIVE)], join=True)
    engine.stream_finished(requests[0].stream_id, reply, 0.1)
    engine.stream_finished(requests[1].stream_id, None, 0.2, error="connection refused")
    events = engine.take_events()
    assert isinstance(events[0], MemberJoined) and events[0].member.name == "p0"
    done = events[-1]
    assert isinstance(done, JoinCompleted) and done.join_id == join_id
    assert done.joined == (address_of(0),)
    assert done.failures == {address_of(1): "connection refused", ME: "this is our own address"}


def test_a_seed_that_never_answers_fails_at_the_tcp_timeout() -> None:
    engine = make_engine()
    engine.join([address_of(0)], 0.0)
    engine.take_stream_requests()
    engine.tick(9.99)
    assert not [e for e in engine.take_events() if isinstance(e, JoinCompleted)]
    engine.tick(10.0)
    (done,) = [e for e in engine.take_events() if isinstance(e, JoinCompleted)]
    assert done.failures == {address_of(0): "timed out"}


def test_a_remote_dead_opinion_only_raises_a_suspicion() -> None:
    engine = make_engine(peers=3)
    remote = wire.PushPull(
        [state("p0", 0, wire.NodeState.DEAD), state("p1", 1, wire.NodeState.SUSPECT)]
    )
    engine.handle_stream(remote, address_of(2), 0.0)
    events = engine.take_events()
    assert [type(e) for e in events] == [MemberSuspect, MemberSuspect]
    assert not any(isinstance(e, MemberFailed) for e in events)
    assert engine.member("p0").state is MemberState.SUSPECT  # type: ignore[union-attr]


def test_a_remote_left_is_applied() -> None:
    engine = make_engine(peers=3)
    engine.handle_stream(wire.PushPull([state("p0", 0, wire.NodeState.LEFT)]), address_of(2), 0.0)
    assert [type(e) for e in engine.take_events()] == [MemberLeft]


def test_inbound_push_pull_is_answered_with_our_whole_state() -> None:
    engine = make_engine(peers=3)
    reply = engine.handle_stream(wire.PushPull(join=True), address_of(9), 0.0)
    assert reply is not None
    message = wire.StreamReader(engine.wire_options).receive_data(reply)
    assert isinstance(message, wire.PushPull) and message.join
    assert sorted(s.name for s in message.states) == ["me", "p0", "p1", "p2"]


def test_incompatible_versions_refuse_the_whole_merge() -> None:
    engine = make_engine(peers=1)
    engine.join([address_of(5)], 0.0)
    (request,) = engine.take_stream_requests()
    odd = bytes((1, 5, 2, 0, 0, 0))  # delegate protocol 0, outside [2, 5]
    reply = wire.PushPull([state("odd", 5, wire.NodeState.ALIVE, vsn=odd)], join=True)
    engine.stream_finished(request.stream_id, reply, 0.1)
    events = engine.take_events()
    assert engine.member("odd") is None
    (done,) = events
    assert isinstance(done, JoinCompleted) and not done.joined
    assert "incompatible" in done.failures[address_of(5)]


def test_push_pull_goes_to_a_random_alive_member_at_the_scaled_interval() -> None:
    engine = make_engine(Config.lan(compression=False, reconnect_interval=0.0), peers=99)
    assert engine._push_pull_period() == 90.0  # memberlist's pushPullScale for n = 100
    times: list[float] = []
    now = 0.0
    while len(times) < 3:
        now = engine.next_deadline() or now
        engine.tick(now)
        engine.take_datagrams()
        for request in engine.take_stream_requests():
            message = wire.StreamReader(engine.wire_options).receive_data(request.data)
            if isinstance(message, wire.PushPull):
                times.append(now)
                assert not message.join
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [90.0, 90.0]
