"""The asyncio load generator: virtual users following the launch-day spike, in one process.

Each virtual user keeps one keep-alive connection and serves buyers one after another (a buyer is
a fresh user id). A controller sets how many virtual users are active from the ``SpikeProfile``;
a poller reads the campaign's stats twice a second (for the progress bar, for restocking
cancelled units, and to see the sell-out). The run ends when the spike has decayed after the
sell-out, when every buyer has been served, or at the time bound, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.loadgen.behaviour import Mix
from engine.loadgen.buyer import Buyer, Shelf
from engine.loadgen.calls import Caller, Pacer, now_ms
from engine.loadgen.http import Connection, TransportError, split_url
from engine.loadgen.profile import SpikeProfile
from engine.loadgen.record import Record

STATS_POLL_S = 0.5
TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str
    campaign_id: str
    token: str
    users: int = 200  # peak virtual users (keep-alive connections)
    duration_s: float = 60.0  # hard bound on the whole run, pre-opening trickle included
    buyers: int = 1_000_000  # distinct buyers at most
    rate: float | None = None  # offered requests/s at most (None: as fast as the server answers)
    mix: Mix = field(default_factory=Mix)
    trickle_users: int = 2
    trickle_s: float = 3.0
    decay_s: float = 2.0
    timeout_s: float = 10.0
    retries: int = 5
    stop_at_sellout: bool = True
    seed: int | None = None
    user_prefix: str = ""  # default: a fresh random prefix, so runs never share a buyer

    def profile(self) -> SpikeProfile:
        decay = self.decay_s if self.stop_at_sellout else 0.0
        return SpikeProfile(peak_users=self.users, trickle_users=self.trickle_users,
                            trickle_s=self.trickle_s, decay_s=decay, plateau_max_s=self.duration_s)


@dataclass(slots=True)
class Live:
    """What the progress display reads while the run goes."""

    stats: dict[str, Any] = field(default_factory=dict)
    active: int = 0
    phase: str = "waiting"


class Generator:
    def __init__(self, cfg: LoadConfig, definition: dict[str, Any], opens_ms: float) -> None:
        self.cfg = cfg
        self.host, self.port, prefix = split_url(cfg.url)
        base = f"{prefix}/v1/campaigns/{cfg.campaign_id}"
        self.record = Record(cfg.campaign_id, cfg.user_prefix or f"lg{secrets.token_hex(3)}-")
        self.record.opens_ms = opens_ms
        self.caller = Caller(self.record, base, Pacer(cfg.rate) if cfg.rate else None,
                             cfg.timeout_s, cfg.retries)
        self.shelf = Shelf(definition)
        self.profile = cfg.profile()
        self.live = Live()
        self._target = 0
        self._next_buyer = 0
        self._done = asyncio.Event()
        self._rng = random.Random(cfg.seed)

    def _take_buyer(self) -> int | None:
        if self._next_buyer >= self.cfg.buyers or self._done.is_set():
            return None
        self._next_buyer += 1
        return self._next_buyer

    async def _worker(self, idx: int) -> None:
        conns = [Connection(self.host, self.port, token=t) for t in (self.cfg.token, None, "not-a-token")]
        buyer = Buyer(self.caller, self.shelf, self.cfg.mix, conns[0], random.Random(self._rng.random()),
                      (conns[1], conns[2]))
        try:
            while not self._done.is_set():
                if idx >= self._target:
                    await asyncio.sleep(TICK_S)
                    continue
                n = self._take_buyer()
                if n is None:
                    return
                try:
                    await buyer.visit(f"{self.record.user_prefix}{n}")
                except (KeyError, TypeError, ValueError) as exc:  # an answer not shaped as docs/API.md says
                    self.record.server_errors.append(f"buyer {n}: unexpected answer: {exc!r}")
        finally:
            for c in conns:
                c.close()

    async def _poll_stats(self) -> None:
        conn = Connection(self.host, self.port, token=self.cfg.token)
        try:
            while not self._done.is_set():
                with contextlib.suppress(TransportError):
                    resp = await conn.request(b"GET", self.caller.base + "/stats", timeout_s=5)
                    data = resp.json() if resp.status == 200 else None
                    if isinstance(data, dict) and "remaining_units" in data:
                        self._see(data)
                await asyncio.sleep(STATS_POLL_S)
        finally:
            conn.close()

    def _see(self, stats: dict[str, Any]) -> None:
        self.live.stats = stats
        products = stats.get("products")
        if isinstance(products, list):
            self.shelf.restock({p["product_id"]: int(p["remaining_units"]) for p in products})
        if int(stats["remaining_units"]) <= 0 and self.shelf.sold_out_ms is None and now_ms() >= self.record.opens_ms:
            self.shelf.sold_out_ms = now_ms()

    async def _control(self, deadline: float, on_tick: Callable[[], None] | None) -> None:
        while not self._done.is_set():
            now = now_ms()
            t = (now - self.record.opens_ms) / 1000.0
            sold_out = self.shelf.sold_out_ms
            sold_t = (sold_out - self.record.opens_ms) / 1000.0 if sold_out and self.cfg.stop_at_sellout else None
            self._target = self.profile.users_at(t, sold_t)
            self.live.active = min(self._target, self.cfg.users)
            self.live.phase = ("before the opening" if t < 0 else "sold out" if sold_out else "open")
            if now >= deadline or self.profile.finished(t, sold_t) or self._next_buyer >= self.cfg.buyers:
                if now >= deadline:
                    self.caller.stopping = True
                self._done.set()
            if on_tick is not None:
                on_tick()
            await asyncio.sleep(TICK_S)

    async def run(self, on_tick: Callable[[], None] | None = None) -> Record:
        """Drive the spike; returns the record (the verdict is judged separately)."""
        rec = self.record
        rec.started_ms = now_ms()
        deadline = rec.started_ms + self.cfg.duration_s * 1000.0
        start_at = rec.opens_ms - self.cfg.trickle_s * 1000.0
        if start_at > rec.started_ms:  # nobody is around until the trickle starts
            await asyncio.sleep(min(start_at, deadline) / 1000.0 - rec.started_ms / 1000.0)
        gc.disable()  # a run allocates ~10^5 long-lived grants: generational scans would only slow it
        workers = [asyncio.ensure_future(self._worker(i)) for i in range(self.cfg.users)]
        helpers = [asyncio.ensure_future(self._poll_stats()),
                   asyncio.ensure_future(self._control(deadline, on_tick))]
        try:
            done_waiter = asyncio.ensure_future(self._done.wait())
            await asyncio.wait([done_waiter, *workers], return_when=asyncio.FIRST_COMPLETED)
            if not self._done.is_set():  # every buyer taken: let the last ones finish
                await asyncio.wait(workers)
                self._done.set()
            grace = self.cfg.timeout_s * 2 + 5
            _, pending = await asyncio.wait(workers, timeout=grace)
            if pending:
                self.caller.stopping = True
                _, pending = await asyncio.wait(pending, timeout=self.cfg.timeout_s + 2)
            for w in pending:
                w.cancel()
        finally:
            gc.enable()
            self._done.set()
            for h in helpers:
                h.cancel()
            await asyncio.gather(*helpers, *workers, return_exceptions=True)
        rec.sold_out_ms = self.shelf.sold_out_ms
        rec.buyers = self._next_buyer
        rec.ended_ms = now_ms()
        return rec
