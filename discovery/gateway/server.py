"""The gateway on a running node: Consul's HTTP API (h11) and DNS (UDP and TCP) over sockets.

Every answer is decided in :mod:`discovery.gateway.api` and :mod:`discovery.gateway.dns`; this
module follows the node's view, moves bytes and waits, with bounds on everything a client
controls: header and body sizes, the time to send a request, and the connections open at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import anyio
import h11
from anyio.abc import SocketAttribute, SocketStream, UDPSocket
from anyio.streams.stapled import MultiListener

from discovery.client import Discovery
from discovery.gateway import api
from discovery.gateway.dns import DEFAULT_DOMAIN, DnsResponder, DnsStatistics
from discovery.gateway.view import CatalogView
from discovery.host import ServiceHost
from discovery.introspection import MetadataError
from discovery.records import RegistrationError
from swim.background import Background
from swim.logs import bump
from swim.node import Node
from swim.sockets import serve_connections

log = logging.getLogger("discovery.gateway")

RESYNC_INTERVAL = 0.5
"""Seconds between two reads of the node's whole view when no event arrives (events can be
lost under load; the view is the truth)."""
COALESCE = 0.05
"""Seconds the gateway waits after an event for the rest of its burst before it reads the view
(which costs O(members))."""
LINGER = 1.0
"""Seconds a closing connection reads what the client still sends (see :func:`_linger`)."""
METADATA_RETRY = 30.0
"""Seconds before metadata that could not be fetched is tried again."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost the gateway."""

    max_connections: int = 128
    """HTTP and DNS-over-TCP connections open at once (each); more are refused at once."""
    read_timeout: float = 10.0
    """Seconds to send one whole request; a slower client gets 408 (DNS: is cut off)."""
    max_header_bytes: int = 16_384
    max_body_bytes: int = 65_536
    write_timeout: float = 10.0
    """Seconds a client gets to take one reply; one that does not read is cut off, so that
    it cannot hold a connection slot for good."""


@dataclass(frozen=True, slots=True)
class HttpStatistics:
    requests: int = 0
    bad_requests: int = 0
    """Malformed requests (400), oversized bodies (413), refused tokens (403)."""
    timeouts: int = 0
    refused: int = 0
    """Connections beyond ``max_connections``, answered 503 and closed."""
    broken: int = 0
    internal_errors: int = 0
    """Requests whose handling failed (a bug): answered 500 and logged."""


class ListenError(Exception):
    """The gateway cannot listen where it was told; ``which`` is ``http`` or ``dns``."""

    def __init__(self, which: str, host: str, port: int, cause: OSError) -> None:
        super().__init__(f"the gateway's {which} listener on {host}:{port}: {cause}")
        self.which, self.host, self.port, self.cause = which, host, port, cause


