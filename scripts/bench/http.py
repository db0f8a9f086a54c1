"""HTTP benchmark: POST …/reservations on flashsale against a bare Starlette hello-world (the yardstick).

    python -m scripts.bench.http [--seconds 8] [--workers 1,2] [--servers granian,uvicorn] [--slowpath] [--no-write]

In one run, on loopback, for 1 and 2 worker processes:

1. the yardstick: ``scripts/bench/http_hello.py`` (Starlette ``GET /hello``) under uvicorn (uvloop,
   httptools) with that many workers, driven by wrk;
2. flashsale (``flashsale serve --workers N``) under each server, driven by wrk with
   ``http_reserve.lua``: a fresh Idempotency-Key and one of 50,000 users per thread on every
   request, on a campaign with a 10^9-unit tranche and a rate limit no user reaches, so every
   answer is a 201 (any other status is counted and reported);
3. the same flashsale at a fixed offered load of half the capacity wrk measured (wrk paced by
   ``http_paced.lua``, or ``--pacer python`` for the open-loop ``http_openloop.py``), for the
   latency a storefront sees below saturation.

Reported: req/s, p50/p99, the ratio to the yardstick, and CPU time per request of the server's
processes (steadier than req/s when the machine is shared). Redis runs without AOF here: this
measures the HTTP layer; ``scripts/bench/core.py`` prices durability.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from engine.api.server import DEFAULT_SERVER
from scripts.bench.report import write_section
from tests.support.processes import STOREFRONT_TOKENS, ApiServer, Process, admin_headers
from tests.support.servers import RedisServer, free_port

HERE = Path(__file__).resolve().parent
WRK_THREADS = 2
WRK_CONNECTIONS = 100
PACED_CONNECTIONS = 256  # for the fixed rate: enough idle connections that a due request never waits for one
WARMUP_S = 2
TARGET_RATIO = 0.5
TARGET_P99_MS = 10.0
TOKEN = STOREFRONT_TOKENS["shop-a"]


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int
    cpu_us: float  # server CPU per request (all its processes)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process group (the server and its workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # field 5: process group id
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, script: str, seconds: int, pgid: int, *args: str) -> Run:
    """Warm up, then measure; ``args`` go to the Lua script (the last one tags Idempotency-Keys)."""

    def command(duration: int, extra: list[str]) -> list[str]:
        cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "-s", str(HERE / script), url]
        return cmd + (["--", *extra] if extra else [])

    subprocess.run(command(WARMUP_S, [*args[:-1], args[-1] + "w"] if args else []), capture_output=True, check=True)
    before = _cpu_seconds(pgid)
    out = subprocess.run(command(seconds, list(args)), capture_output=True, text=True, check=True).stdout
    spent = _cpu_seconds(pgid) - before
    d = orjson.loads(out.strip().splitlines()[-1])
    rps = d["requests"] / (d["duration_us"] / 1e6)
    return Run(rps, d["p50_us"] / 1000, d["p99_us"] / 1000, d["non2xx"], d["socket_errors"],
               spent / max(d["requests"], 1) * 1e6)


class Target:
    """A server under test and how wrk drives it."""

    def __init__(self, name: str, proc: Process, url: str, script: str, args: tuple[str, ...] = ()) -> None:
        self.name, self.proc, self.url, self.script, self.args = name, proc, url, script, args
        self.runs: list[Run] = []

    def measure(self, seconds: int) -> Run:
        assert self.proc.proc is not None
        args = (*self.args, os.urandom(4).hex()) if self.args else ()
        run = wrk(self.url, self.script, seconds, self.proc.proc.pid, *args)
        self.runs.append(run)
        return run

    @property
    def best(self) -> Run:
        return max(self.runs, key=lambda r: r.rps)


def yardstick(workers: int) -> Target:
    port = free_port()
    proc = Process([str(Path(sys.executable).with_name("uvicorn")), "scripts.bench.http_hello:app", "--host",
                    "127.0.0.1", "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--http",
                    "httptools", "--no-access-log", "--log-level", "warning"], dict(os.environ)).start()
    _wait(f"http://127.0.0.1:{port}/hello", proc)
    return Target("Starlette hello-world, uvicorn (yardstick)", proc, f"http://127.0.0.1:{port}/hello",
                  "http_hello.lua")


def _wait(url: str, proc: Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if not proc.alive():
            raise RuntimeError(f"{proc.args} exited:\n{proc.output()}")
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer:\n{proc.output()}")


def flashsale(redis: RedisServer, server: str, workers: int, fast: bool = True) -> Target:
    """flashsale under ``server``; ``fast=False``: with ``FLASHSALE_FAST_PATH=0`` (engine.fastpath)."""
    api = ApiServer(redis.url, workers=workers, server=server, **({} if fast else {"FLASHSALE_FAST_PATH": "0"})).start()
    cid = f"bench-{server}-{workers}-{os.urandom(3).hex()}"
    d = {"title": "bench", "currency": "CNY", "unit_price": 10000, "opens_at": "2020-01-01T00:00:00Z",
         "closes_at": "2099-01-01T00:00:00Z", "hold_seconds": 3600, "total_units": 10**9,
         "products": [{"id": "p1", "title": "p1", "total_units": 10**9}],
         "rate_limit": {"per_second": 1_000_000, "burst": 1_000_000}}
    httpx.put(f"{api.url}/v1/campaigns/{cid}", json=d, headers=admin_headers(), timeout=10).raise_for_status()
    name = f"flashsale POST …/reservations, {server}" + ("" if fast else " (FLASHSALE_FAST_PATH=0)")
    return Target(name, api, api.url, "http_reserve.lua", (cid, TOKEN))


def fixed_rate(target: Target, rate: float, seconds: int, pacer: str) -> dict[str, float]:
    """Latency at an offered ``rate``: wrk paced by ``http_paced.lua`` (default: C, cheap on a shared
    CPU), or the Python open-loop generator (``http_openloop.py``: latency from when each request
    was due, so no coordinated omission, but its own CPU competes with the server's)."""
    assert isinstance(target.proc, ApiServer)
    if pacer == "python":
        out = subprocess.run([sys.executable, "-m", "scripts.bench.http_openloop", "--port", str(target.proc.port),
                              "--campaign", target.args[0], "--token", TOKEN, "--rate", f"{rate:.0f}",
                              "--seconds", str(seconds)], capture_output=True, text=True, check=True).stdout
        result: dict[str, float] = orjson.loads(out.strip().splitlines()[-1])
        return result
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{PACED_CONNECTIONS}", f"-d{seconds}s", "-s", str(HERE / "http_paced.lua"),
           target.url, "--", target.args[0], TOKEN, os.urandom(4).hex(), f"{rate / WRK_THREADS:.1f}"]
    d = orjson.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    return {"achieved_rps": d["requests"] / (d["duration_us"] / 1e6), "p50_us": d["p50_us"], "p99_us": d["p99_us"],
            "non2xx": d["non2xx"], "errors": d["socket_errors"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=6, help="measured seconds per wrk run (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="wrk runs per target, interleaved; the best counts")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--servers", default="granian,uvicorn")
    ap.add_argument("--pacer", choices=("wrk", "python"), default="wrk",
                    help="fixed-rate load: wrk paced by Lua, or the Python open-loop generator")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--slowpath", action="store_true",
                    help="also measure each server with FLASHSALE_FAST_PATH=0 (what an untested release runs)")
    a = ap.parse_args()
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        sys.exit("wrk not found: run `scripts/ensure-services.sh wrk` (Debian's wrk package)")
    redis = RedisServer().start()
    rows: list[str] = []
    verdicts: list[str] = []
    try:
        for workers in (int(w) for w in a.workers.split(",")):
            hello = yardstick(workers)
            apps = [flashsale(redis, server, workers, fast) for server in a.servers.split(",")
                    for fast in ((True, False) if a.slowpath else (True,))]
            try:
                for _ in range(a.rounds):  # interleaved, so a burst of noise on the host hits every target
                    for target in (hello, *apps):
                        print(f"{workers}w {target.name}: {target.measure(a.seconds)}", flush=True)
                rows.append(_row(hello.name, workers, hello.best, hello.best, None))
                for app in apps:
                    steady = fixed_rate(app, app.best.rps / 2, a.seconds, a.pacer)
                    print(f"{workers}w {app.name} at half capacity: {steady}", flush=True)
                    rows.append(_row(app.name, workers, app.best, hello.best, steady))
                    verdicts.append(_verdict(app.name, workers, app.best.rps / hello.best.rps, steady))
                served = [t for t in apps if "FAST_PATH" not in t.name]  # as `flashsale serve` runs
                if len(served) > 1:
                    fastest = max(served, key=lambda t: t.best.rps)
                    verdicts.append(f"- {workers} worker(s): the faster server for this app in this run: "
                                    f"{fastest.name.rsplit(', ', 1)[-1]} (`flashsale serve` defaults to "
                                    f"{DEFAULT_SERVER}).")
            finally:
                for target in (hello, *apps):
                    target.proc.stop()
    finally:
        redis.stop()
    body = _report(rows, verdicts, a.seconds, a.rounds, a.pacer)
    print(body)
    if not a.no_write:
        write_section("http", "HTTP API vs the Starlette yardstick", "python -m scripts.bench.http", body)


