"""``flashsale recover ID``: rebuild a campaign in Redis from the ledger, after Redis lost data.

1. Refuse the campaign: its admin flag becomes ``recovering`` (reserve answers RECOVERING, HTTP
   503). If Redis lost the campaign itself, its definition comes from the ledger's ``campaigns``
   table and is loaded already refused, in one MULTI, so no reserve slips in between.
2. Plan: replay the ledger's history plus whatever the stream kept (and the reservation records
   that survived): every confirmed order counts, every hold never confirmed is dropped and its
   units return. The plan is the new counters, users and changed reservation records.
3. Stage the plan as complete copies of the counters, users, records and idempotency hash
   (``fs:{c:ID}:restore:*``), a page of fields per call; then ``restore.lua`` swaps them in, in
   one short atomic step, if the campaign has not moved since it was read (its stream's last id
   is unchanged; else plan again), and appends the dropped holds' events in bounded calls.
4. Reconcile; when clean, the campaign serves again (its flag as it was before).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import orjson

from engine import keys
from engine.campaign import Campaign, parse
from engine.core import Engine
from engine.core.engine import load_args
from engine.core.redis_client import Client
from engine.errors import LedgerError
from engine.ledger.history import ResState, idempotency, merge, replay, totals
from engine.ledger.reconcile import Reconciliation, reconcile
from engine.ledger.redisview import PAGE, RedisView, read_view
from engine.ledger.sink import LedgerSnapshot, Sink
from engine.ledger.streams import GROUP, registered

MAX_ATTEMPTS = 20  # plans made before giving up on a campaign that keeps moving
STAGE_CALLS = 8  # HSETs of one page each per pipeline round trip while staging
RESTORE_HOLDS = 500  # dropped holds whose events one restore.lua call appends (a call stays short)
STALE = 1  # restore.lua: the campaign moved since the plan was read


@dataclass(frozen=True, slots=True)
class Plan:
    counters: dict[str, Any]
    users: dict[str, int]
    records: dict[str, bytes]  # reservation id -> packed record to write
    idempotency: dict[str, str]  # ``<storefront>|<key>`` -> reservation id, fields Redis lacks
    dropped: tuple[ResState, ...]  # holds never confirmed
    orders: int


@dataclass(frozen=True, slots=True)
class Recovery:
    campaign_id: str
    reloaded_definition: bool  # Redis had lost the campaign itself
    orders: int
    dropped_holds: int
    attempts: int
    reconciliation: Reconciliation
    idempotency_keys: int = 0  # idempotency hash fields rebuilt


def stage_keys(campaign_id: str) -> list[str]:
    """``flashsale recover``'s scratch keys of a campaign (consumed by each run; archive removes leftovers)."""
    tag = keys.CampaignKeys(campaign_id).tag
    return [f"{tag}:restore:counters", f"{tag}:restore:users", f"{tag}:restore:res", f"{tag}:restore:idem"]


def _record(r: ResState, state: str) -> bytes:
    """A reservation record in the layout of ``engine/lua/reserve.lua``."""
    packed: bytes = msgpack.packb([state, r.product_id, r.user_id, r.units, r.amount, r.expires_ms, r.created_ms,
                                   r.storefront, r.idempotency_key, r.payment_ref, r.confirmed_ms])
    return packed


def _from_record(rid: str, packed: bytes) -> ResState:
    st, pid, uid, units, amount, exp, created, sf, key, ref, confirmed = msgpack.unpackb(packed, raw=False)[:11]
    return ResState(rid, pid, uid, int(units), int(amount), st, int(created), int(exp), sf, ref or "",
                    int(confirmed or 0), key or "")


