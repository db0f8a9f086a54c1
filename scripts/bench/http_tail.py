"""Where the reserve route's tail latency comes from, at a fixed offered load, run after run.

    python -m scripts.bench.http_tail [--workers 2] [--rate 14000] [--runs 8] [--seconds 8]

``scripts/bench/http.py`` reports one p99 at half capacity; on a shared 2-core machine that
figure varies from run to run. This repeats the same paced run (wrk with ``http_paced.lua``)
against one ``flashsale serve`` and, for each run, puts the client's p99 beside what the server
itself measured over the same run, from the /metrics histograms (differences of two scrapes):

- requests that took over 10 ms inside the server (from their body to their answer);
- engine calls over 10 ms and over 5 ms (batching wait included);
- script calls (EVALSHA round trips) over 5 ms, of all script calls.

Slow engine calls with few slow script calls put the wait in the API workers (their queue, or
a worker runnable but not running), not in Redis. Nothing here is written to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scripts.bench.http import Target, fixed_rate, flashsale
from tests.support.processes import admin_headers
from tests.support.servers import RedisServer

RESERVE = {"route": "/v1/campaigns/{cid}/reservations", "method": "POST"}


def _figures(url: str) -> dict[str, float]:
    """Counts from the server's histograms, by a short name."""
    wanted = {
        "requests": ("flashsale_http_request_duration_seconds_count", RESERVE),
        "requests_10ms": ("flashsale_http_request_duration_seconds_bucket", {**RESERVE, "le": "0.01"}),
        "engine": ("flashsale_engine_call_duration_seconds_count", {"operation": "reserve"}),
        "engine_10ms": ("flashsale_engine_call_duration_seconds_bucket", {"operation": "reserve", "le": "0.01"}),
        "engine_5ms": ("flashsale_engine_call_duration_seconds_bucket", {"operation": "reserve", "le": "0.005"}),
        "scripts": ("flashsale_script_duration_seconds_count", {"script": "reserve"}),
        "scripts_5ms": ("flashsale_script_duration_seconds_bucket", {"script": "reserve", "le": "0.005"}),
    }
    found = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", headers=admin_headers(), timeout=10).text):
        for sample in family.samples:
            for short, (name, labels) in wanted.items():
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    found[short] = sample.value
    return found


def run(target: Target, rate: float, runs: int, seconds: int) -> list[str]:
    rows = ["| run | client p99 | server: requests over 10 ms | engine calls over 10 ms / 5 ms | "
            "script calls over 5 ms |", "|---:|---:|---:|---:|---:|"]
    print("\n".join(rows), flush=True)
    for i in range(1, runs + 1):
        before = _figures(target.url)
        steady = fixed_rate(target, rate, seconds, "wrk")
        after = _figures(target.url)
        d = {k: after[k] - before[k] for k in after}
        row = (f"| {i} | {steady['p99_us'] / 1000:.1f} ms | {d['requests'] - d['requests_10ms']:,.0f} of "
               f"{d['requests']:,.0f} | {d['engine'] - d['engine_10ms']:,.0f} / {d['engine'] - d['engine_5ms']:,.0f} | "
               f"{d['scripts'] - d['scripts_5ms']:,.0f} of {d['scripts']:,.0f} |")
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=14_000, help="offered req/s (about half of 2 workers' capacity)")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=8)
    a = ap.parse_args()
    redis = RedisServer().start()
    target = flashsale(redis, "uvicorn", a.workers)
    try:
        target.measure(2)  # warm-up, saturated
        run(target, a.rate, a.runs, a.seconds)
    finally:
        target.proc.stop()
        redis.stop()


if __name__ == "__main__":
    main()