def _row(what: str, workers: int, run: Run, hello: Run, steady: dict[str, float] | None) -> str:
    ratio = "1.00" if steady is None else f"{run.rps / hello.rps:.2f}"
    at_half = "–" if steady is None else (
        f"{steady['p50_us'] / 1000:.1f} / {steady['p99_us'] / 1000:.1f} ms at {steady['achieved_rps']:,.0f} req/s"
        + (f" ({steady['non2xx'] + steady['errors']:.0f} failed)" if steady["non2xx"] or steady["errors"] else ""))
    bad = f" ({run.non2xx + run.errors} non-2xx/errors)" if run.non2xx or run.errors else ""
    return (f"| {what} | {workers} | {run.rps:,.0f}{bad} | {run.p50_ms:.1f} / {run.p99_ms:.1f} ms | {ratio} | "
            f"{run.cpu_us:.0f} µs | {at_half} |")


def _verdict(what: str, workers: int, ratio: float, steady: dict[str, float]) -> str:
    p99 = steady["p99_us"] / 1000
    return (f"- {what}, {workers} worker(s): ratio {ratio:.2f} "
            f"{'meets' if ratio >= TARGET_RATIO else 'misses'} the ≥ {TARGET_RATIO} target; p99 at half capacity "
            f"{p99:.1f} ms {'meets' if p99 < TARGET_P99_MS else 'misses'} the < {TARGET_P99_MS:g} ms target.")


def _report(rows: list[str], verdicts: list[str], seconds: int, rounds: int, pacer: str) -> str:
    head = ["| what | workers | req/s (wrk) | p50 / p99 (wrk, saturated) | ratio to yardstick | "
            "server CPU per request | p50 / p99 at half capacity |",
            "|---|---:|---:|---:|---:|---:|---|"]
    return "\n".join([
        f"wrk {WRK_THREADS} threads × {WRK_CONNECTIONS} connections, {rounds} interleaved runs of {seconds} s per "
        f"target (each after a {WARMUP_S} s warm-up), the best run shown. At half capacity: half the best wrk rate "
        f"offered for {seconds} s, " + (
            f"by wrk paced with `http_paced.lua` ({PACED_CONNECTIONS} connections, latency from each request's "
            "send)" if pacer == "wrk" else "by the open-loop generator `http_openloop.py` (latency from when each "
            "request was due)") + ". Redis without AOF. wrk, the servers and Redis share this machine's cores; "
        "server CPU per request is that server's processes' CPU time over the requests answered.", "",
        *head, *rows, "", *verdicts])


if __name__ == "__main__":
    main()
