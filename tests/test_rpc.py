"""Serf's agent RPC over loopback sockets: our server and client together, the server driven by
hand, the `swim` client commands, the real `serf` CLI against our server, and our client against
a real `serf agent`.  The protocol's rules, byte by byte, are tested without sockets on the
sans-IO connections (tests/test_rpc_connection.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from functools import partial
from typing import Any

import msgpack
import pytest
import trio

from swim.cli import main, members_json, members_text
from swim.rpc import (
    AUTH_REQUIRED,
    HANDSHAKE_REQUIRED,
    INVALID_AUTH_TOKEN,
    INVALID_FILTER,
    MAX_REQUEST_BYTES,
    REGEX_ERROR_PREFIX,
    STREAM_BUFFER,
    UNSUPPORTED_COMMAND,
    RpcClient,
    RpcConnectionError,
    RpcError,
    RpcEvent,
    RpcKeyError,
    RpcKeyResult,
    RpcMember,
    RpcMemberEvent,
    RpcQuery,
    RpcQueryRecord,
    RpcUserEvent,
    filter_members,
    host_port,
    parse_event_filter,
    parse_rpc_addr,
    serve_rpc,
)
from swim.wire.serf import Coordinate

KEY = "s3cret"
KEY_1 = "T9jncgl9mbLus+baTTa7q7nPSUrXwbDi2dhbtqir37s="
QUERY_RECORDS = (
    RpcQueryRecord("ack", "web-1"),
    RpcQueryRecord("response", "web-1", b"up 3 days\n"),
    RpcQueryRecord("ack", "db-1"),
)
WAIT = 10  # seconds any single exchange may take before the test fails


def member(name: str, ip: str, status: str = "alive", **tags: str) -> RpcMember:
    return RpcMember(
        name=name,
        addr=socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip),
        port=7946,
        tags=tags,
        status=status,
        protocol_min=1,
        protocol_max=5,
        protocol_cur=2,
        delegate_min=2,
        delegate_max=5,
        delegate_cur=4,
    )


COORDINATES = {
    "web-1": Coordinate((0.003,) + (0.0,) * 7, error=0.2, adjustment=0.0, height=0.0005),
    "web-2": Coordinate((-0.001,) + (0.0,) * 7, error=0.2, adjustment=0.0005, height=0.0005),
    "odd": Coordinate((0.0,) * 3, error=0.2, adjustment=0.0, height=0.0),
}
"""What the fake agent holds: web-1 <-> web-2 is 4 + 0.5 + 0.5 + 0.5 = 5.5 ms."""

CLUSTER = [
    member("web-1", "10.0.0.1", role="web"),
    member("web-2", "10.0.0.2", "failed", role="web"),
    member("db-1", "10.0.0.3", "left", role="db"),
    member("v6", "fd00::7", "leaving"),
]


class FakeBackend:
    """An agent in memory: records what the RPC server asks, fails where told to."""

    def __init__(self) -> None:
        self.cluster = list(CLUSTER)
        self.calls: list[tuple[Any, ...]] = []
        self.failures: dict[str, Exception] = {}
        self.subscribers: list[Callable[[RpcEvent], None]] = []

    def _maybe_fail(self, name: str) -> None:
        if name in self.failures:
            raise self.failures[name]

    def members(self) -> list[RpcMember]:
        self._maybe_fail("members")
        return self.cluster

    async def join(self, addresses: list[str], replay: bool) -> int:
        self.calls.append(("join", addresses, replay))
        self._maybe_fail("join")
        return len(addresses)

    async def leave(self) -> None:
        self.calls.append(("leave",))

    async def force_leave(self, node: str, prune: bool) -> None:
        self.calls.append(("force-leave", node, prune))
        self._maybe_fail("force-leave")

    async def set_tags(self, add: dict[str, str], delete: list[str]) -> None:
        self.calls.append(("tags", add, delete))

    async def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        self.calls.append(("event", name, payload, coalesce))
        self._maybe_fail("event")

    def stats(self) -> dict[str, dict[str, str]]:
        return {"agent": {"name": "web-1"}, "serf": {"members": "4", "encrypted": "false"}}

    def coordinate(self, node: str) -> Coordinate | None:
        return COORDINATES.get(node)

    def subscribe(self, deliver: Callable[[RpcEvent], None]) -> Callable[[], None]:
        self.subscribers.append(deliver)
        return partial(self.subscribers.remove, deliver)

    async def install_key(self, key: str) -> RpcKeyResult:
        return self._key("install-key", key)

    async def use_key(self, key: str) -> RpcKeyResult:
        return self._key("use-key", key)

    async def remove_key(self, key: str) -> RpcKeyResult:
        return self._key("remove-key", key)

    async def list_keys(self) -> RpcKeyResult:
        return self._key("list-keys", "")

    def _key(self, command: str, key: str) -> RpcKeyResult:
        self.calls.append((command, key))
        self._maybe_fail(command)
        return RpcKeyResult(2, 2, 0, {}, {KEY_1: 2} if command == "list-keys" else {})

    async def query(self, query: RpcQuery) -> AsyncIterator[RpcQueryRecord]:
        self.calls.append(("query", query))
        self._maybe_fail("query")
        return self._answers()

    async def _answers(self) -> AsyncIterator[RpcQueryRecord]:
        for record in QUERY_RECORDS:
            await trio.sleep(0.01)
            yield record

    async def respond(self, query_id: int, payload: bytes) -> None:
        self.calls.append(("respond", query_id, payload))
        self._maybe_fail("respond")

    def emit(self, event: RpcEvent) -> None:
        for deliver in list(self.subscribers):
            deliver(event)


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


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------------------------------------
# Our client against our server.


async def test_every_command_round_trips(agent: str, backend: FakeBackend) -> None:
    with trio.fail_after(WAIT):
        async with RpcClient.connect(agent) as client:
            assert await client.members() == CLUSTER
            assert await client.join(["10.0.0.9", "10.0.0.10:7946"], replay=True) == 2
            await client.force_leave("web-2", prune=True)
            await client.update_tags({"role": "cache"}, ["zone"])
            await client.user_event("deploy", b"\x00v1\xff", coalesce=False)
            assert await client.stats() == backend.stats()
            assert await client.get_coordinate("web-2") == COORDINATES["web-2"]
            assert await client.get_coordinate("db-1") is None
            await client.leave()
    assert backend.calls == [
        ("join", ["10.0.0.9", "10.0.0.10:7946"], True),
        ("force-leave", "web-2", True),
        ("tags", {"role": "cache"}, ["zone"]),
        ("event", "deploy", b"\x00v1\xff", False),
        ("leave",),
    ]


async def test_members_filtered_by_anchored_regexes(agent: str) -> None:
    with trio.fail_after(WAIT):
        async with RpcClient.connect(agent) as client:

            async def names(
                tags: dict[str, str] | None = None, status: str = "", name: str = ""
            ) -> list[str]:
                return [m.name for m in await client.members_filtered(tags, status, name)]

            assert await names() == ["web-1", "web-2", "db-1", "v6"]
            assert await names(status="alive|failed") == ["web-1", "web-2"]
            assert await names(status="fail") == []  # anchored at both ends, as in Serf
            assert await names(name="web-.") == ["web-1", "web-2"]
            assert await names(name="(?i)WEB-1") == ["web-1"]  # Go's leading flags work too
            assert await names(tags={"role": "web"}, status="alive") == ["web-1"]
            assert await names(tags={"role": ""}) == ["v6"]  # a missing tag matches as empty
            assert await names(tags={"role": "d.*", "zone": ".*"}) == ["db-1"]


def test_filter_members_matches_go_end_anchor() -> None:
    # Go's "$" is the very end of the text; Python's "$" would also match before a final "\n".
    lone = [member("web\n", "10.0.0.1")]
    assert filter_members(lone, {}, "", "web") == []
    with pytest.raises(RpcError, match=f"^{REGEX_ERROR_PREFIX}"):
        filter_members(lone, {"role": "[a-"}, "", "")


async def test_backend_errors_come_back_and_the_connection_goes_on(
    agent: str, backend: FakeBackend
) -> None:
    backend.failures["join"] = RuntimeError("no seed answered: 10.0.0.9:7946 (i/o timeout)")
    backend.failures["force-leave"] = KeyError("ghost")
    backend.failures["members"] = ValueError()
    with trio.fail_after(WAIT):
        async with RpcClient.connect(agent) as client:
            with pytest.raises(RpcError, match=r"^no seed answered: 10\.0\.0\.9:7946"):
                await client.join(["10.0.0.9"])
            with pytest.raises(RpcError, match=r"^'ghost'$"):
                await client.force_leave("ghost")
            with pytest.raises(RpcError, match=r"^ValueError$"):  # no message: the type names it
                await client.members()
            del backend.failures["members"]
            with pytest.raises(RpcError, match=f"^{REGEX_ERROR_PREFIX}"):
                await client.members_filtered(status="(")
            assert await client.stats() == backend.stats()


async def test_auth_key(secured_agent: str, agent: str) -> None:
    with trio.fail_after(WAIT):
        async with RpcClient.connect(secured_agent, auth_key=KEY) as client:
            assert len(await client.members()) == len(CLUSTER)
        with pytest.raises(RpcError, match=f"^{INVALID_AUTH_TOKEN}$"):
            async with RpcClient.connect(secured_agent, auth_key="guess"):
                pass
        async with RpcClient.connect(secured_agent) as client:
            for _ in range(2):  # refused, and the connection stays in step
                with pytest.raises(RpcError, match=f"^{AUTH_REQUIRED}$"):
                    await client.members()
        with pytest.raises(RpcError, match=f"^{INVALID_AUTH_TOKEN}$"):  # Serf does the same
            async with RpcClient.connect(agent, auth_key=KEY):
                pass


async def test_unreachable_agent() -> None:
    with trio.fail_after(WAIT), pytest.raises(RpcConnectionError, match="connection refused"):
        async with RpcClient.connect(f"127.0.0.1:{closed_port()}"):
            pass


async def test_an_address_that_never_answers_the_handshake() -> None:
    # The kernel accepts connections on a listening socket nobody serves.
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    with trio.fail_after(WAIT), pytest.raises(RpcConnectionError, match="did not answer"):
        async with RpcClient.connect(f"127.0.0.1:{port}", timeout=0.2):
            pass
    await listener.aclose()


async def test_stream_filters_events_and_stops(agent: str, backend: FakeBackend) -> None:
    joined = RpcMemberEvent("member-join", (CLUSTER[0],))
    failed = RpcMemberEvent("member-failed", (CLUSTER[1],))
    deploy = RpcUserEvent("deploy", b"v2", coalesce=True, ltime=7)
    restart = RpcUserEvent("restart", b"", coalesce=False, ltime=8)
    with trio.fail_after(WAIT):
        async with RpcClient.connect(agent) as client:
            async with (
                client.stream("member-join,user:deploy") as some,
                client.stream() as every,
            ):
                assert len(backend.subscribers) == 2
                for event in (joined, failed, deploy, restart):
                    backend.emit(event)
                assert [await anext(some), await anext(some)] == [joined, deploy]
                # Other requests share the connection with the streams.
                assert len(await client.members()) == len(CLUSTER)
                assert [await anext(every) for _ in range(4)] == [joined, failed, deploy, restart]
            assert backend.subscribers == []
            with pytest.raises(RpcError, match=f"^{INVALID_FILTER}$"):
                async with client.stream("member-join,member-exploded"):
                    pass
            assert await client.join(["10.0.0.9"]) == 1


def test_event_filters_parse_as_serf_does() -> None:
    assert parse_event_filter("") == [("*", "")]
    assert parse_event_filter("member-join,user:deploy,user:,query:q") == [
        ("member-join", ""),
        ("user", "deploy"),
        ("user", ""),
        ("query", "q"),
    ]
    for bad in ("member-join, user", "users", "deploy:user"):
        with pytest.raises(RpcError, match=f"^{INVALID_FILTER}$"):
            parse_event_filter(bad)


def test_addresses() -> None:
    assert parse_rpc_addr("127.0.0.1:7373") == ("127.0.0.1", 7373)
    assert parse_rpc_addr("[::1]:7373") == ("::1", 7373)
    assert parse_rpc_addr("localhost:1") == ("localhost", 1)
    for bad in ("127.0.0.1", "::1:7373", ":7373", "host:65536", "host:7e3"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_rpc_addr(bad)
    with pytest.raises(ValueError, match="port 0 is no agent's port"):
        parse_rpc_addr("host:0")  # a client must name the port the agent listens on
    assert parse_rpc_addr("host:0", any_port=True) == ("host", 0)  # an agent may take any
    assert host_port(bytes([10, 0, 0, 1]), 7946) == "10.0.0.1:7946"
    assert host_port(socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.1"), 1) == "10.0.0.1:1"
    assert host_port(socket.inet_pton(socket.AF_INET6, "fd00::7"), 1) == "[fd00::7]:1"
    assert host_port(b"", 1) == ":1"


# ---------------------------------------------------------------------------------------------
# The server driven by hand: what it writes before it closes, what a slow reader loses.


class Raw:
    """A hand-driven RPC connection: objects out, objects in, nothing checked for us."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.unpacker = msgpack.Unpacker()

    @classmethod
    async def open(cls, addr: str, handshake: bool = True) -> Raw:
        host, port = parse_rpc_addr(addr)
        raw = cls(await trio.open_tcp_stream(host, port))
        if handshake:
            await raw.send({"Command": "handshake", "Seq": 0}, {"Version": 1})
            assert await raw.receive() == {"Seq": 0, "Error": ""}
        return raw

    async def send(self, *objects: object) -> None:
        await self.stream.send_all(b"".join(msgpack.packb(o) for o in objects))

    async def receive(self) -> Any:
        with trio.fail_after(WAIT):
            while True:
                for obj in self.unpacker:
                    return obj
                data = await self.stream.receive_some()
                assert data, "the server closed the connection"
                self.unpacker.feed(data)

    async def closed_by_server(self) -> bool:
        with trio.fail_after(WAIT):
            try:
                return await self.stream.receive_some() == b""
            except trio.BrokenResourceError:  # closed with our bytes unread: a reset
                return True


