"""Bad input gets the documented 4xx, names the field, and changes nothing (nothing reaches Redis)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import error_code
from tests.support.processes import STOREFRONT_TOKENS, ApiServer, admin_headers, storefront_headers

GOOD = {"user_id": "u1", "product_id": "p1", "units": 1}
SF = storefront_headers()


@pytest.fixture
def cid(new_campaign: Callable[..., str]) -> str:
    return new_campaign()


def post_raw(client: httpx.Client, path: str, content: bytes | Iterator[bytes], key: str | None = "k1",
             headers: dict[str, str] | None = None) -> httpx.Response:
    h = {**SF, "Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Idempotency-Key"] = key
    return client.post(path, content=content, headers=h)


def assert_nothing_changed(client: httpx.Client, cid: str) -> None:
    stats = client.get(f"/v1/campaigns/{cid}/stats", headers=SF).json()
    assert (stats["held_units"], stats["sold_units"]) == (0, 0)
    assert sum(stats.get("rejections", {}).values()) == 0  # not even a counted rejection: Redis never saw it


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b'{"user_id": "u1",}', b"\xff\xfe", b"[]", b"[1, 2]",
                                  b'"a string"', b"42", b"null", b"true"],
                         ids=["empty", "text", "truncated", "trailing-comma", "not-utf8", "empty-array", "array",
                              "string", "number", "null", "bool"])
def test_not_json_or_not_an_object_is_400(client: httpx.Client, cid: str, body: bytes) -> None:
    r = post_raw(client, f"/v1/campaigns/{cid}/reservations", body)
    assert r.status_code == 400 and error_code(r) == "BAD_REQUEST"
    assert_nothing_changed(client, cid)


INVALID_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("missing-user", {"product_id": "p1", "units": 1}, "user_id"),
    ("missing-units", {"user_id": "u1", "product_id": "p1"}, "units"),
    ("empty-object", {}, "user_id"),
    ("unknown-field", {**GOOD, "price": 1}, "price"),
    ("units-bool", {**GOOD, "units": True}, "units"),
    ("units-float", {**GOOD, "units": 1.0}, "units"),
    ("units-fraction", {**GOOD, "units": 1.5}, "units"),
    ("units-string", {**GOOD, "units": "1"}, "units"),
    ("units-null", {**GOOD, "units": None}, "units"),
    ("units-zero", {**GOOD, "units": 0}, "units"),
    ("units-negative", {**GOOD, "units": -3}, "units"),
    ("units-too-many", {**GOOD, "units": 1_000_001}, "units"),
    ("units-huge", {**GOOD, "units": 2**63 - 1}, "units"),
    ("user-empty", {**GOOD, "user_id": ""}, "user_id"),
    ("user-pipe", {**GOOD, "user_id": "a|b"}, "user_id"),
    ("user-too-long", {**GOOD, "user_id": "u" * 65}, "user_id"),
    ("user-leading-dash", {**GOOD, "user_id": "-u"}, "user_id"),
    ("user-space", {**GOOD, "user_id": "u 1"}, "user_id"),
    ("user-unicode", {**GOOD, "user_id": "用户"}, "user_id"),
    ("user-int", {**GOOD, "user_id": 7}, "user_id"),
    ("product-list", {**GOOD, "product_id": ["p1"]}, "product_id"),
]


@pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in INVALID_BODIES],
                         ids=[i for i, _, _ in INVALID_BODIES])
def test_invalid_reserve_body_is_422_naming_the_field(client: httpx.Client, cid: str, body: dict[str, Any],
                                                      field: str) -> None:
    r = client.post(f"/v1/campaigns/{cid}/reservations", json=body, headers={**SF, "Idempotency-Key": "k"})
    assert r.status_code == 422, r.text
    assert error_code(r) == "INVALID" and r.json()["error"]["details"]["field"] == field
    assert_nothing_changed(client, cid)


def test_integer_beyond_64_bits(client: httpx.Client, cid: str) -> None:
    r = post_raw(client, f"/v1/campaigns/{cid}/reservations",
                 b'{"user_id": "u1", "product_id": "p1", "units": 1' + b"0" * 30 + b"}")
    assert r.status_code in (400, 422) and error_code(r) in ("BAD_REQUEST", "INVALID")
    assert_nothing_changed(client, cid)


def test_idempotency_key_missing_is_400(client: httpx.Client, cid: str) -> None:
    r = client.post(f"/v1/campaigns/{cid}/reservations", json=GOOD, headers=SF)
    assert r.status_code == 400 and error_code(r) == "IDEMPOTENCY_KEY_REQUIRED"
    assert r.json()["error"]["details"]["field"] == "Idempotency-Key"
    assert_nothing_changed(client, cid)


@pytest.mark.parametrize("key", [b"k" * 256, "clé".encode("latin-1"), b"a\tb"], ids=["256-chars", "latin-1", "tab"])
def test_idempotency_key_malformed_is_422(api_server: ApiServer, client: httpx.Client, cid: str, key: bytes) -> None:
    body = b'{"user_id":"u1","product_id":"p1","units":1}'
    request = (f"POST /v1/campaigns/{cid}/reservations HTTP/1.1\r\nHost: t\r\n"
               f"Authorization: Bearer {STOREFRONT_TOKENS['shop-a']}\r\n"
               "Content-Type: application/json\r\nConnection: close\r\n"
               f"Content-Length: {len(body)}\r\n").encode() + b"Idempotency-Key: " + key + b"\r\n\r\n" + body
    with socket.create_connection(("127.0.0.1", api_server.port), timeout=10) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 422"), reply[:200]
    assert b'"field":"Idempotency-Key"' in reply
    assert_nothing_changed(client, cid)


def test_idempotency_key_of_255_is_fine(client: httpx.Client, cid: str) -> None:
    r = client.post(f"/v1/campaigns/{cid}/reservations", json=GOOD, headers={**SF, "Idempotency-Key": "k" * 255})
    assert r.status_code == 201


def test_body_over_4_kib_is_413(client: httpx.Client, cid: str) -> None:
    big = b'{"user_id": "u1", "product_id": "p1", "units": 1, "pad": "' + b"x" * 4100 + b'"}'
    r = post_raw(client, f"/v1/campaigns/{cid}/reservations", big)
    assert r.status_code == 413 and error_code(r) == "PAYLOAD_TOO_LARGE"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 512):
            yield big[i:i + 512]

    r = post_raw(client, f"/v1/campaigns/{cid}/reservations", chunks())
    assert r.status_code == 413 and error_code(r) == "PAYLOAD_TOO_LARGE"
    r = client.post(f"/v1/campaigns/{cid}/reservations/{'a' * 24}/confirm", content=big,
                    headers={**SF, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert_nothing_changed(client, cid)


def test_body_of_exactly_4_kib_is_read(client: httpx.Client, cid: str) -> None:
    base = b'{"user_id": "u1", "product_id": "p1", "units": 1}'
    padded = base[:-1] + b" " * (4096 - len(base)) + b"}"
    assert len(padded) == 4096
    assert post_raw(client, f"/v1/campaigns/{cid}/reservations", padded).status_code == 201


@pytest.mark.parametrize(("body", "field"), [
    ({}, "payment_ref"), ({"payment_ref": ""}, "payment_ref"), ({"payment_ref": "x" * 129}, "payment_ref"),
    ({"payment_ref": 12}, "payment_ref"), ({"payment_ref": "pay\n1"}, "payment_ref"),
    ({"payment_ref": "支付"}, "payment_ref"), ({"payment_ref": "p", "amount": 1}, "amount"),
], ids=["missing", "empty", "too-long", "int", "newline", "unicode", "unknown-field"])
def test_invalid_confirm_body(client: httpx.Client, cid: str, body: dict[str, Any], field: str) -> None:
    rid = client.post(f"/v1/campaigns/{cid}/reservations", json=GOOD,
                      headers={**SF, "Idempotency-Key": f"c-{field}-{len(body)}"}).json()["reservation_id"]
    r = client.post(f"/v1/campaigns/{cid}/reservations/{rid}/confirm", json=body, headers=SF)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == field
    assert client.get(f"/v1/campaigns/{cid}/reservations/{rid}", headers=SF).json()["state"] == "held"


@pytest.mark.parametrize("path", [
    "/v1/campaigns/-bad/reservations", "/v1/campaigns/{cid}/reservations/{long}",
    "/v1/campaigns/{cid}/users/a%7Cb", "/v1/campaigns/{cid}/users/%E7%94%A8",
])
def test_path_ids_outside_the_pattern_are_422(client: httpx.Client, cid: str, path: str) -> None:
    url = path.format(cid=cid, long="r" * 65)
    r = client.request("POST" if url.endswith("reservations") else "GET", url, json=GOOD,
                       headers={**SF, "Idempotency-Key": "k"})
    assert r.status_code == 422 and error_code(r) == "INVALID"
    assert r.json()["error"]["details"]["field"] in ("cid", "rid", "uid")


def test_put_definition_bounds(client: httpx.Client) -> None:
    from tests.api.conftest import definition, new_id

    cid = new_id()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"unit_price": 1.5}, "unit_price"), ({"unit_price": True}, "unit_price"),
        ({"hold_seconds": 0}, "hold_seconds"), ({"currency": "cny"}, "currency"), ({"surprise": 1}, "surprise"),
        ({"closes_at": "2000-01-01T00:00:00Z"}, "closes_at"),
        ({"opens_at": "2030-01-01T00:00:00"}, "opens_at"), ({"products": []}, "products"),
    ]
    for change, field in bad:
        r = client.put(f"/v1/campaigns/{cid}", json={**definition(cid), **change}, headers=admin_headers())
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == field, (change, r.text)
    assert client.get(f"/v1/campaigns/{cid}", headers=admin_headers()).status_code == 404
