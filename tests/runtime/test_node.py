"""The runtime on real loopback sockets: under asyncio and trio alike where the test waits only
for what happens at once, in virtual time (trio's MockClock) where it waits for protocol timers."""

from __future__ import annotations

import errno
import functools
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
import trio.testing
from anyio.abc import SocketStream, TaskGroup, TaskStatus

from swim import wire
from swim.config import Config
from swim.engine import MetadataTooLarge
from swim.events import (
    Isolated,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
    Reconnected,
)
from swim.members import MemberState
from swim.node import (
    FIRST_BYTES_TIMEOUT,
    RECEIVE_BATCH,
    BindError,
    EventsLost,
    IsolatedError,
    JoinError,
    Node,
    SendError,
    parse_seed,
)
from swim.stack import UNREADABLE_REPLY

FAST = Config.local(compression=False)
LOOPBACK = "127.0.0.1"


def seed_of(node: Node) -> str:
    host, port = node.address
    return f"{host}:{port}"


class Cluster:
    """Nodes started in one nursery, each in a cancel scope so that a test can crash it."""

    def __init__(self, nursery: TaskGroup) -> None:
        self.nursery = nursery
        self.nodes: dict[str, Node] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.stopped: dict[str, anyio.Event] = {}

    async def start(self, name: str, config: Config = FAST, **kwargs: object) -> Node:
        stopped = self.stopped[name] = anyio.Event()

        async def run(task_status: TaskStatus[Node] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                with anyio.CancelScope() as scope:
                    self.scopes[name] = scope
                    async with Node(config, name=name, bind=(LOOPBACK, 0), **kwargs) as node:  # type: ignore[arg-type]
                        task_status.started(node)
                        await anyio.sleep_forever()
            finally:
                stopped.set()  # the node has exited: its sockets are closed

        node: Node = await self.nursery.start(run)
        self.nodes[name] = node
        return node

    async def crash(self, name: str) -> None:
        """Stop a node without a leave: it says nothing, and its sockets are closed when this
        returns."""
        self.scopes[name].cancel()
        with anyio.fail_after(5):
            await self.stopped[name].wait()

    async def started(self, count: int, config: Config = FAST) -> list[Node]:
        nodes = [await self.start(f"n{i}", config) for i in range(count)]
        for node in nodes[1:]:
            await node.join([seed_of(nodes[0])])
        return nodes


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    async with anyio.create_task_group() as nursery:
        yield Cluster(nursery)
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool], limit: float = 60.0) -> None:
    """Wait until ``condition`` holds, at most ``limit`` seconds (virtual ones, when the test
    runs on a virtual clock)."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.05)


async def read(stream: SocketStream, size: int) -> bytes:
    """Up to ``size`` bytes, or b"" once the peer has closed (or reset) the stream."""
    try:
        return await stream.receive(size)
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return b""


def states(node: Node) -> dict[str, str]:
    return {m.name: m.state.value for m in node.members()}


@pytest.mark.both_backends
async def test_nodes_join_and_converge() -> None:
    async with cluster() as c:
        nodes = await c.started(5)
        everyone = {f"n{i}": "alive" for i in range(5)}
        await wait_until(lambda: all(states(n) == everyone for n in nodes))


@pytest.mark.both_backends
async def test_port_zero_binds_udp_and_tcp_on_one_free_port() -> None:
    async with Node(FAST, name="solo", bind=(LOOPBACK, 0)) as node:
        host, port = node.address
        assert host == LOOPBACK and port > 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.connect((host, port))  # the TCP listener is on the same port


async def test_a_crash_is_detected_as_suspect_then_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as c:
        nodes = await c.started(4)
        await wait_until(lambda: all(len(states(n)) == 4 for n in nodes))
        events = nodes[0].events()
        await c.crash("n3")
        seen: list[type] = []
        with anyio.fail_after(60):
            async for event in events:
                if getattr(getattr(event, "member", None), "name", None) == "n3":
                    seen.append(type(event))
                    if isinstance(event, MemberFailed):
                        break
        assert seen[0] is MemberSuspect and seen[-1] is MemberFailed
        # dead everywhere; a node that marked it dead early may have reaped it by now
        await wait_until(lambda: all(states(n).get("n3", "dead") == "dead" for n in nodes[:3]))


@pytest.mark.both_backends
async def test_graceful_leave_shows_left() -> None:
    async with cluster() as c:
        nodes = await c.started(3)
        await wait_until(lambda: all(len(states(n)) == 3 for n in nodes))
        await nodes[2].leave()
        await wait_until(lambda: all(states(n)["n2"] == "left" for n in nodes[:2]), limit=5)


@pytest.mark.both_backends
async def test_metadata_update_reaches_the_others() -> None:
    async with cluster() as c:
        nodes = await c.started(3)
        events = nodes[1].events()
        await nodes[0].update_metadata(b"role=web")
        with anyio.fail_after(10):
            async for event in events:
                if isinstance(event, MemberUpdated) and event.member.name == "n0":
                    assert (event.old_meta, event.member.meta) == (b"", b"role=web")
                    break
        with pytest.raises(MetadataTooLarge, match="over the limit of 512"):
            await nodes[0].update_metadata(bytes(600))


@pytest.mark.both_backends
async def test_user_messages_best_effort_and_reliable() -> None:
    received: list[bytes] = []
    async with cluster() as c:
        a = await c.start("a")
        await c.start("b", on_message=lambda data, source: received.append(data))
        await c.nodes["b"].join([seed_of(a)])
        await a.send("b", b"datagram")
        await a.send_reliable("b", b"stream")
        await wait_until(lambda: len(received) == 2, limit=5)
        assert sorted(received) == [b"datagram", b"stream"]
        await c.crash("b")
        with pytest.raises(SendError, match="could not deliver to b"):
            await a.send_reliable("b", b"lost")


@pytest.mark.both_backends
async def test_a_datagram_the_system_refuses_is_counted_and_the_node_goes_on() -> None:
    received: list[bytes] = []
    async with cluster() as c:
        a = await c.start("a")
        await c.start("b", on_message=lambda data, source: received.append(data))
        await c.nodes["b"].join([seed_of(a)])
        await a.send("b", bytes(70_000))  # past what one UDP datagram holds: EMSGSIZE
        assert a.statistics().runtime.send_errors == 1
        await a.send("b", b"after")
        await wait_until(lambda: received == [b"after"], limit=5)


@pytest.mark.both_backends
async def test_a_slow_subscriber_is_told_how_many_events_it_lost() -> None:
    async with cluster() as c:
        a = await c.start("a", event_buffer=2)
        events = a.events()
        for i in range(5):
            node = await c.start(f"m{i}")
            await node.join([seed_of(a)])
        await wait_until(lambda: len(a.members()) == 6, limit=10)
        first = await events.__anext__()
        assert isinstance(first, EventsLost) and first.count >= 3
        second = await events.__anext__()
        assert isinstance(second, MemberJoined)


@pytest.mark.both_backends
async def test_join_error_names_each_seed_and_why() -> None:
    async with Node(FAST, name="lonely", bind=(LOOPBACK, 0)) as node:
        with socket.socket() as closed:  # a port that nobody listens on
            closed.bind((LOOPBACK, 0))
            dead_port = closed.getsockname()[1]
        with pytest.raises(JoinError) as error:
            await node.join([f"{LOOPBACK}:{dead_port}", "no-port:", "localhost:0", seed_of(node)])
        failures = error.value.failures
        assert "refused" in failures[f"{LOOPBACK}:{dead_port}"].lower()
        assert "no-port:" in failures
        assert "port 0" in failures["localhost:0"]
        assert failures[seed_of(node)] == "this is our own address"
        assert str(error.value).startswith("could not join the cluster: ")
        given = [f"{LOOPBACK}:{dead_port}", "no-port:", "localhost:0", seed_of(node)]
        assert list(failures) == given  # in the order given
        assert f"{LOOPBACK}:{dead_port}: Connection refused; " in str(error.value)
        assert "(" not in str(error.value).split("no-port:")[0]  # no address tuples


@pytest.mark.both_backends
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({"keyring": wire.Keyring([bytes(16)])}, {}),
        ({}, {"keyring": wire.Keyring([bytes(16)])}),
        ({"keyring": wire.Keyring([bytes(16)])}, {"keyring": wire.Keyring([bytes(range(16))])}),
        ({"config": FAST.replace(label="blue")}, {}),
        ({}, {"config": FAST.replace(label="blue")}),
    ],
    ids=["key-vs-none", "none-vs-key", "other-key", "label-vs-none", "none-vs-label"],
)
async def test_joining_with_another_key_or_label_says_it_is_likely_a_mismatch(
    ours: dict[str, object], theirs: dict[str, object]
) -> None:
    def node(name: str, options: dict[str, object]) -> Node:
        config = options.get("config", FAST)
        assert isinstance(config, Config)
        keyring = options.get("keyring")
        assert keyring is None or isinstance(keyring, wire.Keyring)
        return Node(config, name=name, bind=(LOOPBACK, 0), keyring=keyring)

    async with node("member", theirs) as member, node("newcomer", ours) as newcomer:
        with pytest.raises(JoinError) as error:
            await newcomer.join([seed_of(member)])
    assert error.value.failures == {seed_of(member): UNREADABLE_REPLY}
    assert "likely an encryption key or label mismatch" in str(error.value)


@pytest.mark.both_backends
async def test_bind_errors_say_whether_the_port_or_the_host_is_wrong() -> None:
    with socket.socket(type=socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as in_use:
            async with Node(FAST, name="a", bind=(LOOPBACK, port)):
                pass
    assert in_use.value.errno == errno.EADDRINUSE
    assert str(in_use.value) == (
        f"cannot bind UDP and TCP on {LOOPBACK}:{port}: the port is in use; "
        "choose another port or stop what uses it"
    )
    with pytest.raises(BindError) as elsewhere:
        async with Node(FAST, name="a", bind=("192.0.2.1", 7946)):  # TEST-NET-1: not ours
            pass
    assert elsewhere.value.errno == errno.EADDRNOTAVAIL
    assert "192.0.2.1 is not an address of this machine; bind to one of its" in str(elsewhere.value)
    assert "another port" not in str(elsewhere.value)


def test_seeds_parse_with_names_ipv6_and_default_ports() -> None:
    assert parse_seed("10.0.0.1:7000", 7946) == (None, "10.0.0.1", 7000)
    assert parse_seed("db/10.0.0.1", 7946) == ("db", "10.0.0.1", 7946)
    assert parse_seed("[::1]:8000", 7946) == (None, "::1", 8000)
    assert parse_seed("::1", 7946) == (None, "::1", 7946)
    with pytest.raises(ValueError, match="bad port"):
        parse_seed("host:http", 7946)


async def test_isolation_is_reported_and_ends_when_peers_return(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = FAST.replace(isolation_timeout=5.0)
    async with cluster() as c:
        a = await c.start("a", config, rejoin_interval=1.0)
        b = await c.start("b", config)
        await a.join([seed_of(b)])
        events = a.events()
        port = b.address[1]
        await c.crash("b")
        with anyio.fail_after(30):
            async for event in events:
                if isinstance(event, Isolated):
                    break
        assert a.isolated
        # b comes back on the same port; a's rejoin attempts through its seed find it
        back: Node = await c.nursery.start(_node_on_port, "b", config, port)
        assert back.address[1] == port
        with anyio.fail_after(60):
            async for event in events:
                if isinstance(event, Reconnected):
                    break
        assert not a.isolated


async def _node_on_port(
    name: str,
    config: Config,
    port: int,
    task_status: TaskStatus[Node] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with Node(config, name=name, bind=(LOOPBACK, port)) as node:
        task_status.started(node)
        await anyio.sleep_forever()


async def test_exit_when_isolated_raises_out_of_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = FAST.replace(isolation_timeout=2.0)
    async with cluster() as c:
        b = await c.start("b", config)
        with pytest.raises(IsolatedError, match="isolated for"):
            async with Node(
                config, name="a", bind=(LOOPBACK, 0), exit_when_isolated=10.0, rejoin_interval=1.0
            ) as a:
                await a.join([seed_of(b)])
                await c.crash("b")
                await anyio.sleep(120)


async def test_exit_when_isolated_fires_when_the_grace_time_passes_not_at_the_next_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The rejoin wait starts at 30 s and doubles; the node still gives up 10 s in."""
    config = FAST.replace(isolation_timeout=2.0)
    async with cluster() as c:
        b = await c.start("b", config)
        isolated_at = gave_up_at = 0.0
        with pytest.raises(IsolatedError, match="isolated for 10 s"):
            async with Node(
                config, name="a", bind=(LOOPBACK, 0), exit_when_isolated=10.0, rejoin_interval=30.0
            ) as a:
                events = a.events()
                await a.join([seed_of(b)])
                await c.crash("b")
                with anyio.fail_after(60):
                    async for event in events:
                        if isinstance(event, Isolated):
                            isolated_at = anyio.current_time()
                            break
                try:
                    await anyio.sleep(120)
                finally:
                    gave_up_at = anyio.current_time()
        assert 10.0 <= gave_up_at - isolated_at <= 11.0


