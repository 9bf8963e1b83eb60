"""Discovery on real sockets (127.0.0.1): under asyncio and trio alike where the test waits
only for what happens at once on loopback (joins, gossip of a change, connections), in virtual
time (trio's MockClock) where it waits for timers (request timeouts, drains, isolation,
``require``'s timeout)."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import anyio
import pytest
import trio.testing
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from discovery import (
    CallFailed,
    ChangeKind,
    Discovery,
    Health,
    MetadataError,
    MissingServices,
    NoInstances,
    NotAccepting,
    RegistrationTooLarge,
    ServiceHost,
    UnknownService,
)
from discovery.catalog import Change, Instance
from discovery.client import ChangesLost, Watch
from discovery.introspection import (
    NONCE_BYTES,
    Direction,
    FrameSeal,
    Response,
    decode_response,
    frame,
)
from swim import wire
from swim.node import JoinError, Node
from tests.discovery.loopback import (
    FAST,
    LOOPBACK,
    EchoServer,
    ask,
    cluster,
    echo_server,
    read,
    seed_of,
    wait_until,
)


def arrived(discovery: Discovery, service: str, revision: int) -> bool:
    """Whether the catalog shows an instance of ``service`` at ``revision``."""
    return any(i.revision == revision for i in discovery.catalogs[""].instances(service))


async def next_change(watch: Watch, limit: float = 30.0) -> Change:
    with anyio.fail_after(limit):
        change = await watch.__anext__()
    assert not isinstance(change, ChangesLost)
    return change


@pytest.mark.both_backends
async def test_a_registered_service_is_discovered_on_another_node() -> None:
    async with cluster() as c:
        host, b = await c.pair()
        async with Discovery(b) as discovery:
            watch = discovery.watch("web")
            await host.register("web", 8080, group="blue", version="1.2")
            change = await next_change(watch)
            assert change.kind is ChangeKind.ADDED
            (web,) = await discovery.resolve("web", group="blue")
            assert (web.node, web.address, web.version) == ("a", (LOOPBACK, 8080), "1.2")
            # Serf users read the same record
            (serf_a,) = [m for m in b.serf.members() if m.name == "a"]
            assert serf_a.tags["svc.web"] == "p=8080,g=blue,v=1.2"
            await host.deregister("web")
            assert (await next_change(watch)).kind is ChangeKind.REMOVED
            with pytest.raises(NoInstances, match="'web' has no instance available"):
                discovery.instances("web")


@pytest.mark.both_backends
async def test_metadata_is_fetched_on_demand_and_refetched_after_a_change() -> None:
    async with cluster() as c:
        host, b = await c.pair()
        await host.register("web", 8080, metadata={"zone": "eu", "features": ["gzip"]})
        async with Discovery(b) as discovery:
            (web,) = await discovery.resolve("web", wait=10)
            assert host.statistics().answered == 0  # nothing fetched until asked
            assert await discovery.metadata(web) == {"zone": "eu", "features": ["gzip"]}
            assert await discovery.metadata(web) == {"zone": "eu", "features": ["gzip"]}
            assert host.statistics().answered == 1  # the second came from the cache
            watch = discovery.watch("web")
            await next_change(watch)  # the instance as it is now
            revision = await host.update_metadata("web", {"zone": "us"})
            change = await next_change(watch)
            assert change.kind is ChangeKind.CHANGED and change.instance.revision == revision
            assert await discovery.metadata(change.instance) == {"zone": "us"}
            assert host.statistics().answered == 2
            assert await discovery.resolve("web", metadata={"zone": "us"}) == [change.instance]
            with pytest.raises(NoInstances, match="none has metadata"):
                await discovery.resolve("web", metadata={"zone": "eu"})


@pytest.mark.both_backends
async def test_metadata_errors_name_the_instance_and_the_cause() -> None:
    async with cluster() as c:
        a, host = await c.host("a")
        await host.register("web", 8080, metadata={"zone": "eu"})
        async with Discovery(a) as discovery:
            (web,) = discovery.instances("web")
            await c.crash("a")
            with pytest.raises(MetadataError, match=r"metadata of web@a from 127.0.0.1:\d+: .*"):
                await discovery.metadata(web)


@pytest.mark.both_backends
async def test_the_metadata_service_drops_bad_input_and_keeps_answering() -> None:
    async with cluster() as c:
        a, host = await c.host("a")
        await host.register("web", 8080, metadata={"zone": "eu"})
        address = (LOOPBACK, host.metadata_port)
        for junk in (b"\x00\x00\x00\x03\xc1\xc1\xc1", b"\xff\xff\xff\xff", b"\x00\x00"):
            async with await anyio.connect_tcp(*address) as stream:
                await stream.send(junk)
                await stream.send_eof()
                with anyio.fail_after(5):
                    assert await read(stream, 100) == b""
        async with await anyio.connect_tcp(*address) as unknown:
            body = b"\x82\xa7service\xa4nope\xa8revision\x00"
            await unknown.send(struct.pack(">I", len(body)) + body)
            with anyio.fail_after(5):
                reply = await unknown.receive(1000)
            assert b"not registered" in reply
        stats = host.statistics()  # dropped at once: none waited for the request timeout
        assert (stats.bad_requests, stats.timeouts, stats.unknown_service) == (3, 0, 1)
        async with Discovery(a) as discovery:
            (web,) = discovery.instances("web")
            assert await discovery.metadata(web) == {"zone": "eu"}


async def test_the_metadata_service_drops_a_silent_connection_at_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as c:
        a, host = await c.host("a", request_timeout=1.0)
        await host.register("web", 8080, metadata={"zone": "eu"})
        async with await anyio.connect_tcp(LOOPBACK, host.metadata_port) as idle:  # says nothing
            with anyio.fail_after(5):
                assert await read(idle, 100) == b""
        stats = host.statistics()
        assert (stats.bad_requests, stats.timeouts, stats.unknown_service) == (0, 1, 0)
        async with Discovery(a) as discovery:
            (web,) = discovery.instances("web")
            assert await discovery.metadata(web) == {"zone": "eu"}


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` to the metadata service on ``port``; every byte it sends back."""
    received = b""
    async with await anyio.connect_tcp(LOOPBACK, port) as stream:
        await stream.send(request)
        with anyio.fail_after(5):
            while chunk := await read(stream, 65_536):
                received += chunk
    return received


