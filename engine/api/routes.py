"""The v1 routes of API.md: each one authenticates, validates, calls the Engine, maps the result.

Refusals are raised (``ApiError`` here, ``engine.errors`` from the engine) and answered by the
one table in ``engine.api.errors``. Every engine call runs under a deadline shorter than a second,
so a slow or absent Redis is a fast 503 whatever queue the request waits in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.api import validation as v
from engine.api.auth import Authenticator
from engine.api.errors import invalid, public_code
from engine.campaign import parse
from engine.core import Engine, Outcome, ReserveRequest
from engine.errors import FlashsaleError, StorageUnavailable
from engine.ops import metrics, stats
from engine.settings import Settings

T = TypeVar("T")
DEADLINE_MARGIN_S = 0.4  # on top of the Redis timeout: time a request may wait for its batch


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Api:
    """The handlers, bound to one Engine (set by the app's lifespan) and one Authenticator."""

    def __init__(self, settings: Settings, spec: bytes) -> None:
        self.settings = settings
        self.auth = Authenticator(settings.storefront_tokens, settings.admin_token)
        self.deadline_s = settings.redis_timeout_s + DEADLINE_MARGIN_S
        self.spec = spec
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StorageUnavailable("the API is starting; retry shortly")
        return self._engine

    @engine.setter
    def engine(self, engine: Engine | None) -> None:
        self._engine = engine

    async def _within(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.deadline_s):
                return await call
        except TimeoutError:
            raise StorageUnavailable(f"Redis did not answer within {self.deadline_s:.1f} s; "
                                     "retry with the same Idempotency-Key") from None

    async def _counted(self, operation: str, call: Awaitable[Outcome]) -> Outcome:
        try:
            outcome = await self._within(call)
        except FlashsaleError as exc:
            metrics.count_outcome(operation, public_code(exc))
            raise
        metrics.count_outcome(operation, "OK")
        return outcome

    # -- campaigns (admin writes, anyone with a token reads) -------------------------------

    async def campaign(self, request: Request) -> Response:
        if request.method == "PUT":
            return await self.put_campaign(request)
        self.auth.caller(request)
        cid = v.path_id(request, "cid")
        view = await self._within(self.engine.view(cid))
        return JSON(view.to_dict())

    async def put_campaign(self, request: Request) -> Response:
        self.auth.admin(request)
        cid = v.path_id(request, "cid")
        data = await v.json_object(request, v.MAX_DEFINITION_BYTES)
        try:
            campaign = parse(data, campaign_id=cid)
        except (ValueError, OverflowError, TypeError) as exc:  # a time beyond what datetime can hold
            raise invalid("opens_at", f"not a usable time: {exc}") from None
        if campaign.opens_at_ms < 0:
            raise invalid("opens_at", "must be after 1970-01-01T00:00:00Z")
        created = await self._within(self.engine.load_campaign(campaign))
        view = await self._within(self.engine.view(cid))
        return JSON(view.to_dict(), 201 if created else 200)

    async def _admin_action(self, request: Request, action: str) -> Response:
        self.auth.admin(request)
        cid = v.path_id(request, "cid")
        engine = self.engine
        do = {"pause": engine.pause, "resume": engine.resume, "close": engine.close_campaign}[action]
        await self._within(do(cid))
        return JSON((await self._within(engine.view(cid))).to_dict())

    async def pause(self, request: Request) -> Response:
        return await self._admin_action(request, "pause")

    async def resume(self, request: Request) -> Response:
        return await self._admin_action(request, "resume")

    async def close(self, request: Request) -> Response:
        return await self._admin_action(request, "close")

    async def stats(self, request: Request) -> Response:
        self.auth.caller(request)
        cid = v.path_id(request, "cid")
        return JSON(await self._within(stats.campaign_stats(self.engine, cid)))

    # -- reservations (storefronts) --------------------------------------------------------

    async def reserve(self, request: Request) -> Response:
        storefront = self.auth.storefront(request)
        cid = v.path_id(request, "cid")
        key = v.idempotency_key(request)
        user_id, product_id, units = v.reserve_body(await v.json_object(request))
        req = ReserveRequest(user_id, product_id, units, key, storefront)
        outcome = await self._counted("reserve", self.engine.reserve(cid, req))
        return JSON(outcome.reservation.to_dict(), 200 if outcome.replayed else 201)

    async def reservation(self, request: Request) -> Response:
        self.auth.storefront(request)
        cid, rid = v.path_id(request, "cid"), v.path_id(request, "rid")
        return JSON((await self._within(self.engine.reservation(cid, rid))).to_dict())

    async def confirm(self, request: Request) -> Response:
        self.auth.storefront(request)
        cid, rid = v.path_id(request, "cid"), v.path_id(request, "rid")
        ref = v.confirm_body(await v.json_object(request))
        outcome = await self._counted("confirm", self.engine.confirm(cid, rid, ref))
        return JSON(outcome.reservation.to_dict())

    async def cancel(self, request: Request) -> Response:
        self.auth.storefront(request)
        cid, rid = v.path_id(request, "cid"), v.path_id(request, "rid")
        await v.read_body(request)  # any body is ignored, but still bounded
        outcome = await self._counted("cancel", self.engine.cancel(cid, rid))
        return JSON(outcome.reservation.to_dict())

    async def holdings(self, request: Request) -> Response:
        self.auth.storefront(request)
        cid, uid = v.path_id(request, "cid"), v.path_id(request, "uid")
        return JSON((await self._within(self.engine.holdings(cid, uid))).to_dict())

    # -- ops ---------------------------------------------------------------------------------

    async def healthz(self, _: Request) -> Response:
        return JSON({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        await self._within(self.engine.ready())
        return JSON({"status": "ready"})

    async def openapi(self, _: Request) -> Response:
        return Response(self.spec, media_type="application/json")

    def routes(self) -> list[Route]:
        c, r = "/v1/campaigns/{cid}", "/v1/campaigns/{cid}/reservations"
        return [
            Route(c, self.campaign, methods=["GET", "PUT"]),
            Route(f"{c}/pause", self.pause, methods=["POST"]),
            Route(f"{c}/resume", self.resume, methods=["POST"]),
            Route(f"{c}/close", self.close, methods=["POST"]),
            Route(f"{c}/stats", self.stats, methods=["GET"]),
            Route(r, self.reserve, methods=["POST"]),
            Route(f"{r}/{{rid}}", self.reservation, methods=["GET"]),
            Route(f"{r}/{{rid}}/confirm", self.confirm, methods=["POST"]),
            Route(f"{r}/{{rid}}/cancel", self.cancel, methods=["POST"]),
            Route(f"{c}/users/{{uid}}", self.holdings, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
