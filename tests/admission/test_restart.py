"""A Redis crash during the pre-queue (durable profile: AOF, fsync always) loses no ticket and
no position: every acknowledged join is there after a SIGKILL and a restart, with its draw, and
the order fixed at the opening is the one the tickets taken before the crash imply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from engine.admission import AdmissionService, Buyer, Keyring
from engine.admission.queue import recompute
from engine.campaign import parse
from engine.core import Engine
from engine.settings import Settings
from tests.admission.conftest import KEYS, definition
from tests.support.servers import RedisServer


@pytest.fixture
def durable() -> Iterator[RedisServer]:
    server = RedisServer(durable=True).start()
    yield server
    server.stop()


async def test_a_redis_crash_in_the_pre_queue_loses_no_ticket(durable: RedisServer) -> None:
    opens_in_s = 4.0
    started = time.monotonic()
    engine = Engine.from_settings(Settings(redis_url=durable.url, redis_timeout_s=10.0))
    try:
        await engine.load_campaign(parse(definition("c1", opens_in_ms=int(opens_in_s * 1000), admit_per_second=0)))
        service = AdmissionService(engine, Keyring.parse(KEYS))
        joined = await asyncio.gather(*(service.join("c1", f"u{i}", Buyer(), "shop-a") for i in range(300)))
        before = await service.export("c1")
    finally:
        await engine.close()
    assert time.monotonic() - started < opens_in_s - 0.5, "the machine is too slow for this test's pre-queue"
    durable.kill()  # SIGKILL, as a crash would
    durable.start()
    engine = Engine.from_settings(Settings(redis_url=durable.url, redis_timeout_s=10.0))
    try:
        service = AdmissionService(engine, Keyring.parse(KEYS))
        after_restart = await service.export("c1")
        assert {k: v for k, v in after_restart.items() if k != "as_of"} == \
            {k: v for k, v in before.items() if k != "as_of"}
        await asyncio.sleep(max(0.0, opens_in_s - (time.monotonic() - started)) + 0.1)
        opened = await service.export("c1", page=7)  # read in pages: the same as in one
        assert opened["seed_sha256"] == before["seed_sha256"] and opened["seed"] is not None
        assert opened["tickets"] == (await service.export("c1"))["tickets"]
        assert recompute({**before, "seed": opened["seed"]}) == [t["user_id"] for t in opened["tickets"]]
        for (ticket, _), i in zip(joined, range(300), strict=True):  # every acknowledged ticket answers
            body = await service.poll("c1", ticket, "shop-a")
            assert body["position"] == next(t["position"] for t in opened["tickets"] if t["user_id"] == f"u{i}")
    finally:
        await engine.close()
