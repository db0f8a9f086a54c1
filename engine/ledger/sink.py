"""The seam between the writer and a database: the ``Sink`` Protocol and the rows it stores.

PostgreSQL (``engine.ledger.postgres``) and SQLite (``engine.ledger.sqlite``) both implement it;
``open_sink(url)`` picks one by the URL's scheme. Every method that writes does so in one
transaction: ``write`` stores a batch of events and the orders among them, skipping any already
stored (the history is keyed by the stream entry id, orders by reservation id), and returns the
campaign's ``persisted_orders`` as committed. Errors say whether retrying can help:

    LedgerError                 (engine.errors)
    ├── LedgerUnavailable       the database cannot be reached or is busy: retry the same batch later
    └── RowRejected             the database refused the data itself: retrying the batch is futile
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import LedgerError
from engine.events import Event

if TYPE_CHECKING:
    from engine.ledger.rows import EventRow


class LedgerUnavailable(LedgerError):
    """The ledger database is down, unreachable or locked; nothing was committed."""


class RowRejected(LedgerError):
    """The database refused a row (a constraint or a value out of range); nothing was committed."""


@dataclass(frozen=True, slots=True)
class Order:
    """One row of ``orders``: a confirmed reservation (docs/API.md, "The ledger")."""

    reservation_id: str
    campaign_id: str
    product_id: str
    user_id: str
    units: int
    amount: int
    payment_ref: str
    confirmed_at_ms: int


@dataclass(frozen=True, slots=True)
class Holder:
    """One line of the holder register: what a user holds of a product."""

    user_id: str
    product_id: str
    units: int
    amount: int


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """A campaign's ledger as one read transaction saw it."""

    events: tuple[Event, ...]  # in stream order
    orders: tuple[Order, ...]  # empty when read with ``orders=False``
    persisted_orders: int
    order_rows: int = -1  # rows in ``orders`` for the campaign (-1: not counted)


OrderLine = tuple[str, str, int, int, str]  # product, user, units, amount, payment reference


@dataclass(frozen=True, slots=True)
class OrderCheck:
    """``orders`` against the confirmed events of the same ledger, as one read transaction saw
    them: only the rows that disagree, each list ordered by reservation id."""

    missing: tuple[tuple[str, OrderLine], ...]  # a confirmed event without its orders row
    extra: tuple[tuple[str, OrderLine], ...]  # an orders row without a confirmed event
    differing: tuple[tuple[str, OrderLine, OrderLine], ...]  # (id, orders row, confirmed event)
    order_rows: int
    persisted_orders: int


def order_check_sql(p: str, c: str = "") -> tuple[str, str]:
    """The two queries of ``Sink.order_check`` (``p``: the placeholder of the campaign id, used
    three times in the second; ``c``: a collation clause making ORDER BY compare code points, as Python does).
    The first gives each confirmed event whose orders row is missing or differs, the second each
    orders row without a confirmed event: the database compares, Python sees only differences."""
    confirmed = ("SELECT e.reservation_id, e.product_id, e.user_id, e.units, e.amount, COALESCE(e.payment_ref, ''), "
                 "o.reservation_id, o.product_id, o.user_id, o.units, o.amount, o.payment_ref "
                 "FROM events e LEFT JOIN orders o ON o.reservation_id = e.reservation_id "
                 f"AND o.campaign_id = e.campaign_id WHERE e.campaign_id = {p} AND e.type = 'confirmed' "
                 "AND (o.reservation_id IS NULL OR o.product_id <> e.product_id OR o.user_id <> e.user_id "
                 "OR o.units <> e.units OR o.amount <> e.amount OR o.payment_ref <> COALESCE(e.payment_ref, '')) "
                 f"ORDER BY e.reservation_id{c}")
    extra = ("SELECT o.reservation_id, o.product_id, o.user_id, o.units, o.amount, o.payment_ref FROM orders o "
             f"WHERE o.campaign_id = {p} AND o.reservation_id IN (SELECT reservation_id FROM orders WHERE "
             f"campaign_id = {p} EXCEPT SELECT reservation_id FROM events WHERE campaign_id = {p} "
             f"AND type = 'confirmed') ORDER BY o.reservation_id{c}")  # EXCEPT: no index on events' ids needed
    return confirmed, extra


