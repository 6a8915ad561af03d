"""Tasks only through here (a lint rule refuses ``asyncio.create_task`` and
``asyncio.ensure_future`` elsewhere): every task has a name, and a reference is kept so that it
is not garbage collected mid-flight.

- :class:`TaskGroup`: the process's background tasks (settlements retried, the sweeper): kept
  by the group, their failures logged, drained or cancelled at shutdown;
- :func:`start`: a piece of a caller's own work run beside it, which the caller keeps (awaits,
  shields, cancels) and whose failure it takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

__all__ = ["TaskGroup", "start"]

T = TypeVar("T")
log = structlog.get_logger("gateway.tasks")


def start(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Run ``coro`` beside the caller, which keeps the task and takes its outcome."""
    return asyncio.get_running_loop().create_task(coro, name=name)


class TaskGroup:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), exc_info=task.exception())

    async def drain(self, within_s: float = 10.0) -> None:
        """Wait for running tasks (settlements in flight) before shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=within_s)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)