async def test_commands_before_the_handshake_are_refused_and_closed(agent: str) -> None:
    raw = await Raw.open(agent, handshake=False)
    await raw.send({"Command": "members", "Seq": 3})
    assert await raw.receive() == {"Seq": 3, "Error": HANDSHAKE_REQUIRED}
    assert await raw.closed_by_server()


async def test_a_slow_stream_drops_events_instead_of_buffering_them(
    agent: str, backend: FakeBackend
) -> None:
    raw = await Raw.open(agent)
    await raw.send({"Command": "stream", "Seq": 1}, {"Type": "user"})
    assert await raw.receive() == {"Seq": 1, "Error": ""}
    # No checkpoint between these, so the stream cannot send any: it keeps the first 512.
    for ltime in range(STREAM_BUFFER + 100):
        backend.emit(RpcUserEvent("flood", b"", coalesce=False, ltime=ltime))
    ltimes = []
    for _ in range(STREAM_BUFFER):
        assert await raw.receive() == {"Seq": 1, "Error": ""}
        ltimes.append((await raw.receive())["LTime"])
    assert ltimes == list(range(STREAM_BUFFER))
    await raw.send({"Command": "stats", "Seq": 2})
    assert await raw.receive() == {"Seq": 2, "Error": ""}  # and nothing more


