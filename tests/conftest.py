"""Session fixtures: a private redis-server, a fresh PostgreSQL database, clean state per test.

Two tiers: a test that uses a service fixture (below), or sits in a module marked
``needs_services`` because it starts servers itself, is marked ``needs_services``;
``make test-fast`` runs the rest (``-m "not needs_services"``) with ``FLASHSALE_TEST_TIER=fast``,
under which starting a redis-server or a browser fails the test instead of happening.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from tests.support.cluster import RedisClusterServers
from tests.support.servers import RedisServer

PG_ADMIN_DSN = os.environ.get("FLASHSALE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
#: fixtures that start or reach a service (every other service fixture depends on one of them)
SERVICE_FIXTURES = frozenset({"redis_server", "redis_cluster", "pg_url", "pg_cluster", "stack"})
#: markers that say the same (a parameter may reach PostgreSQL through ``request.getfixturevalue``)
SERVICE_MARKERS = ("postgres", "browser")
#: what the fast tier must never start: each is shadowed on PATH by a stub that fails
SERVICE_BINARIES = ("redis-server", "chromium", "chromium-browser", "google-chrome", "promtool")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("FLASHSALE_TEST_TIER") != "fast":
        return
    stubs = Path(tempfile.mkdtemp(prefix="fs-fast-tier-"))
    for name in SERVICE_BINARIES:
        stub = stubs / name
        stub.write_text(f"#!/bin/sh\necho 'the fast tier starts no {name}: mark the test needs_services' >&2\n"
                        "exit 97\n")
        stub.chmod(0o755)
    os.environ["PATH"] = f"{stubs}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
                or any(item.get_closest_marker(name) for name in SERVICE_MARKERS)):
            item.add_marker(pytest.mark.needs_services)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A private Redis Cluster, 3 masters and 3 replicas, started once (tests/support/cluster.py)."""
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The private cluster, flushed before each test; the URL names one node, as a user's would."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, flushed before each test."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.script_flush()
    client.close()
    return redis_server.url


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncio

    import asyncpg

    name = f"fs_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