def plan(campaign: Campaign, view: RedisView, ledger: LedgerSnapshot) -> Plan:
    """The campaign as the ledger, the surviving stream and the surviving records tell it.

    Every reservation the history or a surviving record knows gets a record (an unpaid hold's
    says 'expired') and, if its Idempotency-Key is known, its idempotency hash field, so a
    storefront retrying with the same key is answered with that reservation, never a new one.
    Keys come from the ``reserved`` events and the surviving records; events stored before the
    ``reserved`` event carried the key (ledger schema version 1) have none, and a reservation
    known only from those cannot have its field rebuilt: a retry with its key would reserve anew.
    """
    states = replay(merge(ledger.events, view.events))
    had: dict[str, ResState] = {}
    for rid, packed in view.records.items():
        rec = had[rid] = _from_record(rid, packed)
        known = states.get(rid)
        if known is None or (rec.state == "confirmed" and known.state != "confirmed"):
            states[rid] = r = _from_record(rid, packed)  # a confirm is final, wherever it survived
            if known is not None and not r.idempotency_key:
                r.storefront, r.idempotency_key = known.storefront, known.idempotency_key
        elif rec.idempotency_key and not known.idempotency_key:
            known.storefront, known.idempotency_key = rec.storefront, rec.idempotency_key
    records: dict[str, bytes] = {}
    dropped: list[ResState] = []
    for rid, r in states.items():
        before = had.get(rid)
        if r.state == "held":
            dropped.append(r)
            r.state = "expired"
            records[rid] = _record(r, "expired")
        elif before is None or before.state != r.state or (r.idempotency_key and not before.idempotency_key):
            records[rid] = _record(r, r.state)
    idem = {f: rid for f, rid in idempotency(states.values()).items() if f not in view.idempotency}
    want = totals(states.values())
    counters: dict[str, Any] = {f: v for f, v in view.counters.items()
                                if not f.startswith(("sold|", "held|"))}
    pids = {p.id for p in campaign.products} | set(want.product_sold)
    counters.update({"sold": want.sold, "held": 0, "orders": want.orders, "buyers": want.buyers})
    for p in pids:
        counters[f"sold|{p}"] = want.product_sold.get(p, 0)
        counters[f"held|{p}"] = 0
    return Plan(counters, want.users, records, idem, tuple(dropped), want.orders)


async def _stage(redis: Client, campaign_id: str, view: RedisView, p: Plan, page: int) -> None:
    """The plan as complete staged copies (records and idempotency fields over what Redis has),
    written ``page`` fields per HSET and a few HSETs per round trip, so no call is long."""
    stage = stage_keys(campaign_id)
    for key in stage:
        await redis.unlink(key)
    mappings: list[dict[str, Any]] = [p.counters, p.users, {**view.records, **p.records},
                                      {**view.idempotency, **p.idempotency}]
    for key, mapping in zip(stage, mappings, strict=True):
        items = list(mapping.items())
        for lo in range(0, len(items), page * STAGE_CALLS):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(lo, min(lo + page * STAGE_CALLS, len(items)), page):
                    pipe.hset(key, mapping=dict(items[i : i + page]))
                await pipe.execute()


async def _apply(redis: Client, campaign_id: str, view: RedisView, p: Plan, ledger_last: str,
                 persisted: int, page: int) -> bool:
    """Stage the plan, then put it in place with restore.lua: one swap, then the dropped holds'
    events at most ``RESTORE_HOLDS`` per call. False if the campaign moved since it was read."""
    k = keys.CampaignKeys(campaign_id)
    await _stage(redis, campaign_id, view, p, page)
    script = registered(redis, "restore")
    expected = view.last_id
    for step, lo in enumerate(range(0, max(len(p.dropped), 1), RESTORE_HOLDS)):
        chunk = p.dropped[lo : lo + RESTORE_HOLDS]
        args: list[Any] = [expected, ledger_last, persisted, GROUP, 1 if step == 0 else 0, len(chunk)]
        for r in chunk:
            args += [r.reservation_id, r.product_id, r.user_id, r.units, r.amount]
        code, _n, now = await script(keys=[k.counters, k.users, k.reservations, k.holds, k.events, k.ledger,
                                           k.idempotency, *stage_keys(campaign_id)], args=args)
        if int(code) == STALE:
            if step == 0:
                for key in stage_keys(campaign_id):
                    await redis.unlink(key)
                return False
            raise LedgerError(f"campaign {campaign_id!r} moved while recover appended the dropped holds' events "
                              "(is another recover running?); it stays refused: run recover again")
        expected = now.decode() if isinstance(now, bytes) else str(now)
    return True


