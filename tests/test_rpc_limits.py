"""What an RPC connection may cost the server: a few kilobytes while it is open, freed as soon as
it closes without waiting for the cyclic garbage collector.  Loopback sockets; timers on trio's
MockClock."""

from __future__ import annotations

import gc
import logging
import tracemalloc
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from functools import partial

import msgpack
import pytest
import trio

from swim import rpc
from swim.rpc import RpcClient, RpcConnectionError, _Connection, serve_rpc
from tests.test_rpc import WAIT, FakeBackend, Raw


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def agent(nursery: trio.Nursery, backend: FakeBackend) -> str:
    port = await nursery.start(serve_rpc, backend, "127.0.0.1", 0)
    return f"127.0.0.1:{port}"


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees memory: what a cycle holds stays visible."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def open_connections() -> list[weakref.ref[_Connection]]:
    return [weakref.ref(o) for o in gc.get_objects() if isinstance(o, _Connection)]


async def gone(refs: list[weakref.ref[_Connection]]) -> bool:
    """Whether every connection in ``refs`` is freed, once the server has had time to see
    its client leave."""
    with trio.move_on_after(WAIT):
        while any(ref() is not None for ref in refs):
            await trio.sleep(0.01)
    return all(ref() is None for ref in refs)


async def members_then_close(raw: Raw) -> None:
    await raw.send({"Command": "members", "Seq": 1})
    assert await raw.receive() == {"Seq": 1, "Error": ""}
    assert len((await raw.receive())["Members"]) == 4
    await raw.stream.aclose()


async def stream_then_close(raw: Raw) -> None:
    await raw.send({"Command": "stream", "Seq": 1}, {"Type": "*"})
    assert await raw.receive() == {"Seq": 1, "Error": ""}
    await raw.stream.aclose()  # without a stop


async def query_then_close(raw: Raw) -> None:
    await raw.send({"Command": "query", "Seq": 1}, {"Name": "uptime", "Timeout": 10**9})
    assert await raw.receive() == {"Seq": 1, "Error": ""}
    await raw.stream.aclose()  # while the answers are still coming


async def garbage(raw: Raw) -> None:
    await raw.stream.send_all(msgpack.packb({"Command": 7, "Seq": 1}))
    assert await raw.closed_by_server()
    await raw.stream.aclose()


@pytest.mark.parametrize(
    "ending",
    [members_then_close, stream_then_close, query_then_close, garbage],
    ids=["members", "stream", "query", "garbage"],
)
async def test_a_closed_connection_is_freed_at_once(
    agent: str,
    backend: FakeBackend,
    no_cyclic_gc: None,
    autojump_clock: trio.testing.MockClock,
    ending: Callable[[Raw], Awaitable[None]],
) -> None:
    assert open_connections() == []
    raws = [await Raw.open(agent) for _ in range(3)]
    refs = open_connections()
    assert len(refs) == 3
    for raw in raws:
        await ending(raw)
    assert await gone(refs), "a closed connection is still in memory: a reference cycle?"
    assert backend.subscribers == []


def server_bytes() -> int:
    """Memory allocated, and not yet freed, by the RPC module and msgpack (whose C Unpacker
    counts where it was created); the clients here use none of it."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, rpc.__file__), tracemalloc.Filter(True, "*/msgpack/*")]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def test_an_open_connection_costs_the_server_a_few_kilobytes(
    agent: str, autojump_clock: trio.testing.MockClock
) -> None:
    # msgpack's C Unpacker allocated 1 MiB per connection for requests of a few hundred bytes.
    await members_then_close(await Raw.open(agent))  # whatever the first connection sets up
    tracemalloc.start()
    try:
        before = server_bytes()
        raws = [await Raw.open(agent) for _ in range(20)]
        for raw in raws:
            await raw.send({"Command": "members", "Seq": 1})
            assert await raw.receive() == {"Seq": 1, "Error": ""}
            assert len((await raw.receive())["Members"]) == 4
        per_connection = (server_bytes() - before) / len(raws)
    finally:
        tracemalloc.stop()
    assert per_connection < 8 * 1024


async def test_connections_over_the_limit_are_closed_while_the_others_go_on(
    nursery: trio.Nursery,
    backend: FakeBackend,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    port = await nursery.start(partial(serve_rpc, backend, "127.0.0.1", 0, max_connections=3))
    agent = f"127.0.0.1:{port}"
    served = [await Raw.open(agent) for _ in range(3)]
    start = trio.current_time()
    for _ in range(4):
        refused = Raw(await trio.open_tcp_stream("127.0.0.1", port))
        assert await refused.closed_by_server()
        await refused.stream.aclose()
    with pytest.raises(RpcConnectionError, match="as many RPC connections as it allows"):
        async with RpcClient.connect(agent):
            pass
    assert trio.current_time() == start  # closed at once, not by a timeout
    for seq, raw in enumerate(served):
        await raw.send({"Command": "members", "Seq": seq})
        assert await raw.receive() == {"Seq": seq, "Error": ""}
        assert len((await raw.receive())["Members"]) == 4
    await served.pop().stream.aclose()
    with trio.fail_after(WAIT):
        while True:  # until the server has seen that one close
            with suppress(RpcConnectionError):
                async with RpcClient.connect(agent) as client:
                    assert len(await client.members()) == 4
                    break
            await trio.sleep(0.01)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "swim.rpc" and r.levelno >= logging.WARNING
    ]
    assert warnings == [
        "3 RPC connections are open, the most this agent serves: closing new ones until some "
        "close.  Is a client opening connections and not closing them?",
        "serving new RPC connections again, after refusing 5",
    ]


async def test_the_limit_must_allow_a_connection(backend: FakeBackend) -> None:
    with pytest.raises(ValueError, match="max_connections is 0; it must be at least 1"):
        await serve_rpc(backend, "127.0.0.1", 0, max_connections=0)
