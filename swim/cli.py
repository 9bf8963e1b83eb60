"""The ``swim`` command.

The agent-client commands (``members``, ``join``, ``leave``, ``force-leave``, ``tags``,
``event``, ``keys``, ``query``, ``rtt``) speak Serf's RPC protocol, so they drive a shoal agent
or a Serf one alike.  They take serf's flags, single-dash (``-rpc-addr=...``) or double-dash,
and print what serf prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio

from swim import __version__, agent
from swim.agent import AgentError, add_agent_arguments
from swim.config import parse_duration
from swim.demo import DemoError, run_demo
from swim.rpc import (
    AUTH_REQUIRED,
    DEFAULT_RPC_ADDR,
    INVALID_AUTH_TOKEN,
    RpcClient,
    RpcConnectionError,
    RpcError,
    RpcKeyError,
    RpcMember,
    host_port,
    parse_rpc_addr,
)
from swim.serf.coordinate import distance
from swim.toplevel import run_command
from swim.wire.crypto import encode_key
from swim.wire.serf import Coordinate

ClientCommand = Callable[[RpcClient, argparse.Namespace], Awaitable[None]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swim",
        description="shoal: gossip membership that speaks HashiCorp memberlist's wire protocol.",
    )
    parser.add_argument("--version", action="version", version=f"swim (shoal) {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo", help="run a 5-node cluster on loopback through a crash, a restart and a leave"
    ).set_defaults(run=_demo)
    keygen = commands.add_parser(
        "keygen", help="print a new base64 AES-256 key for -encrypt (as `serf keygen` does)"
    )
    keygen.set_defaults(run=_keygen)
    agent_parser = commands.add_parser(
        "agent",
        help="run a cluster member until SIGINT or SIGTERM, with Serf's flags and RPC",
        allow_abbrev=False,
    )
    add_agent_arguments(agent_parser)
    agent_parser.set_defaults(run=agent.main)

    members = _client_parser(
        commands, "members", "list the members of the cluster", _members, "retrieving members"
    )
    _option(
        members,
        "format",
        choices=("text", "table", "json"),
        default="text",
        help="text (alias table) or json, as serf prints them",
    )
    _option(
        members, "status", default="", metavar="REGEX", help="only members whose status matches"
    )
    _option(members, "name", default="", metavar="REGEX", help="only members whose name matches")
    _option(
        members,
        "tag",
        action="append",
        default=[],
        type=_tag,
        metavar="KEY=REGEX",
        help="only members with tag KEY matching REGEX; repeatable",
    )
    _flag(members, "detailed", "also show each member's Serf protocol versions (text format)")

    join = _client_parser(
        commands, "join", "tell the agent to join a cluster", _join, "joining the cluster"
    )
    join.add_argument("address", nargs="+", help="an address of a cluster member (host[:port])")
    _flag(join, "replay", "replay past user events")

    _client_parser(
        commands, "leave", "make the agent leave the cluster and shut down", _leave, "leaving"
    )

    force_leave = _client_parser(
        commands, "force-leave", "mark a failed member as left", _force_leave, "force leaving"
    )
    force_leave.add_argument("node", help="the member's name")
    _flag(force_leave, "prune", "also remove it from the member list at once")

    tags = _client_parser(commands, "tags", "change the agent's tags", _tags, "setting tags")
    _option(
        tags,
        "set",
        action="append",
        default=[],
        type=_tag,
        metavar="KEY=VALUE",
        help="create or change a tag; repeatable",
    )
    _option(
        tags, "delete", action="append", default=[], metavar="KEY", help="remove a tag; repeatable"
    )

    event = _client_parser(
        commands, "event", "send a user event through the cluster", _event, "sending event"
    )
    event.add_argument("name", help="the event's name")
    event.add_argument("payload", nargs="?", default="", help="the event's payload")
    _flag(event, "coalesce", "let repeats within a short time coalesce (default true)", True)

    keys = _client_parser(
        commands, "keys", "change or list the encryption keys of every member", _keys, ""
    )
    _option(keys, "install", default="", metavar="KEY", help="add a key, for decryption only")
    _option(keys, "use", default="", metavar="KEY", help="make an installed key the primary")
    _option(keys, "remove", default="", metavar="KEY", help="remove a key (not the primary)")
    _flag(keys, "list", "list every key and how many members hold it")

    rtt = _client_parser(
        commands,
        "rtt",
        "estimate the round trip time between two members from their network coordinates",
        _rtt,
        "getting coordinates",
    )
    rtt.add_argument("node", nargs="+", help="a member's name; the agent's own if only one")

    query = _client_parser(
        commands, "query", "ask the cluster and print acks and answers", _query, "sending query"
    )
    query.add_argument("name", help="the query's name")
    query.add_argument("payload", nargs="?", default="", help="the query's payload")
    _option(query, "node", action="append", default=[], help="only this member; repeatable")
    _option(
        query,
        "tag",
        action="append",
        default=[],
        type=_tag,
        metavar="KEY=REGEX",
        help="only members with tag KEY matching REGEX; repeatable",
    )
    _flag(query, "no-ack", "do not ask members to acknowledge")
    _option(
        query,
        "timeout",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="how long to collect answers, as 5s or 1m30s (default: Serf's, by cluster size)",
    )
    _option(
        query,
        "relay-factor",
        type=int,
        default=0,
        metavar="N",
        help="members that also relay each answer back, 0 to 255",
    )
    _option(query, "format", choices=("text", "json"), default="text", help="text or json")
    return parser


def _option(parser: argparse.ArgumentParser, name: str, **options: Any) -> None:
    """A serf-style flag: ``-name`` as serf spells it, ``--name`` as Python programs do."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **options)


