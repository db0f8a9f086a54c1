"""The `flashsale` subcommands of engine.api (click commands, imported by engine.cli)."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from engine.errors import FlashsaleError
from engine.settings import Settings


async def _check_redis(settings: Settings) -> str:
    """Refuse, before any worker starts, a Redis that would lose acknowledged writes."""
    from engine.core.redis_client import connect, require_durable

    client = connect(settings.redis_url, max(settings.redis_timeout_s, 2.0))
    try:
        return (await require_durable(client, allow_volatile=settings.allow_volatile_redis)).describe()
    finally:
        await client.aclose()


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
def serve(host: str | None, port: int | None, workers: int | None, server: str | None, redis_url: str | None,
          allow_volatile_redis: bool, log_level: str | None) -> None:
    """The storefront HTTP API (API.md) until SIGTERM, which drains requests in flight."""
    from engine.api import server as http

    server = server or os.environ.get("FLASHSALE_SERVER") or http.DEFAULT_SERVER
    try:
        settings = Settings.from_env(host=host, port=port, workers=workers, server=server, redis_url=redis_url,
                                     allow_volatile_redis=True if allow_volatile_redis else None,
                                     log_level=log_level)
    except ValueError as exc:
        raise click.UsageError(f"bad FLASHSALE_* setting: {exc}") from exc
    if not settings.storefront_tokens or not settings.admin_token:
        click.echo("flashsale serve: warning: no storefront tokens or no admin token configured "
                   "(FLASHSALE_STOREFRONT_TOKENS, FLASHSALE_ADMIN_TOKEN); those calls will all be 401", err=True)
    from engine.admission.commands import serve_problem

    problem = asyncio.run(serve_problem(settings))
    if problem is not None:
        click.echo(f"flashsale serve: {problem}", err=True)
        sys.exit(2)
    try:
        profile = asyncio.run(_check_redis(settings))
    except FlashsaleError as exc:
        click.echo(f"flashsale serve: {exc}", err=True)
        sys.exit(1)
    click.echo(f"flashsale serve: {settings.server}, {settings.workers} worker(s) on "
               f"http://{settings.host}:{settings.port}; Redis: {profile}", err=True)
    _prepare_metrics(settings.workers)
    http.run(settings)


COMMANDS: list[click.Command] = [serve]
