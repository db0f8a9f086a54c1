"""The peer: the reserve endpoint built the way most people would without Redis.

One PostgreSQL transaction per reserve, through an asyncpg pool:

    BEGIN
      INSERT INTO reservations … ON CONFLICT (campaign, storefront, key) DO NOTHING RETURNING id
                                                      -- idempotency (nothing back: a replay)
      INSERT INTO holdings … ON CONFLICT DO UPDATE SET units = units + n WHERE units + n <= cap
                                                      -- the per-user cap (nothing back: over it)
      UPDATE products SET remaining = remaining - n WHERE … AND remaining >= n
                                                      -- the stock: one hot row, taken last
    COMMIT

Behind the same HTTP stack as flashsale (Starlette on the same server, uvloop, the same worker count), the
same route, body, token and Idempotency-Key rules, and docs/API.md's error shape. The campaign's window,
price and caps are read once per process (flashsale reads them in Redis on every call: this is the
peer's advantage, not its handicap). ``python -m scripts.bench.peer_app --port P --workers N``
serves it; ``PEER_DATABASE_URL`` names the database, ``PEER_POOL_SIZE`` the connections per worker.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
  id text PRIMARY KEY, unit_price bigint NOT NULL, opens_at timestamptz NOT NULL,
  closes_at timestamptz NOT NULL, hold_seconds int NOT NULL, user_cap_units int);
CREATE TABLE IF NOT EXISTS products (
  campaign_id text NOT NULL, id text NOT NULL, total_units bigint NOT NULL, remaining bigint NOT NULL,
  user_cap_units int, PRIMARY KEY (campaign_id, id));
CREATE TABLE IF NOT EXISTS holdings (
  campaign_id text NOT NULL, user_id text NOT NULL, units int NOT NULL, PRIMARY KEY (campaign_id, user_id));
CREATE TABLE IF NOT EXISTS reservations (
  id text PRIMARY KEY, campaign_id text NOT NULL, product_id text NOT NULL, user_id text NOT NULL,
  units int NOT NULL, amount bigint NOT NULL, state text NOT NULL, storefront text NOT NULL,
  idempotency_key text NOT NULL, expires_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (campaign_id, storefront, idempotency_key));
"""
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_BODY = 4096


def _json(status: int, data: Any) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _error(status: int, code: str, message: str, **details: Any) -> Response:
    return _json(status, {"error": {"code": code, "message": message, "details": details}})


def _tokens() -> dict[str, str]:
    out = {}
    for item in os.environ.get("FLASHSALE_STOREFRONT_TOKENS", "").split(","):
        name, _, token = item.strip().partition("=")
        if token:
            out[token] = name
    return out


