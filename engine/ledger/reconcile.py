"""``flashsale reconcile ID``: Redis's counters against the ledger plus the undrained stream.

Redis is read page by page (``engine.ledger.redisview``: no call long, exact on a quiescent
campaign, as one transaction would have read it); the ledger before and after it. Ledger events newer than Redis's
stream are left out (they were written after the read), except those the ledger held before
Redis was read: those are transitions Redis has lost. Every difference is reported:

- sold, held, remaining, orders and buyers, for the campaign and each product;
- each user's units taken (held + confirmed) and confirmed, in all and per product;
- the idempotency hash: every Idempotency-Key the history knows (``reserved`` events carry it;
  those stored under ledger schema version 1 do not) must lead to its reservation (one line);
- inside the ledger: ``orders`` against the confirmed events, and ``persisted_orders``;
- entries of the campaign in the dead-letter stream, and stream entries that are not events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine import keys
from engine.campaign import Campaign, parse
from engine.core.redis_client import Client
from engine.ledger.history import ResState, Totals, merge, replay, totals
from engine.ledger.redisview import PAGE, RedisView, archived_record, read_view, scan_stream
from engine.ledger.sink import OrderCheck, Sink, entry_key


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
    kind, _, rest = name.partition("|")
    uid, _, rest = rest.partition("|")
    pid, _, storefront = rest.partition("|")
    what = "units taken (held + confirmed)" if kind == "t" else "units confirmed"
    return (f"user {uid}: {what}" + (f", product {pid}" if pid else "")
            + (f", through storefront {storefront}" if storefront else ""))


def compare(campaign: Campaign, view: RedisView, want: Totals) -> list[Difference]:
    """Counters and per-user totals in Redis against what the history says."""
    c = view.counters
    out: list[Difference] = []

    def check(what: str, have: int, should: int) -> None:
        if have != should:
            out.append(Difference(what, have, should))

    check("sold units", c.get("sold", 0), want.sold)
    check("held units", c.get("held", 0), want.held)
    check("remaining units", campaign.total_units - c.get("sold", 0) - c.get("held", 0),
          campaign.total_units - want.sold - want.held)
    check("confirmed orders", c.get("orders", 0), want.orders)
    check("buyers", c.get("buyers", 0), want.buyers)
    pids = [p.id for p in campaign.products]
    pids += sorted((set(want.product_sold) | set(want.product_held)) - set(pids))
    for p in pids:
        total = next((x.total_units for x in campaign.products if x.id == p), 0)
        sold, held = c.get(f"sold|{p}", 0), c.get(f"held|{p}", 0)
        check(f"product {p}: sold units", sold, want.product_sold.get(p, 0))
        check(f"product {p}: held units", held, want.product_held.get(p, 0))
        check(f"product {p}: remaining units", total - sold - held,
              total - want.product_sold.get(p, 0) - want.product_held.get(p, 0))
    for f in sorted(set(view.users) | set(want.users)):
        have, should = view.users.get(f, 0), want.users.get(f, 0)
        if have != should:
            out.append(Difference(_user_field(f), have, should))
    return out


def compare_idempotency(states: dict[str, ResState], view: RedisView, examples: int = 3) -> list[Difference]:
    """The idempotency hash against the keys the history knows: each ``<storefront>|<key>`` must
    name a reservation made with it (should a key have made two, either will do). One line."""
    want: dict[str, set[str]] = {}
    for r in states.values():
        if r.idempotency_key:
            want.setdefault(f"{r.storefront}|{r.idempotency_key}", set()).add(r.reservation_id)
    missing = [f for f in want if f not in view.idempotency]
    elsewhere = [f for f in want if f in view.idempotency and view.idempotency[f] not in want[f]]
    if not missing and not elsewhere:
        return []
    shown = ", ".join(repr(f) for f in (missing + elsewhere)[:examples])
    return [Difference("idempotency keys (<storefront>|<key> -> reservation)",
                       f"{len(missing)} missing and {len(elsewhere)} naming another reservation (e.g. {shown})",
                       f"{len(want)} known")]


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
    entries = await scan_stream(redis, keys.DEAD_LETTERS, "+", page)
    return [Difference(f"dead letter {eid.decode()} (entry {f.get(b'id', b'?').decode()})",
                       f.get(b"reason", b"?").decode(), "(not in the ledger)")
            for eid, f in entries if f.get(b"campaign") == campaign_id.encode()]


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


async def reconcile(redis: Client, sink: Sink, campaign_id: str, *, page: int = PAGE) -> Reconciliation:
    """Every difference between Redis and the ledger plus the undrained stream (for an archived
    campaign: the ledger checked alone, ``Reconciliation.archived`` set)."""
    if not await redis.exists(keys.CampaignKeys(campaign_id).meta):
        record = await archived_record(redis, campaign_id)
        if record is not None:
            return await reconcile_archived(sink, campaign_id, record)
    ledger_last = await sink.last_entry(campaign_id)  # before Redis: what the ledger surely held
    view = await read_view(redis, campaign_id, idempotency=True, page=page)
    ledger = await sink.snapshot(campaign_id, orders=False)
    upto = max(entry_key(view.last_id), entry_key(ledger_last or "0-0"))
    ledger_events = list(ledger.events)  # in stream order: what lies past ``upto`` is at the end
    while ledger_events and entry_key(ledger_events[-1].entry_id) > upto:
        ledger_events.pop()
    states = replay(merge(ledger_events, view.events))
    want = totals(states.values())
    diffs: list[Difference] = []
    campaign = await definition(view, sink)
    if campaign is None:
        diffs.append(Difference("campaign definition", "(missing)", "(missing)"))
    else:
        if view.definition is None:
            diffs.append(Difference("campaign definition", "(missing: run flashsale recover)", "(kept)"))
        diffs += compare(campaign, view, want)
        diffs += compare_idempotency(states, view)
    diffs += ledger_self_check(await sink.order_check(campaign_id))
    diffs += [Difference(f"stream entry {eid}", "(not a flashsale event)", "(skipped)") for eid in view.malformed]
    diffs += await dead_letters(redis, campaign_id, page)
    return Reconciliation(campaign_id, tuple(diffs), len(ledger_events), len(view.events), want.orders)
