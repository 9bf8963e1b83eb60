"""Serf user events as Serf delivers them: coalesced in bursts, not replayed on join."""

from __future__ import annotations

import random

from swim.config import Config
from swim.engine import Engine
from swim.events import UserMessage
from swim.serf.layer import Serf, SerfUserEvent
from swim.wire import serf as msg

SOURCE = ("10.9.9.9", 1)


def layer(coalesce: float = 3.0, quiescent: float = 1.0) -> Serf:
    engine = Engine("me", ("10.0.0.1", 7946), Config.local(), random.Random(1))
    return Serf(engine, {}, random.Random(2), coalesce_period=coalesce, quiescent_period=quiescent)


def arrive(serf: Serf, now: float, ltime: int, name: str, coalesce: bool = True) -> None:
    event = msg.UserEvent(ltime, name, f"v{ltime}".encode(), coalesce)
    serf.engine.timers.now = now
    serf.notify(UserMessage(msg.encode_serf(event), SOURCE))


def delivered(serf: Serf, now: float) -> list[tuple[str, int]]:
    serf.engine.tick(now)
    return [(e.name, e.ltime) for e in serf.take_events() if isinstance(e, SerfUserEvent)]


def test_a_burst_delivers_only_the_newest_event_of_each_name_once_quiet() -> None:
    serf = layer()
    arrive(serf, 0.0, 5, "deploy")
    arrive(serf, 0.5, 7, "deploy")
    arrive(serf, 0.6, 6, "deploy")  # older than what is held: dropped
    arrive(serf, 0.9, 3, "restart")
    assert delivered(serf, 1.8) == []
    assert delivered(serf, 1.9) == [("deploy", 7), ("restart", 3)]  # 1 s of quiet
    assert delivered(serf, 10.0) == []


def test_a_steady_stream_is_flushed_at_the_coalesce_period() -> None:
    serf = layer()
    out: list[tuple[str, int]] = []
    for step in range(8):  # one event every 0.5 s: never 1 s of quiet
        arrive(serf, step * 0.5, 10 + step, "tick")
        out += delivered(serf, step * 0.5)
    assert out == [("tick", 16)]  # flushed at 3.0 s, holding the newest by then


def test_events_that_may_not_be_coalesced_pass_at_once() -> None:
    serf = layer()
    arrive(serf, 0.0, 5, "deploy", coalesce=False)
    assert delivered(serf, 0.0) == [("deploy", 5)]


def test_without_a_coalesce_period_every_event_is_delivered() -> None:
    serf = layer(coalesce=0.0)
    arrive(serf, 0.0, 5, "deploy")
    arrive(serf, 0.1, 6, "deploy")
    assert delivered(serf, 0.1) == [("deploy", 5), ("deploy", 6)]


def test_a_joiner_without_replay_ignores_the_clusters_past_events() -> None:
    old = msg.RecentEvents(3, (msg.RecentEvent("deploy", b"v1"),))
    state = msg.encode_serf(msg.SerfPushPull(ltime=2, event_ltime=9, events=(old,), query_ltime=1))
    for replay, expected in ((False, []), (True, [("deploy", 3)])):
        serf = layer(coalesce=0.0)
        serf.ignore_old_events = not replay
        serf.merge_remote_state(state, join=True)
        assert delivered(serf, 0.0) == expected