class Peer:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.tokens = _tokens()
        self.campaigns: dict[str, asyncpg.Record] = {}

    async def campaign(self, cid: str) -> asyncpg.Record | None:
        c = self.campaigns.get(cid)
        if c is None:
            c = await self.pool.fetchrow("SELECT * FROM campaigns WHERE id = $1", cid)
            if c is not None:
                self.campaigns[cid] = c
        return c

    async def reserve(self, request: Request) -> Response:
        storefront = self.tokens.get(request.headers.get("authorization", "").removeprefix("Bearer "))
        if storefront is None:
            return _error(401, "UNAUTHENTICATED", "a storefront token is required")
        key = request.headers.get("idempotency-key")
        if not key or len(key) > 255:
            return _error(400, "IDEMPOTENCY_KEY_REQUIRED", "send an Idempotency-Key header")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _error(413, "PAYLOAD_TOO_LARGE", "bodies are 4 KiB at most")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "BAD_REQUEST", "the body is not JSON")
        if not isinstance(body, dict) or set(body) != {"user_id", "product_id", "units"}:
            return _error(422, "INVALID", "expected user_id, product_id, units")
        uid, pid, units = body["user_id"], body["product_id"], body["units"]
        if (not isinstance(uid, str) or not ID.fullmatch(uid) or not isinstance(pid, str)
                or isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= 10**6):
            return _error(422, "INVALID", "a field is out of bounds")
        cid = request.path_params["cid"]
        c = await self.campaign(cid)
        if c is None:
            return _error(404, "NOT_FOUND", f"campaign {cid!r} not found")
        now = datetime.now(UTC)
        if now < c["opens_at"]:
            return _error(409, "NOT_OPEN", "the campaign has not opened yet")
        if now >= c["closes_at"]:
            return _error(409, "CLOSED", "the campaign is closed")
        return await self._take(c, storefront, key, uid, pid, units, now)

    async def _take(self, c: asyncpg.Record, storefront: str, key: str, uid: str, pid: str, units: int,
                    now: datetime) -> Response:
        rid = secrets.token_hex(12)
        expires = now + timedelta(seconds=c["hold_seconds"])
        amount = units * c["unit_price"]
        async with self.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                made = await conn.fetchval(
                    "INSERT INTO reservations (id, campaign_id, product_id, user_id, units, amount, state, "
                    "storefront, idempotency_key, expires_at) VALUES ($1,$2,$3,$4,$5,$6,'held',$7,$8,$9) "
                    "ON CONFLICT (campaign_id, storefront, idempotency_key) DO NOTHING RETURNING id",
                    rid, c["id"], pid, uid, units, amount, storefront, key, expires)
                if made is None:
                    await tx.rollback()
                    return await self._replay(conn, c["id"], storefront, key, uid, pid, units)
                if c["user_cap_units"] is not None:
                    ok = await conn.fetchval(
                        "INSERT INTO holdings (campaign_id, user_id, units) VALUES ($1, $2, $3) "
                        "ON CONFLICT (campaign_id, user_id) DO UPDATE SET units = holdings.units + EXCLUDED.units "
                        "WHERE holdings.units + EXCLUDED.units <= $4 RETURNING units",
                        c["id"], uid, units, c["user_cap_units"])
                    if ok is None or ok > c["user_cap_units"]:
                        await tx.rollback()
                        return _error(409, "USER_CAP_EXCEEDED", "over this user's cap")
                left = await conn.fetchval(
                    "UPDATE products SET remaining = remaining - $3 WHERE campaign_id = $1 AND id = $2 "
                    "AND remaining >= $3 RETURNING remaining", c["id"], pid, units)
                if left is None:
                    await tx.rollback()
                    return _error(409, "SOLD_OUT", f"{pid} has fewer than {units} units left")
                await tx.commit()
            except BaseException:
                if not tx.is_completed():
                    await tx.rollback()
                raise
        return _json(201, {"reservation_id": rid, "campaign_id": c["id"], "product_id": pid, "user_id": uid,
                           "units": units, "amount": amount, "state": "held",
                           "expires_at": expires.isoformat().replace("+00:00", "Z")})

    async def _replay(self, conn: asyncpg.Connection, cid: str, storefront: str, key: str, uid: str, pid: str,
                      units: int) -> Response:
        r = await conn.fetchrow("SELECT * FROM reservations WHERE campaign_id = $1 AND storefront = $2 "
                                "AND idempotency_key = $3", cid, storefront, key)
        if r is None or (r["user_id"], r["product_id"], r["units"]) != (uid, pid, units):
            return _error(409, "IDEMPOTENCY_KEY_REUSED", "this Idempotency-Key was used with another body")
        return _json(200, {"reservation_id": r["id"], "campaign_id": cid, "product_id": pid, "user_id": uid,
                           "units": units, "amount": r["amount"], "state": r["state"],
                           "expires_at": r["expires_at"].isoformat().replace("+00:00", "Z")})

    async def stats(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        rows = await self.pool.fetch("SELECT id, total_units, remaining FROM products WHERE campaign_id = $1", cid)
        if not rows:
            return _error(404, "NOT_FOUND", f"campaign {cid!r} not found")
        total = sum(r["total_units"] for r in rows)
        taken = total - sum(r["remaining"] for r in rows)
        return _json(200, {"campaign_id": cid, "total_units": total, "sold_units": 0, "held_units": taken,
                           "remaining_units": total - taken})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    size = int(os.environ.get("PEER_POOL_SIZE", "10"))
    pool = await asyncpg.create_pool(os.environ["PEER_DATABASE_URL"], min_size=size, max_size=size)
    peer = Peer(pool)
    app.state.peer = peer
    try:
        yield
    finally:
        await pool.close()


async def _reserve(request: Request) -> Response:
    peer: Peer = request.app.state.peer
    return await peer.reserve(request)


async def _stats(request: Request) -> Response:
    peer: Peer = request.app.state.peer
    return await peer.stats(request)


async def _healthz(_: Request) -> Response:
    return _json(200, {"ok": True})


app = Starlette(routes=[
    Route("/healthz", _healthz),
    Route("/v1/campaigns/{cid}/reservations", _reserve, methods=["POST"]),
    Route("/v1/campaigns/{cid}/stats", _stats),
], lifespan=lifespan)


def main() -> None:
    """Serve the peer exactly as flashsale is served (``engine.api.server.serve_target``)."""
    from engine.api.server import DEFAULT_SERVER, SERVERS, serve_target

    ap = argparse.ArgumentParser(description="the PostgreSQL peer, served like flashsale")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--server", choices=SERVERS, default=os.environ.get("FLASHSALE_SERVER") or DEFAULT_SERVER)
    a = ap.parse_args()
    serve_target("scripts.bench.peer_app:app", server=a.server, host=a.host, port=a.port, workers=a.workers,
                 log_level="WARNING")


if __name__ == "__main__":
    main()
