"""Async tests run on AnyIO's pytest plugin (``anyio_mode = "auto"``): on trio by default, in
virtual time when they ask for ``autojump_clock`` (trio's MockClock), and on asyncio too when
marked ``both_backends``.

The runtime is written once against AnyIO, so its real-socket tests run under both event
loops; tests that wait for protocol timers (suspicions, timeouts) need virtual time and stay
on trio's MockClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import trio.testing
from anyio.abc import TaskGroup

BACKENDS = ("asyncio", "trio")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run this async test under asyncio and trio alike"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_backends") is not None:
        if "autojump_clock" in metafunc.fixturenames:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: a test in virtual time (autojump_clock) runs "
                "on trio only; drop both_backends or the clock"
            )
        metafunc.parametrize("anyio_backend", BACKENDS)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead whenever every task waits (trio only)."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """trio, in virtual time when the test asks for ``autojump_clock``."""
    if "autojump_clock" in request.fixturenames:
        return ("trio", {"clock": request.getfixturevalue("autojump_clock")})
    return "trio"


@pytest.fixture
async def nursery() -> AsyncIterator[TaskGroup]:
    """A task group for the test's background tasks, cancelled when the test ends."""
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()
