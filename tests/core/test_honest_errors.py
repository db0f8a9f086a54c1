"""An outage (503, retry) is told apart from a script error or a bug (500, no retry), on both paths
to Redis: the lean wire (batched reserve / confirm / cancel) and redis-py (reads, admin, expiry)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.core.outage import is_outage
from engine.errors import StorageUnavailable
from engine.settings import Settings
from tests.core.conftest import campaign
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.needs_services  # starts its own redis-server: not the fast tier


async def test_a_script_error_is_no_outage(engine: Engine, aredis: aioredis.Redis) -> None:
    """WRONGTYPE inside reserve.lua (a counters key that is no hash: damaged data) is raised as
    the script's error, not as StorageUnavailable, which the API would answer 503 to be retried."""
    await engine.load_campaign(campaign())
    held = (await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "k0", "shop"))).reservation
    k = keys.CampaignKeys("c1")
    await aredis.delete(k.counters)
    await aredis.set(k.counters, "not a hash")
    with pytest.raises(ResponseError, match="WRONGTYPE") as err:
        await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "k1", "shop"))  # the lean wire
    assert not isinstance(err.value, StorageUnavailable) and not is_outage(err.value)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await engine.reserve_unbatched("c1", ReserveRequest("u1", "p1", 1, "k2", "shop"))  # redis-py
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await engine.cancel("c1", held.reservation_id, storefront="shop")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await engine.counters("c1")  # a pipelined read
    await aredis.delete(k.holds)
    await aredis.set(k.holds, "not a zset")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await engine.expire_due("c1")


@pytest.fixture
def replica() -> Iterator[RedisServer]:
    """A private Redis about to become the replica of a master that is not there."""
    server = RedisServer().start()
    yield server
    server.stop()


async def test_read_only_and_master_down_are_outages(replica: RedisServer) -> None:
    """A failover in progress: the node turned replica refuses writes (READONLY, from inside the
    script, over the lean wire) and, when told not to serve stale data, reads too (MASTERDOWN, a
    plain error reply to redis-py): both are StorageUnavailable, to be retried."""
    engine = Engine.from_settings(Settings(redis_url=replica.url, redis_timeout_s=5.0))
    admin = redis.Redis(port=replica.port)
    try:
        await engine.load_campaign(campaign())
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
        with pytest.raises(StorageUnavailable, match=r"READONLY|ReadOnly"):
            await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "k1", "shop"))
        with pytest.raises(StorageUnavailable, match=r"READONLY|ReadOnly"):
            await engine.pause("c1")
        assert (await engine.view("c1")).campaign.id == "c1"  # stale reads are served by default
        admin.config_set("replica-serve-stale-data", "no")
        with pytest.raises(StorageUnavailable, match=r"MASTERDOWN|MasterDown"):
            await engine.view("c1")
        with pytest.raises(StorageUnavailable, match=r"MASTERDOWN|MasterDown"):
            await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "k2", "shop"))
    finally:
        admin.close()
        await engine.close()


async def test_redis_gone_is_an_outage(replica: RedisServer) -> None:
    engine = Engine.from_settings(Settings(redis_url=replica.url, redis_timeout_s=1.0))
    try:
        await engine.load_campaign(campaign())
        replica.kill()
        with pytest.raises(StorageUnavailable):
            await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "k1", "shop"))
        with pytest.raises(StorageUnavailable):
            await engine.view("c1")
    finally:
        await engine.close()


BUSY_LOOP = """
local stop_at = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[1])
while tonumber(redis.call('TIME')[1]) < stop_at do end
return 1
"""


async def test_a_script_running_too_long_is_an_outage(replica: RedisServer) -> None:
    """Another client's script runs past busy-reply-threshold: Redis answers BUSY to everyone else
    until it ends, on both paths (a plain error reply to redis-py and to the wire): retry later."""
    engine = Engine.from_settings(Settings(redis_url=replica.url, redis_timeout_s=5.0))
    admin = redis.Redis(port=replica.port)
    try:
        await engine.load_campaign(campaign())
        admin.config_set("busy-reply-threshold", 100)
        busy = asyncio.ensure_future(asyncio.to_thread(admin.eval, BUSY_LOOP, 0, 3))
        await asyncio.sleep(0.5)
        with pytest.raises(StorageUnavailable, match="BUSY"):
            await engine.view("c1")
        with pytest.raises(StorageUnavailable, match="BUSY"):
            await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "k1", "shop"))
        assert await busy == 1
        assert (await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "k1", "shop"))).reservation.units == 1
    finally:
        admin.close()
        await engine.close()
