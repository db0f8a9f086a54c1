"""`flashsale serve` killed (SIGKILL, every worker) and started again, once during the pre-queue
and once during admission, loses no ticket and no position: a user joining again gets the ticket
it had, every ticket answers at the position the export gives it, under the seed committed before
the first crash; an admitted ticket keeps its admission instant and its token's expiry, its token
still reserves; and the waiting room goes on, a later ticket going last."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from engine.admission.queue import recompute
from engine.cli import main
from tests.admission.conftest import KEYS, definition
from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts and kills its own flashsale serve

SHOP_A = storefront_headers("shop-a")


def serve(redis: RedisServer) -> ApiServer:
    return ApiServer(redis.url, workers=2, FLASHSALE_ADMISSION_KEYS=KEYS).start()


@pytest.fixture
def servers() -> Iterator[list[ApiServer]]:
    """Every server the test started, stopped at the end (the killed ones are already gone)."""
    started: list[ApiServer] = []
    yield started
    for s in started:
        s.stop()


def poll_all(url: str, cid: str, tickets: dict[str, str]) -> dict[str, dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=10) as c:
        out = {}
        for user, t in tickets.items():
            r = c.get(f"/v1/campaigns/{cid}/queue/{t}", headers=SHOP_A)
            assert r.status_code == 200, (user, r.text)
            out[user] = r.json()
        return out


def join(url: str, cid: str, user: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/campaigns/{cid}/queue", json={"user_id": user}, headers=SHOP_A, timeout=10)


def export(redis: RedisServer, cid: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["export", "queue", cid, "--redis-url", redis.url])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


def test_api_killed_in_the_pre_queue_and_during_admission_loses_no_ticket_or_position(
        redis_server: RedisServer, servers: list[ApiServer]) -> None:
    opens_in_s, n_pre, rate = 20.0, 80, 20
    api = serve(redis_server)
    servers.append(api)
    cid = "restart-api"
    started = time.monotonic()  # the definition places the opening from now
    r = httpx.put(f"{api.url}/v1/campaigns/{cid}", headers=admin_headers(), timeout=10,
                  json=definition(cid, opens_in_ms=int(opens_in_s * 1000), admit_per_second=rate, total_units=1000))
    assert r.status_code == 201, r.text
    seed_sha = httpx.get(f"{api.url}/v1/campaigns/{cid}", headers=SHOP_A).json()["admission"]["seed_sha256"]
    tickets: dict[str, str] = {}
    for i in range(n_pre):
        r = join(api.url, cid, f"u{i}")
        assert r.status_code == 201, r.text
        tickets[f"u{i}"] = r.json()["ticket"]
    before = poll_all(api.url, cid, tickets)  # each worker now holds some tickets in memory
    assert {v["state"] for v in before.values()} == {"waiting"} and {v["position"] for v in before.values()} == {None}

    api.kill()  # the pre-queue: every worker SIGKILLed, as a crash would
    api = serve(redis_server)
    servers.append(api)
    for user, t in tickets.items():  # a user joining again gets its ticket back
        r = join(api.url, cid, user)
        assert r.status_code == 200 and r.json()["ticket"] == t, (user, r.text)
    for i in range(n_pre, n_pre + 10):  # the pre-queue goes on after the restart
        r = join(api.url, cid, f"u{i}")
        assert r.status_code == 201, r.text
        tickets[f"u{i}"] = r.json()["ticket"]
    view = httpx.get(f"{api.url}/v1/campaigns/{cid}", headers=SHOP_A).json()["admission"]
    assert time.monotonic() - started < opens_in_s - 0.5, "the machine is too slow for this test's pre-queue"
    assert view["seed_sha256"] == seed_sha and "seed" not in view  # the same commitment, not revealed

    time.sleep(max(0.0, opens_in_s + 1.5 - (time.monotonic() - started)))  # ~30 of 90 admitted
    for i in range(3):
        r = join(api.url, cid, f"late{i}")
        assert r.status_code == 201, r.text
        tickets[f"late{i}"] = r.json()["ticket"]
    during = poll_all(api.url, cid, tickets)
    fixed = export(redis_server, cid)
    assert fixed["seed"] is not None and hashlib.sha256(fixed["seed"].encode()).hexdigest() == seed_sha
    assert recompute(fixed) == [t["user_id"] for t in fixed["tickets"]]
    positions = {t["user_id"]: t["position"] for t in fixed["tickets"]}
    assert positions == {u: v["position"] for u, v in during.items()}
    assert sorted(positions[f"late{i}"] for i in range(3)) == [n_pre + 11, n_pre + 12, n_pre + 13]
    admitted = [u for u, v in during.items() if v["state"] == "admitted"]
    assert 3 <= len(admitted) < n_pre, "the crash must come mid-admission"
    reserve = f"/v1/campaigns/{cid}/reservations"

    def hold(user: str, token: str) -> httpx.Response:
        return httpx.post(f"{api.url}{reserve}", json={"user_id": user, "product_id": "p1", "units": 1},
                          headers={**storefront_headers("shop-a", f"k-{user}"), "Admission-Token": token}, timeout=10)

    for u in admitted[:2]:
        r = hold(u, during[u]["admission_token"])
        assert r.status_code == 201, r.text

    api.kill()  # during admission
    api = serve(redis_server)
    servers.append(api)
    after = poll_all(api.url, cid, tickets)
    assert {u: v["position"] for u, v in after.items()} == positions
    for u in admitted:  # the same admission, the same token expiry
        assert (after[u]["state"], after[u]["admitted_at"], after[u]["token_expires_at"]) == (
            "admitted", during[u]["admitted_at"], during[u]["token_expires_at"]), u
    u = admitted[2]  # a token handed out before the crash still reserves, for its user only
    r = hold(u, during[u]["admission_token"])
    assert r.status_code == 201, r.text
    other = next(x for x in tickets if x not in admitted)
    r = hold(other, during[u]["admission_token"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "ADMISSION_INVALID", r.text
    assert export(redis_server, cid)["tickets"] == fixed["tickets"]
    r = join(api.url, cid, "newcomer")
    assert r.status_code == 201 and r.json()["position"] == n_pre + 14, r.text
    stats = httpx.get(f"{api.url}/v1/campaigns/{cid}/stats", headers=SHOP_A).json()
    assert stats["held_units"] == 3 and stats["queue"]["seed_sha256"] == seed_sha
