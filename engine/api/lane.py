"""The reserve lane: ``POST /v1/campaigns/{cid}/reservations`` answered without ASGI.

On launch day nearly every request is a reserve. Under ASGI each one costs a scope dict, a
request-response cycle with its ``asyncio.Event``, ``receive``/``send`` coroutines and their message
dicts, Starlette's ``Request``, the middleware's wrappers and the server's checks of every response
header: together more CPU than validating the request and reserving (BENCHMARKS.md, "HTTP API").

The lane takes the reserve requests it can answer exactly as the ASGI route would — POST to the
reserve path, HTTP/1.1, a ``Content-Length`` within the 4 KiB limit, no ``Transfer-Encoding``, no
``Expect``, no ``%`` in the path — and answers them through the same code: ``Api.reserve_head`` and
``Api.place`` (auth, validation, the engine call under its deadline), the one error table
(``errors.reply_to``), the request id, log context and /metrics series of ``RequestContext``.
Every other request, reserve or not, goes to the ASGI app unchanged. ``tests/api`` runs the same
checks over both paths.

This module decides and answers; reading the request off the parser and writing the response is
the server's side, ``engine.api.transport``.
"""

from __future__ import annotations

import time

from engine.api import logs
from engine.api.dispatch import PREFIX, RESERVE_TEMPLATE, SUFFIX
from engine.api.errors import reply_to
from engine.api.middleware import RequestIds
from engine.api.routes import Api
from engine.api.validation import MAX_BODY_BYTES, Headers
from engine.ops import metrics

_PREFIX = PREFIX.encode()
_SUFFIX = SUFFIX.encode()
_START = len(_PREFIX)
_END = -len(_SUFFIX)
_SERVING = f"POST {RESERVE_TEMPLATE}"

#: an answer: status, JSON body, extra headers, the request id
Answer = tuple[int, bytes, tuple[tuple[bytes, bytes], ...], bytes]


class ReserveLane:
    def __init__(self, api: Api, ids: RequestIds) -> None:
        self.api = api
        self.ids = ids
        self.served = 0  # requests answered here (this process)

    @staticmethod
    def campaign_of(path: bytes) -> str | None:
        """The campaign segment of a reserve path as sent (not yet validated), or None: not the
        reserve path, or one the ASGI route must see (percent-escapes, which it decodes)."""
        if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
            cid = path[_START:_END]
            if cid and b"/" not in cid and b"%" not in cid and cid.isascii():
                return cid.decode("ascii")
        return None

    @staticmethod
    def takes(hdrs: Headers) -> bool:
        """Whether the lane answers a request with these headers (lower-case names, the last of a
        repeated one): its body announced by a Content-Length within the limit, nothing to negotiate."""
        declared = hdrs.get(b"content-length")
        return (declared is not None and declared.isdigit() and int(declared) <= MAX_BODY_BYTES
                and b"transfer-encoding" not in hdrs and b"expect" not in hdrs)

    async def answer(self, cid: str, hdrs: Headers, body: bytes, given_id: bytes | None) -> Answer:
        """The response to one reserve request, whole: nothing raises out of here but cancellation.
        ``given_id`` is the request's first ``X-Request-Id`` (``middleware.given_id``), as over ASGI."""
        start = time.perf_counter()
        self.served += 1
        rid = self.ids.of(given_id)
        logs.request_id.set(rid.decode())  # this request's own task: nothing to reset
        extra: tuple[tuple[bytes, bytes], ...] = ()
        try:
            api = self.api
            storefront, cid, key, token = api.reserve_head(hdrs, cid)
            status, out = await api.place(storefront, cid, key, body, token)
        except Exception as exc:
            status, out, extra = reply_to(exc, _SERVING)
        metrics.observe_request(RESERVE_TEMPLATE, "POST", status, time.perf_counter() - start)
        return status, out, extra, rid