@pytest.mark.both_backends
async def test_metadata_is_sealed_between_encrypted_nodes_and_plaintext_is_refused() -> None:
    core = FAST.replace(label="core")
    key = bytes(range(16))
    secret = {"vault": "eu-secret-7"}
    async with cluster() as c:
        host, b = await c.pair(core, key=key)
        await host.register("web", 8080, metadata=secret)
        async with Discovery(b) as discovery:
            (web,) = await discovery.resolve("web", wait=10)
            assert await discovery.metadata(web) == secret
        assert host.statistics().answered == 1
        seal = FrameSeal(wire.Keyring([key]), b"core")
        nonce = bytes(NONCE_BYTES)
        request = {"service": "web", "revision": 0, "nonce": nonce}
        answer = await exchange(host.metadata_port, seal.frame(request, Direction.REQUEST))
        assert b"eu-secret-7" not in answer
        body = seal.reader(Direction.RESPONSE).receive_data(answer)
        assert body is not None
        opened = decode_response(seal.open(body, Direction.RESPONSE), nonce)
        assert opened == Response(web.revision, secret)
        plaintext = frame({"service": "web", "revision": 0})
        assert await exchange(host.metadata_port, plaintext) == b""  # closed, no answer
        no_nonce = seal.frame({"service": "web", "revision": 0}, Direction.REQUEST)
        assert await exchange(host.metadata_port, no_nonce) == b""
        stats = host.statistics()
        assert (stats.answered, stats.bad_requests) == (2, 2)


@pytest.mark.both_backends
async def test_a_client_in_an_encrypted_cluster_refuses_a_plaintext_answer() -> None:
    async with cluster() as c:
        me = await c.node("me", keyring=wire.Keyring([bytes(16)]))
        listener = await anyio.create_tcp_listener(local_host=LOOPBACK)

        async def answer_in_the_clear(stream: SocketStream) -> None:
            async with stream:
                await stream.receive(4096)
                await stream.send(frame({"revision": 5, "metadata": {"zone": "eu"}}))

        async def serve() -> None:
            async with listener:
                await listener.serve(answer_in_the_clear)

        c.nursery.start_soon(serve)
        port = listener.extra(SocketAttribute.local_port)
        web = Instance("web", "x", (LOOPBACK, 8080), revision=5, metadata_address=(LOOPBACK, port))
        async with Discovery(me) as discovery:
            with pytest.raises(MetadataError, match="not encrypted, but this node's cluster is"):
                await discovery.metadata(web)