def _served(node: Node, count: int) -> bool:
    return node.statistics().runtime.inbound_streams == count


def ping_packet(seq_no: int, options: wire.WireOptions) -> bytes:
    return wire.encode_packet([wire.encode(wire.Ping(seq_no=seq_no))], options)


@pytest.mark.both_backends
async def test_junk_datagrams_and_streams_are_dropped_and_counted() -> None:
    key = bytes(16)
    async with Node(FAST, name="target", bind=(LOOPBACK, 0), keyring=wire.Keyring([key])) as node:
        host, port = node.address
        async with await anyio.create_udp_socket(local_host=LOOPBACK) as sender:
            for junk in (b"", b"\x00", b"\xff" * 100, bytes(70_000)[:65_000], b"\x0c\x00\x00"):
                await sender.sendto(junk, host, port)
            plain_ping = wire.encode_packet([wire.encode(wire.Ping(seq_no=1))], wire.WireOptions())
            await sender.sendto(plain_ping, host, port)  # unencrypted: refused
            wrong_key = wire.WireOptions(keyring=wire.Keyring([bytes(range(16))]))
            await sender.sendto(
                wire.encode_packet([wire.encode(wire.Ping(seq_no=2))], wrong_key), host, port
            )
            # it still answers a proper ping
            right = wire.WireOptions(keyring=wire.Keyring([key]))
            await sender.sendto(
                wire.encode_packet([wire.encode(wire.Ping(seq_no=3))], right), host, port
            )
            with anyio.fail_after(5):
                data, _ = await sender.receive()
            assert wire.decode_packet(data, right)[0] == wire.Ack(seq_no=3)
        for junk in (b"\x06\xff\xff", b"\x0a\xff\xff\xff\xff", b"\x00" * 10):
            stream = await anyio.connect_tcp(host, port)
            async with stream:
                await stream.send(junk)
                await stream.send_eof()
                with anyio.fail_after(15):
                    assert await read(stream, 100) == b""
        statistics = node.statistics()
        assert statistics.engine.decode_errors >= 6
        assert statistics.runtime.stream_errors >= 3


