"""Redis killed or frozen under a running API: a fast 503, /readyz not ready, recovery by itself.

Each test runs its own durable Redis (AOF always) and its own server, so the durability check at
start-up passes without --allow-volatile-redis, and the campaign survives the Redis restart.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.api.conftest import definition, error_code, new_id
from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts its own servers

#: A generous bound, not a timing assertion: a server that hangs instead of answering 503 makes
#: the client give up, and the test fails on the exception rather than on a stopwatch.
CLIENT_TIMEOUT_S = 10


@pytest.fixture
def durable() -> Iterator[tuple[RedisServer, ApiServer]]:
    redis = RedisServer(durable=True).start()
    api = ApiServer(redis.url, FLASHSALE_ALLOW_VOLATILE_REDIS="").start()
    yield redis, api
    api.stop()
    redis.stop()


def _reserve(c: httpx.Client, cid: str, key: str, user: str = "u1") -> httpx.Response:
    return c.post(f"/v1/campaigns/{cid}/reservations", json={"user_id": user, "product_id": "p1", "units": 1},
                  headers=storefront_headers("shop-a", key))


def _wait_ready(c: httpx.Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("the API did not become ready again after Redis came back")


def test_redis_killed_then_back(durable: tuple[RedisServer, ApiServer]) -> None:
    redis, api = durable
    with httpx.Client(base_url=api.url, timeout=CLIENT_TIMEOUT_S) as c:
        cid = new_id()
        assert c.put(f"/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers()).status_code == 201
        first = _reserve(c, cid, "before")
        assert first.status_code == 201

        redis.kill()
        key = uuid.uuid4().hex
        for _ in range(3):
            r = _reserve(c, cid, key)
            assert r.status_code == 503 and error_code(r) == "UNAVAILABLE", r.text
            assert r.headers["retry-after"] == "1" and r.headers["x-request-id"]
        for path in (f"/v1/campaigns/{cid}", f"/v1/campaigns/{cid}/stats", f"/v1/campaigns/{cid}/users/u1"):
            assert c.get(path, headers=storefront_headers()).status_code == 503
        r = c.get("/readyz")
        assert r.status_code == 503 and error_code(r) == "UNAVAILABLE"
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        assert "Traceback" not in api.output()
        logged = [orjson.loads(line) for line in api.output().splitlines() if line.startswith("{")]
        outage = [e for e in logged if e.get("status") == 503]
        assert outage and outage[0]["level"] == "warning" and outage[0]["request_id"] != "-"

        redis.start()  # same port, same AOF directory
        _wait_ready(c)
        retried = _reserve(c, cid, key)  # the retry with the same key creates it, once
        assert retried.status_code == 201, retried.text
        replay = _reserve(c, cid, key)
        assert replay.status_code == 200 and replay.json() == retried.json()
        assert _reserve(c, cid, "before").json() == first.json()  # acknowledged before the crash: kept
        stats = c.get(f"/v1/campaigns/{cid}/stats", headers=storefront_headers()).json()
        assert stats["held_units"] == 2


def test_redis_frozen_answers_503_not_a_hang(durable: tuple[RedisServer, ApiServer]) -> None:
    redis, api = durable
    assert redis.proc is not None
    with httpx.Client(base_url=api.url, timeout=CLIENT_TIMEOUT_S) as c:
        cid = new_id()
        assert c.put(f"/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers()).status_code == 201
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            r = _reserve(c, cid, "frozen")
            assert r.status_code == 503 and error_code(r) == "UNAVAILABLE", r.text
            assert c.get("/readyz").status_code == 503
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        _wait_ready(c)
        # the frozen request may or may not have been applied when Redis woke: the key settles it
        r = _reserve(c, cid, "frozen")
        assert r.status_code in (200, 201)
        assert _reserve(c, cid, "frozen").json() == r.json()
        assert c.get(f"/v1/campaigns/{cid}/stats", headers=storefront_headers()).json()["held_units"] == 1


def test_refuses_a_volatile_redis_unless_allowed(redis_server: RedisServer) -> None:
    api = ApiServer(redis_server.url, FLASHSALE_ALLOW_VOLATILE_REDIS="")
    with pytest.raises(RuntimeError, match="refusing to start: no AOF") as err:
        api.start()
    assert "--allow-volatile-redis" in str(err.value)
    api.stop()
