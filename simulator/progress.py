"""A progress line on standard error for runs and sweeps that take more than a few seconds of
wall time, and where Ctrl-C stops a run cleanly."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

SHOW_AFTER = 2.0
"""Wall seconds before the first update: short runs print nothing."""
LINE_EVERY = 10.0
"""Wall seconds between updates when standard error is not a terminal (one line each)."""


class Interrupted(Exception):
    """Ctrl-C stopped the run at virtual time ``now``, between two events: what the cluster
    measured so far is consistent."""

    def __init__(self, now: float) -> None:
        super().__init__(f"interrupted at virtual time {now:.1f} s")
        self.now = now


class _Line:
    """One status line: nothing for the first :data:`SHOW_AFTER` seconds, then redrawn in
    place on a terminal, or a new line every :data:`LINE_EVERY` seconds elsewhere (a log)."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._shown = False
        self._last_line = -LINE_EVERY
        self._tty = self.stream.isatty()

    def due(self) -> float | None:
        """The wall seconds since the start when an update is due now, else None."""
        elapsed = time.monotonic() - self.started
        if elapsed < SHOW_AFTER:
            return None
        if not self._tty and elapsed - self._last_line < LINE_EVERY:
            return None
        return elapsed

    def show(self, elapsed: float, text: str) -> None:
        """Draw ``text`` (the update that :meth:`due` allowed at ``elapsed``)."""
        self._last_line = elapsed
        self.stream.write(f"\r{text}\x1b[K" if self._tty else f"{text}\n")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        """End the line if one was drawn."""
        if self._shown and self._tty:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


class Progress:
    """Shows virtual time reached and the simulation rate; call it with the virtual time.

    The cluster calls it between events, which makes it the place where Ctrl-C can stop a run
    without leaving an event half handled (see :meth:`stop_on_ctrl_c`).
    """

    def __init__(self, total: float, nodes: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.nodes = nodes
        self._line = _Line(stream)
        self._stop = False

    @contextmanager
    def stop_on_ctrl_c(self) -> Iterator[None]:
        """While inside, Ctrl-C makes the next call raise :class:`Interrupted` (within half a
        second of wall time); a second Ctrl-C interrupts at once, as usual."""

        def stop(signum: int, frame: FrameType | None) -> None:
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        previous = signal.signal(signal.SIGINT, stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def __call__(self, now: float) -> None:
        if self._stop:
            self.done()
            raise Interrupted(now)
        elapsed = self._line.due()
        if elapsed is None:
            return
        share = now / self.total if self.total else 1.0
        rate = now * self.nodes / elapsed
        self._line.show(
            elapsed,
            f"simulated {now:,.1f} of {self.total:,.1f} s ({share:.0%}), "
            f"{rate:,.0f} node-s per second, {elapsed:,.0f} s so far",
        )

    def done(self) -> None:
        """End the line if one was drawn."""
        self._line.done()


class SweepProgress:
    """Shows runs done of the total, how many failed, the rate and the time left; call it
    with the counts whenever a run finishes, and now and then between."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self._line = _Line(stream)

    def __call__(self, done: int, failed: int) -> None:
        elapsed = self._line.due()
        if elapsed is None:
            return
        rate = done / elapsed
        errors = f", {failed} failed" if failed else ""
        left = _duration((self.total - done) / rate) if done else ""
        pace = f", {rate * 60:,.1f} runs per minute, about {left} left" if done else ""
        self._line.show(
            elapsed,
            f"{done:,} of {self.total:,} runs ({done / max(1, self.total):.0%}){errors}{pace}, "
            f"{_duration(elapsed)} so far",
        )

    def done(self) -> None:
        """End the line if one was drawn."""
        self._line.done()


def _duration(seconds: float) -> str:
    """``seconds`` as a person reads it: 45 s, 3 min 5 s, 2 h 10 min."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