@pytest.mark.both_backends
async def test_a_burst_of_pings_longer_than_one_read_is_answered_in_full() -> None:
    """The node reads datagrams a burst at a time: every ping of a burst several times longer
    than one read gets its ack."""
    options = wire.WireOptions()
    count = 3 * RECEIVE_BATCH + 5
    async with Node(FAST, name="target", bind=(LOOPBACK, 0)) as node:
        host, port = node.address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            # a plain socket: AnyIO's asyncio datagram queue would drop acks past 100
            sender.bind((LOOPBACK, 0))
            sender.setblocking(False)
            for seq_no in range(count):
                ping = wire.encode_packet([wire.encode(wire.Ping(seq_no=seq_no))], options)
                sender.sendto(ping, (host, port))
            acked: set[int] = set()
            with anyio.fail_after(5):
                while len(acked) < count:
                    await anyio.wait_readable(sender)
                    data = sender.recv(65_536)
                    acked.update(
                        message.seq_no
                        for message in wire.decode_packet(data, options)
                        if isinstance(message, wire.Ack)
                    )
        assert acked == set(range(count))


@pytest.mark.both_backends
async def test_leaving_the_block_releases_every_socket() -> None:
    async with Node(FAST, name="short", bind=(LOOPBACK, 0)) as node:
        host, port = node.address
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind((host, port))  # free again


