"""The Serf layer driven by hand: no sockets, no real time.

Each layer sits on its own engine; Serf messages arrive as memberlist user messages and what the
layer sends is read back from the engine's datagrams.  Expected behaviour is Serf 0.9.4's
(``serf/serf/*.go``) as the reference (section 6) describes it.
"""

from __future__ import annotations

import base64
import itertools
from typing import TypeVar

import pytest

from swim import wire
from swim.broadcasts import retransmit_limit
from swim.engine import MetadataTooLarge
from swim.events import LeaveCompleted
from swim.members import MemberState
from swim.serf.layer import (
    MAX_RECEIVED_QUERIES,
    KeyringChanged,
    MemberReaped,
    QueryAck,
    QueryAnswer,
    QueryDone,
    SerfError,
    SerfEvent,
    SerfQuery,
    SerfUserEvent,
    Status,
)
from swim.wire import serf as msg
from tests.serf.harness import QUIET, Layer, SerfCluster, ip4, peer_alive
from tests.swim.conftest import ME, VSN, address_of

ASKER = address_of(200)
"""Where the queries in these tests come from (a node the layer does not know)."""
ACK = msg.QUERY_FLAG_ACK
_ids = itertools.count(1000)


def query(
    *,
    ltime: int = 3,
    id: int | None = None,
    name: str = "q",
    payload: bytes = b"",
    filters: tuple[bytes, ...] = (),
    flags: int = 0,
    relay_factor: int = 0,
    timeout: float = 2.0,
) -> msg.Query:
    """A query from ``asker`` at :data:`ASKER` (a fresh id unless given)."""
    return msg.Query(
        ltime=ltime,
        id=next(_ids) if id is None else id,
        addr=ip4(ASKER[0]),
        port=ASKER[1],
        source_node="asker",
        name=name,
        payload=payload,
        filters=filters,
        flags=flags,
        relay_factor=relay_factor,
        timeout_ns=int(timeout * 1e9),
    )


M = TypeVar("M")


def copies_of(layer: Layer, kind: type[M], seconds: float = 3.0) -> list[M]:
    """The copies of the broadcasts of one kind gossiped over ``seconds``."""
    return [m for m in layer.broadcast_copies(seconds) if isinstance(m, kind)]


def own_state(layer: Layer) -> MemberState:
    """The layer's own member state in its engine."""
    return layer.engine.local_member.state


def installed(keyring: wire.Keyring) -> tuple[bytes, ...]:
    return keyring.keys


def limit_for(members: int) -> int:
    """How many times a broadcast goes out with ``members`` members (self included)."""
    return retransmit_limit(QUIET.retransmit_mult, members)


# ---------------------------------------------------------------------------------------------
# Lamport clocks


def test_clocks_witness_a_time_by_moving_one_past_it() -> None:
    layer = Layer(peers=1)
    serf = layer.serf
    assert (serf.clock.time, serf.event_clock.time, serf.query_clock.time) == (1, 1, 1)
    layer.receive(msg.JoinIntent(10, "p0"))
    assert serf.clock.time == 11
    layer.receive(msg.LeaveIntent(4, "p0"))  # an older time never moves a clock back
    assert serf.clock.time == 11
    layer.receive(msg.UserEvent(20, "deploy"))
    layer.receive(query(ltime=30))
    assert (serf.clock.time, serf.event_clock.time, serf.query_clock.time) == (11, 21, 31)
    # what we send carries the current time, and moves the clock on by one
    serf.user_event("next", b"", False, layer.now)
    assert layer.pump() == [SerfUserEvent(21, "next", b"", False)]
    assert serf.event_clock.time == 22


def test_push_pull_clocks_are_witnessed_as_one_less() -> None:
    layer = Layer(peers=1)
    serf = layer.serf
    state = msg.SerfPushPull(ltime=10, event_ltime=20, query_ltime=30)
    serf.merge_remote_state(msg.encode_serf(state), False)
    # the peer has not sent anything at its current times yet: witness(v - 1) gives v
    assert (serf.clock.time, serf.event_clock.time, serf.query_clock.time) == (10, 20, 30)
    serf.merge_remote_state(msg.encode_serf(msg.SerfPushPull(ltime=0)), False)
    assert (serf.clock.time, serf.event_clock.time, serf.query_clock.time) == (10, 20, 30)
    serf.merge_remote_state(b"\x02not msgpack", False)  # a bad state changes nothing
    serf.merge_remote_state(b"", True)
    assert (serf.clock.time, serf.event_clock.time, serf.query_clock.time) == (10, 20, 30)


# ---------------------------------------------------------------------------------------------
# Join and leave intents


def test_joined_broadcasts_a_join_intent_at_the_current_time() -> None:
    layer = Layer(peers=3)
    layer.receive(msg.JoinIntent(4, "p0"))
    layer.gossip()  # the re-gossip of p0's intent goes out first
    layer.serf.joined(layer.now)
    assert layer.serf.clock.time == 6
    assert layer.member("me").status_ltime == 5
    intents = copies_of(layer, msg.JoinIntent)
    assert intents == [msg.JoinIntent(5, "me")] * limit_for(4)


