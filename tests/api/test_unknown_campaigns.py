"""Unknown campaigns cost nothing: 100,000 requests to random campaign ids, over real sockets to a
real server, leave the worker's memory where warm-up left it, and add no /metrics series and no
Redis key.

Each campaign id a storefront sent used to make a batcher per script and stay for good (20,000
reserves to random ids grew a worker by hundreds of MB). The client here pipelines raw HTTP/1.1
on a few keep-alive connections (``rawhttp.read_answer``): httpx would take minutes for this.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from tests.api.conftest import definition, new_id
from tests.api.rawhttp import read_answer
from tests.support.processes import STOREFRONT_TOKENS, ApiServer, admin_headers
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts its own redis-server: not the fast tier

WARM_UP = 20_000
REQUESTS = 100_000
CONNECTIONS = 32
DEPTH = 16  # requests pipelined per connection: CONNECTIONS * DEPTH in flight at most
MARGIN_KB = 10 * 1024  # what the worker's RSS may grow by after warm-up
TOKEN = STOREFRONT_TOKENS["shop-a"]


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, ApiServer]]:
    redis_server = RedisServer().start()
    api = ApiServer(redis_server.url, workers=1).start()
    yield redis_server, api
    api.stop()
    redis_server.stop()


def _worker_pid(api: ApiServer) -> int:
    """The process serving requests: ``flashsale serve`` itself with one worker (uvicorn serves
    in-process then), else its only child."""
    assert api.proc is not None
    children = Path(f"/proc/{api.proc.pid}/task/{api.proc.pid}/children").read_text().split()
    return int(children[0]) if len(children) == 1 else api.proc.pid


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _request(rng: random.Random) -> bytes:
    """One request to a random campaign id: mostly reserves (the lane), the rest through ASGI."""
    cid = f"x-{uuid.UUID(int=rng.getrandbits(128)).hex}"
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    roll = rng.random()
    if roll < 0.55:
        body = orjson.dumps({"user_id": "u1", "product_id": "p1", "units": 1})
        return (f"POST /v1/campaigns/{cid}/reservations HTTP/1.1\r\nHost: t\r\n{auth}"
                f"Idempotency-Key: {rng.getrandbits(64):x}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    if roll < 0.65:
        body = b'{"payment_ref":"pay-1"}'
        return (f"POST /v1/campaigns/{cid}/reservations/r-{rng.getrandbits(32):x}/confirm HTTP/1.1\r\n"
                f"Host: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
    path = rng.choice((f"/v1/campaigns/{cid}", f"/v1/campaigns/{cid}/users/u1",
                       f"/v1/campaigns/{cid}/reservations/r-{rng.getrandbits(32):x}"))
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n".encode()


async def _send(port: int, total: int, seed: int) -> dict[tuple[int, bytes], int]:
    """``total`` requests over CONNECTIONS pipelined connections; answers counted by (status, code)."""
    answers: dict[tuple[int, bytes], int] = {}
    per_connection = total // CONNECTIONS

    async def connection(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            left = per_connection
            while left:
                depth = min(DEPTH, left)
                writer.write(b"".join(_request(rng) for _ in range(depth)))
                for _ in range(depth):
                    status, _, body = await read_answer(reader)
                    key = (status, orjson.loads(body).get("error", {}).get("code", "").encode())
                    answers[key] = answers.get(key, 0) + 1
                left -= depth
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))
    return answers


@pytest.mark.slow
def test_random_campaign_ids_leave_the_worker_memory_flat(servers: tuple[RedisServer, ApiServer]) -> None:
    redis_server, server = servers
    with httpx.Client(base_url=server.url, timeout=10) as c:  # one real campaign, in use throughout
        cid = new_id()
        assert c.put(f"/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers()).status_code == 201
    pid = _worker_pid(server)

    r = redis.Redis(port=redis_server.port)
    keys_before = r.dbsize()
    warm = asyncio.run(_send(server.port, WARM_UP, seed=1))
    assert set(warm) == {(404, b"NOT_FOUND")}, warm
    before = _rss_kb(pid)
    answers = asyncio.run(_send(server.port, REQUESTS, seed=2))
    after = _rss_kb(pid)
    print(f"worker RSS: {before} kB after warm-up, {after} kB after {REQUESTS} requests")

    assert answers == {(404, b"NOT_FOUND"): REQUESTS // CONNECTIONS * CONNECTIONS}, answers
    assert after - before <= MARGIN_KB, f"worker RSS grew from {before} kB to {after} kB"
    assert r.dbsize() == keys_before  # nor a key in Redis
    r.close()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        metrics = c.get("/metrics", headers=admin_headers()).text
    assert not re.search(r"x-[0-9a-f]{32}", metrics)  # no series named after a random id
    assert server.alive() and "Traceback" not in server.output()
