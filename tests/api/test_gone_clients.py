"""A client that hangs up while its reserve waits for its batch holds nothing: the request leaves
the batch before it goes to Redis. A real server, real sockets, a Redis that holds writes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis

from engine import fastpath
from tests.api.conftest import definition, new_id
from tests.api.rawhttp import read_answer
from tests.support.processes import STOREFRONT_TOKENS, ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts its own redis-server: not the fast tier

GONE = 10  # clients that hang up while queued


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, ApiServer]]:
    redis_server = RedisServer().start()
    # one call in flight per campaign, and a Redis timeout longer than the pause below
    api = ApiServer(redis_server.url, FLASHSALE_BATCH_INFLIGHT="1", FLASHSALE_REDIS_TIMEOUT="10").start()
    yield redis_server, api
    api.stop()
    redis_server.stop()


def _reserve_bytes(cid: str, user: str) -> bytes:
    body = orjson.dumps({"user_id": user, "product_id": "p1", "units": 1})
    return (f"POST /v1/campaigns/{cid}/reservations HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {STOREFRONT_TOKENS['shop-a']}\r\nIdempotency-Key: key-{user}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.skipif(not fastpath.serving().on, reason="a client hanging up cancels its wait on the reserve lane "
                    "only (the fast path); the ASGI path is not cancelled by uvicorn")
def test_clients_gone_before_their_batch_left_hold_nothing(servers: tuple[RedisServer, ApiServer]) -> None:
    redis_server, api = servers
    r = redis.Redis(port=redis_server.port)
    with httpx.Client(base_url=api.url, timeout=30) as c:
        cid = new_id()
        assert c.put(f"/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers()).status_code == 201
        r.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        try:
            stays = socket.create_connection(("127.0.0.1", api.port))
            stays.sendall(_reserve_bytes(cid, "stays"))  # its batch leaves, and waits in Redis
            time.sleep(0.3)
            for n in range(GONE):  # queued behind it, then gone
                with socket.create_connection(("127.0.0.1", api.port)) as gone:
                    gone.sendall(_reserve_bytes(cid, f"gone{n}"))
                    time.sleep(0.05)
            time.sleep(0.3)
        finally:
            r.execute_command("CLIENT", "UNPAUSE")

        async def answer() -> int:
            reader, writer = await asyncio.open_connection(sock=stays)
            status, _, _ = await read_answer(reader)
            writer.close()
            return status

        assert asyncio.run(answer()) == 201
        time.sleep(0.5)  # anything still queued would have gone out by now
        stats = c.get(f"/v1/campaigns/{cid}/stats", headers=storefront_headers()).json()
        assert stats["held_units"] == 1, stats
        holdings = [c.get(f"/v1/campaigns/{cid}/users/gone{n}", headers=storefront_headers()).json()
                    for n in range(GONE)]
        assert all(h["held_units"] == 0 for h in holdings), holdings
    r.close()
    assert "Traceback" not in api.output()
