"""``flashsale registrations import`` and ``flashsale export queue`` (engine.admission), and the
check ``flashsale serve`` makes of the admission keys before any worker starts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from engine.admission.csvimport import BadHeader, parse_rows
from engine.admission.service import AdmissionService
from engine.admission.tokens import KEYS_ENV, MIN_SECRET_BYTES, Keyring, KeyringError
from engine.core import Engine
from engine.core.engine import STORAGE_ERRORS
from engine.errors import FlashsaleError, StorageUnavailable
from engine.settings import Settings

EXIT_REFUSED = 1  # bad rows, or the campaign refused: nothing loaded
EXIT_USAGE = 2  # the file cannot be read as this format


def _redis_option(f: Any) -> Any:
    return click.option("--redis-url", envvar="FLASHSALE_REDIS_URL", default=None,
                        help="Redis URL (FLASHSALE_REDIS_URL); default redis://127.0.0.1:6379/0")(f)


@click.group("registrations")
def registrations() -> None:
    """Pre-registration (campaigns with eligibility "registered")."""


@registrations.command("import")
@click.argument("campaign_id")
@click.argument("path", type=click.Path(dir_okay=False))
@_redis_option
def registrations_import(campaign_id: str, path: str, redis_url: str | None) -> None:
    """Load a pre-booking list (CSV: a header naming user_id and any of identity, device, ip).

    The whole file is checked first: any bad row is named with its line number and nothing is
    loaded (exit 1). Exit 0 when every row is registered (or already was), 2 when the file
    cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        click.echo(f"flashsale: cannot read {path}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        asyncio.run(_import(campaign_id, path, text, redis_url))
    except FlashsaleError as exc:
        click.echo(f"flashsale: {exc}; nothing loaded", err=True)
        sys.exit(EXIT_REFUSED)


async def _import(campaign_id: str, path: str, text: str, redis_url: str | None) -> None:
    engine = Engine.from_settings(Settings.from_env(redis_url=redis_url))
    try:
        service = AdmissionService(engine, None)
        try:
            d = await service.definitions.read(campaign_id)
            try:
                parsed = parse_rows(text.splitlines(), d.campaign.identity_cap_units is not None)
            except BadHeader as exc:
                click.echo(f"flashsale: {path}:1: {exc}", err=True)
                sys.exit(EXIT_USAGE)
            bad = list(parsed.bad)
            for index, holder in await service.registry.conflicts(campaign_id, d, parsed.rows):
                bad.append((parsed.lines[index], f"identity is registered under user {holder!r}"))
            if bad:
                for line, reason in sorted(bad):
                    click.echo(f"{path}:{line}: {reason}", err=True)
                click.echo(f"flashsale: {len(bad)} bad row(s); nothing loaded", err=True)
                sys.exit(EXIT_REFUSED)
            result = await service.registry.register_many(campaign_id, d, parsed.rows)
        except STORAGE_ERRORS as exc:
            raise StorageUnavailable(f"Redis did not answer: {exc}") from exc
        for index in result.refused:  # registered by someone else between the check and the load
            click.echo(f"{path}:{parsed.lines[index]}: identity registered under another user meanwhile", err=True)
        click.echo(f"campaign {campaign_id}: {result.registered} registered, {result.already} already registered"
                   + (f", {len(result.refused)} refused" if result.refused else ""))
        if result.refused:
            sys.exit(EXIT_REFUSED)
    finally:
        await engine.close()


@click.command("queue")
@click.argument("campaign_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write the JSON here instead of standard output")
@_redis_option
def export_queue(campaign_id: str, output: str | None, redis_url: str | None) -> None:
    """Every ticket of a waiting room in queue order, with its user, join time and draw (pre-queue)
    or arrival number, and the seed once the sale has opened: enough to recompute the order."""

    async def go() -> dict[str, Any]:
        engine = Engine.from_settings(Settings.from_env(redis_url=redis_url))
        try:
            return await AdmissionService(engine, None).export(campaign_id)
        finally:
            await engine.close()

    try:
        body = orjson.dumps(asyncio.run(go()), option=orjson.OPT_INDENT_2)
    except FlashsaleError as exc:
        click.echo(f"flashsale: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    if output:
        Path(output).write_bytes(body + b"\n")
    else:
        click.echo(body.decode())


async def serve_problem(settings: Settings) -> str | None:
    """What stops ``flashsale serve`` on admission grounds: a malformed keyring, or none while a
    campaign in Redis is in queue mode. None when it may start (or Redis cannot say: the
    durability check reports that)."""
    try:
        keyring = Keyring.from_env()
    except KeyringError as exc:
        return str(exc)
    if keyring is not None:
        return None
    engine = Engine.from_settings(settings)
    try:
        service = AdmissionService(engine, None)
        for cid in await engine.campaign_ids():
            if (await service.definitions.read(cid)).campaign.queued:
                return (f"campaign {cid} is in queue mode: set {KEYS_ENV}=kid:secret "
                        f"(a secret of at least {MIN_SECRET_BYTES} bytes) to sign its admission tokens")
    except FlashsaleError:
        return None
    except STORAGE_ERRORS:
        return None
    finally:
        await engine.close()
    return None


COMMANDS: list[click.Command] = [registrations]
