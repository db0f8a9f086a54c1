"""The ledger's schema, versioned: each migration brings a database from version N-1 to N.

``schema_version`` holds one row per migration applied. A sink opens the database, reads the
highest version, refuses a newer one than it knows (``SchemaTooNew``), and applies the missing
migrations in one transaction, under a lock, so several writers starting at once are safe.

The tables (the same in both dialects, apart from types):

| table | key | what |
|---|---|---|
| ``orders`` | ``reservation_id`` | one row per confirmed order (docs/API.md): what settlement reads |
| ``events`` | ``(campaign_id, entry_ms, entry_seq)`` | every transition, append-only, keyed by stream entry id |
| ``campaigns`` | ``campaign_id`` | each campaign's definition (JSON), for ``flashsale recover`` |
| ``ledger_progress`` | ``campaign_id`` | orders and events persisted so far (the lag's other half) |

Version 2 adds ``events.idempotency_key``: the Idempotency-Key of a ``reserved`` event, from which
``flashsale recover`` rebuilds the idempotency hash. Rows stored under version 1 keep NULL there.
Version 3 adds ``events.buyer_identity``, ``buyer_device``, ``buyer_network``: the buyer signals a
``reserved`` event's campaign caps counted (NULL before, and without buyer caps).
"""

from __future__ import annotations

from typing import Literal

from engine.errors import LedgerError, SchemaTooNew

Dialect = Literal["postgres", "sqlite"]

_POSTGRES_V1 = [
    """CREATE TABLE orders (
        reservation_id text PRIMARY KEY,
        campaign_id text NOT NULL,
        product_id text NOT NULL,
        user_id text NOT NULL,
        units bigint NOT NULL CHECK (units > 0),
        amount bigint NOT NULL CHECK (amount >= 0),
        payment_ref text NOT NULL,
        confirmed_at timestamptz NOT NULL)""",
    "CREATE INDEX orders_by_campaign ON orders (campaign_id)",
    """CREATE TABLE events (
        campaign_id text NOT NULL,
        entry_ms bigint NOT NULL,
        entry_seq bigint NOT NULL,
        type text NOT NULL CHECK (type IN ('reserved', 'confirmed', 'cancelled', 'expired')),
        reservation_id text NOT NULL,
        product_id text NOT NULL,
        user_id text NOT NULL,
        units bigint NOT NULL CHECK (units > 0),
        amount bigint NOT NULL CHECK (amount >= 0),
        at_ms bigint NOT NULL,
        storefront text,
        expires_at_ms bigint,
        payment_ref text,
        PRIMARY KEY (campaign_id, entry_ms, entry_seq))""",
    """CREATE TABLE campaigns (
        campaign_id text PRIMARY KEY,
        definition jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE ledger_progress (
        campaign_id text PRIMARY KEY,
        persisted_orders bigint NOT NULL DEFAULT 0,
        persisted_events bigint NOT NULL DEFAULT 0)""",
]

_SQLITE_V1 = [
    """CREATE TABLE orders (
        reservation_id TEXT PRIMARY KEY,
        campaign_id TEXT NOT NULL,
        product_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        units INTEGER NOT NULL CHECK (units > 0),
        amount INTEGER NOT NULL CHECK (amount >= 0),
        payment_ref TEXT NOT NULL,
        confirmed_at TEXT NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX orders_by_campaign ON orders (campaign_id)",
    """CREATE TABLE events (
        campaign_id TEXT NOT NULL,
        entry_ms INTEGER NOT NULL,
        entry_seq INTEGER NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('reserved', 'confirmed', 'cancelled', 'expired')),
        reservation_id TEXT NOT NULL,
        product_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        units INTEGER NOT NULL CHECK (units > 0),
        amount INTEGER NOT NULL CHECK (amount >= 0),
        at_ms INTEGER NOT NULL,
        storefront TEXT,
        expires_at_ms INTEGER,
        payment_ref TEXT,
        PRIMARY KEY (campaign_id, entry_ms, entry_seq)) WITHOUT ROWID""",
    """CREATE TABLE campaigns (
        campaign_id TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))""",
    """CREATE TABLE ledger_progress (
        campaign_id TEXT PRIMARY KEY,
        persisted_orders INTEGER NOT NULL DEFAULT 0,
        persisted_events INTEGER NOT NULL DEFAULT 0)""",
]

# Version 2: a ``reserved`` event keeps the Idempotency-Key it was made with, so ``flashsale recover``
# can rebuild the idempotency hash. Rows stored before it have none (NULL).
_POSTGRES_V2 = ["ALTER TABLE events ADD COLUMN idempotency_key text"]
_SQLITE_V2 = ["ALTER TABLE events ADD COLUMN idempotency_key TEXT"]

# Version 3: a ``reserved`` event under buyer caps keeps the identity, device and network the caps
# counted ('' for a dimension not capped), so ``recover`` and ``reconcile`` can rebuild and compare
# the buyers hash. Rows stored before it, and events of campaigns without buyer caps, have NULL.
_POSTGRES_V3 = ["ALTER TABLE events ADD COLUMN buyer_identity text, ADD COLUMN buyer_device text, "
                "ADD COLUMN buyer_network text"]
_SQLITE_V3 = ["ALTER TABLE events ADD COLUMN buyer_identity TEXT", "ALTER TABLE events ADD COLUMN buyer_device TEXT",
              "ALTER TABLE events ADD COLUMN buyer_network TEXT"]

#: version -> statements, per dialect. Append a migration here to change the schema; never edit one.
MIGRATIONS: dict[Dialect, list[tuple[int, list[str]]]] = {
    "postgres": [(1, _POSTGRES_V1), (2, _POSTGRES_V2), (3, _POSTGRES_V3)],
    "sqlite": [(1, _SQLITE_V1), (2, _SQLITE_V2), (3, _SQLITE_V3)],
}
SCHEMA_VERSION = 3  # the newest version this flashsale knows

VERSION_TABLE: dict[Dialect, str] = {
    "postgres": "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())",
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
              "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
}
CURRENT_VERSION_SQL = "SELECT COALESCE(MAX(version), 0) FROM schema_version"


def pending(dialect: Dialect, found: int) -> list[tuple[int, list[str]]]:
    """The migrations to apply to a database at version ``found``; refuses a newer database."""
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found, SCHEMA_VERSION)
    assert [v for v, _ in MIGRATIONS[dialect]] == list(range(1, SCHEMA_VERSION + 1))
    return [(v, sql) for v, sql in MIGRATIONS[dialect] if v > found]


def readable(found: int, where: str) -> int:
    """For a command that only reads: the version ``found`` if it is this flashsale's, else why not
    (a read never creates or migrates a schema)."""
    if found == 0:
        raise LedgerError(f"{where} holds no ledger (no flashsale schema): check --database-url or "
                          "FLASHSALE_DATABASE_URL; `flashsale writer` creates the ledger")
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found, SCHEMA_VERSION)
    if found < SCHEMA_VERSION:
        raise LedgerError(f"{where} has ledger schema version {found}, older than this flashsale's "
                          f"({SCHEMA_VERSION}): run `flashsale writer` or `flashsale recover` once to migrate it")
    return found
