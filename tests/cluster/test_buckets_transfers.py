"""Bucketed stock on the test cluster (3 masters, 3 replicas): where the buckets land, who goes to
which bucket, and stock moves that are exactly once, across a crash between their two steps
(``engine.core.buckets``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from engine import keys
from engine.campaign import ID_PATTERN
from engine.core.buckets import BucketStock, bucket_of, fields_of, place
from engine.core.cluster import slot_of_key
from engine.core.redis_client import Client, connect_any
from tests.core.conftest import campaign

pytestmark = [pytest.mark.timeout(120), pytest.mark.needs_services]
FIELDS = ("all", "p|p1", "p|p2")
HOUR_MS = 3_600_000


@pytest.fixture
async def client(redis_cluster_url: str) -> AsyncIterator[Client]:
    c = connect_any(redis_cluster_url, 10.0)
    yield c
    await c.aclose()


@pytest.fixture
async def stock(client: Client) -> BucketStock:
    s = BucketStock(client, campaign("hot", stock_buckets=3))
    assert await s.seed() and not await s.seed()  # seeding again moves nothing
    return s


async def conserved(s: BucketStock, in_flight: int = 0) -> None:
    """Σ bucket stock + reserve + in flight = tranche for every field (nothing held or sold here)."""
    t = await s.tally()
    for f in FIELDS:
        assert t[f].total == s.tranche(f), (f, t[f])
        assert min(t[f].reserve, *t[f].buckets) >= 0, (f, t[f])  # no stock hash ever gives more than it has
    assert t["all"].in_flight == in_flight


def test_placement_spreads_the_buckets_over_the_slot_space() -> None:
    for n in (2, 3, 8, 64):
        slots = [slot_of_key(bk.stock) for bk in place("yulebao-2014-p1", n)]
        assert [s * n // 16384 for s in slots] == list(range(n))  # bucket b in the b-th n-th
    assert keys.CampaignKeys("hot").tag not in {bk.tag for bk in place("hot", 3)}
    assert not ID_PATTERN.fullmatch("hot#0.1")  # no campaign's own tag is ever a bucket's


async def test_the_buckets_of_a_campaign_land_on_different_masters(client: Client) -> None:
    assert isinstance(client, RedisCluster)
    await client.initialize()  # the slot map
    masters = {client.get_node_from_key(bk.stock).name for bk in place("hot", 3)}
    assert len(masters) == 3
    # each bucket's keys share its slot, so every transfer step is one slot
    for bk in place("hot", 3):
        assert len({slot_of_key(k) for k in bk.stock_keys()}) == 1


def test_affinity_by_user_or_by_identity_under_an_identity_cap() -> None:
    plain = campaign("hot", stock_buckets=8)
    capped = campaign("hot", stock_buckets=8, identity_cap_units=5)
    users = [f"u{i}" for i in range(400)]
    spread = [bucket_of(plain, u) for u in users]
    assert set(spread) == set(range(8)) and spread == [bucket_of(plain, u) for u in users]  # stable
    # under an identity cap, two users of one identity share a bucket
    assert len({bucket_of(capped, u, "person-A") for u in users}) == 1
    assert bucket_of(campaign("one"), "u1") == 0


async def test_seed_fills_every_bucket_and_conserves_the_tranche(stock: BucketStock) -> None:
    t = await stock.tally()
    assert t["p|p1"].buckets == (10, 10, 10) and t["p|p1"].reserve == 30
    assert t["p|p2"].buckets == (13, 13, 13) and t["all"].reserve == 100 - 3 * 23
    await conserved(stock)


async def test_a_transfer_is_idempotent(stock: BucketStock, client: Client) -> None:
    t = await stock.debit(stock.reserve, stock.buckets[1], 5, 1, fields_of("p1"))
    assert t is not None and t.units == 5
    await conserved(stock, in_flight=5)
    assert await stock.finish(t) and await stock.finish(t)  # the repeat credits nothing
    credit = await stock.credit(t)
    assert credit == 1  # credited before
    assert (await stock.tally())["p|p1"].buckets == (10, 15, 10)
    await conserved(stock)
    assert await client.hlen(stock.reserve.transfers_out) == 0  # settled  # type: ignore[misc]


async def test_a_debit_takes_what_there_is_or_nothing(stock: BucketStock) -> None:
    assert await stock.debit(stock.buckets[0], stock.reserve, 50, 11, fields_of("p1")) is None  # 10 free
    assert await stock.move(stock.buckets[0], stock.reserve, 50, 1, fields_of("p1")) == 10
    assert (await stock.tally())["p|p1"].buckets == (0, 10, 10)
    await conserved(stock)


async def test_a_crash_between_the_steps_is_finished_by_recover(stock: BucketStock) -> None:
    flying = [await stock.debit(stock.reserve, stock.buckets[0], 4, 1, fields_of("p2")),
              await stock.debit(stock.buckets[2], stock.reserve, 3, 1, fields_of("p1"))]
    assert all(flying)  # ... and the process dies here
    await conserved(stock, in_flight=7)
    assert await stock.recover() == (2, 0)
    await conserved(stock)
    t = await stock.tally()
    assert t["p|p2"].buckets == (17, 13, 13) and t["p|p1"].buckets == (10, 10, 7)
    assert await stock.recover() == (0, 0)


async def test_a_crash_after_the_credit_is_cleared_by_recover(stock: BucketStock) -> None:
    t = await stock.debit(stock.reserve, stock.buckets[0], 4, 1, fields_of("p2"))
    assert t is not None
    await stock.credit(t)
    await conserved(stock)  # credited, not cleared: no longer in flight
    assert await stock.recover() == (1, 0)
    assert (await stock.tally())["p|p2"].buckets == (17, 13, 13)
    await conserved(stock)


async def test_a_transfer_stuck_past_the_credit_horizon_is_undone(stock: BucketStock, client: Client) -> None:
    t = await stock.debit(stock.reserve, stock.buckets[0], 4, 1, fields_of("p2"))
    assert t is not None
    record = (await client.hget(stock.reserve.transfers_out, t.tid)).decode()  # type: ignore[misc]
    n, ms, rest = record.split(",", 2)
    await client.hset(stock.reserve.transfers_out, t.tid, f"{n},{int(ms) - 2 * HOUR_MS},{rest}")  # type: ignore[misc]
    assert await stock.recover() == (0, 1)
    t2 = await stock.tally()
    assert t2["p|p2"].buckets == (13, 13, 13) and t2["p|p2"].reserve == 80 - 39
    await conserved(stock)


async def test_borrow_pulls_from_the_reserve_then_from_siblings(stock: BucketStock) -> None:
    # p1: 30 in the reserve, 10 in each bucket; bucket 0 wants 45 of the 60
    assert await stock.borrow(0, "p1", 45) == 45
    t = await stock.tally()
    assert t["p|p1"].buckets[0] == 45 and t["p|p1"].reserve + sum(t["p|p1"].buckets[1:]) == 15
    await conserved(stock)
    assert await stock.borrow(1, "p1", 60) == 60  # every unit of p1, bucket 0's too
    assert (await stock.tally())["p|p1"].buckets == (0, 60, 0)
    assert await stock.borrow(2, "p1", 61) == 60  # fewer than asked: the whole campaign has no more
    await conserved(stock)


async def test_refill_tops_up_a_bucket_running_low(stock: BucketStock) -> None:
    assert stock.step("p1") == 2 and stock.low_water("p1") == 1
    assert await stock.refill(0, "p1") == 0  # 10 free: not low
    await stock.move(stock.buckets[0], stock.reserve, 10, 10, fields_of("p1"))
    assert await stock.refill(0, "p1") == 2
    await conserved(stock)


async def test_racing_moves_conserve_the_tranche(stock: BucketStock) -> None:
    """Borrows, refills and moves racing over the three masters: at rest, every unit is somewhere."""
    rng = random.Random(7)
    spots = [stock.reserve, *stock.buckets]
    calls = []
    for i in range(120):
        product = rng.choice(["p1", "p2"])
        kind = i % 3
        if kind == 0:
            calls.append(stock.borrow(rng.randrange(3), product, rng.randint(1, 30)))
        elif kind == 1:
            calls.append(stock.refill(rng.randrange(3), product))
        else:
            calls.append(stock.move(rng.choice(spots), rng.choice(spots), rng.randint(1, 9), 1, fields_of(product)))
    await asyncio.gather(*calls)
    assert await stock.recover() == (0, 0)  # every move settled itself
    await conserved(stock)
