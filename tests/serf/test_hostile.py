"""Hostile Serf messages: oversized events, queries and responses, floods, reflection.

A Serf agent never sends a user event over 9 KiB, a query or response over 1 KiB; the layer
refuses bigger ones unread, and its rings of recent events, intents and members stay bounded
however many distinct ones arrive.
"""

from __future__ import annotations

from swim.serf.layer import (
    MAX_INTENTS,
    MAX_SAME_LTIME,
    RECENT_EVENTS_BUDGET,
    MemberReaped,
    SerfUserEvent,
    Status,
)
from swim.wire import serf as msg
from tests.serf.harness import QUIET, Layer, ip4
from tests.swim.conftest import address_of

from .test_layer import query


def test_a_user_event_over_serfs_limit_is_dropped_unread() -> None:
    layer = Layer(peers=2)
    huge = msg.UserEvent(5, "deploy", bytes(msg.USER_EVENT_SIZE_LIMIT))
    queued = layer.engine.queued_broadcasts
    assert layer.receive(huge) == []
    assert layer.engine.queued_broadcasts == queued  # not passed on either
    assert layer.serf.statistics().messages_dropped == 1
    fits = msg.UserEvent(6, "deploy", bytes(msg.USER_EVENT_SIZE_LIMIT - 100))
    assert len(layer.receive(fits)) == 1


def test_queries_and_responses_over_serfs_limits_are_dropped() -> None:
    layer = Layer(peers=2)
    assert layer.receive(query(payload=bytes(msg.QUERY_SIZE_LIMIT))) == []
    response = msg.QueryResponse(3, 1, "p0", 0, bytes(msg.QUERY_RESPONSE_SIZE_LIMIT))
    assert layer.receive(response) == []
    assert layer.serf.statistics().messages_dropped == 2


def test_a_relay_forwards_only_query_responses() -> None:
    """Otherwise any host could have us send what it likes to any address."""
    layer = Layer(peers=2)
    layer.sent()
    target = address_of(9)
    junk = msg.encode_relay(ip4(target[0]), target[1], "x", b"\x03anything")
    layer.receive_raw(junk)
    assert layer.engine.take_datagrams() == []
    inner = msg.encode_serf(msg.QueryResponse(3, 1, "p0", 0, b"answer"))
    layer.receive_raw(msg.encode_relay(ip4(target[0]), target[1], "x", inner))
    assert [address for address, _ in layer.engine.take_datagrams()] == [target]


def test_distinct_events_at_one_lamport_time_are_bounded() -> None:
    layer = Layer(peers=1)
    delivered = 0
    for i in range(MAX_SAME_LTIME + 10):
        delivered += len(layer.receive(msg.UserEvent(7, f"e{i}", b"")))
    assert delivered == MAX_SAME_LTIME
    assert layer.serf.statistics().events_refused == 10


def test_remembered_events_stay_within_their_byte_budget() -> None:
    layer = Layer(peers=1)
    size = 8 * 1024
    delivered = sum(
        len(layer.receive(msg.UserEvent(ltime, f"e{ltime}", bytes(size))))
        for ltime in range(1, 300)
    )
    fit = RECENT_EVENTS_BUDGET // (size + 4)
    assert fit - 1 <= delivered <= fit + 1
    assert len(layer.serf.local_state(False)) < RECENT_EVENTS_BUDGET + 64 * 1024
    # once the ring moves on past the old events, their room is free again
    assert len(layer.receive(msg.UserEvent(2000, "later", bytes(size)))) == 1


def test_oversized_events_in_a_push_pull_state_are_dropped() -> None:
    layer = Layer(peers=1)
    bad = msg.RecentEvents(9, (msg.RecentEvent("big", bytes(msg.USER_EVENT_SIZE_LIMIT + 1)),))
    good = msg.RecentEvents(10, (msg.RecentEvent("small", b"x"),))
    events: list[msg.RecentEvents | None] = [None] * 512
    events[9], events[10] = bad, good
    state = msg.SerfPushPull(
        ltime=1, status_ltimes={}, left_members=(), event_ltime=11, events=tuple(events)
    )
    layer.serf.merge_remote_state(msg.encode_serf(state), False)
    assert [e.name for e in layer.pump() if isinstance(e, SerfUserEvent)] == ["small"]


def test_intents_about_unknown_members_are_bounded_and_need_valid_names() -> None:
    layer = Layer(peers=1)
    for i in range(MAX_INTENTS + 5):
        layer.receive(msg.JoinIntent(10, f"ghost-{i}"))
    layer.receive(msg.JoinIntent(10, "bad\nname"))
    assert layer.serf.statistics().intents_refused == 6


def test_at_max_members_the_longest_departed_member_makes_room() -> None:
    layer = Layer(peers=3, config=QUIET.replace(max_members=4))
    layer.fail("p1")
    layer.fail("p0")
    layer.add_peer("newcomer", 10)
    events = layer.pump()
    names = {m.name for m in layer.serf.members()}
    assert names == {"me", "p0", "p2", "newcomer"}
    assert MemberReaped("p1") in layer.events + events
    assert {m.name: m.status for m in layer.serf.members()}["p0"] is Status.FAILED


def test_the_layer_never_forgets_itself_to_make_room() -> None:
    layer = Layer(peers=1, config=QUIET.replace(max_members=3))
    layer.serf.leave(layer.now)
    layer.run(10.0)  # we leave first, so we are the longest departed
    layer.fail("p0")
    layer.add_peer("a", 10)
    layer.add_peer("b", 11)
    assert MemberReaped("p0") in layer.events
    assert "me" in {m.name for m in layer.serf.members()}
