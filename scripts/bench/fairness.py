"""Fairness against scalpers: the same crowd and the same farms, open mode against queue mode.

    python -m scripts.bench.fairness [--quick] [--units N] [--people N] [--operators N] [--accounts N]
                                     [--no-write]

The scalper scenario of issue 13: a 20,000-unit campaign capped at 10 units per user; 20 scalper
operators with 100 accounts each (each operator's accounts on 3 identities, 5 devices, 2 /24
networks) fire at the first millisecond of the opening (of the pre-queue, in queue mode), while
4,000 people, each with their own identity, device and network, arrive at random over 20 seconds
starting 10 seconds before the opening. Run twice on one stack (a private redis-server,
``flashsale serve`` with 2 workers and an admission key, the writer): ``mode: open`` (no
identity caps) and ``mode: queue`` (the pre-queue opens 10 s before the sale, admission at
``--admit-per-second``, an identity cap of 10 units). For each: the farms' share of the tranche
against their share of the identities (target in queue mode: at most 1.5x), the share of people
who got anything, and in queue mode whether the pre-queue was a fair lottery (the rank correlation
of join time and position, near 0; the success rate by join-time decile, flat). Then the reserve
throughput with the admission token checked (queue mode) against open mode, same requests, same
connections, alternating rounds (target: at least 0.9x).

What the server enforces is probed, not assumed: whether a reserve without a token is refused, and
whether the buyer object is accepted (a server before the buyer caps refuses it; the generator
then sends none, and the identity caps cannot hold). The section says which.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from rich.console import Console

from engine.demo import DemoConfig, Stack, stack
from engine.loadgen.behaviour import Mix
from engine.loadgen.campaigns import put_campaign
from engine.loadgen.crowd import Scalpers
from engine.loadgen.generator import LoadConfig
from engine.loadgen.http import Connection, split_url
from engine.loadgen.record import CONFIRMED, HELD, Record
from engine.loadgen.run import RunResult, run_async, run_load
from scripts.bench.report import write_section

SHARE_TARGET = 1.5
THROUGHPUT_TARGET = 0.9


@dataclass(frozen=True, slots=True)
class Scenario:
    units: int = 20_000
    user_cap: int = 10
    identity_cap: int = 10
    people: int = 4000
    arrive_s: float = 20.0
    prequeue_s: float = 10.0
    farms: Scalpers = field(default_factory=lambda: Scalpers(20, 100, 3, 5, 2))
    admit_per_second: int = 500
    throughput_reserves: int = 20_000
    throughput_conns: int = 64
    rounds: int = 2
    time_bound_s: float = 90.0


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def definition(cid: str, sc: Scenario, *, queued: bool, opens_in_s: float, units: int | None = None,
               per_user: int | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    opens = now + timedelta(seconds=opens_in_s)
    total = units or sc.units
    d: dict[str, Any] = {
        "id": cid, "title": f"fairness {cid}", "currency": "CNY", "unit_price": 10000,
        "opens_at": _iso(opens), "closes_at": _iso(opens + timedelta(hours=2)), "hold_seconds": 900,
        "total_units": total, "user_cap_units": per_user or sc.user_cap,
        "rate_limit": {"per_second": 1000, "burst": 1000},
        "products": [{"id": "units", "title": "units", "total_units": total}],
    }
    if queued:
        d["admission"] = {"mode": "queue", "queue_opens_at": _iso(opens - timedelta(seconds=sc.prequeue_s)),
                          "admit_per_second": sc.admit_per_second, "token_seconds": 600}
        d["identity_cap_units"] = sc.identity_cap
    return d


# -- the scalper scenario ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fairness:
    mode: str
    farm_units: int
    kept_units: int
    total_units: int
    farm_identities: int
    identities: int
    people: int
    people_served: int
    sellout_s: float | None
    verdict: str
    notes: tuple[str, ...]
    correlation: float | None = None  # pre-queue people: rank correlation of join time and position
    deciles: tuple[float, ...] = ()  # success rate by join-time decile (pre-queue people, queue mode)
    late_served: float | None = None  # people who came after the opening, share served

    @property
    def farm_share(self) -> float:
        return self.farm_units / self.total_units

    @property
    def identity_share(self) -> float:
        return self.farm_identities / self.identities

    @property
    def ratio(self) -> float:
        return self.farm_share / self.identity_share


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    for r, i in enumerate(order):
        out[i] = float(r)
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    try:
        return statistics.correlation(rx, ry)
    except statistics.StatisticsError:
        return None


def judge_fairness(mode: str, result: RunResult, sc: Scenario) -> Fairness:
    rec: Record = result.record
    kept = [g for g in rec.grants if g.state in (HELD, CONFIRMED)]
    farm_units = sum(g.units for g in kept if rec.operator_of(g.user) is not None)
    served = {g.user for g in rec.grants if rec.operator_of(g.user) is None}
    farm_ids = sc.farms.operators * sc.farms.identities
    deciles: tuple[float, ...] = ()
    corr = None
    opened = rec.opens_ms
    pre = [t for t in rec.tickets.values() if t.pre_queue and rec.operator_of(t.user) is None
           and t.position is not None]
    if pre:  # queue mode: did joining earlier in the pre-queue help?
        corr = spearman([t.joined_ms for t in pre], [float(t.position or 0) for t in pre])
        pre.sort(key=lambda t: t.joined_ms)
        deciles = tuple(sum(1 for t in chunk if t.user in served) / len(chunk)
                        for chunk in (pre[i * len(pre) // 10:(i + 1) * len(pre) // 10] for i in range(10)) if chunk)
    elif rec.arrivals:  # open mode: the same question of the people who came before the opening
        early = sorted((at, uid) for uid, at in rec.arrivals.items() if at < opened)
        if early:
            deciles = tuple(sum(1 for _, u in chunk if u in served) / len(chunk)
                            for chunk in (early[i * len(early) // 10:(i + 1) * len(early) // 10] for i in range(10))
                            if chunk)
    late = [uid for uid, at in rec.arrivals.items() if at >= opened]
    s = result.summary
    return Fairness(mode, farm_units, sum(g.units for g in kept), int(s.total_units), farm_ids,
                    farm_ids + rec.people, rec.people, len(served & set(rec.arrivals) or served), s.sellout_s,
                    "clean" if result.verdict.ok else
                    "; ".join(c.name for c in result.verdict.violations), tuple(dict.fromkeys(rec.notes)),
                    corr, deciles, (sum(1 for u in late if u in served) / len(late)) if late else None)


async def scenario(st: Stack, sc: Scenario, mode: str, seed: int) -> Fairness:
    queued = mode == "queue"
    cid = f"fair-{mode}-{int(time.time())}"
    opens_in = sc.prequeue_s + 2.0
    await put_campaign(st.url, st.admin_token, definition(cid, sc, queued=queued, opens_in_s=opens_in))
    cfg = LoadConfig(url=st.url, campaign_id=cid, token=st.token, buyers=sc.people,
                     duration_s=opens_in + sc.time_bound_s, arrive_s=sc.arrive_s, arrive_from_s=-sc.prequeue_s,
                     pool=128, scalpers=sc.farms, seed=seed,
                     mix=Mix(bad=0.0, token_probe=0.0), poll_cap_s=2.0)
    quiet = Console(file=io.StringIO(), width=200)
    result = await run_load(cfg, console=quiet, database_url=st.database_url, redis_url=st.redis.url,
                            progress=False, drain_timeout_s=30.0)
    return judge_fairness(mode, result, sc)


# -- reserve throughput: token checked against open mode ---------------------------------------

async def _fire(url: str, token: str, cid: str, bodies: list[tuple[bytes, bytes]], conns: int) -> tuple[float, int]:
    """Every (headers, body) reserve over ``conns`` keep-alive connections; (seconds, 201s)."""
    host, port, prefix = split_url(url)
    path = f"{prefix}/v1/campaigns/{cid}/reservations"
    queue = list(reversed(bodies))
    ok = 0

    async def worker() -> None:
        nonlocal ok
        c = Connection(host, port, token=token)
        try:
            while queue:
                headers, body = queue.pop()
                resp = await c.request(b"POST", path, body, headers=headers, timeout_s=30)
                ok += resp.status == 201
        finally:
            c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return time.perf_counter() - t0, ok


async def _tokens(st: Stack, cid: str, users: list[str], opens_ms: float) -> dict[str, str]:
    """Each user joins the pre-queue; after the opening each ticket's token (admission is instant)."""
    host, port, prefix = split_url(st.url)
    base = f"{prefix}/v1/campaigns/{cid}/queue"
    tickets: dict[str, str] = {}
    todo = list(users)

    async def join() -> None:
        c = Connection(host, port, token=st.token)
        try:
            while todo:
                uid = todo.pop()
                resp = await c.request(b"POST", base, orjson.dumps({"user_id": uid}), timeout_s=30)
                tickets[uid] = resp.json()["ticket"]
        finally:
            c.close()

    await asyncio.gather(*(join() for _ in range(32)))
    await asyncio.sleep(max(opens_ms / 1000.0 - time.time(), 0) + 0.3)
    tokens: dict[str, str] = {}
    pending = list(tickets.items())

    async def poll() -> None:
        c = Connection(host, port, token=st.token)
        try:
            while pending:
                uid, tid = pending.pop()
                for _ in range(50):
                    d = (await c.request(b"GET", f"{base}/{tid}", timeout_s=30)).json()
                    if d["state"] == "admitted":
                        tokens[uid] = d["admission_token"]
                        break
                    await asyncio.sleep(0.1)
        finally:
            c.close()

    await asyncio.gather(*(poll() for _ in range(32)))
    return tokens


