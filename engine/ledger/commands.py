"""The `flashsale` subcommands of engine.ledger: writer, reconcile, recover, export holders."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar, cast

import click
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine
from engine.core.redis_client import Client, connect_any, is_cluster, require_durable
from engine.errors import LedgerError, NotFound
from engine.ledger.config import Backoff, WriterSettings, default_consumer
from engine.ledger.export import holders_csv, holders_json
from engine.ledger.factory import sink_for
from engine.ledger.reconcile import Reconciliation, reconcile
from engine.ledger.recover import recover
from engine.ledger.sink import LedgerUnavailable, Sink
from engine.ledger.writer import Writer
from engine.settings import Settings

T = TypeVar("T")
BURST_DB_WAIT_S = 10.0  # how long `writer --burst` waits for an unreachable database before giving up
TOOL_TIMEOUT_S = 60.0  # a page of reconcile or recover may wait behind a busy Redis: allow it time
CONNECT_TIMEOUT_S = 5.0
CLUSTER_TIMEOUT_S = 10.0  # the writer's calls on a cluster (none of them blocks)
log = logging.getLogger("flashsale.writer")


def _run(make: Callable[[], Awaitable[T]]) -> T:
    from engine.cli import run_async  # late: engine.cli imports this module while it loads

    return run_async(make)


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--database-url", envvar="FLASHSALE_DATABASE_URL", default=None,
                     help="postgresql://user@host/db, sqlite:///relative.db or sqlite:////abs/path.db "
                          "(FLASHSALE_DATABASE_URL; default sqlite:///flashsale-ledger.db)")(f)
    return click.option("--redis-url", envvar="FLASHSALE_REDIS_URL", default=None,
                        help="Redis URL (FLASHSALE_REDIS_URL); default redis://127.0.0.1:6379/0")(f)


def _log_format(f: Callable[..., Any]) -> Callable[..., Any]:
    from engine.cli import log_format_option  # late: engine.cli imports this module while it loads

    return log_format_option(f)


def _sink(url: str) -> Sink:
    try:
        return sink_for(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--database-url") from None


@asynccontextmanager
async def _opened(settings: Settings, *, readonly: bool = False) -> AsyncIterator[tuple[Client, Sink]]:
    """Redis and the ledger; ``readonly``: the ledger must exist already (nothing is created)."""
    client = connect_any(settings.redis_url, TOOL_TIMEOUT_S)
    sink = _sink(settings.database_url)
    try:
        await sink.open(readonly=readonly)
        yield client, sink
    finally:
        await sink.close()
        await client.aclose()


async def _open_with_retry(sink: Sink, stopping: asyncio.Event, wait_s: float | None = None) -> bool:
    """Create or migrate the schema, waiting for the database if it is down; False if stopped first.
    After ``wait_s`` seconds (None: no bound) of a database still away, ``LedgerError``."""
    backoff = Backoff()
    give_up = None if wait_s is None else time.monotonic() + wait_s
    while not stopping.is_set():
        try:
            version = await sink.open()
            log.info("ledger %s at schema version %d", sink.url_scheme, version)
            return True
        except LedgerUnavailable as exc:
            if give_up is not None and time.monotonic() >= give_up:
                raise LedgerError(f"gave up after {wait_s:g} s: {exc}; start the database or fix "
                                  "--database-url (--db-wait sets the wait)") from exc
            log.warning("ledger unavailable at start, retrying: %s", exc)
            pause = backoff.next() if give_up is None else min(backoff.next(), max(give_up - time.monotonic(), 0))
            with suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
    return False


def _writer_client(url: str, ws: WriterSettings) -> Client:
    """One node: a client whose reads may block ``block_ms``. A cluster: the cluster client
    (its reads do not block, ``engine.ledger.streams``)."""
    if is_cluster(url, CONNECT_TIMEOUT_S):
        return connect_any(url, CLUSTER_TIMEOUT_S)
    return aioredis.Redis.from_url(url, socket_timeout=ws.block_ms / 1000 + 10,
                                   socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=0)


async def run_writer(settings: Settings, ws: WriterSettings, allow_volatile: bool,
                     db_wait_s: float | None = None) -> None:
    client = _writer_client(settings.redis_url, ws)
    sink = _sink(settings.database_url)
    stopping = asyncio.Event()
    writer: Writer | None = None

    def on_signal() -> None:
        stopping.set()
        if writer is not None:
            writer.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        # on a cluster, the node the client asks (the serve side checks every master)
        profile = await require_durable(cast("aioredis.Redis", client), allow_volatile=allow_volatile)
        log.info("Redis durability: %s", profile.describe())
        if await _open_with_retry(sink, stopping, db_wait_s):
            writer = Writer(client, sink, ws)
            if stopping.is_set():
                writer.stop()
            await writer.run()
    finally:
        await sink.close()
        await client.aclose()


@click.command("writer")
@_options
@click.option("--burst", is_flag=True, help="drain every stream, then exit")
@click.option("--allow-volatile-redis", is_flag=True,
              help="run even if Redis may lose acknowledged writes (no AOF, or eviction); demos and tests")
@click.option("--consumer", default=None, help="this writer's name in the consumer group; default HOST-PID")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="entries read per stream per call (what is read behind one commits with it)")
@click.option("--linger-ms", type=click.IntRange(0, 1000), default=20, show_default=True,
              help="after a read short of a full batch, wait this long: fewer, fuller commits under load")
@click.option("--claim-idle-ms", type=click.IntRange(50), default=5000, show_default=True,
              help="claim entries another writer left unacknowledged this long")
@click.option("--db-wait", "db_wait_s", type=click.FloatRange(0), default=None,
              help=f"seconds to wait for an unreachable database at start, then exit 1 "
                   f"(default: {BURST_DB_WAIT_S:g} with --burst, for ever without)")
@_log_format
def writer_command(database_url: str | None, redis_url: str | None, burst: bool, allow_volatile_redis: bool,
                   consumer: str | None, batch_size: int, linger_ms: int, claim_idle_ms: int,
                   db_wait_s: float | None) -> None:
    """The durable writer: every campaign's stream into the ledger, exactly once."""
    from engine.api import logs

    settings = Settings.from_env(redis_url=redis_url, database_url=database_url)
    logs.configure(settings.log_level)
    ws = WriterSettings(consumer=consumer or default_consumer(), batch_size=batch_size, linger_ms=linger_ms,
                        claim_idle_ms=claim_idle_ms, burst=burst)
    wait = db_wait_s if db_wait_s is not None else (BURST_DB_WAIT_S if burst else None)
    _run(lambda: run_writer(settings, ws, allow_volatile_redis or settings.allow_volatile_redis, wait))


