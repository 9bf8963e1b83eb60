"""`swim agent` in-process: its RPC endpoint, snapshots, flags, and the real serf CLI."""

from __future__ import annotations

import argparse
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from swim import node as node_module
from swim.agent import (
    LOG_LEVELS,
    AgentError,
    AgentOptions,
    RunningAgent,
    add_agent_arguments,
    options_from_args,
    run_agent,
)
from swim.node import AdvertiseError
from swim.rpc import RpcClient, RpcError, RpcMemberEvent, RpcQueryEvent, RpcUserEvent

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def options(name: str, **changes: object) -> AgentOptions:
    base = AgentOptions(
        node=name,
        bind=(LOOPBACK, 0),
        profile="local",
        rpc_addr=f"{LOOPBACK}:{free_port()}",
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


@asynccontextmanager
async def agent(opts: AgentOptions) -> AsyncIterator[RunningAgent]:
    async with trio.open_nursery() as nursery:
        running: RunningAgent = await nursery.start(
            lambda task_status: run_agent(opts, task_status=task_status, handle_signals=False)
        )
        yield running
        nursery.cancel_scope.cancel()


def rpc(running: RunningAgent) -> str:
    host, port = running.rpc_address
    return f"{host}:{port}"


def seed(running: RunningAgent) -> str:
    host, port = running.node.address
    return f"{host}:{port}"


async def wait_until(condition: Callable[[], bool], limit: float = 20.0) -> None:
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(0.05)


async def test_rpc_members_join_tags_events_and_leave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with agent(options("a1", tags={"role": "web"})) as a, agent(options("a2")) as b:
        async with RpcClient.connect(rpc(b)) as client:
            assert await client.join([seed(a)], replay=False) == 1
            await wait_until(lambda: len(a.node.serf.members()) == 2)
            members = {m.name: m for m in await client.members()}
            assert members["a1"].tags == {"role": "web"} and members["a1"].status == "alive"
            async with client.stream("member-update,user:deploy") as events:
                await client.update_tags({"zone": "z1"}, [])
                await client.user_event("deploy", b"v2", coalesce=False)
                seen = []
                with trio.fail_after(10):
                    async for event in events:
                        seen.append(event)
                        if isinstance(event, RpcUserEvent):
                            break
            assert RpcUserEvent("deploy", b"v2", False, seen[-1].ltime) in seen  # type: ignore[union-attr]
            await wait_until(
                lambda: any(
                    m.name == "a2" and m.tags == {"zone": "z1"} for m in a.node.serf.members()
                )
            )
            stats = await client.stats()
            assert stats["agent"]["name"] == "a2"
            # serf info shows the RPC server's counters too: this connection, its requests.
            assert stats["rpc"]["connections_open"] == "1"
            assert (stats["rpc"]["requests.handshake"], stats["rpc"]["requests.stats"]) == (
                "1",
                "1",
            )
            assert stats["rpc"]["protocol_errors"] == "0"
        async with RpcClient.connect(rpc(a)) as client:
            await client.leave()
        await wait_until(
            lambda: any(m.name == "a1" and m.status.value == "left" for m in b.node.serf.members())
        )


async def test_snapshot_rejoins_remembered_members_without_join(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    snapshot = str(tmp_path / "a.snapshot")
    async with agent(options("b1")) as b:
        async with agent(options("a1", snapshot=snapshot, join=[seed(b)])) as a:
            await wait_until(lambda: len(a.node.serf.members()) == 2)
            await trio.sleep(1.0)  # let the snapshot flush
        # a1 stopped without leaving; started again with no -join it rejoins b1 from the snapshot
        async with agent(options("a1", snapshot=snapshot)) as again:
            await wait_until(
                lambda: any(
                    m.name == "b1" and m.status.value == "alive" for m in again.node.serf.members()
                )
            )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return parser.parse_args(argv)


def test_flags_follow_serf_agent() -> None:
    opts = options_from_args(
        parse(
            ["-node=x", "-bind=127.0.0.1:8000", "-join", "a:1", "-join", "b:2", "-tag", "role=db"]
        )
    )
    assert (opts.node, opts.bind, opts.join, opts.tags) == (
        "x",
        ("127.0.0.1", 8000),
        ["a:1", "b:2"],
        {"role": "db"},
    )
    with pytest.raises(AgentError, match="-tag 'oops': expected key=value"):
        options_from_args(parse(["-tag", "oops"]))


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("TRACE", logging.DEBUG),
        ("debug", logging.DEBUG),
        ("Info", logging.INFO),
        ("WARN", logging.WARNING),
        ("warning", logging.WARNING),
        ("ERR", logging.ERROR),
        ("error", logging.ERROR),
        ("critical", logging.CRITICAL),
    ],
)
def test_log_levels_take_serfs_names_and_pythons(name: str, level: int) -> None:
    opts = options_from_args(parse([f"-log-level={name}"]))
    assert LOG_LEVELS[opts.log_level.lower()] == level


async def test_a_start_up_mistake_comes_out_of_run_agent_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(AgentError, match=r"^-join: could not join the cluster: 127\.0\.0\.1:"):
        await run_agent(options("lonely", join=[f"{LOOPBACK}:{free_port()}"]), handle_signals=False)