@pytest.mark.both_backends
async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support")
    async with (
        Node(FAST, name="v6a", bind=("::1", 0)) as a,
        Node(FAST, name="v6b", bind=("::1", 0)) as b,
    ):
        await b.join([f"[::1]:{a.address[1]}"])
        await wait_until(lambda: states(a).get("v6b") == "alive", limit=10)
        assert a.member("v6b") is not None
        assert a.member("v6b").address == ("::1", b.address[1])  # type: ignore[union-attr]
        assert a.member("v6b").state is MemberState.ALIVE  # type: ignore[union-attr]


@pytest.mark.both_backends
async def test_graceful_leave_is_not_a_failure() -> None:
    async with cluster() as c:
        nodes = await c.started(3)
        await wait_until(lambda: all(len(states(n)) == 3 for n in nodes))
        events = nodes[0].events()
        await nodes[1].leave()
        await c.crash("n1")
        with anyio.fail_after(30):
            async for event in events:
                if getattr(getattr(event, "member", None), "name", None) == "n1":
                    assert isinstance(event, MemberLeft)
                    break


@pytest.mark.both_backends
async def test_peers_that_vanish_mid_stream_do_not_take_the_node_down() -> None:
    async with Node(FAST, name="sturdy", bind=(LOOPBACK, 0)) as node:
        host, port = node.address
        push_pull = wire.encode_stream(wire.PushPull(join=True), wire.WireOptions())
        for served, cut in enumerate((3, len(push_pull)), 1):  # mid-request, a whole request
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            raw.connect((host, port))
            raw.sendall(push_pull[:cut])
            raw.close()  # linger 0: a reset, not a clean close
            await wait_until(functools.partial(_served, node, served))
        # still serving
        async with await anyio.create_udp_socket(local_host=LOOPBACK) as sender:
            await sender.sendto(ping_packet(9, wire.WireOptions()), host, port)
            with anyio.fail_after(5):
                data, _ = await sender.receive()
        assert wire.decode_packet(data, wire.WireOptions())[0] == wire.Ack(seq_no=9)
        assert node.statistics().runtime.internal_errors == 0


