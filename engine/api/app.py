"""The Starlette application: ``create_app(settings)``; ``factory()`` for the HTTP servers.

The lifespan connects to Redis, refuses a Redis that would lose acknowledged writes (unless
``allow_volatile_redis``), starts the expiry sweeper, and on shutdown stops it and closes the
client. Each server worker process runs its own lifespan, so each has its own Engine, batcher
and sweeper (several sweepers are safe, see ``engine.core.sweeper``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from engine.api import audit, logs, openapi
from engine.api.dispatch import Dispatch
from engine.api.lane import ReserveLane
from engine.api.middleware import RequestContext, RequestIds
from engine.api.routes import Api
from engine.core import Engine
from engine.core.redis_client import require_durable
from engine.core.sweeper import Sweeper
from engine.errors import StorageUnavailable
from engine.ops import metrics, web
from engine.ops.instrument import instrument
from engine.settings import Settings

log = logging.getLogger("flashsale.api")
STARTUP_WAIT_S = 10.0  # how long a starting worker waits for Redis before giving up
SWEEPER_STOP_S = 5.0  # how long shutdown waits for the sweeper's call in flight
GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


def tune_gc() -> None:
    """Once the worker is up: move everything alive now (modules, the app, the engine) out of the
    collector's sight, and collect the young generation less often. Each request allocates a few
    hundred short-lived objects, and with the default thresholds the collector took a large share of
    the reserve route's CPU time (BENCHMARKS.md, "Design measurements")."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class State(TypedDict):
    engine: Engine
    settings: Settings


async def _durability_checked(engine: Engine, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_WAIT_S
    while True:
        try:
            profile = await require_durable(engine.redis, allow_volatile=settings.allow_volatile_redis,
                                            replica_acks=settings.replica_acks)
            break
        except StorageUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
    if not profile.safe:
        log.warning("running on a volatile Redis (allowed): %s", profile.describe())


def _lifespan(api: Api, settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        engine = Engine.from_settings(settings)
        instrument(engine)  # script latency and batch sizes, sweeper expiries (engine.ops)
        try:
            await _durability_checked(engine, settings)
            with contextlib.suppress(StorageUnavailable):
                await engine.ready()  # load the scripts now rather than on the first request
            sweeper = Sweeper(engine, interval_s=settings.sweep_interval_s, on_tick=metrics.observe_sweep)
            task = asyncio.create_task(sweeper.run(), name="flashsale-sweeper")
            api.engine = app.state.engine = engine
            api.sweeper = sweeper
            tune_gc()
            try:
                yield {"engine": engine, "settings": settings}
            finally:
                api.engine = app.state.engine = None
                api.sweeper = None
                sweeper.stop()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                    await asyncio.wait_for(task, SWEEPER_STOP_S)
        finally:
            await engine.close()

    return lifespan


class FlashsaleApp(Starlette):
    """Starlette with one middleware between the server and the router, ``RequestContext``, and the
    reserve route matched before the router (``engine.api.dispatch``).

    Starlette's own stack wraps every request in two exception middlewares and the router's
    per-route exception wrapper; on the reserve path that nesting cost more CPU than the engine
    call. ``RequestContext`` answers every exception from the one table in ``engine.api.errors``,
    so those layers have nothing left to do.
    """

    reserve_lane: ReserveLane | None = None

    def build_middleware_stack(self) -> ASGIApp:
        templates = {r.endpoint: r.path for r in self.router.routes if isinstance(r, Route)}
        return RequestContext(Dispatch(self.router), templates, audit.ACTIONS)


def create_app(settings: Settings) -> FlashsaleApp:
    logs.configure(settings.log_level)
    api = Api(settings, openapi.spec_bytes())
    routes: list[BaseRoute] = [*api.routes(), *web.routes(guard=api.admin_only)]
    app = FlashsaleApp(routes=routes, lifespan=_lifespan(api, settings))
    app.state.api = api
    app.reserve_lane = ReserveLane(api, RequestIds())  # served by engine.api.transport under uvicorn
    return app


def factory() -> FlashsaleApp:
    """For ``granian``/``uvicorn --factory``: the settings come from the FLASHSALE_* environment."""
    return create_app(Settings.from_env(check_tokens=True))