def test_leave_sends_the_leave_intent_before_the_engine_leave() -> None:
    layer = Layer(peers=3)
    layer.serf.leave(layer.now)
    assert layer.status("me") is Status.LEAVING
    assert layer.serf.clock.time == 2
    sent = [m for _, m in layer.run(5.0)]
    intents = [
        i
        for i, m in enumerate(sent)
        if isinstance(m, wire.User) and msg.decode_serf(m.payload) == msg.LeaveIntent(1, "me")
    ]
    deaths = [
        i for i, m in enumerate(sent) if isinstance(m, wire.Dead) and m.node == m.from_node == "me"
    ]
    assert len(intents) == limit_for(4)
    assert deaths, "the engine never announced the leave"
    assert max(intents) < min(deaths), "the engine left before the Serf intent was out"
    assert any(isinstance(e, LeaveCompleted) for e in layer.engine_events)
    assert layer.status("me") is Status.LEFT
    assert layer.engine.local_member.state is MemberState.LEFT


def test_leave_alone_leaves_the_engine_at_once() -> None:
    layer = Layer()
    layer.serf.leave(layer.now)
    layer.pump()
    assert [e for e in layer.engine_events if isinstance(e, LeaveCompleted)]
    assert layer.status("me") is Status.LEFT


def test_leave_goes_ahead_after_the_timeout_when_the_intent_cannot_go_out() -> None:
    layer = Layer(peers=3)
    layer.serf.leave(layer.now, timeout=5.0)
    layer.at(4.9)  # the engine never gossips here, so the intent never finishes
    assert own_state(layer) is MemberState.ALIVE
    layer.at(5.0)
    assert own_state(layer) is MemberState.LEFT


def test_a_node_that_rejoins_after_leaving_is_alive_again() -> None:
    layer = Layer(peers=3)
    layer.serf.leave(layer.now)
    layer.run(5.0)
    assert own_state(layer) is MemberState.LEFT
    layer.engine.join([address_of(0)], layer.now)  # what Node.join does after a leave
    layer.serf.joined(layer.now)
    layer.pump()
    assert own_state(layer) is MemberState.ALIVE
    peer = Layer(name="peer", address=address_of(50))
    peer.add_peer("me", 0)
    peer.serf.merge_remote_state(layer.serf.local_state(False), False)
    assert peer.status("me") is Status.ALIVE, "a peer reads the live node as leaving"
    assert layer.status("me") is Status.ALIVE
    layer.receive(msg.LeaveIntent(100, "me"))
    assert not copies_of(layer, msg.LeaveIntent), "a stray leave intent about us spread"
    layer.serf.leave(layer.now)
    assert [m for m in copies_of(layer, msg.LeaveIntent) if m.node == "me"]


def test_a_node_can_rejoin_long_after_leaving() -> None:
    layer = Layer(peers=3, tombstone_timeout=20.0)
    layer.serf.leave(layer.now)
    layer.run(5.0)
    assert MemberReaped("me") not in layer.at(45.0)
    layer.engine.join([address_of(0)], layer.now)
    layer.serf.joined(layer.now)
    layer.pump()
    assert layer.status("me") is Status.ALIVE


def test_tags_over_the_metadata_limit_are_refused() -> None:
    layer = Layer(peers=1, tags={"role": "web"})
    with pytest.raises(MetadataTooLarge, match=r"over the limit of 512"):
        layer.serf.set_tags({"blob": "x" * 600}, layer.now)
    assert layer.serf.tags == {"role": "web"}
    assert msg.decode_tags(layer.engine.local_member.meta) == {"role": "web"}


def test_a_member_that_leaves_with_an_intent_reads_left_and_a_crash_reads_failed() -> None:
    layer = Layer(peers=4)
    layer.receive(msg.LeaveIntent(5, "p0"))
    assert layer.status("p0") is Status.LEAVING
    layer.depart("p0")
    assert layer.status("p0") is Status.LEFT
    # Serf reads "left" for a member with a leave intent, whatever memberlist says
    layer.receive(msg.LeaveIntent(6, "p1"))
    layer.fail("p1")
    assert layer.status("p1") is Status.LEFT
    # a crash: memberlist declares it dead, no intent
    layer.fail("p2")
    assert layer.status("p2") is Status.FAILED
    # shoal's documented choice: a memberlist-only graceful leave reads "left" too
    layer.depart("p3")
    assert layer.status("p3") is Status.LEFT


def test_a_stray_leave_intent_about_us_is_refuted_with_a_newer_join_intent() -> None:
    layer = Layer(peers=3)
    layer.serf.joined(layer.now)
    layer.gossip()
    layer.receive(msg.LeaveIntent(50, "me"))
    assert layer.status("me") is Status.ALIVE
    sent = [m for _, m in layer.gossip()]
    joins = [m for m in sent if isinstance(m, msg.JoinIntent) and m.node == "me"]
    assert joins and all(j.ltime > 50 for j in joins)
    assert not [m for m in sent if isinstance(m, msg.LeaveIntent)], "the stray intent spread"
    assert layer.member("me").status_ltime == joins[0].ltime
    # a peer that saw the stray intent reads us alive again once our join arrives
    peer = Layer(name="peer", address=address_of(50))
    peer.add_peer("me", 0)
    peer.receive(msg.LeaveIntent(50, "me"))
    assert peer.status("me") is Status.LEAVING
    peer.receive(joins[0])
    assert peer.status("me") is Status.ALIVE
    # an intent older than our own join is simply ignored
    layer.receive(msg.LeaveIntent(joins[0].ltime, "me"))
    assert layer.gossip() == []


