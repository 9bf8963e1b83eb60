"""The task group behind an object's ``async with``: its background tasks live and die with it."""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import anyio
from anyio.abc import TaskGroup


class Background:
    """Opens a task group (a nursery, in trio's words) when its owner is entered and cancels
    and closes it when the owner exits; on trio and asyncio alike.

    The owner's tasks are an implementation detail, so one error comes out as itself rather
    than inside an ``ExceptionGroup`` (the block's own error is re-raised by the block, an
    error of a task, such as :class:`swim.node.IsolatedError`, replaces it); several errors
    come out as the group.

    It is also a context manager of its own, for a function whose tasks are its own affair:
    ``async with Background() as nursery:`` cancels the tasks when the block ends and raises a
    lone error as itself.
    """

    def __init__(self) -> None:
        self._manager: AbstractAsyncContextManager[TaskGroup] | None = None
        self._nursery: TaskGroup | None = None

    async def __aenter__(self) -> TaskGroup:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self.close(exc_type, exc, traceback)

    @property
    def nursery(self) -> TaskGroup:
        """The open nursery; an error before the owner is entered or after it exits."""
        if self._nursery is None:
            raise RuntimeError("not running: use the object in `async with` first")
        return self._nursery

    async def open(self) -> TaskGroup:
        """Open the nursery (from the owner's ``__aenter__``)."""
        self._manager = anyio.create_task_group()
        self._nursery = await self._manager.__aenter__()
        return self._nursery

    async def abort(self) -> None:
        """Cancel and close after the owner's start-up failed (call from its ``except``)."""
        await self.close(*sys.exc_info())

    async def close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: object,
    ) -> bool | None:
        """Cancel the tasks and close the nursery (from the owner's ``__aexit__``)."""
        assert self._manager is not None and self._nursery is not None
        self._nursery.cancel_scope.cancel()
        # the nursery stays usable until it has closed: a task still running up to its next
        # checkpoint (a datagram received as the cancellation came) may start another, which
        # starts cancelled, instead of failing on a missing nursery
        manager, self._manager = self._manager, None
        try:
            return await manager.__aexit__(exc_type, exc, traceback)  # type: ignore[arg-type]
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            if group.exceptions[0] is exc:
                return False
            raise group.exceptions[0] from None
        finally:
            self._nursery = None
