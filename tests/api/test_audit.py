"""The audit trail, read from a real server's log output: one line per admin action, refusals too."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import definition, new_id
from tests.support.processes import ADMIN_TOKEN, STOREFRONT_TOKENS, ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[ApiServer]:
    """Its own server (its log is this module's alone), at WARNING: the trail is written anyway."""
    s = ApiServer(redis_server.url, workers=2, FLASHSALE_LOG_LEVEL="WARNING").start()
    yield s
    s.stop()


def audit_lines(server: ApiServer) -> list[dict[str, Any]]:
    out = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "flashsale.audit":
                out.append(record)
    return out


def line_of(server: ApiServer, response: httpx.Response) -> dict[str, Any]:
    """The one audit line carrying this response's request id (it is written once the answer is)."""
    rid = response.headers["x-request-id"]
    for _ in range(100):
        found = [r for r in audit_lines(server) if r["request_id"] == rid]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no audit line for request {rid}:\n{server.output()[-2000:]}")


def test_every_admin_action_writes_one_line_with_who_what_when_and_the_request_id(server: ApiServer) -> None:
    cid = new_id()
    admin = "admin-" + hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:12]
    with httpx.Client(base_url=server.url, timeout=10) as c:
        later = definition(cid, opens_in_s=3600)
        steps = [
            (c.put(f"/v1/campaigns/{cid}", json=later, headers=admin_headers()), "campaign.put", 201),
            (c.put(f"/v1/campaigns/{cid}", json=later, headers=admin_headers()), "campaign.put", 200),
            (c.post(f"/v1/campaigns/{cid}/pause", headers=admin_headers()), "campaign.pause", 200),
            (c.post(f"/v1/campaigns/{cid}/resume", headers=admin_headers()), "campaign.resume", 200),
            (c.post(f"/v1/campaigns/{cid}/close", headers={**admin_headers(), "X-Request-Id": "ops-close-1"}),
             "campaign.close", 200),
            (c.post("/v1/campaigns/no-such-campaign/pause", headers=admin_headers()), "campaign.pause", 404),
        ]
        for response, action, status in steps:
            assert response.status_code == status, response.text
            line = line_of(server, response)
            assert line["action"] == action and line["status"] == status, line
            assert line["who"] == "admin" and line["credential"] == admin, line
            assert line["level"] == "info" and line["msg"] == "admin action"
            assert line["ts"].endswith("Z") and line["method"] == response.request.method
        assert [line_of(server, r)["campaign_id"] for r, _, _ in steps] == [cid] * 5 + ["no-such-campaign"]
        assert line_of(server, steps[4][0])["request_id"] == "ops-close-1"  # the caller's own id is kept


def test_refused_admin_actions_are_in_the_trail_too(server: ApiServer) -> None:
    cid = new_id()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        by_shop = c.post(f"/v1/campaigns/{cid}/pause", headers=storefront_headers("shop-b"))
        anonymous = c.put(f"/v1/campaigns/{cid}", json=definition(cid))
        wrong = c.post(f"/v1/campaigns/{cid}/close", headers={"Authorization": "Bearer not-a-known-token-at-all"})
    assert (by_shop.status_code, anonymous.status_code, wrong.status_code) == (403, 401, 401)
    assert {k: line_of(server, by_shop)[k] for k in ("action", "status", "who", "credential")} == {
        "action": "campaign.pause", "status": 403, "who": "shop-b", "credential": "shop-b"}
    assert {k: line_of(server, anonymous)[k] for k in ("action", "status", "who")} == {
        "action": "campaign.put", "status": 401, "who": "-"}
    assert line_of(server, wrong)["status"] == 401


def test_reads_and_storefront_calls_write_no_audit_line_and_no_token_is_logged(server: ApiServer) -> None:
    cid = new_id()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        put = c.put(f"/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers())
        assert put.status_code == 201
        line_of(server, put)  # written once the answer is: wait for it before counting
        before = len(audit_lines(server))
        reads = [c.get(f"/v1/campaigns/{cid}", headers=admin_headers()),
                 c.get(f"/v1/campaigns/{cid}/stats", headers=admin_headers()),
                 c.post(f"/v1/campaigns/{cid}/reservations", json={"user_id": "u", "product_id": "p1", "units": 1},
                        headers=storefront_headers("shop-a", "k-audit"))]
        assert [r.status_code for r in reads] == [200, 200, 201]
        pause = c.post(f"/v1/campaigns/{cid}/pause", headers=admin_headers())
    line_of(server, pause)
    assert len(audit_lines(server)) == before + 1
    log = server.output()
    for token in (ADMIN_TOKEN, *STOREFRONT_TOKENS.values()):
        assert token not in log