class Gateway:
    """Serve ``node``'s catalog over Consul's HTTP API (``http=(host, port)``) and DNS
    (``dns=(host, port)``, UDP and TCP on one port); either may be None.

    ``async with Gateway(node, http=("127.0.0.1", 8500)) as gateway:``.  Give ``host`` (the
    node's :class:`~discovery.host.ServiceHost`) to accept ``PUT /v1/agent/service/register``;
    with ``token``, every HTTP request must carry it (``X-Consul-Token`` or ``?token=``).
    """

    def __init__(
        self,
        node: Node,
        *,
        http: tuple[str, int] | None = None,
        dns: tuple[str, int] | None = None,
        domain: str = DEFAULT_DOMAIN,
        dns_ttl: int = 0,
        token: str | None = None,
        host: ServiceHost | None = None,
        limits: Limits = Limits(),
    ) -> None:
        self.node = node
        self.view = CatalogView(node.name)
        self.dns = DnsResponder(
            self.view, domain if domain.endswith(".") else domain + ".", dns_ttl
        )
        self._http_bind = http
        self._dns_bind = dns
        self._token = token or None
        self._host = host
        self._limits = limits
        self._http_slots = anyio.Semaphore(limits.max_connections)
        self._dns_slots = anyio.Semaphore(limits.max_connections)
        self._http_statistics = HttpStatistics()
        self._changed = anyio.Event()
        self._metadata_wanted = anyio.Event()
        self._metadata = Discovery(node)
        self._background = Background()
        self.http_address: tuple[str, int] | None = None
        self.dns_address: tuple[str, int] | None = None

    async def __aenter__(self) -> Gateway:
        self.resync()
        http_listener = dns_listener = None
        udp: UDPSocket | None = None
        try:
            if self._http_bind is not None:
                http_listener = await _listen("http", *self._http_bind)
                self.http_address = _local(http_listener)
            if self._dns_bind is not None:
                dns_host, dns_port = self._dns_bind
                dns_listener = await _listen("dns", dns_host, dns_port)
                self.dns_address = _local(dns_listener)
                try:
                    udp = await anyio.create_udp_socket(
                        local_host=dns_host, local_port=self.dns_address[1]
                    )
                except OSError as exc:
                    raise ListenError("dns", dns_host, dns_port, exc) from None
        except BaseException:
            for listener in (http_listener, dns_listener):
                if listener is not None:
                    await listener.aclose()
            raise
        nursery = await self._background.open()
        nursery.start_soon(self._follow)
        nursery.start_soon(self._fetch_metadata)
        if http_listener is not None:
            nursery.start_soon(self._serve, http_listener, self._http_connection, "the HTTP API")
        if dns_listener is not None and udp is not None:
            nursery.start_soon(self._serve, dns_listener, self._dns_connection, "DNS over TCP")
            nursery.start_soon(self._dns_udp, udp)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._background.close(exc_type, exc, traceback)

    def http_statistics(self) -> HttpStatistics:
        return self._http_statistics

    def dns_statistics(self) -> DnsStatistics:
        return self.dns.statistics

    # ------------------------------------------------------------------ the view

    def resync(self) -> None:
        """Read the node's view now; waiters are woken when what the gateway serves changed."""
        serf = self.node.stack.serf
        if self.view.update(self.node.members(), serf.members() if serf else []):
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        self._metadata_wanted.set()

    async def _follow(self) -> None:
        events = self.node.events()
        while True:
            with anyio.move_on_after(RESYNC_INTERVAL):
                await events.__anext__()
                await anyio.sleep(COALESCE)  # a burst of events costs one read of the view
            while len(events):
                await events.__anext__()
            self.resync()

    async def _fetch_metadata(self) -> None:
        """Fetch the metadata of instances at a new revision (Consul's Meta), peer to peer."""
        failed: dict[tuple[str, str, int], float] = {}
        while True:
            with anyio.move_on_after(METADATA_RETRY):
                await self._metadata_wanted.wait()
            self._metadata_wanted = anyio.Event()
            now = anyio.current_time()
            failed = {key: at for key, at in failed.items() if now - at < METADATA_RETRY}
            for instance in self.view.missing_metadata():
                key = (instance.node, instance.service, instance.revision)
                if key in failed:
                    continue
                try:
                    metadata = await self._metadata.metadata(instance)
                except MetadataError as exc:
                    log.info("gateway: %s", exc)
                    failed[key] = now
                    continue
                self.view.set_metadata(instance, metadata)
                self._changed.set()
                self._changed = anyio.Event()

    # ------------------------------------------------------------------ HTTP

    async def _serve(
        self,
        listener: MultiListener[SocketStream],
        handler: Callable[[SocketStream], object],
        what: str,
    ) -> None:
        async with listener:
            await serve_connections(listener, handler, what)  # type: ignore[arg-type]

    def _count(self, counter: str) -> None:
        self._http_statistics = bump(self._http_statistics, counter)

    async def _http_connection(self, stream: SocketStream) -> None:
        async with stream:
            try:
                if self._http_slots.value == 0:
                    self._count("refused")
                    connection = h11.Connection(h11.SERVER)
                    busy = api.text(503, "Too many connections; try again later")
                    await self._send(connection, stream, busy, close=True, unsolicited=True)
                    return
                async with self._http_slots:
                    await self._http_requests(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self._count("broken")
            except h11.LocalProtocolError:
                self._count("broken")

    async def _http_requests(self, stream: SocketStream) -> None:
        limits = self._limits
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        while True:
            request: api.Request | api.Reply | None = None
            with anyio.move_on_after(limits.read_timeout) as deadline:
                request = await self._read_request(connection, stream)
            if deadline.cancelled_caught:
                self._count("timeouts")
                late = api.text(
                    408, f"Request timeout: send a request within {limits.read_timeout:g} s"
                )
                await self._send(connection, stream, late, close=True, unsolicited=True)
                return
            if request is None:
                return
            if isinstance(request, api.Reply):
                self._count("bad_requests")
                await self._send(connection, stream, request, close=True)
                return
            self._count("requests")
            try:
                reply = await self._answer(request)
            except Exception:  # a bug must cost this request, not the gateway and its agent
                self._count("internal_errors")
                log.exception("internal error answering %s %s", request.method, request.target)
                reply = api.text(500, "Internal error; the gateway's log has the details")
            if reply.status in (400, 403, 413):
                self._count("bad_requests")
            head = request.method == "HEAD"
            if not await self._send(connection, stream, reply, close=False, head=head):
                return
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    async def _send(
        self,
        connection: h11.Connection,
        stream: SocketStream,
        reply: api.Reply,
        **options: bool,
    ) -> bool:
        """Send ``reply`` unless the client takes longer than ``write_timeout`` to read it;
        False when it was cut off."""
        with anyio.move_on_after(self._limits.write_timeout):
            await _send_reply(connection, stream, reply, **options)
            return True
        self._count("timeouts")
        return False

    async def _read_request(
        self, connection: h11.Connection, stream: SocketStream
    ) -> api.Request | api.Reply | None:
        """The next whole request; a :class:`~api.Reply` to send when it is bad; None when the
        client closed between requests."""
        request: h11.Request | None = None
        body = bytearray()
        limit = self._limits.max_body_bytes
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                return api.text(status, f"Bad request: {exc}")
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(65_536)
                except anyio.EndOfStream:
                    data = b""
                connection.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                request = event
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self._limits.max_header_bytes:
                    limit_text = f"the limit is {self._limits.max_header_bytes} bytes"
                    return api.text(431, f"Request headers too large: {limit_text}")
                length = dict(event.headers).get(b"content-length")
                if length is not None and int(length) > limit:
                    return api.text(413, f"Request body too large: the limit is {limit} bytes")
                if connection.they_are_waiting_for_100_continue:
                    go_on = h11.InformationalResponse(status_code=100, headers=[])
                    await stream.send(connection.send(go_on) or b"")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    return api.text(413, f"Request body too large: the limit is {limit} bytes")
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers
                }
                target = request.target.decode("latin-1")
                return api.Request(request.method.decode("ascii"), target, headers, bytes(body))

    async def _answer(self, request: api.Request) -> api.Reply:
        action = api.handle(request, self.view, token=self._token)
        if isinstance(action, api.Block):
            with anyio.move_on_after(action.wait):
                while self.view.index == action.index:
                    await self._changed.wait()
            action = api.handle(request, self.view, token=self._token, blocking=False)
        if isinstance(action, api.Register):
            return await self._register(action.registration)
        if isinstance(action, api.Deregister):
            return await self._deregister(action.instance_id)
        assert isinstance(action, api.Reply)
        return action

    async def _register(self, registration: api.Registration) -> api.Reply:
        host = self._host
        if host is None:
            return api.text(
                405, "This gateway takes no registrations: run it with a ServiceHost (swim agent)"
            )
        for name, record in host.registered().items():
            registered_id = record.instance_id or name
            if name == registration.name and registered_id != registration.instance_id:
                return api.text(
                    400,
                    f"Service {name!r} is already registered on this agent as ID "
                    f"{registered_id!r}: an agent advertises one instance per service name "
                    "(its gossip tag is keyed by the name); deregister it first, or register "
                    "the second instance on another agent",
                )
            if registered_id == registration.instance_id and name != registration.name:
                return api.text(400, f"ID {registered_id!r} is already used by service {name!r}")
        try:
            await register(host, registration)
        except (RegistrationError, ValueError) as exc:
            return api.text(400, f"Invalid service: {exc}")
        log.info("registered service %s (ID %s)", registration.name, registration.instance_id)
        self.resync()
        return api.Reply(200, b"")

    async def _deregister(self, instance_id: str) -> api.Reply:
        host = self._host
        registered = host.registered() if host else {}
        name = next((n for n, r in registered.items() if (r.instance_id or n) == instance_id), None)
        if host is None or name is None:
            return api.text(404, f"Unknown service ID {instance_id!r}")
        await host.deregister(name)
        log.info("deregistered service %s (ID %s)", name, instance_id)
        self.resync()
        return api.Reply(200, b"")

    # ------------------------------------------------------------------ DNS

    async def _dns_udp(self, udp: UDPSocket) -> None:
        async with udp:
            while True:
                try:
                    packet, address = await udp.receive()
                except (OSError, anyio.BrokenResourceError):
                    continue  # ICMP errors surface here on some systems
                reply = self._dns_answer(packet, udp=True)
                if reply is not None:
                    with contextlib.suppress(OSError):
                        await udp.sendto(reply, *address[:2])

    def _dns_answer(self, packet: bytes, *, udp: bool) -> bytes | None:
        try:
            return self.dns.answer(packet, udp=udp)
        except Exception:  # a packet dnspython chokes on must never stop the listener
            log.debug("dropped a DNS packet that could not be answered", exc_info=True)
            self.dns.statistics = bump(self.dns.statistics, "malformed")
            return None

    async def _dns_connection(self, stream: SocketStream) -> None:
        """DNS over TCP: two-byte lengths, then messages; a slow or silent client is cut off."""
        async with stream:
            if self._dns_slots.value == 0:
                return
            async with self._dns_slots:
                buffer = bytearray()
                try:
                    while True:
                        with anyio.move_on_after(self._limits.read_timeout):
                            while len(buffer) < 2 or len(buffer) < 2 + _length(buffer):
                                buffer += await stream.receive(65_536)
                        if len(buffer) < 2 or len(buffer) < 2 + _length(buffer):
                            return  # too slow
                        end = 2 + _length(buffer)
                        reply = self._dns_answer(bytes(buffer[2:end]), udp=False)
                        del buffer[:end]
                        if reply is None:
                            return
                        with anyio.move_on_after(self._limits.write_timeout) as sending:
                            await stream.send(len(reply).to_bytes(2, "big") + reply)
                        if sending.cancelled_caught:
                            return  # a client that does not read its answers
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return


