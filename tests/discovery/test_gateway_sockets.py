"""The gateway over real sockets on loopback: bad HTTP is refused with bounds (malformed,
oversized, slow, too many connections), blocking queries wake on a registration, DNS answers on
UDP and TCP and survives garbage, and a Python Discovery agrees with what the gateway serves."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import dns.message
import dns.rdatatype
import pytest
from anyio.abc import SocketStream

from discovery.client import Discovery
from discovery.gateway import Gateway, Limits, ListenError
from discovery.host import ServiceHost
from tests.discovery.loopback import LOOPBACK, cluster, read, seed_of, wait_until

pytestmark = pytest.mark.both_backends
LIMIT = 10.0


@asynccontextmanager
async def gateway(
    limits: Limits | None = None, **options: Any
) -> AsyncIterator[tuple[Gateway, ServiceHost]]:
    async with cluster() as nodes:
        node, host = await nodes.host("a")
        async with Gateway(
            node,
            http=(LOOPBACK, 0),
            dns=(LOOPBACK, 0),
            host=host,
            limits=limits or Limits(),
            **options,
        ) as started:
            yield started, host


async def exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """Send ``raw`` and read until the gateway closes the connection."""
    with anyio.fail_after(LIMIT):
        stream = await anyio.connect_tcp(*address)
        async with stream:
            await stream.send(raw)
            received = b""
            while chunk := await read(stream, 65_536):
                received += chunk
            return received


async def request(
    address: tuple[str, int], method: str, target: str, body: bytes = b"", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {target} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body or method == "PUT":
        lines.append(f"Content-Length: {len(body)}")
    raw = await exchange(address, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return parse(raw)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body


def address_of(started: Gateway) -> tuple[str, int]:
    assert started.http_address is not None
    return started.http_address


async def test_a_blocking_query_returns_when_a_service_registers() -> None:
    async with gateway() as (started, host), anyio.create_task_group() as tasks:
        address = address_of(started)
        status, headers, _ = await request(address, "GET", "/v1/catalog/services")
        index = int(headers["x-consul-index"])
        answered: list[tuple[int, dict[str, str], bytes]] = []

        async def watch() -> None:
            answered.append(
                await request(address, "GET", f"/v1/health/service/web?index={index}&wait=30s")
            )

        tasks.start_soon(watch)
        await anyio.sleep(0.2)
        assert not answered  # it blocks while nothing changes
        await host.register("web", 8080, tags=["blue"])
        await wait_until(lambda: bool(answered), LIMIT)
        status, headers, body = answered[0]
        assert status == 200
        assert int(headers["x-consul-index"]) > index
        assert json.loads(body)[0]["Service"]["Tags"] == ["blue"]


async def test_a_blocking_query_ends_at_its_wait() -> None:
    async with gateway() as (started, _):
        address = address_of(started)
        _, headers, _ = await request(address, "GET", "/v1/catalog/services")
        with anyio.fail_after(LIMIT):
            status, again, _ = await request(
                address, "GET", f"/v1/catalog/services?index={headers['x-consul-index']}&wait=300ms"
            )
        assert status == 200
        assert again["x-consul-index"] == headers["x-consul-index"]


async def test_register_and_deregister_through_http() -> None:
    async with gateway() as (started, host):
        address = address_of(started)
        definition = {
            "Name": "api",
            "ID": "api-1",
            "Port": 9000,
            "Tags": ["v2"],
            "Meta": {"zone": "z"},
        }
        status, _, _ = await request(
            address, "PUT", "/v1/agent/service/register", json.dumps(definition).encode()
        )
        assert status == 200
        record = host.registered()["api"]
        assert (record.port, record.tags, record.instance_id) == (9000, ("v2",), "api-1")
        second = {"Name": "api", "ID": "api-2", "Port": 9001}
        status, _, body = await request(
            address, "PUT", "/v1/agent/service/register", json.dumps(second).encode()
        )
        assert status == 400
        assert b"one instance per service name" in body

        async def has_meta() -> bool:
            _, _, body = await request(address, "GET", "/v1/catalog/service/api")
            entries = json.loads(body)
            return bool(entries) and entries[0]["ServiceMeta"] == {"zone": "z"}

        with anyio.fail_after(LIMIT):
            while not await has_meta():  # fetched from the node's metadata service
                await anyio.sleep(0.05)
        status, _, _ = await request(address, "PUT", "/v1/agent/service/deregister/api-1")
        assert status == 200
        assert "api" not in host.registered()
        status, _, _ = await request(address, "PUT", "/v1/agent/service/deregister/api-1")
        assert status == 404


async def test_a_token_guards_every_request() -> None:
    async with gateway(token="s3cret") as (started, _):
        address = address_of(started)
        assert (await request(address, "GET", "/v1/agent/self"))[0] == 403
        assert (await request(address, "GET", "/v1/agent/self", X_Consul_Token="s3cret"))[0] == 200


async def test_malformed_http_is_400_and_the_gateway_keeps_serving() -> None:
    async with gateway() as (started, _):
        address = address_of(started)
        status, _, _ = parse(await exchange(address, b"NOT HTTP AT ALL\r\n\r\n"))
        assert status == 400
        status, _, _ = parse(await exchange(address, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"))
        assert status == 400
        assert (await request(address, "GET", "/v1/agent/self"))[0] == 200
        assert started.http_statistics().bad_requests == 2


async def test_requests_that_would_break_a_parser_are_400_and_never_end_the_gateway() -> None:
    async with gateway() as (started, _):
        address = address_of(started)
        huge_index = "/v1/catalog/services?index=" + "9" * 5000
        assert (await request(address, "GET", huge_index))[0] == 400
        nested = b"[" * 60_000
        assert (await request(address, "PUT", "/v1/agent/service/register", nested))[0] == 400
        assert (await request(address, "GET", "/v1/agent/self"))[0] == 200


async def test_a_client_that_never_reads_its_replies_is_cut_off() -> None:
    """Pipelined requests whose replies are never read would fill the socket buffers and
    hold the connection's slot for good; the write timeout frees it."""
    async with gateway(Limits(max_connections=1, write_timeout=0.3)) as (started, _):
        address = address_of(started)
        hog = await anyio.connect_tcp(*address)
        async with hog:
            with anyio.fail_after(LIMIT):
                ask = b"GET /v1/catalog/nodes HTTP/1.1\r\nHost: t\r\n\r\n" * 200
                with anyio.move_on_after(2.0):  # until the gateway stops reading us
                    for _ in range(2_000):
                        await hog.send(ask)
                await wait_until(lambda: started.http_statistics().timeouts >= 1)
            assert (await request(address, "GET", "/v1/agent/self"))[0] == 200


