"""The reserve lane (``engine.api.lane``, served by ``engine.api.transport``): reserve requests
answered without ASGI must be answered exactly as the ASGI route answers them.

A real uvicorn server with flashsale's protocol runs in a thread of this process, on a real socket,
so the tests can see which path answered (``ReserveLane.served``). The same request goes once as
the lane takes it (a Content-Length body) and once as only the ASGI route takes it (the same body,
chunked): statuses, bodies and headers must agree, case by case, for every answer a reserve can get.
With the fast path off (``FLASHSALE_FAST_PATH=0``, ``make test-slowpath``) the server runs uvicorn's
own protocol, as ``flashsale serve`` then does: the same answers are expected, none from the lane.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from engine import fastpath
from engine.admission.tokens import KEYS_ENV, Keyring
from engine.api import logs
from engine.api.app import FlashsaleApp, create_app
from engine.api.lane import ReserveLane
from engine.campaign import ms_to_rfc3339
from engine.settings import Settings
from tests.api.conftest import definition, new_id
from tests.api.rawhttp import read_answer
from tests.support.processes import ADMIN_TOKEN, STOREFRONT_TOKENS, admin_headers, storefront_headers
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.needs_services  # starts its own servers

Answer = tuple[int, dict[bytes, bytes], bytes]
LANE = fastpath.serving().on  # whether the server below runs flashsale's protocol (and its lane)


def protocol() -> Any:
    """The protocol ``flashsale serve`` would run here (``engine.api.server``)."""
    if not LANE:
        return "httptools"
    from engine.api.transport import HttpToolsProtocol

    return HttpToolsProtocol


class InProcessServer:
    """uvicorn with flashsale's protocol, in a thread: the app object stays in reach of the test."""

    def __init__(self, redis_url: str) -> None:
        settings = Settings(redis_url=redis_url, storefront_tokens=tuple(STOREFRONT_TOKENS.items()),
                            admin_token=ADMIN_TOKEN, allow_volatile_redis=True)
        self.app: FlashsaleApp = create_app(settings)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, loop="uvloop", http=protocol(), lifespan="on",
            access_log=False, log_config=None, proxy_headers=False, server_header=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def lane(self) -> ReserveLane:
        assert self.app.reserve_lane is not None
        return self.app.reserve_lane

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InProcessServer:
        threshold = gc.get_threshold()
        self.thread.start()
        for _ in range(1500):  # up to about 30 s
            if self.server.started or not self.thread.is_alive():
                break
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError("the in-process uvicorn did not start")
        self._gc = threshold
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        gc.unfreeze()  # the lifespan tunes the collector for a server process; give pytest its own back
        gc.set_threshold(*self._gc)


ADMISSION_KEYS = "k1:" + "q" * 32  # the server's admission keyring (FLASHSALE_ADMISSION_KEYS)
RING = Keyring.parse(ADMISSION_KEYS)


@pytest.fixture(scope="module")
def server() -> Iterator[InProcessServer]:
    redis = RedisServer().start()
    before = os.environ.get(KEYS_ENV)
    os.environ[KEYS_ENV] = ADMISSION_KEYS  # read once, as `flashsale serve` reads it, when the app is made
    try:
        with InProcessServer(redis.url) as s:
            yield s
    finally:
        if before is None:
            os.environ.pop(KEYS_ENV, None)
        else:
            os.environ[KEYS_ENV] = before
        redis.stop()


def campaign(server: InProcessServer, extra: dict[str, Any] | None = None, **kw: Any) -> str:
    cid = new_id()
    r = httpx.put(f"{server.url}/v1/campaigns/{cid}", json={**definition(cid, **kw), **(extra or {})},
                  headers=admin_headers(), timeout=10)
    assert r.status_code == 201, r.text
    return cid


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n"


def with_length(path: str, headers: dict[str, str], body: bytes) -> bytes:
    return _head("POST", path, {**headers, "Content-Length": str(len(body))}) + body


