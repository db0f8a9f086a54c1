"""Gathering what the verdict judges: the API's stats, users and reservations, the ledger's rows,
and ``flashsale reconcile``. All reads; nothing here changes the campaign.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.loadgen.calls import now_ms
from engine.loadgen.http import Connection, TransportError, split_url
from engine.loadgen.record import CANCEL_DOUBT, CONFIRM_DOUBT, Record
from engine.loadgen.verdict import LedgerRow, Observed

LOOKUP_CONNECTIONS = 16
SAMPLE = 500  # users and reservations looked up per category, at random
RECONCILE_TIMEOUT_S = 180.0


class Refused(LookupError):
    """The API answered, with a status that waiting will not change (401, 403, 404)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


FINAL = (401, 403, 404)


class Api:
    """Read-only calls to the storefront API."""

    def __init__(self, url: str, token: str, campaign_id: str) -> None:
        self.host, self.port, prefix = split_url(url)
        self.token = token
        self.base = f"{prefix}/v1/campaigns/{campaign_id}"

    def conn(self) -> Connection:
        return Connection(self.host, self.port, token=self.token)

    async def get(self, path: str, conn: Connection | None = None, tries: int = 20) -> tuple[int, Any]:
        own = conn is None
        c = conn or self.conn()
        try:
            for attempt in range(tries):
                try:
                    resp = await c.request(b"GET", self.base + path, timeout_s=10)
                except TransportError:
                    if attempt == tries - 1:
                        raise
                    await asyncio.sleep(0.25)
                    continue
                if resp.status not in (429, 503) or attempt == tries - 1:
                    return resp.status, resp.json()
                await asyncio.sleep(0.25)
            raise AssertionError("unreachable")
        finally:
            if own:
                c.close()

    async def definition(self) -> dict[str, Any]:
        status, data = await self.get("")
        if status in FINAL:
            raise Refused(f"GET {self.base}: {status} {data}", status)
        if status != 200 or not isinstance(data, dict):
            raise LookupError(f"GET {self.base}: {status} {data}")
        return data

    async def stats(self) -> dict[str, Any]:
        status, data = await self.get("/stats")
        if status != 200 or not isinstance(data, dict):
            raise LookupError(f"GET {self.base}/stats: {status} {data}")
        return data

    async def many(self, paths: Iterable[str]) -> dict[str, Any]:
        """GET each path (a few connections at once); path -> body, or None on 404."""
        queue = list(paths)
        out: dict[str, Any] = {}

        async def worker() -> None:
            c = self.conn()
            try:
                while queue:
                    path = queue.pop()
                    status, data = await self.get(path, c)
                    out[path] = data if status == 200 else None
            finally:
                c.close()

        await asyncio.gather(*(worker() for _ in range(LOOKUP_CONNECTIONS)))
        return out


def _sample(items: Iterable[str], k: int, rng: random.Random) -> list[str]:
    lst = sorted(set(items))
    return lst if len(lst) <= k else rng.sample(lst, k)


async def lookups(api: Api, record: Record, sample: int = SAMPLE) -> tuple[dict[str, Any], dict[str, Any]]:
    """Users and reservations worth looking up: every one in doubt, a sample of the rest."""
    rng = random.Random(0)
    doubtful = [g for g in record.grants if g.state in (CONFIRM_DOUBT, CANCEL_DOUBT)]
    users = {d.user for d in record.doubts} | {g.user for g in doubtful}
    users |= set(_sample((b.user for b in record.bad), sample, rng))
    users |= set(_sample((p.user for p in record.probes), sample, rng))
    users |= set(_sample((g.user for g in record.grants), sample, rng))
    rids = {g.rid for g in doubtful} | set(_sample((g.rid for g in record.grants), sample, rng))
    bodies = await api.many([f"/users/{u}" for u in users] + [f"/reservations/{r}" for r in rids])
    empty = {"held_units": 0, "confirmed_units": 0, "products": []}
    got_users = {u: (bodies[f"/users/{u}"] or empty) for u in users}
    got_res = {r: bodies[f"/reservations/{r}"] for r in rids if bodies[f"/reservations/{r}"]}
    return got_users, got_res


