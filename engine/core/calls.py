"""Batched script calls: one queue per (script, campaign), sent over the lean wire.

Each batch is one EVALSHA carrying every request queued when it leaves (``batcher.py``). The
keys of a campaign are encoded once and kept with its batcher. On a Redis Cluster the lean wire is
a ``ClusterWire`` (one Wire per master, by the campaign's slot). Without one (TLS) the same
batches go through redis-py's ``AsyncScript``.

Batchers are made on a campaign's first request and dropped once idle: every campaign id a caller
sends (most of them unknown, answered CAMPAIGN_NOT_FOUND by the script) makes one, so they must
not outlive their work. When the table has grown to twice what it held after the last prune (at
least ``KEEP_BATCHERS``), the idle ones go: a batcher with requests queued or a call out stays.
So the table holds the busy batchers plus at most as many idle ones, and pruning costs O(1) per
batcher made, amortized. A campaign whose batcher was dropped gets a new one on its next request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from redis.commands.core import AsyncScript

from engine.core.batcher import Batcher
from engine.core.cluster import ClusterWire
from engine.core.scripts import run
from engine.core.wire import Arg, Wire, encode

KEEP_BATCHERS = 256  # batchers a table holds before its idle ones are dropped


class BatchedScript:
    """``submit(campaign_id, args)`` -> a future of that request's ``stride_out`` reply values."""

    def __init__(self, script: AsyncScript, wire: Wire | ClusterWire | None, keys_of: Callable[[str], list[str]], *,
                 stride_in: int, stride_out: int, max_batch: int, max_inflight: int) -> None:
        self.script = script
        self.wire = wire
        self.keys_of = keys_of
        self.stride_in = stride_in
        self.stride_out = stride_out
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._batchers: dict[str, Batcher] = {}
        self._prune_at = KEEP_BATCHERS  # table size that triggers the next prune

    def __len__(self) -> int:
        """Batchers held now (busy ones and idle ones not yet pruned)."""
        return len(self._batchers)

    def submit(self, campaign_id: str, args: Sequence[Arg]) -> asyncio.Future[Sequence[Any]]:
        b = self._batchers.get(campaign_id)
        if b is None:
            if len(self._batchers) >= self._prune_at:
                self.prune()
            b = self._batchers[campaign_id] = self._new_batcher(campaign_id)
        return b.submit(args)

    def prune(self) -> None:
        """Drop every idle batcher (nothing queued, nothing in flight)."""
        self._batchers = {cid: b for cid, b in self._batchers.items() if not b.idle}
        self._prune_at = max(KEEP_BATCHERS, 2 * len(self._batchers))

    def forget(self, campaign_id: str) -> None:
        b = self._batchers.get(campaign_id)
        if b is not None and b.idle:
            del self._batchers[campaign_id]

    def _new_batcher(self, campaign_id: str) -> Batcher:
        keys = self.keys_of(campaign_id)
        script = self.script
        wire = self.wire
        if wire is None:
            async def call(argv: list[Arg]) -> Sequence[Any]:
                result: Sequence[Any] = await run(script, keys, argv)
                return result
        else:
            text = encode([script.script if isinstance(script.script, str) else bytes(script.script)])[0]
            head = encode([script.sha, len(keys), *keys])

            async def call(argv: list[Arg]) -> Sequence[Any]:
                result: Sequence[Any] = await wire.evalsha(text, head, encode(argv))
                return result

        return Batcher(call, stride_in=self.stride_in, stride_out=self.stride_out,
                       max_batch=self.max_batch, max_inflight=self.max_inflight)
