"""The fault run on a test cluster, shared by ``tests/cluster/test_acks.py`` (which checks it) and
``scripts/bench/cluster.py`` (which reports its failover window).

``kill_a_master_mid_sale``: clients reserve and confirm over a few campaigns through one Engine,
retrying a 503 with the same request as a storefront would; one master is SIGKILLed, its replica
takes over, the promoted master serves a while without a replica of its own, then the old master
comes back as its replica. What every client was told, and when, is returned for checking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.errors import StorageUnavailable
from tests.support.cluster import RedisClusterServers

ALONE_S = 1.5  # how long the promoted master serves without a replica before the old one is back


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def replicas_of(port: int) -> int:
    """The replicas of the master on ``port`` that are online (synced, acknowledging offsets)."""
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        info = client.info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                   and v.get("state") == "online")
    except redis.RedisError:
        return -1
    finally:
        client.close()


def in_sync(cluster: RedisClusterServers) -> None:
    """Every master has its replica online (a new one syncs first: WAIT does not count it yet)."""
    cluster.wait_healthy()
    wait_for(lambda: all(replicas_of(m.port) >= cluster.replicas_per_master for m in cluster.masters()),
             "every replica in sync", timeout_s=60)


@dataclass
class FaultRun:
    on_victim: set[str]  # the campaigns the killed master served
    reserved: dict[tuple[str, str], str] = field(default_factory=dict)  # (campaign, key) -> id, acknowledged
    confirmed: set[tuple[str, str]] = field(default_factory=set)  # (campaign, reservation id), acknowledged
    refused: list[float] = field(default_factory=list)  # when a call on the victim's campaigns met a 503
    answered_after: list[float] = field(default_factory=list)  # answers on them after the first 503
    confirmed_before_kill: int = 0
    killed_at: float = 0.0
    restarted_at: float = 0.0  # the old master started again (until then the new one had no replica)

    @property
    def window_s(self) -> float:
        """Seconds from the kill to the last 503 the victim's campaigns answered."""
        return max(self.refused) - self.killed_at if self.refused else 0.0

    async def retried(self, cid: str, call: Callable[[], Awaitable[Any]], give_up_s: float = 60) -> Any:
        """``call`` until it is answered, as a storefront retries a 503 (same request, same key)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_s
        while True:
            try:
                result = await call()
            except StorageUnavailable:
                if cid in self.on_victim:
                    self.refused.append(loop.time())
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            if cid in self.on_victim and self.refused:
                self.answered_after.append(loop.time())
            return result


async def kill_a_master_mid_sale(cluster: RedisClusterServers, engine: Engine, ids: list[str], *,
                                 clients: int = 16) -> FaultRun:
    """The campaigns ``ids`` exist (``p1`` on sale); the master serving ``ids[0]`` is the victim."""
    victim = cluster.master_of(keys.CampaignKeys(ids[0]).meta)
    run = FaultRun({c for c in ids if cluster.master_of(keys.CampaignKeys(c).meta).port == victim.port})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def client(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            cid, key = ids[(n + i) % len(ids)], f"k{n}-{i}"
            req = ReserveRequest(f"u{n}-{i}", "p1", 1, key, "shop")
            o = await run.retried(cid, lambda: engine.reserve(cid, req))  # noqa: B023
            run.reserved[(cid, key)] = rid = o.reservation.reservation_id
            await run.retried(cid, lambda: engine.confirm(cid, rid, f"pay-{key}", storefront="shop"))  # noqa: B023
            run.confirmed.add((cid, rid))
            i += 1

    def promoted() -> bool:
        return cluster.master_of(keys.CampaignKeys(ids[0]).meta).port != victim.port

    load = asyncio.gather(*(client(n) for n in range(clients)))
    try:
        await asyncio.sleep(1.0)
        run.confirmed_before_kill = len(run.confirmed)
        run.killed_at = loop.time()
        await asyncio.to_thread(victim.kill)
        await asyncio.to_thread(wait_for, promoted, "the replica to take over")
        await asyncio.sleep(ALONE_S)  # the promoted replica serves with no replica of its own
        run.restarted_at = loop.time()
        await asyncio.to_thread(victim.start)  # back as the new master's replica
        await asyncio.to_thread(in_sync, cluster)
        await asyncio.to_thread(wait_for, lambda: len(run.answered_after) > 20, "the victim's campaigns to answer")
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await load
    return run
