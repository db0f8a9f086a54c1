"""``flashsale``: the command line. Each area adds its commands (``engine/<area>/commands.py``);
the core's own (campaigns, the sweeper) stand here.

Every command runs behind one error boundary (``engine.clierrors``): an error a user can make is
one or two lines on stderr naming the fix and a non-zero exit (2 for usage errors), never a
traceback unless ``flashsale --debug`` or ``FLASHSALE_DEBUG=1`` asks for one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

import click
import orjson

from engine.campaign import Campaign, load_file, ms_to_rfc3339
from engine.clierrors import USAGE, CliError, fail
from engine.core import Engine
from engine.core.sweeper import Sweeper
from engine.errors import InvalidDefinition, InvalidState
from engine.settings import Settings

T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on uvloop when available (its errors meet the CLI's error boundary)."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return runner(make())  # type: ignore[no-any-return]


def redis_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--redis-url", envvar="FLASHSALE_REDIS_URL", default=None,
                        help="Redis URL (FLASHSALE_REDIS_URL); default redis://127.0.0.1:6379/0")(f)


def _guarded(cmd: click.Command) -> None:
    """Route the errors of ``cmd`` (and of every subcommand under it) through ``clierrors.fail``,
    inside the command's own context, so the message names the command (``flashsale reconcile:``)."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _guarded(sub)
    callback = cmd.callback
    if callback is None or getattr(callback, "__flashsale_guarded__", False):
        return

    @functools.wraps(callback)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            fail(exc)

    guarded.__flashsale_guarded__ = True  # type: ignore[attr-defined]
    cmd.callback = guarded


class Flashsale(click.Group):
    """The top-level group: a usage error is two lines (what is wrong, where help is), not click's four."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "flashsale"
            click.echo(f"{where}: {exc.format_message()}\ntry '{where} --help'", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("flashsale: aborted", err=True)
            sys.exit(130)
        sys.exit(rv if type(rv) is int else 0)


def _set_env(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def set_it(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:
            os.environ[name] = "1" if value is True else str(value)  # child processes inherit it
        return value

    return set_it


def log_format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-format json|plain`` (FLASHSALE_LOG_FORMAT): the format of every log line this process
    and its children write (JSON by default)."""
    return click.option("--log-format", type=click.Choice(["json", "plain"]), default=None, expose_value=False,
                        is_eager=True, callback=_set_env("FLASHSALE_LOG_FORMAT"),
                        help="log lines as JSON objects (default) or plain text (FLASHSALE_LOG_FORMAT)")(f)


@click.group(cls=Flashsale)
@click.version_option(package_name="flashsale")
@click.option("--debug", is_flag=True, default=False, expose_value=False, is_eager=True,
              callback=_set_env("FLASHSALE_DEBUG"),
              help="show the traceback of an error (FLASHSALE_DEBUG=1)")
def main() -> None:
    """flashsale: a high-concurrency flash-sale subscription engine."""


@main.group()
def campaign() -> None:
    """Manage campaigns."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """``30s``, ``5m``, ``1h``, ``1.5h``, ``250ms``, ``2d`` (a bare number: seconds) -> ms."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 30s, 5m, 1h")
    return round(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"])


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration_ms(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _window(c: Campaign) -> str:
    return f"{ms_to_rfc3339(c.opens_at_ms)} – {ms_to_rfc3339(c.closes_at_ms)}"


@campaign.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--open-in", "open_in_ms", type=Duration(), default=None, metavar="DURATION",
              help="shift the window to open this long from now (30s, 5m, 1h), keeping its length: "
                   "a rehearsal of a campaign file whose window is past")
@redis_option
def campaign_load(path: str, open_in_ms: int | None, redis_url: str | None) -> None:
    """Create (or replace, before it opens) the campaign defined in a TOML file.

    The sale window is judged by Redis TIME, and so is --open-in (Redis TIME + DURATION).
    """
    try:
        c = load_file(path)
    except InvalidDefinition as exc:
        where = "" if str(exc).startswith(path) else f"{path}: "
        raise CliError(f"invalid campaign definition: {where}{' '.join(str(exc).split())}", USAGE) from exc

    async def go() -> tuple[Campaign, bool, int]:
        engine = Engine.from_settings(Settings.from_env(redis_url=redis_url))
        try:
            now_ms = await redis_now_ms(engine)
            loaded = c if open_in_ms is None else shift(c, now_ms + open_in_ms)
            try:
                return loaded, await engine.load_campaign(loaded), now_ms
            except InvalidState as exc:
                raise CliError(f"{exc}: to rehearse again, load a copy of {path} under another id") from exc
        finally:
            await engine.close()

    loaded, created, now_ms = run_async(go)
    click.echo(f"campaign {c.id} {'created' if created else 'replaced'}")
    if open_in_ms is not None:
        click.echo(f"window shifted from {_window(c)} to {_window(loaded)} (opens in {open_in_ms / 1000:g} s)")
    if loaded.closes_at_ms <= now_ms:
        click.echo(f"flashsale campaign load: warning: campaign {c.id} closed at {ms_to_rfc3339(c.closes_at_ms)}: "
                   "nothing can be sold; add --open-in 30s to rehearse it now", err=True)


async def redis_now_ms(engine: Engine) -> int:
    """Redis TIME in ms: the clock the scripts judge the sale window by."""
    secs, micros = await cast("Awaitable[tuple[int, int]]", engine.redis.time())
    return int(secs) * 1000 + int(micros) // 1000


def shift(c: Campaign, opens_at_ms: int) -> Campaign:
    """The same campaign opening at ``opens_at_ms``, its window's length kept."""
    return replace(c, opens_at_ms=opens_at_ms, closes_at_ms=opens_at_ms + (c.closes_at_ms - c.opens_at_ms))


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
@click.option("--interval", type=float, default=None,
              help="seconds between sweeps (FLASHSALE_SWEEP_INTERVAL; default 0.25)")
@log_format_option
def sweeper(redis_url: str | None, interval: float | None) -> None:
    """Release expired holds continuously (the API workers run one too; several are safe)."""
    from engine.api import logs

    settings = Settings.from_env(redis_url=redis_url, sweep_interval_s=interval)
    logs.configure(settings.log_level)

    async def go() -> None:
        engine = Engine.from_settings(settings)
        try:
            await Sweeper(engine, interval_s=settings.sweep_interval_s).run()
        finally:
            await engine.close()

    run_async(go)


def _register() -> None:
    from engine.admission.commands import COMMANDS as admission
    from engine.admission.commands import export_queue
    from engine.api.commands import COMMANDS as api
    from engine.ledger.commands import COMMANDS as ledger
    from engine.loadgen.commands import COMMANDS as loadgen
    from engine.ops.commands import COMMANDS as ops

    for command in (*api, *ledger, *ops, *loadgen, *admission):
        main.add_command(command)
    export = main.commands.get("export")
    if isinstance(export, click.Group):
        export.add_command(export_queue)
    _guarded(main)


_register()