def test_intents_about_unknown_members_apply_when_they_show_up() -> None:
    layer = Layer(peers=1)
    before = layer.engine.queued_broadcasts
    layer.receive(msg.LeaveIntent(7, "late"))
    layer.receive(msg.JoinIntent(4, "early"))
    assert layer.engine.queued_broadcasts == before + 2, "news about unknown members spreads"
    layer.add_peer("late", 5)
    assert (layer.status("late"), layer.member("late").status_ltime) == (Status.LEAVING, 7)
    layer.add_peer("early", 6)
    assert (layer.status("early"), layer.member("early").status_ltime) == (Status.ALIVE, 4)
    # only the newest intent is kept; an older one is neither kept nor spread
    layer.receive(msg.JoinIntent(3, "x"))
    layer.receive(msg.LeaveIntent(5, "x"))
    queued = layer.engine.queued_broadcasts
    layer.receive(msg.JoinIntent(4, "x"))
    assert layer.engine.queued_broadcasts == queued
    layer.add_peer("x", 7)
    assert (layer.status("x"), layer.member("x").status_ltime) == (Status.LEAVING, 5)


def test_intents_about_unknown_members_are_forgotten_after_five_minutes() -> None:
    layer = Layer(peers=1)
    layer.receive(msg.LeaveIntent(7, "soon"))
    layer.receive(msg.LeaveIntent(8, "late"))
    layer.at(299.0)
    layer.add_peer("soon", 5)
    assert layer.status("soon") is Status.LEAVING
    layer.at(301.0)
    layer.add_peer("late", 6)
    assert (layer.status("late"), layer.member("late").status_ltime) == (Status.ALIVE, 0)


def test_stale_intents_are_ignored_and_not_regossiped() -> None:
    layer = Layer(peers=1)
    layer.receive(msg.JoinIntent(10, "p0"))
    queued = layer.engine.queued_broadcasts
    for stale in (msg.LeaveIntent(10, "p0"), msg.LeaveIntent(9, "p0"), msg.JoinIntent(10, "p0")):
        layer.receive(stale)
        assert layer.status("p0") is Status.ALIVE
    assert layer.engine.queued_broadcasts == queued
    layer.receive(msg.LeaveIntent(11, "p0"))
    assert layer.status("p0") is Status.LEAVING
    assert layer.engine.queued_broadcasts == queued + 1
    layer.receive(msg.JoinIntent(12, "p0"))  # a newer join cancels the leave
    assert layer.status("p0") is Status.ALIVE


def test_force_leave_makes_a_failed_member_left_and_prune_removes_it() -> None:
    layer = Layer(peers=4)
    layer.fail("p0")
    layer.fail("p1")
    assert layer.status("p0") is Status.FAILED
    layer.serf.force_leave("p0", False, layer.now)
    assert layer.status("p0") is Status.LEFT
    layer.serf.force_leave("p1", True, layer.now)
    assert "p1" not in [m.name for m in layer.serf.members()]
    (reaped,) = layer.pump()
    assert reaped == MemberReaped("p1")
    assert isinstance(reaped, MemberReaped) and reaped.member is not None
    assert (reaped.member.name, reaped.member.status) == ("p1", Status.LEFT)  # as last known
    intents = copies_of(layer, msg.LeaveIntent)
    assert sorted(intents, key=lambda m: m.ltime) == [msg.LeaveIntent(1, "p0", False)] * (
        limit_for(5)
    ) + [msg.LeaveIntent(2, "p1", True)] * limit_for(5)
    # another node's forced leave with prune, received by gossip
    layer.fail("p2")
    assert layer.receive(msg.LeaveIntent(40, "p2", True)) == [MemberReaped("p2")]
    with pytest.raises(SerfError, match="nobody"):
        layer.serf.force_leave("nobody", False, layer.now)


# ---------------------------------------------------------------------------------------------
# User events


def test_a_user_event_is_delivered_once_and_regossiped_once() -> None:
    layer = Layer(peers=3)
    event = msg.UserEvent(5, "deploy", b"v1", coalesce=True)
    assert layer.receive(event) == [SerfUserEvent(5, "deploy", b"v1", True)]
    queued = layer.engine.queued_broadcasts
    for _ in range(3):
        assert layer.receive(event) == []
    assert layer.engine.queued_broadcasts == queued
    assert copies_of(layer, msg.UserEvent) == [event] * limit_for(4)
    assert layer.receive(event) == []  # still remembered after the gossip is done
    assert layer.gossip() == []


