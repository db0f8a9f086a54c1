"""Micro-batching: concurrent requests for one campaign share one script call.

redis-py spends far more CPU per call than Redis spends running the script, so one call per
request caps a process at a fraction of Redis (BENCHMARKS.md, "Reservation core": batched against
one call per request). The batcher
queues requests as they arrive; whenever fewer than ``max_inflight`` calls are out, it sends
everything queued (up to ``max_batch``) as one call. At low load a request goes out alone on the
next loop turn; under load the batches grow by themselves. The script judges each request on its
own, in arrival order, so batching changes cost, never outcomes.

A request whose caller gave up while it waited in the queue (its future cancelled: the API's
deadline passed) is left out of the batch when the batch leaves: nothing is held for a caller who
was told the request failed. Once a batch has left, its outcome stands, whoever still waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Call = Callable[[list[Any]], Awaitable[Sequence[Any]]]


class Batcher:
    """One queue and its in-flight calls; ``submit`` resolves to that request's result slice."""

    __slots__ = ("_call", "_flush_scheduled", "_inflight", "_max_batch", "_max_inflight",
                 "_pending", "_stride_in", "_stride_out", "_tasks")

    def __init__(self, call: Call, *, stride_in: int, stride_out: int, max_batch: int,
                 max_inflight: int) -> None:
        self._call = call
        self._stride_in = stride_in
        self._stride_out = stride_out
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._pending: list[tuple[Sequence[Any], asyncio.Future[Sequence[Any]]]] = []
        self._inflight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while calls are out

    @property
    def idle(self) -> bool:
        """Nothing queued, no flush to come, no call out: the batcher may be dropped."""
        return not self._pending and not self._inflight and not self._flush_scheduled

    def submit(self, args: Sequence[Any]) -> asyncio.Future[Sequence[Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Sequence[Any]] = loop.create_future()
        self._pending.append((args, fut))
        if not self._flush_scheduled and self._inflight < self._max_inflight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # let requests arriving in this loop turn join
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Sequence[Any], asyncio.Future[Sequence[Any]]]]) -> None:
        try:
            # the last moment before the call leaves: drop the requests whose callers gave up
            batch = [item for item in batch if not item[1].done()]
            if not batch:
                return
            argv: list[Any] = [len(batch)]
            for args, _ in batch:
                argv.extend(args)
            try:
                result = await self._call(argv)
            except BaseException as exc:  # every waiter learns of the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            k = self._stride_out
            for i, (_, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(result[i * k : (i + 1) * k])
        finally:
            self._inflight -= 1
            if self._pending and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
