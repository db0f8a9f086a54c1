"""Request validation by hand: every check runs before anything reaches Redis.

No model library on the hot path: a reserve body is three fields, checked in a few microseconds.
The bounds below are the ones ``/openapi.json`` states (``engine.api.openapi`` reads them from here),
so the spec and the server cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from engine.admission.buyer import Buyer, parse_buyer
from engine.api.errors import ApiError, invalid
from engine.campaign import ID_PATTERN
from engine.core.requests import MAX_IDEMPOTENCY_KEY as MAX_IDEMPOTENCY_KEY  # one source for both layers
from engine.core.requests import MAX_PAYMENT_REF as MAX_PAYMENT_REF
from engine.errors import InvalidRequest

MAX_BODY_BYTES = 4096  # docs/API.md: a body over 4 KiB is refused with 413
MAX_DEFINITION_BYTES = 65536  # a campaign definition (admin): up to 64 products with long titles
MAX_UNITS_PER_REQUEST = 1_000_000  # units one reserve may ask for

ID_REGEX = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # engine.campaign.ID_PATTERN, anchored for JSON Schema
#: printable ASCII; no space at either end (HTTP servers strip it from header values)
IDEMPOTENCY_KEY_REGEX = "^[!-~]([ -~]*[!-~])?$"
PAYMENT_REF_REGEX = "^[ -~]+$"  # printable ASCII
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_REGEX[1:-1])
_PAYMENT_REF = re.compile(PAYMENT_REF_REGEX[1:-1])
_id_match = ID_PATTERN.fullmatch

RESERVE_FIELDS = ("user_id", "product_id", "units")
CONFIRM_FIELDS = ("payment_ref",)


Headers = dict[bytes, bytes]


def headers(request: Request) -> Headers:
    """The raw headers by lower-case name (ASGI's own spelling): one C-level pass, no ``Headers``
    object. A repeated header keeps its last value."""
    return dict(request.scope["headers"])


def too_large(limit: int) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"the body exceeds {limit} bytes; send less",
                    {"limit_bytes": limit})


async def read_body(request: Request, hdrs: Headers, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (declared or streamed).

    With a Content-Length, reading stops once that many bytes are in: granian, for one, sends a
    last empty message after the body, and waiting for it costs a second hop from its I/O thread.
    """
    declared = hdrs.get(b"content-length")
    expected = -1
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "BAD_REQUEST", "Content-Length is not a number")
        expected = int(declared)
        if expected > limit:
            raise too_large(limit)
        if expected == 0:
            return b""
    receive = request.receive
    message = await receive()
    body: bytes = message.get("body", b"")
    if message["type"] == "http.request" and (len(body) == expected or not message.get("more_body", False)):
        if len(body) > limit:
            raise too_large(limit)
        return body  # the usual case: the whole body in one message
    chunks = [body]
    size = len(body)
    while message.get("more_body", False) and size != expected:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    if size > limit:
        raise too_large(limit)
    return b"".join(chunks)


async def json_object(request: Request, hdrs: Headers, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object, or 400 BAD_REQUEST (not JSON, not an object) / 413."""
    return json_of(await read_body(request, hdrs, limit))


def json_of(body: bytes) -> dict[str, Any]:
    """A body read whole, as a JSON object, or 400 BAD_REQUEST (not JSON, not an object)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "BAD_REQUEST", "the body is not valid JSON (UTF-8); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "BAD_REQUEST", f"the body must be a JSON object, not {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def fields(data: dict[str, Any], expected: tuple[str, ...]) -> None:
    """Exactly the expected fields: the first unknown, then the first missing, is named."""
    if len(data) == len(expected) and all(k in data for k in expected):
        return
    for key in data:
        if key not in expected:
            raise invalid(key, "unknown field")
    for key in expected:
        if key not in data:
            raise invalid(key, "missing")


def ident(value: Any, field: str) -> str:
    if type(value) is not str or not _id_match(value):
        raise invalid(field, "must be a string matching [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    return value


def integer(value: Any, field: str, low: int, high: int) -> int:
    # bool is an int in Python, and a float or a string is not a count of units
    if type(value) is not int:
        raise invalid(field, f"must be an integer between {low} and {high}, not {_json_type(value)}")
    if not low <= value <= high:
        raise invalid(field, f"must be between {low} and {high}, got {value}")
    return value


def reserve_body(data: dict[str, Any]) -> tuple[str, str, int, Buyer | None]:
    """``{"user_id", "product_id", "units", "buyer"?}`` -> (user_id, product_id, units, buyer or
    None when the body has no ``buyer``); a malformed signal is 422 naming it (``buyer.ip``)."""
    raw_buyer = data.pop("buyer", None) if "buyer" in data else _ABSENT
    fields(data, RESERVE_FIELDS)
    user_id, product_id = ident(data["user_id"], "user_id"), ident(data["product_id"], "product_id")
    units = integer(data["units"], "units", 1, MAX_UNITS_PER_REQUEST)
    if raw_buyer is _ABSENT:
        return user_id, product_id, units, None
    try:
        return user_id, product_id, units, parse_buyer(raw_buyer)
    except InvalidRequest as exc:
        raise invalid(exc.field, exc.reason) from None


_ABSENT: Any = object()


def confirm_body(data: dict[str, Any]) -> str:
    """``{"payment_ref"}`` -> the payment reference (1..128 printable ASCII)."""
    fields(data, CONFIRM_FIELDS)
    ref = data["payment_ref"]
    if type(ref) is not str or not 1 <= len(ref) <= MAX_PAYMENT_REF or not _PAYMENT_REF.fullmatch(ref):
        raise invalid("payment_ref", f"must be 1 to {MAX_PAYMENT_REF} printable ASCII characters")
    return ref


def idempotency_key(hdrs: Headers) -> str:
    """The ``Idempotency-Key`` header: 400 when absent, 422 when malformed."""
    raw = hdrs.get(b"idempotency-key")
    if not raw:
        raise ApiError(400, "IDEMPOTENCY_KEY_REQUIRED",
                       "send an Idempotency-Key header (1 to 255 printable ASCII characters) with every "
                       "reservation, and the same key when you retry it", {"field": "Idempotency-Key"})
    key = raw.decode("latin-1")
    if len(key) > MAX_IDEMPOTENCY_KEY or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


def path_id(request: Request, name: str) -> str:
    """A path parameter that must be an id (campaign, reservation, user)."""
    return path_value(request.path_params[name], name)


def path_value(value: str, name: str) -> str:
    """A path segment that must be an id, as the router (or the reserve lane) cut it out."""
    if not _id_match(value):
        raise invalid(name, "must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    return value
