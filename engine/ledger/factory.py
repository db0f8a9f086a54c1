"""Pick the ledger back-end by the database URL's scheme."""

from __future__ import annotations

from engine.ledger.sink import Sink


def sink_for(url: str) -> Sink:
    """``postgresql://…`` (or ``postgres://…``) -> PostgreSQL; ``sqlite:///path`` -> SQLite."""
    if url.startswith(("postgresql://", "postgres://")):
        from engine.ledger.postgres import PostgresSink

        return PostgresSink(url)
    if url.startswith("sqlite:///"):
        from engine.ledger.sqlite import SqliteSink

        return SqliteSink(url)
    raise ValueError(f"unsupported database URL {url!r}: use postgresql://user@host/db, "
                     "sqlite:///relative.db or sqlite:////absolute/path.db")