@pytest.mark.both_backends
async def test_calls_fail_over_when_an_instance_stops_answering() -> None:
    async with cluster() as c:
        client = await c.node("client")
        servers: dict[str, EchoServer] = {}
        for name in ("a", "b", "c"):
            node, host = await c.host(name)
            servers[name] = await echo_server(c.nursery, name)
            await host.register("echo", servers[name].port)
            await node.join([seed_of(client)])
        async with Discovery(client) as discovery:
            await wait_until(lambda: len(discovery.instances("echo")) == 3)
            answers = [await discovery.call("echo", ask) for _ in range(3)]
            assert sorted(a.split(":")[0] for a in answers) == ["a", "b", "c"]
            await servers["b"].stop()  # b's service dies; its node still gossips alive
            answers = [await discovery.call("echo", ask) for _ in range(6)]
            assert all(not a.startswith("b:") for a in answers)
            (b,) = [i for i in discovery.instances("echo") if i.node == "b"]
            assert discovery.failover.is_marked(b, anyio.current_time())
            assert discovery.instances("echo")[-1] == b  # tried last
            for name in ("a", "c"):
                await servers[name].stop()
            with pytest.raises(
                CallFailed,
                match=r"failed \(retry budget of 2 spent\) after: echo@\w: .*Connection refused",
            ):
                await discovery.call("echo", ask)


