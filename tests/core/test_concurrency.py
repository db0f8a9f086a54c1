"""Races: a flash crowd against a small tranche, a storm of replays of one key, the script cache
flushed under load, and a Redis that stops answering or restarts mid-run."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine, Outcome, ReserveRequest
from engine.errors import (
    InsufficientStock,
    Rejected,
    SoldOut,
    StorageUnavailable,
    UserCapExceeded,
)
from engine.settings import Settings
from tests.core.conftest import campaign, stream
from tests.support.servers import RedisServer

K = keys.CampaignKeys("c1")


async def retrying(call: Callable[[], Awaitable[Any]], attempts: int = 40) -> Any:
    """What a storefront does on a 503: the same request again (same Idempotency-Key)."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except StorageUnavailable:
            await asyncio.sleep(0.1)
    return await call()


TRANCHE = 1000
CAMPAIGN_CAP = 5
PRODUCTS = {"p1": (600, 3), "p2": (500, None), "p3": (400, 2)}  # units, per-user cap


async def records(r: aioredis.Redis, cid: str = "c1") -> dict[str, list[Any]]:
    raw = await r.hgetall(keys.CampaignKeys(cid).reservations)
    return {k.decode(): list(msgpack.unpackb(v, raw=False)) for k, v in raw.items()}


async def test_flash_crowd_never_oversells(make_engine: Callable[..., Engine], aredis: aioredis.Redis) -> None:
    """20,000 concurrent reserves from 4,000 users, through four engines (four API processes),
    against a 1,000-unit tranche over three products with per-product and per-campaign caps."""
    engines = [make_engine() for _ in range(4)]
    try:
        await engines[0].load_campaign(campaign(
            total_units=TRANCHE, user_cap_units=CAMPAIGN_CAP,
            products=[{"id": p, "title": p, "total_units": n, **({"user_cap_units": c} if c else {})}
                      for p, (n, c) in PRODUCTS.items()]))
        rng = random.Random(7)
        calls = []
        for i in range(20_000):
            user = f"user-{rng.randrange(4000)}"
            request = ReserveRequest(user, rng.choice(list(PRODUCTS)), rng.randint(1, 3), f"key-{i}", "shop")
            calls.append(engines[i % 4].reserve("c1", request))
        out = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        for e in engines:
            await e.close()

    won = [o for o in out if not isinstance(o, BaseException)]
    lost = Counter(type(o).__name__ for o in out if isinstance(o, BaseException))
    assert all(isinstance(o, SoldOut | InsufficientStock | UserCapExceeded) for o in out
               if isinstance(o, BaseException)), lost
    assert sum(o.reservation.units for o in won) == TRANCHE  # demand exceeds it: sold out, exactly

    recs = await records(aredis)
    assert len(recs) == len(won) and all(r[0] == "held" for r in recs.values())
    per_user: dict[str, int] = defaultdict(int)
    per_user_product: dict[tuple[str, str], int] = defaultdict(int)
    per_product: dict[str, int] = defaultdict(int)
    for _, pid, uid, units, *_ in recs.values():
        per_user[uid] += units
        per_user_product[uid, pid] += units
        per_product[pid] += units
    assert max(per_user.values()) <= CAMPAIGN_CAP
    for (_, pid), units in per_user_product.items():
        cap = PRODUCTS[pid][1]
        assert cap is None or units <= cap
    for pid, units in per_product.items():
        assert units <= PRODUCTS[pid][0]

    counters = {k.decode(): int(v) for k, v in (await aredis.hgetall(K.counters)).items()}
    assert counters["held"] == sum(per_product.values()) == TRANCHE and counters["sold"] == 0
    for pid in PRODUCTS:
        assert counters.get(f"held|{pid}", 0) == per_product[pid]
    users = {k.decode(): int(v) for k, v in (await aredis.hgetall(K.users)).items()}
    assert {f: v for f, v in users.items() if v} == {
        **{f"t|{u}": n for u, n in per_user.items()},
        **{f"t|{u}|{p}": n for (u, p), n in per_user_product.items()},
        **{f"t|{u}|{p}|shop": n for (u, p), n in per_user_product.items()}}
    assert await aredis.zcard(K.holds) == len(won)
    events = await stream(aredis, "c1")
    assert sorted(e["rid"] for e in events) == sorted(recs)
    rejected = sum(v for k, v in counters.items() if k.startswith("rej|"))
    assert rejected == len(out) - len(won)


async def test_a_thousand_replays_make_one_reservation(make_engine: Callable[..., Engine],
                                                       aredis: aioredis.Redis) -> None:
    engines = [make_engine() for _ in range(3)]
    try:
        await engines[0].load_campaign(campaign())
        request = ReserveRequest("u1", "p1", 2, "the-one-key", "shop")
        out = await asyncio.gather(*(engines[i % 3].reserve("c1", request) for i in range(1000)))
    finally:
        for e in engines:
            await e.close()
    assert len({o.reservation for o in out}) == 1  # identical results
    assert sum(not o.replayed for o in out) == 1
    assert await aredis.hlen(K.reservations) == 1 and await aredis.hlen(K.idempotency) == 1
    assert len(await stream(aredis, "c1")) == 1
    assert await aredis.hmget(K.counters, ["held", "held|p1"]) == [b"2", b"2"]
    assert await aredis.hget(K.users, "t|u1") == b"2"


