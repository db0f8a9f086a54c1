"""Events and orders as database rows: one column order for both back-ends."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.events import Event
from engine.ledger.sink import Order, entry_key

EVENT_COLUMNS = ("campaign_id", "entry_ms", "entry_seq", "type", "reservation_id", "product_id",
                 "user_id", "units", "amount", "at_ms", "storefront", "expires_at_ms", "payment_ref",
                 "idempotency_key",  # schema version 2
                 "buyer_identity", "buyer_device", "buyer_network")  # schema version 3
ORDER_COLUMNS = ("reservation_id", "campaign_id", "product_id", "user_id", "units", "amount",
                 "payment_ref", "confirmed_at")

EventRow = tuple[str, int, int, str, str, str, str, int, int, int, str | None, int | None, str | None, str | None,
                 str | None, str | None, str | None]


def history_by_user_sql(p: str, c: str = "") -> str:
    """The query of ``Sink.history_by_user`` (``p``: the placeholder, formatted with its 1-based position: each
    position's value is passed where it appears, twice for the second with ``?``; ``c``: a
    collation clause making ORDER BY compare code points, as Python does): the campaign's events up
    to a stream entry id, ordered by user, reservation, then stream order. No index serves this
    order: the database sorts once (on disk if it must) and the caller reads the result in pages."""
    return (f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE campaign_id = {p.format(1)} "
            f"AND (entry_ms < {p.format(2)} OR (entry_ms = {p.format(2)} AND entry_seq <= {p.format(3)})) "
            f"ORDER BY user_id{c}, reservation_id{c}, entry_ms, entry_seq")


def event_row(e: Event) -> EventRow:
    ms, seq = entry_key(e.entry_id)
    return (e.campaign_id, ms, seq, e.type, e.reservation_id, e.product_id, e.user_id, e.units,
            e.amount, e.at_ms, e.storefront, e.expires_at_ms, e.payment_ref, e.idempotency_key,
            e.identity, e.device, e.network)


def event_of_row(r: Sequence[Any]) -> Event:
    return Event(campaign_id=r[0], entry_id=f"{r[1]}-{r[2]}", type=r[3], reservation_id=r[4],
                 product_id=r[5], user_id=r[6], units=int(r[7]), amount=int(r[8]), at_ms=int(r[9]),
                 storefront=r[10], expires_at_ms=None if r[11] is None else int(r[11]),
                 payment_ref=r[12], idempotency_key=r[13],
                 identity=r[14] if len(r) > 14 else None, device=r[15] if len(r) > 15 else None,
                 network=r[16] if len(r) > 16 else None)


def order_rows(rows: Sequence[EventRow], at: Callable[[int], Any]) -> list[tuple[Any, ...]]:
    """The ``orders`` rows of the confirmed events among ``rows``; ``at(ms)`` is confirmed_at in
    the dialect's type."""
    return [(r[4], r[0], r[5], r[6], r[7], r[8], r[12] or "", at(r[9])) for r in rows if r[3] == "confirmed"]


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ms_of(at: datetime | str) -> int:
    dt = datetime.fromisoformat(at) if isinstance(at, str) else at
    return round(dt.timestamp() * 1000)


def order_of_row(r: Sequence[Any]) -> Order:
    return Order(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], ms_of(r[7]))


def by_campaign(rows: Iterable[EventRow]) -> dict[str, list[EventRow]]:
    """Rows grouped by campaign, each group in the order given, campaigns sorted (lock order)."""
    groups: dict[str, list[EventRow]] = defaultdict(list)
    for r in rows:
        groups[r[0]].append(r)
    return {cid: groups[cid] for cid in sorted(groups)}
