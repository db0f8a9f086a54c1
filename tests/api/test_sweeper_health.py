"""The expiry sweeper cannot die silently, seen from outside a real two-worker server: a campaign
whose holds cannot be expired is logged (once in a while) while the others are still swept; its
last good tick shows in /readyz and /metrics; a sweeper that cannot write makes /readyz fail."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
import redis

from engine import keys
from tests.api.conftest import definition, error_code, new_id, reserve
from tests.ops.promtext import Samples
from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts its own redis-server: not the fast tier

PATIENCE_S = 30.0  # how long the test waits for the sweeper on a loaded machine before failing
LAST_SUCCESS = "flashsale_sweeper_last_success_timestamp_seconds"


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, ApiServer]]:
    redis_server = RedisServer().start()
    api = ApiServer(redis_server.url, workers=2, FLASHSALE_SWEEP_INTERVAL="0.05").start()
    yield redis_server, api
    api.stop()
    redis_server.stop()


def _until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _metrics(c: httpx.Client) -> Samples:
    return Samples(c.get("/metrics", headers=admin_headers()).text)


def test_a_broken_campaign_is_logged_the_others_swept_and_the_last_good_tick_shown(
        servers: tuple[RedisServer, ApiServer]) -> None:
    redis_server, api = servers
    r = redis.Redis(port=redis_server.port)
    with httpx.Client(base_url=api.url, timeout=10) as c:
        good, broken = new_id(), new_id()
        for cid, hold in ((good, 1), (broken, 900)):
            d = definition(cid, hold_seconds=hold)
            assert c.put(f"/v1/campaigns/{cid}", json=d, headers=admin_headers()).status_code == 201
        _until(lambda: _metrics(c).get(LAST_SUCCESS, 0) > 0, "a first good tick")
        r.set(keys.CampaignKeys(broken).holds, "not a zset")  # WRONGTYPE in expire.lua, every tick
        broke_at = time.time()
        assert reserve(c, good).status_code == 201

        def swept() -> bool:
            stats = c.get(f"/v1/campaigns/{good}/stats", headers=storefront_headers()).json()
            return stats["held_units"] == 0

        _until(swept, "the good campaign's hold to be released")
        time.sleep(1.0)
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        sweeper = ready.json()["sweeper"]
        assert sweeper["last_tick_age_s"] <= sweeper["stale_after_s"]  # ticking: still ready
        assert sweeper["last_good_tick_age_s"] >= 1.0 and sweeper["failures_total"] > 0
        samples = _metrics(c)
        stood_still = samples.get(LAST_SUCCESS)
        assert stood_still <= broke_at + 0.5  # no good tick since the campaign broke
        assert samples.get("flashsale_sweeper_errors_total") > 10
        logged = [orjson.loads(line) for line in api.output().splitlines() if line.startswith("{")]
        lines = [e for e in logged if e.get("campaign") == broken]
        assert 1 <= len(lines) <= 2, lines  # one per worker per 10 s, not one per tick
        assert all(e["level"] == "error" and e["error"] == "ResponseError" and "WRONGTYPE" in e["msg"]
                   for e in lines), lines

        r.delete(keys.CampaignKeys(broken).holds)  # repaired: the next tick is good again
        _until(lambda: _metrics(c).get(LAST_SUCCESS) > stood_still, "a good tick after the repair")
        assert api.alive() and "Traceback" not in api.output()
    r.close()


def test_readyz_fails_while_the_sweeper_cannot_write(servers: tuple[RedisServer, ApiServer]) -> None:
    """Redis answers reads (PING, SCRIPT EXISTS) but holds every write: the sweeper's expire calls
    time out, no tick completes, and /readyz says so (503) until writes go through again."""
    redis_server, api = servers
    r = redis.Redis(port=redis_server.port)
    with httpx.Client(base_url=api.url, timeout=10) as c:
        cid = new_id()
        d = definition(cid, hold_seconds=1)
        assert c.put(f"/v1/campaigns/{cid}", json=d, headers=admin_headers()).status_code == 201
        assert reserve(c, cid).status_code == 201
        r.execute_command("CLIENT", "PAUSE", 8000, "WRITE")  # the hold falls due within the pause
        try:
            def stale() -> bool:
                answer = c.get("/readyz")
                return answer.status_code == 503 and error_code(answer) == "UNAVAILABLE" and \
                    "sweeper" in answer.json()["error"]["details"]

            _until(stale, "/readyz to report a stalled sweeper")
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
        _until(lambda: c.get("/readyz").status_code == 200, "/readyz to be ready again")
        assert c.get(f"/v1/campaigns/{cid}/stats", headers=storefront_headers()).json()["held_units"] in (0, 1)
    r.close()
