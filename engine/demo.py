"""``flashsale demo``: the whole engine on this machine, one launch day, one verdict.

Starts a private redis-server, the API (``flashsale serve``, 2 workers) and the durable writer into
SQLite; loads the Yulebao phase-1 campaign shifted to open a few seconds later; drives the buyers
through the launch-day spike until the sell-out (or the time bound); waits for the ledger to catch
up; prints the sell-through and the invariant verdict. ``--serve`` leaves the API and its dashboard
up afterwards. The same code path runs small (``--buyers 20000 --units 50000``) in CI.

``--queue`` runs a queued launch instead: the campaign in queue mode with an identity cap (the
file's user cap), the API given a freshly generated admission key; the waiting room opens a
second after loading, a quarter of the crowd and the scalper farms fill the pre-queue, the
opening fixes the draw, admission lets the queue in at ``--admit-per-second`` until sell-out,
and the verdict adds the queue checks (every reservation on its own user's token, admission in
position order, every buyer cap held).

``--cluster`` runs it on a private Redis Cluster (three masters with a replica each, joined by
``redis-cli --cluster create`` in the demo's directory); the API, the writer and the verdict's
``flashsale reconcile`` are given the first node's URL and find the rest.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from engine.loadgen.campaigns import YULEBAO_P1, put_campaign, read_definition, shifted
from engine.loadgen.crowd import Scalpers
from engine.loadgen.generator import LoadConfig
from engine.loadgen.run import RunResult, run_async, run_load
from engine.loadgen.services import Child, LocalCluster, LocalRedis, flashsale_exe, free_port

SHOP = "demo-shop"
QUEUE_OPENS_IN_S = 1.0  # --queue: the waiting room opens this long after the campaign is loaded
TOKEN_SECONDS = 300  # --queue: an admission token's life
DEMO_FARMS = Scalpers(operators=10, accounts=20, identities=2, devices=3, networks=1)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    buyers: int = 300_000
    units: int | None = None  # scale the tranche (products in proportion); None: as the file says
    users: int = 256  # peak virtual users
    time_bound_s: float = 80.0  # of the load phase, pre-opening trickle included
    opens_in_s: float = 5.0
    workers: int = 2
    campaign_file: str = str(YULEBAO_P1)
    database_url: str | None = None  # default: SQLite in the demo's directory
    serve: bool = False
    progress: bool = True
    seed: int | None = None
    queue: bool = False  # a queued launch: waiting room, draw, admission (needs an admission key)
    admit_per_second: int = 2000
    cluster: bool = False  # on a private Redis Cluster (3 masters, a replica each) instead of one redis-server


@dataclass(frozen=True, slots=True)
class Stack:
    """The running pieces and how to reach them."""

    redis: LocalRedis | LocalCluster
    api: Child
    writer: Child | None
    url: str
    token: str
    admin_token: str
    database_url: str | None  # None: no writer in this install
    workdir: str


def _env(redis_url: str, database_url: str, token: str, admin: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update({
        "FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": database_url,
        "FLASHSALE_STOREFRONT_TOKENS": f"{SHOP}={token}", "FLASHSALE_ADMIN_TOKEN": admin,
        "FLASHSALE_ALLOW_VOLATILE_REDIS": "1", "FLASHSALE_LOG_LEVEL": "WARNING",
        # the demo's own signing key (queue mode): generated per run, never leaves its servers
        "FLASHSALE_ADMISSION_KEYS": f"demo:{secrets.token_urlsafe(32)}",
    })
    return env


@contextlib.contextmanager
def stack(cfg: DemoConfig, console: Console) -> Iterator[Stack]:
    """Start redis-server, the API and the writer; stop them all on the way out."""
    workdir = tempfile.mkdtemp(prefix="flashsale-demo-")
    redis = LocalCluster(str(Path(workdir) / "cluster")) if cfg.cluster else LocalRedis(str(Path(workdir) / "redis"))
    started: list[Child] = []
    try:
        redis.start()
        database_url = cfg.database_url or f"sqlite:///{workdir}/ledger.db"
        token, admin = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        env = _env(redis.url, database_url, token, admin)
        if isinstance(redis, LocalCluster):
            console.print(f"redis cluster {redis.describe()} (private, for this demo)")
        else:
            console.print(f"redis-server  127.0.0.1:{redis.port} (private, for this demo)")
        port = free_port()
        api = Child("api", [*flashsale_exe(), "serve", "--host", "127.0.0.1", "--port", str(port),
                            "--workers", str(cfg.workers)], env, workdir).start()
        started.append(api)
        writer = Child("writer", [*flashsale_exe(), "writer", "--database-url", database_url,
                                  "--allow-volatile-redis"], env, workdir).start()
        started.append(writer)
        url = f"http://127.0.0.1:{port}"
        api.wait_http(f"{url}/healthz", timeout_s=60)
        console.print(f"API           {url} (flashsale serve, {cfg.workers} workers)")
        ledger: str | None = database_url
        if not writer.alive():
            if "No such command" not in writer.output():
                raise RuntimeError(f"the writer exited:\n{writer.output()}")
            console.print("[yellow]writer        this install has no `flashsale writer`: "
                          "ledger checks skipped[/yellow]")
            ledger = None
        else:
            console.print(f"writer        {database_url}")
        yield Stack(redis, api, writer, url, token, admin, ledger, workdir)
    finally:
        for child in reversed(started):
            child.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def queued(definition: dict[str, Any], opens_in_s: float, admit_per_second: int) -> dict[str, Any]:
    """The campaign in queue mode: the waiting room opens shortly, one identity may hold what one
    user may (the file's user cap, else 10 units)."""
    d = dict(definition)
    queue_opens = datetime.now(UTC) + timedelta(seconds=min(QUEUE_OPENS_IN_S, opens_in_s))
    d["admission"] = {"mode": "queue", "queue_opens_at": queue_opens.isoformat(timespec="milliseconds"),
                      "admit_per_second": admit_per_second, "token_seconds": TOKEN_SECONDS}
    d["identity_cap_units"] = int(d.get("user_cap_units") or 10)
    return d


async def launch_day(cfg: DemoConfig, st: Stack, console: Console) -> RunResult:
    definition = shifted(read_definition(cfg.campaign_file), opens_in_s=cfg.opens_in_s, units=cfg.units)
    if cfg.queue:
        definition = queued(definition, cfg.opens_in_s, cfg.admit_per_second)
    await put_campaign(st.url, st.admin_token, definition)
    console.print(f"campaign      {definition['id']}: {definition['total_units']:,} units of "
                  f"{definition['unit_price'] / 100:,.0f} {definition['currency']}, "
                  f"opens {definition['opens_at']} (in {cfg.opens_in_s:.0f} s); "
                  f"{cfg.buyers:,} buyers on their way")
    extra: dict[str, Any] = {}
    if cfg.queue:
        f = DEMO_FARMS
        console.print(f"waiting room  opens {definition['admission']['queue_opens_at']}; the pre-queue is drawn at "
                      f"the opening, then {cfg.admit_per_second:,} admitted a second; "
                      f"{definition['identity_cap_units']} units per identity; {f.operators} scalper farms of "
                      f"{f.accounts} accounts on {f.identities} identities each fire at its first millisecond")
        pre = max(cfg.opens_in_s - QUEUE_OPENS_IN_S, 0.5)
        extra = {"trickle_s": pre, "trickle_users": max(cfg.users // 4, 2), "scalpers": f}
    console.print()
    load = LoadConfig(url=st.url, campaign_id=definition["id"], token=st.token, users=cfg.users,
                      duration_s=cfg.time_bound_s + cfg.opens_in_s, buyers=cfg.buyers, seed=cfg.seed, **extra)
    return await run_load(load, console=console, database_url=st.database_url, redis_url=st.redis.url,
                          progress=cfg.progress, drain_timeout_s=30.0)


def serve_forever(st: Stack, campaign_id: str, console: Console) -> None:
    console.print(f"\n[bold]Still serving[/bold] (Ctrl-C to stop):\n"
                  f"  dashboard   {st.url}/dashboard?campaign={campaign_id}#token={st.admin_token}\n"
                  f"  stats       {st.url}/v1/campaigns/{campaign_id}/stats\n"
                  f"  storefront  Authorization: Bearer {st.token}\n"
                  f"  admin       Authorization: Bearer {st.admin_token}\n"
                  f"  redis       {st.redis.url}\n  ledger      {st.database_url or '-'}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if not st.api.alive():
            console.print(f"the API exited:\n{st.api.output()}")
            return


def headline(result: RunResult, console: Console) -> None:
    s = result.summary
    sold_out = f"sold out {s.sellout_s:.1f} s after the opening" if s.sellout_s is not None else "not sold out"
    n = len(result.verdict.violations)
    verdict = "[green]clean[/green]" if not n else f"[red]{n} violation(s)[/red]"
    console.print(f"\n[bold]Demo:[/bold] {s.sold_units:,} of {s.total_units:,} units sold "
                  f"({s.sell_through:.1%}), {s.held_units:,} still held unpaid; {sold_out}; "
                  f"{result.record.buyers:,} buyers; verdict {verdict}")
    rec = result.record
    if rec.queued:
        tickets = rec.tickets.values()
        admitted = sum(1 for t in tickets if t.admitted_ms is not None)
        pre = sum(1 for t in tickets if t.pre_queue)
        held = [g for g in rec.grants if g.state in ("held", "confirmed")]
        farm_units = sum(g.units for g in held if rec.operator_of(g.user) is not None)
        units = sum(g.units for g in held) or 1
        console.print(f"[bold]Queue:[/bold] {len(rec.tickets):,} tickets ({pre:,} in the pre-queue), "
                      f"{admitted:,} admitted; the {rec.scalpers:,} scalper accounts got {farm_units:,} units "
                      f"({farm_units / units:.1%} of what was granted and kept)")


def run_demo(cfg: DemoConfig, console: Console) -> int:
    """The demo, start to end; returns the exit code (0: clean verdict)."""
    with stack(cfg, console) as st:
        result = run_async(launch_day(cfg, st, console))
        headline(result, console)
        if cfg.serve:
            serve_forever(st, result.record.campaign_id, console)
        return result.verdict.exit_code
