"""The ledger's commands as an operator runs them: `flashsale writer` (SIGTERM, --burst, the Redis
durability check), `reconcile`, `export holders`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal

import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.ledger.factory import sink_for
from engine.ledger.streams import GROUP
from tests.ledger.sale import PRICE, campaign, flashsale, ledger, sell, until
from tests.support.processes import FLASHSALE, Process, base_env
from tests.support.servers import RedisServer

CID = "cmd-c1"


def writer_process(redis_url: str, db_url: str, *args: str, **env: str) -> Process:
    return Process([FLASHSALE, "writer", "--claim-idle-ms", "500", *args],
                   base_env(redis_url, FLASHSALE_DATABASE_URL=db_url, **env))


async def test_sigterm_finishes_the_batch_in_flight_and_exits_0(engine: Engine, aredis: aioredis.Redis,
                                                                redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    proc = writer_process(redis_url, db_url, "--consumer", "w-term", "--batch-size", "50").start()
    try:
        selling = asyncio.create_task(sell(engine, CID, 6000, chunk=200))

        async def busy() -> bool:
            return int(await aredis.hget(keys.CampaignKeys(CID).ledger, "persisted_orders") or 0) > 200

        await until(busy, 60, "the writer persists orders")
        assert proc.alive()
        code = await asyncio.to_thread(proc.terminate, 30)
        assert code == 0, proc.output()
        await selling
    finally:
        proc.stop()
    stream = keys.CampaignKeys(CID).events
    consumers = {c["name"]: c for c in await aredis.xinfo_consumers(stream, GROUP)}
    assert consumers[b"w-term"]["pending"] == 0  # what it had read, it committed and acknowledged
    last = (await aredis.xinfo_groups(stream))[0]["last-delivered-id"].decode()
    snap = await ledger(db_url, CID)
    assert snap.events and snap.events[-1].entry_id == last  # and nothing it read is missing
    assert len(snap.events) == len({e.entry_id for e in snap.events})


async def test_burst_drains_everything_then_exits_0(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                    db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await engine.load_campaign(campaign("cmd-c2"))
    one = await sell(engine, CID, 700, confirm_every=2, cancel_every=3)
    two = await sell(engine, "cmd-c2", 300)
    done = await flashsale("writer", "--burst", env=base_env(redis_url, FLASHSALE_DATABASE_URL=db_url))
    assert done.returncode == 0, done.stderr
    for cid, sale in ((CID, one), ("cmd-c2", two)):
        snap = await ledger(db_url, cid)
        assert {o.reservation_id for o in snap.orders} == set(sale.confirmed)
        assert len(snap.events) == sale.events
        assert await aredis.xlen(keys.CampaignKeys(cid).events) == 0


async def test_writer_refuses_a_volatile_redis_unless_told(redis_url: str, tmp_path: object) -> None:
    db = f"sqlite:///{tmp_path}/ledger.db"
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db, FLASHSALE_ALLOW_VOLATILE_REDIS="")
    refused = await flashsale("writer", "--burst", env=env)
    assert refused.returncode == 1
    assert "refusing to start: no AOF" in refused.stderr and "--allow-volatile-redis" in refused.stderr
    allowed = await flashsale("writer", "--burst", "--allow-volatile-redis", env=env)
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.needs_services  # starts its own redis-server
async def test_writer_starts_on_a_durable_redis_and_says_so(tmp_path: object) -> None:
    server = RedisServer(durable=True).start()
    try:
        env = base_env(server.url, FLASHSALE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db",
                       FLASHSALE_ALLOW_VOLATILE_REDIS="", FLASHSALE_LOG_LEVEL="INFO")
        done = await flashsale("writer", "--burst", env=env)
        assert done.returncode == 0, done.stderr
        assert "AOF appendfsync always: no acknowledged confirm is lost" in done.stderr
    finally:
        server.stop()


async def test_reconcile_exits_1_on_any_difference(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                   db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 200, confirm_every=2)
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    empty = await flashsale("reconcile", CID, env=env)  # a read never creates the ledger's schema
    assert empty.returncode == 1 and "flashsale writer" in empty.stderr and not empty.stdout
    sink = sink_for(db_url)
    await sink.open()  # as a writer starting would
    await sink.close()
    undrained = await flashsale("reconcile", CID, env=env)  # the ledger is empty: the stream counts
    assert undrained.returncode == 0, undrained.stdout
    assert "no differences" in undrained.stdout and "0 ledger events + 300 stream entries" in undrained.stdout
    assert (await flashsale("writer", "--burst", env=env)).returncode == 0
    clean = await flashsale("reconcile", CID, env=env)
    assert clean.returncode == 0 and "300 ledger events + 0 stream entries; no differences" in clean.stdout
    await aredis.hincrby(keys.CampaignKeys(CID).counters, "sold", 3)
    await aredis.hincrby(keys.CampaignKeys(CID).users, "c|u0", -1)
    dirty = await flashsale("reconcile", CID, env=env)
    assert dirty.returncode == 1
    lines = dirty.stdout.splitlines()
    sold = next(line for line in lines if line.startswith("sold units:"))
    assert sold.endswith(", ledger + stream " + str(int(sold.split()[3].rstrip(",")) - 3))
    assert any(line.startswith("remaining units:") for line in lines)
    assert any(line.startswith("user u0: units confirmed:") for line in lines)
    assert "3 difference(s)" in lines[-1]


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_export_holders(engine: Engine, redis_url: str, db_url: str, fmt: str) -> None:
    await engine.load_campaign(campaign(CID))
    sale = await sell(engine, CID, 90, confirm_every=3)
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    assert (await flashsale("writer", "--burst", env=env)).returncode == 0
    out = await flashsale("export", "holders", CID, "--format", fmt, env=env)
    assert out.returncode == 0, out.stderr
    want = sorted((u, p, n, n * PRICE) for u, p, n in sale.confirmed.values())
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        got = sorted((r["user_id"], r["product_id"], int(r["units"]), int(r["amount"])) for r in rows)
    else:
        body = json.loads(out.stdout)
        got = sorted((h["user_id"], h["product_id"], h["units"], h["amount"]) for h in body["holders"])
        assert body["total_amount"] == sum(w[3] for w in want)
    assert got == want


async def test_sigterm_while_the_database_is_locked_leaves_the_batch_pending(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, tmp_path: object) -> None:
    """Stopping with the ledger unreachable: exit 0, nothing acknowledged, nothing lost."""
    import sqlite3

    db = f"sqlite:///{tmp_path}/ledger.db"
    await engine.load_campaign(campaign(CID))
    stream = keys.CampaignKeys(CID).events
    proc = writer_process(redis_url, db, "--consumer", "w-locked").start()
    lock = sqlite3.connect(f"{tmp_path}/ledger.db", isolation_level=None)
    try:
        first = await sell(engine, CID, 10)

        async def running() -> bool:
            return int(await aredis.hget(keys.CampaignKeys(CID).ledger, "persisted_orders") or 0) == 10

        await until(running, 30, "the writer persists the first orders")
        lock.execute("BEGIN EXCLUSIVE")
        sale = await sell(engine, CID, 100, start=10)

        async def taken() -> bool:
            return (await aredis.xpending(stream, GROUP))["pending"] == sale.events

        await until(taken, 30, "the writer reads the entries")
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0  # type: ignore[union-attr]
    finally:
        proc.stop()
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    assert (await aredis.xpending(stream, GROUP))["pending"] == sale.events  # acknowledged nothing
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db)
    assert (await flashsale("writer", "--burst", "--claim-idle-ms", "100", env=env)).returncode == 0
    snap = await ledger(db, CID)
    assert {o.reservation_id for o in snap.orders} == set(sale.confirmed) | set(first.confirmed)  # lost nothing



async def test_reconcile_counts_each_storefronts_units(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                       db_url: str) -> None:
    """The users hash keeps each storefront's units of a user's product (t|U|P|SF, c|U|P|SF): the
    history rebuilds them too, so two storefronts' sale reconciles, and a difference is named."""
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 40, confirm_every=2)  # through shop-a
    for i, pid in enumerate(("p0", "p1", "p0")):
        made = await engine.reserve(CID, ReserveRequest("u-b", pid, 1, f"kb{i}", "shop-b"))
        if i < 2:
            await engine.confirm(CID, made.reservation.reservation_id, f"pay-b{i}", storefront="shop-b")
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    assert (await flashsale("writer", "--burst", env=env)).returncode == 0
    clean = await flashsale("reconcile", CID, env=env)
    assert clean.returncode == 0 and "no differences" in clean.stdout, clean.stdout
    await aredis.hincrby(keys.CampaignKeys(CID).users, "t|u-b|p0|shop-b", 1)
    dirty = await flashsale("reconcile", CID, env=env)
    assert dirty.returncode == 1
    assert any(line.startswith("user u-b: units taken (held + confirmed), product p0, through storefront shop-b:")
               for line in dirty.stdout.splitlines()), dirty.stdout