async def test_retry_join_keeps_trying_until_the_seed_is_up(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    early = options("early", retry_join=[f"{LOOPBACK}:{port}"], retry_interval=30.0)
    with caplog.at_level(logging.WARNING, "swim.agent"):
        async with agent(early) as waiting:
            await trio.sleep(100)  # attempts at 0, 30, 60 and 90 s find nobody
            assert [m.name for m in waiting.node.serf.members()] == ["early"]
            async with agent(options("seed", bind=(LOOPBACK, port))) as seed:
                # the attempt at 120 s finds it
                await wait_until(lambda: len(seed.node.serf.members()) == 2, limit=60)
                await wait_until(lambda: len(waiting.node.serf.members()) == 2)
    assert (
        caplog.messages
        == [
            f"-retry-join: could not join the cluster: {LOOPBACK}:{port}: Connection refused; "
            "retrying in 30s"
        ]
        * 4
    )


async def test_retry_join_gives_up_after_retry_max_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dead = f"{LOOPBACK}:{free_port()}"
    with pytest.raises(AgentError) as error:
        await run_agent(options("lonely", retry_join=[dead], retry_max=3), handle_signals=False)
    assert str(error.value) == (
        f"-retry-max: gave up after 3 attempts to join: could not join the cluster: {dead}: "
        "Connection refused; check the -retry-join addresses (an agent must run there), or "
        "raise -retry-max (0: no limit)"
    )


async def test_joining_an_encrypted_cluster_without_its_key_points_at_the_key_flags(
    autojump_clock: trio.testing.MockClock,
) -> None:
    key = "cg8StVXbQJ0gPvMd9o7yrg=="  # 16 bytes, base64
    async with agent(options("keyed", encrypt=key)) as keyed:
        with pytest.raises(AgentError) as error:
            await run_agent(options("keyless", join=[seed(keyed)]), handle_signals=False)
    assert str(error.value) == (
        f"-join: could not join the cluster: {seed(keyed)}: the reply could not be read "
        "(likely an encryption key or label mismatch); -encrypt (or -keyring-file) must hold "
        "the cluster's key"
    )


async def test_a_wildcard_bind_without_an_address_to_advertise_names_the_flags(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    def nothing_but_loopback(bind_host: str) -> str:
        raise AdvertiseError(f"cannot tell which address to advertise for {bind_host!r}")

    monkeypatch.setattr(node_module, "_advertise_host", nothing_but_loopback)
    with pytest.raises(AgentError) as error:
        await run_agent(options("wild", bind=("0.0.0.0", 0)), handle_signals=False)
    assert "-bind 0.0.0.0:0: cannot tell which address to advertise" in str(error.value)
    assert "add -advertise=IP" in str(error.value) and "advertise=(" not in str(error.value)


async def test_tags_over_the_limit_through_rpc_name_the_flag_not_the_python_api(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with agent(options("a1", tags={"role": "web"})) as a, RpcClient.connect(rpc(a)) as c:
        with pytest.raises(RpcError) as error:
            await c.update_tags({"blob": "x" * 600}, [])
        assert str(error.value) == (
            "the tags take 619 bytes encoded, over the limit of 512 bytes for all tags "
            "together; shorten or drop -set blob=xxxxxxxxxxxxxxx... (608 bytes)"
        )
        assert a.node.serf.tags == {"role": "web"}


async def test_the_real_serf_cli_drives_a_shoal_agent() -> None:
    """Real time: the serf binary is another process."""
    async with agent(options("shoal-a", tags={"lang": "python"})) as running:
        members = await trio.run_process(
            ["serf", "members", f"-rpc-addr={rpc(running)}", "-format=json"],
            capture_stdout=True,
        )
        (member,) = json.loads(members.stdout)["members"]
        assert member["name"] == "shoal-a" and member["tags"] == {"lang": "python"}
        assert member["status"] == "alive"
        result = await trio.run_process(
            ["serf", "event", f"-rpc-addr={rpc(running)}", "deploy", "v1"], capture_stdout=True
        )
        assert b"Event 'deploy' dispatched" in result.stdout
        assert running.node.serf.event_clock.time >= 2


async def test_member_events_reach_rpc_streams(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        agent(options("a1")) as a,
        RpcClient.connect(rpc(a)) as client,
        client.stream("member-join") as events,
        agent(options("a2", join=[seed(a)])),
    ):
        with trio.fail_after(10):
            async for event in events:
                assert isinstance(event, RpcMemberEvent)
                if event.members[0].name == "a2":
                    break


async def test_rpc_clients_answer_queries_and_see_reaps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        agent(options("a1")) as a1,
        RpcClient.connect(rpc(a1)) as client,
        client.stream("query,member-reap") as events,
    ):
        with trio.CancelScope() as a2_scope:
            async with agent(options("a2", join=[seed(a1)])) as a2:
                result = await a2.node.start_query("uptime", b"?", timeout=5.0)
                with trio.fail_after(10):
                    query = await anext(aiter(events))
                assert isinstance(query, RpcQueryEvent)
                assert (query.name, query.payload) == ("uptime", b"?")
                await client.respond(query.id, b"up 3 days")
                with pytest.raises(RpcError, match="'uptime' was answered already"):
                    await client.respond(query.id, b"again")
                with pytest.raises(RpcError, match="No pending queries matching ID"):
                    await client.respond(query.id + 1, b"never streamed")
                await result.done.wait()
                assert result.answers == {"a1": b"up 3 days"}
                a2_scope.cancel()  # a crash: no leave
        await wait_until(
            lambda: any(m.status.value == "failed" for m in a1.node.serf.members()), 60.0
        )
        await client.force_leave("a2", prune=True)
        with trio.fail_after(10):
            reaped = await anext(aiter(events))
        assert isinstance(reaped, RpcMemberEvent)
        assert (reaped.event, [m.name for m in reaped.members]) == ("member-reap", ["a2"])
