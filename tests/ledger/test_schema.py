"""The schema: created and versioned on start, idempotent, a newer database refused (both back-ends)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import asyncpg
import pytest

from engine.errors import SchemaTooNew
from engine.events import Event
from engine.ledger import sink_for
from engine.ledger.rows import event_row
from engine.ledger.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE, Dialect
from engine.ledger.sqlite import path_of
from tests.support.processes import FLASHSALE, base_env


async def execute(db_url: str, *statements: str) -> None:
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(path_of(db_url))
        for sql in statements:
            conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        c = await asyncpg.connect(db_url)
        for sql in statements:
            await c.execute(sql)
        await c.close()


async def test_schema_is_created_then_found(db_url: str) -> None:
    sink = sink_for(db_url)
    assert await sink.open() == SCHEMA_VERSION
    assert await sink.schema_version() == SCHEMA_VERSION
    assert await sink.progress() == {}
    await sink.close()
    again = sink_for(db_url)
    assert await again.open() == SCHEMA_VERSION  # nothing left to migrate, nothing fails
    await again.close()


async def test_writers_starting_together_migrate_once(db_url: str) -> None:
    sinks = [sink_for(db_url) for _ in range(4)]
    versions = await asyncio.gather(*(s.open() for s in sinks))
    assert versions == [SCHEMA_VERSION] * 4
    for s in sinks:
        await s.close()
    await execute(db_url, "INSERT INTO ledger_progress (campaign_id) VALUES ('probe')")


async def test_many_writers_starting_together_on_fresh_sqlite_files_all_open(tmp_path: Path) -> None:
    """The switch to WAL is refused at once (no busy wait) to a connection that asks while another
    switches: each of 8 writers on each of 100 new files opens, none reports the ledger locked."""
    for i in range(100):
        url = f"sqlite:///{tmp_path}/ledger-{i}.db"
        sinks = [sink_for(url) for _ in range(8)]
        try:
            assert await asyncio.gather(*(s.open() for s in sinks)) == [SCHEMA_VERSION] * 8
        finally:
            for s in sinks:
                await s.close()


async def test_a_newer_schema_is_refused(db_url: str) -> None:
    sink = sink_for(db_url)
    await sink.open()
    await sink.close()
    await execute(db_url, f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})")
    newer = sink_for(db_url)
    with pytest.raises(SchemaTooNew) as info:
        await newer.open()
    await newer.close()
    assert info.value.found == SCHEMA_VERSION + 1
    assert "upgrade flashsale" in str(info.value)


async def test_the_writer_command_refuses_a_newer_schema(db_url: str, redis_url: str) -> None:
    sink = sink_for(db_url)
    await sink.open()
    await sink.close()
    await execute(db_url, "INSERT INTO schema_version (version) VALUES (99)")
    env = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    done = await asyncio.to_thread(subprocess.run, [FLASHSALE, "writer", "--burst"], env=env,
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "schema version 99" in done.stderr and "upgrade flashsale" in done.stderr


async def test_a_version_1_ledger_migrates_in_place(db_url: str) -> None:
    """A ledger written by flashsale before events kept the Idempotency-Key (and the buyer signals):
    its rows stay, with neither; new rows keep theirs."""
    dialect: Dialect = "sqlite" if db_url.startswith("sqlite") else "postgres"
    [v1] = [sql for version, sql in MIGRATIONS[dialect] if version == 1]
    await execute(db_url, VERSION_TABLE[dialect], *v1, "INSERT INTO schema_version (version) VALUES (1)",
                  "INSERT INTO events (campaign_id, entry_ms, entry_seq, type, reservation_id, product_id, user_id, "
                  "units, amount, at_ms, storefront, expires_at_ms) "
                  "VALUES ('mig-c1', 1000, 0, 'reserved', 'r-old', 'p0', 'u1', 2, 20000, 1000, 'shop-a', 901000)")
    sink = sink_for(db_url)
    assert await sink.open() == SCHEMA_VERSION == 3
    assert await sink.schema_version() == 3
    new = Event("mig-c1", "2000-0", "reserved", "r-new", "p0", "u2", 1, 10000, 2000, storefront="shop-a",
                expires_at_ms=902000, idempotency_key="k-new", identity="person-1", device="",
                network="203.0.113.0/24")
    await sink.write([event_row(new)])
    snap = await sink.snapshot("mig-c1")
    await sink.close()
    assert [(e.reservation_id, e.storefront, e.idempotency_key) for e in snap.events] == [
        ("r-old", "shop-a", None), ("r-new", "shop-a", "k-new")]
    assert snap.events[1] == new and snap.events[0].identity is None
    again = sink_for(db_url)
    assert await again.open() == 3  # migrated once: nothing left to do
    await again.close()