async def test_oversized_headers_and_bodies_are_refused() -> None:
    async with gateway(Limits(max_header_bytes=1024, max_body_bytes=100)) as (started, _):
        address = address_of(started)
        status, _, _ = await request(address, "PUT", "/v1/agent/service/register", b"x" * 101)
        assert status == 413
        chunked = (
            b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: t\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"40\r\n"
            + b"x" * 64
            + b"\r\n"
            + b"40\r\n"
            + b"x" * 64
            + b"\r\n0\r\n\r\n"
        )
        assert parse(await exchange(address, chunked))[0] == 413
        huge = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"y" * 4096 + b"\r\n\r\n"
        assert parse(await exchange(address, huge))[0] == 431


async def test_a_slow_client_is_cut_off_with_408() -> None:
    async with gateway(Limits(read_timeout=0.3)) as (started, _):
        address = address_of(started)
        with anyio.fail_after(LIMIT):
            raw = await exchange(address, b"GET /v1/agent/self HTTP/1.1\r\nHost:")
        assert parse(raw)[0] == 408
        assert started.http_statistics().timeouts == 1


async def test_connections_beyond_the_cap_are_refused_at_once() -> None:
    async with gateway(Limits(max_connections=1)) as (started, _):
        address = address_of(started)
        holder = await anyio.connect_tcp(*address)
        async with holder:
            await holder.send(b"GET /v1/agent/self HTTP/1.1\r\nHost: t\r\n\r\n")
            await holder.receive()  # served, and the connection stays open (keep-alive)
            status, _, _ = parse(await exchange(address, b"GET /v1/agent/self HTTP/1.1\r\n\r\n"))
            assert status == 503
        assert started.http_statistics().refused == 1


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with gateway() as (started, _):
        stream: SocketStream = await anyio.connect_tcp(*address_of(started))
        async with stream:
            for _ in range(3):
                await stream.send(b"GET /v1/catalog/nodes HTTP/1.1\r\nHost: t\r\n\r\n")
                with anyio.fail_after(LIMIT):
                    reply = await stream.receive()
                assert reply.startswith(b"HTTP/1.1 200 ")


