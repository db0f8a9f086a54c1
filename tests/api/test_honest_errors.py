"""A script error is a 500 INTERNAL logged with the request id, never a 503 that invites retries.

(Redis away is a 503: ``test_outage.py``.)"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import redis

from engine import keys
from tests.api.conftest import error_code, reserve
from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer


def _logged(api: ApiServer, request_id: str) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in api.output().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("request_id") == request_id]


def test_a_script_error_is_500_internal_with_the_request_id_logged(
        client: httpx.Client, new_campaign: Callable[..., str], api_server: ApiServer,
        redis_server: RedisServer) -> None:
    cid = new_campaign()
    held = reserve(client, cid, key="before")
    assert held.status_code == 201, held.text
    r = redis.Redis(port=redis_server.port)
    counters = keys.CampaignKeys(cid).counters
    r.delete(counters)
    r.set(counters, "damaged")  # the campaign's counters turn into a string: WRONGTYPE wherever they are read
    try:
        _answers_500(client, api_server, cid, held.json()["reservation_id"])
        metrics = client.get("/metrics", headers=admin_headers())  # one damaged campaign: not a 500 here
        assert metrics.status_code == 200 and "flashsale_redis_up 1.0" in metrics.text, metrics.text[:500]
        assert f'campaign="{cid}"' not in metrics.text
    finally:
        r.delete(counters)  # the shared server's other tests read every campaign
        r.close()


def _answers_500(client: httpx.Client, api_server: ApiServer, cid: str, rid: str) -> None:
    body = {"user_id": "u2", "product_id": "p1", "units": 1}
    calls = {  # the reserve lane, and the ASGI routes (a batched script, a pipelined read)
        "lane": lambda h: client.post(f"/v1/campaigns/{cid}/reservations", json=body, headers=h),
        "asgi": lambda h: client.post(f"/v1/campaigns/{cid}/reservations/{rid}/cancel", headers=h),
        "read": lambda h: client.get(f"/v1/campaigns/{cid}/stats", headers=h),
    }
    for name, call in calls.items():
        request_id = f"honest-{name}-{cid}"
        headers = {**storefront_headers("shop-a", f"key-{name}"), "X-Request-Id": request_id}
        answer = call(headers)
        assert answer.status_code == 500 and error_code(answer) == "INTERNAL", (name, answer.text)
        assert "retry-after" not in answer.headers
        assert answer.headers["x-request-id"] == request_id
        assert "Traceback" not in answer.text and "WRONGTYPE" not in answer.text
        logged = _logged(api_server, request_id)
        assert any(e["level"] == "error" and "WRONGTYPE" in str(e.get("exc", "")) + str(e["msg"])
                   for e in logged), (name, logged)
