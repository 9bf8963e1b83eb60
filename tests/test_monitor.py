"""The log lines RPC monitors get: Serf's format, each monitor's level, lines logged from
worker threads, and the root logger's level put back when the last monitor stops."""

from __future__ import annotations

import logging
import re

import anyio
import pytest

from swim.monitor import LogHub


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_monitors_get_serf_lines_at_their_level_from_any_thread() -> None:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    hub = LogHub()
    hub.install()
    try:
        debug: list[str] = []
        warn: list[str] = []
        stop_debug = hub.monitor("DEBUG", debug.append)
        hub.monitor("WARN", warn.append)
        assert root.level == logging.DEBUG  # lowered while a monitor wants DEBUG
        logging.getLogger("swim.serf").info("EventMemberJoin: %s 10.0.0.1", "web\n1")
        logging.getLogger("swim.engine").debug("probing")
        await anyio.to_thread.run_sync(logging.getLogger("swim.node").warning, "from a worker")
        await anyio.sleep(0.01)  # the worker's line is handed to this thread soon after
        assert re.fullmatch(
            r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[INFO\] serf: EventMemberJoin: web\\x0a1 10\.0\.0\.1",
            debug[0],
        ), debug
        assert debug[1].endswith("[DEBUG] engine: probing")
        assert debug[2].endswith("[WARN] node: from a worker")
        assert [line.split(" ", 2)[2] for line in warn] == ["[WARN] node: from a worker"]
        stop_debug()
        assert root.level == logging.INFO
    finally:
        hub.close()
        root.setLevel(before)
    assert hub not in root.handlers