def test_events_differing_in_time_or_payload_are_distinct() -> None:
    layer = Layer(peers=1)
    assert len(layer.receive(msg.UserEvent(5, "deploy", b"v1"))) == 1
    assert len(layer.receive(msg.UserEvent(5, "deploy", b"v2"))) == 1
    assert len(layer.receive(msg.UserEvent(6, "deploy", b"v1"))) == 1
    assert len(layer.receive(msg.UserEvent(5, "restart", b"v1"))) == 1


def test_events_older_than_the_512_slot_ring_are_dropped() -> None:
    layer = Layer(peers=1)
    assert len(layer.receive(msg.UserEvent(5, "a"))) == 1
    assert len(layer.receive(msg.UserEvent(517, "b"))) == 1  # the same slot as 5
    assert layer.receive(msg.UserEvent(5, "a")) == []  # too old now, not delivered again
    layer.receive(msg.UserEvent(1000, "tick"))  # the event clock is 1001
    queued = layer.engine.queued_broadcasts
    assert layer.receive(msg.UserEvent(488, "old")) == []
    assert layer.engine.queued_broadcasts == queued
    assert len(layer.receive(msg.UserEvent(489, "oldest-kept"))) == 1


def test_our_own_user_event_is_delivered_here_and_gossiped() -> None:
    layer = Layer(peers=3)
    layer.serf.user_event("deploy", b"v2", True, layer.now)
    assert layer.pump() == [SerfUserEvent(1, "deploy", b"v2", True)]
    assert copies_of(layer, msg.UserEvent) == [msg.UserEvent(1, "deploy", b"v2", True)] * (
        limit_for(4)
    )


def test_user_event_size_errors_name_the_size_and_the_limit() -> None:
    layer = Layer(peers=1)
    with pytest.raises(SerfError, match=r"user event is 513 bytes, over the limit of 512 bytes"):
        layer.serf.user_event("e", bytes(512), False, layer.now)
    # name + payload within the limit, but not once encoded
    encoded = len(msg.encode_serf(msg.UserEvent(1, "e", bytes(511))))
    queued = layer.engine.queued_broadcasts
    with pytest.raises(SerfError) as error:
        layer.serf.user_event("e", bytes(511), False, layer.now)
    assert f"{encoded} bytes" in str(error.value) and "512" in str(error.value)
    assert layer.serf.event_clock.time == 1
    assert layer.pump() == [] and layer.engine.queued_broadcasts == queued
    # a configured limit above Serf's hard maximum is capped at 9 KiB
    roomy = Layer(peers=1, event_size_limit=20_000)
    with pytest.raises(SerfError, match=r"9301 bytes, over the limit of 9216"):
        roomy.serf.user_event("e", bytes(9300), False, roomy.now)


# ---------------------------------------------------------------------------------------------
# Queries received


def test_a_node_filter_selects_by_name_but_the_query_still_spreads() -> None:
    layer = Layer(peers=2)
    queued = layer.engine.queued_broadcasts
    others = (msg.encode_node_filter(["p0", "p1"]),)
    assert layer.receive(query(filters=others, flags=ACK)) == []
    assert layer.sent() == [], "a node that is not picked must not ack"
    assert layer.engine.queued_broadcasts == queued + 1
    ours = (msg.encode_node_filter(["p0", "me"]),)
    (selected,) = layer.receive(query(name="named", filters=ours))
    assert isinstance(selected, SerfQuery) and selected.name == "named"


@pytest.mark.parametrize(
    ("tag", "expr", "picked"),
    [
        ("role", "^web", True),
        ("role", "eb-", True),  # Go's MatchString: unanchored
        ("role", "^db", False),
        ("dc", "^west$", False),
        ("zone", "^$", True),  # a missing tag reads as ""
        ("zone", ".", False),
        ("role", "(", False),  # a bad expression picks nobody
    ],
)
def test_a_tag_filter_selects_by_regular_expression(tag: str, expr: str, picked: bool) -> None:
    layer = Layer(peers=1, tags={"role": "web-1", "dc": "east"})
    events = layer.receive(query(filters=(msg.encode_tag_filter(tag, expr),)))
    assert bool(events) is picked


def test_every_filter_must_select_and_new_tags_count() -> None:
    layer = Layer(peers=1, tags={"role": "web"})
    both = (msg.encode_node_filter(["me"]), msg.encode_tag_filter("role", "^db$"))
    assert layer.receive(query(filters=both)) == []
    layer.serf.set_tags({"role": "db"}, layer.now)
    layer.pump()
    assert layer.member("me").tags == {"role": "db"}
    assert len(layer.receive(query(filters=both))) == 1


def test_an_ack_goes_straight_to_the_asker_when_asked_for() -> None:
    layer = Layer(peers=2)
    (incoming,) = layer.receive(query(id=5, flags=ACK))
    assert layer.sent() == [(ASKER, msg.QueryResponse(3, 5, "me", ACK))]
    assert isinstance(incoming, SerfQuery)
    layer.receive(query(id=6))
    assert layer.sent() == []


