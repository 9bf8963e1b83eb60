"""A progress line on standard error for runs that take more than a few seconds of wall time."""

from __future__ import annotations

import sys
import time
from typing import TextIO

SHOW_AFTER = 2.0
"""Wall seconds before the first update: short runs print nothing."""
LINE_EVERY = 10.0
"""Wall seconds between updates when standard error is not a terminal (one line each)."""


class Progress:
    """Shows virtual time reached and the simulation rate; call it with the virtual time."""

    def __init__(self, total: float, nodes: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.nodes = nodes
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._shown = False
        self._last_line = -LINE_EVERY
        self._tty = self.stream.isatty()

    def __call__(self, now: float) -> None:
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
