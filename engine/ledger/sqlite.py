"""The embedded ledger: SQLite (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``.

A commit is on disk when ``write`` returns. sqlite3 blocks, so every call runs on one thread of
the sink's own (the connection never changes threads). Several writer processes may share the
file: ``BEGIN IMMEDIATE`` takes the write lock up front, and a lock held longer than
``BUSY_TIMEOUT_MS`` is reported as ``LedgerUnavailable`` (the writer retries the batch).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from engine.campaign import ms_to_rfc3339
from engine.errors import LedgerError
from engine.ledger import schema
from engine.ledger.rows import (
    EVENT_COLUMNS,
    ORDER_COLUMNS,
    EventRow,
    by_campaign,
    event_of_row,
    history_by_user_sql,
    order_of_row,
    order_rows,
)
from engine.ledger.sink import (
    Holder,
    LedgerSnapshot,
    LedgerUnavailable,
    OrderCheck,
    Page,
    RowRejected,
    entry_key,
    order_check_of,
    order_check_sql,
)

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000  # how long a writer waits for another's write lock before retrying

_INSERT_EVENT = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) "
                 "ON CONFLICT DO NOTHING")
_INSERT_ORDER = (f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}) VALUES ({', '.join('?' * len(ORDER_COLUMNS))}) "
                 "ON CONFLICT DO NOTHING")
_BUMP = ("INSERT INTO ledger_progress (campaign_id, persisted_orders, persisted_events) VALUES (?, ?, ?) "
         "ON CONFLICT (campaign_id) DO UPDATE SET "
         "persisted_orders = persisted_orders + excluded.persisted_orders, "
         "persisted_events = persisted_events + excluded.persisted_events RETURNING persisted_orders")


def path_of(url: str) -> str:
    """``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (the SQLAlchemy convention)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a SQLite URL: {url!r}; use sqlite:///relative.db or sqlite:////abs/path.db")
    return url[len("sqlite:///"):]