_BOOLEAN_FLAGS = frozenset(
    {"coalesce", "detailed", "disable-coordinates", "list", "no-ack", "prune", "rejoin", "replay"}
)
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})  # Go's strconv.ParseBool
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def _flag(parser: argparse.ArgumentParser, name: str, help: str, default: bool = False) -> None:
    """A Go boolean flag: ``-name``, ``-name=true``, ``-name=false`` (or ``--no-name``)."""
    assert name in _BOOLEAN_FLAGS
    _option(parser, name, action=argparse.BooleanOptionalAction, default=default, help=help)


def _go_booleans(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with Go's ``-flag=false`` spelled ``--no-flag``: argparse takes no value on a
    flag that needs none, and a flag that may take one would swallow the next argument."""
    result: list[str] = []
    for position, arg in enumerate(argv):
        if arg == "--":
            return [*result, *argv[position:]]
        name, equals, value = arg.removeprefix("-").removeprefix("-").partition("=")
        if not (arg.startswith("-") and equals and name in _BOOLEAN_FLAGS):
            result.append(arg)
        elif value in _TRUE | _FALSE:
            result.append(f"--{name}" if value in _TRUE else f"--no-{name}")
        else:
            parser.error(f"{arg}: {value!r} is not a boolean; use true or false")
    return result


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _duration(text: str) -> float:
    """A Go duration (``500ms``, ``1m30s``, ``0``) in seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rpc_addr(text: str) -> str:
    try:
        parse_rpc_addr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _client_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    command: ClientCommand,
    failing: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help, allow_abbrev=False)
    _option(
        parser,
        "rpc-addr",
        type=_rpc_addr,
        metavar="HOST:PORT",
        default=os.environ.get("SERF_RPC_ADDR") or DEFAULT_RPC_ADDR,
        help=f"the agent's RPC address (default $SERF_RPC_ADDR or {DEFAULT_RPC_ADDR})",
    )
    _option(
        parser,
        "rpc-auth",
        default=os.environ.get("SERF_RPC_AUTH", ""),
        metavar="KEY",
        help="the agent's RPC auth key (default $SERF_RPC_AUTH)",
    )
    parser.set_defaults(run=_run_client, client_command=command, failing=f"Error {failing}")
    return parser


def _demo(_: argparse.Namespace) -> int:
    anyio.run(run_demo, backend="trio")
    return 0


def _keygen(_: argparse.Namespace) -> int:
    print(encode_key(os.urandom(32)))
    return 0


