"""A real stack for the load tests: private redis-server, `flashsale serve`, `flashsale writer`."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.loadgen.campaigns import put_campaign, read_definition, shifted
from tests.support.processes import ADMIN_TOKEN, FLASHSALE, STOREFRONT_TOKENS, ApiServer, Process, base_env
from tests.support.servers import RedisServer

TOKEN = STOREFRONT_TOKENS["shop-a"]
ADMISSION_KEYS = "lg1:" + "k" * 40  # queue-mode campaigns need the server to sign admission tokens


@dataclass(frozen=True)
class Stack:
    redis: RedisServer
    api: ApiServer
    writer: Process
    database_url: str

    def campaign(self, campaign_id: str, *, units: int, opens_in_s: float = 2.0, hold_seconds: int | None = None,
                 rate_limit: tuple[int, int] | None = None, **extra: Any) -> dict[str, Any]:
        """The Yulebao phase-1 campaign under another id, scaled, opening shortly (``extra``: more
        fields, e.g. ``admission``)."""
        d = shifted(read_definition(), opens_in_s=opens_in_s, campaign_id=campaign_id, units=units,
                    hold_seconds=hold_seconds, rate_limit=rate_limit)
        d.update(extra)
        asyncio.run(put_campaign(self.api.url, ADMIN_TOKEN, d))
        return d


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One stack per test module: its campaigns carry their own ids, so tests never share stock."""
    redis = RedisServer().start()
    workdir = tempfile.mkdtemp(prefix="fs-loadgen-")
    database_url = f"sqlite:///{Path(workdir) / 'ledger.db'}"
    api = ApiServer(redis.url, workers=2, FLASHSALE_ADMISSION_KEYS=ADMISSION_KEYS)
    writer = Process([FLASHSALE, "writer", "--database-url", database_url, "--allow-volatile-redis"],
                     base_env(redis.url, FLASHSALE_DATABASE_URL=database_url))
    try:
        api.start(timeout=60)
        writer.start()
        yield Stack(redis, api, writer, database_url)
    finally:
        writer.stop()
        api.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
