"""``swim agent -metrics-addr``: the agent's figures at ``GET /metrics`` in Prometheus' text
format, through the official ``prometheus_client``.

Nothing is counted here: on each scrape a collector reads the snapshots the node, the RPC
server and the event handlers keep anyway (plain integers bumped where the protocol decides),
so the hot path pays nothing for metrics.  The HTTP endpoint runs on the agent's own event
loop, so a scrape reads the node's state from the thread that changes it; it answers one small
request per connection and closes it, and serves at most :data:`MAX_SCRAPERS` at once.

The agent imports this module only when ``-metrics-addr`` is given: ``prometheus_client`` costs
an agent without it nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from swim.sockets import serve_connections

if TYPE_CHECKING:  # an agent without -event-handler does not import swim.handlers
    from swim.handlers import HandlerStatistics
    from swim.node import NodeStatistics
    from swim.rpc.server import RpcServerStatistics

MAX_SCRAPERS: Final = 8
"""HTTP connections the endpoint serves at once; more are closed at once (a Prometheus server
scrapes with one)."""
MAX_REQUEST_HEAD: Final = 8192
"""Bytes of request line and headers the endpoint reads before refusing the request."""
REQUEST_TIMEOUT: Final = 5.0
"""Seconds a client has to send its request, and to read the answer."""


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the figures come from: each call returns the current snapshot."""

    node: Callable[[], NodeStatistics]
    rpc: Callable[[], RpcServerStatistics]
    handlers: Callable[[], HandlerStatistics | None]


_ENGINE_COUNTERS: Final = (
    ("probes", "probes", "Direct probes (pings) sent."),
    ("acks", "acks", "Acks received for our probes."),
    ("nacks", "nacks", "Nacks received: a helper reached no answer from the target."),
    ("indirect_probes", "indirect_probes", "Indirect probes asked of other members."),
    ("tcp_fallback_pings", "tcp_fallback_pings", "Probes retried over TCP."),
    ("suspicions_raised", "suspicions_raised", "Members this node began to suspect."),
    ("suspicions_refuted", "suspicions_refuted", "Suspicions of this node that it refuted."),
    ("failures_declared", "failures_declared", "Members declared failed by this node."),
    ("push_pulls", "push_pulls", "Full state exchanges (push-pull) completed."),
    ("reconnect_attempts", "reconnect_attempts", "Push-pulls tried with departed members."),
    ("members_refused", "members_refused", "Members refused admission to the view."),
    ("decode_errors", "decode_errors", "Packets that did not decode."),
)
"""(metric name after ``shoal_``, engine statistic, help) of the engine's plain counters."""

_DROP_REASONS: Final = (
    ("decode_error", "decode_errors"),
    ("replayed", "replays_refused"),
    ("misaddressed", "misaddressed_pings"),
    ("malformed", "malformed_messages"),
    ("unexpected", "unexpected_messages"),
)
"""(``reason`` label, engine statistic) of every packet or message the engine drops."""

_RUNTIME_COUNTERS: Final = (
    ("stream_errors", "stream_errors", "TCP streams that failed mid-way."),
    ("send_errors", "send_errors", "Datagrams the socket refused to send."),
    ("receive_errors", "receive_errors", "Errors reading from the UDP socket."),
    ("internal_errors", "internal_errors", "Inputs dropped because handling them failed."),
)

_HANDLER_COUNTERS: Final = (
    ("event_handler_runs", "runs", "Event handler runs started."),
    ("event_handler_failures", "failures", "Event handler runs that failed or exited non-zero."),
    ("event_handler_timeouts", "timeouts", "Event handler runs killed at the timeout."),
    ("event_handler_dropped", "dropped", "Event handler runs not started: too many waiting."),
)


