"""The asyncio load generator: virtual users following the launch-day spike, in one process.

Each virtual user keeps one keep-alive connection and serves buyers one after another (a buyer is
a fresh user id). A controller sets how many virtual users are active from the ``SpikeProfile``;
a poller reads the campaign's stats twice a second (for the progress bar, for restocking
cancelled units, and to see the sell-out). The run ends when the spike has decayed after the
sell-out, when every buyer has been served, or at the time bound, whichever comes first.

Every buyer is a person with their own buyer signals (``engine.loadgen.crowd``). Instead of the
spike, ``arrive_s`` lets the people arrive at random instants over a window (each a task of its
own on a shared pool of connections: in a waiting room most of them wait). ``scalpers`` adds
farms of accounts that all fire at the first millisecond of the opening (in queue mode, of the
pre-queue), each farm on a few connections of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from engine.loadgen.behaviour import Mix
from engine.loadgen.buyer import Buyer, Shelf
from engine.loadgen.calls import Caller, Pacer, now_ms
from engine.loadgen.crowd import Scalpers, person, scalper, scalper_user
from engine.loadgen.http import Connection, Pool, TransportError, split_url
from engine.loadgen.profile import SpikeProfile
from engine.loadgen.record import Record

STATS_POLL_S = 0.5
TICK_S = 0.05
SCALPER_CONNS = 4  # connections per scalper operator


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
    arrive_s: float | None = None  # people arrive at random over this many seconds (None: the spike)
    arrive_from_s: float = 0.0  # ... from this long after the opening (negative: before it)
    pool: int = 64  # connections the arriving people share (with ``arrive_s``)
    scalpers: Scalpers | None = None
    poll_cap_s: float = 5.0  # queue mode: the longest wait between two polls, whatever poll_after_ms says

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


def _ms(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000.0


class Generator:
    def __init__(self, cfg: LoadConfig, definition: dict[str, Any], opens_ms: float) -> None:
        self.cfg = cfg
        self.host, self.port, prefix = split_url(cfg.url)
        base = f"{prefix}/v1/campaigns/{cfg.campaign_id}"
        self.record = Record(cfg.campaign_id, cfg.user_prefix or f"lg{secrets.token_hex(3)}-")
        self.record.opens_ms = opens_ms
        self.caller = Caller(self.record, base, Pacer(cfg.rate) if cfg.rate else None,
                             cfg.timeout_s, cfg.retries)
        self.shelf = Shelf(definition, poll_cap_s=cfg.poll_cap_s)
        self.record.queued = self.shelf.queued
        adm = definition.get("admission") or {}
        self.fire_ms = _ms(adm["queue_opens_at"]) if self.shelf.queued else opens_ms  # when the farms fire
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
                await self._visit(buyer, n)
        finally:
            for c in conns:
                c.close()

    async def _visit(self, buyer: Buyer, n: int) -> None:
        prefix = self.record.user_prefix
        self.record.people += 1
        try:
            await buyer.visit(f"{prefix}{n}", person(prefix, n))
        except (KeyError, TypeError, ValueError) as exc:  # an answer not shaped as docs/API.md says
            self.record.server_errors.append(f"buyer {n}: unexpected answer: {exc!r}")

    async def _sleep_until(self, at_ms: float) -> bool:
        """Until ``at_ms`` (wall clock); False if the run ends first."""
        while not self._done.is_set():
            left = at_ms - now_ms()
            if left <= 0:
                return True
            await asyncio.sleep(min(left / 1000.0, TICK_S))
        return False

    async def _arrivals(self, arrive_s: float) -> None:
        """People at random instants over the window, each a task on the shared pool."""
        pool = Pool(self.host, self.port, self.cfg.pool, token=self.cfg.token)
        bad = (Pool(self.host, self.port, 2), Pool(self.host, self.port, 2, token="not-a-token"))
        start = self.record.opens_ms + self.cfg.arrive_from_s * 1000.0
        times = sorted(start + self._rng.random() * arrive_s * 1000.0 for _ in range(self.cfg.buyers))
        tasks: list[asyncio.Future[None]] = []
        try:
            for at in times:
                if not await self._sleep_until(at):
                    break
                n = self._take_buyer()
                if n is None:
                    break
                self.record.arrivals[f"{self.record.user_prefix}{n}"] = now_ms()
                buyer = Buyer(self.caller, self.shelf, self.cfg.mix, pool, random.Random(self._rng.random()), bad)
                tasks.append(asyncio.ensure_future(self._visit(buyer, n)))
            if tasks:
                await asyncio.wait(tasks)
        finally:
            for t in tasks:
                t.cancel()
            for p in (pool, *bad):
                p.close()

    async def _scalpers(self, s: Scalpers) -> None:
        """Every account of every farm fires at ``fire_ms``, each farm on its own few connections."""
        prefix = self.record.user_prefix
        pools = [Pool(self.host, self.port, SCALPER_CONNS, token=self.cfg.token) for _ in range(s.operators)]
        bad = (Pool(self.host, self.port, 1), Pool(self.host, self.port, 1, token="not-a-token"))

        async def account(o: int, j: int) -> None:
            # a farm asks no more than the cap, and never sends malformed requests
            mix = replace(self.cfg.mix, bad=0.0, cap_probe=0.0, key_reuse=0.0, replay=0.0)
            buyer = Buyer(self.caller, self.shelf, mix, pools[o], random.Random(self._rng.random()), bad)
            self.record.scalpers += 1
            try:
                await buyer.visit(scalper_user(prefix, o, j), scalper(prefix, s, o, j))
            except (KeyError, TypeError, ValueError) as exc:
                self.record.server_errors.append(f"scalper {o}-{j}: unexpected answer: {exc!r}")

        try:
            if await self._sleep_until(self.fire_ms):
                await asyncio.gather(*(account(o, j) for o in range(s.operators) for j in range(s.accounts)))
        finally:
            for p in (*pools, *bad):
                p.close()

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
            self._target = 0 if self.cfg.arrive_s is not None else self.profile.users_at(t, sold_t)
            self.live.active = min(self._target, self.cfg.users)
            self.live.phase = ("before the opening" if t < 0 else "sold out" if sold_out else "open")
            spike_over = self.cfg.arrive_s is None and (self.profile.finished(t, sold_t)
                                                        or self._next_buyer >= self.cfg.buyers)
            if now >= deadline or spike_over:
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
        start_at = min(rec.opens_ms - self.cfg.trickle_s * 1000.0, self.fire_ms - 1000.0)
        if self.cfg.arrive_s is not None:
            start_at = min(rec.opens_ms + self.cfg.arrive_from_s * 1000.0, self.fire_ms) - 1000.0
        if start_at > rec.started_ms:  # nobody is around until the trickle starts
            await asyncio.sleep(min(start_at, deadline) / 1000.0 - rec.started_ms / 1000.0)
        gc.disable()  # a run allocates ~10^5 long-lived grants: generational scans would only slow it
        if self.cfg.arrive_s is None:
            workers = [asyncio.ensure_future(self._worker(i)) for i in range(self.cfg.users)]
        else:
            workers = [asyncio.ensure_future(self._arrivals(self.cfg.arrive_s))]
        if self.cfg.scalpers is not None:
            workers.append(asyncio.ensure_future(self._scalpers(self.cfg.scalpers)))
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
