"""Running the app under an HTTP server: uvicorn (default) or granian, N worker processes on one port.

uvicorn is the default because it serves this app faster here: ``python -m scripts.bench.http``
measured more reservations per second and less CPU per request under uvicorn (httptools, uvloop)
than under granian, whose ASGI bridge hands every request, body and response between its Rust I/O
thread and the Python event loop (granian wins on a bare GET, not on a POST with a body).
``--server granian`` or ``FLASHSALE_SERVER=granian`` selects granian.

Under uvicorn, our protocol (``engine.api.transport``) takes CPU off every request: it answers the
reserve requests it can straight from the parser, without ASGI (the reserve lane,
``engine.api.lane``), and sends every other response's head and body in one write; and
``proxy_headers`` is off: flashsale stands behind a load balancer but reads no client address or
scheme, so parsing ``X-Forwarded-*`` on every request bought nothing. That protocol runs only on the
uvicorn releases it was tested with and not with ``FLASHSALE_FAST_PATH=0`` (``engine.fastpath``):
otherwise uvicorn's own httptools protocol serves every request through ASGI, with one log line
saying so at start.

Workers are separate processes that rebuild the app from the ``FLASHSALE_*`` environment
(``engine.api.app:factory``), so the parent exports its settings before spawning them. Both
servers drain on SIGTERM: they stop accepting, finish the requests in flight, run the lifespan
shutdown (the sweeper stops, the Redis client closes), and exit.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from engine import fastpath
from engine.api import logs
from engine.settings import Settings

SERVERS = ("uvicorn", "granian")
DEFAULT_SERVER = "uvicorn"  # the faster for this app (BENCHMARKS.md, "HTTP API vs the Starlette yardstick")
TARGET = "engine.api.app:factory"
BACKLOG = 4096  # a flash sale opens with a burst of connections
GRACEFUL_S = 10  # how long a stopping worker may take to finish its requests in flight


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (blocking); with ``settings.ops_port``, the ops listener beside
    (``engine.ops.listener``: one process of its own, stopped once the API has stopped)."""
    from engine.ops import listener

    os.environ.update(settings.to_env())
    ops = listener.start(settings) if settings.ops_port is not None else None
    try:
        serve_target(TARGET, server=settings.server, host=settings.host, port=settings.port,
                     workers=settings.workers, log_level=settings.log_level, factory=True)
    finally:
        if ops is not None:
            ops.stop()


def serve_target(target: str, *, server: str, host: str, port: int, workers: int, log_level: str = "INFO",
                 factory: bool = False) -> None:
    """Serve any ASGI app (``module:attr``) exactly as flashsale is served: the benchmarks' peer uses
    this too, so both stand behind the same HTTP stack."""
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}; choose one of {', '.join(SERVERS)}")
    lane = fastpath.serving()
    logs.configure(log_level)
    fastpath.notice(([lane] if server == "uvicorn" else []) + ([fastpath.metric_values()] if workers > 1 else []),
                    logging.getLogger("flashsale.serve"))
    if server == "uvicorn":
        import uvicorn

        http: Any = "httptools"  # uvicorn's own protocol: every request through ASGI
        if lane.on:
            from engine.api import transport

            http = transport.HttpToolsProtocol

        uvicorn.run(target, factory=factory, host=host, port=port, workers=workers,
                    loop="uvloop", http=http, lifespan="on", access_log=False,
                    log_config=logs.dict_config(log_level), backlog=BACKLOG,
                    timeout_graceful_shutdown=GRACEFUL_S, server_header=False, proxy_headers=False)
    else:
        from granian.constants import Interfaces, Loops
        from granian.server import Server

        Server(target, factory=factory, address=host, port=port, interface=Interfaces.ASGI,
               workers=workers, loop=Loops.uvloop, backlog=BACKLOG, log_access=False,
               log_dictconfig=logs.dict_config(log_level), workers_kill_timeout=GRACEFUL_S,
               websockets=False).serve()
