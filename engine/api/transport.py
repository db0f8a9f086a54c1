"""uvicorn's httptools protocol, leaner: one socket write per response, and the reserve lane.

uvicorn's httptools protocol writes a response's status line and headers as soon as the app sends
``http.response.start``, then the body on ``http.response.body``: two ``send`` system calls per
response, each a full trip through the kernel's TCP stack, and on the reserve path those two
writes were the largest single cost of the worker's CPU time. ``HttpToolsProtocol`` here hands
uvicorn a transport that holds a write back until the next write or the next turn of the event
loop, whichever comes first, and sends what it holds in one call: head and body leave together,
bytes and their order unchanged. Everything else goes to the real transport; closing it sends
what is held first.

The reserve requests the lane takes (``engine.api.lane``) skip ASGI altogether: the protocol hands
the parsed headers and the body to the lane and writes its answer, head and body, in one write.
To uvicorn's protocol a lane request looks like any other request-response cycle (``LaneCycle``):
pipelining, flow control, keep-alive, a client that goes away and a graceful shutdown behave as
they do for the ASGI app's requests.

It uses uvicorn's private names, so it is imported only on a uvicorn release ``engine.fastpath``
lists as tested, and never with ``FLASHSALE_FAST_PATH=0``: uvicorn's own protocol serves then.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base

from engine.api.lane import ReserveLane
from engine.api.middleware import given_id
from engine.api.validation import Headers


class CoalescingTransport:
    """Wraps an ``asyncio.Transport``: consecutive writes within one loop turn become one write."""

    __slots__ = ("_held", "_loop", "_scheduled", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held = b""
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held:  # a head waiting for its body: both go now
            self._held = b""
            self.transport.write(held + data)
            return
        self._held = bytes(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def write_now(self, data: bytes) -> None:
        """Write what is held, then ``data``, in one call, now."""
        held = self._held
        if held:
            self._held = b""
            data = held + data
        self.transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        self._scheduled = False
        held = self._held
        if held:
            self._held = b""
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._held = b""
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + len(self._held)

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self.transport, name)


def lane_of(app: Any) -> ReserveLane | None:
    """The reserve lane of the app uvicorn serves (through any middleware it wrapped it in)."""
    for _ in range(8):
        lane = getattr(app, "reserve_lane", None)
        if isinstance(lane, ReserveLane):
            return lane
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class HttpToolsProtocol(_Base):
    """uvicorn's httptools protocol on a ``CoalescingTransport``, with the reserve lane, and one
    keep-alive timer per connection: uvicorn arms a new timer after every response and cancels it
    when the next request arrives (a timer handle made and torn down per request); here the
    connection notes when it went idle, and one timer, re-armed for the time left, closes it once it
    has been idle for ``timeout_keep_alive`` seconds, as uvicorn's does."""

    _idle_since: float | None = None  # loop time of the last response, None while serving
    _idle_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's concurrency limit and root path are decided in its own request path: keep to it then
        self.lane = lane_of(self.app) if self.limit_concurrency is None and not self.root_path else None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        lane = self.lane
        if lane is not None:
            parser = self.parser
            if parser.get_method() == b"POST" and parser.get_http_version() == "1.1" and not parser.should_upgrade():
                cid = lane.campaign_of(self.url.partition(b"?")[0])
                if cid is not None:
                    raw = self.headers
                    hdrs = dict(raw)
                    if lane.takes(hdrs):
                        self._start_lane(LaneCycle(self, lane, cid, hdrs, given_id(raw), parser.should_keep_alive()))
                        return
        super().on_headers_complete()

    def _start_lane(self, cycle: LaneCycle) -> None:
        """As uvicorn starts a request: now, or after the responses still owed on this connection."""
        existing = self.cycle
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)  # type: ignore[arg-type]
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]

    def _unset_keepalive_if_required(self) -> None:  # uvicorn calls it as data arrives
        self._idle_since = None

    def on_response_complete(self) -> None:  # uvicorn's, but for the keep-alive timer
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:  # pipelined requests waiting: start the next one
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing() or self._idle_since is None:
            return  # closed, or serving a request: its response arms the timer again
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left <= 0:
            self.timeout_keep_alive_handler()
        else:
            self._idle_timer = self.loop.call_later(left, self._idle_check)


class LaneCycle:
    """One request on the reserve lane, shaped like uvicorn's ``RequestResponseCycle`` where the
    protocol touches it: it gathers ``body`` until ``more_body`` is False, is told of a client gone
    (``disconnected``) or of a shutdown (``keep_alive`` False), and is started by ``run_asgi``.
    ``message_event`` is the cycle itself: a waiter woken by ``set()``, made only when the body is
    not all in yet. A client gone while its reserve waits for the engine cancels that wait, as a
    passed deadline does: a request still queued for its batch then leaves the queue
    (``engine.core.batcher``), and nothing is held for a client that is not there to hear of it."""

    __slots__ = ("_answering", "_waiter", "body", "cid", "disconnected", "given_id", "hdrs", "keep_alive",
                 "lane", "more_body", "protocol", "response_complete")

    def __init__(self, protocol: HttpToolsProtocol, lane: ReserveLane, cid: str, hdrs: Headers,
                 given_id: bytes | None, keep_alive: bool) -> None:
        self.protocol = protocol
        self.lane = lane
        self.cid = cid
        self.hdrs = hdrs
        self.given_id = given_id
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_complete = False
        self._waiter: asyncio.Future[None] | None = None
        self._answering: asyncio.Task[Any] | None = None  # the task awaiting the lane's answer

    @property
    def message_event(self) -> LaneCycle:
        return self

    def set(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.disconnected and self._answering is not None:
            self._answering.cancel()

    async def run_asgi(self, _app: Any) -> None:
        protocol = self.protocol
        while self.more_body and not self.disconnected:
            self._waiter = protocol.loop.create_future()
            await self._waiter
        self._waiter = None
        if self.disconnected:
            return  # gone before its body: nobody to answer
        self._answering = asyncio.current_task()
        try:
            status, body, extra, rid = await self.lane.answer(self.cid, self.hdrs, bytes(self.body), self.given_id)
        except asyncio.CancelledError:
            if self.disconnected:
                return  # cancelled by set(): the client is gone
            raise
        finally:
            self._answering = None
        if self.disconnected:
            return
        if protocol.flow.write_paused:
            await protocol.flow.drain()
        parts = [STATUS_LINE[status]]
        for name, value in protocol.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"content-type: application/json\r\ncontent-length: ", b"%d" % len(body),
                  b"\r\nx-request-id: ", rid, b"\r\n"]
        for name, value in extra:
            parts += [name, b": ", value, b"\r\n"]
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", body]
        transport = cast("CoalescingTransport", protocol.transport)  # connection_made wraps every one
        transport.write_now(b"".join(parts))
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()
