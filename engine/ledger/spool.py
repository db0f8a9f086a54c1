"""Scratch SQLite files that keep reconcile and recover flat: the undrained stream, and the
units per buyer signal.

Reconcile and recover merge the stream's entries with the ledger's history read ordered by user
(``engine.ledger.history.by_user``). The stream may hold many entries (a writer that stopped, or
the events of the holds ``recover`` just dropped), so they are not kept in Python: each page of
``XRANGE`` goes into a temporary file, which gives them back in (user, reservation, stream)
order, a page at a time. The file goes when the spool is closed.

The buyers hash (units per ``i|IDENTITY``, ``d|DEVICE``, ``n|NETWORK``) cannot be compared or
rebuilt a page of users at a time: one signal spans users (a person's several accounts, a
network's many people). ``SignalUnits`` sums each page's units per signal into a scratch file
and gives the totals back a page at a time, in field order.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from engine import keys
from engine.core.redis_client import Client
from engine.events import Event, MalformedEvent, decode
from engine.ledger.redisview import NO_STREAM, PAGE, stream_pages
from engine.ledger.rows import EVENT_COLUMNS, event_of_row, event_row

_COLUMNS = ", ".join(EVENT_COLUMNS)
_ORDER = "user_id, reservation_id, entry_ms, entry_seq"


class _Scratch:
    """A SQLite file in a temporary directory, gone when closed. Use as a context manager."""

    def __init__(self, name: str, table: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=f"flashsale-{name}-")
        self._db = sqlite3.connect(Path(self._dir.name) / f"{name}.db")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")  # scratch: nothing to keep after a crash
        self._db.execute(table)

    def _rows(self, sql: str, page: int) -> Iterator[list[Any]]:
        cur = self._db.execute(sql)
        try:
            while rows := cur.fetchmany(page):
                yield rows
        finally:
            cur.close()

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class StreamSpool(_Scratch):
    """Stream entries up to an id, on disk; ``events()`` reads them back in (user, reservation,
    stream) order. Use as a context manager."""

    def __init__(self) -> None:
        super().__init__("stream", f"CREATE TABLE events ({_COLUMNS}, PRIMARY KEY ({_ORDER})) WITHOUT ROWID")
        self.count = 0  # events spooled
        self.malformed: list[str] = []  # ids of entries that are not events

    async def fill(self, redis: Client, campaign_id: str, upto: str, page: int = PAGE) -> None:
        """The campaign's stream entries up to ``upto`` (inclusive), ``page`` per XRANGE call."""
        if upto == NO_STREAM:
            return
        async for chunk in stream_pages(redis, keys.CampaignKeys(campaign_id).events, upto, page):
            rows = []
            for eid, fields in chunk:
                try:
                    rows.append(event_row(decode(campaign_id, eid, fields)))
                except MalformedEvent:
                    self.malformed.append(eid.decode(errors="replace") if isinstance(eid, bytes) else str(eid))
            cur = self._db.executemany(
                f"INSERT OR IGNORE INTO events VALUES ({', '.join('?' * len(EVENT_COLUMNS))})", rows)
            self.count += cur.rowcount

    def events(self, page: int = PAGE) -> Iterator[Event]:
        """Every event spooled, in (user, reservation, stream) order, read ``page`` rows at a time."""
        for rows in self._rows(f"SELECT {_COLUMNS} FROM events ORDER BY {_ORDER}", page):
            yield from (event_of_row(r) for r in rows)


class SignalUnits(_Scratch):
    """Units per buyer signal (buyers hash field -> units), summed on disk over pages of whole
    users (``add``), beside what Redis's buyers hash holds (``seen``, for reconcile)."""

    def __init__(self) -> None:
        super().__init__("signals", "CREATE TABLE s (field TEXT PRIMARY KEY, history INTEGER NOT NULL DEFAULT 0, "
                                    "redis INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")

    def add(self, units: Mapping[str, int]) -> None:
        """A page's units per signal, added to the totals."""
        self._db.executemany("INSERT INTO s (field, history) VALUES (?, ?) "
                             "ON CONFLICT (field) DO UPDATE SET history = history + excluded.history", units.items())

    def seen(self, chunk: Mapping[bytes, bytes]) -> None:
        """A page of Redis's buyers hash (a field seen twice is the same value)."""
        self._db.executemany("INSERT INTO s (field, redis) VALUES (?, ?) "
                             "ON CONFLICT (field) DO UPDATE SET redis = excluded.redis",
                             [(f.decode(), int(v)) for f, v in chunk.items()])

    def totals(self, page: int = PAGE) -> Iterator[dict[str, int]]:
        """The signals' totals, not 0, in field order, ``page`` at a time."""
        for rows in self._rows("SELECT field, history FROM s WHERE history != 0 ORDER BY field", page):
            yield dict(rows)

    def differing(self, page: int = PAGE) -> Iterator[tuple[str, int, int]]:
        """(field, Redis's units, the history's) of each signal where they differ, in field order."""
        for rows in self._rows("SELECT field, redis, history FROM s WHERE redis != history ORDER BY field", page):
            yield from rows
