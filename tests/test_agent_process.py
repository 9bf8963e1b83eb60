"""`swim agent` as a person runs it, as a process: a start-up mistake ends in one line that names
the flag and the fix (no traceback, a non-zero status), and a disk that fails under a running
agent does not stop it."""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from swim.config import Config
from swim.events import MemberFailed, MemberLeft
from swim.node import Node
from swim.rpc import RpcClient
from swim.snapshot import TEMP_SUFFIX
from swim.wire.crypto import encode_key

LOOPBACK = "127.0.0.1"
SWIM = [sys.executable, "-m", "swim.cli"]


def free_port() -> int:
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind((LOOPBACK, 0))
        port = int(tcp.getsockname()[1])
        udp.bind((LOOPBACK, port))  # free for UDP too, as the agent's -bind needs
    return port


def dead_port() -> int:
    """A port with nothing listening: a join there is refused at once."""
    return free_port()


def limit_memory() -> None:
    """Run in the child: a snapshot on a device must never be read whole, and if it were, the
    damage stays within 1 GiB."""
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_agent(*flags: str) -> subprocess.CompletedProcess[str]:
    defaults = {
        "-node": "test",
        "-profile": "local",
        "-bind": f"{LOOPBACK}:{free_port()}",
        "-rpc-addr": f"{LOOPBACK}:{free_port()}",
    }
    given = {flag.partition("=")[0] for flag in flags}
    argv = [f"{k}={v}" for k, v in defaults.items() if k not in given]
    return subprocess.run(
        [*SWIM, "agent", *argv, *flags],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=limit_memory,
    )


def refused(*flags: str) -> str:
    """The one line a failed start-up prints, after checking the agent exited with status 1
    and printed no traceback."""
    result = run_agent(*flags)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    said = [line for line in result.stderr.splitlines() if not line[:4].isdigit()]  # not logs
    assert len(said) == 1, output
    assert said[0].startswith("swim agent: "), output
    return said[0]


@contextmanager
def taken(kind: socket.SocketKind) -> Iterator[int]:
    """A port this test holds, as another program would."""
    with socket.socket(type=kind) as holder:
        holder.bind((LOOPBACK, 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        yield int(holder.getsockname()[1])


def test_a_seed_that_does_not_answer() -> None:
    port = dead_port()
    line = refused(f"-join={LOOPBACK}:{port}")
    assert f"-join: could not join the cluster: {LOOPBACK}:{port}: Connection refused" in line
    assert "leave -join out to start a new cluster" in line


def test_an_rpc_port_in_use() -> None:
    with taken(socket.SOCK_STREAM) as port:
        line = refused(f"-rpc-addr={LOOPBACK}:{port}")
    assert f"-rpc-addr {LOOPBACK}:{port}: port {port} is in use" in line
    assert f"choose another port with -rpc-addr={LOOPBACK}:PORT" in line


def test_a_bind_port_in_use() -> None:
    with taken(socket.SOCK_DGRAM) as port:
        line = refused(f"-bind={LOOPBACK}:{port}")
    assert f"-bind {LOOPBACK}:{port}: port {port} is in use" in line


def test_a_bind_host_that_is_not_this_machine_is_not_a_port_problem() -> None:
    line = refused("-bind=192.0.2.1:7946")  # TEST-NET-1: never a local address
    assert "-bind 192.0.2.1:7946: 192.0.2.1 is not an address of this machine" in line
    assert "-bind=0.0.0.0:7946" in line and "another port" not in line


@pytest.mark.parametrize("level", ["trace", "warn", "err", "warning", "WARN", "ERR"])
def test_serfs_and_pythons_log_level_names_all_work(level: str) -> None:
    line = refused(f"-log-level={level}", f"-join={LOOPBACK}:{dead_port()}")
    assert line.startswith("swim agent: -join: ")  # it got as far as joining


def test_an_unknown_log_level_lists_the_valid_ones() -> None:
    line = refused("-log-level=loud")
    assert line == (
        "swim agent: -log-level 'loud' is not a level; use trace, debug, info, warn or err "
        "(or warning, error, critical)"
    )


def test_an_rpc_address_that_is_not_one() -> None:
    line = refused("-rpc-addr=notanaddr")
    assert line == (
        "swim agent: -rpc-addr: 'notanaddr' is not an address HOST:PORT, such as 127.0.0.1:7373"
    )


def test_a_node_name_with_a_control_character() -> None:
    line = refused("-node=web\n1")
    assert line == (
        "swim agent: -node 'web\\x0a1': the name holds control characters or other "
        "unprintable ones; give a printable name"
    )


def test_a_bad_bind_port_names_the_flag_and_port_0_is_a_free_port() -> None:
    line = refused("-bind=127.0.0.1:99999")
    assert line == (
        "swim agent: -bind '127.0.0.1:99999': port 99999 is outside 0..65535; give "
        "HOST[:PORT] (0 picks a free one)"
    )
    line = refused("-bind=127.0.0.1:0", "-rpc-addr=127.0.0.1:0", f"-join={LOOPBACK}:{dead_port()}")
    assert line.startswith("swim agent: -join: ")  # it bound both and got as far as joining


def test_a_tag_over_the_limit_names_the_flag_and_the_limit() -> None:
    line = refused("-tag", "role=web", "-tag", f"blob={'x' * 600}")
    assert "-tag: the tags take 619 bytes encoded, over the limit of 512 bytes" in line
    assert "shorten or drop -tag blob=xxxxxxxxxxxxxxx... (608 bytes)" in line
    assert "Config." not in line and "role=" not in line


def test_an_unwritable_snapshot(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "agent.snapshot"
    line = refused(f"-snapshot={missing}")
    assert f"-snapshot: cannot open the snapshot '{missing}': No such file or directory" in line
    assert "a directory the agent can write" in line


def test_a_bad_encryption_key() -> None:
    line = refused("-encrypt=not-a-key")
    assert line.startswith("swim agent: -encrypt: key is not valid base64")


def test_retry_join_ends_the_agent_after_retry_max_attempts() -> None:
    dead = f"{LOOPBACK}:{dead_port()}"
    line = refused(f"-retry-join={dead}", "-retry-interval=1s", "-retry-max=2")
    assert line == (
        f"swim agent: -retry-max: gave up after 2 attempts to join: could not join the "
        f"cluster: {dead}: Connection refused; check the -retry-join addresses (an agent must "
        "run there), or raise -retry-max (0: no limit)"
    )


def test_a_bad_config_file_is_one_line_naming_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text('{"node_name": "web-1", "retry_max_attempts": "3"}')
    line = refused(f"-config-file={config}")
    assert line == (
        f"swim agent: config file {config}: retry_max_attempts: expected a whole number, got "
        '"3"; write it without quotes: 3'
    )


def test_a_config_file_holding_the_key_readable_by_others_is_logged(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"encrypt_key": encode_key(bytes(32))}))
    config.chmod(0o644)
    result = run_agent(f"-config-file={config}", f"-join={LOOPBACK}:{dead_port()}")
    assert result.returncode == 1, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].endswith(
        f"[WARNING] swim.agent: {config} is a config file holding encrypt_key, readable by its "
        f"group and others (mode 0644); chmod 600 {config}"
    )


