"""Every endpoint of docs/API.md and its status codes, against a real `flashsale serve` process."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import definition, error_code, new_id, reserve
from tests.support.processes import admin_headers, storefront_headers

SF = storefront_headers()
ADMIN = admin_headers()
RESERVATION_FIELDS = {"reservation_id", "campaign_id", "product_id", "user_id", "units", "amount", "state",
                      "expires_at"}


def test_health_ready_and_spec(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    sweeper = r.json()["sweeper"]  # this worker's sweeper has ticked, and lately
    assert 0 <= sweeper["last_tick_age_s"] <= sweeper["stale_after_s"]
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/campaigns/{cid}/reservations" in spec["paths"]


def test_put_creates_replaces_and_refuses_an_open_campaign(client: httpx.Client) -> None:
    cid = new_id()
    d = definition(cid, opens_in_s=3600)
    r = client.put(f"/v1/campaigns/{cid}", json=d, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "scheduled" and r.json()["total_units"] == 100
    d["title"] = "replaced"
    r = client.put(f"/v1/campaigns/{cid}", json=d, headers=ADMIN)
    assert r.status_code == 200 and r.json()["title"] == "replaced"

    open_cid = new_id()
    assert client.put(f"/v1/campaigns/{open_cid}", json=definition(open_cid), headers=ADMIN).status_code == 201
    r = client.put(f"/v1/campaigns/{open_cid}", json=definition(open_cid), headers=ADMIN)
    assert r.status_code == 409 and error_code(r) == "INVALID_STATE"


def test_put_names_the_bad_field(client: httpx.Client) -> None:
    cid = new_id()
    d = definition(cid)
    d["products"][1]["total_units"] = 10**6  # more than the tranche of 100
    r = client.put(f"/v1/campaigns/{cid}", json=d, headers=ADMIN)
    assert r.status_code == 422 and error_code(r) == "INVALID"
    assert r.json()["error"]["details"]["field"] == "products[1].total_units"
    r = client.put(f"/v1/campaigns/{cid}", json={**definition(cid), "id": "other"}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "id"
    r = client.put(f"/v1/campaigns/{cid}", json={**definition(cid), "opens_at": "1960-01-01T00:00:00Z"},
                   headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "opens_at"
    r = client.put(f"/v1/campaigns/{cid}", content=b"[1]", headers=ADMIN)
    assert r.status_code == 400 and error_code(r) == "BAD_REQUEST"
    assert client.get(f"/v1/campaigns/{cid}", headers=ADMIN).status_code == 404  # nothing was created


def test_get_campaign_for_storefront_and_admin(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    for headers in (SF, storefront_headers("shop-b"), ADMIN):
        r = client.get(f"/v1/campaigns/{cid}", headers=headers)
        assert r.status_code == 200
        body = r.json()
        assert body["id"] == cid and body["state"] == "open" and body["unit_price"] == 10000
        assert [p["id"] for p in body["products"]] == ["p1", "p2"]
    r = client.get(f"/v1/campaigns/{new_id()}", headers=SF)
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"


def test_kill_switch_pause_resume_close(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    r = client.post(f"/v1/campaigns/{cid}/pause", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "paused"
    r = reserve(client, cid)
    assert r.status_code == 409 and error_code(r) == "PAUSED"
    r = client.post(f"/v1/campaigns/{cid}/resume", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "open"
    assert reserve(client, cid).status_code == 201
    r = client.post(f"/v1/campaigns/{cid}/close", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "closed"
    r = reserve(client, cid)
    assert r.status_code == 409 and error_code(r) == "CLOSED"
    r = client.post(f"/v1/campaigns/{cid}/resume", headers=ADMIN)
    assert r.status_code == 409 and error_code(r) == "INVALID_STATE"
    for action in ("pause", "resume", "close"):
        r = client.post(f"/v1/campaigns/{new_id()}/{action}", headers=ADMIN)
        assert r.status_code == 404 and error_code(r) == "NOT_FOUND"


def test_reserve_then_replay_and_key_reuse(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    key = uuid.uuid4().hex
    r = reserve(client, cid, units=3, key=key)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == RESERVATION_FIELDS
    assert body | {"reservation_id": "", "expires_at": ""} == {
        "reservation_id": "", "campaign_id": cid, "product_id": "p1", "user_id": "u1", "units": 3,
        "amount": 30000, "state": "held", "expires_at": ""}
    again = reserve(client, cid, units=3, key=key)
    assert again.status_code == 200 and again.content == r.content  # the replay: the same body
    reused = reserve(client, cid, units=2, key=key)
    assert reused.status_code == 409 and error_code(reused) == "IDEMPOTENCY_KEY_REUSED"
    other_shop = reserve(client, cid, units=2, key=key, shop="shop-b")  # keys are scoped per storefront
    assert other_shop.status_code == 201 and other_shop.json()["reservation_id"] != body["reservation_id"]
    stats = client.get(f"/v1/campaigns/{cid}/stats", headers=SF).json()
    assert stats["held_units"] == 5


def test_reserve_rejections(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign(total_units=12, user_cap_units=8, products=[
        {"id": "p1", "title": "a", "total_units": 10, "user_cap_units": 5},
        {"id": "p2", "title": "b", "total_units": 12}])
    r = reserve(client, cid, product="nope")
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    r = reserve(client, new_id())
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    r = reserve(client, cid, user="a", product="p1", units=6)  # p1 caps a user at 5
    assert r.status_code == 409 and error_code(r) == "USER_CAP_EXCEEDED"
    assert r.json()["error"]["details"]["allowed"] == 5
    assert reserve(client, cid, user="a", product="p1", units=5).status_code == 201
    r = reserve(client, cid, user="a", product="p2", units=4)  # the campaign caps a user at 8
    assert r.status_code == 409 and r.json()["error"]["details"]["allowed"] == 3
    assert reserve(client, cid, user="b", product="p2", units=6).status_code == 201
    r = reserve(client, cid, user="c", product="p2", units=3)  # 12 - 11 = 1 left
    assert r.status_code == 409 and error_code(r) == "INSUFFICIENT_STOCK"
    assert r.json()["error"]["details"]["remaining"] == 1
    assert reserve(client, cid, user="c", product="p2", units=1).status_code == 201
    r = reserve(client, cid, user="d", product="p1", units=1)
    assert r.status_code == 409 and error_code(r) == "SOLD_OUT"


def test_not_open_yet(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign(opens_in_s=3600)
    r = reserve(client, cid)
    assert r.status_code == 409 and error_code(r) == "NOT_OPEN"


def test_rate_limited_with_retry_after(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign(rate_limit={"per_second": 1, "burst": 2}, user_cap_units=None)
    codes = [reserve(client, cid, user="eager").status_code for _ in range(2)]
    assert codes == [201, 201]
    r = reserve(client, cid, user="eager")
    assert r.status_code == 429 and error_code(r) == "RATE_LIMITED"
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["details"]["retry_after_ms"] > 0
    assert reserve(client, cid, user="patient").status_code == 201  # per user


def test_get_confirm_cancel(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    rid = reserve(client, cid, units=2).json()["reservation_id"]
    base = f"/v1/campaigns/{cid}/reservations/{rid}"
    r = client.get(base, headers=SF)
    assert r.status_code == 200 and r.json()["state"] == "held"
    r = client.post(f"{base}/confirm", json={"payment_ref": "pay-1"}, headers=SF)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "confirmed" and body["payment_ref"] == "pay-1" and "confirmed_at" in body
    again = client.post(f"{base}/confirm", json={"payment_ref": "pay-1"}, headers=SF)
    assert again.status_code == 200 and again.json() == body
    r = client.post(f"{base}/confirm", json={"payment_ref": "pay-2"}, headers=SF)
    assert r.status_code == 409 and error_code(r) == "INVALID_STATE"
    r = client.post(f"{base}/cancel", headers=SF)
    assert r.status_code == 409 and error_code(r) == "INVALID_STATE"
    assert client.get(base, headers=SF).json()["state"] == "confirmed"

    rid2 = reserve(client, cid, units=1).json()["reservation_id"]
    base2 = f"/v1/campaigns/{cid}/reservations/{rid2}"
    r = client.post(f"{base2}/cancel", headers=SF)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.post(f"{base2}/cancel", headers=SF).json() == r.json()
    r = client.post(f"{base2}/confirm", json={"payment_ref": "late"}, headers=SF)
    assert r.status_code == 409 and error_code(r) == "INVALID_STATE"

    missing = f"/v1/campaigns/{cid}/reservations/{'a' * 24}"
    for r in (client.get(missing, headers=SF), client.post(f"{missing}/cancel", headers=SF),
              client.post(f"{missing}/confirm", json={"payment_ref": "x"}, headers=SF)):
        assert r.status_code == 404 and error_code(r) == "NOT_FOUND"


def test_holdings_and_stats(client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    rid = reserve(client, cid, user="h", product="p1", units=2).json()["reservation_id"]
    reserve(client, cid, user="h", product="p2", units=3)
    client.post(f"/v1/campaigns/{cid}/reservations/{rid}/confirm", json={"payment_ref": "p"}, headers=SF)
    r = client.get(f"/v1/campaigns/{cid}/users/h", headers=SF)
    assert r.status_code == 200
    assert r.json() == {"campaign_id": cid, "user_id": "h", "held_units": 3, "confirmed_units": 2, "products": [
        {"product_id": "p1", "held_units": 0, "confirmed_units": 2},
        {"product_id": "p2", "held_units": 3, "confirmed_units": 0}]}
    assert client.get(f"/v1/campaigns/{new_id()}/users/h", headers=SF).status_code == 404
    for headers in (SF, ADMIN):
        s = client.get(f"/v1/campaigns/{cid}/stats", headers=headers)
        assert s.status_code == 200
        body = s.json()
        assert (body["campaign_id"], body["state"], body["total_units"]) == (cid, "open", 100)
        assert (body["sold_units"], body["held_units"], body["remaining_units"]) == (2, 3, 95)
    r = client.get(f"/v1/campaigns/{new_id()}/stats", headers=SF)
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"


def test_request_id_echoed_or_generated(client: httpx.Client) -> None:
    r = client.get("/healthz", headers={"X-Request-Id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    a, b = client.get("/healthz"), client.get("/nope")
    assert a.headers["x-request-id"] and b.headers["x-request-id"] and a.headers["x-request-id"] != b.headers[
        "x-request-id"]
    assert b.status_code == 404 and error_code(b) == "NOT_FOUND"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/v1/campaigns/x", {"GET", "HEAD", "PUT"}),
    ("GET", "/v1/campaigns/x/reservations", {"POST"}),
])
def test_method_not_allowed(client: httpx.Client, method: str, path: str, allow: set[str]) -> None:
    r = client.request(method, path, headers=SF)
    assert r.status_code == 405 and error_code(r) == "METHOD_NOT_ALLOWED"
    assert {m.strip() for m in r.headers["allow"].split(",")} == allow
