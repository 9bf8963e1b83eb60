"""A progress line on standard error for runs that take more than a few seconds of wall time,
and where Ctrl-C stops such a run cleanly."""

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


class Progress:
    """Shows virtual time reached and the simulation rate; call it with the virtual time.

    The cluster calls it between events, which makes it the place where Ctrl-C can stop a run
    without leaving an event half handled (see :meth:`stop_on_ctrl_c`).
    """

    def __init__(self, total: float, nodes: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.nodes = nodes
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._shown = False
        self._last_line = -LINE_EVERY
        self._tty = self.stream.isatty()
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
        elapsed = time.monotonic() - self.started
        if elapsed < SHOW_AFTER:
            return
        if not self._tty and elapsed - self._last_line < LINE_EVERY:
            return
        self._last_line = elapsed
        share = now / self.total if self.total else 1.0
        rate = now * self.nodes / elapsed
        text = (
            f"simulated {now:,.1f} of {self.total:,.1f} s ({share:.0%}), "
            f"{rate:,.0f} node-s per second, {elapsed:,.0f} s so far"
        )
        self.stream.write(f"\r{text}\x1b[K" if self._tty else f"{text}\n")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        """End the line if one was drawn."""
        if self._shown and self._tty:
            self.stream.write("\n")
            self.stream.flush()
