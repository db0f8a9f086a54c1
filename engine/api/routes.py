"""The v1 routes of docs/API.md: each one authenticates, validates, calls the Engine, maps the result.

Refusals are raised (``ApiError`` here, ``engine.errors`` from the engine) and answered by the
one table in ``engine.api.errors``. Every engine call runs under a deadline shorter than a second,
so a slow or absent Redis is a fast 503 whatever queue the request waits in.

Handlers return ``(status, JSON bytes)`` and run as plain ASGI apps (``JsonEndpoint``): no
per-request wrappers between the router and the handler, since the middleware answers exceptions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engine.api import render
from engine.api import validation as v
from engine.api.admission import AdmissionApi
from engine.api.auth import Authenticator
from engine.api.deadline import Deadlines
from engine.api.errors import ApiError, head, invalid, public_code
from engine.campaign import parse
from engine.core import Engine, Outcome, ReserveRequest
from engine.core.results import CampaignView
from engine.core.sweeper import Sweeper
from engine.errors import FlashsaleError, StorageUnavailable
from engine.ops import metrics, stats
from engine.settings import Settings

T = TypeVar("T")
Answer = tuple[int, bytes]
Handler = Callable[[Request], Awaitable[Answer]]
DEADLINE_MARGIN_S = 0.35  # on top of the Redis timeout: time a request may wait for its batch
DEADLINE_TICK_S = 0.05  # deadlines are checked this often, so one may run this much late (< 1 s in all)
SWEEPER_STALE_TICKS = 40  # /readyz fails when the sweeper completed no tick for this many intervals
SWEEPER_STALE_MIN_S = 2.0  # ... and at least this long


class JsonEndpoint:
    """A handler as a raw ASGI app: it answers ``(status, body)`` as JSON."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = await self.handler(Request(scope, receive))
        await send({"type": "http.response.start", "status": status, "headers": head(body)})
        await send({"type": "http.response.body", "body": body})


