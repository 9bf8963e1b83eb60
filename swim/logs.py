"""Logging that bad input cannot abuse: throttled reports, and lines without control characters."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TypeVar

REPORT_INTERVAL = 10.0
"""Seconds between two log lines about the same kind of refused input."""

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Throttle:
    """At most one log line per ``interval`` for each kind of trouble, so that a flood of bad
    input cannot flood the log; it counts the lines it held back.  Reads no clock: callers
    pass ``now``."""

    def __init__(self, interval: float = REPORT_INTERVAL) -> None:
        self._interval = interval
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, kind: str, now: float) -> int | None:
        """None when a line about ``kind`` must be held back now; otherwise how many were held
        back since the last one."""
        if now < self._next.get(kind, -float("inf")):
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._next[kind] = now + self._interval
        return self._held.pop(kind, 0)


S = TypeVar("S")


def bump(snapshot: S, counter: str, by: int = 1) -> S:
    """``snapshot`` (a frozen dataclass of counters) with ``counter`` raised by ``by``:
    components whose counters change rarely keep their statistics as an immutable snapshot and
    replace it on each count, so that :meth:`statistics` hands it out as it is."""
    return dataclasses.replace(snapshot, **{counter: getattr(snapshot, counter) + by})  # type: ignore[type-var]


def held_back(count: int) -> str:
    """The tail of a throttled line: how many like it were not logged."""
    return f" ({count} more like this since the last report)" if count else ""


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` as ``\\x0a``), so that a name from
    the network cannot forge a log line or drive a terminal."""
    return _UNPRINTABLE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class SafeFormatter(logging.Formatter):
    """A formatter whose messages never carry raw control characters: a log line is one line,
    whatever a peer put in the names and strings it reports.  Tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message)
        return super().formatMessage(record)
