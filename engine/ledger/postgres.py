"""The PostgreSQL ledger, through asyncpg, with ``synchronous_commit = on``.

A batch is written optimistically with ``COPY`` (the fastest way in), events then orders, in one
transaction. If any row is already there — a batch redelivered after a writer died between
commit and acknowledgement — ``COPY`` fails on the primary key, the transaction rolls back, and
the batch is written again with ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING``, which
skips what is stored. Either way each event and each order is stored once, and the campaign's
``persisted_orders`` grows by the orders actually inserted, in the same transaction.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from engine.ledger import schema
from engine.ledger.rows import (
    EVENT_COLUMNS,
    ORDER_COLUMNS,
    EventRow,
    event_of_row,
    order_of_row,
    order_rows,
    utc,
)
from engine.ledger.sink import Holder, LedgerSnapshot, LedgerUnavailable, RowRejected

MIGRATION_LOCK = 0x666C_6564  # pg_advisory_xact_lock key: one migrator at a time
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 60.0  # a statement hung longer than this counts as the database being away

_EVENT_TYPES = ("text", "int8", "int8", "text", "text", "text", "text", "int8", "int8", "int8", "text", "int8",
                "text")
_ORDER_TYPES = ("text", "text", "text", "text", "int8", "int8", "text", "timestamptz")


def _unnest_insert(table: str, columns: Sequence[str], types: Sequence[str]) -> str:
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    return (f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
            "ON CONFLICT DO NOTHING RETURNING campaign_id")


_INSERT_EVENTS = _unnest_insert("events", EVENT_COLUMNS, _EVENT_TYPES)
_INSERT_ORDERS = _unnest_insert("orders", ORDER_COLUMNS, _ORDER_TYPES)
_BUMP = ("INSERT INTO ledger_progress (campaign_id, persisted_orders, persisted_events) "
         "SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]) ON CONFLICT (campaign_id) DO UPDATE SET "
         "persisted_orders = ledger_progress.persisted_orders + excluded.persisted_orders, "
         "persisted_events = ledger_progress.persisted_events + excluded.persisted_events "
         "RETURNING campaign_id, persisted_orders")
# Errors that say the server is away or busy, not that the data is wrong: retry the batch.
_UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.TransactionRollbackError,
                asyncpg.InterfaceError, OSError, TimeoutError)
_REJECTED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, OverflowError)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class PostgresSink:
    url_scheme = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one connection, one operation at a time (the writer's tasks share it)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S,
                server_settings={"synchronous_commit": "on", "application_name": "flashsale-ledger"})
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _call(self, what: str, fn: Any) -> Any:
        """Run ``fn(conn)``; map errors to LedgerUnavailable (retry) or RowRejected (futile)."""
        async with self._lock:
            return await self._call_locked(what, fn)

    async def _call_locked(self, what: str, fn: Any) -> Any:
        try:
            return await fn(await self._connection())
        except _REJECTED as exc:
            raise RowRejected(f"PostgreSQL refused a row while {what}: {exc}") from exc
        except _UNAVAILABLE as exc:
            await self._drop()
            raise LedgerUnavailable(f"PostgreSQL unavailable while {what}: {exc.__class__.__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            await self._drop()
            raise LedgerUnavailable(f"PostgreSQL error while {what}: {exc.__class__.__name__}: {exc}") from exc

    async def open(self) -> int:
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
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close()

    async def schema_version(self) -> int:
        async def get(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(schema.CURRENT_VERSION_SQL))

        result: int = await self._call("reading the schema version", get)
        return result

    async def write(self, rows: Sequence[EventRow]) -> dict[str, int]:
        cids = sorted({r[0] for r in rows})  # writers touching several campaigns lock them in one order
        orders = order_rows(rows, utc)

        async def copy(conn: asyncpg.Connection) -> dict[str, int]:
            async with conn.transaction():
                await conn.copy_records_to_table("events", records=rows, columns=EVENT_COLUMNS)
                if orders:
                    await conn.copy_records_to_table("orders", records=orders, columns=ORDER_COLUMNS)
                return await _bump(conn, cids, Counter(o[1] for o in orders), Counter(r[0] for r in rows))

        async def upsert(conn: asyncpg.Connection) -> dict[str, int]:
            async with conn.transaction():
                new_events = await conn.fetch(_INSERT_EVENTS, *_columns(rows, len(EVENT_COLUMNS)))
                new_orders = await conn.fetch(_INSERT_ORDERS, *_columns(orders, len(ORDER_COLUMNS))) if orders else []
                return await _bump(conn, cids, Counter(r[0] for r in new_orders), Counter(r[0] for r in new_events))

        async def write(conn: asyncpg.Connection) -> dict[str, int]:
            try:
                return await copy(conn)
            except asyncpg.UniqueViolationError:  # some of the batch is stored already: skip it
                return await upsert(conn)

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

    async def last_entry(self, campaign_id: str) -> str | None:
        async def get(conn: asyncpg.Connection) -> str | None:
            row = await conn.fetchrow("SELECT entry_ms, entry_seq FROM events WHERE campaign_id = $1 "
                                      "ORDER BY entry_ms DESC, entry_seq DESC LIMIT 1", campaign_id)
            return None if row is None else f"{row[0]}-{row[1]}"

        result: str | None = await self._call("reading the ledger", get)
        return result

    async def snapshot(self, campaign_id: str) -> LedgerSnapshot:
        async def get(conn: asyncpg.Connection) -> LedgerSnapshot:
            sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE campaign_id = $1 ORDER BY entry_ms, entry_seq"
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                events = await conn.fetch(sql, campaign_id)
                orders = await conn.fetch(
                    f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE campaign_id = $1", campaign_id)
                persisted = await conn.fetchval(
                    "SELECT persisted_orders FROM ledger_progress WHERE campaign_id = $1", campaign_id)
            return LedgerSnapshot(tuple(event_of_row(r) for r in events), tuple(order_of_row(r) for r in orders),
                                  int(persisted or 0))

        result: LedgerSnapshot = await self._call("reading the ledger", get)
        return result

    async def holders(self, campaign_id: str) -> list[Holder]:
        async def get(conn: asyncpg.Connection) -> list[Holder]:
            rows = await conn.fetch(
                "SELECT user_id, product_id, SUM(units), SUM(amount) FROM orders WHERE campaign_id = $1 "
                "GROUP BY user_id, product_id ORDER BY user_id COLLATE \"C\", product_id COLLATE \"C\"", campaign_id)
            return [Holder(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

        result: list[Holder] = await self._call("reading the holder register", get)
        return result


async def _bump(conn: asyncpg.Connection, cids: list[str], new_orders: Counter[str],
                new_events: Counter[str]) -> dict[str, int]:
    rows = await conn.fetch(_BUMP, cids, [new_orders[c] for c in cids], [new_events[c] for c in cids])
    return {r[0]: int(r[1]) for r in rows}
