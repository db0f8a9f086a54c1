"""Fixtures of the ledger tests: one database URL per back-end, the same tests on both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engine.core import Engine
from tests.ledger.pgcluster import PgCluster
from tests.ledger.sale import engine_for

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh ledger database: a SQLite file, or a PostgreSQL database of the shared server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[Engine]:
    e = engine_for(redis_url)
    yield e
    await e.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster, for tests that stop the server (never the shared one)."""
    cluster = PgCluster().start()
    yield cluster
    cluster.destroy()
