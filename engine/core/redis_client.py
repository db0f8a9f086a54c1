"""Building the Redis client, and the durability check every long-running process makes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
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


class _WaitingPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast("WaitingCluster", self.cluster_client)
        async with client.turn():
            return await super().execute(raise_on_error, allow_redirections)


class WaitingCluster(RedisCluster):
    """redis-py's cluster client, waiting for a connection as the single-node client does.

    redis-py's cluster client raises ``MaxConnectionsError`` at once when a node's connections are
    all busy, so a mere burst of reads (or queue joins) would be 503s; ``connect``'s pool waits
    instead (``BlockingConnectionPool``). This one waits too: at most ``POOL_SIZE`` commands or
    pipelines are out at once (so never more connections to one node), and a caller waits up to the
    socket timeout for its turn, then gets ``ConnectionError`` (an outage: 503).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(int(kwargs.get("max_connections") or POOL_SIZE))
        self._wait_s = float(kwargs.get("socket_timeout") or 1.0)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._gate.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no free connection to the cluster within {self._wait_s}s") from None
        try:
            yield
        finally:
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused by redis-py, as it says
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py makes its own


def connect_any(url: str, timeout_s: float) -> Client:
    """``connect`` for a single node; for a cluster node, a cluster client that finds every master.

    Same failure policy: no retries of its own beyond following MOVED/ASK, short timeouts.
    """
    if not is_cluster(url, timeout_s):
        return connect(url, timeout_s)
    return WaitingCluster.from_url(
        url,
        require_full_coverage=True,
        max_connections=POOL_SIZE,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class TooFewReplicas(UnsafeRedis):
    """``--replica-acks N`` on a Redis where a master has fewer than N connected replicas."""


#: TIME through a script on a key: a cluster pipeline routes each command by its key, and TIME has
#: none (the script reads the clock of the master serving the key)
_TIME_LUA = "return redis.call('TIME')"


def queue_time(p: Pipeline | ClusterPipeline, key: str) -> None:
    """Queue Redis ``TIME`` in the pipeline ``p`` (on a cluster, from the master serving ``key``)."""
    if isinstance(p, ClusterPipeline):
        p.eval(_TIME_LUA, 1, key)
    else:
        p.time()


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _node_facts(client: Client, node: Any = None) -> tuple[DurabilityProfile, int]:
    """One server's profile and its connected replicas (``node``: which master of a cluster)."""
    on = {} if node is None else {"target_nodes": node}
    try:
        cfg = await client.config_get("appendonly", "appendfsync", "maxmemory-policy", **on)
        replication = await client.info("replication", **on)
    except RedisError as exc:
        raise StorageUnavailable(f"cannot read Redis configuration: {exc}") from exc
    got = {_text(k): _text(v) for k, v in cfg.items()}
    profile = DurabilityProfile(got.get("appendonly") == "yes", got.get("appendfsync", ""),
                                got.get("maxmemory-policy", ""))
    return profile, int(replication.get("connected_slaves", 0))


async def masters(client: Client) -> list[tuple[str, DurabilityProfile, int]]:
    """Each master (``host:port``, or ``redis`` for a single node), its profile and live replicas."""
    if isinstance(client, RedisCluster):
        if not client.get_primaries():
            try:
                await client.initialize()
            except RedisError as exc:
                raise StorageUnavailable(f"cannot reach the Redis Cluster: {exc}") from exc
        out = []
        for node in client.get_primaries():
            profile, replicas = await _node_facts(client, node)
            out.append((f"master {node.host}:{node.port}", profile, replicas))
        return out
    profile, replicas = await _node_facts(client)
    return [("redis", profile, replicas)]


async def durability(client: Client) -> DurabilityProfile:
    """The profile of the server (of the least durable master of a cluster)."""
    profiles = [p for _, p, _ in await masters(client)]
    return next((p for p in profiles if not p.safe), profiles[0])


async def require_durable(client: Client, *, allow_volatile: bool, replica_acks: int = 0) -> DurabilityProfile:
    """Refuse to run on a Redis that would lose acknowledged writes, unless told to; on a cluster,
    every master is checked. With ``replica_acks`` N, refuse (``TooFewReplicas``) a master with
    fewer than N connected replicas: none of its writes could ever be acknowledged."""
    found = await masters(client)
    for name, profile, _ in found:
        if not profile.safe and not allow_volatile:
            where = "" if name == "redis" else f"{name}: "
            raise UnsafeRedis(
                f"refusing to start: {where}{profile.describe()}. Run Redis with `--appendonly yes "
                "--appendfsync always --maxmemory-policy noeviction`, or pass --allow-volatile-redis "
                "(FLASHSALE_ALLOW_VOLATILE_REDIS=1) for demos and tests"
            )
    for name, _, replicas in found:
        if replicas < replica_acks:
            raise TooFewReplicas(
                f"refusing to start: --replica-acks {replica_acks} (FLASHSALE_REPLICA_ACKS) but {name} has "
                f"{replicas} connected replica(s); add replicas or lower --replica-acks")
    profiles = [p for _, p, _ in found]
    worst = next((p for p in profiles if not p.safe), profiles[0])
    if replica_acks:
        return ClusterProfile(worst.appendonly, worst.appendfsync, worst.maxmemory_policy, replica_acks, len(found))
    return worst if len(found) == 1 else ClusterProfile(worst.appendonly, worst.appendfsync,
                                                        worst.maxmemory_policy, 0, len(found))


@dataclass(frozen=True, slots=True)
class ClusterProfile(DurabilityProfile):
    """A cluster's (or replicated node's) profile: what a failover may lose, on top of the disk's."""

    replica_acks: int
    masters: int

    def describe(self) -> str:
        disk = DurabilityProfile.describe(self)
        if not self.safe:
            return disk
        where = f"Redis Cluster, {self.masters} masters" if self.masters > 1 else "Redis"
        if self.replica_acks:
            return (f"{where}, {disk}; every batch waits for {self.replica_acks} replica(s): "
                    "a failover loses no acknowledged write")
        return (f"{where}, {disk}; replication is asynchronous: a failover may lose the last "
                "acknowledged writes (--replica-acks 1 prevents it)")