@dataclass(frozen=True, slots=True)
class Throughput:
    open_rps: float
    queue_rps: float
    enforced: bool  # a reserve without the token was refused (403)
    n: int

    @property
    def ratio(self) -> float:
        return self.queue_rps / self.open_rps


async def throughput(st: Stack, sc: Scenario) -> Throughput:
    n = sc.throughput_reserves
    best: dict[str, float] = {"open": 0.0, "queue": 0.0}
    enforced = False
    for r in range(sc.rounds):
        ts = int(time.time() * 1000)
        users = [f"tp{r}-{i}" for i in range(n)]
        q = definition(f"tp-queue-{r}-{ts}", sc, queued=True, opens_in_s=2.0 + n / 4000, units=n * 2, per_user=10)
        q["admission"]["admit_per_second"] = 1_000_000
        q["admission"]["queue_opens_at"] = _iso(datetime.now(UTC))
        q.pop("identity_cap_units")
        o = definition(f"tp-open-{r}-{ts}", sc, queued=False, opens_in_s=0.0, units=n * 2, per_user=10)
        await put_campaign(st.url, st.admin_token, q)
        await put_campaign(st.url, st.admin_token, o)
        tokens = await _tokens(st, q["id"], users, datetime.fromisoformat(q["opens_at"]).timestamp() * 1000)
        probe = orjson.dumps({"user_id": "tp-probe", "product_id": "units", "units": 1})
        _, granted = await _fire(st.url, st.token, q["id"], [(b"Idempotency-Key: tp-probe\r\n", probe)], 1)
        enforced = granted == 0
        for mode, cid in (("open", o["id"]), ("queue", q["id"])):
            bodies = []
            for uid in users:
                headers = f"Idempotency-Key: {uid}\r\n".encode()
                if mode == "queue":
                    headers += f"Admission-Token: {tokens.get(uid, '')}\r\n".encode()
                bodies.append((headers, orjson.dumps({"user_id": uid, "product_id": "units", "units": 1})))
            seconds, ok = await _fire(st.url, st.token, cid, bodies, sc.throughput_conns)
            best[mode] = max(best[mode], ok / seconds)
    return Throughput(best["open"], best["queue"], enforced, n)


