"""Dissemination: retransmit counts, replacement, gossip fan-out, fair share, compound splits."""

from __future__ import annotations

from swim import wire
from swim.broadcasts import BroadcastQueue, retransmit_limit
from swim.config import Config
from swim.engine import Engine
from swim.wire.packet import check_crc

from .conftest import alive, feed, make_engine, sent

QUIET = Config.lan(compression=False, push_pull_interval=0.0, reconnect_interval=0.0)


def run(engine: Engine, until: float) -> list[tuple[tuple[str, int], list[wire.Message]]]:
    out: list[tuple[tuple[str, int], list[wire.Message]]] = []
    now = 0.0
    while True:
        deadline = engine.next_deadline()
        if deadline is None or deadline > until:
            return out
        now = deadline
        engine.tick(now)
        out += sent(engine)
        engine.take_stream_requests()
        # answer every ping, so that probes succeed and nothing else is gossiped
        for dst, messages in out[-5:]:
            for m in messages:
                if isinstance(m, wire.Ping):
                    feed(engine, now, wire.Ack(seq_no=m.seq_no), source=dst)


def test_retransmit_limit_formula() -> None:
    assert [retransmit_limit(4, n) for n in (1, 9, 10, 99, 100, 999)] == [4, 4, 8, 8, 12, 12]


def test_a_broadcast_is_sent_exactly_its_retransmit_count() -> None:
    for peers, expected in ((4, 4), (19, 8)):  # n = 5 -> 4 x ceil(log10 6); n = 20 -> 8
        engine = make_engine(QUIET, peers=peers)
        engine.broadcast(b"hello", 0.0)
        packets = run(engine, 30.0)
        copies = sum(
            1
            for _, msgs in packets
            for m in msgs
            if isinstance(m, wire.User) and m.payload == b"hello"
        )
        assert copies == expected


def test_newer_news_about_a_member_replaces_the_queued_message() -> None:
    engine = make_engine(QUIET, peers=4)
    feed(engine, 0.0, alive("p0", 0, incarnation=2))
    feed(engine, 0.0, alive("p0", 0, incarnation=3))
    packets = run(engine, 30.0)
    incarnations = {
        m.incarnation
        for _, msgs in packets
        for m in msgs
        if isinstance(m, wire.Alive) and m.node == "p0"
    }
    assert incarnations == {3}


def test_each_gossip_round_reaches_gossip_nodes_members() -> None:
    engine = make_engine(QUIET.replace(probe_interval=100.0, probe_timeout=1.0), peers=10)
    for i in range(40):
        engine.broadcast(bytes(30) + bytes([i]), 0.0)
    first_round = engine.next_deadline()
    assert first_round is not None
    engine.tick(first_round)
    destinations = [dst for dst, _ in engine.take_datagrams()]
    assert len(destinations) == 3 and len(set(destinations)) == 3


def test_user_broadcasts_get_a_share_of_packets_full_of_membership_news() -> None:
    def first_user_round(share: float) -> int:
        config = QUIET.replace(user_broadcast_share=share, gossip_nodes=1)
        engine = make_engine(config, peers=3)
        for i in range(200):
            feed(engine, 0.0, alive(f"new-{i}", 10 + i))
        engine.broadcast(b"deploy v2 " + bytes(200), 0.0)  # larger than what membership leaves
        rounds = 0
        now = 0.0
        while rounds < 500:
            now = engine.next_deadline() or now
            engine.tick(now)
            for _, messages in sent(engine):
                rounds += 1
                if any(isinstance(m, wire.User) for m in messages):
                    return rounds
        return rounds

    assert first_user_round(0.5) == 1
    assert first_user_round(0.0) > 20  # memberlist's behaviour: starved behind membership


def test_packets_of_many_small_messages_are_split_at_255_parts() -> None:
    engine = make_engine(QUIET.replace(gossip_nodes=1), peers=1)
    for i in range(400):
        engine.broadcast(bytes([i % 256]), 0.0, key=f"k{i}")
    now = engine.next_deadline() or 0.0
    engine.tick(now)
    datagrams = engine.take_datagrams()
    assert len(datagrams) >= 2
    parts = [wire.decode_packet(data, wire.WireOptions()) for _, data in datagrams]
    assert sum(len(p) for p in parts) > 255
    for _, data in datagrams:
        inner = check_crc(data)  # the peer speaks protocol 5
        assert inner[0] == wire.MessageType.COMPOUND and inner[1] <= 255


def test_queue_orders_least_sent_then_largest_and_fires_on_done() -> None:
    queue = BroadcastQueue()
    done: list[str] = []
    queue.queue(b"small", key="a", on_done=lambda: done.append("a"))
    queue.queue(b"much larger", key="b")
    assert queue.take(2, 100, transmit_limit=2) == [b"much larger", b"small"]
    queue.queue(b"new", key="c")
    assert queue.take(2, 7, transmit_limit=2) == [b"new"]  # never sent beats sent once
    assert queue.take(2, 100, transmit_limit=2) == [b"much larger", b"small", b"new"]
    assert done == ["a"] and len(queue) == 0
    queue.queue(b"x", key="d", on_done=lambda: done.append("d"))
    queue.queue(b"y", key="d")  # replaced: the old one is finished
    assert done == ["a", "d"]
