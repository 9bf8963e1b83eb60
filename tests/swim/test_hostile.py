"""Hostile and careless input at the engine: fake members, bad names, floods, replays.

Each test feeds what an attacker (or a broken peer) would send and checks the view stays sane:
bounded in size, free of unprintable names, served between the slices of a large merge.
"""

from __future__ import annotations

import logging
import random

import pytest

from swim import wire
from swim.config import Config
from swim.engine import Engine
from swim.members import MAX_NAME_BYTES, MemberState, peer_address
from swim.pushpull import MERGE_SLICE

from .conftest import ME, PLAIN, STRANGER, address_of, alive, feed, make_engine, sent_messages
from .test_push_pull import state

QUIET = Config.lan(compression=False, push_pull_interval=0.0, reconnect_interval=0.0)


def names(engine: Engine) -> set[str]:
    return {member.name for member in engine.members()}


# ---------------------------------------------------------------------------------------------
# Who may introduce new members


def test_a_stranger_may_introduce_itself_but_no_one_else() -> None:
    engine = make_engine(QUIET, peers=1)
    stranger_alive = alive("stranger", 50)
    # from an address other than the one it claims: it may not even introduce "itself"
    feed(engine, 0.0, alive("fake-1", 60), stranger_alive, alive("fake-2", 61), source=STRANGER)
    assert names(engine) == {"me", "p0"}
    feed(engine, 0.0, stranger_alive, alive("fake-3", 62), source=address_of(50))
    assert names(engine) == {"me", "p0", "stranger"}
    assert engine.statistics().members_refused == 4


def test_a_member_passes_news_of_others_on() -> None:
    engine = make_engine(QUIET, peers=1)
    feed(engine, 0.0, alive("newcomer", 40), source=address_of(0))
    assert "newcomer" in names(engine)


def test_trusting_strangers_takes_their_news_as_memberlist_does() -> None:
    engine = make_engine(QUIET.replace(trust_strangers=True))
    feed(engine, 0.0, alive("fake-1", 60), alive("fake-2", 61), source=STRANGER)
    assert names(engine) == {"me", "fake-1", "fake-2"}


def test_news_about_known_members_is_taken_from_anyone() -> None:
    """Strangers are kept from adding members, not from refuting or updating known ones."""
    engine = make_engine(QUIET, peers=2)
    feed(engine, 0.0, alive("p1", 1, incarnation=5, meta=b"v2"), source=STRANGER)
    member = engine.member("p1")
    assert member is not None and member.incarnation == 5 and member.meta == b"v2"


def test_one_datagram_introduces_at_most_its_share_of_new_members() -> None:
    config = QUIET.replace(max_new_members_per_message=3)
    engine = make_engine(config, peers=1)
    feed(engine, 0.0, *(alive(f"new-{i}", 10 + i) for i in range(5)), source=address_of(0))
    assert len(names(engine)) == 2 + 3
    feed(engine, 0.0, *(alive(f"new-{i}", 10 + i) for i in range(5)), source=address_of(0))
    assert len(names(engine)) == 2 + 5  # the rest come with the next news


def test_the_view_stops_growing_at_max_members_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine(QUIET.replace(max_members=4), peers=1)
    with caplog.at_level(logging.WARNING, logger="swim.engine"):
        for i in range(6):
            feed(engine, 0.0, alive(f"new-{i}", 10 + i))
    assert len(names(engine)) == 4
    assert engine.statistics().members_refused == 4
    lines = [r.getMessage() for r in caplog.records if "max_members" in r.getMessage()]
    assert len(lines) == 1, lines  # a flood of refusals is reported once per interval
    assert "raise max_members on every node" in lines[0]


def test_the_next_report_says_how_many_refusals_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine(QUIET.replace(max_members=2), peers=1)
    with caplog.at_level(logging.WARNING, logger="swim.engine"):
        for i in range(4):
            feed(engine, 0.0, alive(f"new-{i}", 10 + i))
        feed(engine, 11.0, alive("late", 30))
    reports = [r.getMessage() for r in caplog.records if "max_members" in r.getMessage()]
    assert len(reports) == 2 and "3 more like this" in reports[1]


