"""A campaign's undrained stream, set aside in a scratch SQLite file and read back by user.

Reconcile and recover merge the stream's entries with the ledger's history read ordered by user
(``engine.ledger.history.by_user``). The stream may hold many entries (a writer that stopped, or
the events of the holds ``recover`` just dropped), so they are not kept in Python: each page of
``XRANGE`` goes into a temporary file, which gives them back in (user, reservation, stream)
order, a page at a time. The file goes when the spool is closed.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import redis.asyncio as aioredis

from engine import keys
from engine.events import Event, MalformedEvent, decode
from engine.ledger.redisview import NO_STREAM, PAGE, stream_pages
from engine.ledger.rows import EVENT_COLUMNS, event_of_row, event_row

_COLUMNS = ", ".join(EVENT_COLUMNS)
_ORDER = "user_id, reservation_id, entry_ms, entry_seq"


class StreamSpool:
    """Stream entries up to an id, on disk; ``events()`` reads them back in (user, reservation,
    stream) order. Use as a context manager."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="flashsale-stream-")
        self._db = sqlite3.connect(Path(self._dir.name) / "stream.db")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")  # scratch: nothing to keep after a crash
        self._db.execute(f"CREATE TABLE events ({_COLUMNS}, PRIMARY KEY ({_ORDER})) WITHOUT ROWID")
        self.count = 0  # events spooled
        self.malformed: list[str] = []  # ids of entries that are not events

    async def fill(self, redis: aioredis.Redis, campaign_id: str, upto: str, page: int = PAGE) -> None:
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
        cur = self._db.execute(f"SELECT {_COLUMNS} FROM events ORDER BY {_ORDER}")
        try:
            while rows := cur.fetchmany(page):
                yield from (event_of_row(r) for r in rows)
        finally:
            cur.close()

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> StreamSpool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
