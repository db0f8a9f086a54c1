"""The command line's one error boundary: whatever a command raises becomes one or two lines on
stderr naming the fix, and an exit code; a traceback only with ``--debug`` or ``FLASHSALE_DEBUG=1``.

    exit 2   a usage error: a bad flag, a malformed URL or setting, an invalid or unreadable file
    exit 1   the command could not do its work: Redis or the ledger away, a port in use, an
             unknown campaign, a ledger that is missing or refused

HTTP callers see the engine's errors through ``engine.api.errors``; this module only decides how
the CLI words them (e.g. a Redis outage names ``--redis-url``, not the Idempotency-Key an HTTP
caller retries with).
"""

from __future__ import annotations

import errno
import os
from typing import NoReturn

import click
from redis.exceptions import RedisError

from engine.errors import (
    FlashsaleError,
    InvalidDefinition,
    LedgerError,
    Rejected,
    StorageUnavailable,
    UnsafeRedis,
)

USAGE = 2
FAILED = 1
REDIS_FIX = "start Redis or point --redis-url / FLASHSALE_REDIS_URL at it"


class CliError(click.ClickException):
    """An error worded for the command line: ``flashsale COMMAND: message``, then exit ``code``."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it from the instance
        ctx = click.get_current_context(silent=True)  # raised inside a command: name it
        self.command = ctx.command_path if ctx is not None else "flashsale"

    def show(self, file: object = None) -> None:
        click.echo(f"{self.command}: {self.format_message()}", err=True)


def debugging() -> bool:
    return os.environ.get("FLASHSALE_DEBUG", "") in ("1", "true", "yes")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _redis_cause(exc: BaseException) -> BaseException | None:
    """The Redis or socket error behind ``exc``, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (RedisError, ConnectionError, TimeoutError)):
            return seen
        seen = seen.__cause__
    return None


def translate(exc: BaseException) -> CliError | None:
    """The CLI's wording of an exception; None for a bug (which keeps its traceback)."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, InvalidDefinition):
        return CliError(f"invalid campaign definition: {_one_line(str(exc))}", USAGE)
    if isinstance(exc, StorageUnavailable):
        cause = _redis_cause(exc.__cause__) if exc.__cause__ is not None else None
        if cause is not None:
            return CliError(f"Redis did not answer ({cause.__class__.__name__}: {_one_line(str(cause))}); "
                            f"{REDIS_FIX}")
        return CliError(_one_line(str(exc)))
    if isinstance(exc, (UnsafeRedis, LedgerError, Rejected, FlashsaleError)):
        return CliError(_one_line(str(exc)))
    if isinstance(exc, RedisError):
        return CliError(f"Redis did not answer ({exc.__class__.__name__}: {_one_line(str(exc))}); {REDIS_FIX}")
    if isinstance(exc, UnicodeDecodeError):
        return CliError(f"cannot read a file as UTF-8: {_one_line(str(exc))}", USAGE)
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, ValueError):  # settings, URLs and values the command line passed on
        text = _one_line(str(exc)) or exc.__class__.__name__
        if _raised_in(exc, "redis."):  # redis-py parsing a malformed URL
            text = f"bad Redis URL: {text}; fix --redis-url or FLASHSALE_REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
        elif _raised_in(exc, "asyncpg."):  # asyncpg parsing a malformed database URL
            text = f"bad database URL: {text}; fix --database-url or FLASHSALE_DATABASE_URL"
        return CliError(text, USAGE)
    return None


def _raised_in(exc: BaseException, module_prefix: str) -> bool:
    """Whether a frame of ``exc``'s traceback runs code of a module named ``module_prefix…``."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(module_prefix):
            return True
        tb = tb.tb_next
    return False


def _os_error(exc: OSError) -> CliError:
    what = exc.strerror or _one_line(str(exc)) or exc.__class__.__name__
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.EADDRINUSE:
        return CliError(f"{what}: another process holds that address; stop it or pass another --port")
    if exc.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR) and exc.filename:
        return CliError(f"cannot open{where}: {what}", USAGE)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return CliError(f"connection failed ({what}); is the service running at the address given?")
    return CliError(f"{what}{':' + where if where else ''}")


def fail(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as the CLI's error (or as is, for a bug or under ``--debug``)."""
    err = None if debugging() else translate(exc)
    if err is None:
        raise exc
    raise err from exc