class AgentCollector:
    """A ``prometheus_client`` collector that turns the agent's snapshots into metrics."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        """Every metric, read from the snapshots as they stand now."""
        node = self._sources.node()
        engine, runtime = node.engine, node.runtime
        members = GaugeMetricFamily(
            "shoal_members", "Members in this node's view by state.", labels=["state"]
        )
        for state in ("alive", "suspect", "dead", "left"):
            members.add_metric([state], getattr(engine, f"members_{state}"))
        yield members
        yield _gauge("health_score", "Lifeguard local health: 0 is healthy.", engine.health_score)
        yield _gauge(
            "broadcast_queue_depth",
            "Broadcasts (membership news, user events, queries) waiting to be gossiped.",
            engine.queued_broadcasts,
        )
        yield _gauge(
            "event_queue_depth",
            "Events waiting for the slowest of the node's subscribers.",
            node.queued_events,
        )
        for name, statistic, text in _ENGINE_COUNTERS:
            yield _counter(name, text, getattr(engine, statistic))
        dropped = CounterMetricFamily(
            "shoal_dropped_messages", "Packets or messages dropped, by reason.", labels=["reason"]
        )
        for reason, statistic in _DROP_REASONS:
            dropped.add_metric([reason], getattr(engine, statistic))
        yield dropped
        yield _by_transport(
            "received_packets", "Datagrams received, and TCP streams read.",
            engine.packets_in, runtime.inbound_streams + runtime.outbound_streams,
        )  # fmt: skip
        yield _by_transport(
            "sent_packets", "Datagrams sent, and TCP streams written.",
            engine.packets_out, runtime.inbound_streams + runtime.outbound_streams,
        )  # fmt: skip
        yield _by_transport(
            "received_bytes", "Bytes received.", engine.bytes_in, runtime.stream_bytes_in
        )
        yield _by_transport("sent_bytes", "Bytes sent.", engine.bytes_out, runtime.stream_bytes_out)
        streams = CounterMetricFamily(
            "shoal_tcp_streams", "TCP streams, by who opened them.", labels=["direction"]
        )
        streams.add_metric(["inbound"], runtime.inbound_streams)
        streams.add_metric(["outbound"], runtime.outbound_streams)
        yield streams
        refused = CounterMetricFamily(
            "shoal_refused_streams",
            "Inbound TCP streams closed unanswered: too many at once, or silent.",
            labels=["reason"],
        )
        refused.add_metric(["busy"], runtime.inbound_streams_refused)
        refused.add_metric(["silent"], runtime.inbound_streams_silent)
        yield refused
        for name, statistic, text in _RUNTIME_COUNTERS:
            yield _counter(name, text, getattr(runtime, statistic))
        if node.serf is not None:
            yield _counter(
                "serf_dropped_messages",
                "Serf messages dropped as malformed or over Serf's limits.",
                node.serf.messages_dropped,
            )
            yield _counter(
                "serf_refused_events",
                "User events or queries the de-duplication buffer had no room for.",
                node.serf.events_refused,
            )
        yield from self._rpc()
        handlers = self._sources.handlers()
        if handlers is not None:
            for name, statistic, text in _HANDLER_COUNTERS:
                yield _counter(name, text, getattr(handlers, statistic))

    def _rpc(self) -> Iterator[Metric]:
        rpc = self._sources.rpc()
        yield _gauge("rpc_connections", "RPC connections open.", rpc.connections_open)
        yield _counter(
            "rpc_connections_accepted", "RPC connections accepted.", rpc.connections_accepted
        )
        yield _counter(
            "rpc_connections_refused",
            "RPC connections closed at once: the agent had its most open.",
            rpc.connections_refused,
        )
        requests = CounterMetricFamily(
            "shoal_rpc_requests", "RPC requests, by Serf command.", labels=["command"]
        )
        for command, count in sorted(rpc.requests.items()):
            requests.add_metric([command], count)
        yield requests


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"shoal_{name}", text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"shoal_{name}", text, value=value)


def _by_transport(name: str, text: str, udp: int, tcp: int) -> CounterMetricFamily:
    family = CounterMetricFamily(f"shoal_{name}", text, labels=["transport"])
    family.add_metric(["udp"], udp)
    family.add_metric(["tcp"], tcp)
    return family


def registry_for(sources: Sources) -> CollectorRegistry:
    """A registry of the agent's metrics, and the process' own (memory, CPU, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(sources))
    ProcessCollector(registry=registry)
    return registry


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; reports the bound port, so
    port 0 picks a free one.  Raises OSError when it cannot listen."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    slots = anyio.Semaphore(MAX_SCRAPERS)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            if slots.value == 0:
                return
            async with slots:
                with anyio.move_on_after(REQUEST_TIMEOUT):
                    await _answer(stream, registry)

    async with listener:
        task_status.started(listener.extra(SocketAttribute.local_port))
        await serve_connections(listener, handle, "the metrics endpoint")


async def _answer(stream: SocketStream, registry: CollectorRegistry) -> None:
    head = b""
    try:
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_REQUEST_HEAD:
                await stream.send(_response(431, "Request Header Fields Too Large", b""))
                return
            head += await stream.receive(4096)
        await stream.send(_reply_to(head.split(b"\n", 1)[0], registry))
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return  # the scraper went away


def _reply_to(request_line: bytes, registry: CollectorRegistry) -> bytes:
    """The response to an HTTP request line, such as ``GET /metrics HTTP/1.1``."""
    parts = request_line.strip().split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response(400, "Bad Request", b"expected an HTTP request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method != b"GET":
        return _response(405, "Method Not Allowed", b"only GET /metrics is served\n")
    if target != b"/metrics":
        return _response(404, "Not Found", b"the metrics are at /metrics\n")
    return _response(200, "OK", generate_latest(registry), CONTENT_TYPE_LATEST)


def _response(
    status: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
