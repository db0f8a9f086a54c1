"""How flashsale is served: one socket write per response (``engine.api.transport``) and the
reserve route matched before the router (``engine.api.dispatch``), seen from a raw socket.

Pipelined requests on one connection must come back whole, in order; a ``Connection: close``
answer must arrive in full before the server closes; paths near the reserve route must be
answered as the router answers them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import orjson

from tests.api.conftest import error_code, reserve
from tests.api.rawhttp import read_answer
from tests.support.processes import ApiServer, storefront_headers


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def _reserve_bytes(cid: str, user: str, extra: dict[str, str] | None = None) -> bytes:
    body = orjson.dumps({"user_id": user, "product_id": "p1", "units": 1})
    headers = {**storefront_headers("shop-a", uuid.uuid4().hex), "Content-Type": "application/json", **(extra or {})}
    return _request("POST", f"/v1/campaigns/{cid}/reservations", headers, body)


async def test_pipelined_requests_come_back_whole_and_in_order(api_server: ApiServer,
                                                               new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    reader, writer = await asyncio.open_connection("127.0.0.1", api_server.port)
    try:
        wire = b"".join([
            *(_reserve_bytes(cid, f"u{i}") for i in range(10)),
            _request("GET", "/healthz", {}),
            _request("GET", "/v1/nowhere", {}),
            *(_reserve_bytes(cid, f"v{i}", {"X-Request-Id": f"pipe-{i}"}) for i in range(5)),
        ])
        writer.write(wire)  # one write: the server reads them back to back
        answers = [await asyncio.wait_for(read_answer(reader), 30) for _ in range(17)]
    finally:
        writer.close()
    statuses = [status for status, _, _ in answers]
    assert statuses == [201] * 10 + [200, 404] + [201] * 5
    users = [orjson.loads(body)["user_id"] for status, _, body in answers if status == 201]
    assert users == [f"u{i}" for i in range(10)] + [f"v{i}" for i in range(5)]
    assert answers[10][2] == b'{"status":"ok"}'
    assert orjson.loads(answers[11][2])["error"]["code"] == "NOT_FOUND"
    assert [h[b"x-request-id"] for _, h, _ in answers[12:]] == [f"pipe-{i}".encode() for i in range(5)]
    assert len({h[b"x-request-id"] for _, h, _ in answers}) == 17


async def test_a_closing_answer_arrives_whole_before_the_close(api_server: ApiServer,
                                                               new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    reader, writer = await asyncio.open_connection("127.0.0.1", api_server.port)
    try:
        writer.write(_reserve_bytes(cid, "u1", {"Connection": "close"}))
        status, headers, body = await asyncio.wait_for(read_answer(reader), 30)
        rest = await asyncio.wait_for(reader.read(), 30)  # EOF: the server closed after answering
    finally:
        writer.close()
    assert status == 201 and orjson.loads(body)["user_id"] == "u1"
    assert headers[b"connection"] == b"close"
    assert rest == b""


def test_paths_near_the_reserve_route_are_answered_as_the_router_answers(
        client: httpx.Client, new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    assert reserve(client, cid).status_code == 201
    hdrs = storefront_headers("shop-a", uuid.uuid4().hex)
    body = {"user_id": "u1", "product_id": "p1", "units": 1}
    # a trailing slash: the router's redirect, not the reserve handler
    r = client.post(f"/v1/campaigns/{cid}/reservations/", json=body, headers=hdrs)
    assert r.status_code == 307
    # another method on the reserve path: 405 in the error shape
    r = client.get(f"/v1/campaigns/{cid}/reservations", headers=hdrs)
    assert r.status_code == 405 and error_code(r) == "METHOD_NOT_ALLOWED"
    # a campaign id with a slash in it is no campaign id: no route
    r = client.post(f"/v1/campaigns/{cid}/x/reservations", json=body, headers=hdrs)
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    # an empty campaign id: no route either
    r = client.post("/v1/campaigns//reservations", json=body, headers=hdrs)
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    # a bad campaign id on the reserve path is validated as before
    r = client.post("/v1/campaigns/-bad/reservations", json=body, headers=hdrs)
    assert r.status_code == 422 and error_code(r) == "INVALID"


async def test_an_idle_connection_is_kept_between_requests_then_closed(api_server: ApiServer,
                                                                        new_campaign: Callable[..., str]) -> None:
    """uvicorn's keep-alive (5 s idle): a connection idle for less serves the next request; one left
    idle is closed by the server."""
    cid = new_campaign()
    reader, writer = await asyncio.open_connection("127.0.0.1", api_server.port)
    try:
        for user in ("u1", "u2"):
            writer.write(_reserve_bytes(cid, user))
            status, _, body = await asyncio.wait_for(read_answer(reader), 30)
            assert status == 201 and orjson.loads(body)["user_id"] == user
            await asyncio.sleep(2)  # idle, less than the keep-alive
        writer.write(_request("GET", "/healthz", {}))
        assert (await asyncio.wait_for(read_answer(reader), 30))[0] == 200
        assert await asyncio.wait_for(reader.read(), 60) == b""  # left idle: the server closes it
    finally:
        writer.close()
