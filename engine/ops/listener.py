"""The ops listener (``flashsale serve --ops-port N``): the ops routes alone, without a token.

It serves ``/metrics``, ``/dashboard`` (page, data and assets), ``/healthz`` and ``/readyz`` on its
own address, meant for the ops network only; no storefront or admin route exists there (404).

It runs as **one process of its own** beside the API workers, started and watched by
``flashsale serve`` (``OpsProcess``), whatever the number of workers and under either server:

- one scrape is one answer for every worker: ``serve`` puts metrics in multiprocess mode whenever
  an ops port is set, so each worker writes its values to files this process reads and sums
  (with one worker too, whose values would otherwise live in its own memory);
- ops traffic (a scrape every few seconds, a dashboard polling every second, each fanning out over
  every campaign in Redis) never waits in a storefront worker's event loop during a sale, and a
  dashboard left open costs one process's Redis reads, not one per worker;
- it runs no sweeper and writes nothing to Redis; if it dies, ``OpsProcess`` starts it again and
  the storefront listener is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.core import Engine
from engine.errors import StorageUnavailable
from engine.ops import web
from engine.settings import Settings

log = logging.getLogger("flashsale.ops")
RESTART_MIN_S = 1.0  # a listener that died is started again after this, doubling up to RESTART_MAX_S
RESTART_MAX_S = 30.0
STOP_S = 10.0  # how long stopping waits for the listener to finish its requests
STOPPED = (0, -signal.SIGTERM, -signal.SIGINT)  # exit codes of a listener that was told to stop
READY_TIMEOUT_S = 1.0  # /readyz answers 503 when Redis does not answer within this


async def healthz(_: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Redis answers this process and the scripts are loaded (what ``/readyz`` of the API checks)."""
    engine: Engine | None = getattr(request.state, "engine", None)
    if engine is None:
        raise StorageUnavailable("the ops listener is starting; retry shortly")
    try:
        await asyncio.wait_for(engine.ready(), READY_TIMEOUT_S)
    except TimeoutError:
        raise StorageUnavailable(f"Redis did not answer within {READY_TIMEOUT_S:.1f} s") from None
    return Response(b'{"status":"ready"}', media_type="application/json")


def routes() -> list[BaseRoute]:
    return [*web.routes(), Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


def create_app(settings: Settings) -> Any:
    """The ops app: the API's one middleware (request ids, the error shape, metrics), ops routes only."""
    from engine.api import logs
    from engine.api.app import FlashsaleApp

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        engine = Engine.from_settings(settings)
        app.state.engine = engine
        try:
            yield {"engine": engine, "settings": settings}
        finally:
            app.state.engine = None
            await engine.close()

    logs.configure(settings.log_level)
    return FlashsaleApp(routes=routes(), lifespan=lifespan)


def factory() -> Any:
    """For the HTTP servers (``--factory``): settings from the FLASHSALE_* environment."""
    return create_app(Settings.from_env(check_tokens=True))


def main() -> None:
    """``python -m engine.ops.listener``: serve the ops app on FLASHSALE_OPS_HOST:FLASHSALE_OPS_PORT."""
    from engine.api.server import serve_target

    settings = Settings.from_env()
    if settings.ops_port is None:
        sys.exit("engine.ops.listener: FLASHSALE_OPS_PORT is not set")
    serve_target("engine.ops.listener:factory", server=settings.server, host=settings.ops_host,
                 port=settings.ops_port, workers=1, log_level=settings.log_level, factory=True)


class OpsProcess:
    """The ops listener as a child of ``flashsale serve``: started before the API, started again if
    it dies (after RESTART_MIN_S, doubling to RESTART_MAX_S) but not if it was told to stop (a
    signal to the process group), stopped with SIGTERM after the API."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="flashsale-ops-listener", daemon=True)

    def start(self) -> OpsProcess:
        self._spawn()
        self._watcher.start()
        return self

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.proc = subprocess.Popen([sys.executable, "-m", "engine.ops.listener"], env=self.env)

    def _watch(self) -> None:
        delay = RESTART_MIN_S
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if code in STOPPED:  # told to stop (a Ctrl-C reaches the whole process group): stay stopped
                log.info("the ops listener stopped", extra={"exit_code": code})
                return
            if time.monotonic() - started > RESTART_MAX_S:  # it had been serving: no backoff
                delay = RESTART_MIN_S
            if self._stopping.wait(delay):
                return
            log.error("the ops listener exited with %s; starting it again", code,
                      extra={"exit_code": code, "restart_after_s": delay})
            delay = min(delay * 2, RESTART_MAX_S)
            self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(settings: Settings) -> OpsProcess:
    """Start the ops listener of ``settings`` (its port set) with the current environment."""
    return OpsProcess({**os.environ, **settings.to_env()}).start()


if __name__ == "__main__":
    main()