def chunked(path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The same request with its body chunked: only the ASGI route takes it."""
    chunks = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
    return _head("POST", path, {**headers, "Transfer-Encoding": "chunked"}) + chunks + b"0\r\n\r\n"


async def exchange(server: InProcessServer, *requests: bytes) -> list[Answer]:
    """Send requests on one connection, one after the other; their answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        answers = []
        for request in requests:
            writer.write(request)
            answers.append(await asyncio.wait_for(read_answer(reader), 10))
        return answers
    finally:
        writer.close()


def _comparable(answer: Answer) -> tuple[int, set[bytes], Any]:
    """What must agree between the two paths: status, header names, the body less what differs by
    request (ids and times of a new reservation, the request id, a rate limit's countdown)."""
    status, headers, body = answer
    data = orjson.loads(body)
    if "reservation_id" in data:
        data = {k: v for k, v in data.items() if k not in ("reservation_id", "expires_at", "user_id")}
    elif "retry_after_ms" in data["error"]["details"]:  # counts down between the two requests
        data["error"]["details"]["retry_after_ms"] = "some"
    names = set(headers) - {b"date"}
    for name in (b"content-type", b"retry-after"):
        if name in headers:
            names.add(name + b"=" + headers[name])
    return status, names, data


def _key() -> str:
    return uuid.uuid4().hex


RESERVE = {"user_id": "u1", "product_id": "p1", "units": 1}
CASES: list[tuple[str, int, str | None, dict[str, str] | None, bytes | None]] = [
    # (case, expected status, error code, headers instead of the storefront's, body instead of RESERVE)
    ("granted", 201, None, None, None),
    ("no token", 401, "UNAUTHENTICATED", {"Idempotency-Key": "k"}, None),
    ("wrong token", 401, "UNAUTHENTICATED", {"Authorization": "Bearer nope", "Idempotency-Key": "k"}, None),
    ("admin token", 403, "FORBIDDEN", {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": "k"}, None),
    ("no key", 400, "IDEMPOTENCY_KEY_REQUIRED", {"Authorization": f"Bearer {STOREFRONT_TOKENS['shop-a']}"}, None),
    ("long key", 422, "INVALID", {"Authorization": f"Bearer {STOREFRONT_TOKENS['shop-a']}",
                                  "Idempotency-Key": "k" * 256}, None),
    ("not json", 400, "BAD_REQUEST", None, b"{nope"),
    ("an array", 400, "BAD_REQUEST", None, b"[1, 2]"),
    ("empty body", 400, "BAD_REQUEST", None, b""),
    ("unknown field", 422, "INVALID", None, orjson.dumps({**RESERVE, "x": 1})),
    ("missing field", 422, "INVALID", None, orjson.dumps({"user_id": "u1", "product_id": "p1"})),
    ("units a boolean", 422, "INVALID", None, orjson.dumps({**RESERVE, "units": True})),
    ("units a float", 422, "INVALID", None, orjson.dumps({**RESERVE, "units": 1.0})),
    ("units zero", 422, "INVALID", None, orjson.dumps({**RESERVE, "units": 0})),
    ("bad user id", 422, "INVALID", None, orjson.dumps({**RESERVE, "user_id": "-u"})),
    ("unknown product", 404, "NOT_FOUND", None, orjson.dumps({**RESERVE, "product_id": "p9"})),
    ("over the cap", 409, "USER_CAP_EXCEEDED", None, orjson.dumps({**RESERVE, "units": 6})),
    ("too large", 413, "PAYLOAD_TOO_LARGE", None, b" " * 4097),
]


@pytest.mark.parametrize(("case", "status", "code", "headers", "body"), CASES, ids=[c[0] for c in CASES])
async def test_the_lane_answers_as_the_asgi_route(server: InProcessServer, case: str, status: int, code: str | None,
                                                  headers: dict[str, str] | None, body: bytes | None) -> None:
    cid = campaign(server)
    path = f"/v1/campaigns/{cid}/reservations"
    payload = orjson.dumps(RESERVE) if body is None else body
    answers = []
    for encode in (with_length, chunked):
        hdrs = {**(headers or storefront_headers("shop-a", _key())), "Content-Type": "application/json"}
        before = server.lane.served
        [answer] = await exchange(server, encode(path, hdrs, payload))
        took_lane = server.lane.served - before
        # the lane takes a Content-Length body within 4 KiB; chunked, or larger, goes through ASGI
        assert took_lane == (LANE and encode is with_length and len(payload) <= 4096), case
        answers.append(answer)
    lane, asgi = answers
    assert lane[0] == status, (case, lane)
    if code is not None:
        assert orjson.loads(lane[2])["error"]["code"] == code
    assert _comparable(lane) == _comparable(asgi), case
    assert lane[1][b"x-request-id"] and lane[1][b"x-request-id"] != asgi[1][b"x-request-id"]


async def test_states_of_a_campaign_answer_alike_on_both_paths(server: InProcessServer) -> None:
    """Unknown, bad, not yet open, sold out, rate limited (Retry-After), replayed, key reused."""
    shop = storefront_headers("shop-a", "")
    soon = campaign(server, opens_in_s=3600)
    sold = campaign(server, total_units=1, products=[{"id": "p1", "title": "t", "total_units": 1}])
    limited = campaign(server, rate_limit={"per_second": 1, "burst": 1})
    for cid, wanted in ((new_id(), 404), ("-bad", 422), (soon, 409), (sold, None), (limited, None)):
        path = f"/v1/campaigns/{cid}/reservations"
        answers = []
        for encode in (with_length, chunked):
            first = encode(path, {**shop, "Idempotency-Key": _key()}, orjson.dumps(RESERVE))
            second = encode(path, {**shop, "Idempotency-Key": _key()}, orjson.dumps(RESERVE))
            answers.append(await exchange(server, first, second))
        (lane1, lane2), (asgi1, asgi2) = answers
        if wanted is not None:
            assert lane1[0] == wanted and _comparable(lane1) == _comparable(asgi1)
        else:  # the lane took the last unit (or the burst): the second, and both over ASGI, are refused
            assert lane1[0] == 201
            assert lane2[0] in (409, 429) and _comparable(lane2) == _comparable(asgi1) == _comparable(asgi2)
    # replay and reuse: a key first used on one path is honoured on the other
    cid = campaign(server)
    path = f"/v1/campaigns/{cid}/reservations"
    key = {**shop, "Idempotency-Key": _key()}
    first, replay_lane = await exchange(server, with_length(path, key, orjson.dumps(RESERVE)),
                                        with_length(path, key, orjson.dumps(RESERVE)))
    [replay_asgi] = await exchange(server, chunked(path, key, orjson.dumps(RESERVE)))
    assert first[0] == 201 and replay_lane[0] == replay_asgi[0] == 200
    assert orjson.loads(first[2]) == orjson.loads(replay_lane[2]) == orjson.loads(replay_asgi[2])
    reuse = orjson.dumps({**RESERVE, "units": 2})
    [reused_lane] = await exchange(server, with_length(path, key, reuse))
    [reused_asgi] = await exchange(server, chunked(path, key, reuse))
    assert reused_lane[0] == 409 and orjson.loads(reused_lane[2])["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert _comparable(reused_lane) == _comparable(reused_asgi)


async def test_a_body_arriving_late_is_waited_for(server: InProcessServer) -> None:
    cid = campaign(server)
    body = orjson.dumps(RESERVE)
    request = with_length(f"/v1/campaigns/{cid}/reservations", storefront_headers("shop-a", _key()), body)
    cut = len(request) - len(body) + 5  # the head and 5 bytes of the body, then the rest
    before = server.lane.served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request[:cut])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(request[cut:])
        status, _, answer = await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()
    assert status == 201 and orjson.loads(answer)["units"] == 1
    assert server.lane.served == before + LANE


async def test_a_client_gone_before_its_body_leaves_the_server_serving(server: InProcessServer) -> None:
    cid = campaign(server)
    path = f"/v1/campaigns/{cid}/reservations"
    headers = storefront_headers("shop-a", _key())
    for _ in range(20):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_head("POST", path, {**headers, "Content-Length": "40"}) + b'{"user_id"')
        await writer.drain()
        writer.close()
    await asyncio.sleep(0.2)
    [answer] = await exchange(server, with_length(path, storefront_headers("shop-a", _key()), orjson.dumps(RESERVE)))
    assert answer[0] == 201
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.get(f"/v1/campaigns/{cid}/stats", headers=admin_headers())
    assert r.json()["held_units"] == 1  # the 20 half-sent requests reserved nothing


async def test_pipelined_lane_and_asgi_requests_answer_in_order(server: InProcessServer) -> None:
    cid = campaign(server)
    path = f"/v1/campaigns/{cid}/reservations"
    wire = []
    for i in range(12):
        encode = chunked if i % 3 == 2 else with_length
        wire.append(encode(path, {**storefront_headers("shop-a", _key()), "X-Request-Id": f"p-{i}"},
                           orjson.dumps({**RESERVE, "user_id": f"u{i}"})))
        if i % 4 == 0:
            wire.append(_head("GET", "/healthz", {}))
    before = server.lane.served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"".join(wire))
        answers = [await asyncio.wait_for(read_answer(reader), 10) for _ in range(len(wire))]
    finally:
        writer.close()
    reserves = [a for a in answers if b"reservation_id" in a[2]]
    assert [orjson.loads(a[2])["user_id"] for a in reserves] == [f"u{i}" for i in range(12)]
    assert [a[1][b"x-request-id"] for a in reserves] == [f"p-{i}".encode() for i in range(12)]
    assert [a[2] for a in answers if b"reservation_id" not in a[2]] == [b'{"status":"ok"}'] * 3
    assert server.lane.served - before == (8 if LANE else 0)


async def test_connection_close_and_http_1_0(server: InProcessServer) -> None:
    cid = campaign(server)
    path = f"/v1/campaigns/{cid}/reservations"
    for close, version in ((True, b"HTTP/1.1"), (False, b"HTTP/1.0")):
        headers = {**storefront_headers("shop-a", _key()), **({"Connection": "close"} if close else {})}
        request = with_length(path, headers, orjson.dumps(RESERVE)).replace(b"HTTP/1.1", version, 1)
        before = server.lane.served
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            status, answer_headers, _ = await asyncio.wait_for(read_answer(reader), 10)
            rest = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert status == 201 and rest == b""  # answered whole, then closed
        assert server.lane.served - before == (1 if LANE and version == b"HTTP/1.1" else 0)  # 1.0: the ASGI route
        if close:
            assert answer_headers[b"connection"] == b"close"


async def test_a_bug_on_the_lane_is_a_500_logged_with_the_request_id(server: InProcessServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: object) -> tuple[int, bytes]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.lane.api, "place", broken)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger("flashsale.api").addHandler(handler)
    try:
        cid = campaign(server)
        [answer] = await exchange(server, with_length(
            f"/v1/campaigns/{cid}/reservations", {**storefront_headers("shop-a", _key()), "X-Request-Id": "lane-77"},
            orjson.dumps(RESERVE)))
    finally:
        logging.getLogger("flashsale.api").removeHandler(handler)
    status, headers, body = answer
    assert status == 500 and headers[b"x-request-id"] == b"lane-77"
    assert orjson.loads(body)["error"]["code"] == "INTERNAL"
    assert b"secret" not in body and b"Traceback" not in body
    line = orjson.loads(stream.getvalue().splitlines()[0])
    assert line["request_id"] == "lane-77" and "secret internals" in line["exc"]