async def test_script_cache_flushed_mid_run(engine: Engine, aredis: aioredis.Redis) -> None:
    """SCRIPT FLUSH while reserves, confirms and naive calls are in flight: every call still lands
    (the lean wire and redis-py both reload on NOSCRIPT)."""
    await engine.load_campaign(campaign(user_cap_units=None, total_units=None, products=[
        {"id": "p1", "title": "t", "total_units": 100_000}]))
    stop = asyncio.Event()
    flushes = 0

    async def flusher() -> None:
        nonlocal flushes
        while not stop.is_set():
            await aredis.script_flush()
            flushes += 1
            await asyncio.sleep(0.005)

    async def client(n: int) -> int:
        done = 0
        for i in range(60):
            request = ReserveRequest(f"u{n}-{i}", "p1", 1, f"k{n}-{i}", "shop")
            call = engine.reserve_unbatched if i % 5 == 0 else engine.reserve
            o = await call("c1", request)
            await engine.confirm("c1", o.reservation.reservation_id, f"pay-{n}-{i}", storefront="shop")
            done += 1
        return done

    task = asyncio.create_task(flusher())
    try:
        results = await asyncio.gather(*(client(n) for n in range(20)))
    finally:
        stop.set()
        await task
    assert sum(results) == 1200 and flushes > 1
    c = await engine.counters("c1")
    assert (c.sold, c.held, c.orders) == (1200, 0, 1200)


async def test_redis_that_stops_answering_then_recovers(redis_url: str, aredis: aioredis.Redis) -> None:
    """CLIENT PAUSE: calls time out as StorageUnavailable (never hang), then the engine carries on."""
    e = Engine.from_settings(Settings(redis_url=redis_url, redis_timeout_s=0.3))
    try:
        await e.load_campaign(campaign())
        await e.reserve("c1", ReserveRequest("u0", "p1", 1, "k0", "shop"))
        await aredis.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        out = await asyncio.gather(*(e.reserve("c1", ReserveRequest(f"u{i}", "p1", 1, f"k{i}", "shop"))
                                     for i in range(1, 21)), return_exceptions=True)
        assert all(isinstance(o, StorageUnavailable) for o in out)
        await asyncio.sleep(1.5)

        def again_(i: int) -> Callable[[], Awaitable[Outcome]]:
            return lambda: e.reserve("c1", ReserveRequest(f"u{i}", "p1", 1, f"k{i}", "shop"))

        again = await asyncio.gather(*(retrying(again_(i)) for i in range(1, 21)))
        # a retry with the same key after a timeout never makes a second reservation
        assert len({o.reservation.reservation_id for o in again}) == 20
        assert await aredis.hlen(K.reservations) == 21
    finally:
        await e.close()


@pytest.mark.needs_services  # starts its own redis-server
async def test_redis_restart_mid_run() -> None:
    """A restarted Redis (durable profile) has lost its script cache and every connection: the
    engine fails fast while it is down and works again, reloading scripts, once it is back."""
    server = RedisServer(durable=True).start()
    e = Engine.from_settings(Settings(redis_url=server.url, redis_timeout_s=0.5))
    try:
        await e.load_campaign(campaign())
        held = await e.reserve("c1", ReserveRequest("u1", "p1", 2, "k1", "shop"))
        server.kill()
        try:
            await e.reserve("c1", ReserveRequest("u2", "p1", 1, "k2", "shop"))
            raise AssertionError("a reserve against a dead Redis succeeded")
        except StorageUnavailable:
            pass
        server.start()
        replay = await retrying(lambda: e.reserve("c1", ReserveRequest("u1", "p1", 2, "k1", "shop")))
        assert replay.replayed and replay.reservation == held.reservation  # AOF kept it
        await retrying(lambda: e.confirm("c1", held.reservation.reservation_id, "pay", storefront="shop"))
        fresh = await retrying(lambda: e.reserve("c1", ReserveRequest("u2", "p1", 1, "k2", "shop")))
        assert fresh.reservation.state == "held" and fresh.reservation.user_id == "u2"
    finally:
        await e.close()
        server.stop()


async def test_rejections_do_not_poison_neighbours(engine: Engine) -> None:
    """Requests judged in one batch with every kind of rejection: each gets its own answer."""
    await engine.load_campaign(campaign(products=[{"id": "p1", "title": "t", "total_units": 3, "user_cap_units": 2}],
                                        total_units=None))
    calls = [engine.reserve("c1", ReserveRequest("u1", "p1", 2, "a", "shop")),
             engine.reserve("c1", ReserveRequest("u1", "p1", 1, "b", "shop")),
             engine.reserve("c1", ReserveRequest("u2", "p1", 2, "c", "shop")),
             engine.reserve("c1", ReserveRequest("u3", "p1", 1, "d", "shop")),
             engine.reserve("c1", ReserveRequest("u4", "p1", 1, "e", "shop")),
             engine.reserve("c1", ReserveRequest("u5", "zz", 1, "f", "shop"))]
    out = await asyncio.gather(*calls, return_exceptions=True)
    kinds = [type(o).__name__ if isinstance(o, Rejected) else "ok" for o in out]
    assert kinds == ["ok", "UserCapExceeded", "InsufficientStock", "ok", "SoldOut", "NotFound"]
