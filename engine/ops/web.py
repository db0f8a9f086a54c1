"""Ops routes: the API app mounts them behind the admin token, the ops listener without one:

| route | what |
|---|---|
| ``GET /metrics`` | Prometheus text (``engine.ops.metrics.render``) |
| ``GET /dashboard`` · ``/dashboard?campaign=ID`` | the live sell-through page (static HTML + JS) |
| ``GET /dashboard/data`` · ``?campaign=ID`` | what the page polls each second: stats and writer state |
| ``GET /dashboard/static/…`` | the page's script, style and the vendored uPlot (MIT) |

``routes(guard)``: ``guard(request)`` runs before the metrics and the data and raises to refuse
(the API passes its admin check: 401 without a token, 403 for a storefront's). The page and its
assets carry no data and need no token: a browser cannot send one when it opens a page, so the
page's script sends it with each data request (``static/dashboard.js``).

The Engine comes from the app's lifespan state (``request.state.engine``) or ``app.state.engine``.
Errors use the API's one shape, ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from engine.admission.service import queue_stats
from engine.campaign import ID_PATTERN, ms_to_rfc3339
from engine.core import Engine
from engine.errors import NotFound, StorageUnavailable
from engine.ops import metrics
from engine.ops.overview import overview
from engine.ops.stats import stats_from_counters

#: No inline script, nothing from another origin: the page works offline and cannot be injected into.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
    "Cache-Control": "no-cache",
}


def _error(status: int, code: str, message: str) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message, "details": {}}})
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(body, status, headers=headers, media_type="application/json")


def _engine(request: Request) -> Engine:
    engine = getattr(request.state, "engine", None) or getattr(request.app.state, "engine", None)
    if engine is None:
        raise StorageUnavailable("the server is starting (no engine yet); retry shortly")
    return engine  # type: ignore[no-any-return]


async def metrics_endpoint(request: Request) -> Response:
    try:
        body = await metrics.render(_engine(request))
    except StorageUnavailable as exc:
        return _error(503, "UNAVAILABLE", str(exc))
    return Response(body, media_type=metrics.CONTENT_TYPE)


@cache
def _page() -> bytes:
    return (resources.files("engine.ops") / "static" / "dashboard.html").read_bytes()


async def dashboard(request: Request) -> Response:
    """The page; which campaign it shows is read by its script from ``?campaign=``."""
    return Response(_page(), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


async def dashboard_snapshot(engine: Engine, campaign_id: str | None) -> dict[str, Any]:
    """What the page shows: each campaign's stats body plus its title, product titles and the
    writer's figures; the dead letters and live writers (raises NotFound, StorageUnavailable)."""
    o = await overview(engine, campaign_id)
    campaigns = []
    for co in o.campaigns:
        s = stats_from_counters(co.counters)
        definition = co.counters.view.campaign
        s["title"] = definition.title
        for product, p in zip(s["products"], definition.products, strict=True):
            product["title"] = p.title
        lg = co.ledger
        s["writer"] = {"stream_entries": lg.stream_length, "undelivered_entries": lg.undelivered,
                       "pending_entries": lg.pending, "dead_letters": lg.dead_letters}
        if definition.queued:  # the waiting room: waiting, admitted, the admission rate in force
            s["queue"] = await queue_stats(engine, definition, co.counters.view.now_ms)
        campaigns.append(s)
    now = max((co.counters.view.now_ms for co in o.campaigns), default=None)
    return {"as_of": None if now is None else ms_to_rfc3339(now), "campaigns": campaigns,
            "dead_letters": o.dead_letters, "writers_alive": o.writers_alive}


async def dashboard_data(request: Request) -> Response:
    cid = request.query_params.get("campaign") or None
    if cid is not None and not ID_PATTERN.fullmatch(cid):
        return _error(404, "NOT_FOUND", f"campaign {cid!r} not found (ids match {ID_PATTERN.pattern})")
    try:
        body = await dashboard_snapshot(_engine(request), cid)
    except NotFound as exc:
        return _error(404, "NOT_FOUND", str(exc))
    except StorageUnavailable as exc:
        return _error(503, "UNAVAILABLE", str(exc))
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Request], object]


def _guarded(endpoint: Endpoint, guard: Guard | None) -> Endpoint:
    if guard is None:
        return endpoint

    async def checked(request: Request) -> Response:
        guard(request)
        return await endpoint(request)

    checked.__name__ = endpoint.__name__
    return checked


def routes(guard: Guard | None = None) -> list[BaseRoute]:
    return [
        Route("/metrics", _guarded(metrics_endpoint, guard), methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/dashboard/data", _guarded(dashboard_data, guard), methods=["GET"]),
        Mount("/dashboard/static", StaticFiles(packages=[("engine.ops", "static")]), name="ops-static"),
    ]
