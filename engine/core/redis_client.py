"""Building the Redis client, and the durability check every long-running process makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from engine.errors import StorageUnavailable, UnsafeRedis

POOL_SIZE = 64  # connections per process; batching keeps the real need far lower


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that fails fast: no retries, short timeouts (the caller retries, idempotently).

    The pool blocks (up to ``timeout_s``) for a free connection when all are busy: redis-py's
    default pool raises ``MaxConnectionsError`` at once, a 503 for a mere burst of reads.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    return aioredis.Redis(connection_pool=pool)


#: what every process holds: one node's client, or a cluster's (found from any node it names)
Client = aioredis.Redis | RedisCluster


def is_cluster(url: str, timeout_s: float) -> bool:
    """Whether the node ``url`` names runs with ``cluster-enabled yes`` (asked once, at start).

    Unreachable: False, so the caller's first real call reports the outage in its own words.
    """
    probe = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        info = cast(dict[str, Any], probe.info("cluster"))
        return int(info.get("cluster_enabled", 0)) == 1
    except redis.RedisError:
        return False
    finally:
        probe.close()


def connect_any(url: str, timeout_s: float) -> Client:
    """``connect`` for a single node; for a cluster node, a cluster client that finds every master.

    Same failure policy: no retries of its own beyond following MOVED/ASK, short timeouts.
    """
    if not is_cluster(url, timeout_s):
        return connect(url, timeout_s)
    return RedisCluster.from_url(
        url,
        require_full_coverage=True,
        max_connections=POOL_SIZE,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


@dataclass(frozen=True, slots=True)
class DurabilityProfile:
    appendonly: bool
    appendfsync: str
    maxmemory_policy: str

    @property
    def safe(self) -> bool:
        return self.appendonly and self.maxmemory_policy == "noeviction"

    def describe(self) -> str:
        if not self.appendonly:
            return "no AOF: a Redis restart loses every hold and every unpersisted confirm"
        if self.maxmemory_policy != "noeviction":
            return f"maxmemory-policy {self.maxmemory_policy}: Redis may evict campaign keys under memory pressure"
        if self.appendfsync == "always":
            return "AOF appendfsync always: no acknowledged confirm is lost"
        return f"AOF appendfsync {self.appendfsync}: up to about a second of acknowledged writes may be lost"


async def durability(client: aioredis.Redis) -> DurabilityProfile:
    try:
        cfg = await client.config_get("appendonly", "appendfsync", "maxmemory-policy")
    except RedisError as exc:
        raise StorageUnavailable(f"cannot read Redis configuration: {exc}") from exc

    def get(key: str) -> str:
        value = cfg.get(key, cfg.get(key.encode(), b""))
        return value.decode() if isinstance(value, bytes) else str(value)

    return DurabilityProfile(get("appendonly") == "yes", get("appendfsync"), get("maxmemory-policy"))


async def require_durable(client: aioredis.Redis, *, allow_volatile: bool) -> DurabilityProfile:
    """Refuse to run on a Redis that would lose acknowledged writes, unless told to."""
    profile = await durability(client)
    if not profile.safe and not allow_volatile:
        raise UnsafeRedis(
            f"refusing to start: {profile.describe()}. Run Redis with `--appendonly yes "
            "--appendfsync always --maxmemory-policy noeviction`, or pass --allow-volatile-redis "
            "(FLASHSALE_ALLOW_VOLATILE_REDIS=1) for demos and tests"
        )
    return profile
