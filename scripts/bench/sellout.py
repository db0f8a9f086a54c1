"""The recorded sell-out: Yulebao phase 1's 920,000-unit tranche sold over HTTP to 300,000 buyers.

    python -m scripts.bench.sellout [--buyers N] [--users U] [--time-bound S] [--no-write]

Exactly what ``flashsale demo`` runs (engine/demo.py): a private redis-server, ``flashsale serve``
(2 workers), the writer into SQLite, the campaign opening a few seconds after loading, the launch
spike from ``flashsale loadgen``'s generator, then the verdict against stats, ledger and
``flashsale reconcile``. Records the wall time from the opening to the sell-out (target < 60 s)
and the verdict, with where the CPU went (so a miss names its bottleneck).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from rich.console import Console

from engine.demo import DemoConfig, headline, launch_day, stack
from engine.loadgen.behaviour import Mix
from engine.loadgen.run import RunResult, run_async
from scripts.bench.report import write_section

TICK = os.sysconf("SC_CLK_TCK")
TARGET_S = 60.0


def _group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in a process group (a server and its workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _pid_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(cfg: DemoConfig, console: Console) -> tuple[RunResult, dict[str, float], float]:
    with stack(cfg, console) as st:
        assert st.api.proc is not None and st.redis.proc is not None
        api_pid, redis_pid = st.api.proc.pid, st.redis.proc.pid
        probes = {"API (flashsale serve, all workers)": lambda: _group_cpu(api_pid),
                  "redis-server": lambda: _pid_cpu(redis_pid),
                  "load generator (this process)": _self_cpu}
        if st.writer is not None and st.writer.proc is not None:
            writer_pid = st.writer.proc.pid
            probes["writer"] = lambda: _group_cpu(writer_pid)
        before = {k: f() for k, f in probes.items()}
        t0 = time.monotonic()
        result = run_async(launch_day(cfg, st, console))
        wall = time.monotonic() - t0
        cpu = {k: f() - before[k] for k, f in probes.items()}
        headline(result, console)
    return result, cpu, wall


def body_text(result: RunResult, cpu: dict[str, float], wall: float, cfg: DemoConfig) -> str:
    s, rec, v, m = result.summary, result.record, result.verdict, Mix()
    sellout = f"{s.sellout_s:.1f} s" if s.sellout_s is not None else f"not sold out within {cfg.time_bound_s:.0f} s"
    met = s.sellout_s is not None and s.sellout_s < TARGET_S
    violations = "; ".join(f"{c.name}: {c.detail}" for c in v.violations)
    lines = [
        f"Yulebao phase 1 (`campaigns/yulebao-2014-p1.toml`, {s.total_units:,} units, caps as filed), "
        f"{cfg.buyers:,} buyers on their way, {cfg.users} virtual users on keep-alive connections, "
        "the launch spike of `flashsale loadgen`; API 2 workers, writer into SQLite, all on this machine. "
        f"Each buyer asks for 1..10 units ({m.max_cap_share:.0%} the whole cap), then {m.confirm:.0%} pay, "
        f"{m.cancel:.1%} cancel, the rest walk away (their holds stay held for the campaign's 900 s); "
        f"{m.replay:.0%} replay the reserve, {m.cap_probe:.0%} probe their cap, {m.bad:.1%} send bad input.",
        "",
        "| figure | value |", "|---|---:|",
        f"| **opening → sold out** | **{sellout}** |",
        f"| buyers served | {rec.buyers:,} |",
        f"| requests (reserve, confirm, cancel, replays, probes, bad input) | {s.requests:,} "
        f"({s.requests_per_s:,.0f}/s) |",
        f"| reservations granted | {s.granted:,} ({s.granted_units:,} units, {s.granted_per_s:,.0f}/s) |",
        f"| sold (confirmed) / still held unpaid | {s.sold_units:,} / {s.held_units:,} units "
        f"({s.sell_through:.1%} sold) |",
        f"| reserve latency p50 / p99 (closed loop: mostly queueing) | {s.reserve_p50_ms or 0:.1f} / "
        f"{s.reserve_p99_ms or 0:.1f} ms |",
        f"| verdict ({len(v.checks)} checks, stats + ledger + reconcile) | "
        f"{'clean' if v.ok else f'{len(v.violations)} VIOLATION(S): {violations}'} |",
        "",
        f"Where the CPU went over the {wall:.0f} s of the load run and its verdict (2 cores: "
        f"{2 * wall:.0f} CPU-s available; {sum(cpu.values()):.0f} CPU-s used by these processes, the rest "
        "by anything else on the host):",
        "",
        "| process | CPU-s | share of a core | µs per request |", "|---|---:|---:|---:|",
        *(f"| {k} | {sec:.1f} | {sec / wall:.0%} | {sec / max(s.requests, 1) * 1e6:.0f} |"
          for k, sec in sorted(cpu.items(), key=lambda kv: -kv[1])),
        "",
        f"**Target < {TARGET_S:.0f} s with a clean verdict: {'met' if met and v.ok else 'MISSED'}.**",
    ]
    if not met:
        top = max(cpu.items(), key=lambda kv: kv[1])
        per_req = sum(cpu.values()) / max(s.requests, 1)
        lines.append(f"The bottleneck is CPU: every request costs about {per_req * 1e6:.0f} µs of CPU across the "
                     f"stack, so two cores top out near {2 / per_req:,.0f} requests/s when nothing else runs; "
                     f"the largest share is {top[0]} ({top[1] / max(sum(cpu.values()), 1e-9):.0%}).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--buyers", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--time-bound", type=float, default=120.0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    a = ap.parse_args()
    cfg = DemoConfig(buyers=a.buyers, users=a.users, time_bound_s=a.time_bound, progress=False, seed=2014)
    console = Console(highlight=False, width=160)
    result, cpu, wall = run(cfg, console)
    text = body_text(result, cpu, wall, cfg)
    print(text)
    if not a.no_write:
        command = (f"python -m scripts.bench.sellout --buyers {a.buyers} --users {a.users} "
                   f"--time-bound {a.time_bound:.0f}")
        write_section("sellout", "The recorded sell-out: 920,000 units, 300,000 buyers, over HTTP", command, text)


if __name__ == "__main__":
    main()
