"""Recovery after Redis lost data: the campaign rebuilt from the ledger (plus what the stream
kept), refused while it happens, reconciled, and never oversold afterwards."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.errors import FlashsaleError, IdempotencyKeyReused, InvalidState, StorageUnavailable
from engine.events import Event
from engine.ledger import sink_for
from engine.ledger.history import replay
from engine.ledger.reconcile import reconcile
from engine.ledger.recover import plan_page, recover, refuse
from engine.ledger.sink import entry_key
from tests.ledger.sale import Sale, campaign, drain, flashsale, ledger, sell
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
            await engine.confirm(CID, r.reservation_id, f"late-pay-{i}", storefront="shop-a")
            confirmed += r.units
        except FlashsaleError:
            pass

    for s in range(start, start + attempts, 250):
        await asyncio.gather(*(one(i) for i in range(s, s + 250)))
    return confirmed


async def requests_of(engine: Engine, sale: Sale) -> dict[str, ReserveRequest]:
    """The reserve request (``sell``'s: key ``k<i>`` of user ``u<i>``, storefront shop-a) that made
    each reservation of the sale, read from Redis before it loses them."""
    made: dict[str, ReserveRequest] = {}
    for rid in [*sale.confirmed, *sale.held, *sale.cancelled]:
        r = await engine.reservation(CID, rid, storefront="shop-a")
        made[rid] = ReserveRequest(r.user_id, r.product_id, r.units, f"k{r.user_id[1:]}", "shop-a")
    return made


async def replay_all(engine: Engine, made: dict[str, ReserveRequest]) -> dict[str, tuple[str, str, bool]]:
    """Every request again, as a storefront retrying it: rid -> (rid answered, its state, replayed)."""
    rids = list(made)
    outs = await asyncio.gather(*(engine.reserve(CID, made[rid]) for rid in rids))
    return {rid: (o.reservation.reservation_id, o.reservation.state, o.replayed) for rid, o in zip(rids, outs,
                                                                                                   strict=True)}


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
    assert (await engine.holdings(CID, kept_user, storefront="shop-a")).confirmed_units == sale.confirmed[kept_rid][2]
    replay = await engine.confirm(CID, kept_rid, f"pay-{kept_user[1:]}", storefront="shop-a")  # the storefront retries
    assert replay.replayed and replay.reservation.state == "confirmed"
    dropped = next(iter(sale.held))
    with pytest.raises(InvalidState):
        await engine.confirm(CID, dropped, "too-late", storefront="shop-a")
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
    made = await requests_of(engine, second)  # reserved after the drain: known from the stream alone
    made |= dict(list((await requests_of(engine, first)).items())[:50])
    k = keys.CampaignKeys(CID)
    await aredis.delete(k.counters, k.users, k.reservations, k.holds, k.idempotency)
    sink = sink_for(db_url)
    await sink.open()
    report = await reconcile(aredis, sink, CID)
    [idem] = [d for d in report.differences if d.what.startswith("idempotency keys")]
    assert idem.redis.startswith("500 missing and 0 naming another reservation") and idem.ledger == "500 known"
    result = await recover(engine, sink, CID)
    assert result.reconciliation.clean and not result.reloaded_definition
    assert result.idempotency_keys == 500
    sold = (await engine.counters(CID)).sold
    answers = await replay_all(engine, made)
    assert {rid: a[0] for rid, a in answers.items()} == {rid: rid for rid in made}
    assert all(replayed for _, _, replayed in answers.values())
    assert {a[1] for rid, a in answers.items() if rid in second.held} == {"expired"}  # the dropped holds
    assert (await engine.counters(CID)).sold == sold
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


async def test_idempotency_keys_survive_a_flush_and_recover(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                            db_url: str) -> None:
    """docs/API.md invariant 5 across a Redis data loss: after recover, a storefront retrying with the
    same Idempotency-Key and body gets the reservation it made, as it is now (confirmed, cancelled,
    or expired for a dropped hold), never a second one; another body is IDEMPOTENCY_KEY_REUSED."""
    await engine.load_campaign(campaign(CID, total=TOTAL, user_cap=6))
    sale = await sell(engine, CID, 300, confirm_every=2, cancel_every=5)
    made = await requests_of(engine, sale)
    assert len(made) == 300 and sale.held and sale.cancelled
    await drain(redis_url, db_url)
    await aredis.flushall()  # mid-sale: every hold, record and idempotency key gone with the rest

    sink = sink_for(db_url)
    await sink.open()
    result = await recover(engine, sink, CID)
    assert result.reconciliation.clean, [str(d) for d in result.reconciliation.differences]
    assert result.idempotency_keys == 300
    k = keys.CampaignKeys(CID)
    before = await engine.counters(CID)
    records, entries = await aredis.hlen(k.reservations), await aredis.xlen(k.events)
    assert records == 300

    answers = await replay_all(engine, made)
    want = {rid: "confirmed" for rid in sale.confirmed} | {rid: "expired" for rid in sale.held} | \
        {rid: "cancelled" for rid in sale.cancelled}
    assert answers == {rid: (rid, state, True) for rid, state in want.items()}
    for rid in list(made)[:20]:  # the same key with another body: refused, whatever the reservation's state
        req = made[rid]
        for other in (ReserveRequest(req.user_id, req.product_id, req.units % 3 + 1, req.idempotency_key, "shop-a"),
                      ReserveRequest("u-other", req.product_id, req.units, req.idempotency_key, "shop-a")):
            with pytest.raises(IdempotencyKeyReused) as info:
                await engine.reserve(CID, other)
            assert info.value.code == "IDEMPOTENCY_KEY_REUSED"

    after = await engine.counters(CID)
    assert (after.sold, after.held, after.orders, after.buyers) == (before.sold, 0, before.orders, before.buyers)
    assert after.product_sold == before.product_sold and after.product_held == before.product_held
    assert (await aredis.hlen(k.reservations), await aredis.xlen(k.events)) == (records, entries)  # nothing new
    fresh = await engine.reserve(CID, ReserveRequest("u-new", "p0", 1, "k1", "shop-b"))  # another storefront's key
    assert not fresh.replayed and fresh.reservation.reservation_id not in made
    assert (await reconcile(aredis, sink, CID)).clean  # the idempotency hash agrees with the history too
    await sink.close()


def _event(eid: str, kind: str, rid: str, key: str | None = None) -> Event:
    return Event(CID, eid, kind, rid, "p0", "u1", 1, 10000, 1000, storefront="shop-a" if kind == "reserved" else None,
                 expires_at_ms=901000 if kind == "reserved" else None, idempotency_key=key)


def test_plan_takes_keys_from_the_history_and_from_surviving_records() -> None:
    """Keys come from ``reserved`` events and from records; a version 1 ledger's events carry
    none, so a reservation known only from those gets no idempotency field back."""
    history = (_event("1-0", "reserved", "r-new", "k-new"), _event("2-0", "reserved", "r-v1"),
               _event("3-0", "reserved", "r-rec"), _event("4-0", "confirmed", "r-rec"),
               _event("5-0", "reserved", "r-kept", "k-kept"))
    record = msgpack.packb(["confirmed", "p0", "u1", 1, 10000, 901000, 1000, "shop-a", "k-rec", "pay", 1001])
    p = plan_page(list(replay(history).values()), {"r-rec": record}, {"shop-a|k-kept"})
    assert p.idempotency == {"shop-a|k-new": "r-new", "shop-a|k-rec": "r-rec"}  # k-kept: Redis has it already
    assert set(p.records) == {"r-new", "r-v1", "r-kept"}  # r-rec survived as it is
    assert msgpack.unpackb(p.records["r-new"])[0::8] == ["expired", "k-new"]  # a dropped hold keeps its key
    assert msgpack.unpackb(p.records["r-v1"])[8] == ""  # unknown: no field, a retry would reserve anew