async def _execute(db_url: str, *statements: str) -> None:
    """Run SQL on the test's ledger, behind the sink's back (the corruption a test needs)."""
    if db_url.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(db_url[len("sqlite:///"):])
        with conn:
            for sql in statements:
                conn.execute(sql)
        conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(db_url)
    try:
        for sql in statements:
            await pg.execute(sql)
    finally:
        await pg.close()


async def test_reconcile_lists_orders_rows_that_disagree_with_the_confirmed_events(
        engine: Engine, redis_url: str, db_url: str) -> None:
    """The database compares ``orders`` with the confirmed events (only differences reach Python):
    a missing row, a row without a confirmed event and a row that differs are each one line, by id."""
    await engine.load_campaign(campaign(CID))
    sale = await sell(engine, CID, 40, confirm_every=2)
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    assert (await flashsale("writer", "--burst", env=env)).returncode == 0
    gone, changed = sorted(sale.confirmed)[:2]
    await _execute(db_url, f"DELETE FROM orders WHERE reservation_id = '{gone}'",
                   f"UPDATE orders SET amount = amount + 1 WHERE reservation_id = '{changed}'",
                   "INSERT INTO orders (reservation_id, campaign_id, product_id, user_id, units, amount, payment_ref, "
                   f"confirmed_at) SELECT 'zz-extra', campaign_id, product_id, user_id, units, amount, payment_ref, "
                   f"confirmed_at FROM orders WHERE reservation_id = '{changed}'")
    sink = sink_for(db_url)
    await sink.open(readonly=True)
    try:
        check = await sink.order_check(CID)
    finally:
        await sink.close()
    assert [rid for rid, _ in check.missing] == [gone] and [rid for rid, _ in check.extra] == ["zz-extra"]
    ((rid, order, event),) = check.differing
    assert rid == changed and order[3] == event[3] + 1 and order[:3] == event[:3]
    assert (check.order_rows, check.persisted_orders) == (len(sale.confirmed), len(sale.confirmed))
    dirty = await flashsale("reconcile", CID, env=env)
    assert dirty.returncode == 1
    lines = dirty.stdout.splitlines()
    assert f"ledger order {gone}: Redis (orders row missing), ledger + stream {check.missing[0][1]}" in lines
    assert f"ledger order zz-extra: Redis {check.extra[0][1]}, ledger + stream (no confirmed event)" in lines
    assert f"ledger order {changed}: Redis {order}, ledger + stream {event}" in lines
    assert "3 difference(s)" in lines[-1]  # one row deleted, one added: the count still matches
