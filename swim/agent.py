"""``swim agent``: a long-running member with Serf's flags, Serf's RPC endpoint and snapshots.

It runs one :class:`~swim.node.Node` with the Serf layer until SIGINT or SIGTERM, then leaves
gracefully.  Its RPC endpoint speaks Serf's protocol (:mod:`swim.rpc`), so ``serf members``,
``serf join`` and the other ``serf`` commands drive it as they drive a ``serf agent``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import platform
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import sniffio
from anyio.abc import TaskGroup, TaskStatus

from discovery.gateway import Gateway, ListenError
from discovery.host import ServiceHost
from swim import keys, wire
from swim.agentconfig import (
    DEFAULT_RETRY_INTERVAL,
    MIN_RETRY_INTERVAL,
    AgentSettings,
    SettingsError,
    add_config_arguments,
    flag_settings,
    load_settings,
    readable_by_others,
)
from swim.agentgateway import (
    DRAIN_TIMEOUT,
    GatewayOptions,
    GatewaySettingsError,
    add_gateway_arguments,
    drain,
    gateway_options,
    listen_flag,
    start_gateway,
)
from swim.background import Background
from swim.config import Config, ConfigError, parse_duration
from swim.events import MemberFailed, MemberJoined, MemberLeft, MemberUpdated
from swim.logs import SafeFormatter, printable
from swim.members import MemberState, ip_bytes, name_problem
from swim.monitor import LogHub
from swim.node import (
    AdvertiseError,
    BindError,
    Delivered,
    JoinError,
    Node,
    QueryResult,
    parse_host_port,
)
from swim.rpc import (
    DEFAULT_RPC_ADDR,
    INVALID_QUERY_ID,
    RpcEvent,
    RpcKeyError,
    RpcKeyResult,
    RpcMember,
    RpcMemberEvent,
    RpcQuery,
    RpcQueryEvent,
    RpcQueryRecord,
    RpcServer,
    RpcServerStatistics,
    RpcUserEvent,
    parse_rpc_addr,
)
from swim.serf.layer import (
    AGENT_COALESCE_PERIOD,
    AGENT_QUIESCENT_PERIOD,
    INTERNAL_PREFIX,
    LEAVE_PROPAGATE_DELAY,
    MemberReaped,
    QueryAck,
    SerfMember,
    SerfQuery,
    SerfUserEvent,
)
from swim.snapshot import FLUSH_INTERVAL, Snapshot, SnapshotError, SnapshotState, format_address
from swim.stack import UNREADABLE_REPLY
from swim.toplevel import describe
from swim.wire import serf as serf_wire
from swim.wire.crypto import KeyringError, decode_key
from swim.wire.serf import Coordinate

if TYPE_CHECKING:  # only an agent with handlers imports swim.handlers (0.14 MB)
    from swim.handlers import EventHandler, Handlers

log = logging.getLogger("swim.agent")


LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "err": logging.ERROR,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
"""``-log-level`` names, in any case: Serf's (TRACE, DEBUG, INFO, WARN, ERR) and Python's.  shoal
logs nothing finer than DEBUG, so TRACE shows what DEBUG does."""

HANDLER_TIMEOUT = 30.0
"""Seconds an event handler may run before it is killed, unless ``-event-handler-timeout``
says otherwise."""

EVENT_LOOPS = ("trio", "asyncio")
"""What ``-event-loop`` runs the agent on: the same code either way (AnyIO)."""


class AgentError(Exception):
    """The agent cannot start as configured; the message names the flag and the fix."""


@dataclass
class AgentOptions:
    """The agent's flags, named after ``serf agent``'s."""

    node: str
    bind: tuple[str, int] = ("0.0.0.0", 7946)
    advertise: tuple[str, int] | None = None
    join: list[str] = field(default_factory=list)
    retry_join: list[str] = field(default_factory=list)
    retry_interval: float = DEFAULT_RETRY_INTERVAL
    retry_max: int = 0
    """Failed ``-retry-join`` attempts before the agent gives up; 0: never."""
    warnings: tuple[str, ...] = ()
    """What to log once the agent runs (a config file readable by others, ...)."""
    encrypt: str | None = None
    keyring_file: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    profile: str = "lan"
    rpc_addr: str = DEFAULT_RPC_ADDR
    rpc_auth: str | None = None
    snapshot: str | None = None
    rejoin_after_leave: bool = False
    disable_coordinates: bool = False
    """Keep no network coordinate: acks carry none and ``get-coordinate`` answers Ok=false."""
    log_level: str = "INFO"
    event_loop: str = "trio"
    event_handlers: list[EventHandler] = field(default_factory=list)
    event_handler_timeout: float = HANDLER_TIMEOUT
    metrics_addr: tuple[str, int] | None = None
    """Where to serve ``GET /metrics`` (Prometheus' text format); None: nowhere."""
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    """``-http-addr``, ``-dns-addr`` and the config file's ``services``."""


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """``serf agent``'s flags (single dash, as serf spells them; ``--`` works too)."""
    flag = parser.add_argument
    flag("-node", "--node", default=None, help="node name (default: the host name)")
    flag("-bind", "--bind", default="0.0.0.0:7946", help="address to bind UDP and TCP to")
    flag("-advertise", "--advertise", default=None, help="address to advertise to others")
    flag("-join", "--join", action="append", default=[], help="seed to join (repeatable)")
    flag("-encrypt", "--encrypt", default=None, help="base64 key to encrypt traffic with")
    flag("-keyring-file", "--keyring-file", default=None, help="Serf keyring file to use")
    flag("-tag", "--tag", action="append", default=[], help="tag as key=value (repeatable)")
    flag("-profile", "--profile", default="lan", choices=("lan", "wan", "local"))
    flag("-rpc-addr", "--rpc-addr", default=DEFAULT_RPC_ADDR, help="RPC endpoint address")
    flag("-rpc-auth", "--rpc-auth", default=None, help="token RPC clients must present")
    flag("-snapshot", "--snapshot", default=None, help="file to persist members and clocks")
    # Go booleans: -rejoin, -rejoin=true, -rejoin=false (the command rewrites the last form)
    flag(
        "-rejoin",
        "--rejoin",
        action=argparse.BooleanOptionalAction,
        help="rejoin the snapshot after a leave",
    )
    flag(
        "-disable-coordinates",
        "--disable-coordinates",
        action=argparse.BooleanOptionalAction,
        help="keep no network coordinate (serf rtt then has none for this agent)",
    )
    flag("-log-level", "--log-level", default="INFO", help="trace, debug, info, warn or err")
    flag(
        "-event-handler",
        "--event-handler",
        action="append",
        default=[],
        help="[FILTER=]SCRIPT to run on events, such as member-join=./join.sh (repeatable)",
    )
    flag(
        "-event-handler-timeout",
        "--event-handler-timeout",
        default=f"{HANDLER_TIMEOUT:g}s",
        help=f"kill a handler that runs longer (default: {HANDLER_TIMEOUT:g}s)",
    )
    flag(
        "-metrics-addr",
        "--metrics-addr",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    flag(
        "-event-loop",
        "--event-loop",
        default="trio",
        choices=EVENT_LOOPS,
        help="event loop to run on (default: trio)",
    )
    add_config_arguments(parser)
    add_gateway_arguments(parser)


def options_from_args(args: argparse.Namespace) -> AgentOptions:
    """The parsed flags over the ``-config-file`` and ``-config-dir`` files, validated;
    :class:`AgentError` names any bad value and the flag, or file and key, it came from."""
    try:
        settings = load_settings(args.config_paths, flag_settings(args))
    except SettingsError as exc:
        raise AgentError(str(exc)) from None
    options = options_from_settings(settings, event_loop=args.event_loop)
    handlers, handler_timeout = _event_handlers(args.event_handler, args.event_handler_timeout)
    return dataclasses.replace(
        options,
        event_handlers=handlers,
        event_handler_timeout=handler_timeout,
        metrics_addr=_metrics_addr(args.metrics_addr),
    )


def _metrics_addr(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    try:
        host, port = parse_host_port(text, 0, any_port=True)
        if not text.endswith(f":{port}"):
            raise ValueError("no port (an IPv6 host goes in brackets: [::1]:9100)")
        return host, port
    except ValueError as exc:
        raise AgentError(
            f"-metrics-addr {printable(text)!r}: {exc}; expected HOST:PORT, such as 127.0.0.1:9100"
        ) from None


def options_from_settings(settings: AgentSettings, *, event_loop: str = "trio") -> AgentOptions:
    """Check merged settings and fill in serf's defaults for what none of them said."""
    origin = settings.origin
    log_level = settings.log_level or "INFO"
    if log_level.lower() not in LOG_LEVELS:
        raise AgentError(
            f"{origin('log_level')} {log_level!r} is not a level; use trace, debug, info, warn "
            "or err (or warning, error, critical)"
        )
    node = settings.node_name or os.uname().nodename
    problem = name_problem(node)
    if problem is not None:
        raise AgentError(
            f"{origin('node_name')} '{printable(node)}': {problem}; give a printable name"
        )
    rpc_addr = settings.rpc_addr or DEFAULT_RPC_ADDR
    try:
        parse_rpc_addr(rpc_addr, any_port=True)
    except ValueError as exc:
        raise AgentError(f"{origin('rpc_addr')}: {exc}") from None
    profile = settings.profile or "lan"
    try:
        Config.profile(profile)
    except ConfigError as exc:
        raise AgentError(f"{origin('profile')}: {exc}") from None
    retry_max = settings.retry_max_attempts or 0
    if retry_max < 0:
        raise AgentError(
            f"{origin('retry_max_attempts')} {retry_max}: expected how many attempts, such as "
            "5 (0: no limit)"
        )
    warnings = list(settings.warnings)
    retry_interval = settings.retry_interval
    if retry_interval is None:
        retry_interval = DEFAULT_RETRY_INTERVAL
    elif retry_interval < MIN_RETRY_INTERVAL:  # as serf: raised, with a warning
        warnings.append(
            f"{origin('retry_interval')} is below {MIN_RETRY_INTERVAL:g}s; retrying every "
            f"{MIN_RETRY_INTERVAL:g}s"
        )
        retry_interval = MIN_RETRY_INTERVAL
    try:
        gateway = gateway_options(settings)
    except GatewaySettingsError as exc:
        raise AgentError(str(exc)) from None
    return AgentOptions(
        node=node,
        bind=_address(origin("bind"), settings.bind or "0.0.0.0:7946", 7946, any_port=True),
        advertise=(
            _address(origin("advertise"), settings.advertise, 7946, any_port=False)
            if settings.advertise
            else None
        ),
        join=list(settings.start_join),
        encrypt=settings.encrypt_key,
        keyring_file=settings.keyring_file,
        tags=dict(settings.tags),
        profile=profile,
        rpc_addr=rpc_addr,
        rpc_auth=settings.rpc_auth,
        snapshot=settings.snapshot_path,
        rejoin_after_leave=bool(settings.rejoin_after_leave),
        disable_coordinates=bool(settings.disable_coordinates),
        log_level=log_level,
        event_loop=event_loop,
        retry_join=list(settings.retry_join),
        retry_interval=retry_interval,
        retry_max=retry_max,
        warnings=tuple(warnings),
        gateway=gateway,
    )


def _event_handlers(specs: list[str], timeout: str) -> tuple[list[EventHandler], float]:
    """The ``-event-handler`` flags and ``-event-handler-timeout``, or AgentError."""
    handlers = []
    if specs:
        from swim.handlers import parse_event_handler  # noqa: PLC0415 (see TYPE_CHECKING)
    for spec in specs:
        try:
            handlers.append(parse_event_handler(spec))
        except ValueError as exc:
            raise AgentError(f"-event-handler {printable(spec)!r}: {exc}") from None
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise AgentError(f"-event-handler-timeout: {exc}") from None
    if seconds <= 0:
        raise AgentError(f"-event-handler-timeout {timeout!r}: give a duration above 0, like 30s")
    return handlers, seconds


def _address(flag: str, text: str, default_port: int, *, any_port: bool) -> tuple[str, int]:
    try:
        return parse_host_port(text, default_port, any_port=any_port)
    except ValueError as exc:
        port = " (0 picks a free one)" if any_port else ""
        raise AgentError(f"{flag} {text!r}: {exc}; give HOST[:PORT]{port}") from None


def load_keyring(options: AgentOptions) -> wire.Keyring | None:
    """The keyring from ``-keyring-file`` and/or ``-encrypt`` (which becomes primary)."""
    keys: list[bytes] = []
    try:
        if options.keyring_file and os.path.exists(options.keyring_file):
            keys = list(wire.Keyring.from_file(options.keyring_file).keys)
            exposed = readable_by_others(options.keyring_file, "a keyring file")
            if exposed is not None:
                log.warning("%s", exposed)
    except (KeyringError, OSError) as exc:
        raise AgentError(f"-keyring-file {options.keyring_file}: {describe(exc)}") from None
    if options.encrypt:
        try:
            key = decode_key(options.encrypt)
        except KeyringError as exc:
            raise AgentError(f"-encrypt: {exc}") from None
        keys = [key, *(k for k in keys if k != key)]
    if not keys:
        return None
    keyring = wire.Keyring(keys)
    if options.keyring_file and not os.path.exists(options.keyring_file):
        try:
            keyring.save(options.keyring_file)
        except OSError as exc:
            raise AgentError(
                f"-keyring-file {options.keyring_file}: cannot write it ({describe(exc)}); "
                "give a path in a directory the agent can write"
            ) from None
    return keyring


def tags_over_limit(tags: Mapping[str, str], limit: int, flag: str) -> str | None:
    """None when ``tags`` fit in ``limit`` bytes of metadata; else a message that says how big
    they are and which to shorten or drop (as ``flag key=value``), the biggest first."""
    size = len(serf_wire.encode_tags(tags, sys.maxsize))
    if size <= limit:
        return None
    empty = len(serf_wire.encode_tags({}))
    shares = sorted(
        ((len(serf_wire.encode_tags({k: v}, sys.maxsize)) - empty, k, v) for k, v in tags.items()),
        key=lambda share: (-share[0], share[1]),
    )
    named, freed = [], 0
    for share, key, value in shares:
        text = f"{key}={value}"
        named.append(f"{flag} {text if len(text) <= 24 else text[:20] + '...'} ({share} bytes)")
        freed += share
        if size - freed <= limit:
            break
    return (
        f"the tags take {size} bytes encoded, over the limit of {limit} bytes for all tags "
        f"together; shorten or drop {', '.join(named)}"
    )


def _listen_advice(flag: str, host: str, port: int, exc: OSError, example: str) -> str:
    """What went wrong listening on ``host:port`` given by ``flag``, and what to do."""
    address = format_address((host, port))
    where = f"{flag} {address}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: port {port} is in use (is another agent running?); stop it, or choose "
            f"another port with {flag}={address.rpartition(':')[0]}:PORT"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {host} is not an address of this machine; give {flag} one of its "
            f"addresses, such as {example}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{where}: not allowed to listen on port {port} (ports below 1024 need root); "
            f"choose another port with {flag}"
        )
    if isinstance(exc, socket.gaierror) or (exc.errno or 0) < 0:
        return f"{where}: cannot resolve {host!r}; give {flag} an IP address of this machine"
    return f"{where}: {describe(exc)}"


def _join_advice(exc: JoinError, flag: str = "-join") -> str:
    """Why ``flag``'s seeds could not be joined, and the fix, after ``flag: ``."""
    if UNREADABLE_REPLY in exc.failures.values():
        fix = "-encrypt (or -keyring-file) must hold the cluster's key"
    elif flag == "-join":
        fix = (
            "check the -join addresses (an agent must run there), or leave -join out to "
            "start a new cluster"
        )
    else:
        fix = f"check the {flag} addresses (an agent must run there)"
    return f"{exc}; {fix}"


@dataclass(frozen=True)
class RunningAgent:
    """What :func:`run_agent` reports once it is up: its node and its RPC address."""

    node: Node
    rpc_address: tuple[str, int]


class NodeBackend:
    """What the RPC endpoint drives: this agent's node and Serf layer."""

    def __init__(
        self,
        node: Node,
        shutdown: anyio.Event,
        nursery: TaskGroup,
        rpc_statistics: Callable[[], RpcServerStatistics],
    ) -> None:
        self._node = node
        self._shutdown = shutdown
        self._nursery = nursery
        self._rpc_statistics = rpc_statistics
        self._subscribers: list[Callable[[RpcEvent], None]] = []
        self.handlers: Handlers | None = None
        """The ``-event-handler`` scripts, whose figures :meth:`stats` reports."""
        self.logs = LogHub()
        """The log lines RPC monitors get, once :meth:`LogHub.install` ed."""
        self.gateway: Gateway | None = None
        """The ``-http-addr`` / ``-dns-addr`` gateway, whose counters :meth:`stats` reports."""

    def members(self) -> list[RpcMember]:
        return [_rpc_member(m) for m in self._node.serf.members()]

    async def join(self, addresses: list[str], replay: bool) -> int:
        return await self._node.join(addresses, replay=replay)

    async def leave(self) -> None:
        await self._node.leave()
        self._nursery.start_soon(self._shut_down_after_reply)

    async def _shut_down_after_reply(self) -> None:
        # the RPC reply goes out once leave() returns; Serf's agent also lingers a moment
        await anyio.sleep(LEAVE_PROPAGATE_DELAY)
        self._shutdown.set()

    async def force_leave(self, node: str, prune: bool) -> None:
        await self._node.force_leave(node, prune)

    async def set_tags(self, add: dict[str, str], delete: list[str]) -> None:
        tags = {k: v for k, v in self._node.serf.tags.items() if k not in delete}
        tags.update(add)
        too_big = tags_over_limit(tags, self._node.config.meta_max_size, "-set")
        if too_big is not None:
            raise ValueError(too_big)
        await self._node.set_tags(tags)

    async def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        await self._node.user_event(name, payload, coalesce)

    def stats(self) -> dict[str, dict[str, str]]:
        node = self._node
        statistics = node.statistics()
        members = node.serf.members()
        counts = {status: 0 for status in ("alive", "leaving", "left", "failed")}
        for member in members:
            counts[member.status.value] += 1
        return {
            "agent": {"name": node.name},
            "runtime": _runtime_section(),
            "serf": {
                "members": str(len(members)),
                "failed": str(counts["failed"]),
                "left": str(counts["left"]),
                "health_score": str(statistics.engine.health_score),
                "member_time": str(node.serf.clock.time),
                "event_time": str(node.serf.event_clock.time),
                "query_time": str(node.serf.query_clock.time),
                "encrypted": str(node.engine.wire_options.keyring is not None).lower(),
                **_strings(*filter(None, [statistics.serf])),
            },
            "memberlist": {
                **_strings(statistics.engine, statistics.runtime),
                "queued_events": str(statistics.queued_events),
            },
            "rpc": _rpc_section(self._rpc_statistics()),
            "tags": dict(node.serf.tags),
            "event_handlers": {
                f"{event}:{name}": script.script
                for script in (self.handlers.scripts if self.handlers else ())
                for event, name in script.filters
            },
            **({"handlers": _strings(self.handlers.statistics())} if self.handlers else {}),
            **({"gateway": _gateway_section(self.gateway)} if self.gateway else {}),
        }

    def coordinate(self, node: str) -> Coordinate | None:
        return self._node.serf.coordinate(node)

    def subscribe(self, deliver: Callable[[RpcEvent], None]) -> Callable[[], None]:
        self._subscribers.append(deliver)
        return lambda: self._subscribers.remove(deliver)

    def monitor(self, level: str, deliver: Callable[[str], None]) -> Callable[[], None]:
        return self.logs.monitor(level, deliver)

    async def install_key(self, key: str) -> RpcKeyResult:
        log.info("initiating key installation")
        return await _key_operation(keys.install_key(self._node, key))

    async def use_key(self, key: str) -> RpcKeyResult:
        log.info("initiating primary key change")
        return await _key_operation(keys.use_key(self._node, key))

    async def remove_key(self, key: str) -> RpcKeyResult:
        log.info("initiating key removal")
        return await _key_operation(keys.remove_key(self._node, key))

    async def list_keys(self) -> RpcKeyResult:
        log.info("initiating key listing")
        return await _key_operation(keys.list_keys(self._node))

    async def query(self, query: RpcQuery) -> AsyncIterator[RpcQueryRecord]:
        # Serf's agent keeps its internal queries to itself, but for a bare ping.
        if query.name.startswith(INTERNAL_PREFIX) and (
            query.name != INTERNAL_PREFIX + "ping" or query.payload
        ):
            raise ValueError(f"Queries cannot contain the '{INTERNAL_PREFIX}' prefix")
        result = await self._node.start_query(
            query.name,
            query.payload,
            nodes=query.filter_nodes,
            tags=query.filter_tags,
            request_ack=query.request_ack,
            relay_factor=query.relay_factor,
            timeout=query.timeout or None,
        )
        return _query_records(result)

    async def respond(self, query_id: int, payload: bytes) -> None:
        query = self._node.serf.received_query(query_id)
        if query is None:
            raise ValueError(f"{INVALID_QUERY_ID}: query {query_id} timed out")
        await self._node.respond(query, payload)

    def publish(self, event: Delivered) -> None:
        """Pass a node event on to RPC streams, as Serf's event names."""
        rpc = _rpc_event(event, self._node)
        if rpc is not None:
            for deliver in list(self._subscribers):
                deliver(rpc)


def _runtime_section() -> dict[str, str]:
    """What serf info's runtime section says of Go, said of this Python process."""
    loop = sniffio.current_async_library()
    return {
        "implementation": f"shoal (Python, {loop})",
        "os": sys.platform,
        "arch": platform.machine(),
        "version": f"python{platform.python_version()}",
        "event_loop": loop,
        "tasks": str(_task_count(loop)),
        "threads": str(threading.active_count()),
        "cpu_count": str(os.cpu_count() or 0),
    }


def _task_count(loop: str) -> int:
    """The event loop's tasks (what serf's goroutines count is to Go)."""
    if loop == "trio":
        import trio  # noqa: PLC0415 (an agent carries only the loop it runs on)

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(
                count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
            )

        root = trio.lowlevel.current_root_task()
        return 0 if root is None else count(root)
    import asyncio  # noqa: PLC0415

    return len(asyncio.all_tasks())


def _gateway_section(gateway: Gateway) -> dict[str, str]:
    """The gateway's counters: ``http.NAME`` and ``dns.NAME``, and its index."""
    section = {"index": str(gateway.view.index)}
    for prefix, counters in (
        ("http", gateway.http_statistics()),
        ("dns", gateway.dns_statistics()),
    ):
        section.update({f"{prefix}.{k}": v for k, v in _strings(counters).items()})
    return section


def _rpc_section(stats: RpcServerStatistics) -> dict[str, str]:
    """The RPC server's counters as :func:`_strings` has them, and its requests by command as
    ``requests.COMMAND``."""
    section = {
        spec.name: str(getattr(stats, spec.name))
        for spec in dataclasses.fields(stats)
        if spec.name != "requests"
    }
    section.update({f"requests.{command}": str(n) for command, n in stats.requests.items()})
    return section


async def _key_operation(operation: Awaitable[keys.KeyResult]) -> RpcKeyResult:
    try:
        return _rpc_key_result(await operation)
    except keys.KeyOperationError as exc:
        raise RpcKeyError(str(exc), _rpc_key_result(exc.result)) from None


def _strings(*snapshots: object) -> dict[str, str]:
    """Counter snapshots as the string map Serf's stats reply carries."""
    return {
        name: str(value)
        for snapshot in snapshots
        for name, value in dataclasses.asdict(snapshot).items()  # type: ignore[call-overload]
    }


def _rpc_key_result(result: keys.KeyResult) -> RpcKeyResult:
    return RpcKeyResult(
        result.num_nodes, result.num_resp, result.num_err, result.messages, result.keys
    )


async def _query_records(result: QueryResult) -> AsyncIterator[RpcQueryRecord]:
    async for arrival in result.arrivals():
        if isinstance(arrival, QueryAck):
            yield RpcQueryRecord("ack", arrival.node)
        else:
            yield RpcQueryRecord("response", arrival.node, arrival.payload)


def _rpc_member(member: SerfMember) -> RpcMember:
    vsn = member.vsn
    return RpcMember(
        member.name,
        ip_bytes(member.address[0]),
        member.address[1],
        dict(member.tags),
        member.status.value,
        vsn[0],
        vsn[1],
        vsn[2],
        vsn[3],
        vsn[4],
        vsn[5],
    )


_MEMBER_EVENT_NAMES: dict[type, str] = {
    MemberJoined: "member-join",
    MemberLeft: "member-leave",
    MemberFailed: "member-failed",
    MemberUpdated: "member-update",
}


def _rpc_event(event: Delivered, node: Node) -> RpcEvent | None:
    if isinstance(event, SerfUserEvent):
        return RpcUserEvent(event.name, event.payload, event.coalesce, event.ltime)
    if isinstance(event, SerfQuery):
        return RpcQueryEvent(event.serial, event.ltime, event.name, event.payload)
    if isinstance(event, MemberReaped):
        reaped = event.member
        return None if reaped is None else RpcMemberEvent("member-reap", (_rpc_member(reaped),))
    name = _MEMBER_EVENT_NAMES.get(type(event))
    if name is None:
        return None
    member_name = event.member.name  # type: ignore[union-attr]
    serf_member = next((m for m in node.serf.members() if m.name == member_name), None)
    if serf_member is None:
        return None
    return RpcMemberEvent(name, (_rpc_member(serf_member),))


async def run_agent(
    options: AgentOptions,
    *,
    task_status: TaskStatus[RunningAgent] = anyio.TASK_STATUS_IGNORED,
    handle_signals: bool = True,
) -> None:
    """Run the agent until a signal, an RPC ``leave`` or cancellation; leave on the way out
    (except when cancelled).  A start-up mistake raises :class:`AgentError` naming the flag;
    once running, a failing disk under the snapshot is logged and the agent carries on."""
    try:
        config = Config.profile(options.profile)
    except ConfigError as exc:
        raise AgentError(f"-profile: {exc}") from None
    for warning in options.warnings:
        log.warning("%s", warning)
    keyring = load_keyring(options)
    too_big = tags_over_limit(options.tags, config.meta_max_size, "-tag")
    if too_big is not None:
        raise AgentError(f"-tag: {too_big}")
    rpc_host, rpc_port = parse_rpc_addr(options.rpc_addr, any_port=True)
    shutdown = anyio.Event()
    async with AsyncExitStack() as stack:
        snapshot = _open_snapshot(options)
        if snapshot is not None:
            stack.callback(snapshot.close)
        node = await _start_node(stack, options, config, keyring)
        nursery = await stack.enter_async_context(Background())
        rpc_server = RpcServer(options.rpc_auth)
        backend = NodeBackend(node, shutdown, nursery, rpc_server.statistics)
        backend.logs.install()
        stack.callback(backend.logs.close)
        if snapshot is not None:
            clocks = snapshot.previous
            node.serf.clock.witness(clocks.member_clock)
            node.serf.event_clock.witness(clocks.event_clock)
            node.serf.query_clock.witness(clocks.query_clock)
        if options.event_handlers:
            backend.handlers = _start_handlers(nursery, options, node, backend)
        nursery.start_soon(_forward_events, node, backend, snapshot)
        if snapshot is not None:
            nursery.start_soon(_flush_snapshot, snapshot, node)
        try:
            rpc_port = await nursery.start(rpc_server.serve, backend, rpc_host, rpc_port)
        except OSError as exc:
            example = f"-rpc-addr=127.0.0.1:{rpc_port}"
            advice = _listen_advice("-rpc-addr", rpc_host, rpc_port, exc, example)
            raise AgentError(advice) from None
        if options.metrics_addr is not None:
            await _start_metrics(nursery, options.metrics_addr, node, rpc_server, backend)
        services = None
        if options.gateway.wanted:
            backend.gateway, services = await _start_gateway(stack, node, options.gateway)
        if handle_signals:
            nursery.start_soon(_wait_for_signal, shutdown)
        try:
            await _initial_join(node, options, snapshot.previous if snapshot else None)
        except JoinError as exc:
            raise AgentError(f"-join: {_join_advice(exc)}") from None
        log.info(
            "agent %s running at %s:%d, RPC at %s:%d, on %s",
            node.name,
            *node.address,
            rpc_host,
            rpc_port,
            sniffio.current_async_library(),
        )
        if options.retry_join:
            nursery.start_soon(_retry_join, node, options)
        task_status.started(RunningAgent(node, (rpc_host, rpc_port)))
        await shutdown.wait()
        if services is not None and node.engine.local_member.state is not MemberState.LEFT:
            with anyio.move_on_after(DRAIN_TIMEOUT + config.leave_timeout + 2.0):
                await drain(services)
        if node.engine.local_member.state is not MemberState.LEFT:
            log.info("leaving the cluster")
            with anyio.move_on_after(config.leave_timeout + 2.0):
                await node.leave(config.leave_timeout)
        if snapshot is not None:
            snapshot.leave()


async def _start_metrics(
    nursery: TaskGroup,
    address: tuple[str, int],
    node: Node,
    rpc_server: RpcServer,
    backend: NodeBackend,
) -> None:
    """Serve ``GET /metrics`` from this event loop (``prometheus_client`` is imported only
    here, so an agent without ``-metrics-addr`` pays nothing for it)."""
    from swim import metrics  # noqa: PLC0415 (lazy, see above)

    handlers = backend.handlers
    registry = metrics.registry_for(
        metrics.Sources(
            node=node.statistics,
            rpc=rpc_server.statistics,
            handlers=lambda: handlers.statistics() if handlers is not None else None,
        )
    )
    host, port = address
    try:
        port = await nursery.start(metrics.serve_metrics, registry, host, port)
    except OSError as exc:
        example = f"-metrics-addr=127.0.0.1:{port}"
        raise AgentError(_listen_advice("-metrics-addr", host, port, exc, example)) from None
    log.info("serving metrics at http://%s/metrics", format_address((host, port)))


async def _start_gateway(
    stack: AsyncExitStack, node: Node, options: GatewayOptions
) -> tuple[Gateway | None, ServiceHost]:
    """The agent's services and gateway; a listener that fails names its flag and the fix."""
    try:
        gateway, host = await start_gateway(stack, node, options)
    except ListenError as exc:
        flag = listen_flag(exc)
        example = f"{flag}=127.0.0.1:{exc.port}"
        raise AgentError(_listen_advice(flag, exc.host, exc.port, exc.cause, example)) from None
    except GatewaySettingsError as exc:
        raise AgentError(str(exc)) from None
    listening = (gateway.http_address, gateway.dns_address) if gateway else (None, None)
    for name, address in zip(("HTTP API", "DNS"), listening, strict=True):
        if address is not None:
            log.info("gateway: %s at %s", name, format_address(address))
    return gateway, host


def _start_handlers(
    nursery: TaskGroup, options: AgentOptions, node: Node, backend: NodeBackend
) -> Handlers:
    """Run the ``-event-handler`` scripts on the events the RPC streams get."""
    from swim.handlers import Handlers  # noqa: PLC0415 (see TYPE_CHECKING)

    handlers = Handlers(
        options.event_handlers,
        self_member=lambda: (node.name, node.serf.tags),
        answer=backend.respond,
        timeout=options.event_handler_timeout,
    )
    backend.subscribe(handlers.publish)
    nursery.start_soon(handlers.run)
    return handlers


def _open_snapshot(options: AgentOptions) -> Snapshot | None:
    if not options.snapshot:
        return None
    try:
        return Snapshot(
            options.snapshot,
            rejoin_after_leave=options.rejoin_after_leave,
            clock=anyio.current_time,
        )
    except SnapshotError as exc:
        raise AgentError(
            f"-snapshot: {exc}; give a file in a directory the agent can write"
        ) from None


async def _start_node(
    stack: AsyncExitStack, options: AgentOptions, config: Config, keyring: wire.Keyring | None
) -> Node:
    """The agent's node, bound and running until ``stack`` closes."""
    node = Node(
        config,
        name=options.node,
        bind=options.bind,
        advertise=options.advertise,
        keyring=keyring,
        keyring_file=options.keyring_file,
        tags=options.tags,
        user_coalesce_period=AGENT_COALESCE_PERIOD,
        user_quiescent_period=AGENT_QUIESCENT_PERIOD,
        disable_coordinates=options.disable_coordinates,
    )
    host, port = options.bind
    try:
        return await stack.enter_async_context(node)
    except BindError as exc:
        example = f"-bind=0.0.0.0:{port} for all of them"
        raise AgentError(_listen_advice("-bind", host, port, exc, example)) from None
    except AdvertiseError:
        raise AgentError(
            f"-bind {host}:{port}: cannot tell which address to advertise, as this host's "
            "name resolves only to loopback; add -advertise=IP with the address others reach "
            "this machine at, or -bind to that address"
        ) from None


async def _initial_join(node: Node, options: AgentOptions, previous: SnapshotState | None) -> None:
    """Join the ``-join`` seeds (failing fast when none answers), or else rejoin the members a
    snapshot remembers."""
    remembered = previous is not None and bool(previous.alive)
    if options.join:
        try:
            await node.join(options.join)
            return
        except JoinError:
            if not remembered:
                raise
            log.warning("the -join seeds did not answer; trying the snapshot's members")
    if previous is None or not remembered:
        return
    if previous.left and not options.rejoin_after_leave:
        log.info("the snapshot ends with a leave; not rejoining (use -rejoin to)")
        return
    for seed in previous.seeds(exclude=node.name):
        try:
            await node.join([seed])
            log.info("rejoined through %s from the snapshot", seed)
            return
        except JoinError:
            continue
    log.warning("no member from the snapshot answered; running alone until someone joins")


async def _retry_join(node: Node, options: AgentOptions) -> None:
    """Join the ``-retry-join`` seeds, trying again every ``-retry-interval`` until one answers,
    as serf does; after ``-retry-max`` failed attempts (0: no limit) :class:`AgentError` ends
    the agent."""
    failed = 0
    while True:
        try:
            joined = await node.join(options.retry_join)
        except JoinError as exc:
            failed += 1
            if failed == options.retry_max:
                raise AgentError(
                    f"-retry-max: gave up after {failed} attempt{'s' if failed > 1 else ''} to "
                    f"join: {_join_advice(exc, '-retry-join')}, or raise -retry-max (0: no limit)"
                ) from None
            log.warning("-retry-join: %s; retrying in %gs", exc, options.retry_interval)
            await anyio.sleep(options.retry_interval)
        else:
            log.info("joined the cluster through %d of the -retry-join seeds", joined)
            return


async def _forward_events(node: Node, backend: NodeBackend, snapshot: Snapshot | None) -> None:
    async for event in node.events():
        backend.publish(event)
        if snapshot is None:
            continue
        if isinstance(event, MemberJoined):
            snapshot.alive(event.member.name, event.member.address)
        elif isinstance(event, MemberLeft | MemberFailed):
            snapshot.not_alive(event.member.name)


async def _flush_snapshot(snapshot: Snapshot, node: Node) -> None:
    while True:
        await anyio.sleep(FLUSH_INTERVAL)
        serf = node.serf
        snapshot.clocks(serf.clock.time, serf.event_clock.time, serf.query_clock.time)
        snapshot.flush()


async def _wait_for_signal(shutdown: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("caught %s: leaving gracefully", signal.Signals(signum).name)
            shutdown.set()
            return


def main(args: argparse.Namespace) -> int:
    """The ``swim agent`` command; a start-up mistake raises :class:`AgentError` (which the
    ``swim`` command prints as one line)."""
    options = options_from_args(args)
    handler = logging.StreamHandler()
    # one record, one line: names and strings from the network are escaped, never raw
    handler.setFormatter(SafeFormatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    level = LOG_LEVELS[options.log_level.lower()]
    handler.setLevel(level)  # a monitor may lower the root logger's level: not this output's
    logging.basicConfig(level=level, handlers=[handler])
    anyio.run(run_agent, options, backend=options.event_loop)
    return 0
