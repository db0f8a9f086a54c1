"""The Engine's Python API: typed outcomes, exceptions with their details, reads, the kill switch,
the rate limiter, input checks, and batching that changes cost, never outcomes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop

from engine import keys
from engine.campaign import parse
from engine.core import Engine, ReserveRequest
from engine.core.calls import BatchedScript
from engine.core.engine import _reserve_keys
from engine.errors import (
    Closed,
    DamagedRecord,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidRequest,
    InvalidState,
    NotFound,
    NotOpen,
    Paused,
    RateLimited,
    SoldOut,
    StorageUnavailable,
    UserCapExceeded,
)
from engine.settings import Settings
from tests.core.conftest import campaign, definition, make_overdue, redis_ms, stream
from tests.support.servers import free_port

K = keys.CampaignKeys("c1")


def req(user: str = "u1", product: str = "p1", units: int = 1, key: str | None = None,
        storefront: str = "shop-a") -> ReserveRequest:
    return ReserveRequest(user, product, units, key or f"{user}-{product}-{units}", storefront)


async def test_reserve_and_replay(engine: Engine) -> None:
    await engine.load_campaign(campaign())
    first = await engine.reserve("c1", req(units=2, key="k1"))
    r = first.reservation
    assert not first.replayed
    assert (r.campaign_id, r.product_id, r.user_id, r.units, r.amount, r.state) == ("c1", "p1", "u1", 2, 20000, "held")
    assert r.expires_at_ms - r.created_at_ms == 900_000 and len(r.reservation_id) == 24
    again = await engine.reserve("c1", req(units=2, key="k1"))
    assert again.replayed and again.reservation == r
    other_shop = await engine.reserve("c1", req(units=2, key="k1", storefront="shop-b"))
    assert other_shop.reservation.reservation_id != r.reservation_id  # keys are per storefront
    with pytest.raises(IdempotencyKeyReused):
        await engine.reserve("c1", req(units=1, key="k1"))
    with pytest.raises(IdempotencyKeyReused):
        await engine.reserve("c1", req(user="u2", units=2, key="k1"))
    with pytest.raises(IdempotencyKeyReused):
        await engine.reserve("c1", req(product="p2", units=2, key="k1"))
    assert r.to_dict()["amount"] == 20000 and r.to_dict()["expires_at"].endswith("Z")


async def test_rejections_carry_details(engine: Engine) -> None:
    await engine.load_campaign(campaign(products=[{"id": "p1", "title": "t", "total_units": 5, "user_cap_units": 4}]))
    with pytest.raises(UserCapExceeded) as cap:
        await engine.reserve("c1", req(units=5))
    assert cap.value.allowed == 4 and cap.value.details == {"allowed": 4}
    await engine.reserve("c1", req(user="u1", units=3))
    with pytest.raises(InsufficientStock) as stock:
        await engine.reserve("c1", req(user="u2", units=3))
    assert stock.value.remaining == 2
    await engine.reserve("c1", req(user="u2", units=2))
    with pytest.raises(SoldOut):
        await engine.reserve("c1", req(user="u3", units=1))
    with pytest.raises(NotFound) as nf:
        await engine.reserve("c1", req(product="nope"))
    assert nf.value.what == "product"
    with pytest.raises(NotFound) as nf:
        await engine.reserve("nope", req())
    assert nf.value.what == "campaign"
    counters = await engine.counters("c1")
    assert counters.rejections == {"USER_CAP_EXCEEDED": 1, "INSUFFICIENT_STOCK": 1, "SOLD_OUT": 1}


@pytest.mark.parametrize("bad, field", [
    (req(user=""), "user_id"), (req(user="a|b"), "user_id"), (req(user="x" * 256), "user_id"),
    (req(user="new\nline"), "user_id"), (req(product=""), "product_id"), (req(units=0), "units"),
    (req(units=-1), "units"), (ReserveRequest("u", "p1", True, "k", "s"), "units"),  # type: ignore[arg-type]
    (ReserveRequest("u", "p1", 1.0, "k", "s"), "units"),  # type: ignore[arg-type]
    (req(units=10**12 + 1), "units"), (ReserveRequest("u", "p1", 1, "", "s"), "idempotency_key"),
    (req(key="ключ"), "idempotency_key"),
    (req(key="k" * 256), "idempotency_key"), (req(key="tab\there"), "idempotency_key"),
    (req(storefront=""), "storefront"), (req(storefront="a|b"), "storefront"),
])
async def test_invalid_requests_never_reach_redis(engine: Engine, aredis: aioredis.Redis,
                                                  bad: ReserveRequest, field: str) -> None:
    await engine.load_campaign(campaign())
    good = [engine.reserve("c1", req(user=f"u{i}")) for i in range(5)]
    results = await asyncio.gather(engine.reserve("c1", bad), *good, return_exceptions=True)
    assert isinstance(results[0], InvalidRequest) and results[0].field == field
    assert all(not isinstance(r, BaseException) for r in results[1:])  # its batch is unharmed
    assert await aredis.hlen(K.reservations) == 5
    with pytest.raises(InvalidRequest):
        await engine.reserve_unbatched("c1", bad)


async def test_confirm_cancel_and_their_repeats(engine: Engine) -> None:
    await engine.load_campaign(campaign())
    rid = (await engine.reserve("c1", req(units=2))).reservation.reservation_id
    done = await engine.confirm("c1", rid, "pay-1", storefront="shop-a")
    assert not done.replayed and done.reservation.state == "confirmed"
    assert done.reservation.payment_ref == "pay-1" and done.reservation.confirmed_at_ms
    again = await engine.confirm("c1", rid, "pay-1", storefront="shop-a")
    assert again.replayed and again.reservation == done.reservation
    with pytest.raises(InvalidState) as st:
        await engine.confirm("c1", rid, "pay-2", storefront="shop-a")
    assert st.value.state == "confirmed"
    with pytest.raises(InvalidState):
        await engine.cancel("c1", rid, storefront="shop-a")
    with pytest.raises(InvalidRequest):
        await engine.confirm("c1", rid, "", storefront="shop-a")
    with pytest.raises(InvalidRequest):
        await engine.confirm("c1", rid, "p" * 129, storefront="shop-a")
    with pytest.raises(NotFound):
        await engine.confirm("c1", "nope", "pay", storefront="shop-a")
    with pytest.raises(NotFound):
        await engine.cancel("c1", "nope", storefront="shop-a")

    rid2 = (await engine.reserve("c1", req(product="p2"))).reservation.reservation_id
    gone = await engine.cancel("c1", rid2, storefront="shop-a")
    assert gone.reservation.state == "cancelled" and not gone.replayed
    assert (await engine.cancel("c1", rid2, storefront="shop-a")).replayed
    with pytest.raises(InvalidState) as st:
        await engine.confirm("c1", rid2, "pay", storefront="shop-a")
    assert st.value.state == "cancelled"
    assert (await engine.reservation("c1", rid2, storefront="shop-a")).state == "cancelled"


async def test_concurrent_confirms_share_calls_and_each_gets_its_own_answer(engine: Engine) -> None:
    await engine.load_campaign(campaign(user_cap_units=None, products=[
        {"id": "p1", "title": "t", "total_units": 1000}], total_units=None))
    rids = [(await engine.reserve("c1", req(user=f"u{i}"))).reservation.reservation_id for i in range(200)]
    calls: list[Any] = [engine.confirm("c1", rid, f"pay-{i}", storefront="shop-a") for i, rid in enumerate(rids)]
    calls += [engine.confirm("c1", rids[0], "pay-0", storefront="shop-a"),
              engine.confirm("c1", rids[1], "other", storefront="shop-a"),
              engine.cancel("c1", rids[2], storefront="shop-a"), engine.confirm("c1", "nope", "x", storefront="shop-a")]
    out = await asyncio.gather(*calls, return_exceptions=True)
    assert all(not isinstance(o, BaseException) and o.reservation.payment_ref == f"pay-{i}"
               for i, o in enumerate(out[:200]))
    assert not isinstance(out[200], BaseException) and out[200].replayed
    assert isinstance(out[201], InvalidState) and isinstance(out[202], InvalidState)
    assert isinstance(out[203], NotFound)
    c = await engine.counters("c1")
    assert (c.sold, c.held, c.orders, c.buyers) == (200, 0, 200, 200)


async def test_expired_hold_is_refused_and_read_as_expired(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    r = (await engine.reserve("c1", req(units=2, key="k"))).reservation
    await make_overdue(aredis, "c1", r.reservation_id)
    assert (await engine.reservation("c1", r.reservation_id, storefront="shop-a")).state == "expired"
    replay = await engine.reserve("c1", req(units=2, key="k"))
    assert replay.replayed and replay.reservation.state == "expired"
    assert (await engine.counters("c1")).held == 2  # not yet released: nothing but a read happened
    with pytest.raises(InvalidState) as st:
        await engine.confirm("c1", r.reservation_id, "pay", storefront="shop-a")
    assert st.value.state == "expired"
    assert (await engine.counters("c1")).held == 0
    assert await engine.expire_due("c1") == (0, False)


async def test_expire_due(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    rids = [(await engine.reserve("c1", req(user=f"u{i}"))).reservation.reservation_id for i in range(5)]
    for rid in rids[:3]:
        await make_overdue(aredis, "c1", rid)
    assert await engine.expire_due("c1", limit=2) == (2, True)
    assert await engine.expire_due("c1", limit=2) == (1, False)
    states = [(await engine.reservation("c1", rid, storefront="shop-a")).state for rid in rids]
    assert states == ["expired"] * 3 + ["held"] * 2
    h = await engine.holdings("c1", "u0", storefront="shop-a")
    assert (h.held_units, h.confirmed_units) == (0, 0)


async def test_views_and_the_kill_switch(engine: Engine, aredis: aioredis.Redis) -> None:
    now = await redis_ms(aredis)
    await engine.load_campaign(campaign("soon", opens_ms=now + 3_600_000))
    await engine.load_campaign(campaign("past", opens_ms=now - 7_200_000, closes_ms=now - 3_600_000))
    await engine.load_campaign(campaign())
    assert (await engine.view("soon")).state == "scheduled"
    assert (await engine.view("past")).state == "closed"
    assert (await engine.view("c1")).state == "open"
    assert (await engine.view("c1")).to_dict()["products"][0]["id"] == "p1"
    assert await engine.campaign_ids() == ["c1", "past", "soon"]
    with pytest.raises(NotOpen):
        await engine.reserve("soon", req())
    with pytest.raises(Closed):
        await engine.reserve("past", req())

    assert await engine.pause("c1") == "paused"
    assert (await engine.view("c1")).state == "paused"
    with pytest.raises(Paused):
        await engine.reserve("c1", req())
    assert await engine.resume("c1") == "active"
    await engine.reserve("c1", req())
    assert await engine.set_recovering("c1", True) == "recovering"
    with pytest.raises(StorageUnavailable, match="recover"):
        await engine.reserve("c1", req(user="u2"))
    assert await engine.set_recovering("c1", False) == "active"
    assert await engine.close_campaign("c1") == "closed"
    with pytest.raises(InvalidState):
        await engine.resume("c1")
    with pytest.raises(Closed):
        await engine.reserve("c1", req(user="u3"))
    with pytest.raises(InvalidState):
        await engine.load_campaign(campaign())
    for call in (engine.view, engine.counters, engine.pause):
        with pytest.raises(NotFound):
            await call("nope")
    with pytest.raises(NotFound):
        await engine.holdings("nope", "u1", storefront="shop-a")
    with pytest.raises(NotFound):
        await engine.reservation("c1", "nope", storefront="shop-a")


async def test_holdings_and_counters(engine: Engine) -> None:
    await engine.load_campaign(campaign())
    a = (await engine.reserve("c1", req(units=3))).reservation.reservation_id
    await engine.reserve("c1", req(product="p2", units=2))
    b = (await engine.reserve("c1", req(user="u2", product="p2", units=4))).reservation.reservation_id
    await engine.confirm("c1", a, "pay-a", storefront="shop-a")
    await engine.cancel("c1", b, storefront="shop-a")
    h = await engine.holdings("c1", "u1", storefront="shop-a")
    assert (h.held_units, h.confirmed_units) == (2, 3)
    assert [(p.product_id, p.held_units, p.confirmed_units) for p in h.products] == [("p1", 0, 3), ("p2", 2, 0)]
    assert h.to_dict()["products"][1] == {"product_id": "p2", "held_units": 2, "confirmed_units": 0}
    c = await engine.counters("c1")
    assert (c.sold, c.held, c.orders, c.buyers) == (3, 2, 1, 1)
    assert c.product_sold == {"p1": 3, "p2": 0} and c.product_held == {"p1": 0, "p2": 2}
    assert c.view.state == "open" and c.persisted_orders == 0 and c.rejections == {}


async def test_rate_limiter(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(rate_limit={"per_second": 1, "burst": 3}))
    outcomes = [await engine.reserve("c1", req(product="p2", key=f"k{i}")) for i in range(3)]
    with pytest.raises(RateLimited) as rl:
        await engine.reserve("c1", req(product="p2", key="k3"))
    assert 0 < rl.value.retry_after_ms <= 1000 and rl.value.details == {"retry_after_ms": rl.value.retry_after_ms}
    for _ in range(5):  # replays are answered and never count against the limit
        assert (await engine.reserve("c1", req(product="p2", key="k0"))).reservation == outcomes[0].reservation
    await engine.reserve("c1", req(user="u2", product="p2", key="u2-k0"))  # another user is not limited
    await asyncio.sleep(rl.value.retry_after_ms / 1000 + 0.05)
    await engine.reserve("c1", req(product="p2", key="k4"))  # after the wait it is let through
    assert (await engine.counters("c1")).rejections == {"RATE_LIMITED": 1}


async def test_default_rate_limit_is_per_user_five_per_second_burst_ten(engine: Engine) -> None:
    d = definition(user_cap_units=None, products=[{"id": "p1", "title": "t", "total_units": 100}], total_units=None)
    del d["rate_limit"]
    await engine.load_campaign(parse(d))
    out = await asyncio.gather(*(engine.reserve("c1", req(key=f"k{i}")) for i in range(12)),
                               return_exceptions=True)
    assert sum(isinstance(o, RateLimited) for o in out) in (1, 2)  # 10 at once; the 11th may fall 200 ms later


async def test_concurrent_reserves_share_script_calls(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(user_cap_units=None, products=[
        {"id": "p1", "title": "t", "total_units": 10_000}], total_units=None))
    await aredis.config_resetstat()
    out = await asyncio.gather(*(engine.reserve("c1", req(user=f"u{i}")) for i in range(1000)))
    assert len({o.reservation.reservation_id for o in out}) == 1000
    calls = int((await aredis.info("commandstats"))["cmdstat_evalsha"]["calls"])
    assert calls < 100  # batched: far fewer script calls than requests
    assert len(await stream(aredis, "c1")) == 1000


async def test_engine_on_another_database(redis_url: str, aredis: aioredis.Redis) -> None:
    e = Engine.from_settings(Settings(redis_url=redis_url.rsplit("/", 1)[0] + "/3"))
    try:
        await e.load_campaign(campaign())
        await e.reserve("c1", req())
        assert await aredis.dbsize() == 0
        other = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
        assert await other.hlen(K.reservations) == 1
        await other.aclose()
    finally:
        await e.close()


async def test_batches_through_redis_py_when_there_is_no_wire(engine: Engine, aredis: aioredis.Redis) -> None:
    """The fallback for clients the lean wire does not serve (TLS, Cluster): same script, same batches."""
    await engine.load_campaign(campaign())
    batched = BatchedScript(engine.scripts.reserve, None, _reserve_keys, stride_in=7, stride_out=4,
                            max_batch=64, max_inflight=2)
    futs = [batched.submit("c1", (f"r{i}", "sf", f"k{i}", f"u{i}", "p2", 1, "")) for i in range(10)]
    out = await asyncio.gather(*futs)
    assert [o[1] for o in out] == [f"r{i}".encode() for i in range(10)]
    await aredis.script_flush()
    assert (await batched.submit("c1", ("r99", "sf", "k99", "u99", "p2", 1, "")))[0] == 0  # NOSCRIPT reloads


async def test_ready_loads_scripts(engine: Engine, aredis: aioredis.Redis) -> None:
    await aredis.script_flush()
    assert not await engine.scripts.loaded(aredis)
    assert await engine.ready()
    assert await engine.scripts.loaded(aredis)


def test_reserve_under_uvloop(redis_url: str) -> None:
    async def go() -> list[str]:
        e = Engine.from_settings(Settings(redis_url=redis_url))
        try:
            await e.load_campaign(campaign())
            out = await asyncio.gather(*(e.reserve("c1", req(user=f"u{i}")) for i in range(50)))
            await e.confirm("c1", out[0].reservation.reservation_id, "pay", storefront="shop-a")
            return [o.reservation.state for o in out]
        finally:
            await e.close()

    assert uvloop.run(go()) == ["held"] * 50


async def test_unreachable_redis_is_storage_unavailable() -> None:
    e = Engine.from_settings(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5))
    try:
        for call in (e.reserve("c1", req()), e.reserve_unbatched("c1", req()),
                     e.confirm("c1", "r", "p", storefront="shop-a"), e.cancel("c1", "r", storefront="shop-a"),
                     e.view("c1"), e.expire_due("c1")):
            with pytest.raises(StorageUnavailable, match="retry"):
                await call
    finally:
        await e.close()


async def test_holdings_follow_a_replaced_definition(engine: Engine, aredis: aioredis.Redis) -> None:
    now = await redis_ms(aredis)
    await engine.load_campaign(campaign(opens_ms=now + 3_600_000))
    assert [p.product_id for p in (await engine.holdings("c1", "u1", storefront="shop-a")).products] == ["p1", "p2"]
    await engine.load_campaign(campaign(opens_ms=now + 3_600_000, products=[
        {"id": "p3", "title": "t", "total_units": 5}, {"id": "p1", "title": "t", "total_units": 5}]))
    await aredis.hset(K.users, mapping={"t|u1|p3|shop-a": 3, "c|u1|p3|shop-a": 1, "t|u1|p1|shop-a": 1})
    h = await engine.holdings("c1", "u1", storefront="shop-a")  # the cached definition is stale: read afresh
    assert [(p.product_id, p.held_units, p.confirmed_units) for p in h.products] == [("p3", 2, 1), ("p1", 1, 0)]
    assert (h.held_units, h.confirmed_units) == (3, 1)
    await aredis.delete(K.meta)
    with pytest.raises(NotFound):
        await engine.holdings("c1", "u1", storefront="shop-a")


async def test_holds_made_before_the_kill_switch_can_still_be_paid_or_cancelled(engine: Engine) -> None:
    await engine.load_campaign(campaign())
    a = (await engine.reserve("c1", req(units=1))).reservation.reservation_id
    b = (await engine.reserve("c1", req(product="p2", units=1))).reservation.reservation_id
    await engine.pause("c1")
    assert (await engine.confirm("c1", a, "pay", storefront="shop-a")).reservation.state == "confirmed"
    await engine.close_campaign("c1")
    assert (await engine.cancel("c1", b, storefront="shop-a")).reservation.state == "cancelled"
    c = await engine.counters("c1")
    assert (c.sold, c.held, c.view.state) == (1, 0, "closed")


async def test_another_storefront_is_answered_as_for_an_unknown_id(engine: Engine) -> None:
    await engine.load_campaign(campaign())
    rid = (await engine.reserve("c1", req(units=2))).reservation.reservation_id
    for call in (engine.reservation("c1", rid, storefront="shop-b"),
                 engine.confirm("c1", rid, "pay", storefront="shop-b"), engine.cancel("c1", rid, storefront="shop-b")):
        with pytest.raises(NotFound) as theirs:
            await call
        assert theirs.value.details == {"what": "reservation", "id": rid}
        assert str(theirs.value) == f"reservation {rid!r} not found"
    assert (await engine.holdings("c1", "u1", storefront="shop-b")).held_units == 0
    assert (await engine.confirm("c1", rid, "pay", storefront="shop-a")).reservation.state == "confirmed"
    assert (await engine.holdings("c1", "u1", storefront="shop-a")).confirmed_units == 2
    with pytest.raises(InvalidRequest):
        await engine.cancel("c1", rid, storefront="")


async def test_a_damaged_record_is_logged_once_and_spares_its_batch(engine: Engine, aredis: aioredis.Redis,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    await engine.load_campaign(campaign())
    rids = [(await engine.reserve("c1", req(user=f"u{i}"))).reservation.reservation_id for i in range(4)]
    await aredis.hset(K.reservations, rids[0], b"\xc1 not msgpack")
    with caplog.at_level(logging.ERROR, logger="flashsale.engine"):
        out = await asyncio.gather(*(engine.confirm("c1", rid, "pay", storefront="shop-a") for rid in rids),
                                   engine.cancel("c1", rids[0], storefront="shop-a"), return_exceptions=True)
        with pytest.raises(DamagedRecord):
            await engine.reservation("c1", rids[0], storefront="shop-a")
        with pytest.raises(DamagedRecord):
            await engine.confirm("c1", rids[0], "pay", storefront="shop-a")
    assert isinstance(out[0], DamagedRecord) and isinstance(out[4], DamagedRecord)
    assert [o.reservation.state for o in out[1:4] if not isinstance(o, BaseException)] == ["confirmed"] * 3
    lines = [r for r in caplog.records if r.name == "flashsale.engine"]
    assert len(lines) == 1 and lines[0].reservation_id == rids[0] and lines[0].campaign_id == "c1"
    c = await engine.counters("c1")
    assert (c.damaged, c.sold, c.held) == (1, 3, 1)  # its unit stays counted: nobody can tell how many
