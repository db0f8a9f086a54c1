"""A request whose caller gave up while it waited for its batch is left out of the batch: no hold
is created for a caller who was told the request failed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from engine import keys
from engine.api.deadline import Deadlines
from engine.core import Engine, ReserveRequest
from engine.settings import Settings
from tests.core.conftest import campaign
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts its own redis-server: not the fast tier

GIVE_UP_S = 0.3  # the callers' deadline: far shorter than the pause below
PAUSE_MS = 3000  # Redis holds the batch in flight this long


@pytest.fixture
def paused_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def test_requests_given_up_before_their_batch_left_create_nothing(paused_redis: RedisServer) -> None:
    # one call in flight per campaign: while it waits in a paused Redis the others queue behind it
    engine = Engine.from_settings(Settings(redis_url=paused_redis.url, redis_timeout_s=10.0, batch_inflight=1))
    admin = redis.Redis(port=paused_redis.port)
    deadlines = Deadlines(GIVE_UP_S, tick_s=0.02)  # the API's own deadline timer
    try:
        await engine.load_campaign(campaign())
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")  # scripts wait; our reads do not
        first = asyncio.create_task(engine.reserve("c1", ReserveRequest("u0", "p1", 1, "first", "shop")))
        await asyncio.sleep(0.2)  # the first batch is out, held by the pause

        async def caller(i: int) -> str:
            try:
                await deadlines.run(engine.reserve("c1", ReserveRequest(f"u{i}", "p1", 1, f"late-{i}", "shop")))
            except TimeoutError:
                return "timed out"
            return "served"

        late = await asyncio.gather(*(caller(i) for i in range(1, 21)))
        assert late == ["timed out"] * 20  # every one was told it failed, while Redis was paused
        admin.execute_command("CLIENT", "UNPAUSE")
        assert not (await first).replayed  # the batch that had left stands
        after = await engine.reserve("c1", ReserveRequest("u99", "p1", 1, "after", "shop"))
        assert after.reservation.units == 1  # and the batcher goes on

        k = keys.CampaignKeys("c1")
        assert (await engine.counters("c1")).held == 2  # first and after: none of the 20
        assert admin.hlen(k.reservations) == 2
        assert admin.hkeys(k.idempotency) and all(b"late" not in f for f in admin.hkeys(k.idempotency))
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        await engine.close()
