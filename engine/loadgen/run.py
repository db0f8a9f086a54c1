"""One load run end to end: read the campaign, drive the spike, observe, judge, report.

``flashsale loadgen``, ``flashsale demo`` and the benchmarks all come through ``run_load``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from engine.loadgen.calls import now_ms
from engine.loadgen.generator import Generator, LoadConfig
from engine.loadgen.http import TransportError
from engine.loadgen.observe import Api, Refused, observe
from engine.loadgen.record import Record
from engine.loadgen.report import Summary, print_report
from engine.loadgen.verdict import Observed, Verdict, judge

T = TypeVar("T")
API_WAIT_S = 30.0  # how long to wait for the API to answer before giving up


class NoApi(Exception):
    """The API did not answer, refused the token, or the campaign is not there or cannot be bought."""


_REFUSED = {
    401: "the API refused the storefront token (401): pass the right one with --token or FLASHSALE_STOREFRONT_TOKENS",
    403: "the API forbids this token the campaign (403): pass a storefront token with --token",
    404: "campaign {cid!r} is not on this API (404): load it first (`flashsale campaign load FILE --open-in 30s`) "
         "or fix --campaign / --url",
}


@dataclass(frozen=True, slots=True, repr=False)
class RunResult:
    record: Record
    observed: Observed
    verdict: Verdict
    summary: Summary


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """On uvloop: the generator's hot path is the event loop's."""
    import uvloop

    return uvloop.run(coro)


def rfc3339_ms(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000.0


async def wait_for_campaign(api: Api, wait_s: float = API_WAIT_S) -> dict[str, Any]:
    deadline = now_ms() + wait_s * 1000
    last = ""
    while now_ms() < deadline:
        try:
            return await api.definition()
        except Refused as exc:  # waiting will not change the answer
            cid = api.base.rsplit("/", 1)[-1]
            raise NoApi(_REFUSED[exc.status].format(cid=cid)) from exc
        except (TransportError, LookupError) as exc:
            last = str(exc)
        await asyncio.sleep(0.5)
    raise NoApi(f"cannot read the campaign from the API: {last}")


def check_window(definition: dict[str, Any], duration_s: float, now: float | None = None) -> None:
    """``NoApi`` unless the campaign's window is open, or opens, within the run's time bound."""
    now = now_ms() if now is None else now
    cid, opens, closes = definition["id"], rfc3339_ms(definition["opens_at"]), rfc3339_ms(definition["closes_at"])
    rehearse = f"load it again with `flashsale campaign load FILE --open-in 30s` (campaign {cid})"
    if closes <= now:
        raise NoApi(f"campaign {cid!r} closed at {definition['closes_at']}: nothing can be bought; {rehearse}")
    if opens > now + duration_s * 1000:
        raise NoApi(f"campaign {cid!r} opens at {definition['opens_at']}, {(opens - now) / 1000:,.0f} s from now, "
                    f"after this run's --duration {duration_s:g} s; raise --duration or {rehearse}")


class _Display:
    """A rich progress bar on a terminal; a plain line every few seconds elsewhere (CI logs)."""

    def __init__(self, console: Console, gen: Generator, total: int, enabled: bool) -> None:
        self.console, self.gen = console, gen
        self.tty = enabled and console.is_terminal
        self.enabled = enabled
        self.last_line = 0.0
        self.window = (now_ms(), 0)
        self.rate = 0.0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=console, disable=not self.tty)
        self.task = self.progress.add_task("waiting", total=total, info="")

    def tick(self) -> None:
        if not self.enabled:
            return
        st, rec = self.gen.live.stats, self.gen.record
        now, n = now_ms(), rec.attempts()
        if now - self.window[0] >= 1000:  # the request rate over about the last second
            self.rate = (n - self.window[1]) * 1000.0 / (now - self.window[0])
            self.window = (now, n)
        taken = int(st.get("sold_units", 0)) + int(st.get("held_units", 0))
        info = (f"sold {int(st.get('sold_units', 0)):,} held {int(st.get('held_units', 0)):,} · "
                f"{self.gen.live.active} users · {self.rate:,.0f} req/s")
        if self.tty:
            self.progress.update(self.task, completed=taken, description=self.gen.live.phase, info=info)
        elif now - self.last_line > 5000:
            self.last_line = now
            self.console.print(f"[{self.gen.live.phase}] {info}", highlight=False)


async def run_load(cfg: LoadConfig, *, console: Console, database_url: str | None = None,
                   redis_url: str | None = None, progress: bool = True, drain_timeout_s: float = 60.0,
                   record_out: str | None = None) -> RunResult:
    api = Api(cfg.url, cfg.token, cfg.campaign_id)
    definition = await wait_for_campaign(api)
    check_window(definition, cfg.duration_s)
    baseline = await api.stats()
    gen = Generator(cfg, definition, rfc3339_ms(definition["opens_at"]))
    gen.record.baseline = baseline
    display = _Display(console, gen, int(definition["total_units"]), progress)
    with display.progress:
        record = await gen.run(display.tick)
        display.tick()
    if record_out:
        record.save(record_out)
    return await judge_record(api, record, console=console, definition=definition,
                              database_url=database_url, redis_url=redis_url, drain_timeout_s=drain_timeout_s)


async def judge_record(api: Api, record: Record, *, console: Console, definition: dict[str, Any] | None = None,
                       database_url: str | None = None,
                       redis_url: str | None = None, drain_timeout_s: float = 60.0) -> RunResult:
    """Observe the live state, judge the record against it, print the report."""
    definition = definition or await wait_for_campaign(api)
    with console.status("checking the invariants (waiting for the ledger to catch up)"):
        observed = await observe(api, record, baseline=record.baseline, definition=definition,
                                 database_url=database_url, redis_url=redis_url, drain_timeout_s=drain_timeout_s)
    verdict = judge(record, observed)
    summary = print_report(console, record, observed, verdict)
    return RunResult(record, observed, verdict, summary)