# -- report ------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def render(sc: Scenario, results: list[Fairness], tp: Throughput, loaded: bool) -> str:
    f = sc.farms
    lines = [
        f"{sc.units:,} units, {sc.user_cap} per user; {f.operators} operators × {f.accounts} accounts "
        f"(each operator on {f.identities} identities, {f.devices} devices, {f.networks} networks) fire at the "
        f"opening (queue mode: of the pre-queue, {sc.prequeue_s:g} s before); {sc.people:,} people arrive over "
        f"{sc.arrive_s:g} s from {sc.prequeue_s:g} s before the opening. Queue mode: admission at "
        f"{sc.admit_per_second:,}/s, identity cap {sc.identity_cap}.",
        "",
        "| mode | farms' share of the tranche | farms' share of identities | ratio (queue target ≤ 1.5×) | "
        "people served | sold out after | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        sold = f"{r.sellout_s:.1f} s" if r.sellout_s is not None else "not sold out"
        lines.append(f"| {r.mode} | {_pct(r.farm_share)} ({r.farm_units:,} units) | {_pct(r.identity_share)} "
                     f"| {r.ratio:.2f}× | {_pct(r.people_served / max(r.people, 1))} of {r.people:,} | {sold} | "
                     f"{r.verdict} |")
    lines.append("")
    for r in results:
        if r.deciles:
            who = "pre-queue people by join time" if r.mode == "queue" else "people who came before the opening"
            corr = f"; rank correlation of join time and position {r.correlation:+.3f}" if r.correlation is not None \
                else ""
            lines.append(f"- {r.mode}: success by decile of {who} (first to last): "
                         + " · ".join(f"{d:.0%}" for d in r.deciles) + corr
                         + (f"; people who came after the opening: {_pct(r.late_served)} served"
                            if r.late_served is not None else ""))
        for note in r.notes:
            lines.append(f"- {r.mode}: note: {note}")
    lines += [
        "",
        f"Reserve throughput, {tp.n:,} single-unit reserves over {sc.throughput_conns} connections, best of "
        f"{sc.rounds} alternating rounds: open {tp.open_rps:,.0f}/s, queue (Admission-Token) {tp.queue_rps:,.0f}/s "
        f"= {tp.ratio:.2f}× (target ≥ {THROUGHPUT_TARGET}×). The server "
        + ("checked the token (a reserve without it was refused)." if tp.enforced else
           "did NOT check the token (a reserve without it was granted): this ratio measures no token check."),
    ]
    if loaded:
        lines.append("")
        lines.append("Measured on a loaded, shared machine (other jobs running): the ratios hold, not the rates.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="scaled down: 2,000 units, 4x25 farm accounts, 500 people")
    ap.add_argument("--units", type=int)
    ap.add_argument("--people", type=int)
    ap.add_argument("--operators", type=int)
    ap.add_argument("--accounts", type=int)
    ap.add_argument("--arrive", type=float, help="seconds over which the people arrive")
    ap.add_argument("--prequeue", type=float, help="seconds the waiting room is open before the sale")
    ap.add_argument("--admit-per-second", type=int)
    ap.add_argument("--throughput-reserves", type=int)
    ap.add_argument("--loaded", action="store_true", help="say in the section that the machine was loaded")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    a = ap.parse_args()
    sc = Scenario()
    if a.quick:
        sc = Scenario(units=2000, people=500, arrive_s=6.0, prequeue_s=3.0, farms=Scalpers(4, 25, 3, 5, 2),
                      admit_per_second=200, throughput_reserves=2000, time_bound_s=40.0)
    over: dict[str, Any] = {k: v for k, v in (("units", a.units), ("people", a.people), ("arrive_s", a.arrive),
                                               ("prequeue_s", a.prequeue), ("admit_per_second", a.admit_per_second),
                                               ("throughput_reserves", a.throughput_reserves)) if v is not None}
    if a.operators or a.accounts:
        f = sc.farms
        over["farms"] = Scalpers(a.operators or f.operators, a.accounts or f.accounts, f.identities, f.devices,
                                 f.networks)
    sc = Scenario(**{**{k: getattr(sc, k) for k in sc.__dataclass_fields__}, **over})
    console = Console(highlight=False, width=250)

    async def both(st: Stack) -> tuple[list[Fairness], Throughput]:
        results = [await scenario(st, sc, "open", a.seed), await scenario(st, sc, "queue", a.seed)]
        return results, await throughput(st, sc)

    with stack(DemoConfig(workers=2, progress=False), console) as st:
        results, tp = run_async(both(st))
    body = render(sc, results, tp, a.loaded)
    console.print(body)
    if not a.no_write:
        import sys

        write_section("fairness", "Fairness against scalpers: open vs queue mode",
                      "python -m scripts.bench.fairness " + " ".join(sys.argv[1:]), body)


if __name__ == "__main__":
    main()
