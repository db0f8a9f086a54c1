"""The one middleware: request id, metrics, and the last line of defence against a stack trace.

A pure ASGI middleware (not ``BaseHTTPMiddleware``, which costs a task and a stream per request):
it reads ``X-Request-Id`` (or makes one), returns it on every response, observes the request for
/metrics under its route template, and turns any exception that escaped the handler table into
a 500 in the error shape, logged with the request id.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api import logs
from engine.api.errors import INTERNAL_BODY
from engine.ops import metrics

log = logging.getLogger("flashsale.api")
_VALID_ID = re.compile(rb"[!-~]{1,128}")
UNMATCHED = "<unmatched>"  # the template of a path no route matched (keeps /metrics bounded)


def new_request_id() -> bytes:
    return os.urandom(8).hex().encode()


class RequestContext:
    def __init__(self, app: ASGIApp, templates: dict[Callable[..., Any], str]) -> None:
        self.app = app
        self.templates = templates  # endpoint -> route template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = b""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value
                break
        if not rid or not _VALID_ID.fullmatch(rid):
            rid = new_request_id()
        token = logs.request_id.set(rid.decode())
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            status = 500
            if not started:
                await send({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(INTERNAL_BODY)).encode()), (b"x-request-id", rid)]})
                await send({"type": "http.response.body", "body": INTERNAL_BODY})
        finally:
            template = self.templates.get(scope.get("endpoint"), UNMATCHED)  # type: ignore[arg-type]
            metrics.observe_request(template, scope["method"], status, time.perf_counter() - start)
            logs.request_id.reset(token)
