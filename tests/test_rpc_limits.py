"""What RPC clients may cost the server: a few kilobytes per open connection, freed as soon as
it closes without waiting for the cyclic garbage collector; a limit on open connections;
connections closed when they never shake hands or send a command, and never once they have;
the counters that show it.  Loopback sockets; timers on trio's MockClock, but for the real
`serf` CLI, which runs in real time.  The rules themselves (the deadlines, the stream limit) are
tested on the sans-IO connection (tests/test_rpc_connection.py)."""

from __future__ import annotations

import gc
import json
import logging
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing

from swim import rpc
from swim.rpc import (
    FIRST_COMMAND_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    RpcClient,
    RpcConnectionError,
    RpcServer,
    RpcServerStatistics,
    RpcUserEvent,
    ServerConnection,
    serve_rpc,
)
from tests.test_rpc import KEY, WAIT, FakeBackend, Raw, serf


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def agent(nursery: trio.Nursery, backend: FakeBackend) -> str:
    port = await nursery.start(serve_rpc, backend, "127.0.0.1", 0)
    return f"127.0.0.1:{port}"


@pytest.fixture
async def secured_agent(nursery: trio.Nursery, backend: FakeBackend) -> str:
    port = await nursery.start(partial(serve_rpc, backend, "127.0.0.1", 0, KEY))
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


async def closed_after(raw: Raw, seconds: float) -> float:
    """How long after now the server closes the connection; fails beyond ``seconds`` + WAIT."""
    start = trio.current_time()
    with trio.fail_after(seconds + WAIT):
        assert await closed(raw)
    return trio.current_time() - start


async def closed(raw: Raw) -> bool:
    try:
        return await raw.stream.receive_some() == b""
    except trio.BrokenResourceError:  # closed with our bytes unread: a reset
        return True


def open_connections() -> int:
    return sum(isinstance(o, ServerConnection) for o in gc.get_objects())


async def all_gone() -> bool:
    """Whether every connection is freed, once the server has had time to see its client
    leave."""
    with trio.move_on_after(WAIT):
        while open_connections():
            await trio.sleep(0.01)
    return open_connections() == 0


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


async def silent(raw: Raw) -> None:
    await closed_after(raw, FIRST_COMMAND_TIMEOUT)
    await raw.stream.aclose()


async def garbage(raw: Raw) -> None:
    await raw.stream.send_all(msgpack.packb({"Command": 7, "Seq": 1}))
    assert await raw.closed_by_server()
    await raw.stream.aclose()


@pytest.mark.parametrize(
    "ending",
    [members_then_close, stream_then_close, query_then_close, silent, garbage],
    ids=["members", "stream", "query", "timeout", "garbage"],
)
async def test_a_closed_connection_is_freed_at_once(
    agent: str,
    backend: FakeBackend,
    no_cyclic_gc: None,
    autojump_clock: trio.testing.MockClock,
    ending: Callable[[Raw], Awaitable[None]],
) -> None:
    assert open_connections() == 0
    raws = [await Raw.open(agent) for _ in range(3)]
    assert open_connections() == 3
    for raw in raws:
        await ending(raw)
    assert await all_gone(), "a closed connection is still in memory: a reference cycle?"
    assert backend.subscribers == []