def test_respond_answers_the_asker_once_before_the_deadline() -> None:
    layer = Layer(peers=2)
    (incoming,) = layer.receive(query(id=8, name="uptime", payload=b"?", timeout=2.0))
    assert incoming == SerfQuery(3, 8, "uptime", b"?", "asker", ASKER, 0, layer.now + 2.0, 1)
    assert layer.serf.received_query(incoming.serial) == incoming
    with pytest.raises(SerfError, match=r"1100 bytes, 1.* over Serf's limit of 1024 bytes"):
        layer.serf.respond(incoming, bytes(1100), layer.now + 1.0)
    assert layer.sent() == []  # a refused answer leaves room for another
    layer.serf.respond(incoming, b"42s", layer.now + 1.0)
    assert layer.sent() == [(ASKER, msg.QueryResponse(3, 8, "me", 0, b"42s"))]
    with pytest.raises(SerfError, match="'uptime' was answered already"):
        layer.serf.respond(incoming, b"again", layer.now + 1.0)
    with pytest.raises(SerfError, match="'uptime' timed out"):
        layer.serf.respond(incoming, b"late", incoming.deadline + 0.5)
    assert layer.sent() == []


def received(layer: Layer, message: msg.Query) -> SerfQuery:
    """The query ``layer`` delivers for ``message``."""
    (incoming,) = layer.receive(message)
    assert isinstance(incoming, SerfQuery)
    return incoming


def test_received_queries_are_forgotten_past_their_deadline_or_the_limit() -> None:
    layer = Layer(peers=2)
    first = received(layer, query(ltime=3, timeout=1.0))
    layer.at(layer.now + 1.5)
    assert layer.serf.received_query(first.serial) is None  # timed out
    second = received(layer, query(ltime=4, timeout=60.0))
    assert second.serial == first.serial + 1
    later = [received(layer, query(ltime=5 + i, timeout=60.0)) for i in range(MAX_RECEIVED_QUERIES)]
    assert layer.serf.received_query(second.serial) is None  # the oldest, past the limit
    with pytest.raises(SerfError, match="forgotten unanswered: over 512 newer ones came"):
        layer.serf.respond(second, b"", layer.now)
    assert all(layer.serf.received_query(q.serial) == q for q in later)


def test_the_no_broadcast_flag_stops_the_regossip() -> None:
    layer = Layer(peers=2)
    queued = layer.engine.queued_broadcasts
    assert len(layer.receive(query(flags=msg.QUERY_FLAG_NO_BROADCAST))) == 1
    assert layer.engine.queued_broadcasts == queued
    assert len(layer.receive(query())) == 1
    assert layer.engine.queued_broadcasts == queued + 1


def test_duplicate_queries_are_ignored() -> None:
    layer = Layer(peers=2)
    first = query(id=14, flags=ACK)
    assert len(layer.receive(first)) == 1
    assert len(layer.sent()) == 1
    queued = layer.engine.queued_broadcasts
    assert layer.receive(first) == []
    assert layer.sent() == [] and layer.engine.queued_broadcasts == queued
    assert len(layer.receive(query(id=15))) == 1  # same time, another id: another query


def test_queries_older_than_the_512_slot_ring_are_dropped() -> None:
    layer = Layer(peers=2)
    layer.receive(query(ltime=1000))  # the query clock is 1001
    queued = layer.engine.queued_broadcasts
    assert layer.receive(query(ltime=488, flags=ACK)) == []
    assert layer.sent() == [] and layer.engine.queued_broadcasts == queued
    assert len(layer.receive(query(ltime=489))) == 1


def test_responses_are_relayed_through_alive_members_that_understand_relays() -> None:
    layer = Layer(peers=4)
    layer.add_peer("old", 7, vsn=bytes((1, 4, 2, 2, 5, 5)))  # memberlist protocol 4: no relays
    layer.fail("p3")
    relayers = {address_of(0), address_of(1), address_of(2)}
    for _ in range(10):
        q = query(flags=ACK, relay_factor=2)
        layer.receive(q)
        ack = msg.QueryResponse(3, q.id, "me", ACK)
        sent = layer.sent()
        direct = [(a, m) for a, m in sent if isinstance(m, msg.QueryResponse)]
        relays = [(a, m) for a, m in sent if isinstance(m, msg.Relay)]
        assert direct == [(ASKER, ack)]
        assert len(relays) == 2
        assert len({a for a, _ in relays}) == 2 and {a for a, _ in relays} <= relayers
        for _, relay in relays:
            assert (relay.dest_addr, relay.dest_port) == (ip4(ASKER[0]), ASKER[1])
            assert relay.dest_name == "asker"
            assert msg.decode_serf(relay.inner) == ack
    # a relay factor the cluster cannot honour (Serf needs factor + 1 members) sends none
    layer.receive(query(flags=ACK, relay_factor=6))
    assert [m for _, m in layer.sent() if isinstance(m, msg.Relay)] == []


def test_a_relayed_message_is_forwarded_to_its_destination() -> None:
    layer = Layer(peers=2)
    inner = msg.QueryResponse(3, 5, "p1", 0, b"answer")
    relay = msg.encode_relay(ip4(ASKER[0]), ASKER[1], "asker", msg.encode_serf(inner))
    queued = layer.engine.queued_broadcasts
    assert layer.receive_raw(relay) == []
    assert layer.sent() == [(ASKER, inner)]
    assert layer.engine.queued_broadcasts == queued


