"""The ledger's and the commands' tests again, on the test cluster: here ``redis_url`` names one
node of the private Redis Cluster (flushed per test), ``aredis`` is a cluster client, and the
ledger's fixtures (``backend``, ``db_url``, ``engine``) are the ones of ``tests/ledger``, so a test
of ``tests/ledger`` bound into a module here (``test_x = ledger_module.test_x``) runs on the
cluster unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.core.redis_client import Client, connect_any
from tests.ledger.conftest import backend, db_url, engine
from tests.support.cluster import RedisClusterServers

__all__ = ["backend", "db_url", "engine"]


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


@pytest.fixture
async def aredis(redis_cluster_url: str) -> AsyncIterator[Client]:
    client = connect_any(redis_cluster_url, 10.0)
    yield client
    await client.aclose()


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers, redis_cluster_url: str) -> RedisClusterServers:
    """The session's cluster, healthy and flushed."""
    return redis_cluster
