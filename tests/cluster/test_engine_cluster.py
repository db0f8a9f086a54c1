"""The core's invariant suite again, on the test cluster (3 masters, 3 replicas): here ``redis_url``
names one node of the private cluster (flushed per test) and ``aredis`` is a cluster client, so
each test of ``tests/core`` bound below runs unchanged, its Engine going through one lean Wire per
master (``engine.core.cluster``). Then what only a cluster has: the slot arithmetic, campaigns
spread over every master, a race over many campaigns, the script cache flushed on one master."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.core.cluster import ClusterWire, slot_of_key
from engine.core.redis_client import Client, connect_any
from engine.errors import Rejected, StorageUnavailable
from tests.admission import test_queue, test_registry, test_reserve_gate
from tests.admission.conftest import admission
from tests.core import (
    test_buyer_caps,
    test_concurrency,
    test_engine,
    test_prune,
    test_sweeper,
)
from tests.core.conftest import campaign, engine, make_engine
from tests.support.cluster import RedisClusterServers

__all__ = ["admission", "engine", "make_engine"]  # fixtures, on the cluster by redis_url below
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


@pytest.fixture
async def aredis(redis_cluster_url: str) -> AsyncIterator[Client]:
    client = connect_any(redis_cluster_url, 10.0)
    yield client
    await client.aclose()


# -- the single-node suite, bound here -----------------------------------------------------------

test_reserve_and_replay = test_engine.test_reserve_and_replay
test_rejections_carry_details = test_engine.test_rejections_carry_details
test_confirm_cancel_and_their_repeats = test_engine.test_confirm_cancel_and_their_repeats
test_concurrent_confirms = test_engine.test_concurrent_confirms_share_calls_and_each_gets_its_own_answer
test_expired_hold_is_refused = test_engine.test_expired_hold_is_refused_and_read_as_expired
test_expire_due = test_engine.test_expire_due
test_views_and_the_kill_switch = test_engine.test_views_and_the_kill_switch
test_holdings_and_counters = test_engine.test_holdings_and_counters
test_rate_limiter = test_engine.test_rate_limiter
test_another_storefront = test_engine.test_another_storefront_is_answered_as_for_an_unknown_id
test_flash_crowd_never_oversells = test_concurrency.test_flash_crowd_never_oversells
test_a_thousand_replays_make_one_reservation = test_concurrency.test_a_thousand_replays_make_one_reservation
test_script_cache_flushed_mid_run = test_concurrency.test_script_cache_flushed_mid_run
test_rejections_do_not_poison_neighbours = test_concurrency.test_rejections_do_not_poison_neighbours
test_sweeper_releases_an_expired_hold = test_sweeper.test_sweeper_releases_an_expired_hold_soon_after_its_deadline
test_two_sweepers_release_each_hold_exactly_once = test_sweeper.test_two_sweepers_release_each_hold_exactly_once
test_only_campaigns_with_a_hold_due_are_swept = test_sweeper.test_only_campaigns_with_a_hold_due_are_swept
test_units_return_exactly_once = test_buyer_caps.test_units_return_exactly_once_on_cancel_and_expire
test_scalpers_race_against_an_identity_cap = test_buyer_caps.test_scalpers_race_against_an_identity_cap
test_the_sweeper_prunes_as_the_sale_runs = test_prune.test_the_sweeper_prunes_as_the_sale_runs

# the admission machinery (registrations, the waiting room, the reserve gate)
test_one_ticket_per_user_and_per_identity = test_queue.test_one_ticket_per_user_and_per_identity
test_queue_not_open_not_registered_closed = test_queue.test_queue_not_open_not_registered_closed
test_join_time_does_not_predict_position = test_queue.test_join_time_does_not_predict_position_and_the_export_recomputes
test_admission_follows_positions_at_the_rate = test_queue.test_admission_follows_positions_at_the_rate
test_a_live_rate_change_and_a_pause = test_queue.test_a_live_rate_change_and_a_pause
test_sold_out_and_back = test_queue.test_sold_out_and_back
test_a_token_expires_after_its_time = test_queue.test_a_token_expires_after_its_time
test_polls_come_from_memory_and_tickets_are_private = test_queue.test_polls_come_from_memory_and_tickets_are_private
test_register_once_per_user_before_the_opening = test_registry.test_register_once_per_user_before_the_opening
test_after_the_opening_registration_is_closed = test_registry.test_after_the_opening_registration_is_closed
test_one_registration_per_identity_under_an_ide = test_registry.test_one_registration_per_identity_under_an_identity_cap
test_csv_import_good_rows = test_registry.test_csv_import_good_rows
test_csv_import_names_every_bad_row_and_loads_noth = test_registry.test_csv_import_names_every_bad_row_and_loads_nothing
test_csv_import_usage_and_refusals = test_registry.test_csv_import_usage_and_refusals
test_only_registered_users_reserve = test_reserve_gate.test_only_registered_users_reserve
test_an_open_campaign_needs_no_registration_or = test_reserve_gate.test_an_open_campaign_needs_no_registration_or_token
test_queue_mode_needs_a_valid_unexpired_token = test_reserve_gate.test_queue_mode_needs_a_valid_unexpired_token
test_a_token_expires_by_redis_time = test_reserve_gate.test_a_token_expires_by_redis_time
test_the_script_reads_queue_mode_from_the_stor = test_reserve_gate.test_the_script_reads_queue_mode_from_the_stored_meta


# -- what only a cluster has ----------------------------------------------------------------------

async def test_the_slot_of_a_key_is_the_one_redis_computes(aredis: Client) -> None:
    rng = random.Random(14)
    names = [f"fs:{{c:{rng.randrange(10**9)}}}:meta" for _ in range(300)]
    names += ["plain", "{}", "a{b}c", "{a}{b}", "x{}y{z}", "fs:campaigns", "测试{键}"]
    for name in names:
        assert slot_of_key(name) == int(await aredis.cluster_keyslot(name)), name


TOTAL, CAP, CAMPAIGNS = 40, 2, 24


async def test_a_race_over_campaigns_on_every_master(make_engine: Callable[..., Engine],
                                                     redis_cluster: RedisClusterServers) -> None:
    """6,000 reserves over 24 campaigns (every master serves some), through three engines: each
    campaign sells exactly its tranche, no user past the cap, every success a distinct record."""
    engines = [make_engine() for _ in range(3)]
    try:
        ids = [f"race-{i}" for i in range(CAMPAIGNS)]
        for cid in ids:
            await engines[0].load_campaign(campaign(cid, total_units=TOTAL, user_cap_units=CAP, products=[
                {"id": "p1", "title": "t", "total_units": TOTAL}]))
        owners = {redis_cluster.master_of(keys.CampaignKeys(cid).meta).port for cid in ids}
        assert len(owners) == 3

        async def one(i: int) -> tuple[str, str, str] | None:
            cid, user = ids[i % CAMPAIGNS], f"u{(i // CAMPAIGNS) % 90}"
            try:
                o = await engines[i % 3].reserve(cid, ReserveRequest(user, "p1", 1, f"k{i}", "shop"))
            except Rejected:
                return None
            return cid, user, o.reservation.reservation_id

        got = [r for r in await asyncio.gather(*(one(i) for i in range(6000))) if r is not None]
        per_campaign = Counter(cid for cid, _, _ in got)
        assert per_campaign == dict.fromkeys(ids, TOTAL)
        assert max(Counter((cid, u) for cid, u, _ in got).values()) <= CAP
        assert len({rid for _, _, rid in got}) == len(got)
        for cid in ids:
            c = await engines[1].counters(cid)
            assert (c.held, c.sold) == (TOTAL, 0)
        wire = engines[0].wire
        assert isinstance(wire, ClusterWire) and len(wire.masters()) == 3
    finally:
        for e in engines:
            await e.close()


async def retrying(call: Callable[[], object], tries: int = 200) -> tuple[object, int]:
    """A storefront's retry on 503 (same Idempotency-Key): the answer, and how many 503s it met."""
    unavailable = 0
    while True:
        try:
            return await call(), unavailable  # type: ignore[misc]
        except StorageUnavailable:
            unavailable += 1
            if unavailable >= tries:
                raise
            await asyncio.sleep(0.02)


