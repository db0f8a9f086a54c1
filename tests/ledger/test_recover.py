"""Recovery after Redis lost data: the campaign rebuilt from the ledger (plus what the stream
kept), refused while it happens, reconciled, and never oversold afterwards."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.errors import FlashsaleError, InvalidState, StorageUnavailable
from engine.ledger import sink_for
from engine.ledger.reconcile import reconcile
from engine.ledger.recover import recover, refuse
from engine.ledger.sink import entry_key
from tests.ledger.sale import campaign, drain, flashsale, ledger, sell
from tests.support.processes import base_env

CID = "rec-c1"
TOTAL = 3000  # units, two products of 1500


async def sell_out(engine: Engine, start: int, attempts: int) -> int:
    """Many more buyers than units left: reserve and confirm until refused; units confirmed."""
    confirmed = 0

    async def one(i: int) -> None:
        nonlocal confirmed
        try:
            req = ReserveRequest(f"late{i}", f"p{i % 2}", 3, f"late{i}", "shop-a")
            r = (await engine.reserve(CID, req)).reservation
            await engine.confirm(CID, r.reservation_id, f"late-pay-{i}")
            confirmed += r.units
        except FlashsaleError:
            pass

    for s in range(start, start + attempts, 250):
        await asyncio.gather(*(one(i) for i in range(s, s + 250)))
    return confirmed


async def test_redis_flushed_mid_sale_then_recovered(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                     db_url: str) -> None:
    await engine.load_campaign(campaign(CID, total=TOTAL, user_cap=6))
    sale = await sell(engine, CID, 800, confirm_every=2, cancel_every=5)
    await drain(redis_url, db_url)
    before = await ledger(db_url, CID)
    kept_rid, (kept_user, _, _) = next(iter(sale.confirmed.items()))
    await aredis.flushall()  # Redis lost everything: definition, counters, holds, stream

    sink = sink_for(db_url)
    await sink.open()
    _, reloaded = await refuse(engine, sink, CID)
    assert reloaded
    with pytest.raises(StorageUnavailable, match="recovered"):
        await engine.reserve(CID, ReserveRequest("u-new", "p0", 1, "k-new", "shop-a"))
    result = await recover(engine, sink, CID)
    assert result.reconciliation.clean, [str(d) for d in result.reconciliation.differences]
    assert (result.orders, result.dropped_holds) == (len(sale.confirmed), len(sale.held))

    c = await engine.counters(CID)
    assert (c.sold, c.held, c.orders) == (sale.units, 0, len(sale.confirmed))
    assert c.persisted_orders == len(sale.confirmed)
    assert (await engine.holdings(CID, kept_user)).confirmed_units == sale.confirmed[kept_rid][2]
    replay = await engine.confirm(CID, kept_rid, f"pay-{kept_user[1:]}")  # the storefront retries
    assert replay.replayed and replay.reservation.state == "confirmed"
    dropped = next(iter(sale.held))
    with pytest.raises(InvalidState):
        await engine.confirm(CID, dropped, "too-late")
    info = await aredis.xinfo_stream(keys.CampaignKeys(CID).events)
    assert entry_key(info["last-generated-id"].decode()) >= entry_key(before.events[-1].entry_id)

    late = await sell_out(engine, 10_000, 2000)  # far more buyers than units left
    c = await engine.counters(CID)
    assert c.sold == sale.units + late <= TOTAL
    assert all(c.product_sold[p] <= TOTAL // 2 for p in ("p0", "p1"))
    assert c.held == 0
    await drain(redis_url, db_url)
    after = await ledger(db_url, CID)
    assert sum(o.units for o in after.orders) == c.sold <= TOTAL
    assert {e.reservation_id for e in after.events if e.type == "expired"} >= sale.held  # the drop is in the books
    assert (await reconcile(aredis, sink, CID)).clean
    await sink.close()


async def test_redis_kept_the_definition_and_the_stream_but_lost_the_counters(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    """A partial loss: the undrained stream survives; its confirms count; the flag comes back."""
    await engine.load_campaign(campaign(CID, total=TOTAL))
    first = await sell(engine, CID, 300)
    await drain(redis_url, db_url)
    second = await sell(engine, CID, 200, start=300, confirm_every=2)  # still in the stream only
    await engine.pause(CID)
    k = keys.CampaignKeys(CID)
    await aredis.delete(k.counters, k.users, k.reservations, k.holds)
    sink = sink_for(db_url)
    await sink.open()
    assert not (await reconcile(aredis, sink, CID)).clean
    result = await recover(engine, sink, CID)
    assert result.reconciliation.clean and not result.reloaded_definition
    assert result.orders == len(first.confirmed) + len(second.confirmed)
    assert (await engine.view(CID)).flag == "paused"  # as it was before
    c = await engine.counters(CID)
    assert c.sold == first.units + second.units and c.held == 0
    await drain(redis_url, db_url)
    snap = await ledger(db_url, CID)
    assert {o.reservation_id for o in snap.orders} == set(first.confirmed) | set(second.confirmed)
    assert (await reconcile(aredis, sink, CID)).clean
    await sink.close()


async def test_recover_command(engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID, total=TOTAL))
    sale = await sell(engine, CID, 100, confirm_every=2)
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    assert (await flashsale("writer", "--burst", env=env)).returncode == 0
    await aredis.flushall()
    gone = await flashsale("reconcile", CID, env=env)
    assert gone.returncode == 1 and "campaign definition: Redis (missing: run flashsale recover)" in gone.stdout
    done = await flashsale("recover", CID, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(sale.confirmed)} confirmed orders restored, {len(sale.held)} unpaid holds dropped" in done.stdout
    assert "definition reloaded from the ledger" in done.stdout and f"campaign {CID} serves again" in done.stdout
    assert (await engine.view(CID)).state == "open"
    assert (await flashsale("reconcile", CID, env=env)).returncode == 0


async def test_recover_refuses_a_campaign_nobody_knows(engine: Engine, db_url: str) -> None:
    sink = sink_for(db_url)
    await sink.open()
    with pytest.raises(FlashsaleError, match="neither in Redis nor in the ledger"):
        await recover(engine, sink, "nobody")
    await sink.close()