def _run_client(args: argparse.Namespace) -> int:
    if args.command == "tags" and not (args.set or args.delete):
        print("swim tags: give at least one -set KEY=VALUE or -delete KEY", file=sys.stderr)
        return 1
    if args.command == "keys":
        actions = [name for name in ("install", "use", "remove", "list") if getattr(args, name)]
        if len(actions) != 1:
            return _fail(
                "swim keys: give exactly one of -install KEY, -use KEY, -remove KEY, -list"
            )
        args.failing = _KEY_FAILURES[actions[0]]
    if args.command == "rtt" and len(args.node) > 2:
        return _fail("swim rtt: give one or two node names (one: against the agent itself)")
    if args.command == "query" and not 0 <= args.relay_factor <= 255:
        return _fail("swim query: -relay-factor must be between 0 and 255")
    status: int = anyio.run(_client_main, args, backend="trio")
    return status


async def _client_main(args: argparse.Namespace) -> int:
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                RpcClient.connect(args.rpc_addr, args.rpc_auth or None)
            )
        except RpcConnectionError as exc:
            return _fail(f"{exc}; is `swim agent` running?")
        except RpcError as exc:
            return _fail(f"the agent at {args.rpc_addr} refused the connection: {_hinted(exc)}")
        try:
            await args.client_command(client, args)
        except (RpcError, RpcConnectionError) as exc:
            return _fail(f"{args.failing}: {_hinted(exc)}")
        except CommandError as exc:
            return _fail(str(exc))
    return 0


class CommandError(Exception):
    """A client command cannot do what was asked; the message says why, as serf's would."""


def _hinted(exc: Exception) -> str:
    if str(exc) in (AUTH_REQUIRED, INVALID_AUTH_TOKEN):
        return f"{exc}; pass the agent's key with -rpc-auth (or SERF_RPC_AUTH)"
    return str(exc)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


async def _members(client: RpcClient, args: argparse.Namespace) -> None:
    members = await client.members_filtered(dict(args.tag), args.status, args.name)
    if args.format == "json":
        print(members_json(members))
    else:
        print(members_text(members, detailed=args.detailed))


async def _join(client: RpcClient, args: argparse.Namespace) -> None:
    joined = await client.join(args.address, args.replay)
    print(f"Successfully joined cluster by contacting {joined} nodes.")


async def _leave(client: RpcClient, _: argparse.Namespace) -> None:
    await client.leave()
    print("Graceful leave complete")


async def _force_leave(client: RpcClient, args: argparse.Namespace) -> None:
    await client.force_leave(args.node, args.prune)


async def _tags(client: RpcClient, args: argparse.Namespace) -> None:
    await client.update_tags(dict(args.set), args.delete)
    print("Successfully updated agent tags")


async def _event(client: RpcClient, args: argparse.Namespace) -> None:
    await client.user_event(args.name, os.fsencode(args.payload), args.coalesce)
    coalescing = "true" if args.coalesce else "false"
    print(f"Event '{args.name}' dispatched! Coalescing enabled: {coalescing}")


_KEY_FAILURES = {
    "install": "Error installing key",
    "use": "Error changing primary key",
    "remove": "Error removing key",
    "list": "Failed to gather member keys",
}


async def _keys(client: RpcClient, args: argparse.Namespace) -> None:
    try:
        if args.list:
            print("==> Asking all members for installed keys...")
            result = await client.list_keys()
            print("==> Keys gathered, listing cluster keys...\n")
            lines = [f"{key} | [{n}/{result.num_nodes}]" for key, n in sorted(result.keys.items())]
            print(_columns(lines))
        elif args.install:
            print("==> Installing key on all members...")
            await client.install_key(args.install)
            print("==> Successfully installed key!")
        elif args.use:
            print("==> Changing primary key on all members...")
            await client.use_key(args.use)
            print("==> Successfully changed primary key!")
        else:
            print("==> Removing key on all members...")
            await client.remove_key(args.remove)
            print("==> Successfully removed key!")
    except RpcKeyError as exc:
        failures = [
            f"failed: | {node} | {why}" for node, why in sorted(exc.result.messages.items())
        ]
        if failures:
            print(_columns(failures), file=sys.stderr)
        print(file=sys.stderr)
        raise