async def read_until(stream: trio.abc.ReceiveStream, text: str) -> bytes:
    seen = b""
    with trio.fail_after(30):
        while text.encode() not in seen:
            chunk = await stream.receive_some()
            assert chunk, f"the agent closed its output before saying {text!r}: {seen!r}"
            seen += chunk
    return seen


async def read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    seen = b""
    with trio.fail_after(30):
        while chunk := await stream.receive_some():
            seen += chunk
    return seen


async def test_an_agent_whose_snapshot_fails_keeps_serving_and_leaves_gracefully(
    tmp_path: Path,
) -> None:
    """Real time: the agent is another process.  Its snapshot is a link to /dev/full, which
    fails every write with ENOSPC, and the rewrite that could recover it cannot create its
    temporary file (a directory is in the way): the disk stays broken the whole run."""
    snapshot = tmp_path / "agent.snapshot"
    snapshot.symlink_to("/dev/full")
    Path(f"{snapshot}{TEMP_SUFFIX}").mkdir()
    rpc = f"{LOOPBACK}:{free_port()}"
    async with Node(Config.local(), name="peer", bind=(LOOPBACK, 0), tags={}) as peer:
        events = peer.events()
        agent = await trio.lowlevel.open_process(
            [
                *SWIM,
                "agent",
                "-node=disk",
                "-profile=local",
                f"-bind={LOOPBACK}:{free_port()}",
                f"-rpc-addr={rpc}",
                f"-join={LOOPBACK}:{peer.address[1]}",
                f"-snapshot={snapshot}",
            ],
            stderr=subprocess.PIPE,
            preexec_fn=limit_memory,
        )
        try:
            assert agent.stderr is not None
            output = await read_until(agent.stderr, "cannot write the snapshot")
            async with RpcClient.connect(rpc) as client:  # still serving
                assert sorted(m.name for m in await client.members()) == ["disk", "peer"]
            agent.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                async for event in events:
                    if isinstance(event, MemberLeft | MemberFailed) and event.member.name == "disk":
                        assert isinstance(event, MemberLeft), event
                        break
            output += await read_to_end(agent.stderr)
            with trio.fail_after(30):
                status = await agent.wait()
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    text = output.decode()
    assert status == 0, text
    assert "Traceback" not in text
    assert "No space left on device" in text and "leaving the cluster" in text


def test_a_bad_event_handler_names_the_flag_and_how_to_write_it() -> None:
    line = refused("-event-handler=FOO=1 ./run.sh")
    assert line.startswith(
        "swim agent: -event-handler 'FOO=1 ./run.sh': 'FOO' is not an event filter; use "
        "member-join, "
    )
    assert "(write *=SCRIPT when the script holds an '=')" in line
    line = refused("-event-handler-timeout=soon")
    assert line == (
        "swim agent: -event-handler-timeout: 'soon' is not a duration such as 5s, 500ms or 1m30s"
    )
    assert refused("-event-handler-timeout=0").startswith(
        "swim agent: -event-handler-timeout '0': give a duration above 0"
    )


def test_a_metrics_port_in_use_names_the_flag() -> None:
    with taken(socket.SOCK_STREAM) as port:
        line = refused(f"-metrics-addr={LOOPBACK}:{port}")
    assert f"-metrics-addr {LOOPBACK}:{port}: port {port} is in use" in line
    assert f"choose another port with -metrics-addr={LOOPBACK}:PORT" in line


def test_a_metrics_address_without_a_port_says_what_it_takes() -> None:
    line = refused(f"-metrics-addr={LOOPBACK}")
    assert f"-metrics-addr '{LOOPBACK}': no port" in line
    assert "expected HOST:PORT, such as 127.0.0.1:9100" in line
