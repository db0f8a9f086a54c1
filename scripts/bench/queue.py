"""Waiting-room benchmark: how many polls one API worker answers, and what a crowd polling as
told asks of the API.

    python -m scripts.bench.queue [--seconds 5] [--tickets 20000] [--no-write]

1. A private redis-server (no AOF) and ``flashsale serve --workers 1`` with admission keys; a
   queue-mode campaign opened a minute ago with admission paused, and ``--tickets`` tickets
   taken through ``AdmissionService`` (storefront ``shop-a``). wrk (2 threads, 100 connections)
   then polls ``GET …/queue/{ticket}``: every ticket's first poll, then over every ticket in turn:
   polls/s, p50/p99, the server's CPU and Redis's commands per poll; and, in process, the µs of
   one poll through the ASGI app alone (auth, routing, the worker's cache, the answer), which says
   what the app costs apart from the HTTP server.
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
import redis as redis_py

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


THREADS = 2


def wrk(cmd: list[str], seconds: int) -> dict[str, Any]:
    out = subprocess.run([*cmd[:1], f"-d{seconds}s", *cmd[1:]], capture_output=True, text=True, check=True).stdout
    return orjson.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def polls_per_second(seconds: int, n_tickets: int) -> dict[str, dict[str, float]]:
    """Two wrk runs on one worker: every ticket's first poll (after the opening: the worker reads
    the ticket through ``queue_seen.lua``, which notes the first poll), then ``seconds`` of polls
    over every ticket in turn, each answered from the worker's memory. Per run: polls/s, p50/p99,
    the server's CPU and the Redis commands (a script counts once with each command it runs) per
    poll."""
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(directory=tmp).start()
        api = ApiServer(redis.url, workers=1, FLASHSALE_ADMISSION_KEYS=KEYS).start()
        try:
            cid = "bench-queue"
            tickets = asyncio.run(take_tickets(redis.url, cid, n_tickets))
            paths = Path(tmp) / "paths.txt"
            paths.write_text("".join(f"/v1/campaigns/{cid}/queue/{t}\n" for t in tickets))
            assert api.proc is not None
            runs: dict[str, dict[str, float]] = {}
            # wrk waits out its duration even when its threads stopped early: the first polls' rate is
            # judged by their CPU, and the run must be long enough for every ticket to have its answer
            for mode, limit in (("once", max(10, n_tickets // 1000)), ("turn", seconds)):
                cmd = ["wrk", f"-t{THREADS}", "-c100", "-s", str(HERE / "queue_poll.lua"), api.url, "--", str(paths),
                       STOREFRONT_TOKENS["shop-a"], mode, str(THREADS)]
                before, calls = _cpu_seconds(api.proc.pid), redis_calls(redis.url)
                d = wrk(cmd, limit)
                spent = _cpu_seconds(api.proc.pid) - before
                calls = redis_calls(redis.url) - calls - 1  # less the INFO that read the count
                n = max(d["requests"], 1)
                assert mode != "once" or n >= n_tickets, f"only {n} of {n_tickets} tickets polled: fewer tickets"
                runs[mode] = {"polls": d["requests"], "rps": d["requests"] / (d["duration_us"] / 1e6),
                              "p50_ms": d["p50_us"] / 1000, "p99_ms": d["p99_us"] / 1000, "non2xx": d["non2xx"],
                              "errors": d["socket_errors"], "cpu_us": spent / n * 1e6, "redis_per_poll": calls / n}
            sample = httpx.get(f"{api.url}/v1/campaigns/{cid}/queue/{tickets[-1]}",
                               headers={"Authorization": f"Bearer {STOREFRONT_TOKENS['shop-a']}"}).json()
            assert sample["state"] == "waiting", sample
            return runs
        finally:
            api.stop()
            redis.stop()


def redis_calls(url: str) -> int:
    """Commands the redis-server has processed so far (INFO stats; a script counts once with each
    command it runs)."""
    client = redis_py.Redis.from_url(url)
    try:
        stats: dict[str, Any] = client.info("stats")  # type: ignore[assignment]
        return int(stats["total_commands_processed"])
    finally:
        client.close()


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
    load_before = os.getloadavg()[0]
    runs = polls_per_second(args.seconds, args.tickets)
    in_app = app_poll_us()
    mean, peak = crowd_load(CROWD_SECONDS)
    first, turn = runs["once"], runs["turn"]
    body = (f"One worker, {args.tickets:,} tickets of a campaign opened a minute before (admission paused), "
            f"wrk -t{THREADS} -c100: first every ticket's first poll ({first['polls']:,.0f} polls), then "
            f"{args.seconds} s of polls over every ticket in turn.\n\n"
            f"| what | each ticket's first poll (`queue_seen.lua`) | later polls (the worker's memory) |\n"
            f"|---|---:|---:|\n"
            f"| polls/s measured (wrk beside the server on the same cores) | — | {turn['rps']:,.0f} |\n"
            f"| polls/s one worker's core could answer (1 s / CPU per poll) | {1e6 / first['cpu_us']:,.0f} | "
            f"{1e6 / turn['cpu_us']:,.0f} |\n"
            f"| p50 / p99 | {first['p50_ms']:.1f} / {first['p99_ms']:.1f} ms | "
            f"{turn['p50_ms']:.1f} / {turn['p99_ms']:.1f} ms |\n"
            f"| server CPU per poll | {first['cpu_us']:.0f} µs | {turn['cpu_us']:.0f} µs |\n"
            f"| Redis commands per poll | {first['redis_per_poll']:.2f} | {turn['redis_per_poll']:.4f} |\n"
            f"| non-2xx / socket errors | {first['non2xx']:.0f} / {first['errors']:.0f} | "
            f"{turn['non2xx']:.0f} / {turn['errors']:.0f} |\n\n"
            f"| what | figure |\n|---|---|\n"
            f"| one poll through the ASGI app alone (no HTTP server), in process, cached ticket | {in_app:.0f} µs |\n")
    body += (f"| {CROWD:,} pre-queue tickets polling as told, {CROWD_RATE}/s admitted: polls/s over the "
             f"first {CROWD_SECONDS} s after the opening, mean / peak second | {mean:,.0f} / {peak:,.0f} |\n")
    body += (f"\nThe crowd's busiest second asks {peak * turn['cpu_us'] / 1e6:.0%} of one worker's core if its polls "
             f"find their tickets in memory, {peak * first['cpu_us'] / 1e6:.0%} if every one were a ticket's first "
             f"poll (the first minutes after the opening are mostly those); its mean, "
             f"{mean * turn['cpu_us'] / 1e6:.0%} to {mean * first['cpu_us'] / 1e6:.0%}. A ticket's first poll on a "
             f"worker is one Redis round trip (`queue_seen.lua`: five commands, one of them the HSETNX that notes "
             f"the first poll); every later poll there reads nothing (the snapshot's refresh, every "
             f"0.2 s, is the {turn['redis_per_poll']:.4f} commands per poll).\n")
    body += (f"\nLoad average (1 min) {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end, on a "
             f"host shared with other work: read the columns side by side, not against other sections.\n")
    print(body)
    if not args.no_write:
        write_section("queue", "Waiting room: polls one worker answers",
                      f"python -m scripts.bench.queue --tickets {args.tickets} --seconds {args.seconds}", body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
