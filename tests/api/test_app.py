"""In-process checks of the app: the error table, the catch-all, the spec's coverage, the lifespan."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.routing import Route

from engine import errors as e
from engine.api import logs, render
from engine.api.app import create_app
from engine.api.deadline import Deadlines
from engine.api.errors import EXCEPTION_HANDLERS, INTERNAL, REJECTION_STATUS, reply_to, retry_after_seconds
from engine.api.openapi import ERROR_CODES, spec
from engine.api.render import rfc3339_ms
from engine.campaign import ms_to_rfc3339
from engine.core import Reservation
from engine.settings import Settings
from tests.api.conftest import definition, new_id
from tests.support.processes import ADMIN_TOKEN, STOREFRONT_TOKENS
from tests.support.servers import RedisServer

SF = {"Authorization": f"Bearer {STOREFRONT_TOKENS['shop-a']}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own: only the in-process app below sweeps it (the shared one has a
    server process sweeping too), and flushing it disturbs nobody."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def app_client(own_redis: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(redis_url=own_redis.url, storefront_tokens=tuple(STOREFRONT_TOKENS.items()),
                        admin_token=ADMIN_TOKEN, allow_volatile_redis=True, sweep_interval_s=0.05)
    app = create_app(settings)

    async def boom(_: Request) -> None:
        raise RuntimeError("secret internals")

    app.router.routes.append(Route("/boom", boom))
    threshold = gc.get_threshold()
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://flashsale.test") as client:
            yield client
    finally:  # the lifespan tunes the collector for a server process; give pytest its own back
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.needs_services  # starts its own redis-server
async def test_a_bug_is_a_500_in_the_error_shape_logged_with_the_request_id(app_client: httpx.AsyncClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger("flashsale.api").addHandler(handler)
    try:
        r = await app_client.get("/boom", headers={"X-Request-Id": "req-77"})
    finally:
        logging.getLogger("flashsale.api").removeHandler(handler)
    assert r.status_code == 500
    assert r.json()["error"] == {"code": "INTERNAL", "details": {},
                                 "message": "internal error; it has been logged with the request id"}
    assert r.headers["x-request-id"] == "req-77"
    assert "secret" not in r.text and "Traceback" not in r.text
    line = orjson.loads(stream.getvalue().splitlines()[0])
    assert line["request_id"] == "req-77" and line["level"] == "error" and "secret internals" in line["exc"]


def test_every_route_is_in_the_spec_and_back() -> None:
    app = create_app(Settings())
    served = {r.path for r in app.router.routes if isinstance(r, Route)}
    documented = set(spec()["paths"])
    assert documented <= served
    assert {p for p in served if p.startswith("/v1/")} <= documented


def test_the_error_table_follows_api_md() -> None:
    expected = {e.NotFound: 404, e.NotOpen: 409, e.Closed: 409, e.Paused: 409, e.SoldOut: 409,
                e.InsufficientStock: 409, e.UserCapExceeded: 409, e.IdempotencyKeyReused: 409,
                e.InvalidState: 409, e.RateLimited: 429}
    assert {k: v for k, v in REJECTION_STATUS.items() if k in expected} == expected
    for cls in (e.Rejected, e.StorageUnavailable, e.InvalidDefinition, e.FlashsaleError):
        assert cls in EXCEPTION_HANDLERS
    for cls in expected:
        assert cls.code in ERROR_CODES


@pytest.mark.parametrize("exc", [e.UnsafeRedis("no AOF"), e.LedgerError("the ledger failed"), RuntimeError("a bug")],
                         ids=["unsafe-redis", "ledger-error", "a-bug"])
def test_an_error_outside_the_table_is_500_internal_without_inviting_a_retry(exc: Exception) -> None:
    """docs/API.md: INTERNAL is a bug, logged with the request id; retrying will not help."""
    reply = reply_to(exc, "POST /v1/campaigns/c/reservations")
    assert reply.status == 500 and reply.body == INTERNAL.body
    assert orjson.loads(reply.body)["error"]["code"] == "INTERNAL"
    assert "retry" not in orjson.loads(reply.body)["error"]["message"]


@pytest.mark.parametrize(("ms", "seconds"), [(1, 1), (999, 1), (1000, 1), (1001, 2), (0, 1), (2500, 3)])
def test_retry_after_rounds_up(ms: int, seconds: int) -> None:
    assert retry_after_seconds(ms) == seconds


@pytest.mark.needs_services  # starts its own redis-server
async def test_lifespan_runs_the_sweeper(app_client: httpx.AsyncClient) -> None:
    cid = new_id()
    r = await app_client.put(f"/v1/campaigns/{cid}", json=definition(cid, hold_seconds=1), headers=ADMIN)
    assert r.status_code == 201
    r = await app_client.post(f"/v1/campaigns/{cid}/reservations",
                              json={"user_id": "u", "product_id": "p1", "units": 2},
                              headers={**SF, "Idempotency-Key": "k"})
    assert r.status_code == 201
    rid = r.json()["reservation_id"]
    for _ in range(300):
        if (await app_client.get(f"/v1/campaigns/{cid}/stats", headers=SF)).json()["held_units"] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await app_client.get(f"/v1/campaigns/{cid}/stats", headers=SF)).json()["held_units"] == 0  # swept
    r = await app_client.get(f"/v1/campaigns/{cid}/reservations/{rid}", headers=SF)
    assert r.json()["state"] == "expired"


async def test_deadline_cancels_a_call_that_hangs_and_spares_the_rest() -> None:
    deadlines = Deadlines(0.2, tick_s=0.02)
    assert await deadlines.run(asyncio.sleep(0.01, result="quick")) == "quick"
    with pytest.raises(TimeoutError):
        await deadlines.run(asyncio.Event().wait())
    assert await deadlines.run(asyncio.sleep(0.05, result="after")) == "after"  # the task is not left cancelled

    async def cancelled_from_outside() -> None:
        await deadlines.run(asyncio.Event().wait())

    task = asyncio.create_task(cancelled_from_outside())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # a cancellation that is not ours passes through
        await task


@pytest.mark.parametrize("ms", [0, 1, 999, 1_000, 1_395_795_600_123, 4_102_444_799_999])
def test_fast_time_format_matches_the_core(ms: int) -> None:
    assert rfc3339_ms(ms) == ms_to_rfc3339(ms)


def test_reservation_body_matches_the_core() -> None:
    held = Reservation("r1", "c1", "p1", "u1", 3, 30000, "held", 1_395_796_500_000, 1_395_795_600_000, "shop-a")
    confirmed = Reservation("r2", "c1", "p1", "u1", 1, 10000, "confirmed", 1_395_796_500_000, 1_395_795_600_000,
                            "shop-a", "pay-1", 1_395_795_700_001)
    for r in (held, confirmed):
        assert orjson.loads(render.reservation(r)) == r.to_dict()
