"""The buyer signals of a ``reserved`` event under buyer caps reach the ledger (the fast COPY path
on PostgreSQL, rows on SQLite), and the history rebuilt from it gives the buyers hash Redis holds."""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis

from engine import keys
from engine.admission.buyer import Buyer
from engine.core import Engine, ReserveRequest
from engine.errors import BuyerCapExceeded
from engine.ledger.history import replay, totals
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
