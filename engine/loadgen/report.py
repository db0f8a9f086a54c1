"""The end-of-run report: what was asked, what was granted, how fast, and the verdict."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.loadgen.record import CANCELLED, CONFIRMED, EXPIRED, HELD, Record
from engine.loadgen.verdict import Observed, Verdict


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of a run, for the report and for BENCHMARKS.md."""

    requests: int
    reserves: int
    granted: int
    granted_units: int
    confirmed_units: int
    wall_s: float  # opening (or start, if later) to the end of the run
    sellout_s: float | None  # opening to sold out
    reserve_p50_ms: float | None
    reserve_p99_ms: float | None
    sold_units: int
    held_units: int
    total_units: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def granted_per_s(self) -> float:
        return self.granted / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def sell_through(self) -> float:
        return self.sold_units / self.total_units if self.total_units else 0.0


def summarize(record: Record, stats: dict[str, Any]) -> Summary:
    lat = record.latencies.get("reserve", [])
    start = max(record.opens_ms, record.started_ms)
    sellout = (record.sold_out_ms - record.opens_ms) / 1000.0 if record.sold_out_ms else None
    return Summary(
        requests=record.attempts(), reserves=record.attempts("reserve"), granted=len(record.grants),
        granted_units=sum(g.units for g in record.grants), confirmed_units=record.units_in(CONFIRMED),
        wall_s=max(0.0, (record.ended_ms - start) / 1000.0), sellout_s=sellout,
        reserve_p50_ms=percentile(lat, 0.50), reserve_p99_ms=percentile(lat, 0.99),
        sold_units=int(stats["sold_units"]), held_units=int(stats["held_units"]),
        total_units=int(stats["total_units"]),
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def print_report(console: Console, record: Record, observed: Observed, verdict: Verdict) -> Summary:
    s = summarize(record, observed.stats)
    states = Counter(g.state for g in record.grants)
    units = Counter[str]()
    for g in record.grants:
        units[g.state] += g.units
    console.print(f"\n[bold]Load run on {record.campaign_id}[/bold]: {record.buyers:,} buyers, "
                  f"{s.requests:,} requests in {s.wall_s:.1f} s ({s.requests_per_s:,.0f}/s)")
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("")
    t.add_column("count", justify="right")
    t.add_column("units", justify="right")
    t.add_row("reserve attempts", f"{s.reserves:,}", "")
    t.add_row("granted", f"{s.granted:,}", f"{s.granted_units:,}")
    for st in (CONFIRMED, CANCELLED, HELD, EXPIRED, "confirm?", "cancel?"):
        if states[st]:
            t.add_row(f"  {'abandoned (held)' if st == HELD else st}", f"{states[st]:,}", f"{units[st]:,}")
    if record.doubts:
        t.add_row("reserves never answered", f"{len(record.doubts):,}", f"{sum(d.units for d in record.doubts):,}")
    for code, n in record.rejections.most_common():
        t.add_row(f"rejected {code}", f"{n:,}", "")
    t.add_row("bad requests sent", f"{len(record.bad):,}", "")
    if record.scalpers:
        t.add_row("people / scalper accounts", f"{record.people:,} / {record.scalpers:,}", "")
    if record.queued:
        admitted = sum(1 for x in record.tickets.values() if x.admitted_ms is not None)
        t.add_row("queue tickets taken / admitted", f"{len(record.tickets):,} / {admitted:,}", "")
    console.print(t)
    for note in dict.fromkeys(record.notes):
        console.print(f"[yellow]note: {note}[/yellow]")
    lat = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("latency", "p50", "p99", "max", "n"):
        lat.add_column(col, justify="right" if col != "latency" else "left")
    for op, vals in sorted(record.latencies.items()):
        lat.add_row(op, _ms(percentile(vals, 0.5)), _ms(percentile(vals, 0.99)), _ms(max(vals)), f"{len(vals):,}")
    console.print(lat)
    sellout = f"{s.sellout_s:.1f} s after the opening" if s.sellout_s is not None else "not sold out"
    console.print(f"Sell-through: {s.sold_units:,} of {s.total_units:,} units sold ({s.sell_through:.1%}), "
                  f"{s.held_units:,} held; {sellout}; {s.granted_per_s:,.0f} granted reserves/s")
    print_verdict(console, verdict)
    return s


def print_verdict(console: Console, verdict: Verdict) -> None:
    t = Table(title="Verdict (the invariants of docs/API.md)", show_header=True, header_style="bold")
    t.add_column("#", justify="right")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail", overflow="fold")
    for c in verdict.checks:
        mark = {True: "[green]ok[/green]", False: "[red bold]VIOLATED[/red bold]", None: "[dim]skipped[/dim]"}[c.ok]
        t.add_row(str(c.invariant or "-"), c.name, mark, c.detail)
    console.print(t)
    if verdict.ok:
        console.print("[green bold]verdict: clean[/green bold] — every invariant held")
    else:
        console.print(f"[red bold]verdict: {len(verdict.violations)} violation(s)[/red bold]")
