"""``flashsale recover ID``: rebuild a campaign in Redis from the ledger, after Redis lost data.

1. Refuse the campaign: its admin flag becomes ``recovering`` (reserve answers RECOVERING, HTTP
   503). If Redis lost the campaign itself, its definition comes from the ledger's ``campaigns``
   table and is loaded already refused, in one MULTI, so no reserve slips in between.
2. Plan and stage, a page of whole users at a time: the ledger's history, read ordered by user
   (``engine.ledger.history.by_user``), plus whatever the stream kept and the reservation records
   that survived: every confirmed order counts, every hold never confirmed is dropped and its
   units return. Each page's plan (its users' fields, changed records, which keep the buyer
   signals the caps counted, missing idempotency fields, dropped holds) goes straight into
   complete staged copies of the counters, users, records and idempotency hash
   (``fs:{c:ID}:restore:*``, records and keys over copies of what Redis has) and a list of the
   dropped holds, a page of fields per call: Python never holds the campaign. The buyers hash
   (the units each capped buyer signal has confirmed, from the ``reserved`` events'
   ``bi``/``bd``/``bn``) is summed over the pages in a scratch file (a signal spans users:
   ``engine.ledger.spool.SignalUnits``) and staged from it at the end, a page at a time. A
   record that survived for a reservation the history does not know counts as it says (found,
   when the records outnumber the history's, by a second pass over a scratch file).
3. ``restore.lua`` swaps the staged copies in, in one short atomic step, if the campaign has not
   moved since it was read (its stream's last id is unchanged; else plan again), and appends the
   dropped holds' events in bounded calls.
4. Reconcile; when clean, the campaign serves again (its flag as it was before).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import orjson

from engine import keys
from engine.campaign import Campaign, parse
from engine.core import Engine, reads
from engine.core.engine import load_args
from engine.core.redis_client import Client
from engine.errors import LedgerError
from engine.ledger.history import ResState, Tally, Totals, by_user, idempotency, totals
from engine.ledger.reconcile import Reconciliation, reconcile
from engine.ledger.redisview import PAGE, RedisView, hash_pages, paged, per_call, read_view
from engine.ledger.sink import Sink, entry_key
from engine.ledger.spool import SignalUnits, StreamSpool
from engine.ledger.streams import GROUP, registered

MAX_ATTEMPTS = 20  # plans made before giving up on a campaign that keeps moving
RESTORE_HOLDS = 100  # dropped holds whose events one restore.lua call appends (a call stays well under 20 ms)
STALE = 1  # restore.lua: the campaign moved since the plan was read


@dataclass(frozen=True, slots=True)
class PagePlan:
    """The plan for a page of whole users."""

    users: dict[str, int]  # their fields of the users hash
    records: dict[str, bytes]  # reservation id -> packed record to write
    idempotency: dict[str, str]  # ``<storefront>|<key>`` -> reservation id, fields Redis lacks
    dropped: tuple[ResState, ...]  # holds never confirmed
    totals: Totals


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
    """``flashsale recover``'s scratch keys of a campaign (consumed by each run; archive removes
    leftovers): the five hashes restore.lua swaps in, then the list of dropped holds."""
    k = keys.CampaignKeys(campaign_id)
    return [*k.staged(), k.staged_dropped]


def _record(r: ResState, state: str, capped: bool) -> bytes:
    """A reservation record (``engine.keys.Record``): under buyer caps (``capped``) with the three
    signals the caps counted, as cancel and expire read them."""
    signals = (r.identity, r.device, r.network) if capped else (None, None, None)
    return keys.pack_record(keys.Record(state, r.product_id, r.user_id, r.units, r.amount, r.expires_ms,
                                        r.created_ms, r.storefront, r.idempotency_key, r.payment_ref,
                                        r.confirmed_ms, *signals))


def _from_record(rid: str, packed: bytes) -> ResState:
    r = keys.unpack_record(packed)
    return ResState(rid, r.product, r.user, r.units, r.amount, r.state, r.created_ms, r.expires_ms, r.storefront,
                    r.ref, r.confirmed_ms, r.key, r.identity or "", r.device or "", r.network or "")


def _buyer_capped(c: Campaign) -> bool:
    return any(cap is not None for cap in (c.identity_cap_units, c.device_cap_units, c.network_cap_units))


def plan_page(states: Sequence[ResState], had: dict[str, bytes], idempotency_known: set[str], *,
              capped: bool = False) -> PagePlan:
    """Whole users' reservations as the history tells them, given the records that survived in
    Redis (``had``, by reservation id) and the idempotency fields Redis still has.

    Every reservation the history knows gets a record (an unpaid hold's says 'expired') and, if
    its Idempotency-Key is known, its idempotency hash field, so a storefront retrying with the
    same key is answered with that reservation, never a new one. Keys come from the ``reserved``
    events and the surviving records; events stored before the ``reserved`` event carried the key
    (ledger schema version 1) have none, and a reservation known only from those cannot have its
    field rebuilt: a retry with its key would reserve anew. A confirm is final, wherever it survived.
    Under buyer caps (``capped``) the records keep the buyer signals.
    """
    final: list[ResState] = []
    for known in states:
        rid = known.reservation_id
        packed = had.get(rid)
        if packed is None:
            final.append(known)
            continue
        rec = _from_record(rid, packed)
        if rec.state == "confirmed" and known.state != "confirmed":
            if not rec.idempotency_key:
                rec.storefront, rec.idempotency_key = known.storefront, known.idempotency_key
            final.append(rec)
            continue
        if rec.idempotency_key and not known.idempotency_key:
            known.storefront, known.idempotency_key = rec.storefront, rec.idempotency_key
        final.append(known)
    records: dict[str, bytes] = {}
    dropped: list[ResState] = []
    for r in final:
        packed = had.get(r.reservation_id)
        before = None if packed is None else _from_record(r.reservation_id, packed)
        if r.state == "held":
            dropped.append(r)
            r.state = "expired"
            records[r.reservation_id] = _record(r, "expired", capped)
        elif before is None or before.state != r.state or (r.idempotency_key and not before.idempotency_key):
            records[r.reservation_id] = _record(r, r.state, capped)
    idem = {f: rid for f, rid in idempotency(final).items() if f not in idempotency_known}
    want = totals(final)
    return PagePlan(want.users, records, idem, tuple(dropped), want)


def counters_of(campaign: Campaign, counters: dict[str, int], want: Tally) -> dict[str, int]:
    """The counters hash: the history's totals, every other field (rejections) as Redis has it."""
    C = keys.Counters
    out = {f: v for f, v in counters.items() if not f.startswith((C.PRODUCT_SOLD, C.PRODUCT_HELD))}
    out.update({C.SOLD: want.sold, C.HELD: 0, C.ORDERS: want.orders, C.BUYERS: want.buyers})
    for p in {p.id for p in campaign.products} | set(want.product_sold):
        out[C.sold(p)] = want.product_sold.get(p, 0)
        out[C.held(p)] = 0
    return out


@dataclass(slots=True)
class _Staged:
    signals: SignalUnits  # units per buyer signal, summed over the pages
    capped: bool  # the campaign has buyer caps: records keep the signals
    tally: Tally = field(default_factory=Tally)
    dropped: int = 0
    idempotency: int = 0  # idempotency fields rebuilt
    records: int = 0  # reservations of the history whose record survived


async def _copy(redis: Client, source_key: str, target: str, page: int) -> None:
    """A hash copied ``per_call(page)`` fields per HSCAN and per HSET."""
    async for chunk in hash_pages(redis, source_key, page):
        if chunk:
            await redis.hset(target, mapping=chunk)  # type: ignore[misc]


async def _stage(redis: Client, sink: Sink, campaign: Campaign, view: RedisView, stream: StreamSpool,
                 upto: str, page: int) -> _Staged:
    """The plan as complete staged copies, built a page of whole users at a time: records and
    idempotency fields over copies of what Redis has, the users hash and counters from the
    history, the buyers hash from the signals' totals, the dropped holds in a list;
    ``per_call(page)`` fields per call, a page's calls per round trip. Records that survived for
    reservations the history does not know are added before the signals' totals are staged."""
    cid = campaign.id
    k = keys.CampaignKeys(cid)
    await redis.unlink(*stage_keys(cid))
    counters, _, records, idem, buyers, _ = stage_keys(cid)
    await _copy(redis, k.reservations, records, page)
    await _copy(redis, k.idempotency, idem, page)
    with SignalUnits() as signals:
        out = _Staged(signals, _buyer_capped(campaign))

        async def each(states: list[ResState]) -> None:
            rids = [r.reservation_id for r in states]
            had = {rid: v for rid, v in zip(rids, await paged(redis, partial(reads.records, cid), rids, page),
                                            strict=True) if v is not None}
            out.records += len(had)
            await _write(redis, cid, states, had, out, page, whole_users=True)

        await by_user(sink, cid, upto, stream.events(page), page, each)
        if await cast("Awaitable[int]", redis.hlen(k.reservations)) != out.records:
            await _records_only(redis, sink, cid, upto, stream, out, page)
        for chunk in signals.totals(per_call(page)):
            await redis.hset(buyers, mapping=chunk)  # type: ignore[misc]
    await redis.hset(counters, mapping=counters_of(campaign, view.counters, out.tally))  # type: ignore[misc]
    return out


async def _write(redis: Client, campaign_id: str, states: list[ResState], had: dict[str, bytes],
                 out: _Staged, page: int, *, whole_users: bool) -> None:
    """Plan a page and write it to the staged keys in one round trip. ``whole_users``: the page
    holds its users' every reservation, so their fields are set; else added to."""
    _, users, records, idem, _, drops = stage_keys(campaign_id)
    fields = list(idempotency(states))
    targets = await paged(redis, partial(reads.idempotency_targets, campaign_id), fields, page)
    known = {f for f, v in zip(fields, targets, strict=True) if v is not None}
    p = plan_page(states, had, known, capped=out.capped)
    out.tally.add(p.totals)
    out.signals.add(p.totals.buyer_units)
    out.dropped += len(p.dropped)
    n = per_call(page)
    async with redis.pipeline(transaction=False) as pipe:
        if whole_users:
            items = list(p.users.items())
            for lo in range(0, len(items), n):
                pipe.hset(users, mapping=dict(items[lo : lo + n]))
        else:
            for f, units in p.users.items():
                pipe.hincrby(users, f, units)
        changed = list(p.records.items())
        for lo in range(0, len(changed), n):
            pipe.hset(records, mapping=dict(changed[lo : lo + n]))
        gone = [f"{r.reservation_id}|{r.product_id}|{r.user_id}|{r.units}|{r.amount}" for r in p.dropped]
        for lo in range(0, len(gone), n):
            pipe.rpush(drops, *gone[lo : lo + n])
        before = len(pipe)
        for f, rid in p.idempotency.items():  # the first reservation a key made keeps it
            pipe.hsetnx(idem, f, rid)
        done = await pipe.execute()
    out.idempotency += sum(int(x) for x in done[before:])


async def _records_only(redis: Client, sink: Sink, campaign_id: str, upto: str, stream: StreamSpool,
                        out: _Staged, page: int) -> None:
    """Records that survived in Redis for reservations neither the ledger nor the stream knows:
    set aside in a scratch SQLite file, struck off as a second pass over the history meets them;
    what is left counts as its record says (a hold among them is dropped), a page at a time."""
    with tempfile.TemporaryDirectory(prefix="flashsale-recover-") as tmp:
        db = sqlite3.connect(Path(tmp) / "records.db")
        try:
            db.execute("CREATE TABLE r (rid TEXT PRIMARY KEY, packed BLOB NOT NULL) WITHOUT ROWID")
            async for chunk in hash_pages(redis, keys.CampaignKeys(campaign_id).reservations, page):
                db.executemany("INSERT OR REPLACE INTO r VALUES (?, ?)", [(r.decode(), v) for r, v in chunk.items()])

            async def strike(states: list[ResState]) -> None:
                db.executemany("DELETE FROM r WHERE rid = ?", [(r.reservation_id,) for r in states])

            await by_user(sink, campaign_id, upto, stream.events(page), page, strike)
            cur = db.execute("SELECT rid, packed FROM r ORDER BY rid")
            while rows := cur.fetchmany(page):
                had = {rid: bytes(packed) for rid, packed in rows}
                states = [_from_record(rid, packed) for rid, packed in had.items()]
                await _write(redis, campaign_id, states, had, out, page, whole_users=False)
        finally:
            db.close()


async def _apply(redis: Client, campaign_id: str, view: RedisView, ledger_last: str, persisted: int) -> bool:
    """Put the staged plan in place with restore.lua: one swap, then the dropped holds' events
    at most ``RESTORE_HOLDS`` per call. False if the campaign moved since it was read."""
    k = keys.CampaignKeys(campaign_id)
    *staged, drops = stage_keys(campaign_id)
    script = registered(redis, "restore")
    expected = view.last_id
    held = await cast("Awaitable[int]", redis.llen(drops))
    for step, lo in enumerate(range(0, max(held, 1), RESTORE_HOLDS)):
        chunk = await cast("Awaitable[list[bytes]]", redis.lrange(drops, lo, lo + RESTORE_HOLDS - 1)) if held else []
        args: list[Any] = [expected, ledger_last, persisted, GROUP, 1 if step == 0 else 0, len(chunk)]
        for hold in chunk:
            args += hold.decode().split("|")
        code, _n, now = await script(keys=[k.counters, k.users, k.reservations, k.holds, k.events, k.ledger,
                                           k.idempotency, k.buyers, *staged], args=args)
        if int(code) == STALE:
            if step == 0:
                await redis.unlink(*stage_keys(campaign_id))
                return False
            raise LedgerError(f"campaign {campaign_id!r} moved while recover appended the dropped holds' events "
                              "(is another recover running?); it stays refused: run recover again")
        expected = now.decode() if isinstance(now, bytes) else str(now)
    await redis.unlink(drops)
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
    raw = await reads.definition(campaign_id).run(redis)
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
    ``page``: hash fields, stream entries or ledger rows per call, and users per step of the plan."""
    redis = engine.redis
    campaign, reloaded = await refuse(engine, sink, campaign_id)
    attempts = 0
    while True:
        attempts += 1
        view = await read_view(redis, campaign_id, users=False, stream=False, page=page)
        ledger_last = await sink.last_entry(campaign_id) or "0-0"
        persisted = (await sink.progress()).get(campaign_id, 0)
        with StreamSpool() as stream:
            await stream.fill(redis, campaign_id, view.last_id, page)
            staged = await _stage(redis, sink, campaign, view, stream, max(view.last_id, ledger_last, key=entry_key),
                                  page)
        if await _apply(redis, campaign_id, view, ledger_last, persisted):
            break
        if attempts >= MAX_ATTEMPTS:
            raise LedgerError(f"campaign {campaign_id!r} kept changing during recovery ({attempts} plans); "
                              "it stays refused: stop the sweepers and API, then run recover again")
    report = await reconcile(redis, sink, campaign_id, page=page)
    if report.clean:
        await engine.set_recovering(campaign_id, False)
    return Recovery(campaign_id, reloaded, staged.tally.orders, staged.dropped, attempts, report, staged.idempotency)
