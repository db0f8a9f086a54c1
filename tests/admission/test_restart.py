"""A Redis crash during the pre-queue or during admission (durable profile: AOF, fsync always)
loses no ticket and no position: every acknowledged join is there after a SIGKILL and a restart,
with its draw, and the order fixed at the opening is the one the tickets taken before the crash
imply; admitted tickets stay admitted as they were, and admission goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from engine.admission import AdmissionService, Buyer, Keyring, Verified
from engine.admission.queue import recompute
from engine.campaign import parse
from engine.core import Engine, ReserveRequest
from engine.settings import Settings
from tests.admission.conftest import KEYS, definition
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # each test starts its own redis-server


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


def _ms(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


async def test_a_redis_crash_during_admission_loses_no_ticket_position_or_admission(durable: RedisServer) -> None:
    """Mid-admission (pre-queue and later tickets, some admitted, some first polls noted, a live
    rate change, reservations on tokens), Redis is killed and restarted on its AOF. A fresh worker
    then finds every ticket at its position under the same seed, every admitted ticket admitted at
    the same instant with the same token expiry, the holds in place, and the waiting room goes on:
    the rest are admitted in position order at the changed rate, and a new ticket goes last."""
    opens_in_s, n_pre, rate = 2.0, 60, 10
    started = time.monotonic()
    engine = Engine.from_settings(Settings(redis_url=durable.url, redis_timeout_s=10.0))
    ring = Keyring.parse(KEYS)
    try:
        await engine.load_campaign(parse(definition("c1", opens_in_ms=int(opens_in_s * 1000),
                                                    admit_per_second=rate, total_units=1000)))
        service = AdmissionService(engine, ring)
        tickets = {f"u{i}": (await service.join("c1", f"u{i}", Buyer(), "shop-a"))[0] for i in range(n_pre)}
        assert time.monotonic() - started < opens_in_s - 0.3, "the machine is too slow for this test's pre-queue"
        await asyncio.sleep(max(0.0, opens_in_s + 1.0 - (time.monotonic() - started)))  # ~10 admitted
        for i in range(3):
            tickets[f"late{i}"] = (await service.join("c1", f"late{i}", Buyer(), "shop-a"))[0]
        await service.set_rate("c1", 2 * rate)
        before = {u: await service.poll("c1", t, "shop-a") for u, t in tickets.items()}
        admitted = [u for u, v in before.items() if v["state"] == "admitted"]
        assert 3 <= len(admitted) < n_pre, "the crash must come mid-admission"
        for u in admitted[:3]:
            verified = ring.verify(before[u]["admission_token"], "c1", u)
            assert isinstance(verified, Verified)
            await engine.reserve("c1", ReserveRequest(u, "p1", 1, f"k-{u}", "shop-a", None, verified))
        exported = await service.export("c1")
    finally:
        await engine.close()
    durable.kill()  # SIGKILL, as a crash would
    durable.start()
    engine = Engine.from_settings(Settings(redis_url=durable.url, redis_timeout_s=10.0))
    try:
        service = AdmissionService(engine, ring)  # a fresh worker: nothing from before in memory
        again = await service.export("c1")
        assert {k: v for k, v in again.items() if k != "as_of"} == {k: v for k, v in exported.items() if k != "as_of"}
        assert again["seed"] is not None and recompute(again) == [t["user_id"] for t in again["tickets"]]
        assert (await engine.counters("c1")).held == 3
        for u, t in tickets.items():
            v = await service.poll("c1", t, "shop-a")
            assert v["position"] == before[u]["position"]
            if u in admitted:  # the same admission, the same token expiry (the first poll survived)
                assert (v["state"], v["admitted_at"], v["token_expires_at"]) == (
                    "admitted", before[u]["admitted_at"], before[u]["token_expires_at"])
        # the waiting room goes on at the rate set before the crash: 63 positions by opens + 1 s + ~2.7 s
        await asyncio.sleep(max(0.0, opens_in_s + 4.5 - (time.monotonic() - started)))
        after = {u: await service.poll("c1", t, "shop-a") for u, t in tickets.items()}
        assert all(v["state"] == "admitted" for v in after.values()), [u for u, v in after.items()
                                                                          if v["state"] != "admitted"]
        by_position = sorted(after.values(), key=lambda v: int(v["position"]))
        assert [v["position"] for v in by_position] == list(range(1, n_pre + 4))
        instants = [_ms(v["admitted_at"]) for v in by_position]
        assert instants == sorted(instants)
        assert {u for u, v in after.items() if v["position"] > n_pre} == {"late0", "late1", "late2"}
        u = next(u for u in tickets if u not in admitted)
        verified = ring.verify(after[u]["admission_token"], "c1", u)
        assert isinstance(verified, Verified)
        await engine.reserve("c1", ReserveRequest(u, "p1", 1, f"k-{u}", "shop-a", None, verified))
        newcomer, _ = await service.join("c1", "newcomer", Buyer(), "shop-a")
        assert (await service.poll("c1", newcomer, "shop-a"))["position"] == n_pre + 4
    finally:
        await engine.close()
