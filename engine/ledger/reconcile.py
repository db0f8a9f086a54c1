"""``flashsale reconcile ID``: Redis's counters against the ledger plus the undrained stream.

Redis is read page by page (``engine.ledger.redisview``: no call long); the campaign's stream id
is read first and last, and a campaign that moved in between is read again, so the answer is
exact on a quiescent campaign. The ledger's history is read ordered by user, merged with the
undrained stream (``engine.ledger.spool``) and compared a page of whole users at a time with
``HMGET`` of the same fields (``engine.ledger.history.by_user``): Python never holds the
campaign. Ledger events newer than Redis's stream are left out (they were written after the
read), except those the ledger held before Redis was read: those are transitions Redis has lost.
Every difference is reported:

- sold, held, remaining, orders and buyers, for the campaign and each product;
- each user's units taken (held + confirmed) and confirmed, in all, per product and per
  storefront; fields only Redis holds are found, when Redis holds more than the history gives,
  by a second pass over a scratch file;
- the buyers hash (buyer caps): units taken per identity, device and network, summed over the
  pages in a scratch file (a signal spans users: ``engine.ledger.spool.SignalUnits``) and
  compared with the hash read a page at a time;
- the idempotency hash: every Idempotency-Key the history knows (``reserved`` events carry it;
  those stored under ledger schema version 1 do not) must lead to its reservation (one line);
- inside the ledger: ``orders`` against the confirmed events, and ``persisted_orders``;
- entries of the campaign in the dead-letter stream, and stream entries that are not events.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from engine import keys
from engine.campaign import Campaign, parse
from engine.core import reads
from engine.core.redis_client import Client
from engine.ledger.history import ResState, Tally, by_user, totals
from engine.ledger.redisview import (
    ATTEMPTS,
    PAGE,
    CampaignMoving,
    RedisView,
    archived_record,
    count_nonzero,
    hash_pages,
    last_id,
    paged,
    read_view,
    stream_pages,
)
from engine.ledger.sink import OrderCheck, Sink, entry_key
from engine.ledger.spool import SignalUnits, StreamSpool

EXAMPLES = 3  # idempotency keys named in its one line


@dataclass(frozen=True, slots=True)
class Difference:
    what: str
    redis: Any
    ledger: Any

    def __str__(self) -> str:
        return f"{self.what}: Redis {self.redis}, ledger + stream {self.ledger}"


@dataclass(frozen=True, slots=True)
class Reconciliation:
    campaign_id: str
    differences: tuple[Difference, ...]
    ledger_events: int  # history rows considered
    stream_events: int  # undrained entries considered
    orders: int  # confirmed orders by the history
    archived: dict[str, Any] | None = None  # the campaign's ``fs:archived`` record, if archived

    @property
    def clean(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        verdict = "no differences" if self.clean else f"{len(self.differences)} difference(s)"
        if self.archived is not None:
            return (f"campaign {self.campaign_id}: archived at {self.archived.get('at')} (its keys left Redis, the "
                    f"ledger keeps the sale): {self.orders} confirmed orders in the ledger, "
                    f"{self.archived.get('orders')} when archived; ledger checked alone: {verdict}")
        return (f"campaign {self.campaign_id}: {self.orders} confirmed orders; {self.ledger_events} ledger events "
                f"+ {self.stream_events} stream entries; {verdict}")


def _user_field(name: str) -> str:
    _, _, rest = name.partition("|")
    uid, _, rest = rest.partition("|")
    pid, _, storefront = rest.partition("|")
    what = "units taken (held + confirmed)" if name.startswith(keys.Users.TAKEN) else "units confirmed"
    return (f"user {uid}: {what}" + (f", product {pid}" if pid else "")
            + (f", through storefront {storefront}" if storefront else ""))


def compare_counters(campaign: Campaign, counters: dict[str, int], want: Tally) -> list[Difference]:
    """The counters hash against the totals of the history."""
    c = reads.counter_figures(counters)
    out: list[Difference] = []

    def check(what: str, have: int, should: int) -> None:
        if have != should:
            out.append(Difference(what, have, should))

    check("sold units", c.sold, want.sold)
    check("held units", c.held, want.held)
    check("remaining units", campaign.total_units - c.sold - c.held, campaign.total_units - want.sold - want.held)
    check("confirmed orders", c.orders, want.orders)
    check("buyers", c.buyers, want.buyers)
    pids = [p.id for p in campaign.products]
    pids += sorted((set(want.product_sold) | set(want.product_held)) - set(pids))
    for p in pids:
        total = next((x.total_units for x in campaign.products if x.id == p), 0)
        sold, held = c.product_sold(p), c.product_held(p)
        check(f"product {p}: sold units", sold, want.product_sold.get(p, 0))
        check(f"product {p}: held units", held, want.product_held.get(p, 0))
        check(f"product {p}: remaining units", total - sold - held,
              total - want.product_sold.get(p, 0) - want.product_held.get(p, 0))
    return out


def _buyer_field(name: str) -> str:
    B = keys.Buyers
    dimension = {B.IDENTITY: "identity", B.DEVICE: "device", B.NETWORK: "network"}.get(name[:2], "signal")
    return f"{dimension} {name[2:]}: units taken (held + confirmed)"


def idempotency_fields(states: Iterable[ResState]) -> list[tuple[str, str]]:
    """``(<storefront>|<key>, reservation id)`` of each reservation whose key the history knows."""
    return [(keys.idempotency_field(r.storefront, r.idempotency_key), r.reservation_id) for r in states
            if r.idempotency_key]


@dataclass(slots=True)
class _Check:
    """What reconcile gathers page by page: differences, and what the last steps need."""

    page: int
    signals: SignalUnits  # units per buyer signal, summed over the pages
    tally: Tally = field(default_factory=Tally)
    users: list[Difference] = field(default_factory=list)
    matched: int = 0  # users hash fields the history gives that Redis holds (not 0)
    known: int = 0  # idempotency keys the history knows
    missing: list[str] = field(default_factory=list)  # … that Redis lacks (the first few kept)
    missing_n: int = 0
    elsewhere: dict[str, str] = field(default_factory=dict)  # field -> the other reservation Redis names

    async def users_page(self, redis: Client, campaign_id: str, states: list[ResState]) -> None:
        t = totals(states)
        self.tally.add(t)
        self.signals.add(t.buyer_units)
        fields = list(t.users)
        have_units = await paged(redis, partial(reads.user_units, campaign_id), fields, self.page)
        for f, have, should in zip(fields, have_units, t.users.values(), strict=True):
            self.matched += have != 0
            if have != should:
                self.users.append(Difference(_user_field(f), have, should))
        keyed = dict(idempotency_fields(states))  # a key twice in one page counts once
        self.known += len(keyed)
        targets = await paged(redis, partial(reads.idempotency_targets, campaign_id), list(keyed), self.page)
        for (f, rid), v in zip(keyed.items(), targets, strict=True):
            if v is None:
                self.missing_n += 1
                if len(self.missing) < EXAMPLES:
                    self.missing.append(f)
            elif v != rid:
                self.elsewhere[f] = v

    async def buyers(self, redis: Client, campaign_id: str) -> list[Difference]:
        """The buyers hash, read a page at a time, against the units per signal the history gives."""
        async for chunk in hash_pages(redis, keys.CampaignKeys(campaign_id).buyers, self.page):
            self.signals.seen(chunk)
        return [Difference(_buyer_field(f), have, should) for f, have, should in self.signals.differing(self.page)]

    def idempotency(self) -> list[Difference]:
        """The idempotency hash against the keys the history knows: each ``<storefront>|<key>``
        must name a reservation made with it (should a key have made two, either will do). One line."""
        if not self.missing_n and not self.elsewhere:
            return []
        shown = ", ".join(repr(f) for f in (self.missing + sorted(self.elsewhere))[:EXAMPLES])
        return [Difference("idempotency keys (<storefront>|<key> -> reservation)",
                           f"{self.missing_n} missing and {len(self.elsewhere)} naming another reservation "
                           f"(e.g. {shown})", f"{self.known} known")]


def ledger_self_check(check: OrderCheck) -> list[Difference]:
    """``orders`` against the confirmed events of the same ledger, and the published count (the
    database compares: ``Sink.order_check``)."""
    out = [Difference(f"ledger order {rid}", "(orders row missing)", event) for rid, event in check.missing]
    out += [Difference(f"ledger order {rid}", order, "(no confirmed event)") for rid, order in check.extra]
    out += [Difference(f"ledger order {rid}", order, event) for rid, order, event in check.differing]
    if check.persisted_orders != check.order_rows:
        out.append(Difference("ledger persisted_orders against rows in orders", check.persisted_orders,
                              check.order_rows))
    return out


async def dead_letters(redis: Client, campaign_id: str, page: int = PAGE) -> list[Difference]:
    out: list[Difference] = []
    async for entries in stream_pages(redis, keys.DEAD_LETTERS, "+", page):
        out += [Difference(f"dead letter {eid.decode()} (entry {f.get(b'id', b'?').decode()})",
                           f.get(b"reason", b"?").decode(), "(not in the ledger)")
                for eid, f in entries if f.get(b"campaign") == campaign_id.encode()]
    return out


async def definition(view: RedisView, sink: Sink) -> Campaign | None:
    raw = view.definition.decode() if view.definition is not None else await sink.campaign_definition(view.campaign_id)
    return None if raw is None else parse(orjson.loads(raw))


async def reconcile_archived(sink: Sink, campaign_id: str, record: dict[str, Any]) -> Reconciliation:
    """An archived campaign: Redis no longer has it; the ledger is checked alone, and against the
    orders Redis counted when it was archived."""
    check = await sink.order_check(campaign_id)
    diffs = ledger_self_check(check)
    if int(record.get("orders", -1)) != check.order_rows:
        diffs.append(Difference("confirmed orders (Redis: when archived)", record.get("orders"), check.order_rows))
    ledger = await sink.snapshot(campaign_id, orders=False)
    return Reconciliation(campaign_id, tuple(diffs), len(ledger.events), 0, check.order_rows, record)


async def reconcile(redis: Client, sink: Sink, campaign_id: str, *, page: int = PAGE,
                    attempts: int = ATTEMPTS) -> Reconciliation:
    """Every difference between Redis and the ledger plus the undrained stream (for an archived
    campaign: the ledger checked alone, ``Reconciliation.archived`` set). ``page``: hash fields,
    stream entries or ledger rows per call; Python holds a page of users and the undrained
    stream, never the campaign. Raises ``CampaignMoving`` if the campaign changed under every
    one of ``attempts`` reads."""
    if not await redis.exists(keys.CampaignKeys(campaign_id).meta):
        record = await archived_record(redis, campaign_id)
        if record is not None:
            return await reconcile_archived(sink, campaign_id, record)
    for _ in range(attempts):
        report = await _reconcile_once(redis, sink, campaign_id, page)
        if report is not None:
            return report
    raise CampaignMoving(f"campaign {campaign_id!r} changed while it was reconciled, {attempts} times: run this when "
                         "it is quiescent (closed, paused, or after the sale)")


async def _reconcile_once(redis: Client, sink: Sink, campaign_id: str, page: int) -> Reconciliation | None:
    """One pass; None if the campaign moved while it was read."""
    ledger_last = await sink.last_entry(campaign_id) or "0-0"  # before Redis: what the ledger surely held
    view = await read_view(redis, campaign_id, page=page, users=False, stream=False)
    upto = max(view.last_id, ledger_last, key=entry_key)  # the ledger's rows past it came after the read
    k = keys.CampaignKeys(campaign_id)
    with StreamSpool() as stream, SignalUnits() as signals:
        check = _Check(page, signals)
        await stream.fill(redis, campaign_id, view.last_id, page)
        ledger_events = await by_user(sink, campaign_id, upto, stream.events(page), page,
                                      partial(check.users_page, redis, campaign_id))
        extra = await count_nonzero(redis, k.users, page) != check.matched
        unknown = await _unknown(redis, sink, campaign_id, upto, stream, check, extra) if extra or \
            check.elsewhere else []
        buyers = await check.buyers(redis, campaign_id)
    if await last_id(redis, k.events) != view.last_id:
        return None
    diffs: list[Difference] = []
    campaign = await definition(view, sink)
    if campaign is None:
        diffs.append(Difference("campaign definition", "(missing)", "(missing)"))
    else:
        if view.definition is None:
            diffs.append(Difference("campaign definition", "(missing: run flashsale recover)", "(kept)"))
        diffs += compare_counters(campaign, view.counters, check.tally)
        diffs += check.users + unknown + buyers
        diffs += check.idempotency()
    diffs += ledger_self_check(await sink.order_check(campaign_id))
    diffs += [Difference(f"stream entry {eid}", "(not a flashsale event)", "(skipped)") for eid in stream.malformed]
    diffs += await dead_letters(redis, campaign_id, page)
    return Reconciliation(campaign_id, tuple(diffs), ledger_events, stream.count, check.tally.orders)


async def _unknown(redis: Client, sink: Sink, campaign_id: str, upto: str, stream: StreamSpool,
                   check: _Check, extra: bool) -> list[Difference]:
    """A second pass, only when the first found that Redis holds users fields the history does
    not give (``extra``), or keys naming another reservation: those fields are set aside in a
    scratch SQLite file, each the history gives is struck off, and what is left is reported; an
    idempotency key naming another reservation made with the same key is struck off the same way."""
    k = keys.CampaignKeys(campaign_id)
    with tempfile.TemporaryDirectory(prefix="flashsale-reconcile-") as tmp:
        db = sqlite3.connect(Path(tmp) / "fields.db")
        try:
            db.execute("CREATE TABLE f (field TEXT PRIMARY KEY, units INTEGER NOT NULL) WITHOUT ROWID")
            if extra:
                async for chunk in hash_pages(redis, k.users, check.page):
                    db.executemany("INSERT OR REPLACE INTO f VALUES (?, ?)",
                                   [(f.decode(), int(v)) for f, v in chunk.items() if int(v) != 0])

            async def strike(states: list[ResState]) -> None:
                if extra:
                    db.executemany("DELETE FROM f WHERE field = ?", [(f,) for f in totals(states).users])
                for f, rid in idempotency_fields(states):
                    if check.elsewhere.get(f) == rid:
                        del check.elsewhere[f]

            await by_user(sink, campaign_id, upto, stream.events(check.page), check.page, strike)
            return [Difference(_user_field(f), units, 0) for f, units in db.execute("SELECT * FROM f ORDER BY field")]
        finally:
            db.close()
