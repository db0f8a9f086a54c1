"""Waiting-room benchmark: how many polls one API worker answers, and what a crowd polling as
told asks of the API.

    python -m scripts.bench.queue [--seconds 5] [--tickets 20000] [--no-write]

1. A private redis-server (no AOF) and ``flashsale serve --workers 1`` with admission keys; a
   queue-mode campaign opened a minute ago with admission paused, and ``--tickets`` tickets
   taken through ``AdmissionService`` (storefront ``shop-a``). wrk (2 threads, 100 connections)
   then polls ``GET …/queue/{ticket}`` over every ticket in turn: polls/s, p50/p99, the server's
   CPU per poll; and, in process, the µs of one poll through the ASGI app alone (auth, routing,
   the worker's cache, the answer), which says what the app costs apart from the HTTP server.
2. Pure arithmetic, no server: 300,000 pre-queue tickets and an opening admitting 500/s, each
   ticket polling when ``poll_after_ms`` tells it (``engine.admission.waiting.answer``) until
   admitted: the polls/s the crowd sends over the first 600 s, mean and busiest second.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
import subprocess
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import orjson

from engine.admission import AdmissionService, Buyer, Keyring
from engine.admission.queue import TicketRecord
from engine.admission.schedule import Schedule
from engine.admission.waiting import Snapshot, Ticket, answer
from engine.api.app import create_app
from engine.campaign import parse
from engine.core import Engine
from engine.settings import Settings
from scripts.bench.http import _cpu_seconds
from scripts.bench.report import write_section
from tests.admission.conftest import KEYS, definition
from tests.support.processes import STOREFRONT_TOKENS, ApiServer
from tests.support.servers import RedisServer

HERE = Path(__file__).resolve().parent
CROWD = 300_000
CROWD_RATE = 500
CROWD_SECONDS = 600  # the crowd takes 600 s to admit at that rate


async def take_tickets(redis_url: str, cid: str, n: int) -> list[str]:
    engine = Engine.from_settings(Settings(redis_url=redis_url, redis_timeout_s=10.0))
    try:
        await engine.load_campaign(parse(definition(cid, opens_in_ms=-60_000, admit_per_second=0)))
        service = AdmissionService(engine, Keyring.parse(KEYS))
        tickets: list[str] = []
        for start in range(0, n, 500):
            joined = await asyncio.gather(*(service.join(cid, f"u{i}", Buyer(), "shop-a")
                                            for i in range(start, min(start + 500, n))))
            tickets += [t for t, _ in joined]
        return tickets
    finally:
        await engine.close()


def polls_per_second(seconds: int, n_tickets: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(directory=tmp).start()
        api = ApiServer(redis.url, workers=1, FLASHSALE_ADMISSION_KEYS=KEYS).start()
        try:
            cid = "bench-queue"
            tickets = asyncio.run(take_tickets(redis.url, cid, n_tickets))
            paths = Path(tmp) / "paths.txt"
            paths.write_text("".join(f"/v1/campaigns/{cid}/queue/{t}\n" for t in tickets))
            cmd = ["wrk", "-t2", "-c100", "-s", str(HERE / "queue_poll.lua"), api.url, "--", str(paths),
                   STOREFRONT_TOKENS["shop-a"]]
            subprocess.run([*cmd[:1], "-d2s", *cmd[1:]], capture_output=True, check=True)  # warm the cache
            assert api.proc is not None
            before = _cpu_seconds(api.proc.pid)
            out = subprocess.run([*cmd[:1], f"-d{seconds}s", *cmd[1:]], capture_output=True, text=True,
                                 check=True).stdout
            spent = _cpu_seconds(api.proc.pid) - before
            d = orjson.loads(out.strip().splitlines()[-1])
            sample = httpx.get(f"{api.url}/v1/campaigns/{cid}/queue/{tickets[-1]}",
                               headers={"Authorization": f"Bearer {STOREFRONT_TOKENS['shop-a']}"}).json()
            assert sample["state"] == "waiting", sample
            return {"rps": d["requests"] / (d["duration_us"] / 1e6), "p50_ms": d["p50_us"] / 1000,
                    "p99_ms": d["p99_us"] / 1000, "non2xx": d["non2xx"], "errors": d["socket_errors"],
                    "cpu_us": spent / max(d["requests"], 1) * 1e6}
        finally:
            api.stop()
            redis.stop()


async def _app_poll_us(redis_url: str, n: int) -> float:
    """µs per poll through the ASGI app alone (auth, routing, the cache, the answer; no HTTP server)."""
    os.environ["FLASHSALE_ADMISSION_KEYS"] = KEYS
    tickets = await take_tickets(redis_url, "bench-app", 200)
    settings = Settings(redis_url=redis_url, storefront_tokens=(("shop-a", STOREFRONT_TOKENS["shop-a"]),),
                        admin_token="admin", allow_volatile_redis=True, log_level="WARNING")
    app = create_app(settings)
    headers = [(b"authorization", f"Bearer {STOREFRONT_TOKENS['shop-a']}".encode()), (b"host", b"bench")]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    async def poll(ticket: str) -> None:
        path = f"/v1/campaigns/bench-app/queue/{ticket}"
        await app({"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
                   "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
                   "server": ("bench", 80), "client": ("bench", 1)}, receive, send)

    async with app.router.lifespan_context(app):
        for t in tickets:  # fill the cache
            await poll(t)
        start = time.perf_counter()
        for i in range(n):
            await poll(tickets[i % len(tickets)])
        return (time.perf_counter() - start) / n * 1e6


def app_poll_us(n: int = 20_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(directory=tmp).start()
        try:
            return asyncio.run(_app_poll_us(redis.url, n))
        finally:
            redis.stop()


def crowd_load(seconds: int, step: int = 10) -> tuple[float, float]:
    """CROWD pre-queue tickets, each polling at the opening and then whenever ``poll_after_ms``
    says, while CROWD_RATE/s are admitted: (mean, peak) polls/s over the first ``seconds``
    (every ``step``-th ticket simulated, counts scaled up)."""
    opens = 10**12
    d = definition("crowd", admit_per_second=CROWD_RATE)
    c = parse({**d, "opens_at": "2001-09-09T01:46:40Z", "closes_at": "2001-09-10T01:46:40Z",
               "admission": {**d["admission"], "queue_opens_at": "2001-09-09T00:46:40Z"}})
    assert c.opens_at_ms == opens
    ring, rng = Keyring.parse(KEYS), random.Random(7)
    snap = Snapshot(c, Schedule.build(opens, CROWD_RATE, None), "x", CROWD, False, opens, time.monotonic())
    per_second = [0] * seconds
    heap = []
    for position in range(1, CROWD + 1, step):
        before = answer("t", snap, Ticket(TicketRecord("u", "s", opens - 1, 0), None), ring, opens - 1000, rng)
        heap.append((opens - 1000 + before["poll_after_ms"], position))
    heapq.heapify(heap)
    while heap and heap[0][0] < opens + seconds * 1000:
        at, position = heapq.heappop(heap)
        per_second[(at - opens) // 1000] += step
        body = answer("t", snap, Ticket(TicketRecord("u", "s", opens - 1, 0), position), ring, at, rng)
        if body["state"] == "waiting":
            heapq.heappush(heap, (at + body["poll_after_ms"], position))
    return sum(per_second) / seconds, float(max(per_second))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--tickets", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    run = polls_per_second(args.seconds, args.tickets)
    in_app = app_poll_us()
    mean, peak = crowd_load(CROWD_SECONDS)
    body = (f"| what | figure |\n|---|---|\n"
            f"| polls/s, one worker, {args.tickets} tickets in turn (wrk -t2 -c100, {args.seconds} s) | "
            f"{run['rps']:,.0f} |\n"
            f"| p50 / p99 | {run['p50_ms']:.1f} / {run['p99_ms']:.1f} ms |\n"
            f"| server CPU per poll | {run['cpu_us']:.0f} µs |\n"
            f"| non-2xx / socket errors | {run['non2xx']} / {run['errors']} |\n"
            f"| one poll through the ASGI app alone (no HTTP server), in process | {in_app:.0f} µs |\n")
    body += (f"| {CROWD:,} pre-queue tickets polling as told, {CROWD_RATE}/s admitted: polls/s over the "
             f"first {CROWD_SECONDS} s after the opening, mean / peak second | {mean:,.0f} / {peak:,.0f} |\n")
    print(body)
    if not args.no_write:
        write_section("queue", "Waiting room: polls one worker answers", "python -m scripts.bench.queue", body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
