"""The `swim` command and the README's example, as a newcomer runs them."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from swim import __version__, cli, demo
from swim.cli import main
from swim.demo import run_demo
from swim.wire.crypto import decode_key

README = Path(__file__).resolve().parents[1] / "README.md"


def test_demo_shows_a_crash_a_restart_and_a_leave() -> None:
    lines: list[str] = []
    trio.run(run_demo, lines.append, clock=MockClock(autojump_threshold=0))
    out = "\n".join(lines)
    expected = [
        r"\] converged: every node sees all 5 alive",
        r"\] n4 killed",
        r"\] n\d sees n4 suspect +\(\+\d+\.\d\d s\)",
        r"\] n\d sees n4 failed +\(\+\d+\.\d\d s\)",
        r"\] n4 now failed at 4/4 live nodes",
        r"\] n4 alive again at 4/4 nodes",
        r"\] n\d sees n2 left",
        r"\] n2 now left at 4/4 other nodes",
        r"whole demo +\d+\.\d\d",
    ]
    positions = []
    for pattern in expected:
        match = re.search(pattern, out)
        assert match, f"no line matching {pattern!r} in:\n{out}"
        positions.append(match.start())
    assert positions == sorted(positions), out  # in the order they happen
    assert re.search(r"^\s+n0\s+\.\s+alive\s+left\s+alive\s+alive$", out, flags=re.MULTILINE)


def test_demo_fails_loudly_when_a_stage_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo._Cluster, "reached", lambda *_: None)  # never converges
    monkeypatch.setattr(demo, "STAGE_LIMIT", 2.0)
    with pytest.raises(demo.DemoError, match="convergence did not happen within 2 s"):
        trio.run(run_demo, lambda _: None, clock=MockClock(autojump_threshold=0))


def test_swim_demo_runs_the_demo_and_reports_a_stall(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: list[demo.DemoError | None] = [None, demo.DemoError("the demo stalled: x")]

    async def fake_demo() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(cli, "run_demo", fake_demo)
    assert main(["demo"]) == 0
    assert main(["demo"]) == 1
    assert capsys.readouterr().err == "swim demo: the demo stalled: x\n"


def test_a_bug_in_a_command_is_two_lines_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def broken_demo() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run_demo", broken_demo)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo"]) == 70
    first, second = capsys.readouterr().err.splitlines()
    assert first == "swim demo: unexpected RuntimeError: a bug"
    assert second.startswith(
        f"swim demo: this is a bug; please report it with the traceback in {tmp_path}"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_keygen_prints_a_usable_aes256_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    assert len(decode_key(capsys.readouterr().out.strip())) == 32


def test_readme_python_examples_run() -> None:
    """Every Python example in the README runs as printed.  Those that call ``trio.run`` get
    trio's MockClock, so protocol timers do not cost real seconds; the asyncio and blocking
    ones run in real time on loopback, well under a second each (the blocking facade's own
    trio loop must keep the real clock: its sockets are real)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 4, "README.md lost its Python examples"
    for block in blocks:
        with pytest.MonkeyPatch.context() as patch:
            if "trio.run(" in block:
                clock = MockClock(autojump_threshold=0)
                patch.setattr(trio, "run", partial(trio.run, clock=clock))
            exec(compile(block, str(README), "exec"), {})


def test_readme_has_exactly_the_two_quick_start_commands() -> None:
    text = README.read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, flags=re.DOTALL)
    assert len(commands) == 2
    assert commands[0].endswith("swim demo")
    assert commands[1].endswith("-m pytest")


def test_the_command_loads_only_the_event_loop_it_runs() -> None:
    """An asyncio agent does not carry trio (14 MiB resident), nor a trio one asyncio."""
    probe = (
        "import sys, anyio, swim.cli\n"
        "async def loaded():\n"
        "    import swim.agent, swim.node\n"
        "    return sorted({'trio', 'asyncio'} & set(sys.modules))\n"
        "print(anyio.run(loaded, backend=sys.argv[1]))\n"
    )
    for backend in ("trio", "asyncio"):
        done = subprocess.run(
            [sys.executable, "-c", probe, backend], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == repr([backend])


def test_only_a_node_with_a_key_loads_cryptography() -> None:
    """cryptography (about 8 MiB resident) is loaded by the first keyring, not by the agent."""
    probe = (
        "import sys, swim.cli, swim.agent, swim.node, discovery\n"
        "before = 'cryptography' in sys.modules\n"
        "swim.wire.Keyring([bytes(16)])\n"
        "print(before, 'cryptography' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