def _raw(path: str, pairs: list[tuple[str, str]], body: bytes, *, lane: bool) -> bytes:
    """A reserve with exactly these header lines (repeats kept), sized (lane) or chunked (ASGI only)."""
    framing = [("Content-Length", str(len(body)))] if lane else [("Transfer-Encoding", "chunked")]
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in [*pairs, *framing])
    payload = body if lane else (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    return head.encode("latin-1") + b"\r\n" + payload


_TOKEN = f"Bearer {STOREFRONT_TOKENS['shop-a']}"
_FRESH = None  # the server made the request id: the one sent was missing or not a usable id
# (case, header lines besides Idempotency-Key, the request id answered: echoed or _FRESH, status)
TRICKY: list[tuple[str, list[tuple[str, str]], str | None, int]] = [
    ("repeated request id: the first", [("Authorization", _TOKEN), ("X-Request-Id", "first-1"),
                                        ("X-Request-Id", "second-2")], "first-1", 201),
    ("repeated request id, the first invalid", [("Authorization", _TOKEN), ("X-Request-Id", "has space"),
                                                ("X-Request-Id", "second-2")], _FRESH, 201),
    ("repeated request id, the same", [("Authorization", _TOKEN), ("X-Request-Id", "same-3"),
                                       ("X-Request-Id", "same-3")], "same-3", 201),
    ("request id too long", [("Authorization", _TOKEN), ("X-Request-Id", "r" * 129)], _FRESH, 201),
    ("request id of 128", [("Authorization", _TOKEN), ("X-Request-Id", "r" * 128)], "r" * 128, 201),
    ("empty request id", [("Authorization", _TOKEN), ("X-Request-Id", "")], _FRESH, 201),
    ("non-ASCII request id", [("Authorization", _TOKEN), ("X-Request-Id", "caf\xe9")], _FRESH, 201),
    ("request id with a comma", [("Authorization", _TOKEN), ("X-Request-Id", "a,b")], "a,b", 201),
    ("request id padded", [("Authorization", _TOKEN), ("X-Request-Id", "  pad-4")], "pad-4", 201),
    ("names in odd case", [("AUTHORIZATION", _TOKEN), ("x-REQUEST-id", "case-5"),
                           ("Content-TYPE", "application/json")], "case-5", 201),
    ("repeated token, the last a wrong one", [("Authorization", _TOKEN), ("Authorization", "Bearer nope"),
                                              ("X-Request-Id", "auth-6")], "auth-6", 401),
    ("an odd content type", [("Authorization", _TOKEN), ("Content-Type", "text/plain; charset=\"x\"")], _FRESH, 201),
    ("an unknown header, repeated", [("Authorization", _TOKEN), ("X-Whatever", "1"), ("X-Whatever", "2"),
                                     ("X-Request-Id", "odd-7")], "odd-7", 201),
]


@pytest.mark.parametrize(("case", "pairs", "rid", "status"), TRICKY, ids=[c[0] for c in TRICKY])
async def test_tricky_headers_answer_alike_on_both_paths(server: InProcessServer, case: str,
                                                         pairs: list[tuple[str, str]], rid: str | None,
                                                         status: int) -> None:
    """Repeated, invalid, padded and oddly cased headers: the same status, body and request id."""
    cid = campaign(server)
    path = f"/v1/campaigns/{cid}/reservations"
    sent = {v.strip().encode("latin-1") for k, v in pairs if k.lower() == "x-request-id"}
    answers = []
    for lane in (True, False):
        before = server.lane.served
        [answer] = await exchange(server, _raw(path, [*pairs, ("Idempotency-Key", _key())], orjson.dumps(RESERVE),
                                               lane=lane))
        assert server.lane.served - before == (LANE and lane), case
        answered = answer[1][b"x-request-id"]
        assert answered == rid.encode() if rid is not _FRESH else answered not in sent, (case, lane, answered)
        answers.append(answer)
    by_lane, by_asgi = answers
    assert by_lane[0] == status, (case, by_lane)
    assert _comparable(by_lane) == _comparable(by_asgi), case


def _queued(server: InProcessServer) -> str:
    now = int(time.time() * 1000)
    return campaign(server, {"admission": {"mode": "queue", "queue_opens_at": ms_to_rfc3339(now - 7_200_000),
                                           "admit_per_second": 1000, "token_seconds": 600}})


async def _both_ways(server: InProcessServer, cid: str, headers: dict[str, str], body: bytes) -> tuple[Answer, Answer]:
    path = f"/v1/campaigns/{cid}/reservations"
    answers = []
    for encode in (with_length, chunked):
        before = server.lane.served
        [answer] = await exchange(server, encode(path, {**headers, "Idempotency-Key": _key()}, body))
        assert server.lane.served - before == (LANE and encode is with_length)
        answers.append(answer)
    return answers[0], answers[1]


async def test_queue_mode_answers_alike_on_both_paths(server: InProcessServer) -> None:
    """The Admission-Token header, read by the lane's parser as by ASGI: missing, forged, another
    user's, another campaign's, of an unknown key, expired, and valid (then again: the same user)."""
    cid, other = _queued(server), _queued(server)
    shop = storefront_headers("shop-a", "")
    later = int(time.time() * 1000) + 600_000
    good = RING.sign(cid, "u1", later)
    stranger = Keyring.parse("k9:" + "z" * 32)
    cases: list[tuple[str, str | None, int, str | None]] = [
        ("missing", None, 403, "ADMISSION_REQUIRED"),
        ("forged", good[:-2] + ("AA" if not good.endswith("AA") else "BB"), 403, "ADMISSION_INVALID"),
        ("not a token", "hello", 403, "ADMISSION_INVALID"),
        ("another user's", RING.sign(cid, "u2", later), 403, "ADMISSION_INVALID"),
        ("another campaign's", RING.sign(other, "u1", later), 403, "ADMISSION_INVALID"),
        ("an unknown key", stranger.sign(cid, "u1", later), 403, "ADMISSION_INVALID"),
        ("expired", RING.sign(cid, "u1", int(time.time() * 1000) - 1), 403, "ADMISSION_EXPIRED"),
        ("valid", good, 201, None),
        ("valid again", good, 201, None),
    ]
    for case, token, status, code in cases:
        headers = {**shop, **({"Admission-Token": token} if token is not None else {})}
        lane, asgi = await _both_ways(server, cid, headers, orjson.dumps(RESERVE))
        assert lane[0] == status, (case, lane)
        if code is not None:
            assert orjson.loads(lane[2])["error"]["code"] == code, case
        assert _comparable(lane) == _comparable(asgi), case
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.get(f"/v1/campaigns/{cid}/stats", headers=admin_headers())
    assert r.json()["held_units"] == 4  # the valid token twice, both ways; nothing else held
    # a token is nobody else's: u2 presenting u1's token is refused on both paths
    lane, asgi = await _both_ways(server, cid, {**shop, "Admission-Token": good},
                                  orjson.dumps({**RESERVE, "user_id": "u2"}))
    assert lane[0] == asgi[0] == 403 and orjson.loads(lane[2])["error"]["code"] == "ADMISSION_INVALID"


async def test_buyer_signals_and_caps_answer_alike_on_both_paths(server: InProcessServer) -> None:
    cid = campaign(server, {"identity_cap_units": 2, "network_cap_units": 100})
    shop = storefront_headers("shop-a", "")
    buyer = {"identity": "person-1", "ip": "203.0.113.9"}
    cases: list[tuple[str, dict[str, Any], int, str | None, str | None]] = [
        ("no buyer", RESERVE, 422, "INVALID", "buyer.identity"),
        ("no ip", {**RESERVE, "buyer": {"identity": "p"}}, 422, "INVALID", "buyer.ip"),
        ("bad ip", {**RESERVE, "buyer": {**buyer, "ip": "203.0.113"}}, 422, "INVALID", "buyer.ip"),
        ("bad identity", {**RESERVE, "buyer": {**buyer, "identity": ""}}, 422, "INVALID", "buyer.identity"),
        ("unknown signal", {**RESERVE, "buyer": {**buyer, "phone": "1"}}, 422, "INVALID", "buyer.phone"),
        ("not an object", {**RESERVE, "buyer": "p"}, 422, "INVALID", "buyer"),
        ("granted", {**RESERVE, "buyer": buyer}, 201, None, None),  # both ways: 2 units, the cap
        ("over the identity cap", {**RESERVE, "user_id": "u7", "buyer": buyer}, 409, "BUYER_CAP_EXCEEDED", None),
    ]
    for case, body, status, code, field in cases:
        lane, asgi = await _both_ways(server, cid, shop, orjson.dumps(body))
        assert lane[0] == status, (case, lane)
        if code is not None:
            error = orjson.loads(lane[2])["error"]
            assert error["code"] == code, case
            if field is not None:
                assert error["details"]["field"] == field, case
        assert _comparable(lane) == _comparable(asgi), case
    error = orjson.loads(lane[2])["error"]
    assert error["details"] == {"dimension": "identity", "allowed": 0}
