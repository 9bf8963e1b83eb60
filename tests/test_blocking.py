"""The blocking facade: a Node and service discovery for code that is not async.

These run in real time (the facade owns a thread and a real event loop) on 127.0.0.1; each
wait is for something the protocol does at once on loopback (a join, a gossiped event, a
query's answers), always bounded, never a sleep.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from discovery import ServiceHost
from discovery.blocking import BlockingDiscovery
from discovery.catalog import Change, ChangeKind, Instance
from swim.blocking import BlockingNode, ClosedError, WouldBlockError
from swim.config import Config
from swim.events import MemberJoined, MemberLeft
from swim.node import IsolatedError
from swim.serf.layer import SerfUserEvent

LOCAL = Config.local()
BACKENDS = ["trio", "asyncio"]


def seed_of(node: BlockingNode) -> str:
    host, port = node.address
    return f"{host}:{port}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pair(backend: str) -> Iterator[tuple[BlockingNode, BlockingNode]]:
    with (
        BlockingNode(LOCAL, backend=backend, name="a", bind=("127.0.0.1", 0), tags={}) as a,
        BlockingNode(LOCAL, backend=backend, name="b", bind=("127.0.0.1", 0), tags={}) as b,
    ):
        yield a, b


def test_a_blocking_node_joins_hears_events_and_answers(
    pair: tuple[BlockingNode, BlockingNode],
) -> None:
    a, b = pair
    events = a.events(timeout=10.0)
    assert b.join([seed_of(a)]) == 1
    joined = next(e for e in events if isinstance(e, MemberJoined))
    assert joined.member.name == "b"
    assert sorted(m.name for m in b.members()) == ["a", "b"]
    b.user_event("deploy", b"v2")
    delivered = next(e for e in events if isinstance(e, SerfUserEvent))
    assert (delivered.name, delivered.payload) == ("deploy", b"v2")
    result = a.query("ping", timeout=0.5)  # Serf's own ping query: every member acks it
    assert result.done.is_set()
    b.set_tags({"role": "db"})
    assert b.tags == {"role": "db"}


def test_callbacks_hear_every_event_on_the_nodes_thread(
    pair: tuple[BlockingNode, BlockingNode],
) -> None:
    a, b = pair
    heard: list[object] = []
    a.on_event(heard.append)
    events = a.events(timeout=10.0)
    b.join([seed_of(a)])
    next(e for e in events if isinstance(e, MemberJoined))
    assert any(isinstance(e, MemberJoined) for e in heard)


def test_closing_leaves_gracefully_and_then_refuses_calls(backend: str) -> None:
    with BlockingNode(LOCAL, backend=backend, name="stay", bind=("127.0.0.1", 0), tags={}) as a:
        events = a.events(timeout=10.0)
        b = BlockingNode(LOCAL, backend=backend, name="go", bind=("127.0.0.1", 0), tags={})
        b.join([seed_of(a)])
        b.close()
        left = next(e for e in events if isinstance(e, MemberLeft))
        assert left.member.name == "go"
        with pytest.raises(ClosedError, match="make a new BlockingNode"):
            b.members()
        b.close()  # twice: nothing happens


def test_blocking_from_inside_an_event_loop_says_what_to_do_instead() -> None:
    async def inside() -> None:
        BlockingNode(LOCAL, name="x", bind=("127.0.0.1", 0))

    with pytest.raises(WouldBlockError, match=r"use swim.node.Node \(async with Node"):
        asyncio.run(inside())


def test_blocking_discovery_finds_watches_and_fails_over(backend: str) -> None:
    with (
        BlockingNode(LOCAL, backend=backend, name="s1", bind=("127.0.0.1", 0), tags={}) as s1,
        BlockingNode(LOCAL, backend=backend, name="s2", bind=("127.0.0.1", 0), tags={}) as s2,
        BlockingNode(LOCAL, backend=backend, name="client", bind=("127.0.0.1", 0), tags={}) as c,
    ):
        host1, hosting1 = s1.portal.enter(ServiceHost(s1.node))
        host2, hosting2 = s2.portal.enter(ServiceHost(s2.node))
        try:
            s2.join([seed_of(s1)])
            c.join([seed_of(s1)])
            with BlockingDiscovery(c) as discovery:
                watch = discovery.watch("api", timeout=10.0)
                s1.portal.call(host1.register, "api", 1)
                s2.portal.call(host2.register, "api", 2)
                added = {
                    change.instance.node for _, change in zip(range(2), _added(watch), strict=False)
                }
                assert added == {"s1", "s2"}
                discovery.require(["api"], timeout=5.0)
                assert len(discovery.instances("api")) == 2
                tried: list[str] = []

                def request(instance: Instance) -> str:
                    tried.append(instance.node)
                    if len(tried) == 1:
                        raise ConnectionRefusedError("the first one is down")
                    return instance.node

                assert discovery.call("api", request, timeout=5.0) == tried[1] != tried[0]
        finally:
            hosting2.__exit__(None, None, None)
            hosting1.__exit__(None, None, None)


def _added(watch: Iterator[object]) -> Iterator[Change]:
    for change in watch:
        if isinstance(change, Change) and change.kind is ChangeKind.ADDED:
            yield change


def test_closing_ends_an_iteration_another_thread_is_waiting_in(backend: str) -> None:
    node = BlockingNode(LOCAL, backend=backend, name="a", bind=("127.0.0.1", 0), tags={})
    heard: list[object] = []
    reader = threading.Thread(target=lambda: heard.extend(node.events()))  # no timeout
    reader.start()
    node.user_event("before-close")
    node.close()
    reader.join(timeout=10.0)
    assert not reader.is_alive()


def test_a_callback_cannot_block_its_own_thread_and_a_raising_one_hears_the_next_event(
    pair: tuple[BlockingNode, BlockingNode], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    refused: queue.Queue[tuple[str, Exception | None]] = queue.Queue()

    def callback(event: object) -> None:
        if not isinstance(event, SerfUserEvent):
            return
        for blocking in (a.members, a.close):
            try:
                blocking()
            except WouldBlockError as exc:
                refused.put((event.name, exc))
            else:
                refused.put((event.name, None))
        raise ValueError("a bug in the callback")

    a.on_event(callback)
    b.join([seed_of(a)])
    b.user_event("first", b"")
    b.user_event("second", b"")
    outcomes = [refused.get(timeout=10.0) for _ in range(4)]
    assert sorted(name for name, _ in outcomes) == ["first", "first", "second", "second"]
    assert all(exc is not None and "queue.Queue" in str(exc) for _, exc in outcomes)
    assert "a bug in the callback" in caplog.text
    assert not a.portal.closed and len(a.members()) == 2  # the refused close did nothing


def test_a_node_that_stops_by_itself_ends_waits_with_the_reason(backend: str) -> None:
    config = LOCAL.replace(isolation_timeout=0.5)
    with BlockingNode(LOCAL, backend=backend, name="b", bind=("127.0.0.1", 0), tags={}) as b:
        a = BlockingNode(
            config,
            backend=backend,
            name="a",
            bind=("127.0.0.1", 0),
            tags={},
            exit_when_isolated=0.5,
            rejoin_interval=0.5,
        )
        events = a.events(timeout=60.0)
        a.join([seed_of(b)])
        b.close(leave=False)  # a crash, as a sees it
        with pytest.raises(ClosedError, match=r"stopped by itself \(isolated for 0.5 s"):
            for _ in events:
                pass
        with pytest.raises(ClosedError, match="stopped by itself"):
            a.members()
        with pytest.raises(IsolatedError):
            a.close()
        a.close()  # closed now: nothing happens


EXITING_WITH_A_THREAD_ITERATING = """
import threading
from swim.blocking import BlockingNode
from swim.config import Config

def start():  # no reference to the node outlives this function
    node = BlockingNode(
        Config.local(), backend="{backend}", name="forgotten", bind=("127.0.0.1", 0), tags={{}}
    )
    node.join(["{seed}"])
    threading.Thread(target=lambda: [None for _ in node.events()]).start()  # not a daemon

start()
"""


def test_an_unreferenced_node_leaves_at_exit_even_while_a_thread_iterates(backend: str) -> None:
    with BlockingNode(LOCAL, name="watcher", bind=("127.0.0.1", 0), tags={}) as watcher:
        events = watcher.events(timeout=20.0)
        script = EXITING_WITH_A_THREAD_ITERATING.format(backend=backend, seed=seed_of(watcher))
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        left = next(e for e in events if isinstance(e, MemberLeft))
        assert left.member.name == "forgotten"
