"""The admission routes of docs/API.md (v1.1): pre-registration, the waiting room, the admission rate.

Thin like ``engine.api.routes``: authenticate, validate, call ``AdmissionService``, map the
result. The service is built on the worker's Engine the first time it is needed; its poll cache
lives as long as the worker. The admission keyring (``FLASHSALE_ADMISSION_KEYS``) is read once;
``flashsale serve`` has already refused a malformed one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from engine.admission import AdmissionService, Keyring, parse_buyer
from engine.admission.buyer import Buyer
from engine.admission.tokens import KEYS_ENV, Refusal, Verified
from engine.api import render
from engine.api import validation as v
from engine.api.errors import invalid, public_code
from engine.campaign import MAX_ADMIT_PER_SECOND, Campaign
from engine.core import Engine
from engine.errors import InvalidRequest
from engine.ops import metrics

if TYPE_CHECKING:
    from engine.api.routes import Answer, Api, Handler

JOIN_FIELDS = ("user_id", "buyer")  # registration and queue bodies: user_id required, buyer optional
RATE_FIELDS = ("admit_per_second",)


def buyer_body(data: dict[str, Any]) -> tuple[str, Buyer]:
    """``{"user_id", "buyer"?}`` -> (user id, buyer signals); 422 naming the field."""
    for key in data:
        if key not in JOIN_FIELDS:
            raise invalid(key, "unknown field")
    if "user_id" not in data:
        raise invalid("user_id", "missing")
    user_id = v.ident(data["user_id"], "user_id")
    try:
        return user_id, parse_buyer(data.get("buyer"))
    except InvalidRequest as exc:
        raise invalid(exc.field, exc.reason) from None


class AdmissionApi:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.keyring = Keyring.from_env()
        self._service: AdmissionService | None = None

    @property
    def service(self) -> AdmissionService:
        engine: Engine = self.api.engine
        if self._service is None or self._service.engine is not engine:
            self._service = AdmissionService(engine, self.keyring)
        return self._service

    def verify(self, token: bytes, cid: str, user_id: str) -> Verified | Refusal:
        """A reserve's ``Admission-Token`` checked against this server's keyring (no Redis): its
        expiry is left to the reserve script, which judges it by Redis TIME."""
        if self.keyring is None:
            return Refusal.INVALID
        return self.keyring.verify(token.decode("latin-1"), cid, user_id)

    def check_definition(self, c: Campaign) -> None:
        """A queue-mode campaign needs this server to sign admission tokens."""
        if c.queued and self.keyring is None:
            raise invalid("admission.mode", f"queue mode needs admission keys: set {KEYS_ENV} on the server")

    async def view_body(self, view_dict: dict[str, Any], c: Campaign, now_ms: int) -> dict[str, Any]:
        """The campaign body with the live admission block (queue mode only; others unchanged)."""
        if c.queued:
            view_dict["admission"] = await self.api._within(self.service.public(c, now_ms))
        return view_dict

    async def _counted(self, call: str, handler: Handler, request: Request) -> Answer:
        """The handler's answer, counted for /metrics by what it answered (a state, OK, or a code)."""
        try:
            status, body = await handler(request)
        except Exception as exc:
            metrics.count_queue(call, public_code(exc))
            raise
        if call != "poll":  # a poll is counted by the state it answered (``_ticket``)
            metrics.count_queue(call, "OK")
        return status, body

    async def register(self, request: Request) -> Answer:
        return await self._counted("registration", self._register, request)

    async def join(self, request: Request) -> Answer:
        return await self._counted("join", self._join, request)

    async def ticket(self, request: Request) -> Answer:
        return await self._counted("poll", self._ticket, request)

    async def _register(self, request: Request) -> Answer:
        hdrs = v.headers(request)
        self.api.auth.storefront(hdrs)
        cid = v.path_id(request, "cid")
        user_id, buyer = buyer_body(await v.json_object(request, hdrs))
        created = await self.api._within(self.service.register(cid, user_id, buyer))
        return (201 if created else 200), render.json({"campaign_id": cid, "user_id": user_id,
                                                       "state": "registered"})

    async def _join(self, request: Request) -> Answer:
        hdrs = v.headers(request)
        storefront = self.api.auth.storefront(hdrs)
        cid = v.path_id(request, "cid")
        user_id, buyer = buyer_body(await v.json_object(request, hdrs))
        service = self.service
        ticket, created = await self.api._within(service.join(cid, user_id, buyer, storefront))
        body = await self.api._within(service.poll(cid, ticket, storefront))
        return (201 if created else 200), render.json(body)

    async def _ticket(self, request: Request) -> Answer:
        storefront = self.api.auth.storefront(v.headers(request))
        cid, ticket = v.path_id(request, "cid"), v.path_id(request, "ticket")
        body = await self.api._within(self.service.poll(cid, ticket, storefront))
        metrics.count_queue("poll", body["state"])
        return 200, render.json(body)

    async def rate(self, request: Request) -> Answer:
        hdrs = v.headers(request)
        self.api.auth.admin_of(hdrs, request.scope)
        cid = v.path_id(request, "cid")
        data = await v.json_object(request, hdrs)
        v.fields(data, RATE_FIELDS)
        rate = v.integer(data["admit_per_second"], "admit_per_second", 0, MAX_ADMIT_PER_SECOND)
        service = self.service
        await self.api._within(service.set_rate(cid, rate))
        view = await self.api._within(self.api.engine.view(cid))
        return 200, render.json(await self.api._within(service.public(view.campaign, view.now_ms)))

    def table(self) -> list[tuple[str, Handler, list[str]]]:
        c = "/v1/campaigns/{cid}"
        return [
            (f"{c}/registrations", self.register, ["POST"]),
            (f"{c}/queue", self.join, ["POST"]),
            (f"{c}/queue/{{ticket}}", self.ticket, ["GET"]),
            (f"{c}/admission", self.rate, ["PATCH"]),
        ]