def _load_args(c: Campaign) -> list[Any]:
    """``load.lua``'s ARGV (its header), as ``Engine.load_campaign`` builds them (the v1.1 block
    included: queue mode, eligibility and buyer caps live in the meta hash the script reads)."""
    return load_args(c)


async def refuse(engine: Engine, sink: Sink, campaign_id: str) -> tuple[Campaign, bool]:
    """Put the campaign in 'recovering', reloading its definition from the ledger if Redis lost it.
    Returns (the campaign, whether it was reloaded)."""
    redis = engine.redis
    k = keys.CampaignKeys(campaign_id)
    raw = await cast("Awaitable[bytes | None]", redis.hget(k.meta, "def"))
    if raw is not None:
        await engine.set_recovering(campaign_id, True)
        await cast("Awaitable[int]", redis.sadd(keys.CAMPAIGNS, campaign_id))  # a run cut short may have missed it
        return parse(orjson.loads(raw)), False
    kept = await sink.campaign_definition(campaign_id)
    if kept is None:
        raise LedgerError(f"campaign {campaign_id!r} is neither in Redis nor in the ledger: nothing to recover; "
                          "load it with `flashsale campaign load FILE`")
    campaign = parse(orjson.loads(kept))
    load, admin = engine.scripts.load, engine.scripts.admin
    for script in (load, admin):  # a cluster's transaction runs EVALSHA only: have them on every master
        await redis.script_load(script.script)
    load_keys = [k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds, k.rate, k.ratelimit]
    async with redis.pipeline(transaction=True) as p:  # loaded and refused at once (the campaign's slot)
        # execute_command: a cluster pipeline refuses its evalsha method, not the command
        p.execute_command("EVALSHA", load.sha, len(load_keys), *load_keys, *_load_args(campaign))
        p.execute_command("EVALSHA", admin.sha, 1, k.meta, "recovering")
        (code, _), (admin_code, _) = await p.execute()
    if code != 0 or admin_code != 0:
        raise LedgerError(f"could not reload campaign {campaign_id!r} into Redis (codes {code}, {admin_code})")
    await cast("Awaitable[int]", redis.sadd(keys.CAMPAIGNS, campaign_id))  # fs:campaigns: another slot
    return campaign, True


async def recover(engine: Engine, sink: Sink, campaign_id: str, *, page: int = PAGE) -> Recovery:
    """Rebuild a campaign from the ledger; it serves again only if reconcile finds no difference.
    ``page``: hash fields or stream entries per Redis call."""
    redis = engine.redis
    campaign, reloaded = await refuse(engine, sink, campaign_id)
    attempts = 0
    while True:
        attempts += 1
        view = await read_view(redis, campaign_id, records=True, idempotency=True, page=page)
        ledger = await sink.snapshot(campaign_id, orders=False)
        p = plan(campaign, view, ledger)
        last = ledger.events[-1].entry_id if ledger.events else "0-0"
        if await _apply(redis, campaign_id, view, p, last, ledger.order_rows, page):
            break
        if attempts >= MAX_ATTEMPTS:
            raise LedgerError(f"campaign {campaign_id!r} kept changing during recovery ({attempts} plans); "
                              "it stays refused: stop the sweepers and API, then run recover again")
    report = await reconcile(redis, sink, campaign_id, page=page)
    if report.clean:
        await engine.set_recovering(campaign_id, False)
    return Recovery(campaign_id, reloaded, p.orders, len(p.dropped), attempts, report, len(p.idempotency))
