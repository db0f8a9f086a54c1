"""The buyer signals of a ``reserved`` event under buyer caps reach the ledger (the fast COPY path
on PostgreSQL, rows on SQLite), and the history rebuilt from it gives the buyers hash Redis holds."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.admission.buyer import Buyer
from engine.core import Engine, ReserveRequest
from engine.errors import BuyerCapExceeded, NotRegistered
from engine.ledger import sink_for
from engine.ledger.history import replay, totals
from engine.ledger.reconcile import reconcile
from engine.ledger.recover import recover, refuse
from tests.core.conftest import make_overdue
from tests.ledger.sale import campaign, drain, ledger

CID = "ledger-buyers"


async def buyers(r: aioredis.Redis, k: keys.CampaignKeys) -> dict[str, int]:
    return {f.decode(): int(v) for f, v in (await r.hgetall(k.buyers)).items()}


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


async def test_buyer_caps_hold_exactly_after_redis_is_flushed_and_recovered(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    """Mid-sale, Redis loses everything (this private redis-server is flushed). `recover` rebuilds
    the buyers hash from the ledger's buyer signals: the confirmed units count against every cap
    (identity, device, network), the holds it drops count no more, its records keep their signals,
    and a hold taken after the recovery gives its units back on cancel and expiry."""
    cid = "ledger-buyers-flushed"
    c = dataclasses.replace(campaign(cid), identity_cap_units=4, device_cap_units=3, network_cap_units=5)
    await engine.load_campaign(c)
    k = keys.CampaignKeys(cid)
    pid = c.products[0].id

    async def reserve(user: str, units: int, identity: str, device: str, ip: str) -> str:
        out = await engine.reserve(cid, ReserveRequest(user, pid, units, f"k-{user}", "shop",
                                                       Buyer(identity=identity, device=device, ip=ip)))
        return out.reservation.reservation_id

    confirmed = [await reserve("u1", 3, "A", "d1", "203.0.113.1"),   # A 3, d1 3, net-113 3
                 await reserve("u2", 2, "B", "d2", "203.0.113.2"),   # B 2, d2 2, net-113 5
                 await reserve("u3", 1, "C", "d3", "2001:db8:1::1")]  # C 1, d3 1, net-db8 1
    held = [await reserve("u4", 1, "A", "d4", "2001:db8:1::2"),      # dropped by recover
            await reserve("u5", 2, "C", "d3", "2001:db8:1::3")]
    cancelled = await reserve("u6", 2, "B", "d5", "198.51.100.1")
    for i, rid in enumerate(confirmed):
        await engine.confirm(cid, rid, f"pay-{i}", storefront="shop")
    await engine.cancel(cid, cancelled, storefront="shop")
    assert len(held) == 2
    await drain(redis_url, db_url)
    await aredis.flushall()

    sink = sink_for(db_url)
    await sink.open()
    try:
        result = await recover(engine, sink, cid)
        assert result.reconciliation.clean and result.dropped_holds == 2
        want = {"i|A": 3, "i|B": 2, "i|C": 1, "d|d1": 3, "d|d2": 2, "d|d3": 1,
                "n|203.0.113.0/24": 5, "n|2001:db8:1::/48": 1}
        assert {f: v for f, v in (await buyers(aredis, k)).items() if v} == want
        for rid in confirmed:  # a record recover wrote keeps the signals the caps counted
            assert len(msgpack.unpackb(await aredis.hget(k.reservations, rid), raw=False)) == 14

        # every cap binds exactly where the confirmed units left it
        for user, units, signals, dimension, allowed in (
                ("v1", 2, ("A", "e1", "192.0.2.1"), "identity", 1),
                ("v2", 1, ("D", "d1", "192.0.2.2"), "device", 0),
                ("v3", 1, ("D", "e3", "203.0.113.9"), "network", 0)):
            with pytest.raises(BuyerCapExceeded) as refused:
                await reserve(user, units, *signals)
            assert (refused.value.dimension, refused.value.allowed) == (dimension, allowed)
        late = await reserve("v4", 1, "A", "e4", "192.0.2.4")  # A's last unit
        with pytest.raises(BuyerCapExceeded):
            await reserve("v5", 1, "A", "e5", "192.0.2.5")
        await engine.cancel(cid, late, storefront="shop")  # released: A has a unit again
        again = await reserve("v6", 1, "A", "e6", "2001:db8:1::9")
        await make_overdue(aredis, cid, again)
        assert await engine.expire_due(cid) == (1, False)
        assert {f: v for f, v in (await buyers(aredis, k)).items() if v} == want
        await drain(redis_url, db_url)
        await aredis.hincrby(k.buyers, "d|d2", 1)  # a buyers hash that drifted: reconcile names it
        report = await reconcile(aredis, sink, cid)
        assert [(d.what, d.redis, d.ledger) for d in report.differences] == [
            ("device d2: units taken (held + confirmed)", 3, 2)]
    finally:
        await sink.close()


async def test_signals_shared_across_pages_of_users_add_up(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                          db_url: str) -> None:
    """Reconcile and recover read the history a page of users at a time, but one signal spans users
    (one person's accounts, one network's people): in pages of 2 reservations, recover still stages
    each signal's whole total, and reconcile compares the totals, not a page's share."""
    cid = "ledger-buyers-paged"
    c = dataclasses.replace(campaign(cid), identity_cap_units=40, device_cap_units=40, network_cap_units=100)
    await engine.load_campaign(c)
    k = keys.CampaignKeys(cid)
    pid = c.products[0].id
    confirmed: dict[str, int] = {}
    for i in range(24):
        buyer = Buyer(identity=f"P{i % 3}", device=f"d{i % 4}", ip=f"203.0.113.{i}")
        out = await engine.reserve(cid, ReserveRequest(f"u{i:02d}", pid, 1 + i % 2, f"k{i}", "shop", buyer))
        rid = out.reservation.reservation_id
        if i % 3 != 2:
            await engine.confirm(cid, rid, f"pay-{i}", storefront="shop")
            for f in (f"i|P{i % 3}", f"d|d{i % 4}", "n|203.0.113.0/24"):
                confirmed[f] = confirmed.get(f, 0) + 1 + i % 2
        if i == 11:
            await drain(redis_url, db_url)  # half in the ledger, half in the stream only
    sink = sink_for(db_url)
    await sink.open()
    try:
        assert (await reconcile(aredis, sink, cid, page=2)).clean
        await aredis.unlink(k.buyers, k.users, k.counters)
        result = await recover(engine, sink, cid, page=2)
        assert result.reconciliation.clean and result.dropped_holds == 8
        assert {f: v for f, v in (await buyers(aredis, k)).items() if v} == confirmed
        await aredis.hincrby(k.buyers, "i|P1", 1)
        await aredis.hset(k.buyers, "d|nobody", 2)
        report = await reconcile(aredis, sink, cid, page=2)
        assert [(d.what, d.redis, d.ledger) for d in report.differences] == [
            ("device nobody: units taken (held + confirmed)", 2, 0),
            ("identity P1: units taken (held + confirmed)", confirmed["i|P1"] + 1, confirmed["i|P1"])]
    finally:
        await sink.close()