class SqliteSink:
    url_scheme = "sqlite"
    concurrency = 1  # one writer at a time holds SQLite's write lock: nothing to gain from more

    def __init__(self, url: str) -> None:
        self.path = path_of(url)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                self._conn = self._connect()
            try:
                return fn(self._conn)
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except sqlite3.OperationalError as exc:
            raise LedgerUnavailable(f"SQLite ledger {self.path}: {exc}; retrying") from exc
        except (sqlite3.IntegrityError, OverflowError, sqlite3.DataError) as exc:
            raise RowRejected(f"SQLite ledger {self.path} refused a row: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # e.g. a file that is no SQLite database: retrying is futile
            raise LedgerError(f"SQLite ledger {self.path}: {exc}; check --database-url or "
                              "FLASHSALE_DATABASE_URL") from exc

    def _connect(self) -> sqlite3.Connection:
        parent = Path(self.path).parent
        if not parent.is_dir():  # never made here: a typo in the URL must not grow a directory tree
            raise LedgerError(f"SQLite ledger {self.path}: the directory {parent} does not exist; "
                              "create it or fix --database-url / FLASHSALE_DATABASE_URL")
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
        _wal(conn)
        conn.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut, not just a crash
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    async def open(self, *, readonly: bool = False) -> int:
        if not readonly:
            return await self._run(_migrate)
        if not await asyncio.to_thread(Path(self.path).is_file):  # reading never creates the file
            raise LedgerError(f"SQLite ledger {self.path} does not exist: check --database-url or "
                              "FLASHSALE_DATABASE_URL (`flashsale writer` creates it)")
        return schema.readable(await self._run(_current), f"SQLite ledger {self.path}")

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            await self._run(shut)
        self._pool.shutdown(wait=True)

    async def schema_version(self) -> int:
        return await self._run(lambda c: int(c.execute(schema.CURRENT_VERSION_SQL).fetchone()[0]))

    async def write(self, rows: Sequence[EventRow]) -> dict[str, int]:
        groups = by_campaign(rows)
        return await self._run(lambda c: _write(c, groups))

    async def save_campaign(self, campaign_id: str, definition: str) -> None:
        def save(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO campaigns (campaign_id, definition) VALUES (?, ?) ON CONFLICT (campaign_id) "
                      "DO UPDATE SET definition = excluded.definition, "
                      "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                      "WHERE campaigns.definition <> excluded.definition", (campaign_id, definition))

        await self._run(save)

    async def campaign_definition(self, campaign_id: str) -> str | None:
        def get(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT definition FROM campaigns WHERE campaign_id = ?", (campaign_id,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(get)

    async def progress(self) -> dict[str, int]:
        def get(c: sqlite3.Connection) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in c.execute("SELECT campaign_id, persisted_orders FROM ledger_progress")}

        return await self._run(get)

    async def snapshot(self, campaign_id: str, *, orders: bool = True) -> LedgerSnapshot:
        return await self._run(lambda c: _snapshot(c, campaign_id, orders))

    async def order_check(self, campaign_id: str) -> OrderCheck:
        return await self._run(lambda c: _order_check(c, campaign_id))

    async def history_by_user(self, campaign_id: str, upto: str, page: int, each: Page) -> None:
        # a statement being stepped reads one snapshot (autocommit: no transaction to keep open)
        ms, seq = entry_key(upto)
        cur = await self._run(lambda c: c.execute(history_by_user_sql("?"), (campaign_id, ms, ms, seq)))
        try:
            while rows := await self._run(lambda c: cur.fetchmany(page)):
                await each([event_of_row(r) for r in rows])
        finally:
            await self._run(lambda c: cur.close())

    async def last_entry(self, campaign_id: str) -> str | None:
        def get(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT entry_ms, entry_seq FROM events WHERE campaign_id = ? "
                            "ORDER BY entry_ms DESC, entry_seq DESC LIMIT 1", (campaign_id,)).fetchone()
            return None if row is None else f"{row[0]}-{row[1]}"

        return await self._run(get)

    async def holders(self, campaign_id: str) -> list[Holder]:
        def get(c: sqlite3.Connection) -> list[Holder]:
            rows = c.execute("SELECT user_id, product_id, SUM(units), SUM(amount) FROM orders WHERE campaign_id = ? "
                             "GROUP BY user_id, product_id ORDER BY user_id, product_id", (campaign_id,))
            return [Holder(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

        return await self._run(get)


def _current(c: sqlite3.Connection) -> int:
    if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone() is None:
        return 0
    return int(c.execute(schema.CURRENT_VERSION_SQL).fetchone()[0])


def _wal(conn: sqlite3.Connection) -> None:
    """Switch a new file to WAL. SQLite answers "database is locked" at once, without its busy
    handler, to a connection that asks while another makes the same switch (several writers
    starting together on a fresh ledger): ask again, for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _migrate(c: sqlite3.Connection) -> int:
    found = _current(c)  # a read: no need to wait for a writer busy with a batch
    if not schema.pending("sqlite", found):
        return found
    c.execute("BEGIN IMMEDIATE")  # one migrator at a time; the others wait, then find nothing to do
    c.execute(schema.VERSION_TABLE["sqlite"])
    found = int(c.execute(schema.CURRENT_VERSION_SQL).fetchone()[0])
    todo = schema.pending("sqlite", found)
    for version, statements in todo:
        for sql in statements:
            c.execute(sql)
        c.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    c.execute("COMMIT")
    return todo[-1][0] if todo else found


def _write(c: sqlite3.Connection, groups: dict[str, list[EventRow]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    c.execute("BEGIN IMMEDIATE")
    for cid, rows in groups.items():
        new_events = c.executemany(_INSERT_EVENT, rows).rowcount
        orders = order_rows(rows, ms_to_rfc3339)
        new_orders = c.executemany(_INSERT_ORDER, orders).rowcount if orders else 0
        totals[cid] = int(c.execute(_BUMP, (cid, new_orders, new_events)).fetchone()[0])
    c.execute("COMMIT")
    return totals


def _snapshot(c: sqlite3.Connection, campaign_id: str, with_orders: bool) -> LedgerSnapshot:
    c.execute("BEGIN")  # one read transaction: events and orders as of the same commit
    events = tuple(event_of_row(r) for r in c.execute(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE campaign_id = ? ORDER BY entry_ms, entry_seq",
        (campaign_id,)))
    orders = tuple(order_of_row(r) for r in c.execute(
        f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE campaign_id = ?", (campaign_id,))) if with_orders else ()
    count = int(c.execute("SELECT COUNT(*) FROM orders WHERE campaign_id = ?", (campaign_id,)).fetchone()[0])
    persisted = _persisted(c, campaign_id)
    c.execute("COMMIT")
    return LedgerSnapshot(events, orders, persisted, count)


def _persisted(c: sqlite3.Connection, campaign_id: str) -> int:
    row = c.execute("SELECT persisted_orders FROM ledger_progress WHERE campaign_id = ?", (campaign_id,)).fetchone()
    return int(row[0]) if row else 0


def _order_check(c: sqlite3.Connection, campaign_id: str) -> OrderCheck:
    confirmed_sql, extra_sql = order_check_sql("?")
    c.execute("BEGIN")  # one read transaction: orders and events as of the same commit
    confirmed = c.execute(confirmed_sql, (campaign_id,)).fetchall()
    extra = c.execute(extra_sql, (campaign_id,) * 3).fetchall()
    count = int(c.execute("SELECT COUNT(*) FROM orders WHERE campaign_id = ?", (campaign_id,)).fetchone()[0])
    persisted = _persisted(c, campaign_id)
    c.execute("COMMIT")
    return order_check_of(confirmed, extra, count, persisted)
