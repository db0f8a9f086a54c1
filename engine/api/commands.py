"""The `flashsale` subcommands of engine.api (click commands, imported by engine.cli)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any

import click

from engine.settings import Settings


async def _check_redis(settings: Settings) -> str:
    """Refuse, before any worker starts, a Redis that would lose acknowledged writes."""
    from engine.core.redis_client import connect, require_durable

    client = connect(settings.redis_url, max(settings.redis_timeout_s, 2.0))
    try:
        return (await require_durable(client, allow_volatile=settings.allow_volatile_redis)).describe()
    finally:
        await client.aclose()


def _log_format(f: Any) -> Any:
    from engine.cli import log_format_option  # late: engine.cli imports this module while it loads

    return log_format_option(f)


def _check_port(host: str, port: int) -> None:
    """Fail before any worker starts if the address is taken (OSError EADDRINUSE: one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _drained(signum: int, frame: Any) -> None:
    """The server re-raises the SIGTERM it drained on once it is done: that is a clean exit."""
    raise SystemExit(0)


def _prepare_metrics(workers: int) -> None:
    """Prometheus multiprocess mode must be set up before the workers fork (when ops provides it).

    Only with several workers: in that mode every value lives in a per-process file that a scrape
    reads back and sums, which one worker (a scrape sees its own registry) does not need.
    """
    from engine.ops import metrics

    if workers < 2:
        return
    prepare = getattr(metrics, "prepare_multiprocess", None)
    if callable(prepare):
        prepare()


@click.command("serve")
@click.option("--host", default=None, help="address to bind (FLASHSALE_HOST; default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port (FLASHSALE_PORT; default 8000)")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="worker processes sharing the port (FLASHSALE_WORKERS; default 1)")
@click.option("--server", type=click.Choice(["uvicorn", "granian"]), default=None,
              help="HTTP server (FLASHSALE_SERVER; default uvicorn, the faster for this app: see BENCHMARKS.md)")
@click.option("--redis-url", default=None, help="Redis URL (FLASHSALE_REDIS_URL)")
@click.option("--allow-volatile-redis", is_flag=True, default=False,
              help="run on a Redis without AOF (demos, tests): a Redis restart then loses holds and orders")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (FLASHSALE_LOG_LEVEL)")
@_log_format
def serve(host: str | None, port: int | None, workers: int | None, server: str | None, redis_url: str | None,
          allow_volatile_redis: bool, log_level: str | None) -> None:
    """The storefront HTTP API (docs/API.md) until SIGTERM, which drains requests in flight."""
    from engine.api import logs
    from engine.api import server as http

    server = server or os.environ.get("FLASHSALE_SERVER") or http.DEFAULT_SERVER
    # a SettingsError (a ValueError) is one line and exit 2 through the CLI's error boundary
    settings = Settings.from_env(host=host, port=port, workers=workers, server=server, redis_url=redis_url,
                                 allow_volatile_redis=True if allow_volatile_redis else None,
                                 log_level=log_level)
    if not settings.storefront_tokens or not settings.admin_token:
        click.echo("flashsale serve: warning: no storefront tokens or no admin token configured "
                   "(FLASHSALE_STOREFRONT_TOKENS, FLASHSALE_ADMIN_TOKEN); those calls will all be 401", err=True)
    _check_port(settings.host, settings.port)
    profile = asyncio.run(_check_redis(settings))
    logs.configure(settings.log_level)  # the same format as the server's and the workers' lines
    logging.getLogger("flashsale.serve").info(
        "serving with %s, %d worker(s) on http://%s:%d; Redis: %s",
        settings.server, settings.workers, settings.host, settings.port, profile)
    _prepare_metrics(settings.workers)
    signal.signal(signal.SIGTERM, _drained)  # restored by the server after its drain, then raised
    http.run(settings)


COMMANDS: list[click.Command] = [serve]
