"""Our own new metadata goes to every alive member directly, twice, besides its gossip."""

from __future__ import annotations

from collections import Counter

from swim import wire
from swim.config import Config
from swim.state import ANNOUNCE_PASSES

from .conftest import VSN, address_of, make_engine, sent_messages

QUIET = Config.lan(compression=False, push_pull_interval=0.0, reconnect_interval=0.0)


def test_new_metadata_is_sent_to_every_alive_member_in_turn() -> None:
    engine = make_engine(QUIET, peers=9)
    engine.update_meta(b"v2", 0.0)
    told: Counter[tuple[str, int]] = Counter()
    now = 0.0
    end = (9 * ANNOUNCE_PASSES / QUIET.gossip_nodes + 1) * QUIET.gossip_interval
    while (deadline := engine.next_deadline()) is not None and deadline <= end:
        now = deadline
        engine.tick(now)
        for destination, message in sent_messages(engine, wire.Alive):
            if message.node == "me" and message.meta == b"v2":
                told[destination] += 1
        engine.take_stream_requests()
    for i in range(9):
        assert told[address_of(i)] >= ANNOUNCE_PASSES  # the sweep's, and maybe gossip's too
    assert now <= end


def test_a_joiner_announces_itself_to_every_member_its_seed_told_it_of() -> None:
    engine = make_engine(QUIET)
    engine.join([address_of(0)], 0.0)
    (request,) = engine.take_stream_requests()
    states = [
        wire.PushNodeState(
            name=f"p{i}",
            addr=bytes(int(part) for part in address_of(i)[0].split(".")),
            port=address_of(i)[1],
            incarnation=1,
            state=wire.NodeState.ALIVE,
            vsn=VSN,
        )
        for i in range(6)
    ]
    engine.stream_finished(request.stream_id, wire.PushPull(states, join=True), 0.1)
    told: Counter[tuple[str, int]] = Counter()
    while (deadline := engine.next_deadline()) is not None and deadline <= 1.0:
        engine.tick(deadline)
        for destination, message in sent_messages(engine, wire.Alive):
            if message.node == "me":
                told[destination] += 1
        engine.take_stream_requests()
    assert all(told[address_of(i)] >= ANNOUNCE_PASSES for i in range(6))
