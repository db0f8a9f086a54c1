"""Bearer tokens: missing or wrong -> 401; the wrong kind of token -> 403; the right one passes."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import error_code
from tests.support.processes import ADMIN_TOKEN, STOREFRONT_TOKENS, admin_headers, storefront_headers

ADMIN_CALLS = [("PUT", "/v1/campaigns/{cid}"), ("POST", "/v1/campaigns/{cid}/pause"),
               ("POST", "/v1/campaigns/{cid}/resume"), ("POST", "/v1/campaigns/{cid}/close")]
STOREFRONT_CALLS = [("POST", "/v1/campaigns/{cid}/reservations"),
                    ("GET", "/v1/campaigns/{cid}/reservations/aaaa"),
                    ("POST", "/v1/campaigns/{cid}/reservations/aaaa/confirm"),
                    ("POST", "/v1/campaigns/{cid}/reservations/aaaa/cancel"),
                    ("GET", "/v1/campaigns/{cid}/users/u1")]
SHARED_CALLS = [("GET", "/v1/campaigns/{cid}"), ("GET", "/v1/campaigns/{cid}/stats")]
EVERY_CALL = ADMIN_CALLS + STOREFRONT_CALLS + SHARED_CALLS
BAD_AUTH = {
    "missing": {},
    "wrong token": {"Authorization": "Bearer nope"},
    "bearer alone": {"Authorization": "Bearer"},
    "basic scheme": {"Authorization": f"Basic {STOREFRONT_TOKENS['shop-a']}"},
    "token alone": {"Authorization": STOREFRONT_TOKENS["shop-a"]},
    "token prefix": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    "token longer": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
}


@pytest.fixture
def cid(new_campaign: Callable[..., str]) -> str:
    return new_campaign()


@pytest.mark.parametrize("bad", BAD_AUTH, ids=list(BAD_AUTH))
@pytest.mark.parametrize(("method", "path"), EVERY_CALL, ids=[f"{m} {p}" for m, p in EVERY_CALL])
def test_missing_or_wrong_token_is_401(client: httpx.Client, cid: str, method: str, path: str, bad: str) -> None:
    headers = {**BAD_AUTH[bad], "Idempotency-Key": "k"}
    r = client.request(method, path.format(cid=cid), headers=headers, json={})
    assert r.status_code == 401, r.text
    assert error_code(r) == "UNAUTHENTICATED"
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("shop", list(STOREFRONT_TOKENS))
@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS, ids=[f"{m} {p}" for m, p in ADMIN_CALLS])
def test_storefront_token_on_admin_call_is_403(client: httpx.Client, cid: str, method: str, path: str,
                                               shop: str) -> None:
    r = client.request(method, path.format(cid=cid), headers=storefront_headers(shop), json={})
    assert r.status_code == 403 and error_code(r) == "FORBIDDEN"
    assert client.get(f"/v1/campaigns/{cid}", headers=admin_headers()).json()["state"] == "open"  # unchanged


@pytest.mark.parametrize(("method", "path"), STOREFRONT_CALLS, ids=[f"{m} {p}" for m, p in STOREFRONT_CALLS])
def test_admin_token_on_storefront_call_is_403(client: httpx.Client, cid: str, method: str, path: str) -> None:
    r = client.request(method, path.format(cid=cid), headers={**admin_headers(), "Idempotency-Key": "k"},
                       json={"user_id": "u1", "product_id": "p1", "units": 1})
    assert r.status_code == 403 and error_code(r) == "FORBIDDEN"


@pytest.mark.parametrize(("method", "path"), SHARED_CALLS, ids=[f"{m} {p}" for m, p in SHARED_CALLS])
def test_reads_open_to_both(client: httpx.Client, cid: str, method: str, path: str) -> None:
    for headers in (storefront_headers("shop-a"), storefront_headers("shop-b"), admin_headers(),
                    {"Authorization": f"bearer {ADMIN_TOKEN}"}):
        assert client.request(method, path.format(cid=cid), headers=headers).status_code == 200


def test_ops_routes_need_no_token(client: httpx.Client) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(path).status_code == 200
