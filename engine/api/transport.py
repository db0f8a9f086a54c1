"""One socket write per response under uvicorn, instead of two.

uvicorn's httptools protocol writes a response's status line and headers as soon as the app sends
``http.response.start``, then the body on ``http.response.body``: two ``send`` system calls per
response, each a full trip through the kernel's TCP stack, and on the reserve path those two
writes were the largest single cost of the worker's CPU time. ``HttpToolsProtocol`` here hands
uvicorn a transport that holds a write back until the next write or the next turn of the event
loop, whichever comes first, and sends what it holds in one call: head and body leave together,
bytes and their order unchanged. Everything else goes to the real transport; closing it sends
what is held first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base


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


class HttpToolsProtocol(_Base):
    """uvicorn's httptools protocol on a ``CoalescingTransport``, with one keep-alive timer per
    connection: uvicorn arms a new timer after every response and cancels it when the next request
    arrives (a timer handle made and torn down per request); here the connection notes when it
    went idle, and one timer, re-armed for the time left, closes it once it has been idle for
    ``timeout_keep_alive`` seconds, as uvicorn's does."""

    _idle_since: float | None = None  # loop time of the last response, None while serving
    _idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

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