def migrate_slot(cluster: RedisClusterServers, key: str) -> tuple[int, int]:
    """Move ``key``'s slot to another master as ``redis-cli --cluster reshard`` does (IMPORTING,
    MIGRATING, MIGRATE of its keys a few at a time, SETSLOT NODE); (from port, to port). The
    slot stays migrating a moment after its last key left, so calls meet ASK, then MOVED."""
    source = cluster.master_of(key)
    target = next(m for m in cluster.masters() if m.port != source.port)
    src, dst = source.client(), target.client()
    try:
        slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
        src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while names := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names)
        time.sleep(0.3)  # every key on the target, the slot still migrating: calls meet ASK
        for node in (dst, src):
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for other in cluster.masters():
            if other.port not in (source.port, target.port):
                c = other.client()
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                c.close()
    finally:
        src.close()
        dst.close()
    return source.port, target.port


async def test_a_campaign_moved_to_another_master_mid_sale(engine: Engine,
                                                           redis_cluster: RedisClusterServers) -> None:
    """Reshard a campaign's slot while reserves and confirms run: every call ends with the right
    answer (a 503 on the way at most, retried with the same key), nothing oversold, and the engine
    now sends the campaign to its new master (MOVED taught it)."""
    total = 100_000
    await engine.load_campaign(campaign("moving", total_units=total, user_cap_units=None, products=[
        {"id": "p1", "title": "t", "total_units": total}]))
    meta = keys.CampaignKeys("moving").meta
    moved = asyncio.Event()
    during = 0  # calls answered while the slot was moving

    async def reserve_and_confirm(n: int, i: int) -> int:
        req = ReserveRequest(f"u{n}-{i}", "p1", 1, f"k{n}-{i}", "shop")
        o, u1 = await retrying(lambda: engine.reserve("moving", req))
        rid = o.reservation.reservation_id  # type: ignore[attr-defined]
        _, u2 = await retrying(lambda: engine.confirm("moving", rid, f"pay-{n}-{i}", storefront="shop"))
        return u1 + u2

    async def client(n: int) -> tuple[int, int]:
        nonlocal during
        done = unavailable = after = 0
        while after < 20 and done < 2000:  # on until 20 calls after the move
            unavailable += await reserve_and_confirm(n, done)
            done += 1
            after += moved.is_set()
            during += not moved.is_set()
        return done, unavailable

    load = asyncio.gather(*(client(n) for n in range(12)))
    await asyncio.sleep(0.2)
    try:
        source, target = await asyncio.to_thread(migrate_slot, redis_cluster, meta)
    finally:
        moved.set()
    results = await load
    made = sum(d for d, _ in results)
    assert during > 0 and made > 12 * 20
    assert redis_cluster.master_of(meta).port == target != source
    c = await engine.counters("moving")
    assert (c.sold, c.held, c.orders) == (made, 0, made)
    wire = engine.wire
    assert isinstance(wire, ClusterWire)
    assert wire.owner(slot_of_key(meta)) == ("127.0.0.1", target)


