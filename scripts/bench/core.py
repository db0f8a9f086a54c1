"""Reserves/s through the Engine API, side by side with redis-benchmark on the same reserve.lua.

    python -m scripts.bench.core [--requests N] [--concurrency C] [--rounds R] [--no-write]

On a private redis-server it starts (no AOF: this measures the path, not the disk), each round
runs, in turn, from a fresh database holding one campaign with a huge tranche and a high rate
limit (nothing sells out, nothing is rate limited, no caps):

- ``redis-benchmark``: EVALSHA of reserve.lua carrying one request, pipeline 1, C connections,
  with ``-r`` and ``__rand_int__`` so reservation ids, idempotency keys and users all differ;
- the Engine's batched ``reserve`` from this one Python process (uvloop), C concurrent tasks,
  each a new user and a new key;
- the naive ``reserve_unbatched`` (one redis-py EVALSHA per request), same C;
- the Engine's batched ``confirm`` of the holds its reserve phase made, and a one-call-per-
  confirm baseline, same C.

It reports the best round of each and the ratio engine / redis-benchmark (target ≥ 0.6), and
writes them into BENCHMARKS.md (section ``core``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis

from engine import keys
from engine.campaign import parse
from engine.core import Engine, ReserveRequest
from engine.core.scripts import source
from engine.settings import Settings
from scripts.bench.report import write_section
from tests.support.servers import RedisServer

CAMPAIGN = "bench"
PRODUCT = "p1"
RAND_SPACE = 10**11  # __rand_int__ range: collisions negligible at these request counts


@dataclass
class Figure:
    name: str
    rate: float  # operations per second
    cpu_us: float  # CPU of this Python process per operation (µs); 0 for redis-benchmark
    redis_cpu_us: float  # CPU of redis-server per operation (µs)


def definition() -> dict[str, object]:
    return {
        "id": CAMPAIGN, "title": "bench", "currency": "CNY", "unit_price": 100,
        "opens_at": "2000-01-01T00:00:00Z", "closes_at": "2100-01-01T00:00:00Z",
        "hold_seconds": 3600, "total_units": 10**12,
        "rate_limit": {"per_second": 1_000_000, "burst": 1_000_000},
        "products": [{"id": PRODUCT, "title": "bench product", "total_units": 10**12}],
    }


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def fresh(server: RedisServer, settings: Settings) -> Engine:
    """A flushed database holding the bench campaign, and an engine on it."""
    sync = redis.Redis(port=server.port)
    sync.flushall()
    sync.close()
    engine = Engine.from_settings(settings)
    await engine.load_campaign(parse(definition()))
    await engine.ready()
    return engine


def redis_benchmark(server: RedisServer, requests: int, concurrency: int) -> Figure:
    client = redis.Redis(port=server.port)
    client.flushall()
    client.close()
    asyncio.run(_load_only(server))
    client = redis.Redis(port=server.port)
    sha = client.script_load(source("reserve"))
    k = keys.CampaignKeys(CAMPAIGN)
    cmd = ["EVALSHA", sha, "11", k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds,
           k.events, k.rate, k.ratelimit, k.registrations, k.buyers,
           "1", "r__rand_int__", "bench", "k__rand_int__", "u__rand_int__", PRODUCT, "1", ""]
    before = redis_cpu(client)
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-c", str(concurrency),
         "-n", str(requests), "-P", "1", "-r", str(RAND_SPACE), "--csv", *cmd],
        capture_output=True, text=True, check=True, timeout=600).stdout
    used = redis_cpu(client) - before
    held = int(client.hget(k.counters, keys.Counters.HELD) or 0)
    client.close()
    if held < requests * 0.99:
        raise SystemExit(f"redis-benchmark made only {held} of {requests} reservations: {out}")
    rate = float(re.findall(r'"([0-9.]+)"', out.strip().splitlines()[-1])[0])
    return Figure("redis-benchmark, EVALSHA reserve.lua, pipeline 1", rate, 0.0, used / requests * 1e6)


async def _load_only(server: RedisServer) -> None:
    engine = await fresh(server, Settings(redis_url=server.url))
    await engine.close()


async def drive(concurrency: int, requests: int, op: Callable[[int], Awaitable[object]]) -> float:
    """Run ``op(i)`` for i in 0..requests-1 from ``concurrency`` tasks; seconds taken."""
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            await op(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


async def engine_phases(server: RedisServer, requests: int, concurrency: int, settings: Settings,
                        unbatched_requests: int) -> list[Figure]:
    engine = await fresh(server, settings)
    stats = redis.Redis(port=server.port)
    tag = os.urandom(4).hex()
    users = [f"u{random.randrange(RAND_SPACE)}" for _ in range(requests)]
    rids: list[str] = []
    figures: list[Figure] = []

    async def measure(name: str, n: int, op: Callable[[int], Awaitable[object]]) -> None:
        cpu0, rcpu0 = time.process_time(), redis_cpu(stats)
        seconds = await drive(concurrency, n, op)
        cpu, rcpu = time.process_time() - cpu0, redis_cpu(stats) - rcpu0
        figures.append(Figure(name, n / seconds, cpu / n * 1e6, rcpu / n * 1e6))

    async def reserve(i: int) -> None:
        o = await engine.reserve(CAMPAIGN, ReserveRequest(users[i], PRODUCT, 1, f"k{tag}-{i}", "bench"))
        rids.append(o.reservation.reservation_id)

    async def reserve_naive(i: int) -> None:
        await engine.reserve_unbatched(CAMPAIGN, ReserveRequest(users[i], PRODUCT, 1, f"n{tag}-{i}", "bench"))

    async def confirm(i: int) -> None:
        await engine.confirm(CAMPAIGN, rids[i], f"pay-{i}", storefront="bench")

    async def confirm_naive(i: int) -> None:
        k = keys.CampaignKeys(CAMPAIGN)
        code, *_ = await engine.scripts.confirm(
            keys=[k.counters, k.users, k.reservations, k.holds, k.events, k.damaged],
            args=[1, rids[i], "bench", f"pay-{i}"])
        assert code == 0

    try:
        await measure("engine `reserve` (batched), one Python process", requests, reserve)
        await measure("engine `reserve_unbatched` (one redis-py call each)", unbatched_requests, reserve_naive)
        await measure("engine `confirm` (batched)", requests - unbatched_requests, confirm)
        rids[:] = rids[requests - unbatched_requests:]
        await measure("one redis-py EVALSHA confirm.lua per confirm", unbatched_requests, confirm_naive)
    finally:
        stats.close()
        await engine.close()
    return figures


def run_engine(server: RedisServer, requests: int, concurrency: int, settings: Settings,
               unbatched: int) -> list[Figure]:
    try:
        import uvloop

        return uvloop.run(engine_phases(server, requests, concurrency, settings, unbatched))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(engine_phases(server, requests, concurrency, settings, unbatched))


def table(best: dict[str, Figure]) -> str:
    rows = ["| what | ops/s | Python CPU µs/op | Redis CPU µs/op |", "|---|---:|---:|---:|"]
    for f in best.values():
        py = f"{f.cpu_us:.1f}" if f.cpu_us else "—"
        rows.append(f"| {f.name} | {f.rate:,.0f} | {py} | {f.redis_cpu_us:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=60_000, help="reserves per phase")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-max", type=int, default=Settings().batch_max)
    ap.add_argument("--batch-inflight", type=int, default=Settings().batch_inflight)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    a = ap.parse_args()
    unbatched = max(a.requests // 4, 1000)
    server = RedisServer().start()
    best: dict[str, Figure] = {}
    per_round: list[float] = []  # engine / redis-benchmark within each round
    try:
        settings = Settings(redis_url=server.url, batch_max=a.batch_max, batch_inflight=a.batch_inflight,
                            redis_timeout_s=30.0)  # a loaded host must not turn into errors
        for r in range(a.rounds):
            figs = [redis_benchmark(server, a.requests, a.concurrency),
                    *run_engine(server, a.requests, a.concurrency, settings, unbatched)]
            per_round.append(figs[1].rate / figs[0].rate)
            for f in figs:
                print(f"round {r + 1}: {f.name}: {f.rate:,.0f}/s  "
                      f"(py {f.cpu_us:.1f} µs, redis {f.redis_cpu_us:.1f} µs)", flush=True)
                if f.name not in best or f.rate > best[f.name].rate:
                    best[f.name] = f
    finally:
        server.stop()
    figures = list(best.values())
    rb, eng, naive = figures[0].rate, figures[1].rate, figures[2].rate
    ratio = eng / rb
    verdict = "meets" if ratio >= 0.6 else "MISSES"
    command = (f"python -m scripts.bench.core --requests {a.requests} --concurrency {a.concurrency} "
               f"--rounds {a.rounds}")
    body = (
        f"Reserve throughput through the Engine API against redis-benchmark driving the same "
        f"`reserve.lua` on the same private Redis (no AOF), concurrency {a.concurrency} for every "
        f"row, {a.requests:,} reserves per phase (naive rows: {unbatched:,}), best of {a.rounds} "
        f"rounds run alternately. Engine batches: at most {a.batch_max} requests per call, "
        f"{a.batch_inflight} calls in flight, over the lean pipelined connection (`engine/core/wire.py`).\n\n"
        f"{table(best)}\n\n"
        f"**Engine `reserve` / redis-benchmark = {ratio:.2f}×** ({verdict} the ≥ 0.6× target; "
        f"within each round: {', '.join(f'{x:.2f}×' for x in per_round)}); "
        f"naive one-call-per-request / redis-benchmark = {naive / rb:.2f}×; batched / naive = {eng / naive:.1f}×."
    )
    print(body)
    if not a.no_write:
        write_section("core", "Reservation core: Engine API vs redis-benchmark", command, body)


if __name__ == "__main__":
    main()