async def test_draining_waits_for_requests_in_flight_then_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as c:
        host, b = await c.pair()
        await host.register("web", 8080)
        finished: list[str] = []

        async def handle(
            name: str, seconds: float, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            with host.request(name):
                task_status.started()
                await anyio.sleep(seconds)
                finished.append(name)

        async def drain() -> None:
            report = await host.drain(timeout=10.0)
            assert report.clean, report
            assert sorted(finished) == ["GET /fast", "GET /slow"]
            assert report.finished - report.started >= 3.0

        async with Discovery(b) as discovery:
            watch = discovery.watch("web")
            await next_change(watch)
            await c.nursery.start(handle, "GET /slow", 3.0)
            await c.nursery.start(handle, "GET /fast", 1.0)
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(drain)
                assert (await next_change(watch)).kind is ChangeKind.DRAINING
                assert not host.accepting()
                with pytest.raises(NotAccepting, match="'a' is draining"), host.request("late"):
                    pass
                assert (await next_change(watch)).kind is ChangeKind.REMOVED
            assert discovery.catalogs[""].instances("web")[0].health is Health.LEFT


async def test_draining_cuts_off_what_outlasts_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as c:
        host, b = await c.pair()
        outcome: list[str] = []

        async def stuck(task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with host.request("GET /stuck"):
                task_status.started()
                await anyio.sleep(1000)
                outcome.append("finished")
            outcome.append("cut off")

        async def nightly(task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with host.task("nightly report"):
                task_status.started()
                await anyio.sleep(1.0)
                outcome.append("report done")

        await c.nursery.start(stuck)
        await c.nursery.start(nightly)
        report = await host.drain(timeout=5.0)
        assert outcome == ["report done", "cut off"]
        assert [w.name for w in report.cut_off] == ["GET /stuck"]
        assert report.left and not report.clean
        assert 5.0 <= report.finished - report.started < 5.0 + FAST.leave_timeout + 1
        assert "cut off: request 'GET /stuck'" in str(report)
        await wait_until(lambda: b.member("a") is not None and b.member("a").state.value == "left")  # type: ignore[union-attr]


@pytest.mark.both_backends
async def test_bootstrap_from_the_cache_with_the_cluster_unreachable(tmp_path: Path) -> None:
    cache = tmp_path / "discovery.json"
    async with cluster() as c:
        host, b = await c.pair()
        server = await echo_server(c.nursery, "a")
        await host.register("echo", server.port, group="blue")
        async with Discovery(b, cache_file=cache) as discovery:
            await discovery.resolve("echo", wait=10)
        seed = seed_of(host.node)
        await c.crash("b")
        # a new process: the only seed does not answer
        lonely, lonely_host = await c.host("lonely")
        await c.crash("a")
        with pytest.raises(JoinError, match="could not join"):
            await lonely_host.join([seed])
        assert await lonely_host.join([seed], start_alone=True) == 0
        async with Discovery(lonely, cache_file=cache) as discovery:
            (echo,) = discovery.instances("echo", group="blue")
            assert echo.stale and echo.node == "a"
            with pytest.raises(UnknownService, match="'billing' is unknown"):
                discovery.instances("billing")
            assert await discovery.call("echo", ask) == "a: hello"  # its service still runs
            await server.stop()
            with pytest.raises(CallFailed, match=r"echo@a: .*Connection refused"):
                await discovery.call("echo", ask)
            assert discovery.failover.is_marked(echo, anyio.current_time())


@pytest.mark.both_backends
async def test_cached_entries_are_confirmed_by_gossip(tmp_path: Path) -> None:
    cache = tmp_path / "discovery.json"
    async with cluster() as c:
        host, b = await c.pair()
        await host.register("web", 8080)
        async with Discovery(b, cache_file=cache) as discovery:
            await discovery.resolve("web", wait=10)
        fresh = await c.node("fresh")
        async with Discovery(fresh, cache_file=cache) as discovery:
            watch = discovery.watch("web")
            assert (await next_change(watch)).instance.stale
            await fresh.join([seed_of(host.node)])
            change = await next_change(watch)
            assert change.kind is ChangeKind.CHANGED and not change.instance.stale


async def test_fail_fast_at_start_up_or_wait_lazily(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as c:
        host, b = await c.pair()
        await host.register("web", 8080)
        async with Discovery(b) as discovery:
            await discovery.require(["web"], timeout=10)
            with pytest.raises(MissingServices) as error:
                await discovery.require(["web", "billing"], timeout=2)
            assert list(error.value.errors) == ["billing"]
            assert "'billing' is unknown" in str(error.value)

            async def register_later() -> None:
                await anyio.sleep(3)
                await host.register("billing", 9090)

            c.nursery.start_soon(register_later)
            (billing,) = await discovery.resolve("billing", wait=20)
            assert billing.address[1] == 9090


@pytest.mark.both_backends
async def test_registrations_that_do_not_fit_are_refused_with_the_sizes() -> None:
    async with cluster() as c:
        _, host = await c.host("a")
        for i in range(12):
            await host.register(f"service-{i:02}", 8000 + i, metadata={"i": i})
        with pytest.raises(
            RegistrationTooLarge, match=r"\d+ bytes of metadata, over the limit of 512"
        ):
            for i in range(12, 30):
                await host.register(f"service-{i:02}", 8000 + i, metadata={"i": i})
        assert len(host.registered()) < 30  # the last one was not taken
        report = await host.drain(1.0)  # room for the draining tag was kept
        assert report.clean


async def test_isolation_is_reported_and_the_node_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = FAST.replace(isolation_timeout=5.0)
    alerts: list[bool] = []
    async with cluster() as c:
        a, host = await c.host("a", config, on_isolation=alerts.append)
        await host.register("web", 8080, metadata={"zone": "eu"})
        b = await c.node("b", config)
        await a.join([seed_of(b)])
        await c.crash("b")
        await wait_until(lambda: alerts == [True])
        assert host.isolated
        async with Discovery(a) as discovery:  # still serving what it knows
            (web,) = discovery.instances("web")
            assert await discovery.metadata(web) == {"zone": "eu"}


@pytest.mark.both_backends
async def test_one_process_discovers_across_two_clusters() -> None:
    core = FAST.replace(label="core")
    edge = FAST.replace(label="edge")
    async with cluster() as c:
        core_a, core_host = await c.host("core-a", core, keyring=wire.Keyring([bytes(16)]))
        edge_a, edge_host = await c.host("edge-a", edge, keyring=wire.Keyring([bytes(range(16))]))
        await core_host.register("orders", 8001)
        await edge_host.register("reports", 8002)
        await edge_host.register("orders", 8003)
        me_core = await c.node("me-core", core, keyring=wire.Keyring([bytes(16)]))
        me_edge = await c.node("me-edge", edge, keyring=wire.Keyring([bytes(range(16))]))
        await me_core.join([seed_of(core_a)])
        await me_edge.join([seed_of(edge_a)])
        with pytest.raises(JoinError):  # the labels keep the clusters apart
            await me_core.join([seed_of(edge_a)])
        async with Discovery({"core": me_core, "edge": me_edge}) as discovery:
            await discovery.resolve("reports", wait=10)
            orders = await discovery.resolve("orders", wait=10)
            assert sorted((i.cluster, i.address[1]) for i in orders) == [
                ("core", 8001),
                ("edge", 8003),
            ]
            (core_orders,) = await discovery.resolve("orders", cluster="core")
            assert str(core_orders) == "orders@core-a in core"


@pytest.mark.both_backends
async def test_a_node_without_the_serf_layer_is_refused_with_the_fix() -> None:
    async with Node(FAST, name="plain", bind=(LOOPBACK, 0)) as node:
        with pytest.raises(RuntimeError, match="pass tags=\\{\\} to Node"):
            async with ServiceHost(node):
                pass


@pytest.mark.both_backends
async def test_a_watcher_that_falls_behind_is_told_how_many_changes_it_lost() -> None:
    async with cluster() as c:
        host, b = await c.pair()
        async with Discovery(b, watch_buffer=1) as discovery:
            watch = discovery.watch("web")
            for zone in ("eu", "us", "ap"):
                record = await host.register("web", 8080, metadata={"zone": zone})
                # gossip brings each change to the catalog, and so to the watch; nobody reads it
                await wait_until(functools.partial(arrived, discovery, "web", record.revision))
            with anyio.fail_after(5):
                lost = await watch.__anext__()
            assert isinstance(lost, ChangesLost) and lost.count == 2
            latest = await next_change(watch)
            assert await discovery.metadata(latest.instance) == {"zone": "ap"}
