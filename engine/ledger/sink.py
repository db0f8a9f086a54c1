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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

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
    orders: tuple[Order, ...]
    persisted_orders: int


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

    async def snapshot(self, campaign_id: str) -> LedgerSnapshot:
        """The campaign's whole history and orders, as of one commit."""
        ...

    async def last_entry(self, campaign_id: str) -> str | None:
        """The highest stream entry id the ledger holds for the campaign."""
        ...

    async def holders(self, campaign_id: str) -> list[Holder]:
        """The holder register, ordered by user then product."""
        ...

    async def schema_version(self) -> int: ...
