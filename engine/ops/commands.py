"""The `flashsale` subcommands of engine.ops (click commands, imported by engine.cli)."""

from __future__ import annotations

import asyncio
import contextlib

import click
import httpx
import orjson
from rich.console import Console

from engine.core import Engine
from engine.ops import tui
from engine.settings import Settings


async def _run(campaign_id: str, redis_url: str | None, url: str | None, token: str | None, watch: bool,
               interval: float, count: int | None, as_json: bool) -> None:
    console = Console()
    engine: Engine | None = None
    client: httpx.AsyncClient | None = None
    source: tui.StatsSource
    if url:
        client = httpx.AsyncClient()
        source = tui.HttpSource(client, url, token)
    else:
        engine = Engine.from_settings(Settings.from_env(redis_url=redis_url))
        source = tui.EngineSource(engine)
    try:
        if as_json:
            click.echo(orjson.dumps(await source.fetch(campaign_id), option=orjson.OPT_INDENT_2).decode())
        elif watch:
            await tui.watch(source, campaign_id, console, interval, count)
        else:
            await tui.show(source, campaign_id, console)
    finally:
        if engine is not None:
            await engine.close()
        if client is not None:
            await client.aclose()


@click.command("stats")
@click.argument("campaign_id")
@click.option("--redis-url", envvar="FLASHSALE_REDIS_URL", default=None,
              help="Redis URL (FLASHSALE_REDIS_URL); default redis://127.0.0.1:6379/0")
@click.option("--url", default=None, help="read from a running API at this base URL instead of Redis")
@click.option("--token", envvar="FLASHSALE_ADMIN_TOKEN", default=None,
              help="with --url: a storefront or admin token (FLASHSALE_ADMIN_TOKEN)")
@click.option("--watch", is_flag=True, help="refresh in place until Ctrl-C")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds between refreshes with --watch")
@click.option("--count", default=None, type=click.IntRange(min=1), hidden=True,
              help="stop after this many refreshes (scripts and tests)")
@click.option("--json", "as_json", is_flag=True, help="print the stats body as JSON (docs/API.md) and exit")
def stats(campaign_id: str, redis_url: str | None, url: str | None, token: str | None, watch: bool,
          interval: float, count: int | None, as_json: bool) -> None:
    """Sell-through of a campaign in the terminal: totals, products, rejections, ledger lag."""
    if url and not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r}: give the API's base URL with its scheme, e.g. http://127.0.0.1:8000",
                                 param_hint="--url")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(campaign_id, redis_url, url, token, watch, interval, count, as_json))


COMMANDS: list[click.Command] = [stats]
