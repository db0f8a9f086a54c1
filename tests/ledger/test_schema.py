"""The schema: created and versioned on start, idempotent, a newer database refused (both back-ends)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess

import asyncpg
import pytest

from engine.errors import SchemaTooNew
from engine.ledger import sink_for
from engine.ledger.schema import SCHEMA_VERSION
from engine.ledger.sqlite import path_of
from tests.support.processes import FLASHSALE, base_env


async def execute(db_url: str, sql: str) -> None:
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(path_of(db_url))
        conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        c = await asyncpg.connect(db_url)
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
