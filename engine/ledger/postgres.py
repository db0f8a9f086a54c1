"""The PostgreSQL ledger, through asyncpg, with ``synchronous_commit = on``.

A batch is one transaction: its events go in by ``COPY`` (the fastest way in: in text format
straight from the stream's bytes when the writer could make every row a plain line,
``engine.ledger.copytext``; else the binary ``COPY`` of the rows); then one
statement makes the orders of the confirmed events among them from the rows just stored
(``INSERT … SELECT … ON CONFLICT DO NOTHING``), counts those it inserted and adds them to
``ledger_progress``; then COMMIT. If an event is already there — a batch redelivered after a
writer died between commit and acknowledgement — ``COPY`` fails on the primary key, the
transaction rolls back, and the events go in by ``INSERT … SELECT FROM unnest(…) ON CONFLICT
DO NOTHING`` instead, which skips what is stored. Either way each event and each order is stored
once, and ``persisted_orders`` grows by the orders actually inserted, in the same transaction.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from engine.ledger import schema
from engine.ledger.copytext import COPY_COLUMNS, EventRows
from engine.ledger.rows import (
    EVENT_COLUMNS,
    ORDER_COLUMNS,
    EventRow,
    event_of_row,
    history_by_user_sql,
    order_of_row,
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

MIGRATION_LOCK = 0x666C_6564  # pg_advisory_xact_lock key: one migrator at a time
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 60.0  # a statement hung longer than this counts as the database being away
CONNECTIONS = 2  # batches committing at once: one encodes and sends while the other's server works
SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "flashsale-ledger"}

_EVENT_TYPES = ("text", "int8", "int8", "text", "text", "text", "text", "int8", "int8", "int8", "text", "int8",
                "text", "text", "text", "text", "text")


def _unnest_insert(table: str, columns: Sequence[str], types: Sequence[str]) -> str:
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    return (f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
            "ON CONFLICT DO NOTHING RETURNING campaign_id")


_INSERT_EVENTS = _unnest_insert("events", EVENT_COLUMNS, _EVENT_TYPES)
# The orders of a batch, made from its events just stored, and the progress they make, in one
# statement: $1…$3 name the batch's confirmed events by primary key (campaign, entry ms, seq);
# their orders not stored yet are inserted and counted per campaign; each campaign of the batch
# ($4, with $5 the events it stored) gets them added to ledger_progress; persisted_orders returned.
# Each key is looked up in the primary key (a LATERAL subquery with LIMIT 1: a plan per key that
# no table size can turn into a join): given a plain join, PostgreSQL chose to scan all of
# ``events`` for every batch while the ledger was young, and kept doing so as it grew (6 M rows
# read in 10 s of a steady 4,000 orders/s; ``tests/ledger/test_copytext.py`` replays that growth).
_ORDERS_AND_PROGRESS = f"""
WITH new AS (
  INSERT INTO orders ({", ".join(ORDER_COLUMNS)})
  SELECT e.reservation_id, e.campaign_id, e.product_id, e.user_id, e.units, e.amount,
         coalesce(e.payment_ref, ''), 'epoch'::timestamptz + e.at_ms * interval '1 millisecond'
  FROM unnest($1::text[], $2::int8[], $3::int8[]) AS k(campaign_id, entry_ms, entry_seq)
  CROSS JOIN LATERAL (
    SELECT * FROM events
    WHERE events.campaign_id = k.campaign_id AND events.entry_ms = k.entry_ms AND events.entry_seq = k.entry_seq
    LIMIT 1) e
  ON CONFLICT DO NOTHING
  RETURNING campaign_id
)
INSERT INTO ledger_progress (campaign_id, persisted_orders, persisted_events)
SELECT b.campaign_id, (SELECT count(*) FROM new WHERE new.campaign_id = b.campaign_id), b.events
FROM unnest($4::text[], $5::int8[]) AS b(campaign_id, events) ORDER BY b.campaign_id
ON CONFLICT (campaign_id) DO UPDATE SET
  persisted_orders = ledger_progress.persisted_orders + excluded.persisted_orders,
  persisted_events = ledger_progress.persisted_events + excluded.persisted_events