async def test_garbage_closes_only_that_connection(agent: str, backend: FakeBackend) -> None:
    bystander = await Raw.open(agent)
    for garbage in (
        b"\xc1",  # never valid msgpack
        msgpack.packb([1, 2, 3]),  # a header that is not a map
        msgpack.packb({"Command": 7, "Seq": 1}),
        msgpack.packb({"Command": "event", "Seq": 1}) + b"\xa2\xff\xfe",  # not UTF-8
    ):
        raw = await Raw.open(agent)
        await raw.stream.send_all(garbage)
        assert await raw.closed_by_server(), garbage
    huge = msgpack.packb({"Command": "event", "Seq": 1}) + msgpack.packb(
        {"Name": "x", "Payload": bytes(2 * MAX_REQUEST_BYTES)}
    )
    raw = await Raw.open(agent)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(_send_ignoring_reset, raw.stream, huge))
            assert await raw.closed_by_server()
    await bystander.send({"Command": "members", "Seq": 9})
    assert await bystander.receive() == {"Seq": 9, "Error": ""}
    with trio.fail_after(WAIT):
        async with RpcClient.connect(agent) as client:
            assert len(await client.members()) == len(CLUSTER)
    assert backend.calls == []


async def _send_ignoring_reset(stream: trio.SocketStream, data: bytes) -> None:
    with suppress(trio.BrokenResourceError):  # closed before reading it all, as it should be
        await stream.send_all(data)


