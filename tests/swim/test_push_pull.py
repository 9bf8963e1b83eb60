"""Anti-entropy and joining: push-pull exchanges, merge rules, version checks."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from swim import wire
from swim.config import Config
from swim.events import JoinCompleted, MemberFailed, MemberJoined, MemberLeft, MemberSuspect
from swim.members import MemberState

from .conftest import ME, VSN, address_of, alive, make_engine
from .harness import Cluster


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
    assert engine._anti_entropy.period() == 90.0  # memberlist's pushPullScale for n = 100
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


def test_assuming_a_converged_view_learns_members_without_news_or_events() -> None:
    engine = make_engine()
    engine.take_events()
    members = [state(f"p{i}", i, wire.NodeState.ALIVE) for i in range(5)]
    engine.assume_converged(members, 0.0)
    assert {m.name: m.state for m in engine.members()} == {
        "me": MemberState.ALIVE,
        **{f"p{i}": MemberState.ALIVE for i in range(5)},
    }
    assert engine.take_events() == []
    assert engine.queued_broadcasts == 0  # everyone knows already: nothing to gossip
    while (deadline := engine.next_deadline()) is not None and deadline < 1.0:
        engine.tick(deadline)  # the first probe, unanswered: it carries no news
    sent = [wire.decode_packet(data, engine.wire_options) for _, data in engine.take_datagrams()]
    assert sent
    assert {type(m) for messages in sent for m in messages} <= {wire.Ping, wire.IndirectPing}


def test_assuming_incompatible_versions_is_an_error() -> None:
    engine = make_engine()
    odd = state("old", 0, wire.NodeState.ALIVE, vsn=bytes((1, 1, 1, 2, 5, 5)))
    try:
        engine.assume_converged([odd], 0.0)
    except ValueError as exc:
        assert "incompatible" in str(exc)
    else:
        raise AssertionError("incompatible versions were assumed")
    assert engine.member("old") is None


def advertised(engine_state: list[wire.PushNodeState]) -> dict[str, tuple[int, str, bytes]]:
    return {s.name: (s.incarnation, s.state.name.lower(), s.meta) for s in engine_state}


def test_the_state_a_node_sends_always_matches_its_view() -> None:
    # A node keeps its encoded state between exchanges; every change must show in the next one.
    config = Config.lan(compression=True, reconnect_interval=10.0)
    cluster = Cluster(config=config, seed=3)
    for i in range(6):
        cluster.add(f"n{i}")
    for i in range(1, 6):
        cluster.by_name(f"n{i}").join([cluster.by_name("n0").local_member.address], 0.0)
    steps: list[Callable[[], object]] = [
        lambda: None,
        lambda: cluster.by_name("n1").update_meta(b"role=db", cluster.now),
        lambda: cluster.down.add(cluster.by_name("n5").local_member.address),
        lambda: cluster.partition(["n0", "n1"], ["n2", "n3", "n4"]),
        cluster.heal,
        lambda: cluster.by_name("n4").leave(cluster.now),
        lambda: cluster.by_name("n4").join([cluster.by_name("n0").local_member.address], 0.0),
    ]
    asker = ("10.9.9.9", 7946)
    for step in steps:
        step()
        for _ in range(8):
            cluster.run_for(7.5)
            for address, stack in cluster.stacks.items():
                if address in cluster.down:
                    continue
                engine = stack.engine
                reply = engine.handle_stream(wire.PushPull(), asker, cluster.now)
                assert reply is not None
                sent = wire.StreamReader(engine.wire_options).receive_data(reply)
                assert isinstance(sent, wire.PushPull)
                view = {m.name: (m.incarnation, m.state.value, m.meta) for m in engine.members()}
                assert advertised(sent.states) == view, engine.name


def test_a_join_is_followed_by_a_second_push_pull_with_a_seed() -> None:
    # Members joining at once each learn from the seed only those that joined before them;
    # a second exchange shortly after brings the rest, instead of the next periodic one.
    engine = make_engine()
    engine.join([address_of(0), address_of(1)], 0.0)
    first, second = engine.take_stream_requests()
    reply = wire.PushPull([state("p0", 0, wire.NodeState.ALIVE)], join=True)
    engine.stream_finished(first.stream_id, reply, 0.1)
    engine.stream_finished(second.stream_id, None, 0.1, error="connection refused")
    follow_up = []
    while (deadline := engine.next_deadline()) is not None and deadline <= 2.5:
        engine.tick(deadline)
        for request in engine.take_stream_requests():  # TCP pings of the silent p0 too
            sent = wire.StreamReader(engine.wire_options).receive_data(request.data)
            if isinstance(sent, wire.PushPull):
                follow_up.append((request.address, sent.join))
    assert follow_up == [(address_of(0), False)]


def test_a_failed_join_is_tried_once_more_two_probe_intervals_later() -> None:
    # its reply may be all that was lost: the seed knows us, and the next reconnect is 30 s off
    engine = make_engine()
    engine.join([address_of(0)], 0.0)
    (request,) = engine.take_stream_requests()
    engine.stream_finished(request.stream_id, None, 0.1, error="connection refused")
    (done,) = [e for e in engine.take_events() if isinstance(e, JoinCompleted)]
    assert done.joined == ()
    again = []
    while (deadline := engine.next_deadline()) is not None and deadline <= 2.5:
        engine.tick(deadline)
        for request in engine.take_stream_requests():
            sent = wire.StreamReader(engine.wire_options).receive_data(request.data)
            if isinstance(sent, wire.PushPull):
                again.append((deadline, request.address, sent.join))
    assert again == [(2.1, address_of(0), False)]


def test_on_a_short_tcp_timeout_a_join_tries_a_seed_again_within_three_seconds() -> None:
    # the local profile's 1 s timeout never waits for a lost SYN's retransmission (1 s)
    engine = make_engine(Config.local(compression=False))
    join_id = engine.join([address_of(0)], 0.0)
    opened: list[float] = []
    now = 0.0
    while now < 10.0:
        opened += [now] * len(engine.take_stream_requests())
        now = engine.next_deadline() or now + 1.0
        engine.tick(now)
        if any(isinstance(e, JoinCompleted) for e in engine.take_events()):
            break
    assert opened == [0.0, 1.0, 2.0]  # three attempts, each timing out after 1 s
    assert now == 3.0 and join_id == 1


def test_a_refusing_seed_is_tried_three_times_at_most() -> None:
    engine = make_engine(Config.local(compression=False))
    engine.join([address_of(0)], 0.0)
    attempts = 0
    while requests := engine.take_stream_requests():
        for request in requests:
            attempts += 1
            engine.stream_finished(request.stream_id, None, 0.0, error="connection refused")
    assert attempts == 3
    (done,) = [e for e in engine.take_events() if isinstance(e, JoinCompleted)]
    assert done.failures == {address_of(0): "connection refused"}
