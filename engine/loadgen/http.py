"""A lean HTTP/1.1 client for load generation: one keep-alive connection per virtual user.

httpx spends more CPU per request than the server it measures (BENCHMARKS.md, "Design
measurements"); a load generator sharing the machine's cores with that server cannot afford it.
This client writes requests as preformatted bytes on an asyncio ``Protocol`` and parses responses
with httptools (llhttp, C), so a request costs a small fraction of httpx's CPU.
One request at a time per connection, as a browser does with HTTP/1.1 keep-alive.

    conn = Connection("127.0.0.1", 8000)
    resp = await conn.request(b"GET", "/healthz", timeout_s=5)
    resp.status, resp.json()
    conn.close()

A timeout or a broken connection raises ``TransportError``; the connection is closed and the next
request opens a new one (an answer arriving late must never be read as the next request's).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

import httptools
import orjson

JSON_HEADERS = b"Content-Type: application/json\r\n"


class TransportError(Exception):
    """No HTTP answer: connection refused or lost, or no answer within the timeout."""


class Response:
    """One answer; its JSON body is parsed once, on first use."""

    __slots__ = ("_data", "body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        self._data: Any = _UNPARSED

    def json(self) -> Any:
        if self._data is _UNPARSED:
            try:
                self._data = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                self._data = None
        return self._data

    def error(self) -> dict[str, Any]:
        """``error`` of a docs/API.md error body ({} when there is none)."""
        data = self.json()
        err = data.get("error") if isinstance(data, dict) else None
        return err if isinstance(err, dict) else {}

    def error_code(self) -> str | None:
        code = self.error().get("code")
        return code if isinstance(code, str) else None

    def details(self) -> dict[str, Any]:
        d = self.error().get("details")
        return d if isinstance(d, dict) else {}

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait after a 429, from ``details.retry_after_ms`` (no header parsing on the hot path)."""
        ms = self.details().get("retry_after_ms")
        return ms / 1000.0 if isinstance(ms, int | float) else None


_UNPARSED: Any = object()


class _Protocol(asyncio.Protocol):
    """Feeds bytes to an httptools parser; resolves one future per response."""

    __slots__ = ("_body", "_parser", "_waiter", "closed", "keep_alive", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._body: list[bytes] = []
        self.closed = False
        self.keep_alive = True

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"unparseable HTTP response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(TransportError(f"connection lost: {exc or 'closed by the server'}"))

    # httptools callbacks (no on_header: a Python call per header costs more than the rest)
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        resp = Response(self._parser.get_status_code(), b"".join(self._body))
        self._body = []
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(resp)

    # ours
    def _fail(self, exc: Exception) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Response]:
        assert self.transport is not None
        fut: asyncio.Future[Response] = loop.create_future()
        self._waiter = fut
        self.transport.write(data)
        return fut

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Requester(Protocol):
    """A ``Connection``, or a ``Pool`` of them."""

    async def request(self, method: bytes, path: str, body: bytes | None = None, *,
                      headers: bytes = b"", timeout_s: float = 10.0) -> Response: ...

    def close(self) -> None: ...


class Pool:
    """A few keep-alive connections shared by many callers, one request each at a time: for crowds
    that mostly wait (a waiting room) and need no connection of their own."""

    def __init__(self, host: str, port: int, size: int, *, token: str | None = None) -> None:
        self._all = [Connection(host, port, token=token) for _ in range(size)]
        self._free: asyncio.Queue[Connection] = asyncio.Queue()
        for c in self._all:
            self._free.put_nowait(c)

    async def request(self, method: bytes, path: str, body: bytes | None = None, *,
                      headers: bytes = b"", timeout_s: float = 10.0) -> Response:
        conn = await self._free.get()
        try:
            return await conn.request(method, path, body, headers=headers, timeout_s=timeout_s)
        finally:
            self._free.put_nowait(conn)

    def close(self) -> None:
        for c in self._all:
            c.close()


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened on demand after an error."""

    __slots__ = ("_head", "_proto", "host", "port")

    def __init__(self, host: str, port: int, *, token: str | None = None) -> None:
        self.host = host
        self.port = port
        self._proto: _Protocol | None = None
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._head = f"Host: {host}:{port}\r\n{auth}".encode()

    async def _open(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> _Protocol:
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(_Protocol, self.host, self.port), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        return proto

    async def request(self, method: bytes, path: str, body: bytes | None = None, *,
                      headers: bytes = b"", timeout_s: float = 10.0) -> Response:
        """Send one request; ``headers`` are extra preformatted ``Name: value\\r\\n`` lines."""
        loop = asyncio.get_running_loop()
        proto = self._proto
        if proto is None or proto.closed:
            proto = self._proto = await self._open(loop, timeout_s)
        parts = [method, b" ", path.encode(), b" HTTP/1.1\r\n", self._head, headers]
        if body is not None:
            parts += [JSON_HEADERS, b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body]
        else:
            parts.append(b"\r\n")
        fut = proto.send(b"".join(parts), loop)
        timer = loop.call_later(timeout_s, _expire, fut)
        try:
            resp = await fut
        except BaseException:
            proto.abort()
            self._proto = None
            raise
        finally:
            timer.cancel()
        if not proto.keep_alive:
            proto.abort()
            self._proto = None
        return resp

    def close(self) -> None:
        if self._proto is not None:
            self._proto.abort()
            self._proto = None


def _expire(fut: asyncio.Future[Response]) -> None:
    if not fut.done():
        fut.set_exception(TransportError("no answer within the timeout"))


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/prefix`` -> (host, port, prefix). Plain HTTP only (loopback load)."""
    if not url.startswith("http://"):
        raise ValueError(f"URL {url!r}: give the API's plain http:// URL, e.g. http://127.0.0.1:8000 "
                         "(the load generator speaks plain HTTP only)")
    rest = url[len("http://"):]
    hostport, _, prefix = rest.partition("/")
    host, _, port = hostport.partition(":")
    if port and not port.isdigit():
        raise ValueError(f"URL {url!r}: the port must be a number, e.g. http://127.0.0.1:8000")
    return host or "127.0.0.1", int(port or 80), ("/" + prefix).rstrip("/")