async def _rtt(client: RpcClient, args: argparse.Namespace) -> None:
    """``serf rtt``: the distance between two members' coordinates, as the agent holds them."""
    nodes = list(args.node)
    if len(nodes) == 1:
        nodes.append((await client.stats())["agent"]["name"])
    first, second = [await _coordinate_of(client, node) for node in nodes]
    try:
        seconds = distance(first, second)
    except ValueError as exc:
        raise CommandError(
            f"Cannot compare the coordinates of {nodes[0]} and {nodes[1]}: {exc}"
        ) from None
    print(f"Estimated {nodes[0]} <-> {nodes[1]} rtt: {seconds * 1000.0:.3f} ms")


async def _coordinate_of(client: RpcClient, node: str) -> Coordinate:
    coordinate = await client.get_coordinate(node)
    if coordinate is None:
        raise CommandError(
            f"Could not find a coordinate for node {_go_json(node)} (unknown, not probed yet, "
            "or its agent runs with -disable-coordinates)"
        )
    return coordinate


async def _query(client: RpcClient, args: argparse.Namespace) -> None:
    acks: list[str] = []
    answers: dict[str, str] = {}
    async with client.query(
        args.name,
        os.fsencode(args.payload),
        nodes=args.node,
        tags=dict(args.tag),
        request_ack=not args.no_ack,
        relay_factor=args.relay_factor,
        timeout=args.timeout,
    ) as records:
        if args.format == "text":
            print(f"Query '{args.name}' dispatched", flush=True)
        async for record in records:
            text = record.payload.decode(errors="replace")
            if record.type == "ack":
                acks.append(record.node)
                if args.format == "text":
                    print(f"Ack from '{record.node}'", flush=True)
            else:
                answers[record.node] = text
                if args.format == "text":
                    shown = text.removesuffix("\n")
                    print(f"Response from '{record.node}': {shown}", flush=True)
    if args.format == "json":
        print(_go_json({"Acks": acks or None, "Responses": dict(sorted(answers.items()))}))
        return
    if not args.no_ack:
        print(f"Total Acks: {len(acks)}")
    print(f"Total Responses: {len(answers)}")


def members_text(members: Sequence[RpcMember], detailed: bool = False) -> str:
    """Members as ``serf members`` prints them: aligned columns name, address, status, tags
    (sorted, where Go's map order is random)."""
    lines = []
    for member in members:
        tags = ",".join(f"{key}={value}" for key, value in sorted(member.tags.items()))
        line = f"{member.name}|{host_port(member.addr, member.port)}|{member.status}|{tags}"
        if detailed:
            line += (
                f"|Protocol Version: {member.delegate_cur}"
                f"|Available Protocol Range: [{member.delegate_min}, {member.delegate_max}]"
            )
        lines.append(line)
    return _columns(lines).strip()


def _columns(lines: Sequence[str]) -> str:
    # ryanuber/columnize as serf uses it: cells split on "|" and trimmed, every column but the
    # last padded to its widest cell, glued with two spaces.
    rows = [[cell.strip() for cell in line.split("|")] for line in lines]
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i == len(widths):
                widths.append(len(cell))
            widths[i] = max(widths[i], len(cell))
    return "\n".join(
        "  ".join([*(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])), row[-1]])
        for row in rows
    )


def members_json(members: Sequence[RpcMember]) -> str:
    """Members as ``serf members -format=json`` prints them, byte for byte."""
    listed = [
        {
            "name": member.name,
            "addr": host_port(member.addr, member.port),
            "port": member.port,
            "tags": dict(sorted(member.tags.items())),
            "status": member.status,
            "protocol": {
                "max": member.delegate_max,
                "min": member.delegate_min,
                "version": member.delegate_cur,
            },
        }
        for member in members
    ]
    return _go_json({"members": listed or None})


def _go_json(value: object) -> str:
    """JSON indented as Go's ``json.MarshalIndent(value, "", "  ")`` writes it."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    # Go's encoding/json escapes these for embedding in HTML; serf's output has them so.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``swim`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(_go_booleans(parser, sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 0
    run: Callable[[argparse.Namespace], int] = args.run
    return run_command(
        f"swim {args.command}",
        lambda: run(args),
        expected=(AgentError, DemoError, RpcError, RpcConnectionError),
    )


if __name__ == "__main__":
    sys.exit(main())
