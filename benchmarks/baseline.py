"""Another checkout as a benchmark's baseline: its commit, and its own copy of a script run in a
subprocess with that checkout first on ``PYTHONPATH``.

A script measuring "after" against "before" runs both sides as the same kind of child process
(this checkout's copy and the other's), each importing its own checkout's code, so that neither
side depends on the other's internals; only the figures they print are compared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
"""The checkout this copy of the benchmarks belongs to."""


class BaselineError(Exception):
    """A checkout's copy of a script could not be run; the message says why."""


def checkout_commit(checkout: Path) -> str:
    """The checkout's commit, short, with "+changes" when its work tree differs from it."""
    try:
        head = _git(checkout, "rev-parse", "--short", "HEAD")
        dirty = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return head + ("+changes" if dirty else "")


def _git(checkout: Path, *arguments: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), *arguments],
        check=True,
        capture_output=True,
        text=True,
        timeout=10.0,
    )
    return done.stdout.strip()


def check_checkout(checkout: Path, script: str) -> str | None:
    """None when ``checkout`` has its own copy of ``script`` (a path inside it); else why not."""
    if not (checkout / script).is_file():
        return f"{checkout} has no {script}; pass a shoal checkout"
    return None


def run_copy(
    checkout: Path, script: str, arguments: Sequence[str], timeout: float | None = None
) -> str:
    """Run ``checkout``'s own copy of ``script`` with ``arguments``, from that checkout and with
    it first on ``PYTHONPATH``; what it printed."""
    checkout = checkout.resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH")) if p)
    command = [sys.executable, str(checkout / script), *arguments]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=checkout,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BaselineError(f"{' '.join(command)}: not done within {timeout:g} s") from exc
    if done.returncode != 0:
        raise BaselineError(
            f"{' '.join(command)} (in {checkout}) exited with status {done.returncode}:\n"
            + done.stderr[-2000:]
        )
    return done.stdout
