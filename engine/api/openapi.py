"""``/openapi.json``: the HTTP part of docs/API.md as an OpenAPI 3.0 document, written by hand.

Bounds and patterns come from ``engine.api.validation`` and ``engine.campaign``, the code that
enforces them, so the document and the server agree by construction; schemathesis checks that
they do (``tests/api/test_schemathesis.py``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from engine import campaign as cm
from engine.api import openapi_admission as oa
from engine.api import validation as v
from engine.core.results import STATES

REF = "#/components"
ERROR_CODES = ["BAD_REQUEST", "INVALID", "IDEMPOTENCY_KEY_REQUIRED", "PAYLOAD_TOO_LARGE", "UNAUTHENTICATED",
               "FORBIDDEN", "NOT_FOUND", "METHOD_NOT_ALLOWED", "NOT_OPEN", "CLOSED", "PAUSED", "SOLD_OUT",
               "INSUFFICIENT_STOCK", "USER_CAP_EXCEEDED", "IDEMPOTENCY_KEY_REUSED", "INVALID_STATE",
               "RATE_LIMITED", "UNAVAILABLE", "INTERNAL", *oa.ERROR_CODES]
CAMPAIGN_STATES = ["scheduled", "open", "paused", "closed"]
STOREFRONT: list[dict[str, list[str]]] = [{"storefrontToken": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
ANYONE_WITH_TOKEN: list[dict[str, list[str]]] = [{"storefrontToken": []}, {"adminToken": []}]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{REF}/{kind}/{name}"}


def _int(low: int, high: int, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    if description:
        out["description"] = description
    return out


def _id(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": v.ID_REGEX, "minLength": 1, "maxLength": 64, "description": description}


_COUNT = {"type": "integer", "minimum": 0}
_DETAILS = ("INVALID: field, reason; INSUFFICIENT_STOCK: remaining; USER_CAP_EXCEEDED: allowed; "
            "RATE_LIMITED: retry_after_ms")
_TIME = {"type": "string", "format": "date-time"}


def _schemas() -> dict[str, Any]:
    units = _int(1, cm.MAX_UNITS)
    title = {"type": "string", "minLength": 1, "maxLength": 200}
    rate_limit = {
        "type": "object", "additionalProperties": False, "required": ["per_second", "burst"],
        "description": "per-user limit on reserve attempts (GCRA); default 5/s, burst 10",
        "properties": {"per_second": _int(1, 1_000_000), "burst": _int(1, 1_000_000)}}
    product = {
        "type": "object", "additionalProperties": False, "required": ["id", "title", "total_units"],
        "properties": {"id": _id("product id"), "title": title, "total_units": units, "user_cap_units": units}}
    definition_props: dict[str, Any] = {
        "id": _id("must equal the id in the path; may be left out"),
        "title": title,
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217"},
        "unit_price": _int(1, cm.MAX_PRICE, "minor currency units per unit (fen for CNY)"),
        "opens_at": {**_TIME, "description": "RFC 3339 with offset; must be before closes_at"},
        "closes_at": _TIME,
        "hold_seconds": _int(1, cm.MAX_HOLD_SECONDS, "how long a reservation holds its units unpaid"),
        "total_units": {**units, "description": "the tranche; default: the sum of the products'"},
        "user_cap_units": {**units, "description": "units one user may take over all products"},
        "products": {"type": "array", "minItems": 1, "maxItems": cm.MAX_PRODUCTS, "items": _ref("schemas", "Product")},
        "rate_limit": _ref("schemas", "RateLimit"),
        **oa.definition_properties(),
    }
    view_props = {**definition_props, "id": _id("campaign id"), "opens_at": _TIME,
                  "state": {"type": "string", "enum": CAMPAIGN_STATES}}
    return {
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["code", "message", "details"],
                "properties": {"code": {"type": "string", "enum": ERROR_CODES}, "message": {"type": "string"},
                               "details": {"type": "object", "description": _DETAILS}}}},
        },
        "RateLimit": rate_limit,
        "Product": product,
        "CampaignDefinition": {
            "type": "object", "additionalProperties": False,
            "required": ["title", "currency", "unit_price", "opens_at", "closes_at", "hold_seconds", "products"],
            "description": "a product's total_units may not exceed the tranche; product ids are unique",
            "properties": definition_props},
        "Campaign": {
            "type": "object",
            "required": ["id", "title", "currency", "unit_price", "opens_at", "closes_at", "hold_seconds",
                         "total_units", "products", "rate_limit", "state"],
            "properties": view_props},
        "ReserveRequest": {
            "type": "object", "additionalProperties": False, "required": list(v.RESERVE_FIELDS),
            "example": {"user_id": "u-1024", "product_id": "tiny-times-3", "units": 3,
                        "buyer": {"identity": "9f86d081", "ip": "203.0.113.7"}},
            "properties": {"user_id": _id("the buyer, as the storefront knows them"),
                           "product_id": _id("a product of the campaign"),
                           "units": _int(1, v.MAX_UNITS_PER_REQUEST),
                           "buyer": {**_ref("schemas", "Buyer"),
                                     "description": "buyer signals; under a campaign's identity, device or "
                                                    "network cap, that signal is required (422 INVALID naming "
                                                    "it); a replay must carry the same capped signals"}}},
        "ConfirmRequest": {
            "type": "object", "additionalProperties": False, "required": list(v.CONFIRM_FIELDS),
            "example": {"payment_ref": "alipay-2014032610000001"},
            "properties": {"payment_ref": {"type": "string", "minLength": 1, "maxLength": v.MAX_PAYMENT_REF,
                                           "pattern": v.PAYMENT_REF_REGEX,
                                           "description": "the payment provider's reference (printable ASCII)"}}},
        "Reservation": {
            "type": "object",
            "required": ["reservation_id", "campaign_id", "product_id", "user_id", "units", "amount", "state",
                         "expires_at"],
            "properties": {
                "reservation_id": _id("reservation id"), "campaign_id": _id("campaign id"),
                "product_id": _id("product id"), "user_id": _id("user id"), "units": _int(1, v.MAX_UNITS_PER_REQUEST),
                "amount": {"type": "integer", "minimum": 1, "description": "units x unit_price, minor units"},
                "state": {"type": "string", "enum": list(STATES)}, "expires_at": _TIME,
                "payment_ref": {"type": "string", "description": "when confirmed"},
                "confirmed_at": {**_TIME, "description": "when confirmed"}}},
        "Holdings": {
            "type": "object", "required": ["campaign_id", "user_id", "held_units", "confirmed_units", "products"],
            "properties": {
                "campaign_id": _id("campaign id"), "user_id": _id("user id"), "held_units": _COUNT,
                "confirmed_units": _COUNT,
                "products": {"type": "array", "items": {
                    "type": "object", "required": ["product_id", "held_units", "confirmed_units"],
                    "properties": {"product_id": _id("product id"), "held_units": _COUNT,
                                   "confirmed_units": _COUNT}}}}},
        "Stats": {
            "type": "object",
            "required": ["campaign_id", "state", "total_units", "sold_units", "held_units", "remaining_units"],
            "properties": {
                "campaign_id": _id("campaign id"), "state": {"type": "string", "enum": CAMPAIGN_STATES},
                "as_of": {**_TIME, "nullable": True}, "total_units": _COUNT, "sold_units": _COUNT,
                "held_units": _COUNT, "remaining_units": {"type": "integer"},
                "sell_through": {"type": "number", "minimum": 0},
                "buyers": _COUNT, "units_per_second_1m": {"type": "number", "minimum": 0},
                "projected_sellout_at": {**_TIME, "nullable": True},
                "rejections": {"type": "object", "additionalProperties": {"type": "integer"}},
                "ledger": {"type": "object"},
                "products": {"type": "array", "items": {"type": "object"}},
                "damaged_records": _COUNT}},
        "DashboardData": {
            "type": "object", "required": ["as_of", "campaigns", "dead_letters", "writers_alive"],
            "properties": {"as_of": {**_TIME, "nullable": True},
                           "campaigns": {"type": "array", "items": {"type": "object", "description": "a stats body "
                                         "with title, products[].title and writer"}},
                           "dead_letters": _COUNT, "writers_alive": _COUNT}},
        **oa.schemas(),
        "Status": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string", "enum": ["ok", "ready"]},
                                  "sweeper": {"type": "object", "description": (
                                      "/readyz: this worker's expiry sweeper; seconds since its last "
                                      "completed tick and its last tick in which no campaign failed")}}},
    }


_ERRORS = {
    "400": "BAD_REQUEST (not JSON, not an object) or IDEMPOTENCY_KEY_REQUIRED",
    "401": "UNAUTHENTICATED: no token, or an unknown one",
    "403": "FORBIDDEN: the wrong kind of token (storefront on an admin call, or the reverse)",
    "404": "NOT_FOUND: campaign, product or reservation",
    "405": "METHOD_NOT_ALLOWED (with Allow)",
    "409": "NOT_OPEN, CLOSED, PAUSED, SOLD_OUT, INSUFFICIENT_STOCK (details.remaining), USER_CAP_EXCEEDED "
           "(details.allowed), IDEMPOTENCY_KEY_REUSED, INVALID_STATE, QUEUE_NOT_OPEN, NOT_REGISTERED, "
           "BUYER_CAP_EXCEEDED (details.dimension, details.allowed)",
    "413": f"PAYLOAD_TOO_LARGE: a body over {v.MAX_BODY_BYTES} bytes "
           f"({v.MAX_DEFINITION_BYTES} for a campaign definition)",
    "422": "INVALID: a field unknown, missing, of the wrong type or out of bounds (details.field, details.reason)",
    "429": "RATE_LIMITED: too many reserve attempts by this user (Retry-After, seconds)",
    "500": "INTERNAL: a bug; logged with the request id",
    "503": "UNAVAILABLE: Redis unreachable or slow; retry (with the same Idempotency-Key)",
}
_RETRY_AFTER = {"description": "seconds to wait", "required": True,
                "schema": {"type": "integer", "minimum": 1}}


def _responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, text in _ERRORS.items():
        headers: dict[str, Any] = {"X-Request-Id": _ref("headers", "X-Request-Id")}
        if status in ("429", "503"):
            headers["Retry-After"] = _RETRY_AFTER
        if status == "405":
            headers["Allow"] = {"required": True, "schema": {"type": "string"}}
        out[f"E{status}"] = {"description": text, "headers": headers,
                             "content": {"application/json": {"schema": _ref("schemas", "Error")}}}
    return out


def _ok(description: str, schema: str, links: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "headers": {"X-Request-Id": _ref("headers", "X-Request-Id")},
                           "content": {"application/json": {"schema": _ref("schemas", schema)}}}
    if links:
        out["links"] = links
    return out


def _op(op_id: str, summary: str, ok: dict[str, Any], errors: str, *, security: list[Any] | None = None,
        params: tuple[str, ...] = (), body: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": dict(ok)}
    for status in errors.split():
        op["responses"][status] = _ref("responses", f"E{status}")
    op["responses"]["500"] = _ref("responses", "E500")
    if security is not None:
        op["security"] = security
    if params:
        op["parameters"] = [_ref("parameters", p) for p in params]
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref("schemas", body)}}}
    return op


def _links() -> dict[str, Any]:
    rid = {"cid": "$request.path.cid", "rid": "$response.body#/reservation_id"}
    return {"GetReservation": {"operationId": "getReservation", "parameters": rid},
            "ConfirmReservation": {"operationId": "confirmReservation", "parameters": rid},
            "CancelReservation": {"operationId": "cancelReservation", "parameters": rid}}


def _paths() -> dict[str, Any]:
    c, r = "/v1/campaigns/{cid}", "/v1/campaigns/{cid}/reservations"
    reservation = _ok("the reservation as it is now", "Reservation")
    admin_errors = "401 403 404 405 409 413 422 503"
    paths: dict[str, Any] = {
        c: {
            "get": _op("getCampaign", "the definition and its state", {"200": _ok("the campaign", "Campaign")},
                       "401 403 404 405 422 503", security=ANYONE_WITH_TOKEN, params=("cid",)),
            "put": _op("putCampaign", "create (201) or replace (200) a campaign that has not opened yet",
                       {"200": _ok("replaced", "Campaign"), "201": _ok("created", "Campaign")},
                       "400 " + admin_errors, security=ADMIN, params=("cid",), body="CampaignDefinition"),
        },
        f"{r}": {"post": _op(
            "reserve", "hold units of a product for a user",
            {"201": _ok("a new reservation", "Reservation", _links()),
             "200": _ok("an idempotent replay: the reservation this key made, as it is now", "Reservation",
                        _links())},
            "400 401 403 404 405 409 413 422 429 503", security=STOREFRONT,
            params=("cid", "Idempotency-Key", "Admission-Token"), body="ReserveRequest")},
        f"{r}/{{rid}}": {"get": _op(
            "getReservation", "one of the caller's reservations (another storefront's is 404, as an unknown id)",
            {"200": reservation}, "401 403 404 405 422 503", security=STOREFRONT, params=("cid", "rid"))},
        f"{r}/{{rid}}/confirm": {"post": _op(
            "confirmReservation", "payment succeeded: the hold becomes an order (idempotent per payment_ref)",
            {"200": reservation}, "400 401 403 404 405 409 413 422 503", security=STOREFRONT,
            params=("cid", "rid"), body="ConfirmRequest")},
        f"{r}/{{rid}}/cancel": {"post": _op(
            "cancelReservation", "release the hold (idempotent)", {"200": reservation},
            "400 401 403 404 405 409 413 422 503", security=STOREFRONT, params=("cid", "rid"))},
        f"{c}/users/{{uid}}": {"get": _op(
            "getHoldings", "a user's units held and confirmed through the calling storefront, per product "
            "(the caps count every storefront's)",
            {"200": _ok("holdings", "Holdings")}, "401 403 404 405 422 503", security=STOREFRONT,
            params=("cid", "uid"))},
        f"{c}/stats": {"get": _op("getStats", "sell-through", {"200": _ok("stats", "Stats")},
                                  "401 403 404 405 422 503", security=ANYONE_WITH_TOKEN, params=("cid",))},
        "/healthz": {"get": _op("healthz", "liveness", {"200": _ok("alive", "Status")}, "405", security=[])},
        "/readyz": {"get": _op("readyz", "Redis reachable, scripts loaded, the expiry sweeper ticking",
                               {"200": _ok("ready", "Status")}, "405 503", security=[])},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "this document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.0",
                                                        "headers": {"X-Request-Id": _ref("headers", "X-Request-Id")},
                                                        "content": {"application/json": {
                                                            "schema": {"type": "object"}}}}}}},
    }
    paths.update(_ops_paths())
    paths.update(oa.paths(_op, _ok, STOREFRONT, ADMIN))
    for action, text in (("pause", "stop reserves"), ("resume", "take reserves again"),
                         ("close", "close for good")):
        paths[f"{c}/{action}"] = {"post": _op(
            f"{action}Campaign", f"kill switch: {text}; takes effect for the next request",
            {"200": _ok("the campaign", "Campaign")}, admin_errors, security=ADMIN, params=("cid",))}
    return paths


def _ops_paths() -> dict[str, Any]:
    """The ops routes (``engine.ops.web``). On this listener the figures need the admin token; the
    ops listener (``flashsale serve --ops-port``) serves the same routes without one."""
    def body(media: str, description: str) -> dict[str, Any]:
        return {"description": description, "headers": {"X-Request-Id": _ref("headers", "X-Request-Id")},
                "content": {media: {"schema": {"type": "string"}}}}

    def campaign(description: str, schema: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": "campaign", "in": "query", "required": False, "description": description, "schema": schema}]

    metrics = _op("metrics", "Prometheus text format 0.0.4: every worker's figures summed",
                  {"200": body("text/plain", "the metrics")}, "401 403 405 503", security=ADMIN)
    page = _op("dashboard", "the live sell-through page; it holds no figures, and its script reads the admin "
               "token from the URL fragment (#token=...)", {"200": body("text/html", "the page")}, "405",
               security=[])
    page["parameters"] = campaign("the campaign the page shows, read by its script (absent: every one)",
                                  {"type": "string"})
    data = _op("dashboardData", "what the dashboard polls: each campaign's stats body with titles and the "
               "writer's figures", {"200": _ok("the snapshot", "DashboardData")}, "401 403 404 405 503",
               security=ADMIN)
    data["parameters"] = campaign("one campaign (absent or empty: every one)",
                                  {"type": "string", "maxLength": 64, "pattern": f"^({v.ID_REGEX[1:-1]})?$"})
    return {"/metrics": {"get": metrics}, "/dashboard": {"get": page}, "/dashboard/data": {"get": data}}


def _parameters() -> dict[str, Any]:
    def path(name: str, what: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": _id(what)}

    return {
        "cid": path("cid", "campaign id"), "rid": path("rid", "reservation id"), "uid": path("uid", "user id"),
        "ticket": path("ticket", "ticket id"),
        "Idempotency-Key": {
            "name": "Idempotency-Key", "in": "header", "required": True,
            "description": "1-255 printable ASCII characters, kept at least 24 h, scoped to the storefront: "
                           "a retry with the same key and body replays the first result (200); the same key "
                           "with another body is 409 IDEMPOTENCY_KEY_REUSED",
            "schema": {"type": "string", "minLength": 1, "maxLength": v.MAX_IDEMPOTENCY_KEY,
                       "pattern": v.IDEMPOTENCY_KEY_REGEX}},
        "Admission-Token": {
            "name": "Admission-Token", "in": "header", "required": False,
            "description": "queue mode: the admission token of this user's admitted ticket (required there: "
                           "403 ADMISSION_REQUIRED without it, ADMISSION_INVALID when it is not this user's "
                           "of this campaign, ADMISSION_EXPIRED past its expiry); ignored in open mode",
            "schema": {"type": "string", "minLength": 1}},
    }


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "flashsale", "version": "1.0.0",
                 "description": "Flash-sale reservations: units of a fixed unit_price, per-user caps, never "
                                "oversold. Money is integers in minor currency units. Every response carries "
                                "X-Request-Id (echoed when the request sent one, else generated)."},
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "parameters": _parameters(),
            "headers": {"X-Request-Id": {"description": "the request's id, as in the server's log lines",
                                         "required": True, "schema": {"type": "string", "minLength": 1}}},
            "securitySchemes": {
                "storefrontToken": {"type": "http", "scheme": "bearer", "description": "a storefront's token"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "the admin token"}},
        },
    }


@cache
def spec_bytes() -> bytes:
    return orjson.dumps(spec())
