"""What a command prints when an error reaches its top: a line or two, never a traceback."""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import pytest
import trio

from swim.toplevel import EXIT_BUG, EXIT_ERROR, EXIT_INTERRUPTED, describe, run_command


class Refused(Exception):
    """An error written for the user."""


def outcome(body: BaseException) -> tuple[int, str]:
    def fail() -> int:
        raise body

    out = io.StringIO()
    return run_command("tool", fail, expected=(Refused,), stderr=out), out.getvalue()


def test_an_error_for_the_user_is_one_line() -> None:
    assert outcome(Refused("-flag: bad value; use another")) == (
        EXIT_ERROR,
        "tool: -flag: bad value; use another\n",
    )
    assert outcome(OSError(28, "No space left on device", "/data/x")) == (
        EXIT_ERROR,
        "tool: No space left on device: /data/x\n",
    )


def test_errors_inside_nursery_groups_are_unwrapped() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise Refused("the real cause")

    def body() -> int:
        trio.run(main)
        return 0

    out = io.StringIO()
    assert run_command("tool", body, expected=(Refused,), stderr=out) == EXIT_ERROR
    assert out.getvalue() == "tool: the real cause\n"


def test_a_group_is_described_by_its_errors_not_their_count() -> None:
    group = ExceptionGroup(
        "2 sub-exceptions",
        [Refused("isolated"), ExceptionGroup("", [OSError(28, "No space left on device")])],
    )
    assert describe(group) == "isolated; No space left on device"


def test_ctrl_c_is_a_word_and_status_130() -> None:
    assert outcome(KeyboardInterrupt()) == (EXIT_INTERRUPTED, "tool: interrupted\n")
    grouped = BaseExceptionGroup("", [KeyboardInterrupt()])
    assert outcome(grouped) == (EXIT_INTERRUPTED, "tool: interrupted\n")


def test_a_bug_says_so_in_two_lines_and_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    status, text = outcome(ExceptionGroup("", [ZeroDivisionError("division by zero")]))
    assert status == EXIT_BUG
    first, second = text.splitlines()
    assert first == "tool: unexpected ZeroDivisionError: division by zero"
    saved = re.fullmatch(
        r"tool: this is a bug; please report it with the traceback in (\S+)", second
    )
    assert saved is not None, second
    assert Path(saved.group(1)).parent == tmp_path
    traceback = Path(saved.group(1)).read_text()
    assert "Traceback" in traceback and "ZeroDivisionError: division by zero" in traceback


def test_usage_errors_and_exit_pass_through() -> None:
    with pytest.raises(SystemExit):
        outcome(SystemExit(2))
