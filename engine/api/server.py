"""Running the app under an HTTP server: uvicorn (default) or granian, N worker processes on one port.

uvicorn is the default because it serves this app faster here: ``python -m scripts.bench.http``
measured more reservations per second and less CPU per request under uvicorn (httptools, uvloop)
than under granian, whose ASGI bridge hands every request, body and response between its Rust I/O
thread and the Python event loop (granian wins on a bare GET, see ``shared/LIMITS.md``, not on a
POST with a body). ``--server granian`` or ``FLASHSALE_SERVER=granian`` selects granian.

Workers are separate processes that rebuild the app from the ``FLASHSALE_*`` environment
(``engine.api.app:factory``), so the parent exports its settings before spawning them. Both
servers drain on SIGTERM: they stop accepting, finish the requests in flight, run the lifespan
shutdown (the sweeper stops, the Redis client closes), and exit.
"""

from __future__ import annotations

import os

from engine.api import logs
from engine.settings import Settings

SERVERS = ("uvicorn", "granian")
DEFAULT_SERVER = "uvicorn"  # the faster for this app (BENCHMARKS.md, "HTTP API vs the Starlette yardstick")
TARGET = "engine.api.app:factory"
BACKLOG = 4096  # a flash sale opens with a burst of connections
GRACEFUL_S = 10  # how long a stopping worker may take to finish its requests in flight


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (blocking)."""
    if settings.server not in SERVERS:
        raise ValueError(f"unknown server {settings.server!r}; choose one of {', '.join(SERVERS)}")
    os.environ.update(settings.to_env())
    if settings.server == "uvicorn":
        _uvicorn(settings)
    else:
        _granian(settings)


def _uvicorn(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(TARGET, factory=True, host=settings.host, port=settings.port, workers=settings.workers,
                loop="uvloop", http="httptools", lifespan="on", access_log=False,
                log_config=logs.dict_config(settings.log_level), backlog=BACKLOG,
                timeout_graceful_shutdown=GRACEFUL_S, server_header=False)


def _granian(settings: Settings) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    Server(TARGET, factory=True, address=settings.host, port=settings.port, interface=Interfaces.ASGI,
           workers=settings.workers, loop=Loops.uvloop, backlog=BACKLOG, log_access=False,
           log_dictconfig=logs.dict_config(settings.log_level), workers_kill_timeout=GRACEFUL_S,
           websockets=False).serve()
