"""``flashsale``: the command line. Each area adds its commands (``engine/<area>/commands.py``);
the core's own (campaigns, the sweeper) stand here.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from engine.campaign import load_file
from engine.core import Engine
from engine.core.sweeper import Sweeper
from engine.errors import FlashsaleError
from engine.settings import Settings

T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on uvloop when available; errors of ours exit 1 with their message."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return runner(make())  # type: ignore[no-any-return]
    except FlashsaleError as exc:
        click.echo(f"flashsale: {exc}", err=True)
        sys.exit(1)


def redis_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--redis-url", envvar="FLASHSALE_REDIS_URL", default=None,
                        help="Redis URL (FLASHSALE_REDIS_URL); default redis://127.0.0.1:6379/0")(f)


@click.group()
@click.version_option(package_name="flashsale")
def main() -> None:
    """flashsale: a high-concurrency flash-sale subscription engine."""


@main.group()
def campaign() -> None:
    """Manage campaigns."""


@campaign.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@redis_option
def campaign_load(path: str, redis_url: str | None) -> None:
    """Create (or replace, before it opens) the campaign defined in a TOML file."""
    c = load_file(path)

    async def go() -> bool:
        engine = Engine.from_settings(Settings.from_env(redis_url=redis_url))
        try:
            return await engine.load_campaign(c)
        finally:
            await engine.close()

    created = run_async(go)
    click.echo(f"campaign {c.id} {'created' if created else 'replaced'}")


@campaign.command("show")
@click.argument("campaign_id")
@redis_option
def campaign_show(campaign_id: str, redis_url: str | None) -> None:
    """Print a campaign's definition and state as JSON."""

    async def go() -> dict[str, Any]:
        engine = Engine.from_settings(Settings.from_env(redis_url=redis_url))
        try:
            return (await engine.view(campaign_id)).to_dict()
        finally:
            await engine.close()

    click.echo(orjson.dumps(run_async(go), option=orjson.OPT_INDENT_2).decode())


@campaign.command("archive")
@click.argument("campaign_id")
@redis_option
@click.option("--database-url", envvar="FLASHSALE_DATABASE_URL", default=None,
              help="the ledger (FLASHSALE_DATABASE_URL); default sqlite:///flashsale-ledger.db")
def campaign_archive(campaign_id: str, redis_url: str | None, database_url: str | None) -> None:
    """Remove a closed campaign's keys from Redis once its ledger holds every order (exit 1, with
    the reason, if not yet)."""
    from engine.ledger.archive import archive_command  # late: engine.ledger's commands import this module

    archive_command(campaign_id, Settings.from_env(redis_url=redis_url, database_url=database_url))


@main.command("sweeper")
@redis_option
@click.option("--interval", default=0.25, show_default=True, help="seconds between sweeps")
def sweeper(redis_url: str | None, interval: float) -> None:
    """Release expired holds continuously (the API workers run one too; several are safe)."""

    async def go() -> None:
        engine = Engine.from_settings(Settings.from_env(redis_url=redis_url))
        try:
            await Sweeper(engine, interval_s=interval).run()
        finally:
            await engine.close()

    run_async(go)


def _register() -> None:
    from engine.api.commands import COMMANDS as api
    from engine.ledger.commands import COMMANDS as ledger
    from engine.loadgen.commands import COMMANDS as loadgen
    from engine.ops.commands import COMMANDS as ops

    for command in (*api, *ledger, *ops, *loadgen):
        main.add_command(command)


_register()