# -- the ledger --------------------------------------------------------------------------------

def _sqlite_rows(path: str, campaign_id: str) -> list[LedgerRow]:
    if not Path(path).exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        cur = db.execute("SELECT reservation_id, product_id, user_id, units, amount FROM orders "
                         "WHERE campaign_id = ?", (campaign_id,))
        return [LedgerRow(str(a), str(b), str(c), int(d), int(e)) for a, b, c, d, e in cur]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        db.close()


async def ledger_rows(database_url: str, campaign_id: str) -> tuple[LedgerRow, ...]:
    """The campaign's ``orders`` rows (docs/API.md: the ledger), from SQLite or PostgreSQL."""
    if database_url.startswith("sqlite:///"):
        return tuple(await asyncio.to_thread(_sqlite_rows, database_url[len("sqlite:///"):], campaign_id))
    if database_url.startswith(("postgresql://", "postgres://")):
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            exists = await conn.fetchval("SELECT to_regclass('orders') IS NOT NULL")
            if not exists:
                return ()
            rows = await conn.fetch("SELECT reservation_id, product_id, user_id, units, amount FROM orders "
                                    "WHERE campaign_id = $1", campaign_id)
            return tuple(LedgerRow(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows)
        finally:
            await conn.close()
    raise ValueError(f"{database_url!r}: expected sqlite:///path or postgresql://…")


async def drained(api: Api, database_url: str, campaign_id: str, timeout_s: float) -> dict[str, Any]:
    """Wait until the ledger holds every sold unit (the writer caught up); returns the stats."""
    deadline = now_ms() + timeout_s * 1000
    while True:
        stats = await api.stats()
        rows = await ledger_rows(database_url, campaign_id)
        if sum(r.units for r in rows) >= int(stats["sold_units"]) or now_ms() > deadline:
            return stats
        await asyncio.sleep(0.5)


def flashsale_command() -> list[str]:
    exe = Path(sys.executable).with_name("flashsale")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("flashsale")
    return [found] if found else [sys.executable, "-c", "from engine.cli import main; main()"]


async def reconcile(campaign_id: str, database_url: str, redis_url: str | None) -> tuple[int, str] | None:
    """``flashsale reconcile ID``: (exit code, output); None when this install has no such command."""
    env = dict(os.environ, FLASHSALE_DATABASE_URL=database_url)
    if redis_url:
        env["FLASHSALE_REDIS_URL"] = redis_url
    proc = await asyncio.create_subprocess_exec(
        *flashsale_command(), "reconcile", campaign_id, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RECONCILE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"flashsale reconcile did not finish within {RECONCILE_TIMEOUT_S:.0f} s"
    text = out.decode(errors="replace")
    if proc.returncode == 2 and "No such command" in text:
        return None
    return proc.returncode or 0, text


async def observe(api: Api, record: Record, *, baseline: dict[str, Any] | None, definition: dict[str, Any],
                  database_url: str | None = None, redis_url: str | None = None,
                  drain_timeout_s: float = 60.0, sample: int = SAMPLE) -> Observed:
    """Everything the verdict needs, read after the run."""
    if database_url:
        await drained(api, database_url, record.campaign_id, drain_timeout_s)
    users, reservations = await lookups(api, record, sample)
    at = now_ms()
    stats = await api.stats()
    ledger = await ledger_rows(database_url, record.campaign_id) if database_url else None
    rec = await reconcile(record.campaign_id, database_url, redis_url) if database_url else None
    return Observed(definition=definition, stats=stats, now_ms=at, baseline=baseline, users=users,
                    reservations=reservations, ledger=ledger, reconcile=rec)
