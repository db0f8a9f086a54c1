"""The micro-batcher and the lean wire, on their own."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from engine.core import Engine, ReserveRequest
from engine.core.batcher import Batcher
from engine.core.wire import Wire, command
from engine.errors import StorageUnavailable
from engine.settings import Settings
from tests.core.conftest import campaign
from tests.support.servers import free_port, redis_server_binary


class Recorder:
    """A batch call that echoes each request's values doubled, and records the batches."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.fail_on = fail_on
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, argv: list[Any]) -> Sequence[Any]:
        self.batches.append(argv)
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in argv[1:]:
            raise ConnectionError("boom")
        return [v * 2 for v in argv[1:] for _ in range(2)]  # stride_out 2 per 1 value in


async def test_batcher_groups_keeps_order_and_slices_results() -> None:
    rec = Recorder()
    b = Batcher(rec, stride_in=1, stride_out=2, max_batch=4, max_inflight=2)
    out = await asyncio.gather(*(b.submit((i,)) for i in range(10)))
    assert [list(o) for o in out] == [[2 * i, 2 * i] for i in range(10)]
    assert [argv[0] for argv in rec.batches] == [len(argv) - 1 for argv in rec.batches]  # n first
    assert [v for argv in rec.batches for v in argv[1:]] == list(range(10))  # arrival order
    assert max(argv[0] for argv in rec.batches) <= 4


async def test_batcher_respects_inflight_and_queues_the_rest() -> None:
    rec = Recorder()
    rec.release.clear()
    b = Batcher(rec, stride_in=1, stride_out=2, max_batch=3, max_inflight=2)
    futs = [b.submit((i,)) for i in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(rec.batches) == 2  # two calls out, the rest wait for one to return
    rec.release.set()
    await asyncio.gather(*futs)
    assert [v for argv in rec.batches for v in argv[1:]] == list(range(10))


async def test_batcher_failure_reaches_every_waiter_of_that_batch_only() -> None:
    rec = Recorder(fail_on=2)
    b = Batcher(rec, stride_in=1, stride_out=2, max_batch=3, max_inflight=1)
    out = await asyncio.gather(*(b.submit((i,)) for i in range(6)), return_exceptions=True)
    assert [isinstance(o, ConnectionError) for o in out] == [True] * 3 + [False] * 3
    assert list(await b.submit((7,))) == [14, 14]  # and carries on


async def test_batcher_survives_a_cancelled_waiter() -> None:
    rec = Recorder()
    rec.release.clear()
    b = Batcher(rec, stride_in=1, stride_out=2, max_batch=8, max_inflight=1)
    futs = [b.submit((i,)) for i in range(3)]
    await asyncio.sleep(0)
    futs[1].cancel()
    rec.release.set()
    assert list(await futs[0]) == [0, 0] and list(await futs[2]) == [4, 4]


async def test_wire_basics(redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    w = Wire(port=port, timeout_s=5)
    try:
        assert await w.call(command("SET", "a", 1)) == b"OK"
        assert await asyncio.gather(*(w.call(command("INCR", "n")) for _ in range(100))) == list(range(1, 101))
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await w.call(command("HGET", "a", "f"))
        with pytest.raises(NoScriptError):
            await w.call(command("EVALSHA", "0" * 40, 0))
        assert await w.call(command("GET", "a")) == b"1"  # an error reply leaves the pipeline in step
    finally:
        w.close()


@pytest.fixture
def password_redis() -> Any:
    """A private redis-server that requires a password, and an ACL user ``bob``."""
    port = free_port()
    d = tempfile.mkdtemp(prefix="fs-redis-auth-")
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", d, "--requirepass", "s3cret"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password="s3cret")
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    client.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "~*", "+@all")
    client.close()
    yield port
    proc.kill()
    proc.wait()
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("auth", [":s3cret@", "bob:pw@"])
@pytest.mark.needs_services  # starts its own redis-server
async def test_engine_authenticates_and_selects_the_database(password_redis: int, auth: str) -> None:
    url = f"redis://{auth}127.0.0.1:{password_redis}/2"
    e = Engine.from_settings(Settings(redis_url=url))
    try:
        assert e.wire is not None
        await e.load_campaign(campaign())
        o = await e.reserve("c1", ReserveRequest("u1", "p1", 1, "k", "shop"))
        done = await e.confirm("c1", o.reservation.reservation_id, "pay", storefront="shop")
        assert done.reservation.state == "confirmed"
    finally:
        await e.close()
    check = redis.Redis(port=password_redis, password="s3cret", db=2)
    assert check.hlen("fs:{c:c1}:res") == 1
    check.close()


@pytest.mark.needs_services  # starts its own redis-server
async def test_wrong_password_is_storage_unavailable(password_redis: int) -> None:
    e = Engine.from_settings(Settings(redis_url=f"redis://:wrong@127.0.0.1:{password_redis}/0"))
    try:
        with pytest.raises(StorageUnavailable):
            await e.reserve("c1", ReserveRequest("u1", "p1", 1, "k", "shop"))
    finally:
        await e.close()
