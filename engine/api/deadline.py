"""One timer for every request's deadline.

Every engine call of the API gets the same deadline (Redis timeout + a margin), so the deadlines
expire in the order they were set: a FIFO and one ticking callback do what ``asyncio.timeout``
does with a timer heap entry, a task lookup and a context manager per call (which cost more than
the rest of the reserve route's own code). A call past its deadline is cancelled where it waits
and raises ``TimeoutError``; the tick makes a deadline up to ``tick_s`` late.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class _Entry:
    __slots__ = ("done", "expired", "task", "when")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self.task = task
        self.when = when
        self.done = False
        self.expired = False


class Deadlines:
    def __init__(self, seconds: float, tick_s: float = 0.05) -> None:
        self.seconds = seconds
        self.tick_s = tick_s
        self._queue: deque[_Entry] = deque()
        self._ticking = False

    async def run(self, call: Awaitable[T]) -> T:
        """Await ``call``; ``TimeoutError`` if it is not done within ``seconds`` (+ up to one tick)."""
        task = asyncio.current_task()
        if task is None:  # not inside a task: nothing to cancel, no deadline
            return await call
        loop = task.get_loop()
        entry = _Entry(task, loop.time() + self.seconds)
        self._queue.append(entry)
        if not self._ticking:
            self._ticking = True
            loop.call_later(self.tick_s, self._tick, loop)
        try:
            return await call
        except asyncio.CancelledError:
            if entry.expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            entry.done = True

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        queue = self._queue
        while queue and (queue[0].done or queue[0].when <= now):
            entry = queue.popleft()
            if not entry.done:
                entry.expired = True
                entry.task.cancel()
        if queue:
            loop.call_later(self.tick_s, self._tick, loop)
        else:
            self._ticking = False
