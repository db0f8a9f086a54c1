"""The `flashsale` subcommands of engine.api (click commands, imported by engine.cli)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

import click

from engine import tokens
from engine.settings import Settings
from engine.tokens import TokenError


async def _check_redis(settings: Settings) -> str:
    """Refuse, before any worker starts, a Redis that would lose acknowledged writes."""
    from engine.core.redis_client import connect_any, require_durable

    client = connect_any(settings.redis_url, max(settings.redis_timeout_s, 2.0))
    try:
        return (await require_durable(client, allow_volatile=settings.allow_volatile_redis,
                                      replica_acks=settings.replica_acks)).describe()
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


def _prepare_metrics(settings: Settings) -> None:
    """Prometheus multiprocess mode must be set up before the workers fork (when ops provides it).

    Only with several workers or an ops listener (another process, which must read the worker's
    values): in that mode every value lives in a per-process file that a scrape reads back and sums,
    which one worker alone (a scrape sees its own registry) does not need.
    """
    from engine.ops import metrics

    if settings.workers < 2 and settings.ops_port is None:
        return
    prepare = getattr(metrics, "prepare_multiprocess", None)
    if callable(prepare):
        prepare()


def _tokens(entries: tuple[str, ...], path: str | None, admin: str | None) -> dict[str, Any]:
    """The tokens the flags give, each source replacing its environment variable (TokenError)."""
    env = os.environ
    listed = tokens.parse_list(",".join(entries), "--storefront-token") if entries else \
        tokens.parse_list(env.get("FLASHSALE_STOREFRONT_TOKENS", ""), "FLASHSALE_STOREFRONT_TOKENS")
    if path is None and env.get("FLASHSALE_STOREFRONT_TOKENS_FILE"):
        filed = tokens.read_file(env["FLASHSALE_STOREFRONT_TOKENS_FILE"], "FLASHSALE_STOREFRONT_TOKENS_FILE")
    else:
        filed = tokens.read_file(path, "--storefront-tokens-file") if path else ()
    return {"storefront_tokens": tokens.merge(listed, filed),
            "admin_token": tokens.check_token(admin, "--admin-token") if admin is not None else None}


def _ops_port_free(settings: Settings) -> str | None:
    """Why the ops listener could not listen, or None (checked once, so a clash says so at start)."""
    if settings.ops_port is None:
        return None
    if settings.ops_port == settings.port and settings.ops_host == settings.host:
        return "the ops port must differ from the API's port"
    try:
        with socket.create_server((settings.ops_host, settings.ops_port), reuse_port=False):
            return None
    except OSError as exc:
        return f"cannot listen on {settings.ops_host}:{settings.ops_port}: {exc.strerror or exc}"


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
@click.option("--storefront-token", "storefront_tokens", multiple=True, metavar="[NAME=]TOKEN",
              help="a storefront token, repeatable; replaces FLASHSALE_STOREFRONT_TOKENS (visible in ps: "
                   "prefer the file)")
@click.option("--storefront-tokens-file", default=None, metavar="PATH",
              help="storefront tokens, one [NAME=]TOKEN a line, # comments (FLASHSALE_STOREFRONT_TOKENS_FILE)")
@click.option("--admin-token", default=None, help="the admin token (FLASHSALE_ADMIN_TOKEN; visible in ps)")
@click.option("--ops-port", type=click.IntRange(1, 65535), default=None,
              help="also serve /metrics, /dashboard, /healthz, /readyz here, without a token (FLASHSALE_OPS_PORT)")
@click.option("--ops-host", default=None, help="address of the ops listener (FLASHSALE_OPS_HOST; default 127.0.0.1)")
@click.option("--replica-acks", type=click.IntRange(0, 16), default=None, metavar="N",
              help="acknowledge a write only once N replicas have it (WAIT after each batch): a failover then "
                   "loses no acknowledged reservation or confirm (FLASHSALE_REPLICA_ACKS; default 0)")
@_log_format
def serve(host: str | None, port: int | None, workers: int | None, server: str | None, redis_url: str | None,
          allow_volatile_redis: bool, log_level: str | None, storefront_tokens: tuple[str, ...],
          storefront_tokens_file: str | None, admin_token: str | None, ops_port: int | None,
          ops_host: str | None, replica_acks: int | None) -> None:
    """The storefront HTTP API (docs/API.md) until SIGTERM, which drains requests in flight."""
    from engine.api import logs
    from engine.api import server as http

    server = server or os.environ.get("FLASHSALE_SERVER") or http.DEFAULT_SERVER
    try:
        settings = Settings.from_env(host=host, port=port, workers=workers, server=server, redis_url=redis_url,
                                     allow_volatile_redis=True if allow_volatile_redis else None,
                                     log_level=log_level, ops_port=ops_port, ops_host=ops_host,
                                     replica_acks=replica_acks, check_tokens=True,
                                     **_tokens(storefront_tokens, storefront_tokens_file, admin_token))
    except TokenError as exc:  # one line naming the setting and the fix; never the token itself
        click.echo(f"flashsale serve: {exc}", err=True)
        sys.exit(2)
    # any other SettingsError (a ValueError) is one line and exit 2 through the CLI's error boundary
    if not settings.storefront_tokens or not settings.admin_token:
        click.echo("flashsale serve: warning: no storefront tokens or no admin token configured "
                   "(FLASHSALE_STOREFRONT_TOKENS, FLASHSALE_ADMIN_TOKEN); those calls will all be 401", err=True)
    clash = _ops_port_free(settings)  # first: a wrong --ops-port is a usage error (2) whatever holds the API port
    if clash is not None:
        click.echo(f"flashsale serve: --ops-port {settings.ops_port}: {clash}", err=True)
        sys.exit(2)
    _check_port(settings.host, settings.port)
    from engine.admission.commands import serve_problem

    problem = asyncio.run(serve_problem(settings))
    if problem is not None:
        click.echo(f"flashsale serve: {problem}", err=True)
        sys.exit(2)
    from engine.core.redis_client import TooFewReplicas

    try:
        profile = asyncio.run(_check_redis(settings))
    except TooFewReplicas as exc:  # a usage error: the flag asks what this Redis cannot give
        click.echo(f"flashsale serve: {exc}", err=True)
        sys.exit(2)
    logs.configure(settings.log_level)  # the same format as the server's and the workers' lines
    log = logging.getLogger("flashsale.serve")
    log.info("serving with %s, %d worker(s) on http://%s:%d; Redis: %s",
             settings.server, settings.workers, settings.host, settings.port, profile)
    if settings.ops_port is not None:
        log.info("ops listener (metrics, dashboard, no token) on http://%s:%d", settings.ops_host, settings.ops_port)
    _prepare_metrics(settings)
    signal.signal(signal.SIGTERM, _drained)  # restored by the server after its drain, then raised
    http.run(settings)


COMMANDS: list[click.Command] = [serve]