# ---------------------------------------------------------------------------------------------
# Names and metadata


@pytest.mark.parametrize(
    "bad",
    [
        "x\n2026/12/01 12:00:00 [INFO] forged",
        "evil\x1b[2J\x1b[31m",
        "nul\x00byte",
        "",
        "n" * 10_000,
        "é" * (MAX_NAME_BYTES // 2 + 1),
        "tab\tname",
        "line\u2028separator",
    ],
    ids=["newline", "escape", "nul", "empty", "10000-chars", "long-utf8", "tab", "u2028"],
)
def test_a_member_with_an_unprintable_empty_or_huge_name_is_refused(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(QUIET, peers=1)
    with caplog.at_level(logging.DEBUG):
        feed(engine, 0.0, alive(bad, 40))
        engine.handle_stream(wire.PushPull([state(bad, 41, wire.NodeState.ALIVE)]), ME, 0.0)
    assert names(engine) == {"me", "p0"}
    assert engine.statistics().members_refused == 2
    for record in caplog.records:
        assert record.getMessage().isprintable(), record.getMessage()


def test_printable_unicode_names_and_spaces_are_fine() -> None:
    engine = make_engine(QUIET, peers=1)
    for index, name in enumerate(["web 1", "ノード", "db-1.dc1.example.com", "n" * MAX_NAME_BYTES]):
        feed(engine, 0.0, alive(name, 40 + index))
    assert len(names(engine)) == 6


def test_our_own_name_must_be_printable() -> None:
    with pytest.raises(ValueError, match="as a node name: the name holds control characters"):
        Engine("web\n1", ME, QUIET, random.Random(1))
    with pytest.raises(ValueError, match="the name is empty"):
        Engine("", ME, QUIET, random.Random(1))


def test_peer_metadata_past_our_limit_and_a_margin_is_refused() -> None:
    engine = make_engine(QUIET, peers=1)
    limit = QUIET.meta_max_size + 512
    feed(engine, 0.0, alive("big", 40, meta=bytes(limit + 1)))
    feed(engine, 0.0, alive("fits", 41, meta=bytes(limit)))
    assert names(engine) == {"me", "p0", "fits"}
    feed(engine, 0.0, alive("p0", 0, incarnation=2, meta=bytes(limit + 1)))  # an update
    member = engine.member("p0")
    assert member is not None and member.incarnation == 1 and member.meta == b""


# ---------------------------------------------------------------------------------------------
# Push-pull floods


def fakes(count: int, first: int = 100) -> list[wire.PushNodeState]:
    return [state(f"fake-{i}", first + i, wire.NodeState.ALIVE) for i in range(count)]


def test_a_push_pull_a_peer_opens_may_introduce_members_on_its_host_only() -> None:
    """A joiner's own state is at the host it connects from; other members it knows reach us
    by its gossip once it is one of us, or in the replies to our own push-pulls."""
    engine = make_engine(QUIET)
    joiner = state("joiner", 7, wire.NodeState.ALIVE)
    engine.handle_stream(wire.PushPull([*fakes(3), joiner]), (address_of(7)[0], 40000), 0.0)
    assert names(engine) == {"me", "joiner"}
    assert engine.statistics().members_refused == 3


def test_a_push_pull_a_peer_opens_introduces_at_most_its_share_of_new_members() -> None:
    config = QUIET.replace(max_new_members_per_message=5, trust_strangers=True)
    engine = make_engine(config, peers=2)
    known = [state("p0", 0, wire.NodeState.ALIVE, incarnation=3)]
    engine.handle_stream(wire.PushPull(known + fakes(50)), address_of(1), 0.0)
    while engine.next_deadline() == 0.0:
        engine.tick(0.0)
    assert len(names(engine)) == 3 + 5
    member = engine.member("p0")
    assert member is not None and member.incarnation == 3  # known members merge as before


def test_the_reply_to_our_own_join_may_bring_the_whole_cluster() -> None:
    engine = make_engine(QUIET.replace(max_new_members_per_message=5))
    engine.join([address_of(0)], 0.0)
    (request,) = engine.take_stream_requests()
    engine.stream_finished(request.stream_id, wire.PushPull(fakes(600), join=True), 0.1)
    while engine.next_deadline() == 0.1:
        engine.tick(0.1)
    assert len(names(engine)) == 601


def test_a_large_merge_is_done_a_slice_at_a_time_and_pings_are_answered_between() -> None:
    engine = make_engine(QUIET, peers=1)
    engine.join([address_of(0)], 0.0)
    (request,) = engine.take_stream_requests()
    engine.stream_finished(request.stream_id, wire.PushPull(fakes(3 * MERGE_SLICE)), 0.1)
    assert len(names(engine)) == 2 + MERGE_SLICE
    assert engine.next_deadline() == 0.1  # the rest is due at once, after other input
    ping = wire.Ping(seq_no=42, node="me", source_addr=bytes((10, 0, 0, 2)), source_port=7946)
    feed(engine, 0.1, ping, source=address_of(0))
    assert [m.seq_no for _, m in sent_messages(engine, wire.Ack)] == [42]
    slices = 0
    while engine.next_deadline() == 0.1:
        engine.tick(0.1)
        slices += 1
    assert slices == 2 and len(names(engine)) == 2 + 3 * MERGE_SLICE


def test_merges_queue_behind_each_other_in_order() -> None:
    engine = make_engine(QUIET, peers=1)
    first = [state("p0", 0, wire.NodeState.ALIVE, incarnation=2)] * (MERGE_SLICE + 1)
    engine.handle_stream(wire.PushPull(first), address_of(0), 0.0)
    engine.handle_stream(
        wire.PushPull([state("p0", 0, wire.NodeState.ALIVE, incarnation=3)]), address_of(0), 0.0
    )
    while engine.next_deadline() == 0.0:
        engine.tick(0.0)
    member = engine.member("p0")
    assert member is not None and member.incarnation == 3


def test_a_push_pull_announcing_more_than_max_members_is_refused_unread() -> None:
    engine = make_engine(QUIET.replace(max_members=100), peers=1)
    data = wire.encode_stream(wire.PushPull(fakes(101)), PLAIN)
    with pytest.raises(wire.DecodeError, match="announces 101 members, over the 100"):
        wire.StreamReader(engine.wire_options).receive_data(data)


# ---------------------------------------------------------------------------------------------
# Replays


def test_a_replayed_encrypted_ping_is_refused_and_counted() -> None:
    keyring = wire.Keyring([bytes(32)])
    engine = Engine("me", ME, QUIET, random.Random(1), keyring=keyring)
    feed_encrypted = wire.encode_packet(
        [wire.encode(alive("p0", 0)), wire.encode(wire.Ping(seq_no=1, node="me"))],
        engine.wire_options,
    )
    engine.receive_datagram(feed_encrypted, address_of(0), 0.0)
    engine.receive_datagram(feed_encrypted, address_of(0), 0.1)
    acks = [
        message
        for _, data in engine.take_datagrams()
        for message in wire.decode_packet(data, engine.wire_options)
        if isinstance(message, wire.Ack)
    ]
    assert len(acks) == 1
    assert engine.statistics().replays_refused == 1
    assert engine.member("p0") is not None
    assert engine.member("p0").state is MemberState.ALIVE  # type: ignore[union-attr]


def test_replays_are_not_checked_when_the_window_is_off() -> None:
    keyring = wire.Keyring([bytes(32)])
    engine = Engine("me", ME, QUIET.replace(replay_window=0), random.Random(1), keyring=keyring)
    packet = wire.encode_packet([wire.encode(wire.Ping(seq_no=1, node="me"))], engine.wire_options)
    engine.receive_datagram(packet, address_of(0), 0.0)
    engine.receive_datagram(packet, address_of(0), 0.1)
    assert engine.statistics().replays_refused == 0
    assert len(engine.take_datagrams()) == 2


def test_an_ipv4_peer_on_an_ipv6_socket_reads_as_its_ipv4_address() -> None:
    assert peer_address("::ffff:10.0.0.2", 7946) == ("10.0.0.2", 7946)
    assert peer_address("2001:db8::1", 7946) == ("2001:db8::1", 7946)