# ---------------------------------------------------------------------------------------------
# Queries asked


def test_the_asker_collects_acks_and_answers_until_the_timeout() -> None:
    layer = Layer(peers=3)
    qid = layer.serf.query("who", b"?", layer.now, request_ack=True, timeout=2.0)
    # we are a member too: the query reaches our own application, and we ack it
    (local,) = layer.pump()
    assert isinstance(local, SerfQuery) and (local.source_node, local.address) == ("me", ME)
    own_ack = msg.QueryResponse(1, qid, "me", ACK)
    assert layer.sent() == [(ME, own_ack)]
    assert layer.serf.query_clock.time == 2
    queries = copies_of(layer, msg.Query, seconds=1.0)
    assert queries == [
        msg.Query(
            ltime=1,
            id=qid,
            addr=ip4(ME[0]),
            port=ME[1],
            source_node="me",
            name="who",
            payload=b"?",
            flags=ACK,
            timeout_ns=2_000_000_000,
        )
    ] * limit_for(4)
    assert layer.receive(own_ack) == [QueryAck(qid, "me")]
    assert layer.receive(msg.QueryResponse(1, qid, "p0", ACK)) == [QueryAck(qid, "p0")]
    assert layer.receive(msg.QueryResponse(1, qid, "p0", ACK)) == []
    answer = msg.QueryResponse(1, qid, "p0", 0, b"a0")
    assert layer.receive(answer) == [QueryAnswer(qid, "p0", b"a0")]
    assert layer.receive(msg.QueryResponse(1, qid, "p0", 0, b"again")) == []
    assert layer.receive(msg.QueryResponse(1, qid + 1, "p1", 0, b"other id")) == []
    assert layer.receive(msg.QueryResponse(9, qid, "p1", 0, b"other time")) == []
    assert layer.at(1.99) == []
    assert layer.at(2.0) == [QueryDone(qid)]
    assert layer.receive(msg.QueryResponse(1, qid, "p2", 0, b"late")) == []


def test_the_default_query_timeout_follows_serf() -> None:
    layer = Layer(peers=3)
    layer.serf.query("q", b"", layer.now)
    layer.pump()
    (first, *_) = copies_of(layer, msg.Query, seconds=0.5)
    # GossipInterval * 16 * ceil(log10(4 + 1))
    assert first.timeout_ns == pytest.approx(QUIET.gossip_interval * 16 * 1e9)
    with pytest.raises(SerfError, match="over the limit of 1024"):
        layer.serf.query("big", bytes(1100), layer.now)
    assert layer.serf.query_clock.time == 2


def test_the_default_query_timeout_leaves_dead_members_out() -> None:
    layer = Layer(peers=9)
    layer.fail("p8")
    assert layer.serf.default_query_timeout() == pytest.approx(QUIET.gossip_interval * 16)


# Serf's DefaultQueryTimeout (serf/query.go:44-50) scales by memberlist's NumMembers()
# (memberlist.go:604-615): every member not dead or left, suspects included.
def test_the_default_query_timeout_counts_suspect_members() -> None:
    layer = Layer(peers=9)
    layer.feed(wire.Suspect(incarnation=1, node="p8", from_node="p0"))
    suspect = layer.engine.member("p8")
    assert suspect is not None and suspect.state is MemberState.SUSPECT
    assert layer.serf.default_query_timeout() == pytest.approx(QUIET.gossip_interval * 16 * 2)


# ---------------------------------------------------------------------------------------------
# Serf's internal queries


def test_conflict_queries_are_answered_with_the_member_record() -> None:
    layer = Layer(peers=1)
    layer.add_peer("web", 5, tags={"role": "web"})
    assert layer.receive(query(name="_serf_conflict", payload=b"web")) == []  # not for the app
    ((address, answer),) = layer.sent()
    assert address == ASKER and isinstance(answer, msg.QueryResponse)
    assert answer.from_node == "me"
    host, port = address_of(5)
    assert msg.decode_serf(answer.payload) == msg.ConflictResponse(
        msg.Member(
            name="web",
            addr=ip4(host),
            port=port,
            tags={"role": "web"},
            status=msg.MemberStatus.ALIVE,
            protocol_min=VSN[0],
            protocol_max=VSN[1],
            protocol_cur=VSN[2],
            delegate_min=VSN[3],
            delegate_max=VSN[4],
            delegate_cur=VSN[5],
        )
    )
    layer.receive(query(name="_serf_conflict", payload=b"nobody"))
    ((_, unknown),) = layer.sent()
    assert isinstance(unknown, msg.QueryResponse)
    assert msg.decode_serf(unknown.payload) == msg.ConflictResponse(None)
    layer.receive(query(name="_serf_conflict", payload=b"me"))  # about us: no answer
    assert layer.sent() == []