RETURNING campaign_id, persisted_orders"""
# Errors that say the server is away or busy, not that the data is wrong: retry the batch.
_UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                asyncpg.InvalidCatalogNameError,  # the database is not there (yet)
                asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.TransactionRollbackError,
                asyncpg.InterfaceError, OSError, TimeoutError)
_REJECTED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, OverflowError)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _keys(confirmed: Mapping[str, list[bytes]]) -> list[list[Any]]:
    """The primary keys of confirmed events (campaign -> stream entry ids) as three arrays:
    campaigns, entry ms, entry seqs."""
    cids: list[str] = []
    ms: list[int] = []
    seqs: list[int] = []
    for cid, ids in confirmed.items():
        for eid in ids:
            m, _, q = eid.partition(b"-")
            cids.append(cid)
            ms.append(int(m))
            seqs.append(int(q))
    return [cids, ms, seqs]


class PostgresSink:
    url_scheme = "postgresql"
    concurrency = CONNECTIONS

    def __init__(self, url: str) -> None:
        self.url = url
        # each call takes a connection (None: make one) and gives it back (None: it broke)
        self._idle: asyncio.Queue[asyncpg.Connection | None] = asyncio.Queue()
        for _ in range(CONNECTIONS):
            self._idle.put_nowait(None)
        self._open: set[asyncpg.Connection] = set()

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(
            self.url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S,
            server_settings=SERVER_SETTINGS)
        self._open.add(conn)
        return conn

    async def _call(self, what: str, fn: Any) -> Any:
        """Run ``fn(conn)`` on a connection of its own; map errors to LedgerUnavailable (retry)
        or RowRejected (futile)."""
        conn = await self._idle.get()
        try:
            if conn is None or conn.is_closed():
                conn = await self._connect()
            return await fn(conn)
        except _REJECTED as exc:
            raise RowRejected(f"PostgreSQL refused a row while {what}: {exc}") from exc
        except _UNAVAILABLE as exc:
            conn = self._drop(conn)
            raise LedgerUnavailable(f"PostgreSQL unavailable while {what}: {exc.__class__.__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            conn = self._drop(conn)
            raise LedgerUnavailable(f"PostgreSQL error while {what}: {exc.__class__.__name__}: {exc}") from exc
        except BaseException:
            conn = self._drop(conn)  # cancelled mid-statement: the connection is in doubt
            raise
        finally:
            self._idle.put_nowait(conn)

    def _drop(self, conn: asyncpg.Connection | None) -> asyncpg.Connection | None:
        """Close a connection that failed; returns None, its place in the idle queue."""
        if conn is not None:
            self._open.discard(conn)
            conn.terminate()
        return None

    async def open(self, *, readonly: bool = False) -> int:
        if readonly:  # reading never creates or migrates the schema
            async def current(conn: asyncpg.Connection) -> int:
                if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
                    return 0
                return int(await conn.fetchval(schema.CURRENT_VERSION_SQL))

            found: int = await self._call("reading the schema version", current)
            return schema.readable(found, "the PostgreSQL database")

        async def migrate(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(schema.VERSION_TABLE["postgres"])
                found = int(await conn.fetchval(schema.CURRENT_VERSION_SQL))
                todo = schema.pending("postgres", found)
                for version, statements in todo:
                    for sql in statements:
                        await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            return todo[-1][0] if todo else found

        result: int = await self._call("creating the schema", migrate)
        return result

    async def close(self) -> None:
        for conn in list(self._open):
            self._open.discard(conn)
            if not conn.is_closed():
                await conn.close()

    async def schema_version(self) -> int:
        async def get(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(schema.CURRENT_VERSION_SQL))

        result: int = await self._call("reading the schema version", get)
        return result

    async def write(self, rows: Sequence[EventRow]) -> dict[str, int]:
        """COPY in text straight from the stream's bytes (``EventRows`` of no odd row), else the
        binary COPY of the rows; a redelivery (some row stored already) goes by INSERT … ON CONFLICT."""
        if isinstance(rows, EventRows):
            text, events, keys = rows.copy_text(), rows.events, _keys(rows.confirmed)
        else:
            done = [r for r in rows if r[3] == "confirmed"]
            text, events = None, Counter(r[0] for r in rows)
            keys = [[r[0] for r in done], [r[1] for r in done], [r[2] for r in done]]
        cids = sorted(events)  # writers touching several campaigns lock them in one order

        async def orders_and_progress(conn: asyncpg.Connection, stored: Mapping[str, int]) -> dict[str, int]:
            got = await conn.fetch(_ORDERS_AND_PROGRESS, *keys, cids, [stored.get(c, 0) for c in cids])
            return {r[0]: int(r[1]) for r in got}

        async def write(conn: asyncpg.Connection) -> dict[str, int]:
            try:
                async with conn.transaction():
                    if text is not None:  # a memoryview: asyncpg would take bytes for a file name
                        await conn.copy_to_table("events", source=memoryview(text), columns=COPY_COLUMNS,
                                                 format="text")
                    else:
                        await conn.copy_records_to_table("events", records=rows, columns=EVENT_COLUMNS)
                    return await orders_and_progress(conn, events)
            except asyncpg.UniqueViolationError:  # some of the batch is stored already: skip it
                async with conn.transaction():
                    new_events = await conn.fetch(_INSERT_EVENTS, *_columns(list(rows), len(EVENT_COLUMNS)))
                    return await orders_and_progress(conn, Counter(r[0] for r in new_events))

        result: dict[str, int] = await self._call("writing a batch", write)
        return result

    async def save_campaign(self, campaign_id: str, definition: str) -> None:
        orjson.loads(definition)  # refuse anything but JSON before it reaches jsonb

        async def save(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO campaigns (campaign_id, definition) VALUES ($1, $2::jsonb) ON CONFLICT (campaign_id) "
                "DO UPDATE SET definition = excluded.definition, updated_at = now() "
                "WHERE campaigns.definition IS DISTINCT FROM excluded.definition", campaign_id, definition)

        await self._call("saving a campaign definition", save)

    async def campaign_definition(self, campaign_id: str) -> str | None:
        async def get(conn: asyncpg.Connection) -> str | None:
            raw = await conn.fetchval("SELECT definition::text FROM campaigns WHERE campaign_id = $1", campaign_id)
            return None if raw is None else str(raw)

        result: str | None = await self._call("reading a campaign definition", get)
        return result

    async def progress(self) -> dict[str, int]:
        async def get(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch("SELECT campaign_id, persisted_orders FROM ledger_progress")
            return {r[0]: int(r[1]) for r in rows}

        result: dict[str, int] = await self._call("reading progress", get)
        return result

    async def history_by_user(self, campaign_id: str, upto: str, page: int, each: Page) -> None:
        ms, seq = entry_key(upto)

        async def read(conn: asyncpg.Connection) -> None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                cursor = await conn.cursor(history_by_user_sql("${}", ' COLLATE "C"'), campaign_id, ms, seq)
                while rows := await cursor.fetch(page):
                    await each([event_of_row(r) for r in rows])

        await self._call("reading the ledger", read)

    async def last_entry(self, campaign_id: str) -> str | None:
        async def get(conn: asyncpg.Connection) -> str | None:
            row = await conn.fetchrow("SELECT entry_ms, entry_seq FROM events WHERE campaign_id = $1 "
                                      "ORDER BY entry_ms DESC, entry_seq DESC LIMIT 1", campaign_id)
            return None if row is None else f"{row[0]}-{row[1]}"

        result: str | None = await self._call("reading the ledger", get)
        return result

    async def snapshot(self, campaign_id: str, *, orders: bool = True) -> LedgerSnapshot:
        async def get(conn: asyncpg.Connection) -> LedgerSnapshot:
            sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE campaign_id = $1 ORDER BY entry_ms, entry_seq"
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                events = await conn.fetch(sql, campaign_id)
                rows = await conn.fetch(f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE campaign_id = $1",
                                        campaign_id) if orders else []
                count = await conn.fetchval("SELECT COUNT(*) FROM orders WHERE campaign_id = $1", campaign_id)
                persisted = await conn.fetchval(
                    "SELECT persisted_orders FROM ledger_progress WHERE campaign_id = $1", campaign_id)
            return LedgerSnapshot(tuple(event_of_row(r) for r in events), tuple(order_of_row(r) for r in rows),
                                  int(persisted or 0), int(count))

        result: LedgerSnapshot = await self._call("reading the ledger", get)
        return result

    async def order_check(self, campaign_id: str) -> OrderCheck:
        async def get(conn: asyncpg.Connection) -> OrderCheck:
            confirmed_sql, extra_sql = order_check_sql("$1", ' COLLATE "C"')
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                confirmed = await conn.fetch(confirmed_sql, campaign_id)
                extra = await conn.fetch(extra_sql, campaign_id)
                count = await conn.fetchval("SELECT COUNT(*) FROM orders WHERE campaign_id = $1", campaign_id)
                persisted = await conn.fetchval(
                    "SELECT persisted_orders FROM ledger_progress WHERE campaign_id = $1", campaign_id)
            return order_check_of(confirmed, extra, int(count), int(persisted or 0))

        result: OrderCheck = await self._call("checking the ledger's orders", get)
        return result

    async def holders(self, campaign_id: str) -> list[Holder]:
        async def get(conn: asyncpg.Connection) -> list[Holder]:
            rows = await conn.fetch(
                "SELECT user_id, product_id, SUM(units), SUM(amount) FROM orders WHERE campaign_id = $1 "
                "GROUP BY user_id, product_id ORDER BY user_id COLLATE \"C\", product_id COLLATE \"C\"", campaign_id)
            return [Holder(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

        result: list[Holder] = await self._call("reading the holder register", get)
        return result

