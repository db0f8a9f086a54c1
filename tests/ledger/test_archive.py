"""``flashsale campaign archive``: refused (one line, exit 1, nothing removed) while anything in
Redis is still needed; for a closed, fully persisted campaign its keys leave Redis, its ledger
stays, and ``reconcile`` says the campaign is archived."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine
from engine.keys import liveness_key
from tests.ledger.sale import campaign, drain, flashsale, ledger, sell, until
from tests.support.processes import FLASHSALE, Process, base_env

CID = "archive-c1"
K = keys.CampaignKeys(CID)


async def archive(redis_url: str, db_url: str) -> tuple[int, str, str]:
    done = await flashsale("campaign", "archive", CID, env=base_env(redis_url, FLASHSALE_DATABASE_URL=db_url))
    return done.returncode, done.stdout, done.stderr


async def campaign_keys(r: aioredis.Redis) -> list[bytes]:
    return sorted([k async for k in r.scan_iter(match=f"{K.tag}:*")])


async def refused(r: aioredis.Redis, redis_url: str, db_url: str, why: str) -> None:
    before = await campaign_keys(r)
    code, out, err = await archive(redis_url, db_url)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and why in err, err
    assert "Traceback" not in err
    assert await campaign_keys(r) == before and await r.sismember(keys.CAMPAIGNS, CID)


async def test_an_open_campaign_is_refused(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                           db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 20)
    await drain(redis_url, db_url)
    await refused(aredis, redis_url, db_url, "is not closed")


async def test_a_closed_campaign_with_a_hold_is_refused(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                        db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 20, confirm_every=2)  # every other reservation left held
    await drain(redis_url, db_url)
    await engine.close_campaign(CID)
    await refused(aredis, redis_url, db_url, "still holds")


async def test_a_closed_campaign_the_ledger_lacks_orders_of_is_refused(engine: Engine, aredis: aioredis.Redis,
                                                                       redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 20)
    await drain(redis_url, db_url)
    await sell(engine, CID, 5, start=20)  # confirmed, never written to the ledger
    await engine.close_campaign(CID)
    await refused(aredis, redis_url, db_url, "not yet read")


async def test_a_closed_campaign_redis_and_the_ledger_disagree_on_is_refused(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 20)
    await drain(redis_url, db_url)
    await engine.close_campaign(CID)
    await aredis.hincrby(K.counters, "orders", 1)  # Redis counts an order the ledger never saw
    await refused(aredis, redis_url, db_url, "reconcile finds")


async def test_a_persisted_campaign_leaves_redis_and_its_ledger_stays(engine: Engine, aredis: aioredis.Redis,
                                                                      redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await engine.load_campaign(campaign("other"))
    sale = await sell(engine, CID, 60, confirm_every=2, cancel_every=3)
    await sell(engine, "other", 10)
    for rid in sale.held:
        await engine.cancel(CID, rid, storefront="shop-a")
    await drain(redis_url, db_url)
    await engine.close_campaign(CID)
    before = await ledger(db_url, CID)
    code, out, err = await archive(redis_url, db_url)
    assert code == 0, err
    assert f"campaign {CID} archived: {len(sale.confirmed)} orders" in out
    assert await campaign_keys(aredis) == []
    assert not await aredis.sismember(keys.CAMPAIGNS, CID) and await aredis.sismember(keys.CAMPAIGNS, "other")
    assert await aredis.exists(keys.CampaignKeys("other").reservations)  # another campaign is untouched
    after = await ledger(db_url, CID)
    assert after == before and {o.reservation_id for o in after.orders} == set(sale.confirmed)
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    report = await flashsale("reconcile", CID, env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "archived at" in report.stdout and f"{len(sale.confirmed)} confirmed orders in the ledger" in report.stdout
    await refused_again(redis_url, db_url)
    await drain(redis_url, db_url)  # a writer after the archive follows the campaigns still in Redis
    assert await campaign_keys(aredis) == []


async def refused_again(redis_url: str, db_url: str) -> None:
    code, _, err = await archive(redis_url, db_url)
    assert code == 1 and "already archived" in err


async def test_a_running_writer_lets_an_archived_campaign_go(engine: Engine, aredis: aioredis.Redis,
                                                             redis_url: str, db_url: str) -> None:
    """The writer following the campaign when it is archived drops it and recreates none of its keys."""
    await engine.load_campaign(campaign(CID))
    await engine.load_campaign(campaign("other"))
    proc = Process([FLASHSALE, "writer", "--consumer", "w-live", "--claim-idle-ms", "300"],
                   base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)).start()
    try:
        await until(lambda: aredis.exists(liveness_key("w-live")), 30, "the writer announces itself")
        sale = await sell(engine, CID, 30)
        await until(lambda: persisted(aredis, CID, len(sale.confirmed)), 30, "the writer persists the sale")
        await engine.close_campaign(CID)
        code, _, err = await archive(redis_url, db_url)
        assert code == 0, err
        other = await sell(engine, "other", 20)  # the writer goes on with the others
        await until(lambda: persisted(aredis, "other", len(other.confirmed)), 30, "the writer persists the other")
        await asyncio.sleep(1.5)  # a few of its trims, claims and refreshes
        assert await campaign_keys(aredis) == []
        assert proc.alive(), proc.output()
        assert "Traceback" not in proc.output()
    finally:
        proc.stop()


async def persisted(r: aioredis.Redis, cid: str, n: int) -> bool:
    return int(await r.hget(keys.CampaignKeys(cid).ledger, "persisted_orders") or 0) == n