K1, K2, K3 = bytes(16), bytes(range(16)), bytes(range(32))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def key_query(
    layer: Layer, kind: str, key: bytes | None = None
) -> tuple[msg.KeyResponse, list[SerfEvent]]:
    """Ask ``layer`` one of Serf's key queries; its answer, and the events it produced (never
    the query itself: internal queries are not the application's)."""
    payload = b"" if key is None else msg.encode_serf(msg.KeyRequest(key))
    events = layer.receive(query(name=f"_serf_{kind}", payload=payload))
    assert not [e for e in events if isinstance(e, SerfQuery)]
    ((address, answer),) = layer.sent()
    assert address == ASKER and isinstance(answer, msg.QueryResponse)
    response = msg.decode_serf(answer.payload)
    assert isinstance(response, msg.KeyResponse)
    return response, events


def test_key_queries_act_on_the_engines_keyring() -> None:
    keyring = wire.Keyring([K1])
    layer = Layer(peers=1, keyring=keyring)
    assert layer.engine.wire_options.keyring is keyring
    ok = msg.KeyResponse(True)
    assert key_query(layer, "install-key", K2) == (ok, [KeyringChanged((K1, K2))])
    assert installed(keyring) == (K1, K2)
    assert key_query(layer, "use-key", K2) == (ok, [KeyringChanged((K2, K1))])
    assert keyring.primary_key == K2
    listed = msg.KeyResponse(True, "", (b64(K2), b64(K1)), b64(K2))
    assert key_query(layer, "list-keys") == (listed, [])
    refused = msg.KeyResponse(False, "Removing the primary key is not allowed")  # memberlist's
    assert key_query(layer, "remove-key", K2) == (refused, [])
    assert installed(keyring) == (K2, K1)
    assert key_query(layer, "remove-key", K1) == (ok, [KeyringChanged((K2,))])
    assert installed(keyring) == (K2,)
    unknown = msg.KeyResponse(False, "Requested key is not in the keyring")
    assert key_query(layer, "use-key", K3) == (unknown, [])
    response, events = key_query(layer, "install-key", b"short")
    assert (response.result, events, installed(keyring)) == (False, [], (K2,))
    assert "16, 24 or 32 bytes" in response.message
    # the new primary encrypts what the engine sends from now on
    layer.receive(query(flags=ACK))
    ((_, data),) = layer.engine.take_datagrams()
    assert wire.decode_packet(data, wire.WireOptions(keyring=wire.Keyring([K2])))


# memberlist's Keyring.RemoveKey is a no-op for a key it does not hold (keyring.go:113-124)
def test_removing_a_key_that_is_not_installed_succeeds_as_in_serf() -> None:
    layer = Layer(peers=1, keyring=wire.Keyring([K1]))
    assert key_query(layer, "remove-key", K2) == (msg.KeyResponse(True), [])


def test_key_queries_without_a_keyring_answer_as_serf_does() -> None:
    layer = Layer(peers=1)
    assert key_query(layer, "list-keys") == (
        msg.KeyResponse(False, "Keyring is empty (encryption not enabled)"),
        [],
    )
    for kind in ("install-key", "use-key", "remove-key"):
        assert key_query(layer, kind, K1) == (
            msg.KeyResponse(False, "No keyring to modify (encryption not enabled)"),
            [],
        )


# ---------------------------------------------------------------------------------------------
# Push-pull state


def test_push_pull_state_carries_left_members_status_times_and_events() -> None:
    a = Layer(peers=4, name="a", address=address_of(100))
    b = Layer(peers=4, name="b", address=address_of(101))
    a.serf.joined(a.now)
    a.receive(msg.JoinIntent(9, "p0"))
    a.receive(msg.LeaveIntent(4, "p1"))
    a.depart("p1")
    a.receive(msg.LeaveIntent(6, "p3"))
    a.depart("p3")
    a.serf.user_event("deploy", b"v1", False, a.now)
    a.receive(msg.UserEvent(7, "seen", b"x"))
    a.receive(query(ltime=20))
    b.fail("p3")
    state = msg.decode_serf(a.serf.local_state(False))
    assert isinstance(state, msg.SerfPushPull)
    assert sorted(state.left_members) == ["p1", "p3"]
    assert state.status_ltimes["p0"] == 9 and state.status_ltimes["a"] == 1

    b.serf.merge_remote_state(a.serf.local_state(False), False)
    assert b.member("p0").status_ltime == 9
    assert (b.status("p1"), b.member("p1").status_ltime) == (Status.LEAVING, 5)
    b.depart("p1")
    assert b.status("p1") is Status.LEFT
    assert (b.status("p3"), b.member("p3").status_ltime) == (Status.LEFT, 7)
    assert b.pump() == [] and b.events == [
        SerfUserEvent(1, "deploy", b"v1", False),
        SerfUserEvent(7, "seen", b"x", False),
    ]
    for clock in ("clock", "event_clock", "query_clock"):
        assert getattr(b.serf, clock).time == getattr(a.serf, clock).time
    # the status time of a member b has not met yet waits for it
    b.add_peer("a", 100)
    assert b.member("a").status_ltime == 1
    # merging the same state again delivers nothing new
    b.serf.merge_remote_state(a.serf.local_state(False), False)
    assert b.pump() == []