def order_check_of(confirmed: Sequence[Sequence[Any]], extra: Sequence[Sequence[Any]], order_rows: int,
                   persisted: int) -> OrderCheck:
    """An ``OrderCheck`` from the rows of ``order_check_sql``'s queries."""
    missing = tuple((r[0], (r[1], r[2], int(r[3]), int(r[4]), r[5])) for r in confirmed if r[6] is None)
    differing = tuple((r[0], (r[7], r[8], int(r[9]), int(r[10]), r[11]), (r[1], r[2], int(r[3]), int(r[4]), r[5]))
                      for r in confirmed if r[6] is not None)
    others = tuple((r[0], (r[1], r[2], int(r[3]), int(r[4]), r[5])) for r in extra)
    return OrderCheck(missing, others, differing, order_rows, persisted)


Page = Callable[[list[Event]], Awaitable[None]]  # takes one page of ``Sink.history_by_user``


def entry_key(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``: stream order is this tuple's order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def order_of(event: Event) -> Order | None:
    """The ``orders`` row a ``confirmed`` event makes; None for every other event."""
    if event.type != "confirmed":
        return None
    return Order(event.reservation_id, event.campaign_id, event.product_id, event.user_id,
                 event.units, event.amount, event.payment_ref or "", event.at_ms)


class Sink(Protocol):
    """A ledger database. ``open`` creates or migrates the schema; every other call needs it."""

    url_scheme: str
    concurrency: int  # how many ``write`` calls may usefully run at once (one connection each)

    async def open(self, *, readonly: bool = False) -> int:
        """Connect, create or migrate the schema; returns the schema version (``SchemaTooNew``).
        ``readonly``: create nothing (no file, no schema) and migrate nothing; a missing ledger
        or one of another version is a ``LedgerError``."""
        ...

    async def close(self) -> None: ...

    async def write(self, rows: Sequence[EventRow]) -> dict[str, int]:
        """Store a batch of ``events`` rows, and the orders among them, in one transaction, each
        row once (already stored: skipped); campaign -> persisted_orders after it."""
        ...

    async def save_campaign(self, campaign_id: str, definition: str) -> None:
        """Keep a campaign's definition (JSON), so ``recover`` can rebuild a lost campaign."""
        ...

    async def campaign_definition(self, campaign_id: str) -> str | None: ...

    async def progress(self) -> dict[str, int]:
        """Every campaign's persisted_orders."""
        ...

    async def snapshot(self, campaign_id: str, *, orders: bool = True) -> LedgerSnapshot:
        """The campaign's whole history and orders, as of one commit (``orders=False``: the
        orders are only counted, into ``order_rows``)."""
        ...

    async def order_check(self, campaign_id: str) -> OrderCheck:
        """``orders`` against the confirmed events, compared by the database in one read
        transaction: only the disagreeing rows reach Python."""
        ...

    async def history_by_user(self, campaign_id: str, upto: str, page: int, each: Page) -> None:
        """The campaign's events up to stream entry ``upto`` (inclusive), ordered by user,
        reservation, then stream order (user and reservation ids compared by code point), handed
        to ``each`` ``page`` events at a time (awaited before the next page is read): one read of
        one snapshot, of which Python holds one page."""
        ...

    async def last_entry(self, campaign_id: str) -> str | None:
        """The highest stream entry id the ledger holds for the campaign."""
        ...

    async def holders(self, campaign_id: str) -> list[Holder]:
        """The holder register, ordered by user then product."""
        ...

    async def schema_version(self) -> int: ...
