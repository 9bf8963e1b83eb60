"""The `swim` command and the README's example, as a newcomer runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from swim import __version__
from swim.cli import main
from swim.wire.crypto import decode_key

README = Path(__file__).resolve().parents[1] / "README.md"


def test_demo_round_trips_over_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "identical to Go's bytes: True" in out
    assert "decoded 16 messages" in out
    assert "round-trips exactly" in out


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


def test_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README.md lost its Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_has_exactly_the_two_quick_start_commands() -> None:
    text = README.read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, flags=re.DOTALL)
    assert len(commands) == 2
    assert commands[0].endswith("swim demo")
    assert commands[1].endswith("-m pytest")
