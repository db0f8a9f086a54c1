"""The one middleware: request id, the exception table, metrics, and no stack trace to a client.

A pure ASGI middleware (not ``BaseHTTPMiddleware``, which costs a task and a stream per request),
and the only layer between the server and the router: the app drops Starlette's two default
exception middlewares for it (``engine.api.app.FlashsaleApp``), since it answers every exception
itself, from the one table in ``engine.api.errors``. Per request it reads ``X-Request-Id`` (or
makes one), returns it on every response, binds it to the log lines, and observes the request for
/metrics under its route template, and writes the audit line of an admin request
(``engine.api.audit``). An exception not in the table is a bug: 500 ``INTERNAL`` in the
error shape, logged with the request id and the trace (the trace goes to the log, never the client).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api import audit, logs
from engine.api.errors import head, reply_to
from engine.ops import metrics

log = logging.getLogger("flashsale.api")
_VALID_ID = re.compile(rb"[!-~]{1,128}")
UNMATCHED = "<unmatched>"  # the template of a path no route matched (keeps /metrics bounded)


def given_id(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The first ``X-Request-Id`` of the raw headers (lower-case names), as both request paths read it.

    A repeated one is answered with the first: the id nearest the client, since a proxy that adds
    its own appends it; ``RequestIds.of`` then keeps it only if it is a valid id."""
    for key, value in headers:
        if key == b"x-request-id":
            return value
    return None


class RequestIds:
    """Ids unique across processes and restarts: a random prefix per process, then a counter
    (a syscall per request for 64 random bits would cost more than the rest of the middleware)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex() + "-"
        self._count = itertools.count(1)

    def __call__(self) -> bytes:
        return f"{self._prefix}{next(self._count):x}".encode()

    def of(self, given: bytes | None) -> bytes:
        """The request's id: its ``X-Request-Id`` when that is 1..128 visible ASCII, else a new one."""
        if given and _VALID_ID.fullmatch(given):
            return given
        return self()


class RequestContext:
    def __init__(self, app: ASGIApp, templates: dict[Callable[..., Any], str],
                 audited: dict[tuple[str, str], str] | None = None) -> None:
        self.app = app
        self.templates = templates  # endpoint -> route template
        self.audited = audited or {}  # (method, template) -> action with an audit line (engine.api.audit)
        self.new_id = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = self.new_id.of(given_id(scope["headers"]))
        token = logs.request_id.set(rid.decode())
        status = 500
        started = False

        def send_with_id(message: Message) -> Awaitable[None]:  # no coroutine of its own: a frame less
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            return send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # part of the answer is out: nothing more can be said to the client
                log.exception("unhandled error serving %s %s", scope["method"], scope["path"])
                status = 500
            else:
                reply = reply_to(exc, f"{scope['method']} {scope['path']}")
                await send_with_id({"type": "http.response.start", "status": reply.status,
                                    "headers": head(reply.body, reply.headers)})
                await send_with_id({"type": "http.response.body", "body": reply.body})
        finally:
            template = self.templates.get(scope.get("endpoint"), UNMATCHED)  # type: ignore[arg-type]
            metrics.observe_request(template, scope["method"], status, time.perf_counter() - start)
            action = self.audited.get((scope["method"], template))
            if action is not None:
                audit.record(action, scope, status)
            logs.request_id.reset(token)
