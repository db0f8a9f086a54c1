"""Redis bytes per buyer and per reservation, and the projected memory of a Yulebao-sized sale.

    python -m scripts.bench.memory [--reservations N] [--no-write]

On a private redis-server (no AOF), one campaign (three products, a per-user cap, buyer caps on
identity, device and network, the default rate limit, so every store a real sale writes is
written), through the Engine's batched calls, through one storefront (per-storefront fields):

1. N buyers each reserve one unit and confirm it: ``used_memory`` grows by what N buyers and N
   reservations cost;
2. the same N buyers each reserve and confirm one more unit of the same product: no new buyer,
   no new per-user field, so the growth is what N reservations cost;
3. the rate limiter is pruned (``engine.core.prune``) once the buyers are replenished.

Per reservation = growth 2 / N; per buyer = (growth 1 - growth 2) / N. The stream is counted
apart: the ledger writer trims it as it drains (what stays is the undrained lag), so the
projection gives both the steady state (stream drained) and the worst case (nothing drained).
``MEMORY USAGE`` (exact, ``SAMPLES 0``) of each key is listed after step 2. Written into
BENCHMARKS.md (section ``memory``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import redis

from engine import keys
from engine.admission.buyer import Buyer
from engine.campaign import parse
from engine.core import Engine, ReserveRequest
from engine.core.prune import RateLimitPruner
from engine.settings import Settings
from scripts.bench.report import write_section
from tests.support.servers import RedisServer

CAMPAIGN = "memory"
YULEBAO_UNITS = 920_000
YULEBAO_BUYERS = 300_000
CHUNK = 2000  # concurrent calls per gather


def definition() -> dict[str, Any]:
    return {
        "id": CAMPAIGN, "title": "娱乐宝 memory", "currency": "CNY", "unit_price": 10000,
        "opens_at": "2000-01-01T00:00:00Z", "closes_at": "2100-01-01T00:00:00Z",
        "hold_seconds": 900, "total_units": 10**9, "user_cap_units": 10,
        "identity_cap_units": 10, "device_cap_units": 10, "network_cap_units": 10**6,
        "products": [{"id": f"film-{i}", "title": f"film {i}", "total_units": 10**8, "user_cap_units": 10}
                     for i in range(3)],
    }


async def buy(engine: Engine, n: int, round_: int) -> None:
    """n buyers (u0…), each one unit of film-(i % 3), reserved and confirmed; buyer i has its own
    identity and device, 256 buyers share a /24 network."""

    async def one(i: int) -> None:
        buyer = Buyer(identity=f"person-{i:07d}", device=f"device-{i:07d}",
                      ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
        out = await engine.reserve(CAMPAIGN, ReserveRequest(f"user-{i:07d}", f"film-{i % 3}", 1,
                                                            f"idem-{round_}-{i:07d}", "shop-a", buyer))
        await engine.confirm(CAMPAIGN, out.reservation.reservation_id, f"pay-{round_}-{i:07d}", storefront="shop-a")

    for s in range(0, n, CHUNK):
        await asyncio.gather(*(one(i) for i in range(s, min(n, s + CHUNK))))


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def usage(r: redis.Redis) -> dict[str, int]:
    k = keys.CampaignKeys(CAMPAIGN)
    out: dict[str, int] = {}
    for key in k.all():
        size = r.memory_usage(key, samples=0)
        if size:
            out[key] = int(size)
    return out


async def measure(n: int) -> dict[str, Any]:
    server = RedisServer().start()
    engine = Engine.from_settings(Settings(redis_url=server.url, redis_timeout_s=60.0))
    r = redis.Redis(port=server.port)
    try:
        await engine.load_campaign(parse(definition()))
        base = used(r)
        t0 = time.monotonic()
        await buy(engine, n, 1)
        after1 = used(r)
        stream1 = int(r.memory_usage(keys.CampaignKeys(CAMPAIGN).events, samples=0) or 0)
        await buy(engine, n, 2)
        after2 = used(r)
        per_key = usage(r)
        took = time.monotonic() - t0
        stream2 = per_key.get(keys.CampaignKeys(CAMPAIGN).events, 0)
        await asyncio.sleep(3.0)  # every buyer's limiter replenished (default 5/s, burst 10)
        pruner = RateLimitPruner(engine.redis, calls=10**9)
        pruned = await pruner.prune(CAMPAIGN)
        after_prune = used(r)
    finally:
        r.close()
        await engine.close()
        server.stop()
    return {"n": n, "base": base, "after1": after1, "after2": after2, "stream1": stream1, "stream2": stream2,
            "per_key": per_key, "pruned": pruned, "after_prune": after_prune, "seconds": took}


def report(m: dict[str, Any]) -> str:
    n = m["n"]
    g1, g2 = m["after1"] - m["base"], m["after2"] - m["after1"]
    s2 = m["stream2"] - m["stream1"]  # round 2's stream entries
    per_res = g2 / n
    per_res_drained = (g2 - s2) / n
    per_buyer = (g1 - g2) / n
    rl_freed = (m["after2"] - m["after_prune"]) / n
    yb_res = YULEBAO_UNITS  # worst case: one unit per reservation
    steady = YULEBAO_BUYERS * per_buyer + yb_res * per_res_drained
    worst = YULEBAO_BUYERS * per_buyer + yb_res * per_res
    rows = "\n".join(f"| `{k}` | {v:,} | {v / (2 * n):.0f} |" for k, v in sorted(m["per_key"].items(),
                                                                                key=lambda kv: -kv[1]))
    return f"""Two rounds of {n:,} reservations (each reserved and confirmed) on a private Redis, through the