def _length(buffer: bytearray) -> int:
    return int.from_bytes(buffer[:2], "big")


async def _listen(which: str, host: str, port: int) -> MultiListener[SocketStream]:
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ListenError(which, host, port, exc) from None


def _local(listener: MultiListener[SocketStream]) -> tuple[str, int]:
    address = listener.listeners[0].extra(SocketAttribute.local_address)
    assert isinstance(address, tuple)
    return str(address[0]), int(address[1])


async def register(host: ServiceHost, registration: api.Registration) -> None:
    """Advertise a Consul service definition through ``host``, as the HTTP API and the agent's
    config file both do; the ID travels only when it differs from the name.  Raises what
    :meth:`ServiceHost.register` raises for a registration it cannot advertise."""
    given_id = registration.instance_id
    await host.register(
        registration.name,
        registration.port,
        host=registration.address,
        tags=registration.tags,
        instance_id="" if given_id == registration.name else given_id,
        metadata=registration.meta,
    )


async def _send_reply(
    connection: h11.Connection,
    stream: SocketStream,
    reply: api.Reply,
    *,
    close: bool,
    unsolicited: bool = False,
    head: bool = False,
) -> None:
    """Send ``reply`` (its headers only, for a HEAD request); a reply that ends the
    connection lingers (see :func:`_linger`)."""
    headers = [
        ("Content-Type", reply.content_type),
        ("Content-Length", str(len(reply.body))),
        *reply.headers,
    ]
    if close:
        headers.append(("Connection", "close"))
    if connection.our_state is not h11.SEND_RESPONSE:  # no request read: write it by hand
        unsolicited = True
    if unsolicited:
        lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode() + reply.body)
        await _linger(stream)
        return
    reason = _REASONS.get(reply.status, "")
    response = h11.Response(status_code=reply.status, headers=headers, reason=reason)
    data = connection.send(response) or b""
    if reply.body and not head:
        data += connection.send(h11.Data(data=reply.body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send(data)
    if close:
        await _linger(stream)


async def _linger(stream: SocketStream) -> None:
    """Half-close, then read what the client still sends for a moment, so that the kernel does
    not reset the connection (and lose the reply) over bytes left unread."""
    await stream.send_eof()
    with anyio.move_on_after(LINGER):
        received = 0
        while received < 65_536:
            try:
                received += len(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return


_REASONS = {
    200: "OK",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    408: "Request Timeout",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