async def test_the_script_cache_flushed_on_one_master_mid_run(engine: Engine,
                                                              redis_cluster: RedisClusterServers) -> None:
    """SCRIPT FLUSH on the master of a campaign over and over while calls run (as after a failover,
    a new master's cache is empty): NOSCRIPT is answered by EVAL, every call lands."""
    await engine.load_campaign(campaign("flushed", user_cap_units=None, total_units=None, products=[
        {"id": "p1", "title": "t", "total_units": 100_000}]))
    master = redis_cluster.master_of(keys.CampaignKeys("flushed").meta).client()
    stop = asyncio.Event()
    flushes = 0

    def flusher() -> None:
        nonlocal flushes
        while not stop.is_set():
            master.script_flush()
            flushes += 1

    task = asyncio.create_task(asyncio.to_thread(flusher))

    async def client(n: int) -> None:
        for i in range(50):
            o = await engine.reserve("flushed", ReserveRequest(f"u{n}-{i}", "p1", 1, f"k{n}-{i}", "shop"))
            await engine.confirm("flushed", o.reservation.reservation_id, f"pay-{n}-{i}", storefront="shop")

    try:
        await asyncio.gather(*(client(n) for n in range(16)))
    finally:
        stop.set()
        await task
        master.close()
    assert flushes > 1
    c = await engine.counters("flushed")
    assert (c.sold, c.held, c.orders) == (800, 0, 800)
