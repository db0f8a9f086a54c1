"""Buyer caps in reserve.lua (identity, device, network), with every other cap in one atomic step,
and their units returned exactly once by cancel and expire (real Redis, through the Engine)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.admission.buyer import Buyer
from engine.core import Engine, ReserveRequest
from engine.errors import BuyerCapExceeded, IdempotencyKeyReused, InvalidRequest, InvalidState
from tests.core.conftest import campaign, make_overdue, stream, text

pytestmark = pytest.mark.needs_services


def req(user: str, units: int = 1, *, key: str | None = None, product: str = "p2", **signals: str) -> ReserveRequest:
    return ReserveRequest(user, product, units, key or f"k-{user}-{random.random()}", "shop",
                          Buyer(**signals) if signals else None)


async def buyers(r: aioredis.Redis, cid: str = "c1") -> dict[str, int]:
    return {text(f): int(v) for f, v in (await r.hgetall(keys.CampaignKeys(cid).buyers)).items()}


async def load(engine: Engine, **caps: Any) -> None:
    await engine.load_campaign(campaign(total_units=1000, user_cap_units=100, products=[
        {"id": "p1", "title": "a", "total_units": 1000}, {"id": "p2", "title": "b", "total_units": 1000}], **caps))


async def test_many_accounts_over_one_identity_are_one_buyer(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, identity_cap_units=5)
    await engine.reserve("c1", req("u1", 3, identity="person-A"))
    await engine.reserve("c1", req("u2", 1, identity="person-A", product="p1"))  # over all products
    with pytest.raises(BuyerCapExceeded) as refused:
        await engine.reserve("c1", req("u3", 2, identity="person-A"))
    assert (refused.value.dimension, refused.value.allowed) == ("identity", 1)
    await engine.reserve("c1", req("u3", 1, identity="person-A"))
    with pytest.raises(BuyerCapExceeded) as refused:
        await engine.reserve("c1", req("u4", 1, identity="person-A"))
    assert refused.value.allowed == 0
    await engine.reserve("c1", req("u4", 5, identity="person-B"))  # another person is not held back
    assert await buyers(aredis) == {"i|person-A": 5, "i|person-B": 5}
    counters = await engine.counters("c1")
    assert counters.held == 10 and counters.rejections["BUYER_CAP_EXCEEDED"] == 2


async def test_device_and_network_caps(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, device_cap_units=2, network_cap_units=3)
    ok = {"device": "d1", "ip": "203.0.113.7"}
    await engine.reserve("c1", req("u1", 2, **ok))
    with pytest.raises(BuyerCapExceeded) as refused:
        await engine.reserve("c1", req("u2", 1, **ok))
    assert (refused.value.dimension, refused.value.allowed) == ("device", 0)
    # another device on the same /24: the network cap binds
    await engine.reserve("c1", req("u2", 1, device="d2", ip="203.0.113.200"))
    with pytest.raises(BuyerCapExceeded) as refused:
        await engine.reserve("c1", req("u3", 1, device="d3", ip="::ffff:203.0.113.9"))  # IPv4-mapped: the same /24
    assert (refused.value.dimension, refused.value.allowed) == ("network", 0)
    await engine.reserve("c1", req("u3", 2, device="d3", ip="203.0.114.1"))  # the next /24
    assert await buyers(aredis) == {"d|d1": 2, "d|d2": 1, "d|d3": 2, "n|203.0.113.0/24": 3, "n|203.0.114.0/24": 2}


async def test_ipv6_networks_are_slash_48(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, network_cap_units=2)
    await engine.reserve("c1", req("u1", 1, ip="2001:db8:1::1"))
    await engine.reserve("c1", req("u2", 1, ip="2001:db8:1:ffff::2"))
    with pytest.raises(BuyerCapExceeded):
        await engine.reserve("c1", req("u3", 1, ip="2001:db8:1:abcd:1:2:3:4"))
    await engine.reserve("c1", req("u3", 2, ip="2001:db8:2::1"))
    assert await buyers(aredis) == {"n|2001:db8:1::/48": 2, "n|2001:db8:2::/48": 2}


async def test_a_capped_signal_is_required(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, identity_cap_units=5, network_cap_units=5)
    before = await aredis.hgetall(keys.CampaignKeys("c1").counters)
    for request, field in ((req("u1"), "buyer.identity"), (req("u1", device="d"), "buyer.identity"),
                           (req("u1", identity="p"), "buyer.ip")):
        with pytest.raises(InvalidRequest) as refused:
            await engine.reserve("c1", request)
        assert refused.value.field == field
    assert await aredis.hgetall(keys.CampaignKeys("c1").counters) == before  # nothing written, nothing counted
    assert await buyers(aredis) == {}


async def test_signals_a_campaign_does_not_cap_are_not_counted(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine)
    await engine.reserve("c1", req("u1", 2, identity="p", device="d", ip="203.0.113.1"))
    assert await buyers(aredis) == {}
    [event] = await stream(aredis, "c1")
    assert "bi" not in event  # the v1 event, unchanged


async def test_units_return_exactly_once_on_cancel_and_expire(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, identity_cap_units=4, device_cap_units=4)
    sig = {"identity": "p", "device": "d"}
    a = (await engine.reserve("c1", req("u1", 2, **sig))).reservation.reservation_id
    b = (await engine.reserve("c1", req("u2", 2, **sig))).reservation.reservation_id
    assert await buyers(aredis) == {"i|p": 4, "d|d": 4}
    await engine.cancel("c1", a, storefront="shop")
    await engine.cancel("c1", a, storefront="shop")  # a repeated cancel returns nothing more
    assert await buyers(aredis) == {"i|p": 2, "d|d": 2}
    await make_overdue(aredis, "c1", b)
    assert await engine.expire_due("c1") == (1, False)
    assert await engine.expire_due("c1") == (0, False)
    with pytest.raises(InvalidState):
        await engine.cancel("c1", b, storefront="shop")
    assert await buyers(aredis) == {"i|p": 0, "d|d": 0}
    c = (await engine.reserve("c1", req("u3", 4, **sig))).reservation.reservation_id  # the cap is whole again
    await engine.confirm("c1", c, "pay-1", storefront="shop")  # a confirmed unit stays counted
    await make_overdue(aredis, "c1", c)
    assert await engine.expire_due("c1") == (0, False)
    assert await buyers(aredis) == {"i|p": 4, "d|d": 4}
    with pytest.raises(BuyerCapExceeded):
        await engine.reserve("c1", req("u4", 1, **sig))


async def test_a_hold_expired_by_cancel_returns_once(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, identity_cap_units=4)
    rid = (await engine.reserve("c1", req("u1", 3, identity="p"))).reservation.reservation_id
    await make_overdue(aredis, "c1", rid)
    for _ in range(2):
        with pytest.raises(InvalidState):
            await engine.cancel("c1", rid, storefront="shop")
    assert await engine.expire_due("c1") == (0, False)
    assert await buyers(aredis) == {"i|p": 0}


async def test_the_record_and_the_event_carry_the_counted_signals(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, identity_cap_units=4, network_cap_units=9)
    out = await engine.reserve("c1", req("u1", 1, identity="p", device="not capped", ip="198.51.100.20"))
    rid = out.reservation.reservation_id
    packed = await aredis.hget(keys.CampaignKeys("c1").reservations, rid)
    assert msgpack.unpackb(packed, raw=False)[11:] == ["p", "", "198.51.100.0/24"]
    [event] = await stream(aredis, "c1")
    assert (event["bi"], event["bd"], event["bn"]) == ("p", "", "198.51.100.0/24")
    assert (await engine.reservation("c1", rid, storefront="shop")).units == 1  # Python reads the longer record


async def test_a_replay_must_carry_the_same_signals(engine: Engine, aredis: aioredis.Redis) -> None:
    await load(engine, identity_cap_units=4)
    first = await engine.reserve("c1", req("u1", 2, key="k1", identity="p"))
    again = await engine.reserve("c1", req("u1", 2, key="k1", identity="p"))
    assert again.replayed and again.reservation == first.reservation
    with pytest.raises(IdempotencyKeyReused):
        await engine.reserve("c1", req("u1", 2, key="k1", identity="q"))
    assert await buyers(aredis) == {"i|p": 2}


async def test_an_old_record_without_signals_still_cancels(engine: Engine, aredis: aioredis.Redis) -> None:
    """A record of 11 values (as written before buyer caps) decodes and returns no buyer units."""
    await load(engine, identity_cap_units=4)
    rid = (await engine.reserve("c1", req("u1", 2, identity="p"))).reservation.reservation_id
    k = keys.CampaignKeys("c1")
    old = msgpack.unpackb(await aredis.hget(k.reservations, rid), raw=False)[:11]
    await aredis.hset(k.reservations, rid, msgpack.packb(old))
    assert (await engine.reservation("c1", rid, storefront="shop")).state == "held"
    assert (await engine.cancel("c1", rid, storefront="shop")).reservation.state == "cancelled"
    assert await buyers(aredis) == {"i|p": 2}  # what the old record did not name stays as it was
    assert (await engine.counters("c1")).held == 0


async def test_scalpers_race_against_an_identity_cap(engine: Engine, make_engine: Any, aredis: aioredis.Redis) -> None:
    """Thousands of reserves from many accounts over few identities, through two engines at once:
    each identity ends at its cap exactly, and cancelling everything brings every counter to 0."""
    await load(engine, identity_cap_units=7, device_cap_units=1000)
    other: Engine = make_engine()
    rng = random.Random(13)
    requests = [req(f"acct-{rng.randrange(400)}", 1, identity=f"person-{rng.randrange(10)}",
                    device=f"dev-{rng.randrange(3)}") for _ in range(2000)]

    async def one(e: Engine, r: ReserveRequest) -> tuple[str, str] | None:
        try:
            out = await e.reserve("c1", r)
        except BuyerCapExceeded:
            return None
        assert r.buyer is not None and r.buyer.identity is not None
        return out.reservation.reservation_id, r.buyer.identity

    try:
        results = await asyncio.gather(*(one(engine if i % 2 else other, r) for i, r in enumerate(requests)))
    finally:
        await other.close()
    granted = [g for g in results if g is not None]
    per_identity = Counter(identity for _, identity in granted)
    assert per_identity == {f"person-{i}": 7 for i in range(10)}
    counted = await buyers(aredis)
    assert {f: v for f, v in counted.items() if f.startswith("i|")} == {f"i|person-{i}": 7 for i in range(10)}
    assert sum(v for f, v in counted.items() if f.startswith("d|")) == 70
    await asyncio.gather(*(engine.cancel("c1", rid, storefront="shop") for rid, _ in granted))
    assert set((await buyers(aredis)).values()) == {0}
    assert (await engine.counters("c1")).held == 0
