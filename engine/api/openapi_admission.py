"""The admission part of ``/openapi.json`` (docs/API.md, v1.1: registrations, the waiting room), merged
into the document by ``engine.api.openapi``. Bounds come from the code that enforces them."""

from __future__ import annotations

from typing import Any

from engine import campaign as cm
from engine.admission import buyer

ERROR_CODES = ["QUEUE_NOT_OPEN", "NOT_REGISTERED", "BUYER_CAP_EXCEEDED", "ADMISSION_REQUIRED",
               "ADMISSION_INVALID", "ADMISSION_EXPIRED"]
TICKET_STATES = ["waiting", "admitted", "sold_out", "expired"]
_TIME = {"type": "string", "format": "date-time"}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", "minLength": 1, "maxLength": 64}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def definition_properties() -> dict[str, Any]:
    """The v1.1 fields of a campaign definition."""
    cap = {"type": "integer", "minimum": 1, "maximum": cm.MAX_UNITS}
    return {
        "eligibility": {"type": "string", "enum": list(cm.ELIGIBILITY),
                        "description": "registered: only pre-registered users may queue and reserve"},
        "admission": _ref("schemas", "Admission"),
        "identity_cap_units": {**cap, "description": "units one identity may take over all products"},
        "device_cap_units": {**cap, "description": "units one device may take"},
        "network_cap_units": {**cap, "description": "units one IPv4 /24 or IPv6 /48 may take"},
    }


def schemas() -> dict[str, Any]:
    signal = {"type": "string", "minLength": 1, "maxLength": buyer.MAX_SIGNAL, "pattern": buyer.SIGNAL_REGEX}
    join = {"type": "object", "additionalProperties": False, "required": ["user_id"],
            "example": {"user_id": "u-1024", "buyer": {"identity": "9f86d081", "ip": "203.0.113.7"}},
            "properties": {"user_id": {**_ID, "description": "the buyer, as the storefront knows them"},
                           "buyer": _ref("schemas", "Buyer")}}
    return {
        "Buyer": {"type": "object", "additionalProperties": False,
                  "description": "what the storefront knows of the person behind the user id; each optional",
                  "properties": {"identity": signal, "device": signal,
                                 "ip": {"type": "string", "minLength": 2, "maxLength": buyer.MAX_SIGNAL,
                                        "description": "an IPv4 or IPv6 address",
                                        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}}},
        "Admission": {
            "type": "object", "additionalProperties": False, "required": ["mode"],
            "description": "mode queue needs queue_opens_at (not after opens_at), admit_per_second, token_seconds",
            "properties": {
                "mode": {"type": "string", "enum": list(cm.ADMISSION_MODES)},
                "queue_opens_at": _TIME,
                "admit_per_second": {"type": "integer", "minimum": 0, "maximum": cm.MAX_ADMIT_PER_SECOND},
                "token_seconds": {"type": "integer", "minimum": 1, "maximum": cm.MAX_TOKEN_SECONDS},
                "seed_sha256": {"type": "string", "description": "read only: the committed seed's SHA-256"},
                "seed": {"type": "string", "description": "read only: the seed, once the order is fixed"}}},
        "RegistrationRequest": join,
        "QueueRequest": join,
        "Registration": {"type": "object", "required": ["campaign_id", "user_id", "state"],
                         "properties": {"campaign_id": _ID, "user_id": _ID,
                                        "state": {"type": "string", "enum": ["registered"]}}},
        "Ticket": {
            "type": "object",
            "required": ["ticket", "state", "position", "ahead", "estimated_wait_s", "poll_after_ms",
                         "admitted_at", "admission_token", "token_expires_at"],
            "properties": {
                "ticket": _ID, "state": {"type": "string", "enum": TICKET_STATES},
                "position": {"type": "integer", "minimum": 1, "nullable": True,
                             "description": "null until the opening"},
                "ahead": {"type": "integer", "minimum": 0, "nullable": True},
                "estimated_wait_s": {"type": "integer", "minimum": 0, "nullable": True},
                "poll_after_ms": {"type": "integer", "minimum": 0},
                "admitted_at": {**_TIME, "nullable": True,
                                "description": "the instant the position was admitted (admitted, expired)"},
                "admission_token": {"type": "string", "nullable": True,
                                    "description": "send it as Admission-Token with each reserve"},
                "token_expires_at": {**_TIME, "nullable": True}}},
        "AdmissionRate": {"type": "object", "additionalProperties": False, "required": ["admit_per_second"],
                          "properties": {"admit_per_second": {"type": "integer", "minimum": 0,
                                                              "maximum": cm.MAX_ADMIT_PER_SECOND,
                                                              "description": "0 pauses admission"}}},
    }


def paths(op: Any, ok: Any, storefront: Any, admin: Any) -> dict[str, Any]:
    """The admission paths, built with ``engine.api.openapi``'s own helpers."""
    c = "/v1/campaigns/{cid}"
    ticket = ok("the ticket as it is now", "Ticket")
    return {
        f"{c}/registrations": {"post": op(
            "register", "pre-register a user (before opens_at)",
            {"201": ok("registered now", "Registration"), "200": ok("already registered", "Registration")},
            "400 401 403 404 405 409 413 422 503", security=storefront, params=("cid",),
            body="RegistrationRequest")},
        f"{c}/queue": {"post": op(
            "joinQueue", "take a ticket in the waiting room (queue mode)",
            {"201": ok("a new ticket", "Ticket"), "200": ok("this user's (or identity's) existing ticket", "Ticket")},
            "400 401 403 404 405 409 413 422 503", security=storefront, params=("cid",), body="QueueRequest")},
        f"{c}/queue/{{ticket}}": {"get": op(
            "getTicket", "a ticket's state; another storefront's ticket is 404", {"200": ticket},
            "401 403 404 405 409 422 503", security=storefront, params=("cid", "ticket"))},
        f"{c}/admission": {"patch": op(
            "setAdmissionRate", "change the admission rate from now on (0 pauses)",
            {"200": ok("the admission block", "Admission")}, "400 401 403 404 405 409 413 422 503",
            security=admin, params=("cid",), body="AdmissionRate")},
    }
