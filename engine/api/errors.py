"""Every error the API answers, in one table: exception -> HTTP status, code, the one error shape.

    {"error": {"code": "SOLD_OUT", "message": "human-readable", "details": {}}}

``ApiError`` is what the HTTP layer itself raises (auth, validation, body size); the engine's
exceptions (``engine.errors``) arrive as they are and are mapped here, nowhere else. Anything not
in the table is a bug: the request middleware answers 500 ``INTERNAL`` in the same shape and logs
it with the request id; a stack trace never reaches a client.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from engine import errors as e

log = logging.getLogger("flashsale.api")

#: Rejections of the engine and their HTTP status (docs/API.md, "Errors").
REJECTION_STATUS: dict[type[e.Rejected], int] = {
    e.InvalidRequest: 422,
    e.NotFound: 404,
    e.NotOpen: 409,
    e.Closed: 409,
    e.Paused: 409,
    e.SoldOut: 409,
    e.InsufficientStock: 409,
    e.UserCapExceeded: 409,
    e.IdempotencyKeyReused: 409,
    e.InvalidState: 409,
    e.RateLimited: 429,
    e.QueueNotOpen: 409,
    e.NotRegistered: 409,
    e.BuyerCapExceeded: 409,
    e.AdmissionRefused: 403,
}

_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
_JSON = (b"content-type", b"application/json")


class ApiError(Exception):
    """A refusal decided by the HTTP layer (auth, validation, size), before the engine is asked."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


def invalid(field: str, reason: str, status: int = 422) -> ApiError:
    """422 INVALID naming the field and what is wrong with it."""
    return ApiError(status, "INVALID", f"{field}: {reason}", {"field": field, "reason": reason})


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": details or {}}})


def public_code(exc: BaseException) -> str:
    """The docs/API.md code an exception is answered with (metrics count outcomes by it)."""
    if isinstance(exc, e.Rejected):
        return exc.code
    if isinstance(exc, e.StorageUnavailable):
        return "UNAVAILABLE"
    if isinstance(exc, ApiError):
        return exc.code
    return "INTERNAL"


# -- the handlers ------------------------------------------------------------------------------

class Reply(NamedTuple):
    """An error answer, ready for any transport: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _reply(status: int, code: str, message: str, details: Mapping[str, Any] | None = None,
           headers: Mapping[str, str] | None = None) -> Reply:
    extra = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    return Reply(status, error_body(code, message, details), extra)


def _api_error(exc: Exception) -> Reply:
    assert isinstance(exc, ApiError)
    return _reply(exc.status, exc.code, exc.message, exc.details, exc.headers)


def _rejected(exc: Exception) -> Reply:
    assert isinstance(exc, e.Rejected)
    status = next((s for cls, s in REJECTION_STATUS.items() if isinstance(exc, cls)), 409)
    headers = None
    if isinstance(exc, e.RateLimited):
        headers = {"Retry-After": str(retry_after_seconds(exc.retry_after_ms))}
    return _reply(status, exc.code, exc.message, exc.details, headers)


class _Throttle:
    """At most one log line per ``every_s`` for a repeated condition (an outage answers thousands of
    requests a second with 503; the log needs to say so once a second, with how many)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.last = 0.0
        self.suppressed = 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.suppressed += 1
            return
        log.warning("%s", message, extra={"status": 503, "similar_since_last": self.suppressed})
        self.last, self.suppressed = now, 0


_outage = _Throttle()


def _unavailable(exc: Exception) -> Reply:
    _outage.warn(f"answering 503 UNAVAILABLE: {exc}")
    return _reply(503, "UNAVAILABLE", f"{exc}", {}, {"Retry-After": "1"})


def _invalid_definition(exc: Exception) -> Reply:
    assert isinstance(exc, e.InvalidDefinition)
    return _reply(422, "INVALID", f"{exc.field}: {exc.reason}", {"field": exc.field, "reason": exc.reason})


def _http(exc: Exception) -> Reply:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "BAD_REQUEST")
    message = {404: "no such path; see /openapi.json",
               405: "method not allowed on this path; see the Allow header"}.get(exc.status_code, exc.detail)
    return _reply(exc.status_code, code, message, {}, exc.headers)


def _disconnect(_: Exception) -> Reply:
    return _reply(400, "BAD_REQUEST", "the client went away before the body was read")


def _damaged(exc: Exception) -> Reply:
    log.error("answering 500 INTERNAL: %s", exc, extra={"error": type(exc).__name__})
    return INTERNAL


def _other_flashsale(exc: Exception) -> Reply:
    log.error("unexpected engine error: %s", exc, extra={"error": type(exc).__name__})
    return INTERNAL  # a bug like any other (docs/API.md): a retry will not help


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Exception], Reply]] = {
    ApiError: _api_error,
    e.Rejected: _rejected,
    e.StorageUnavailable: _unavailable,
    e.InvalidDefinition: _invalid_definition,
    e.DamagedRecord: _damaged,
    HTTPException: _http,
    ClientDisconnect: _disconnect,
    e.FlashsaleError: _other_flashsale,
}
"""The exception-handler table; lookup follows each exception's MRO, most specific first. What is
not here (a bug) is answered 500 ``INTERNAL`` and logged with the request id (``reply_to``)."""


def reply_to(exc: Exception, serving: str) -> Reply:
    """The answer to ``exc``: the table's, or for a bug ``INTERNAL``, the error logged with its
    traceback (``serving`` names the request: ``POST /v1/…``). The ASGI middleware and the
    reserve lane both answer errors through here."""
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return handler(exc)
    log.error("unhandled error serving %s", serving, exc_info=exc)
    return INTERNAL


def head(body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    """The headers of a JSON answer, as ASGI's ``http.response.start`` carries them."""
    return [_JSON, (b"content-length", b"%d" % len(body)), *extra]


def retry_after_seconds(ms: int) -> int:
    """``Retry-After`` is whole seconds: round up, and never 0 (which would invite a retry storm)."""
    return max(1, math.ceil(ms / 1000))


#: the answer to a bug: nothing about it reaches the client
INTERNAL = Reply(500, error_body("INTERNAL", "internal error; it has been logged with the request id"))