def test_push_pull_left_members_about_us_are_refuted() -> None:
    a = Layer(peers=1, name="a", address=address_of(100))
    a.add_peer("me", 0)
    a.receive(msg.LeaveIntent(3, "me"))
    a.depart("me")
    layer = Layer(peers=1)
    layer.add_peer("a", 100)
    layer.serf.merge_remote_state(a.serf.local_state(False), False)
    assert layer.status("me") is Status.ALIVE
    joins = copies_of(layer, msg.JoinIntent)
    assert joins and joins[0].node == "me" and joins[0].ltime > 4


# ---------------------------------------------------------------------------------------------
# Reaping


def test_failed_and_left_members_are_reaped_after_their_timeouts() -> None:
    layer = Layer(peers=4, reconnect_timeout=10.0, tombstone_timeout=20.0)
    layer.at(1.0)
    layer.fail("p0")
    layer.receive(msg.LeaveIntent(5, "p1"))
    layer.depart("p1")
    layer.fail("p2")
    layer.at(5.0)
    layer.feed(peer_alive("p2", 2, incarnation=2))  # p2 came back before its reap
    assert layer.status("p2") is Status.ALIVE
    assert layer.at(14.9) == []
    assert layer.at(15.0) == [MemberReaped("p0")]  # reaps run every 15 s
    assert layer.status("p1") is Status.LEFT
    assert layer.at(30.0) == [MemberReaped("p1")]
    assert sorted(m.name for m in layer.serf.members()) == ["me", "p2", "p3"]
    assert layer.at(3600.0) == []


# ---------------------------------------------------------------------------------------------
# What the layer relies on from the engine


# memberlist's Create -> setAlive (memberlist.go:450) calls aliveNode(bootstrap=true), which
# queues the local node's own alive (state.go:1067, 1093): a node that joins gossips its own
# existence to the members it learns of, besides its seed's re-broadcast.
def test_a_new_node_gossips_its_own_alive_to_the_members_it_learns() -> None:
    layer = Layer(peers=3)  # members learned as a join's push-pull teaches them
    sent = [m for _, m in layer.run(1.0)]
    assert [m for m in sent if isinstance(m, wire.Alive) and m.node == "me"]


# ---------------------------------------------------------------------------------------------
# Several layers on the simulated network


def simulated(*names: str) -> SerfCluster:
    cluster = SerfCluster(config=QUIET.replace(probe_interval=1.0, push_pull_interval=30.0))
    for name in names:
        cluster.add_serf(name, {"role": name})
    for name in names[1:]:
        cluster.join(name, names[0])
    cluster.run_for(3.0)
    return cluster


def test_simulated_leave_reads_left_crash_reads_failed_and_force_leave_spreads() -> None:
    cluster = simulated("a", "b", "c", "d")
    everyone = {n: "alive" for n in "abcd"}
    assert all(cluster.statuses(n) == everyone for n in "abcd")
    cluster.serf("d").leave(cluster.now)
    cluster.flush("d")
    cluster.run_for(3.0)
    assert {cluster.statuses(n)["d"] for n in "abc"} == {"left"}
    cluster.crash("c")
    cluster.run_for(30.0)
    assert {cluster.statuses(n)["c"] for n in "ab"} == {"failed"}
    cluster.serf("a").force_leave("c", False, cluster.now)
    cluster.flush("a")
    cluster.run_for(2.0)
    assert cluster.statuses("b")["c"] == "left"


def test_simulated_events_and_queries_reach_every_member_once() -> None:
    cluster = simulated("a", "b", "c")
    for name in "abc":
        cluster.taken(name)
    cluster.serf("b").user_event("deploy", b"v3", False, cluster.now)
    cluster.flush("b")
    cluster.run_for(2.0)
    for name in "abc":
        assert cluster.taken(name) == [SerfUserEvent(1, "deploy", b"v3", False)]
    qid = cluster.serf("a").query("uptime", b"", cluster.now, request_ack=True, timeout=3.0)
    cluster.flush("a")
    cluster.run_for(0.5)
    for name in "bc":
        (incoming,) = cluster.taken(name)
        assert isinstance(incoming, SerfQuery) and incoming.id == qid
        cluster.serf(name).respond(incoming, name.encode(), cluster.now)
        cluster.flush(name)
    cluster.run_for(3.0)
    got = cluster.taken("a")
    assert {e.node for e in got if isinstance(e, QueryAck)} == {"a", "b", "c"}
    assert {(e.node, e.payload) for e in got if isinstance(e, QueryAnswer)} == {
        ("b", b"b"),
        ("c", b"c"),
    }
    assert got[-1] == QueryDone(qid)


def test_simulated_join_replays_status_times_from_push_pull() -> None:
    cluster = simulated("a", "b")
    cluster.add_serf("late")
    cluster.join("late", "a")
    cluster.run_for(1.0)
    times = {m.name: m.status_ltime for m in cluster.serf("a").members()}
    late = {m.name: m.status_ltime for m in cluster.serf("late").members()}
    assert late["b"] == times["b"] > 0
