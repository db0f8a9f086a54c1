"""The buyer signals of a ``reserved`` event under buyer caps reach the ledger (the fast COPY path
on PostgreSQL, rows on SQLite), and the history rebuilt from it gives the buyers hash Redis holds."""

from __future__ import annotations

import dataclasses

import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.admission.buyer import Buyer
from engine.core import Engine, ReserveRequest
from engine.errors import BuyerCapExceeded, NotRegistered
from engine.ledger import sink_for
from engine.ledger.history import replay, totals
from engine.ledger.recover import recover, refuse
from tests.ledger.sale import campaign, drain, ledger

CID = "ledger-buyers"


async def test_the_ledger_rebuilds_the_buyers_hash(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                  db_url: str) -> None:
    c = dataclasses.replace(campaign(CID), identity_cap_units=6, network_cap_units=50)
    await engine.load_campaign(c)
    pid = c.products[0].id
    made = []
    for i in range(30):
        buyer = Buyer(identity=f"person-{i % 4}", device=f"dev-{i}", ip=f"203.0.{113 + i % 2}.{i}")
        try:
            out = await engine.reserve(CID, ReserveRequest(f"u{i}", pid, 1 + i % 2, f"k{i}", "shop", buyer))
        except BuyerCapExceeded:  # the identity caps refuse some: only the granted ones matter here
            continue
        made.append(out.reservation.reservation_id)
    assert len(made) > 4
    await engine.confirm(CID, made[0], "pay-0", storefront="shop")
    await engine.cancel(CID, made[1], storefront="shop")
    await drain(redis_url, db_url)
    snap = await ledger(db_url, CID)
    reserved = [e for e in snap.events if e.type == "reserved"]
    assert len(reserved) == len(made) and all(e.identity and e.network and e.device == "" for e in reserved)
    want = totals(replay(snap.events).values()).buyer_units
    stored = {k.decode(): int(v) for k, v in (await aredis.hgetall(keys.CampaignKeys(CID).buyers)).items()}
    assert want == {f: v for f, v in stored.items() if v} and want


async def test_a_definition_reloaded_by_recover_keeps_its_v1_1_rules(engine: Engine, aredis: aioredis.Redis,
                                                                    redis_url: str, db_url: str) -> None:
    """Redis lost everything; `recover` reloads the definition from the ledger with its buyer caps
    and eligibility, so the reserve script still enforces them."""
    cid = "ledger-buyers-rec"
    c = dataclasses.replace(campaign(cid), identity_cap_units=2, eligibility="registered")
    await engine.load_campaign(c)
    k = keys.CampaignKeys(cid)
    await aredis.hset(k.registrations, "u|u1", "0|")  # as register.lua writes a registration
    pid = c.products[0].id
    await engine.reserve(cid, ReserveRequest("u1", pid, 1, "k1", "shop", Buyer(identity="p")))
    await drain(redis_url, db_url)
    await aredis.flushall()
    sink = sink_for(db_url)
    await sink.open()
    try:
        _, reloaded = await refuse(engine, sink, cid)
        assert reloaded
        assert (await recover(engine, sink, cid)).reconciliation.clean
    finally:
        await sink.close()
    meta = await aredis.hmget(k.meta, ["icap", "elig"])
    assert meta == [b"2", b"registered"]
    with pytest.raises(NotRegistered):  # the registrations were lost with Redis: nobody is registered now
        await engine.reserve(cid, ReserveRequest("u1", pid, 1, "k2", "shop", Buyer(identity="p")))
