"""``make bench``: every benchmark in one run, each writing its own section of BENCHMARKS.md.

    python -m scripts.bench.all [--only core,peer,...]

In turn, each as its own process (one crashing does not stop the others; none inherits another's
state): the core against redis-benchmark, HTTP against the yardstick, the writer against raw COPY,
flashsale against the PostgreSQL peer, the recorded sell-out. A benchmark whose module is not in
this tree yet is reported as missing (and tolerated). The run's own section lists each command,
its outcome and its duration; the exit status is 1 if any benchmark that exists failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass

from scripts.bench.report import write_section

BENCHMARKS = (
    ("core", "scripts.bench.core", "reservation core vs redis-benchmark"),
    ("http", "scripts.bench.http", "HTTP API vs the Starlette yardstick"),
    ("writer", "scripts.bench.writer", "durable writer vs raw COPY"),
    ("peer", "scripts.bench.peer", "flashsale vs the PostgreSQL peer"),
    ("sellout", "scripts.bench.sellout", "920,000 units to 300,000 buyers over HTTP"),
    ("ops", "scripts.bench.ops", "what ops cost: stats, /metrics, instrumentation"),
    ("memory", "scripts.bench.memory", "Redis bytes per buyer and per reservation"),
    ("scale", "scripts.bench.scale", "reconcile and recover at a million reservations"),
)
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Outcome:
    name: str
    command: str
    status: str  # "ok", "failed (exit N)", "missing", "timed out"
    seconds: float


def run_one(name: str, module: str) -> Outcome:
    command = f"python -m {module}"
    if importlib.util.find_spec(module) is None:
        print(f"== {name}: {module} is not in this tree yet; skipped", flush=True)
        return Outcome(name, command, "missing", 0.0)
    print(f"== {name}: {command}", flush=True)
    t0 = time.monotonic()
    try:
        code = subprocess.run([sys.executable, "-m", module], timeout=TIMEOUT_S).returncode
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {TIMEOUT_S} s"
    return Outcome(name, command, status, time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated subset: " + ",".join(b[0] for b in BENCHMARKS))
    a = ap.parse_args()
    wanted = {w.strip() for w in a.only.split(",") if w.strip()}
    unknown = wanted - {b[0] for b in BENCHMARKS}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    outcomes = [run_one(name, module) for name, module, _ in BENCHMARKS if not wanted or name in wanted]
    rows = ["| benchmark | command | outcome | duration |", "|---|---|---|---:|"]
    titles = {b[0]: b[2] for b in BENCHMARKS}
    rows += [f"| {titles[o.name]} | `{o.command}` | {o.status} | {o.seconds:.0f} s |" for o in outcomes]
    body = ("Every benchmark below was run by this one command, one after another on this machine; each "
            "section carries its own command and time.\n\n" + "\n".join(rows))
    write_section("all", "make bench", "python -m scripts.bench.all" + (f" --only {a.only}" if wanted else ""),
                  body)
    print("\n".join(rows))
    sys.exit(0 if all(o.status in ("ok", "missing") for o in outcomes) else 1)


if __name__ == "__main__":
    main()