Engine's batched calls ({m['seconds']:.0f} s for both rounds): round 1 by {n:,} new buyers, round 2 by
the same buyers again (same product, so no new per-user field).

| what | bytes |
|---|---:|
| per reservation: record, idempotency key, its two stream entries (round 2 / N) | {per_res:,.0f} |
| per reservation, stream drained by the writer | {per_res_drained:,.0f} |
| of which the two stream entries (the writer trims them once acknowledged) | {s2 / n:,.0f} |
| per buyer: users fields (campaign, product, storefront), buyer caps (identity, device, \
1/256 network), rate limiter ((round 1 − round 2) / N) | {per_buyer:,.0f} |
| per buyer, freed by pruning the rate limiter once replenished ({m['pruned']:,} fields) | {rl_freed:,.0f} |

Yulebao-sized sale, {YULEBAO_UNITS:,} units to {YULEBAO_BUYERS:,} buyers, one unit per reservation (the most
reservations it can take): **{steady / 2**20:,.0f} MiB** with the writer keeping up (stream drained),
**{worst / 2**20:,.0f} MiB** if nothing were drained (every entry still in the stream); pruning the
rate limiter takes about {YULEBAO_BUYERS * rl_freed / 2**20:,.0f} MiB of that back as the sale runs. After
`flashsale campaign archive` all of it leaves Redis (the ledger keeps the sale).

`MEMORY USAGE` (`SAMPLES 0`) after round 2 ({2 * n:,} reservations, stream undrained):

| key | bytes | ÷ reservations |
|---|---:|---:|
{rows}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reservations", type=int, default=100_000, help="reservations per round (N)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    try:
        import uvloop

        m = uvloop.run(measure(args.reservations))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        m = asyncio.run(measure(args.reservations))
    body = report(m)
    print(body)
    if not args.no_write:
        command = "python -m scripts.bench.memory" + (
            f" --reservations {args.reservations}" if args.reservations != 100_000 else "")
        write_section("memory", "Redis memory per buyer and per reservation; a Yulebao-sized sale", command, body)


if __name__ == "__main__":
    main()
