"""The agent's log lines for RPC ``monitor`` (``serf monitor``, ``swim monitor``): a logging
handler that formats each record as Serf's agent writes its lines
(``2026/12/02 13:51:49 [INFO] serf: EventMemberJoin: web-1 10.0.0.5``) and hands it to every
monitor whose level lets it through.

Records logged from another thread (a worker decoding a large push-pull) are handed to the
event loop's thread first, without waiting, so a monitor is only ever fed from there.  While a
monitor wants finer lines than the agent logs (``-log-level``), the root logger is lowered to
its level; the agent's own output keeps its level through its handler's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

import sniffio

from swim.logs import printable
from swim.rpc.schema import LOG_LEVELS

TRACE: Final = 5
"""Python's number for Serf's TRACE, below DEBUG (shoal logs nothing finer than DEBUG)."""
_THRESHOLDS: Final = {
    "TRACE": TRACE,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERR": logging.ERROR,
}
assert tuple(_THRESHOLDS) == LOG_LEVELS


def serf_level(levelno: int) -> str:
    """Serf's name for a Python log level."""
    name = "TRACE"
    for level, threshold in _THRESHOLDS.items():
        if levelno >= threshold:
            name = level
    return name


def serf_line(record: logging.LogRecord) -> str:
    """``record`` as Serf's agent writes a line: local time, ``[LEVEL]``, where (the logger's
    name without ``swim.``, so membership changes read ``serf: EventMemberJoin: ...`` as in
    Serf), and the message with control characters escaped."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
    where = record.name.removeprefix("swim.")
    return f"{stamp} [{serf_level(record.levelno)}] {where}: {printable(record.getMessage())}"


class LogHub(logging.Handler):
    """Feeds log lines to the monitors; :meth:`install` it on the root logger from the event
    loop's thread, and :meth:`close` it when the agent stops."""

    def __init__(self) -> None:
        super().__init__(level=TRACE)
        self._monitors: dict[int, tuple[int, Callable[[str], None]]] = {}
        self._serial = 0
        self._loop_thread = threading.get_ident()
        self._call_soon = _thread_safe_call_soon()
        self._root = logging.getLogger()
        self._agent_level = self._root.level

    def install(self) -> None:
        self._root.addHandler(self)

    def close(self) -> None:
        self._root.removeHandler(self)
        self._monitors.clear()
        self._root.setLevel(self._agent_level)
        super().close()

    def monitor(self, level: str, deliver: Callable[[str], None]) -> Callable[[], None]:
        """Call ``deliver`` with every line at ``level`` (Serf's name) or above until the
        returned function is called."""
        self._serial += 1
        serial = self._serial
        self._monitors[serial] = (_THRESHOLDS[level], deliver)
        self._set_root_level()

        def stop() -> None:
            if self._monitors.pop(serial, None) is not None:
                self._set_root_level()

        return stop

    def emit(self, record: logging.LogRecord) -> None:
        if not self._monitors:
            return
        try:
            line = serf_line(record)
        except Exception:  # a record whose arguments do not format: logging reports it
            self.handleError(record)
            return
        if threading.get_ident() == self._loop_thread:
            self._deliver(record.levelno, line)
            return
        try:
            self._call_soon(self._deliver, record.levelno, line)
        except RuntimeError:
            return  # the loop has finished: nobody is monitoring any more

    def _deliver(self, levelno: int, line: str) -> None:
        for threshold, deliver in list(self._monitors.values()):
            if levelno >= threshold:
                deliver(line)

    def _set_root_level(self) -> None:
        finest = min((threshold for threshold, _ in self._monitors.values()), default=None)
        agent = self._agent_level or logging.WARNING  # NOTSET on the root means WARNING
        self._root.setLevel(agent if finest is None else min(agent, finest))


def _thread_safe_call_soon() -> Callable[..., object]:
    """How another thread asks this event loop to run a function soon, without waiting."""
    # each imported only here, so that an agent carries only the event loop it runs on
    if sniffio.current_async_library() == "trio":
        import trio  # noqa: PLC0415

        return trio.lowlevel.current_trio_token().run_sync_soon
    import asyncio  # noqa: PLC0415

    return asyncio.get_running_loop().call_soon_threadsafe