def server_bytes() -> int:
    """Memory allocated, and not yet freed, by the RPC module and msgpack (whose C Unpacker
    counts where it was created); the clients here use none of it."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(True, str(Path(rpc.__file__).parent / "*")),
            tracemalloc.Filter(True, "*/msgpack/*"),
        ]
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
    await trio.testing.wait_all_tasks_blocked()  # the server has seen it close
    async with RpcClient.connect(agent) as client:
        assert len(await client.members()) == 4
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("swim.rpc") and r.levelno >= logging.WARNING
    ]
    assert warnings == [
        "the agent serves at most 3 RPC connections and has that many open: closing new ones "
        "until some close.  Is a client opening connections and not closing them?",
        "serving new RPC connections again, after refusing 5",
    ]


async def test_the_limit_must_allow_a_connection(backend: FakeBackend) -> None:
    with pytest.raises(ValueError, match="max_connections is 0; it must be at least 1"):
        await serve_rpc(backend, "127.0.0.1", 0, max_connections=0)


@pytest.mark.parametrize("sent", [b"", msgpack.packb({"Command": "handshake", "Seq": 0})[:5]])
async def test_a_connection_that_does_not_shake_hands_is_closed(
    agent: str,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    sent: bytes,
) -> None:
    caplog.set_level(logging.INFO, "swim.rpc")
    raw = await Raw.open(agent, handshake=False)
    await raw.stream.send_all(sent)
    assert await closed_after(raw, HANDSHAKE_TIMEOUT) == pytest.approx(HANDSHAKE_TIMEOUT)
    assert f"it did not shake hands within {HANDSHAKE_TIMEOUT:g} s of connecting" in caplog.text


async def test_a_connection_that_sends_no_command_is_closed(
    agent: str, autojump_clock: trio.testing.MockClock
) -> None:
    raw = await Raw.open(agent)
    assert await closed_after(raw, FIRST_COMMAND_TIMEOUT) == pytest.approx(FIRST_COMMAND_TIMEOUT)


async def test_a_connection_that_has_sent_a_command_may_stay_idle(
    agent: str, backend: FakeBackend, autojump_clock: trio.testing.MockClock
) -> None:
    streaming = await Raw.open(agent)
    await streaming.send({"Command": "stream", "Seq": 1}, {"Type": "user"})
    assert await streaming.receive() == {"Seq": 1, "Error": ""}
    polling = await Raw.open(agent)
    await polling.send({"Command": "stats", "Seq": 1})
    assert await polling.receive() == {"Seq": 1, "Error": ""}
    assert (await polling.receive())["agent"] == {"name": "web-1"}
    await trio.sleep(10 * FIRST_COMMAND_TIMEOUT)  # quiet: nothing either way
    backend.emit(RpcUserEvent("deploy", b"v5", coalesce=False, ltime=9))
    assert await streaming.receive() == {"Seq": 1, "Error": ""}
    assert (await streaming.receive())["Payload"] == b"v5"
    await polling.send({"Command": "members", "Seq": 2})
    assert await polling.receive() == {"Seq": 2, "Error": ""}
    assert len((await polling.receive())["Members"]) == 4


async def test_a_long_first_command_is_not_cut(
    agent: str, backend: FakeBackend, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow_join(addresses: list[str], replay: bool) -> int:
        await trio.sleep(2 * FIRST_COMMAND_TIMEOUT)  # a join through seeds that do not answer
        return 0

    backend.join = slow_join  # type: ignore[method-assign]
    raw = await Raw.open(agent)
    await raw.send({"Command": "join", "Seq": 1}, {"Existing": ["10.0.0.9"], "Replay": False})
    await trio.sleep(3 * FIRST_COMMAND_TIMEOUT)
    assert await raw.receive() == {"Seq": 1, "Error": ""}
    assert await raw.receive() == {"Num": 0}


async def test_serf_members_works_beside_idle_connections_and_fails_fast_when_full(
    nursery: trio.Nursery, backend: FakeBackend
) -> None:
    """Real time: serf is another process."""
    port = await nursery.start(partial(serve_rpc, backend, "127.0.0.1", 0, max_connections=2))
    rpc_addr = f"-rpc-addr=127.0.0.1:{port}"
    streaming = await Raw.open(f"127.0.0.1:{port}")
    await streaming.send({"Command": "stream", "Seq": 1}, {"Type": "*"})
    assert await streaming.receive() == {"Seq": 1, "Error": ""}
    status, out = await serf("members", rpc_addr)
    assert (status, out.split()[:3]) == (0, ["web-1", "10.0.0.1:7946", "alive"])
    idle = await Raw.open(f"127.0.0.1:{port}")
    status, out = await serf("members", rpc_addr)
    assert status == 1
    assert out.startswith("Error connecting to Serf agent: ")
    await idle.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()  # the server has seen it close
    status, out = await serf("members", rpc_addr, "-format=json")
    assert status == 0, out
    assert [m["name"] for m in json.loads(out)["members"]] == ["web-1", "web-2", "db-1", "v6"]


async def test_the_server_counts_what_its_clients_did(
    nursery: trio.Nursery, backend: FakeBackend, autojump_clock: trio.testing.MockClock
) -> None:
    server = RpcServer(max_connections=2)
    port = await nursery.start(server.serve, backend, "127.0.0.1", 0)
    agent = f"127.0.0.1:{port}"
    assert server.statistics() == RpcServerStatistics(0, 0, 0, 0, 0, {})
    async with RpcClient.connect(agent) as client:
        await client.members()
        await client.members()
        idle = await Raw.open(agent, handshake=False)
        refused = Raw(await trio.open_tcp_stream("127.0.0.1", port))
        assert await refused.closed_by_server()
        assert await closed_after(idle, HANDSHAKE_TIMEOUT) == pytest.approx(HANDSHAKE_TIMEOUT)
        await garbage(await Raw.open(agent))
        await trio.testing.wait_all_tasks_blocked()  # the server has seen them close
        stats = server.statistics()
    assert stats == RpcServerStatistics(
        connections_open=1,
        connections_accepted=3,
        connections_refused=1,
        timeouts=1,
        protocol_errors=1,
        requests={"handshake": 2, "members": 2},
    )
    with pytest.raises(TypeError):
        stats.requests["members"] = 0  # type: ignore[index]
    with pytest.raises(AttributeError):
        stats.timeouts = 0  # type: ignore[misc]
