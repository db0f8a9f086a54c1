"""The ops routes mounted on a bare Starlette app (no API around them): Redis away, no engine yet."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from engine.core import Engine
from engine.ops import web
from engine.settings import Settings
from tests.ops.promtext import Samples
from tests.support.servers import free_port


@pytest.fixture
async def dead_engine() -> AsyncIterator[Engine]:
    engine = Engine.from_settings(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5))
    yield engine
    await engine.close()


def client(engine: Engine | None) -> httpx.AsyncClient:
    app = Starlette(routes=web.routes())
    if engine is not None:
        app.state.engine = engine
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops")


async def test_redis_away_metrics_say_so_and_the_page_data_is_a_503(dead_engine: Engine) -> None:
    async with client(dead_engine) as c:
        res = await c.get("/metrics")
        assert res.status_code == 200
        assert Samples(res.text).get("flashsale_redis_up") == 0
        res = await c.get("/dashboard/data")
        assert res.status_code == 503
        assert res.headers["retry-after"] == "1"
        assert res.json()["error"]["code"] == "UNAVAILABLE"
        assert (await c.get("/dashboard")).status_code == 200  # the page itself needs no Redis


async def test_without_an_engine_the_routes_answer_503_not_500() -> None:
    async with client(None) as c:
        for path in ("/metrics", "/dashboard/data"):
            res = await c.get(path)
            assert res.status_code == 503, path
            assert res.json()["error"]["code"] == "UNAVAILABLE"


async def test_the_engine_of_the_app_state_serves_the_data(engine: Engine) -> None:
    async with client(engine) as c:
        body = (await c.get("/dashboard/data")).json()
    assert body == {"as_of": None, "campaigns": [], "dead_letters": 0, "writers_alive": 0}