class Api:
    """The handlers, bound to one Engine (set by the app's lifespan) and one Authenticator."""

    def __init__(self, settings: Settings, spec: bytes) -> None:
        self.settings = settings
        self.auth = Authenticator(settings.storefront_tokens, settings.admin_token)
        self.deadline_s = settings.redis_timeout_s + DEADLINE_MARGIN_S
        self.deadlines = Deadlines(self.deadline_s, DEADLINE_TICK_S)
        self.spec = spec
        self._engine: Engine | None = None
        self.sweeper: Sweeper | None = None  # this worker's, set by the app's lifespan
        self.admission = AdmissionApi(self)  # registrations, the waiting room (engine.admission)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StorageUnavailable("the API is starting; retry shortly")
        return self._engine

    @engine.setter
    def engine(self, engine: Engine | None) -> None:
        self._engine = engine

    def _unavailable(self) -> StorageUnavailable:
        return StorageUnavailable(f"Redis did not answer within {self.deadline_s:.1f} s; "
                                  "retry with the same Idempotency-Key")

    async def _within(self, call: Awaitable[T]) -> T:
        try:
            return await self.deadlines.run(call)
        except TimeoutError:
            raise self._unavailable() from None

    async def _counted(self, operation: str, call: Awaitable[Outcome]) -> Outcome:
        """The engine call under the deadline, its outcome and latency counted for /metrics."""
        start = time.perf_counter()
        try:
            outcome = await self.deadlines.run(call)
        except TimeoutError:
            metrics.count_outcome(operation, "UNAVAILABLE", time.perf_counter() - start)
            raise self._unavailable() from None
        except FlashsaleError as exc:
            metrics.count_outcome(operation, public_code(exc), time.perf_counter() - start)
            raise
        except Exception:  # a script error or a bug: answered 500 INTERNAL, counted as such
            metrics.count_outcome(operation, "INTERNAL", time.perf_counter() - start)
            raise
        metrics.count_outcome(operation, "OK", time.perf_counter() - start)
        return outcome

    # -- campaigns (admin writes, anyone with a token reads) -------------------------------

    async def campaign(self, request: Request) -> Answer:
        if request.method == "PUT":
            return await self.put_campaign(request)
        self.auth.caller(v.headers(request))
        cid = v.path_id(request, "cid")
        view = await self._within(self.engine.view(cid))
        return 200, await self._view_body(view)

    async def _view_body(self, view: CampaignView) -> bytes:
        return render.json(await self.admission.view_body(view.to_dict(), view.campaign, view.now_ms))

    def admin_only(self, request: Request) -> None:
        """The admin token, or 401/403 (admin routes, and the ops routes on the storefront listener)."""
        self.auth.admin_of(v.headers(request), request.scope)

    async def put_campaign(self, request: Request) -> Answer:
        hdrs = v.headers(request)
        self.auth.admin_of(hdrs, request.scope)
        cid = v.path_id(request, "cid")
        data = await v.json_object(request, hdrs, v.MAX_DEFINITION_BYTES)
        try:
            campaign = parse(data, campaign_id=cid)
        except (ValueError, OverflowError, TypeError) as exc:  # a time beyond what datetime can hold
            raise invalid("opens_at", f"not a usable time: {exc}") from None
        if campaign.opens_at_ms < 0:
            raise invalid("opens_at", "must be after 1970-01-01T00:00:00Z")
        self.admission.check_definition(campaign)
        created = await self._within(self.engine.load_campaign(campaign))
        view = await self._within(self.engine.view(cid))
        return (201 if created else 200), await self._view_body(view)

    async def _admin_action(self, request: Request, action: str) -> Answer:
        self.admin_only(request)
        cid = v.path_id(request, "cid")
        engine = self.engine
        do = {"pause": engine.pause, "resume": engine.resume, "close": engine.close_campaign}[action]
        await self._within(do(cid))
        return 200, await self._view_body(await self._within(engine.view(cid)))

    async def pause(self, request: Request) -> Answer:
        return await self._admin_action(request, "pause")

    async def resume(self, request: Request) -> Answer:
        return await self._admin_action(request, "resume")

    async def close(self, request: Request) -> Answer:
        return await self._admin_action(request, "close")

    async def stats(self, request: Request) -> Answer:
        self.auth.caller(v.headers(request))
        cid = v.path_id(request, "cid")
        return 200, render.json(await self._within(stats.campaign_stats(self.engine, cid)))

    # -- reservations (storefronts) --------------------------------------------------------

    async def reserve(self, request: Request) -> Answer:
        """The reserve route over ASGI. The reserve lane (``engine.api.lane``) serves the same
        requests without ASGI, through the same two steps: ``reserve_head`` then ``place``."""
        hdrs = v.headers(request)
        storefront, cid, key, token = self.reserve_head(hdrs, request.path_params["cid"])
        return await self.place(storefront, cid, key, await v.read_body(request, hdrs), token)

    def reserve_head(self, hdrs: v.Headers, raw_cid: str) -> tuple[str, str, str, bytes | None]:
        """What the headers and the path decide, checked in this order: (storefront, campaign, key),
        and the ``Admission-Token`` header as sent (None when absent or empty)."""
        storefront = self.auth.storefront(hdrs)
        return (storefront, v.path_value(raw_cid, "cid"), v.idempotency_key(hdrs),
                hdrs.get(b"admission-token") or None)

    async def place(self, storefront: str, cid: str, key: str, body: bytes,
                    token: bytes | None = None) -> Answer:
        """The hot path: one small JSON body, one batched script call. An admission token is
        verified here (signature, campaign, user: no Redis round trip); whether the campaign
        needs one, and whether it has expired by Redis TIME, the reserve script decides."""
        user_id, product_id, units, buyer = v.reserve_body(v.json_of(body))
        admission = None if token is None else self.admission.verify(token, cid, user_id)
        req = ReserveRequest(user_id, product_id, units, key, storefront, buyer, admission)
        outcome = await self._counted("reserve", self.engine.reserve(cid, req))
        return (200 if outcome.replayed else 201), render.reservation(outcome.reservation)

    # A reservation belongs to the storefront that made it: each call below passes the caller's
    # storefront, and another storefront's reservation is answered as an unknown id (404).

    async def reservation(self, request: Request) -> Answer:
        storefront = self.auth.storefront(v.headers(request))
        cid, rid = v.path_id(request, "cid"), v.path_id(request, "rid")
        found = await self._within(self.engine.reservation(cid, rid, storefront=storefront))
        return 200, render.reservation(found)

    async def confirm(self, request: Request) -> Answer:
        hdrs = v.headers(request)
        storefront = self.auth.storefront(hdrs)
        cid, rid = v.path_id(request, "cid"), v.path_id(request, "rid")
        ref = v.confirm_body(await v.json_object(request, hdrs))
        outcome = await self._counted("confirm", self.engine.confirm(cid, rid, ref, storefront=storefront))
        return 200, render.reservation(outcome.reservation)

    async def cancel(self, request: Request) -> Answer:
        hdrs = v.headers(request)
        storefront = self.auth.storefront(hdrs)
        cid, rid = v.path_id(request, "cid"), v.path_id(request, "rid")
        await v.read_body(request, hdrs)  # any body is ignored, but still bounded
        outcome = await self._counted("cancel", self.engine.cancel(cid, rid, storefront=storefront))
        return 200, render.reservation(outcome.reservation)

    async def holdings(self, request: Request) -> Answer:
        storefront = self.auth.storefront(v.headers(request))
        cid, uid = v.path_id(request, "cid"), v.path_id(request, "uid")
        held = await self._within(self.engine.holdings(cid, uid, storefront=storefront))
        return 200, render.json(held.to_dict())

    # -- ops ---------------------------------------------------------------------------------

    async def healthz(self, _: Request) -> Answer:
        return 200, b'{"status":"ok"}'

    async def readyz(self, _: Request) -> Answer:
        """Redis answers, the scripts are loaded, and this worker's sweeper completed a tick lately.
        A tick in which some campaign failed still counts here (one damaged campaign must not take
        every worker out of service); ``last_good_tick_age_s`` shows it, and the sweeper alert
        follows it (``flashsale_sweeper_last_success_timestamp_seconds``)."""
        await self._within(self.engine.ready())
        sweeper = self.sweeper
        if sweeper is None:
            return 200, b'{"status":"ready"}'
        completed, good = sweeper.ages()
        stale_s = max(SWEEPER_STALE_MIN_S, SWEEPER_STALE_TICKS * sweeper.interval_s)
        state = {"last_tick_age_s": round(completed, 3), "last_good_tick_age_s": round(good, 3),
                 "stale_after_s": stale_s, "failures_total": sweeper.failures_total}
        if completed > stale_s:
            raise ApiError(503, "UNAVAILABLE", f"the expiry sweeper completed no tick for {completed:.1f} s",
                           {"sweeper": state}, {"Retry-After": "1"})
        return 200, render.json({"status": "ready", "sweeper": state})

    async def openapi(self, _: Request) -> Answer:
        return 200, self.spec

    def routes(self) -> list[Route]:
        """The reserve route first: the router tries routes in order, and it is the hot one."""
        c, r = "/v1/campaigns/{cid}", "/v1/campaigns/{cid}/reservations"
        table: list[tuple[str, Handler, list[str]]] = [
            (r, self.reserve, ["POST"]),
            (c, self.campaign, ["GET", "PUT"]),
            (f"{c}/pause", self.pause, ["POST"]),
            (f"{c}/resume", self.resume, ["POST"]),
            (f"{c}/close", self.close, ["POST"]),
            (f"{c}/stats", self.stats, ["GET"]),
            (f"{r}/{{rid}}", self.reservation, ["GET"]),
            (f"{r}/{{rid}}/confirm", self.confirm, ["POST"]),
            (f"{r}/{{rid}}/cancel", self.cancel, ["POST"]),
            (f"{c}/users/{{uid}}", self.holdings, ["GET"]),
            *self.admission.table(),
            ("/healthz", self.healthz, ["GET"]),
            ("/readyz", self.readyz, ["GET"]),
            ("/openapi.json", self.openapi, ["GET"]),
        ]
        return [Route(path, JsonEndpoint(handler), methods=methods) for path, handler, methods in table]