@pytest.mark.both_backends
async def test_inbound_streams_beyond_the_cap_are_refused() -> None:
    async with Node(FAST, name="busy", bind=(LOOPBACK, 0), max_inbound_streams=1) as node:
        host, port = node.address
        slow = await anyio.connect_tcp(host, port)
        async with slow:
            await slow.send(b"\x06")  # the start of a push-pull: it takes the only slot
            await wait_until(functools.partial(_served, node, 1), limit=5)
            extra = await anyio.connect_tcp(host, port)
            async with extra:
                await extra.send(b"\x06")
                with anyio.fail_after(0.5):  # closed at once, long before the 1 s deadline
                    assert await read(extra, 10) == b""
        assert node.statistics().runtime.inbound_streams_refused == 1
        assert node.statistics().runtime.inbound_streams == 1


async def test_silent_connections_take_no_slot_and_joins_get_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with anyio.create_task_group() as nursery:
        cluster = Cluster(nursery)
        seed = await cluster.start("seed", max_inbound_streams=2)
        host, port = seed.address
        silent = [await anyio.connect_tcp(host, port) for _ in range(6)]
        await anyio.sleep(0.01)
        joiner = await cluster.start("joiner")
        with anyio.fail_after(1):
            assert await joiner.join([seed_of(seed)]) == 1
        for stream in silent:
            with anyio.fail_after(FIRST_BYTES_TIMEOUT + 1):  # closed once their time is up
                assert await read(stream, 10) == b""
            await stream.aclose()
        assert seed.statistics().runtime.inbound_streams_silent == 6
        assert seed.statistics().runtime.inbound_streams_refused == 0
        nursery.cancel_scope.cancel()


