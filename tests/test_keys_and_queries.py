"""Cluster-wide key operations and queries through the agent's RPC: our client, `swim keys` and
`swim query`, the real `serf` CLI against a shoal agent, and ours against a real `serf agent`."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from swim import keys
from swim.agent import RunningAgent
from swim.node import Node
from swim.rpc import RpcClient, RpcConnectionError, RpcError, RpcKeyError, RpcQueryRecord
from swim.serf.layer import QueryAnswer, SerfQuery
from swim.wire import Keyring
from swim.wire import serf as msg
from tests.test_agent import agent, options, rpc, seed, wait_until
from tests.test_rpc import free_port, serf, serf_binary, swim

KEY_1 = base64.b64encode(bytes(range(32))).decode()
KEY_2 = base64.b64encode(bytes(range(32, 64))).decode()
KEY_3 = base64.b64encode(bytes(range(64, 96))).decode()


def ring(running: RunningAgent) -> Keyring:
    keyring = running.node.engine.wire_options.keyring
    assert keyring is not None
    return keyring


def encoded(keyring: Keyring) -> list[str]:
    return [base64.b64encode(k).decode() for k in keyring.keys]


@asynccontextmanager
async def pair(tmp_path: Path, **changes: object) -> AsyncIterator[tuple[RunningAgent, ...]]:
    """Two joined shoal agents started with ``-encrypt KEY_1`` and a keyring file each."""
    files = [str(tmp_path / f"k{i}.json") for i in (1, 2)]
    async with agent(options("k1", encrypt=KEY_1, keyring_file=files[0], **changes)) as a:
        second = options("k2", encrypt=KEY_1, keyring_file=files[1], join=[seed(a)], **changes)
        async with agent(second) as b:
            await wait_until(lambda: a.node.engine.alive_count() == 2)
            yield a, b


async def answer_queries(node: Node, reply: bytes) -> None:
    """An event handler in miniature: answer every user query with ``reply``."""
    async for event in node.events():
        if isinstance(event, SerfQuery):
            await node.respond(event, reply)


# ---------------------------------------------------------------------------------------------
# Key rotation through our client, in process.


async def test_key_rotation_across_two_agents(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with pair(tmp_path) as (a, b), RpcClient.connect(rpc(a)) as client:
        installed = await client.install_key(KEY_2)
        assert (installed.num_nodes, installed.num_resp, installed.num_err) == (2, 2, 0)
        listed = await client.list_keys()
        assert listed.keys == {KEY_1: 2, KEY_2: 2} and listed.num_nodes == 2
        await client.use_key(KEY_2)
        for running in (a, b):
            assert ring(running).primary_key == base64.b64decode(KEY_2)
        await trio.sleep(5)  # gossip under the new key: both stay alive
        assert all(m.status.value == "alive" for m in a.node.serf.members())
        await client.remove_key(KEY_1)
        for running, name in ((a, "k1"), (b, "k2")):
            assert encoded(ring(running)) == [KEY_2]
            saved = Keyring.from_file(str(tmp_path / f"k{name[1]}.json"))
            assert saved.keys == (base64.b64decode(KEY_2),)
        assert (await client.list_keys()).keys == {KEY_2: 2}
        await trio.sleep(5)
        assert [m.status.value for m in b.node.serf.members()] == ["alive", "alive"]


async def test_key_failures_carry_each_members_message(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with pair(tmp_path) as (a, _), RpcClient.connect(rpc(a)) as client:
        with pytest.raises(RpcKeyError, match=r"^2/2 nodes reported failure$") as failed:
            await client.remove_key(KEY_1)  # the primary key
        assert failed.value.result.num_err == 2
        assert set(failed.value.result.messages) == {"k1", "k2"}
        assert set(failed.value.result.messages.values()) == {  # memberlist's words
            "Removing the primary key is not allowed"
        }
        with pytest.raises(RpcKeyError, match="not valid base64") as bad:
            await client.install_key("not base64!")
        assert bad.value.result.num_nodes == 0
        with pytest.raises(RpcKeyError, match="nodes reported failure") as absent:
            await client.use_key(KEY_3)  # not installed
        assert set(absent.value.result.messages.values()) == {"Requested key is not in the keyring"}
        assert (await client.list_keys()).keys == {KEY_1: 2}


async def test_keys_on_an_unencrypted_agent_fail_as_serf_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with agent(options("plain")) as a, RpcClient.connect(rpc(a)) as client:
        with pytest.raises(RpcKeyError, match=r"^1/1 nodes reported failure$") as failed:
            await client.list_keys()
        assert failed.value.result.messages == {
            "plain": "Keyring is empty (encryption not enabled)"
        }


async def test_tally_counts_bad_answers_as_failures() -> None:
    result = keys.KeyResult(num_nodes=3)
    keys._tally(result, QueryAnswer(1, "a", b"\x00garbage"))
    good = msg.KeyResponse(True, "", (KEY_1, KEY_2), KEY_1)
    keys._tally(result, QueryAnswer(1, "b", msg.encode_serf(good)))
    keys._tally(result, QueryAnswer(1, "c", msg.encode_serf(msg.KeyResponse(False, "nope"))))
    assert (result.num_resp, result.num_err) == (3, 2)
    assert result.keys == {KEY_1: 1, KEY_2: 1} and result.primary_keys == {KEY_1: 1}
    assert result.messages["c"] == "nope" and "Invalid key query response" in result.messages["a"]


# ---------------------------------------------------------------------------------------------
# Queries through our client, in process.


async def test_query_streams_acks_and_answers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        pair(tmp_path) as (a, b),
        trio.open_nursery() as nursery,
        RpcClient.connect(rpc(a)) as client,
    ):
        nursery.start_soon(answer_queries, b.node, b"pong")
        async with client.query("ping-app", b"hi", request_ack=True, timeout=2.0) as records:
            got = [record async for record in records]
        assert sorted(r.node for r in got if r.type == "ack") == ["k1", "k2"]
        assert [r for r in got if r.type == "response"] == [
            RpcQueryRecord("response", "k2", b"pong")
        ]
        async with client.query("ping-app", nodes=["k1"], timeout=1.0) as records:
            assert [record async for record in records] == []  # k1 acks only when asked
        async with client.query("x", tags={"role": "db"}, request_ack=True, timeout=1) as records:
            assert [record async for record in records] == []
        with pytest.raises(RpcError, match="Queries cannot contain the '_serf_' prefix"):
            async with client.query("_serf_list-keys"):
                pass
        # leaving early drops the rest; the connection goes on
        async with client.query("ping-app", request_ack=True, timeout=3.0) as records:
            await anext(records)
        assert len(await client.members()) == 2
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# `swim keys` and `swim query`, and the real serf CLI, against shoal agents (real time).


async def test_swim_keys_and_query_against_a_shoal_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with pair(tmp_path) as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(answer_queries, b.node, b"pong\n")
        addr = f"-rpc-addr={rpc(a)}"
        assert await swim("keys", addr, "-install", KEY_2) == 0
        assert capsys.readouterr().out == (
            "==> Installing key on all members...\n==> Successfully installed key!\n"
        )
        assert await swim("keys", addr, "-list") == 0
        assert capsys.readouterr().out == (
            "==> Asking all members for installed keys...\n"
            "==> Keys gathered, listing cluster keys...\n\n"
            f"{KEY_1}  [2/2]\n{KEY_2}  [2/2]\n"
        )
        assert await swim("keys", addr, "-remove", KEY_1) == 1
        out, err = capsys.readouterr()
        assert out == "==> Removing key on all members...\n"
        assert err.startswith("failed:  k1  ") and "failed:  k2  " in err
        assert err.endswith("\nError removing key: 2/2 nodes reported failure\n")
        assert await swim("keys", addr, "-list", "-use", KEY_2) == 1
        assert "exactly one of" in capsys.readouterr().err

        assert await swim("query", addr, "-timeout=1s", "uptime", "x") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "Query 'uptime' dispatched"
        assert sorted(lines[1:-2]) == ["Ack from 'k1'", "Ack from 'k2'", "Response from 'k2': pong"]
        assert lines[-2:] == ["Total Acks: 2", "Total Responses: 1"]
        assert await swim("query", addr, "-no-ack", "-format=json", "-timeout=500ms", "q") == 0
        assert json.loads(capsys.readouterr().out) == {"Acks": None, "Responses": {"k2": "pong\n"}}
        assert await swim("query", addr, "-relay-factor=300", "q") == 1
        assert await swim("query", addr, "_serf_x") == 1
        assert "Error sending query: Queries cannot contain" in capsys.readouterr().err
        nursery.cancel_scope.cancel()


async def test_the_real_serf_cli_rotates_keys_and_queries_a_shoal_agent(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(answer_queries, b.node, b"pong")
        addr = f"-rpc-addr={rpc(a)}"
        assert await serf("keys", addr, "-install", KEY_2) == (
            0,
            "==> Installing key on all members...\n==> Successfully installed key!\n",
        )
        status, out = await serf("keys", addr, "-list")
        assert status == 0, out
        assert f"{KEY_1}  [2/2]" in out and f"{KEY_2}  [2/2]" in out
        assert await serf("keys", addr, "-use", KEY_2) == (
            0,
            "==> Changing primary key on all members...\n==> Successfully changed primary key!\n",
        )
        status, out = await serf("keys", addr, "-remove", KEY_2)
        assert status == 1 and "Error removing key: 2/2 nodes reported failure" in out
        assert "failed:  k1  " in out and "failed:  k2  " in out
        assert await serf("keys", addr, "-remove", KEY_1) == (
            0,
            "==> Removing key on all members...\n==> Successfully removed key!\n",
        )
        assert encoded(ring(a)) == encoded(ring(b)) == [KEY_2]
        status, out = await serf("query", addr, "-timeout=1s", "uptime")
        assert status == 0, out
        assert "Query 'uptime' dispatched" in out and "Response from 'k2': pong" in out
        assert out.endswith("Total Acks: 2\nTotal Responses: 1\n")
        status, out = await serf("query", addr, "-format=json", "-node=k1", "-timeout=1s", "q")
        assert (status, json.loads(out)) == (0, {"Acks": ["k1"], "Responses": {}})
        status, out = await serf("query", addr, "_serf_list-keys")
        assert (status, out) == (
            1,
            "Error sending query: Queries cannot contain the '_serf_' prefix\n",
        )
        assert all(m.status.value == "alive" for m in a.node.serf.members())
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# `swim keys -list` and `swim query` against a real `serf agent` (real time).


async def test_swim_keys_and_query_against_a_real_serf_agent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gossip, rpc_port = free_port(), free_port()
    command = [
        serf_binary(),
        "agent",
        "-node=real-1",
        f"-bind=127.0.0.1:{gossip}",
        f"-rpc-addr=127.0.0.1:{rpc_port}",
        f"-encrypt={KEY_1}",
        "-log-level=err",
    ]
    addr = f"-rpc-addr=127.0.0.1:{rpc_port}"
    process = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL)
    try:
        with trio.fail_after(60):
            while True:
                try:
                    async with RpcClient.connect(f"127.0.0.1:{rpc_port}") as client:
                        listed = await client.list_keys()
                        break
                except RpcConnectionError:
                    await trio.sleep(0.05)
            assert (listed.keys, listed.num_nodes, listed.num_resp) == ({KEY_1: 1}, 1, 1)
            assert await swim("keys", addr, "-list") == 0
            assert capsys.readouterr().out.endswith(f"\n\n{KEY_1}  [1/1]\n")
            assert await swim("keys", addr, "-remove", KEY_1) == 1
            assert "Error removing key: 1/1 nodes reported failure" in capsys.readouterr().err
            assert await swim("query", addr, "-timeout=500ms", "anyone") == 0
            assert capsys.readouterr().out == (
                "Query 'anyone' dispatched\nAck from 'real-1'\nTotal Acks: 1\nTotal Responses: 0\n"
            )
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
