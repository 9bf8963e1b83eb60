"""The examples run: the trio ones in-process in virtual time (they are trio code: trio's
MockClock), the asyncio ones in real time, and the services as real processes on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import trio.testing

from discovery import Discovery, Instance, MissingServices, UnknownService
from discovery.blocking import BlockingDiscovery
from examples import echo_client, echo_service, http_client, http_service, sync_client
from swim.blocking import BlockingNode
from swim.config import Config
from swim.node import Node

ROOT = Path(__file__).resolve().parents[2]
FAST = Config.local(compression=False)


async def test_the_client_keeps_calling_while_an_instance_drains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stop_first, stop_second = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as nursery:
        port = await nursery.start(echo_service.serve, "echo-1", 0, [], stop_first.wait, FAST)
        seed = f"127.0.0.1:{port}"
        await nursery.start(echo_service.serve, "echo-2", 0, [seed], stop_second.wait, FAST)

        async def stop_one_midway() -> None:
            await anyio.sleep(3)
            stop_second.set()

        nursery.start_soon(stop_one_midway)
        failed = await echo_client.run([seed], count=10, interval=0.5, config=FAST)
        assert failed == 0
        stop_first.set()


def test_the_service_drains_and_exits_cleanly_on_sigterm() -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    service = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "echo_service.py"), "echo-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    try:
        assert service.stdout is not None
        ready = service.stdout.readline()
        assert " ready: echo on 127.0.0.1:" in ready, ready
        port = int(ready.split("127.0.0.1:")[1].split(",")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as request:
            request.sendall(b"in flight")
            time.sleep(0.05)  # the request is being worked on (0.2 s)
            service.send_signal(signal.SIGTERM)
            assert request.recv(100) == b"echo-1: in flight"  # finished, not cut off
        output, _ = service.communicate(timeout=15)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert service.returncode == 0, output
    assert "echo-1 draining" in output
    assert "drained in" in output and "cut off" not in output


@pytest.mark.parametrize(
    "argv",
    [
        ["echo_client.py", "--join"],
        ["echo_service.py", "echo-2", "--join"],
        ["http_client.py", "--join"],
        ["http_service.py", "greeter-2", "--join"],
        ["sync_client.py", "--join"],
    ],
)
def test_a_seed_that_does_not_answer_is_one_line_not_a_traceback(argv: list[str]) -> None:
    with socket.socket() as unused:  # a port with nothing listening: refused at once
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    script, *flags = argv
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *flags, f"127.0.0.1:{port}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"{script.removesuffix('.py')}: could not join the cluster: 127.0.0.1:{port}: "
        "Connection refused\n"
    )


def test_the_client_without_any_echo_instance_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def nothing_registered(*_: object) -> int:
        raise MissingServices({"echo": UnknownService("echo", ["default"])})

    monkeypatch.setattr(echo_client, "run", nothing_registered)
    with pytest.raises(SystemExit) as exit_info:
        echo_client.main(["--join", "127.0.0.1:7946"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith(
        "echo_client: required services are missing: service 'echo' is unknown in 'default'"
    )


# ---------------------------------------------------------------------------------------------
# The asyncio examples, and the synchronous client (real time: asyncio has no virtual clock)


def test_the_asyncio_client_keeps_calling_while_an_instance_drains() -> None:
    async def scenario() -> int:
        stop_first, stop_second = asyncio.Event(), asyncio.Event()
        first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        one = asyncio.create_task(
            http_service.serve("greeter-1", 0, [], stop_first, ready=first, config=FAST)
        )
        seed = f"127.0.0.1:{await asyncio.wait_for(first, 10)}"
        second: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        two = asyncio.create_task(
            http_service.serve("greeter-2", 0, [seed], stop_second, ready=second, config=FAST)
        )
        await asyncio.wait_for(second, 10)
        asyncio.get_running_loop().call_later(0.5, stop_second.set)  # drains mid-way
        failed = await asyncio.wait_for(http_client.run([seed], 8, 0.15, FAST), 30)
        await asyncio.wait_for(a_missing_page_is_not_failed_over([seed]), 30)
        stop_first.set()
        await asyncio.wait_for(asyncio.gather(one, two), 20)
        return failed

    assert asyncio.run(scenario()) == 0


async def a_missing_page_is_not_failed_over(seeds: list[str]) -> None:
    """A 404 is the request's fault, not the instance's: one attempt, then ``Rejected``."""
    async with Node(FAST, name="asker", bind=("127.0.0.1", 0), tags={}) as node:
        await node.join(seeds)
        async with Discovery(node) as discovery:
            await discovery.require(["greeter"], timeout=10.0)
            tried: list[str] = []

            async def missing(instance: Instance) -> str:
                tried.append(instance.node)
                return await http_client.get(instance, "/missing")

            with pytest.raises(http_client.Rejected, match="404"):
                await discovery.call("greeter", missing, timeout=5.0)
            assert len(tried) == 1


def test_the_asyncio_service_drains_on_sigterm_and_the_sync_client_calls_it() -> None:
    service = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "http_service.py"), "greeter-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert service.stdout is not None
        ready = service.stdout.readline()
        assert "greeter-1 ready: greeter on http://127.0.0.1:" in ready, ready
        gossip = int(ready.rsplit("gossip ", 1)[1])
        assert sync_client.run([f"127.0.0.1:{gossip}"], count=3, interval=0.0) == 0
        with (
            BlockingNode(FAST, name="asker", bind=("127.0.0.1", 0), tags={}) as node,
            BlockingDiscovery(node) as discovery,
        ):
            node.join([f"127.0.0.1:{gossip}"])
            discovery.require(["greeter"], timeout=10.0)
            with pytest.raises(sync_client.Rejected, match="404 to GET /missing"):
                discovery.call("greeter", lambda i: sync_client.get(i, "/missing"), timeout=5.0)
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=15)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert service.returncode == 0, output
    assert "greeter-1 draining" in output and "drained in" in output
