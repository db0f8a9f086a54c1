"""What ops cost: a stats read, a /metrics scrape, and the script instrumentation on the hot path.

    python -m scripts.bench.ops [--rounds R] [--requests N] [--no-write]

On a private redis-server (no AOF), with the Yulebao phase-1 campaign (5 products) opened now
and 9 more like it, after N reservations spread over them (so the counters, the rate ring and the
streams are populated):

- ``campaign_stats`` of one campaign, called back to back: µs per call (the stats endpoint's
  engine part);
- ``metrics.render`` (every campaign's counters, the ledger's figures, the process metrics):
  ms per scrape, with 1 and with 10 campaigns;
- the batched reserve, N requests from 200 concurrent tasks, on a plain Engine and on one
  wrapped by ``engine.ops.instrument`` (a timer around every script call), alternating, best
  round of each: the ratio is what script-level metrics cost the hot path.

Writes the figures into BENCHMARKS.md (section ``ops``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace

import redis

from engine.campaign import Campaign, load_file
from engine.core import Engine, ReserveRequest
from engine.ops import metrics
from engine.ops.instrument import instrument
from engine.ops.stats import campaign_stats
from engine.settings import Settings
from scripts.bench.report import write_section
from tests.support.servers import RedisServer

CONCURRENCY = 200


def campaigns(n: int) -> list[Campaign]:
    """Yulebao phase 1, open from now on, as ``n`` campaigns; no caps or rate limit in the way."""
    base = load_file("campaigns/yulebao-2014-p1.toml")
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        c = replace(base, id=f"yulebao-{i}", opens_at_ms=now - 60_000, closes_at_ms=now + 3_600_000,
                    user_cap_units=None, total_units=10**9,
                    rate_limit=replace(base.rate_limit, per_second=1_000_000, burst=1_000_000),
                    products=tuple(replace(p, user_cap_units=None, total_units=10**8) for p in base.products))
        out.append(c)
    return out


async def reserve_many(engine: Engine, campaign: Campaign, n: int, tag: str) -> float:
    """Reservations per second, n requests from CONCURRENCY tasks."""
    pids = [p.id for p in campaign.products]
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await engine.reserve(campaign.id, ReserveRequest(f"{tag}-u{i}", pids[i % len(pids)], 1,
                                                             f"{tag}-k{i}", "bench"))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - start)


async def per_call(make: object, calls: int) -> float:
    """Mean seconds of ``await make()`` over ``calls`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        await make()  # type: ignore[operator]
    return (time.perf_counter() - start) / calls


async def run(rounds: int, requests: int) -> dict[str, float]:
    server = RedisServer().start()
    try:
        sync = redis.Redis(port=server.port)
        settings = Settings(redis_url=server.url)
        plain, timed = Engine.from_settings(settings), instrument(Engine.from_settings(settings))
        many = campaigns(10)
        await plain.load_campaign(many[0])
        await reserve_many(plain, many[0], requests, "warm")
        figures: dict[str, float] = {"plain": 0.0, "instrumented": 0.0}
        for r in range(rounds):
            for name, engine in (("plain", plain), ("instrumented", timed)):
                rate = await reserve_many(engine, many[0], requests, f"{name}{r}")
                figures[name] = max(figures[name], rate)
        figures["stats_us"] = 1e6 * await per_call(lambda: campaign_stats(plain, many[0].id), 2000)
        figures["render1_ms"] = 1e3 * await per_call(lambda: metrics.render(plain), 200)
        for c in many[1:]:
            await plain.load_campaign(c)
            await reserve_many(plain, c, requests // 10, "other")
        figures["render10_ms"] = 1e3 * await per_call(lambda: metrics.render(plain), 200)
        await plain.close()
        await timed.close()
        sync.close()
        return figures
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    f = asyncio.run(run(args.rounds, args.requests))
    body = "\n".join([
        "| what | figure |", "|---|---|",
        f"| `campaign_stats` (one campaign, 5 products), back to back | {f['stats_us']:.0f} µs per call |",
        f"| `/metrics` render, 1 campaign | {f['render1_ms']:.2f} ms per scrape |",
        f"| `/metrics` render, 10 campaigns | {f['render10_ms']:.2f} ms per scrape |",
        f"| batched reserve, plain Engine ({CONCURRENCY} tasks) | {f['plain']:,.0f} reservations/s |",
        f"| batched reserve, instrumented Engine | {f['instrumented']:,.0f} reservations/s "
        f"({f['instrumented'] / f['plain']:.2f}× plain) |",
    ])
    print(body)
    if not args.no_write:
        command = f"python -m scripts.bench.ops --rounds {args.rounds} --requests {args.requests}"
        write_section("ops", "Ops: stats, /metrics and script instrumentation", command, body)


if __name__ == "__main__":
    main()
