"""Calls to the storefront API with the generator's retry rules, timed and counted in the record.

503 and timeouts are retried with the same Idempotency-Key (docs/API.md: the caller may), 429 after its
``Retry-After``; everything else is an answer. A call that never gets one returns ``None``: the
caller records the request as in doubt and the verdict treats its effect as unknown.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from time import perf_counter

from engine.loadgen.http import Requester, Response, TransportError
from engine.loadgen.record import Record


class Pacer:
    """Spaces request starts ``1/rate`` apart across every virtual user (an open-loop offered load)."""

    __slots__ = ("_interval", "_next")

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def slot(self) -> float:
        now = perf_counter()  # uvloop's loop.time() ticks in whole ms: too coarse for latencies
        t = max(self._next, now)
        self._next = t + self._interval
        if t > now:
            await asyncio.sleep(t - now)
        return t  # latency is measured from the slot: a late generator does not hide queueing


@dataclass(slots=True)
class Caller:
    """What every call shares: the record, pacing, timeouts, and the stop flag."""

    record: Record
    base: str  # "/v1/campaigns/<id>" (with the URL's prefix)
    pacer: Pacer | None = None
    timeout_s: float = 10.0
    retries: int = 5
    stopping: bool = False  # set at the hard time bound: no more retries

    async def call(self, conn: Requester, op: str, method: bytes, path: str, body: bytes | None,
                   headers: bytes = b"") -> Response | None:
        attempt = 0
        while True:
            t0 = await self.pacer.slot() if self.pacer else perf_counter()
            try:
                resp = await conn.request(method, path, body, headers=headers, timeout_s=self.timeout_s)
            except TransportError:
                self.record.count(op, "no-answer")
                attempt += 1
                if self.stopping or attempt > self.retries:
                    return None
                await asyncio.sleep(_backoff(attempt))
                continue
            self.record.latency(op, (perf_counter() - t0) * 1000.0)
            self.record.count(op, resp.status)
            if resp.status == 503 or resp.status == 429:
                attempt += 1
                if self.stopping or attempt > self.retries * (4 if resp.status == 429 else 1):
                    return resp
                wait = resp.retry_after if resp.status == 429 and resp.retry_after else _backoff(attempt)
                await asyncio.sleep(min(wait, 2.0))
                continue
            if resp.status >= 500:
                self.record.server_errors.append(f"{op} {resp.status}: {resp.body[:200]!r}")
            return resp


def _backoff(attempt: int) -> float:
    return float(min(0.05 * 2**attempt, 1.0)) * random.uniform(0.5, 1.0)


def now_ms() -> float:
    return time.time() * 1000.0