async def dns_udp(address: tuple[str, int], packet: bytes) -> bytes | None:
    async with await anyio.create_udp_socket(family=socket.AF_INET, local_host=LOOPBACK) as udp:
        await udp.sendto(packet, *address)
        with anyio.move_on_after(1.0):
            return (await udp.receive())[0]
    return None


async def test_dns_over_udp_and_tcp_survives_garbage() -> None:
    async with gateway() as (started, host):
        await host.register("web", 8080)
        started.resync()
        assert started.dns_address is not None
        for garbage in (b"", b"\x00", b"\xff" * 700):
            await dns_udp(started.dns_address, garbage)
        query = dns.message.make_query("web.service.shoal", "SRV")
        reply = await dns_udp(started.dns_address, query.to_wire())
        assert reply is not None
        srv = dns.message.from_wire(reply).answer[0]
        assert srv.rdtype == dns.rdatatype.SRV and next(iter(srv)).port == 8080
        assert started.dns_statistics().malformed >= 2
        wire = query.to_wire()
        stream = await anyio.connect_tcp(*started.dns_address)
        async with stream:
            await stream.send(len(wire).to_bytes(2, "big") + wire)
            with anyio.fail_after(LIMIT):
                data = b""
                while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                    data += await stream.receive()
        assert dns.message.from_wire(data[2:]).answer[0].rdtype == dns.rdatatype.SRV


async def test_a_port_in_use_is_a_listen_error_naming_it() -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]
        async with cluster() as nodes:
            node = await nodes.node("a")
            with pytest.raises(ListenError) as caught:
                async with Gateway(node, http=(LOOPBACK, port)):
                    pass
    assert caught.value.which == "http" and caught.value.port == port


async def test_a_discovery_client_and_the_gateway_agree() -> None:
    async with cluster() as nodes:
        a, host_a = await nodes.host("a")
        b, host_b = await nodes.host("b")
        await b.join([seed_of(a)])
        await host_a.register("web", 8080, tags=["x"])
        await host_b.register("web", 8081)
        async with Discovery(b) as discovery, Gateway(b, http=(LOOPBACK, 0)) as started:
            found = await discovery.resolve("web", wait=LIMIT)

            async def served() -> list[tuple[str, int]]:
                _, _, body = await request(
                    address_of(started), "GET", "/v1/health/service/web?passing"
                )
                return sorted((e["Node"]["Node"], e["Service"]["Port"]) for e in json.loads(body))

            with anyio.fail_after(LIMIT):
                while len(found) < 2 or len(await served()) < 2:
                    await anyio.sleep(0.05)
                    found = discovery.instances("web")
            assert sorted((i.node, i.address[1]) for i in found) == await served()
            assert {i.node: i.tags for i in found} == {"a": ("x",), "b": ()}


async def test_head_gets_the_headers_alone_and_expect_100_continue_is_answered() -> None:
    async with gateway() as (started, host):
        address = address_of(started)
        status, headers, body = await request(address, "HEAD", "/v1/agent/self")
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""
        definition = json.dumps({"Name": "web", "Port": 80}).encode()
        stream = await anyio.connect_tcp(*address)
        async with stream:
            head = (
                "PUT /v1/agent/service/register HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                f"Content-Length: {len(definition)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send(head.encode())
            with anyio.fail_after(LIMIT):
                assert (await stream.receive()).startswith(b"HTTP/1.1 100 ")
                await stream.send(definition)
                reply = b""
                while chunk := await read(stream, 65_536):
                    reply += chunk
        assert parse(reply)[0] == 200
        assert "web" in host.registered()