# ---------------------------------------------------------------------------------------------
# The `swim` client commands.


async def swim(*argv: str) -> int:
    status: int = await trio.to_thread.run_sync(main, list(argv))
    return status


async def test_swim_members(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await swim("members", f"-rpc-addr={agent}") == 0
    assert capsys.readouterr().out == (
        "web-1  10.0.0.1:7946   alive    role=web\n"
        "web-2  10.0.0.2:7946   failed   role=web\n"
        "db-1   10.0.0.3:7946   left     role=db\n"
        "v6     [fd00::7]:7946  leaving\n"
    )
    assert await swim("members", "--rpc-addr", agent, "-status=alive|left", "-tag", "role=.*") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["web-1", "db-1"]
    assert await swim("members", f"-rpc-addr={agent}", "-name=nobody") == 0
    assert capsys.readouterr().out == "\n"
    assert await swim("members", f"-rpc-addr={agent}", "-format", "json", "-name", "v6") == 0
    assert json.loads(capsys.readouterr().out) == {
        "members": [
            {
                "name": "v6",
                "addr": "[fd00::7]:7946",
                "port": 7946,
                "tags": {},
                "status": "leaving",
                "protocol": {"max": 5, "min": 2, "version": 4},
            }
        ]
    }
    assert await swim("members", f"-rpc-addr={agent}", "-detailed", "-name=web-1") == 0
    assert capsys.readouterr().out == (
        "web-1  10.0.0.1:7946  alive  role=web  "
        "Protocol Version: 4  Available Protocol Range: [2, 5]\n"
    )


async def test_swim_commands_reach_the_backend(
    agent: str, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    rpc = f"-rpc-addr={agent}"
    assert await swim("join", rpc, "-replay", "10.0.0.9", "10.0.0.10:7946") == 0
    assert await swim("join", rpc, "--replay=f", "10.0.0.11") == 0
    assert await swim("tags", rpc, "-set", "role=db", "-set=zone=a=b", "-delete", "dc") == 0
    assert await swim("event", rpc, "deploy", "v1") == 0
    assert await swim("event", rpc, "-coalesce=false", "ping") == 0
    assert await swim("force-leave", rpc, "web-2") == 0
    assert await swim("force-leave", rpc, "-prune", "web-2") == 0
    assert await swim("leave", rpc) == 0
    assert capsys.readouterr().out == (
        "Successfully joined cluster by contacting 2 nodes.\n"
        "Successfully joined cluster by contacting 1 nodes.\n"
        "Successfully updated agent tags\n"
        "Event 'deploy' dispatched! Coalescing enabled: true\n"
        "Event 'ping' dispatched! Coalescing enabled: false\n"
        "Graceful leave complete\n"
    )
    assert backend.calls == [
        ("join", ["10.0.0.9", "10.0.0.10:7946"], True),
        ("join", ["10.0.0.11"], False),
        ("tags", {"role": "db", "zone": "a=b"}, ["dc"]),
        ("event", "deploy", b"v1", True),
        ("event", "ping", b"", False),
        ("force-leave", "web-2", False),
        ("force-leave", "web-2", True),
        ("leave",),
    ]


async def test_swim_errors(
    agent: str,
    secured_agent: str,
    backend: FakeBackend,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = closed_port()
    assert await swim("members", f"-rpc-addr=127.0.0.1:{port}") == 1
    assert capsys.readouterr().err == (
        f"cannot reach the agent at 127.0.0.1:{port}: connection refused; "
        "is `swim agent` running?\n"
    )
    backend.failures["join"] = RuntimeError("no seed answered")
    assert await swim("join", f"-rpc-addr={agent}", "10.0.0.9") == 1
    assert capsys.readouterr().err == "Error joining the cluster: no seed answered\n"
    assert await swim("members", f"-rpc-addr={agent}", "-status=(") == 1
    assert capsys.readouterr().err.startswith(f"Error retrieving members: {REGEX_ERROR_PREFIX}")
    assert await swim("members", f"-rpc-addr={secured_agent}") == 1
    assert capsys.readouterr().err == (
        f"Error retrieving members: {AUTH_REQUIRED}; "
        "pass the agent's key with -rpc-auth (or SERF_RPC_AUTH)\n"
    )
    assert await swim("members", f"-rpc-addr={secured_agent}", "-rpc-auth=nope") == 1
    assert capsys.readouterr().err.startswith(
        f"the agent at {secured_agent} refused the connection: {INVALID_AUTH_TOKEN}"
    )
    assert await swim("members", f"-rpc-addr={secured_agent}", f"-rpc-auth={KEY}") == 0
    assert await swim("tags", f"-rpc-addr={agent}") == 1
    assert "-set KEY=VALUE or -delete KEY" in capsys.readouterr().err
    for usage_error in (
        ["members", "-rpc-addr=nowhere"],
        ["tags", "-set", "novalue"],
        ["event", "-coalesce=maybe", "deploy"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            await swim(*usage_error)
        assert exit_info.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err


async def test_swim_takes_the_address_and_key_from_serfs_variables(
    secured_agent: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERF_RPC_ADDR", secured_agent)
    monkeypatch.setenv("SERF_RPC_AUTH", KEY)
    assert await swim("members", "-name=db-1") == 0
    assert capsys.readouterr().out.startswith("db-1 ")


# ---------------------------------------------------------------------------------------------
# The real `serf` command against our server.


def serf_binary() -> str:
    path = shutil.which("serf")
    if path is None:
        pytest.fail(
            "the interop tests need HashiCorp's `serf` command: install it with "
            "`apt-get install serf` (Debian/Ubuntu)"
        )
    return path


async def serf(*args: str) -> tuple[int, str]:
    """Run the real serf CLI; its exit status and everything it printed (serf prints errors
    on stdout)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SERF_")}
    with trio.fail_after(30):
        done = await trio.run_process(
            [serf_binary(), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=environment,
        )
    return done.returncode, (done.stdout + done.stderr).decode()


async def test_serf_members_prints_what_swim_prints(
    agent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for flags in ([], ["-format=json"], ["-detailed"], ["-status=alive|failed", "-tag=role=web"]):
        status, out = await serf("members", f"-rpc-addr={agent}", *flags)
        assert status == 0, out
        assert await swim("members", f"-rpc-addr={agent}", *flags) == 0
        assert out == capsys.readouterr().out
    assert await serf("members", f"-rpc-addr={agent}") == (0, members_text(CLUSTER) + "\n")
    v6_json = await serf("members", f"-rpc-addr={agent}", "-name=v6", "-format=json")
    assert v6_json == (0, members_json(CLUSTER[3:]) + "\n")


async def test_serf_rtt_and_swim_rtt_print_the_same_estimate(
    agent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = "Estimated web-1 <-> web-2 rtt: 5.500 ms\n"
    assert await serf("rtt", f"-rpc-addr={agent}", "web-1", "web-2") == (0, expected)
    assert await swim("rtt", f"-rpc-addr={agent}", "web-1", "web-2") == 0
    assert capsys.readouterr().out == expected
    # one name: against the agent itself (web-1)
    assert await serf("rtt", f"-rpc-addr={agent}", "web-2") == (
        0,
        "Estimated web-2 <-> web-1 rtt: 5.500 ms\n",
    )
    assert await swim("rtt", f"-rpc-addr={agent}", "web-2") == 0
    assert capsys.readouterr().out == "Estimated web-2 <-> web-1 rtt: 5.500 ms\n"


async def test_swim_rtt_errors(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = await serf("rtt", f"-rpc-addr={agent}", "db-1", "web-1")
    assert status == 1 and 'Could not find a coordinate for node "db-1"' in out
    assert await swim("rtt", f"-rpc-addr={agent}", "db-1", "web-1") == 1
    assert 'Could not find a coordinate for node "db-1"' in capsys.readouterr().err
    assert await swim("rtt", f"-rpc-addr={agent}", "odd", "web-1") == 1
    assert "coordinates of 3 and 8 dimensions" in capsys.readouterr().err
    assert await swim("rtt", f"-rpc-addr={agent}", "a", "b", "c") == 1
    assert "give one or two node names" in capsys.readouterr().err


async def test_serf_members_filters_and_errors(agent: str) -> None:
    status, out = await serf("members", f"-rpc-addr={agent}", "-status=failed")
    assert (status, out.split()[0]) == (0, "web-2")
    status, out = await serf("members", f"-rpc-addr={agent}", "-tag", "role=d.", "-name=db.*")
    assert (status, out.split()[0]) == (0, "db-1")
    status, out = await serf("members", f"-rpc-addr={agent}", "-name=(")
    assert status == 1
    assert f"Error retrieving members: {REGEX_ERROR_PREFIX}" in out


async def test_serf_commands_reach_the_backend(agent: str, backend: FakeBackend) -> None:
    rpc = f"-rpc-addr={agent}"
    assert await serf("join", rpc, "-replay", "10.0.0.9", "10.0.0.10:7946") == (
        0,
        "Successfully joined cluster by contacting 2 nodes.\n",
    )
    assert await serf("tags", rpc, "-set", "role=db", "-delete", "dc") == (
        0,
        "Successfully updated agent tags\n",
    )
    assert await serf("event", rpc, "deploy", "v1") == (
        0,
        "Event 'deploy' dispatched! Coalescing enabled: true\n",
    )
    assert await serf("event", rpc, "-coalesce=false", "ping") == (
        0,
        "Event 'ping' dispatched! Coalescing enabled: false\n",
    )
    assert await serf("force-leave", rpc, "web-2") == (0, "")
    assert await serf("force-leave", rpc, "-prune", "web-2") == (0, "")
    assert await serf("leave", rpc) == (0, "Graceful leave complete\n")
    status, out = await serf("info", rpc)
    assert (status, out) == (
        0,
        "agent:\n\tname = web-1\nserf:\n\tencrypted = false\n\tmembers = 4\n",
    )
    assert backend.calls == [
        ("join", ["10.0.0.9", "10.0.0.10:7946"], True),
        ("tags", {"role": "db"}, ["dc"]),
        ("event", "deploy", b"v1", True),
        ("event", "ping", b"", False),
        ("force-leave", "web-2", False),
        ("force-leave", "web-2", True),
        ("leave",),
    ]


async def test_serf_sees_backend_errors(agent: str, backend: FakeBackend) -> None:
    backend.failures["join"] = RuntimeError("no seed answered")
    backend.failures["event"] = ValueError("user event exceeds limit of 512 bytes")
    rpc = f"-rpc-addr={agent}"
    assert await serf("join", rpc, "10.0.0.9") == (
        1,
        "Error joining the cluster: no seed answered\n",
    )
    assert await serf("event", rpc, "big", "x") == (
        1,
        "Error sending event: user event exceeds limit of 512 bytes\n",
    )
    # Commands shoal does not serve fail cleanly instead of hanging serf.
    assert await serf("monitor", rpc) == (1, f"Error starting monitor: {UNSUPPORTED_COMMAND}\n")


async def test_serf_with_an_auth_key(secured_agent: str) -> None:
    rpc = f"-rpc-addr={secured_agent}"
    status, out = await serf("members", rpc, f"-rpc-auth={KEY}")
    assert (status, out.split()[0]) == (0, "web-1")
    status, out = await serf("members", rpc, "-rpc-auth=guess")
    assert (status, INVALID_AUTH_TOKEN in out) == (1, True)
    status, out = await serf("members", rpc)
    assert (status, out) == (1, f"Error retrieving members: {AUTH_REQUIRED}\n")


# ---------------------------------------------------------------------------------------------
# Our client and `swim members` against a real `serf agent`.


def free_port() -> int:
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port: int = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))  # serf gossips on TCP and UDP alike
    return port


async def start_serf_agent(nursery: trio.Nursery, name: str, *flags: str) -> tuple[str, int]:
    """A real agent on loopback; its RPC address and gossip port.  The nursery stops it."""
    gossip, rpc = free_port(), free_port()
    command = [
        serf_binary(),
        "agent",
        f"-node={name}",
        f"-bind=127.0.0.1:{gossip}",
        f"-rpc-addr=127.0.0.1:{rpc}",
        "-log-level=err",
        *flags,
    ]
    run = partial(trio.run_process, command, check=False, stdout=subprocess.DEVNULL)
    await nursery.start(run)
    addr = f"127.0.0.1:{rpc}"
    with trio.fail_after(30):
        while True:  # the process needs a moment before it listens
            try:
                async with RpcClient.connect(addr):
                    return addr, gossip
            except RpcConnectionError:
                await trio.sleep(0.05)


@pytest.fixture
async def serf_agents(nursery: trio.Nursery) -> tuple[str, int, int]:
    first, first_gossip = await start_serf_agent(nursery, "real-1", "-tag", "role=web")
    _, second_gossip = await start_serf_agent(nursery, "real-2")
    return first, first_gossip, second_gossip


async def test_our_client_drives_a_real_serf_agent(
    serf_agents: tuple[str, int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    addr, gossip, second_gossip = serf_agents
    with trio.fail_after(60):
        async with RpcClient.connect(addr) as client:
            (me,) = await client.members()
            assert (me.name, me.addr, me.port, me.status) == (
                "real-1",
                bytes([127, 0, 0, 1]),
                gossip,
                "alive",
            )
            assert me.tags == {"role": "web"}
            assert me.protocol_min <= me.protocol_cur <= me.protocol_max
            assert (await client.stats())["agent"] == {"name": "real-1"}
            async with client.stream("member-join,user:deploy") as events:
                await client.user_event("ignored", b"", coalesce=False)
                await client.user_event("deploy", b"\x00v1", coalesce=False)
                event = await anext(events)
                assert isinstance(event, RpcUserEvent)
                assert (event.name, event.payload, event.coalesce) == ("deploy", b"\x00v1", False)
                assert event.ltime >= 1
                assert await client.join([f"127.0.0.1:{second_gossip}"]) == 1
                event = await anext(events)
                assert isinstance(event, RpcMemberEvent)
                assert event.event == "member-join"
                # Serf may coalesce real-1's own join, from just before, into the same event.
                assert "real-2" in [m.name for m in event.members]
            await client.update_tags({"zone": "a"}, ["role"])
            (me,) = await client.members_filtered(name="real-1")
            assert me.tags == {"zone": "a"}
            assert await client.members_filtered(status="failed") == []
            with pytest.raises(RpcConnectionError):  # Serf closes on a bad regex
                await client.members_filtered(status="(")
        # Serf lists members in Go's random map order, so compare them sorted (the last line of
        # serf's table loses its padding).
        status, out = await serf("members", f"-rpc-addr={addr}")
        assert status == 0, out
        assert await swim("members", f"-rpc-addr={addr}") == 0
        ours = capsys.readouterr().out
        assert sorted(map(str.rstrip, ours.splitlines())) == sorted(
            map(str.rstrip, out.splitlines())
        )
        status, out = await serf("members", f"-rpc-addr={addr}", "-format=json")
        assert status == 0, out
        assert await swim("members", f"-rpc-addr={addr}", "-format=json") == 0
        listed = json.loads(capsys.readouterr().out)["members"]
        assert sorted(listed, key=str) == sorted(json.loads(out)["members"], key=str)
        async with RpcClient.connect(addr) as client:
            await client.leave()


# ---------------------------------------------------------------------------------------------
# Key operations and queries.


async def test_our_client_and_serf_read_keys_and_queries(
    agent: str, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    async with RpcClient.connect(agent) as client:
        assert (await client.list_keys()).keys == {KEY_1: 2}
        assert (await client.install_key(KEY_1)).num_resp == 2
        async with client.query("uptime", timeout=1.0) as records:
            assert tuple([r async for r in records]) == QUERY_RECORDS
        backend.failures["query"] = ValueError("query exceeds limit of 1024 bytes")
        with pytest.raises(RpcError, match="exceeds limit"):
            async with client.query("big"):
                pass
        del backend.failures["query"]
        backend.failures["remove-key"] = RpcKeyError(
            "1/2 nodes reported failure", RpcKeyResult(2, 2, 1, {"db-1": "not allowed"})
        )
        with pytest.raises(RpcKeyError, match=r"^1/2 nodes reported failure$") as failure:
            await client.remove_key(KEY_1)
        assert failure.value.result.messages == {"db-1": "not allowed"}
        assert await client.members()  # the connection goes on
    rpc = f"-rpc-addr={agent}"
    status, out = await serf("query", rpc, "uptime")
    assert await swim("query", rpc, "uptime") == 0
    assert (status, out) == (0, capsys.readouterr().out)
    assert out.splitlines()[2] == "Response from 'web-1': up 3 days"
    status, out = await serf("query", rpc, "-format=json", "uptime")
    assert await swim("query", rpc, "-format=json", "uptime") == 0
    assert (status, out) == (0, capsys.readouterr().out)
    status, out = await serf("keys", rpc, "-list")
    assert await swim("keys", rpc, "-list") == 0
    assert (status, out) == (0, capsys.readouterr().out)
