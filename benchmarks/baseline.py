"""Another checkout as a benchmark's baseline: its commit, and a script run in a subprocess with
that checkout first on ``PYTHONPATH``.

A script measuring "after" against "before" runs both sides as the same kind of child process,
each importing its own checkout's code, and compares only the figures they print.  Each side
runs its own copy of the script where that copy works (the script may use internals that
changed in between), or both run this copy, where the older copy cannot run and this one uses
only what both checkouts have.
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


def check_checkout(checkout: Path, path: str) -> str | None:
    """None when ``checkout`` is a directory with ``path`` in it (its copy of a script, or a
    module the script needs); else why not."""
    if not (checkout / path).is_file():
        return f"{checkout} has no {path}; pass a shoal checkout"
    return None


def run_copy(
    checkout: Path,
    script: str,
    arguments: Sequence[str],
    *,
    script_from: Path | None = None,
    timeout: float | None = None,
) -> str:
    """Run ``script`` (a path inside a checkout) with ``arguments``, from ``checkout`` and with
    it first on ``PYTHONPATH``; what it printed.  The script is ``checkout``'s own copy, or
    ``script_from``'s when given."""
    checkout = checkout.resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH")) if p)
    command = [sys.executable, str((script_from or checkout).resolve() / script), *arguments]
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
        raise BaselineError(f"{' '.join(command)}: not done within {exc.timeout:g} s") from exc
    if done.returncode != 0:
        raise BaselineError(
            f"{' '.join(command)} (in {checkout}) exited with status {done.returncode}:\n"
            + done.stderr[-2000:]
        )
    return done.stdout


def print_sides(
    checkouts: dict[str, Path],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    """Which commit each side ran, and the machine's load average around the runs."""
    for side, checkout in checkouts.items():
        print(f"{side}: {checkout} at {checkout_commit(checkout)}")

    def load(figures: tuple[float, float, float]) -> str:
        return " ".join(f"{x:.2f}" for x in figures)

    print(
        f"load average (1, 5, 15 min): {load(load_before)} at the start, "
        f"{load(load_after)} at the end"
    )
