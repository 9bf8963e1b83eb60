"""The task group an object owns for its ``async with``: errors come out plain, not grouped,
under asyncio as under trio (AnyIO's task groups group errors on both)."""

from __future__ import annotations

from types import TracebackType

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus

from swim.background import Background


class Owner:
    """A minimal owner with background tasks given by the test."""

    def __init__(self, *tasks: object) -> None:
        self.background = Background()
        self.tasks = tasks

    async def __aenter__(self) -> Owner:
        nursery = await self.background.open()
        for task in self.tasks:
            nursery.start_soon(task)  # type: ignore[arg-type]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self.background.close(exc_type, exc, traceback)


async def forever() -> None:
    await anyio.sleep_forever()


async def fails() -> None:
    raise OSError("the socket went away")


@pytest.mark.both_backends
async def test_the_blocks_own_error_comes_out_as_itself() -> None:
    with pytest.raises(KeyError):
        async with Owner(forever):
            raise KeyError("mine")


@pytest.mark.both_backends
async def test_a_task_error_comes_out_as_itself() -> None:
    with pytest.raises(OSError, match="the socket went away"):
        async with Owner(fails):
            await anyio.sleep_forever()


@pytest.mark.both_backends
async def test_several_errors_come_out_as_a_group() -> None:
    with pytest.raises(BaseExceptionGroup) as caught:
        async with Owner(fails, fails):
            await anyio.sleep_forever()
    assert len(caught.value.exceptions) == 2


@pytest.mark.both_backends
async def test_tasks_are_cancelled_on_exit_and_the_nursery_is_gone() -> None:
    async with Owner(forever) as owner:
        pass
    with pytest.raises(RuntimeError, match="async with"):
        owner.background.nursery.start_soon(forever)


@pytest.mark.both_backends
async def test_used_directly_it_is_a_nursery_whose_lone_error_comes_out_plain() -> None:
    with pytest.raises(OSError, match="the socket went away"):
        async with Background() as nursery:
            nursery.start_soon(forever)
            await nursery.start(_fails_once_started)
            await anyio.sleep_forever()
    with pytest.raises(KeyError):
        async with Background() as nursery:
            nursery.start_soon(forever)
            raise KeyError("mine")
    async with Background() as nursery:  # the end of the block cancels the tasks
        nursery.start_soon(forever)


async def _fails_once_started(task_status: TaskStatus[None]) -> None:
    task_status.started()
    await anyio.lowlevel.checkpoint()
    raise OSError("the socket went away")


@pytest.mark.both_backends
async def test_a_task_that_starts_another_while_the_owner_closes_does_not_fail_it() -> None:
    # what a node's receive loop does with a datagram that arrived as the node closed:
    # handling it may start a task (a stream), after the cancellation but before the close
    owner = Owner()
    started: list[str] = []

    async def cleanup() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()
                owner.background.nursery.start_soon(forever)  # starts cancelled
                started.append("another")

    owner.tasks = (cleanup,)
    async with owner:
        await anyio.lowlevel.checkpoint()
    assert started == ["another"]