async def _in_ledger(sink: Sink, campaign_id: str) -> bool:
    return (await sink.campaign_definition(campaign_id) is not None
            or await sink.last_entry(campaign_id) is not None)


async def _known(client: Client, sink: Sink, campaign_id: str) -> None:
    """NotFound unless Redis or the ledger knows the campaign (a typo is not a difference)."""
    listed = await cast("Awaitable[int]", client.sismember(keys.CAMPAIGNS, campaign_id))
    if listed or await _in_ledger(sink, campaign_id):
        return
    raise NotFound("campaign", campaign_id)


def _print(report: Reconciliation) -> None:
    for d in report.differences:
        click.echo(str(d))
    click.echo(report.summary())


@click.command("reconcile")
@click.argument("campaign_id")
@_options
def reconcile_command(campaign_id: str, database_url: str | None, redis_url: str | None) -> None:
    """Redis's counters against the ledger plus the undrained stream; exit 1 on any difference."""
    settings = Settings.from_env(redis_url=redis_url, database_url=database_url)

    async def go() -> Reconciliation:
        async with _opened(settings, readonly=True) as (client, sink):
            await _known(client, sink, campaign_id)
            return await reconcile(client, sink, campaign_id)

    report = _run(go)
    _print(report)
    sys.exit(0 if report.clean else 1)


@click.command("recover")
@click.argument("campaign_id")
@_options
def recover_command(campaign_id: str, database_url: str | None, redis_url: str | None) -> None:
    """Rebuild a campaign in Redis from the ledger after Redis lost data, then reconcile."""
    settings = Settings.from_env(redis_url=redis_url, database_url=database_url)

    async def go() -> Any:
        async with _opened(settings) as (client, sink):
            return await recover(Engine(cast("aioredis.Redis", client), settings), sink, campaign_id)

    r = _run(go)
    click.echo(f"campaign {campaign_id}: {r.orders} confirmed orders restored, {r.dropped_holds} unpaid holds "
               f"dropped, {r.idempotency_keys} idempotency keys rebuilt"
               f"{', definition reloaded from the ledger' if r.reloaded_definition else ''}")
    _print(r.reconciliation)
    if not r.reconciliation.clean:
        click.echo(f"campaign {campaign_id} stays refused (recovering): fix the differences and run recover again",
                   err=True)
        sys.exit(1)
    click.echo(f"campaign {campaign_id} serves again")


@click.group("export")
def export_group() -> None:
    """Export from the ledger."""


@export_group.command("holders")
@click.argument("campaign_id")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--database-url", envvar="FLASHSALE_DATABASE_URL", default=None,
              help="the ledger (FLASHSALE_DATABASE_URL)")
def export_holders(campaign_id: str, fmt: str, database_url: str | None) -> None:
    """The holder register (user, product, units, amount) of a campaign, from the ledger."""
    settings = Settings.from_env(database_url=database_url)

    async def go() -> str:
        sink = _sink(settings.database_url)
        try:
            await sink.open(readonly=True)
            holders = await sink.holders(campaign_id)
            if not holders and not await _in_ledger(sink, campaign_id):
                raise NotFound("campaign", campaign_id)
        finally:
            await sink.close()
        return holders_csv(holders) if fmt == "csv" else holders_json(campaign_id, holders)

    click.echo(_run(go), nl=False)


COMMANDS: list[click.Command] = [writer_command, reconcile_command, recover_command, export_group]