@pytest.mark.both_backends
async def test_past_the_bound_on_silent_connections_the_oldest_is_closed_first() -> None:
    async with Node(FAST, name="busy", bind=(LOOPBACK, 0), max_inbound_streams=1) as node:
        host, port = node.address
        silent = [await anyio.connect_tcp(host, port) for _ in range(6)]  # 4 may wait
        await anyio.sleep(0.01)
        with anyio.fail_after(0.1):
            assert [await read(stream, 10) for stream in silent[:2]] == [b"", b""]
        assert node.statistics().runtime.inbound_streams_silent == 2
        for stream in silent:
            await stream.aclose()


async def test_each_membership_change_is_one_info_line_worded_as_serfs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """What an operator greps for (serf's ``serf: EventMemberJoin: NAME ADDR``), once per
    member that sees the change; a converged cluster then stays quiet at INFO."""

    def lines() -> list[str]:
        said = [r.getMessage() for r in caplog.records if r.name == "swim.serf"]
        caplog.clear()
        return sorted(said)

    caplog.set_level(logging.INFO, "swim.serf")
    async with cluster() as c:
        nodes = [await c.start(f"n{i}", tags={}) for i in range(3)]
        for node in nodes[1:]:
            await node.join([seed_of(nodes[0])])
        await wait_until(lambda: all(len(states(n)) == 3 for n in nodes))
        await anyio.sleep(60)  # steady state: probes and push-pulls, nothing to report
        seen = [f"EventMemberJoin: n{i} {LOOPBACK}" for i in range(3)]
        assert lines() == sorted(line for line in seen for _ in range(2))  # each by the two others

        await nodes[1].set_tags({"role": "web"})
        tagged = {("n1", "role", "web")}
        await wait_until(
            lambda: all(
                {(m.name, *t) for m in n.serf.members() for t in m.tags.items()} == tagged
                for n in nodes
            )
        )
        assert set(lines()) == {"EventMemberUpdate: n1"}

        await c.crash("n2")
        await wait_until(lambda: all(states(n)["n2"] == "dead" for n in nodes[:2]))
        assert lines() == [f"EventMemberFailed: n2 {LOOPBACK}"] * 2
        await nodes[0].force_leave("n2", prune=True)
        await wait_until(lambda: all("n2" not in states(n) for n in nodes[:2]))
        assert lines() == ["EventMemberReap: n2"] * 2

        await nodes[1].leave()
        await wait_until(lambda: states(nodes[0])["n1"] == "left")
        assert lines() == [f"EventMemberLeave: n1 {LOOPBACK}"] * 2  # its own, and n0's
