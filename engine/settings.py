"""Settings: one frozen dataclass, built once at start-up (``Settings.from_env``) and passed down.

Flags of the ``flashsale`` command override the ``FLASHSALE_*`` environment variables of docs/API.md.
Every value is checked once, at start (``Settings.validate``, called by ``from_env``): a number
out of its range, or not a number, raises ``SettingsError``, one line naming the setting and what
it allows; the commands print it and exit 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine import tokens

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REPLICA_ACKS_TIMEOUT_MS = 1000  # how long a batch's WAIT may wait for its replicas
DEFAULT_DATABASE_URL = "sqlite:///flashsale-ledger.db"  # the embedded default ledger
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_OPS_HOST = "127.0.0.1"  # the ops listener (metrics, dashboard) stays on the host unless told
DEFAULT_REDIS_TIMEOUT_S = 0.5  # a request fails with 503 well under 1 s when Redis is away
DEFAULT_BATCH_MAX = 256  # reservations carried by one script call
DEFAULT_BATCH_INFLIGHT = 4  # script calls in flight per campaign and process
DEFAULT_SWEEP_INTERVAL_S = 0.25  # expired holds are released within ~this of their deadline
DEFAULT_SWEEP_LIMIT = 1000  # holds released by one expire call


SERVERS = ("uvicorn", "granian")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting that cannot be used: the message is one line naming it and what it allows."""


@dataclass(frozen=True, slots=True)
class Bound:
    """The allowed values of one numeric setting: ``low``..``high``; ``low`` excluded when ``open_low``."""

    env: str
    kind: type[int] | type[float]
    low: float
    high: float
    open_low: bool = False

    def allowed(self) -> str:
        if self.kind is int:
            return f"an integer in {int(self.low)}..{int(self.high)}"
        low = f"> {self.low:g}" if self.open_low else f">= {self.low:g}"
        return f"a number {low} and <= {self.high:g}"

    def check(self, name: str, value: object) -> None:
        kinds = (int, float) if self.kind is float else (int,)
        ok = isinstance(value, kinds) and not isinstance(value, bool)
        if isinstance(value, float):
            ok = ok and math.isfinite(value)
        if ok:
            v = float(value)  # type: ignore[arg-type]
            ok = (v > self.low if self.open_low else v >= self.low) and v <= self.high
        if not ok:
            raise SettingsError(f"setting {name} ({self.env}) = {value!r} is not allowed: "
                                f"it must be {self.allowed()}")

    def parse(self, raw: str) -> int | float:
        try:
            return self.kind(raw.strip())
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise SettingsError(f"setting {self.env}={raw!r} is not {what}: "
                                f"it must be {self.allowed()}") from None


#: every numeric setting, its variable and its range
BOUNDS: dict[str, Bound] = {
    "port": Bound("FLASHSALE_PORT", int, 1, 65535),
    "workers": Bound("FLASHSALE_WORKERS", int, 1, 64),
    "redis_timeout_s": Bound("FLASHSALE_REDIS_TIMEOUT", float, 0, 60, open_low=True),
    "batch_max": Bound("FLASHSALE_BATCH_MAX", int, 1, 4096),  # reserve.lua takes 1..4096 per call
    "batch_inflight": Bound("FLASHSALE_BATCH_INFLIGHT", int, 1, 1024),
    "sweep_interval_s": Bound("FLASHSALE_SWEEP_INTERVAL", float, 0, 60, open_low=True),
    "ops_port": Bound("FLASHSALE_OPS_PORT", int, 1, 65535),  # None: no ops listener
    "replica_acks": Bound("FLASHSALE_REPLICA_ACKS", int, 0, 16),  # replicas every batch waits for
    "replica_acks_timeout_ms": Bound("FLASHSALE_REPLICA_ACKS_TIMEOUT_MS", int, 1, 60_000),
}


def _number(e: Mapping[str, str], name: str, default: float | None) -> Any:
    bound = BOUNDS[name]
    raw = e.get(bound.env)
    return default if raw is None or not raw.strip() else bound.parse(raw)


def parse_storefront_tokens(raw: str, source: str = "FLASHSALE_STOREFRONT_TOKENS") -> tuple[tuple[str, str], ...]:
    """``tok1,tok2`` or ``shop-a=tok1,shop-b=tok2`` -> ((name, token), ...), by the entry rule of
    ``engine.tokens`` (a bare base64 token keeps its ``=`` padding)."""
    return tokens.parse_list(raw, source)


def storefront_tokens_from(e: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The storefront tokens of ``FLASHSALE_STOREFRONT_TOKENS`` and ``FLASHSALE_STOREFRONT_TOKENS_FILE``."""
    listed = parse_storefront_tokens(e.get("FLASHSALE_STOREFRONT_TOKENS", ""))
    path = e.get("FLASHSALE_STOREFRONT_TOKENS_FILE", "")
    filed = tokens.read_file(path, "FLASHSALE_STOREFRONT_TOKENS_FILE") if path else ()
    return tokens.merge(listed, filed)


def admin_token_from(e: Mapping[str, str]) -> str:
    raw = e.get("FLASHSALE_ADMIN_TOKEN", "")
    return tokens.check_token(raw, "FLASHSALE_ADMIN_TOKEN") if raw else ""


def _tokens_of(e: Mapping[str, str], given: Mapping[str, Any], check: bool) -> tuple[tuple[tuple[str, str], ...], str]:
    """(storefront tokens, admin token): the overrides' (flags), else the environment's. Unusable
    ones raise when ``check``; else they are left out (none is accepted): a command that serves no
    API (the writer, reconcile) has no use for them and must not fail for them."""
    try:
        return (given.get("storefront_tokens") or storefront_tokens_from(e),
                given.get("admin_token") or admin_token_from(e))
    except tokens.TokenError:
        if check:
            raise
        return (), ""


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    storefront_tokens: tuple[tuple[str, str], ...] = ()
    admin_token: str = ""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    ops_host: str = DEFAULT_OPS_HOST
    ops_port: int | None = None  # a second listener serving only the ops routes, without a token
    workers: int = 1
    server: str = "uvicorn"  # or "granian"; uvicorn measured faster for this app (BENCHMARKS.md)
    allow_volatile_redis: bool = False
    redis_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
    batch_max: int = DEFAULT_BATCH_MAX
    batch_inflight: int = DEFAULT_BATCH_INFLIGHT
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    replica_acks: int = 0  # WAIT for this many replicas after each batch (0: asynchronous replication)
    replica_acks_timeout_ms: int = DEFAULT_REPLICA_ACKS_TIMEOUT_MS
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, check_tokens: bool = False, **overrides: Any) -> Settings:
        """``check_tokens``: whoever serves the API raises ``TokenError`` for an unusable token."""
        e = os.environ if env is None else env
        given = {k: v for k, v in overrides.items() if v is not None}
        storefront_tokens, admin_token = _tokens_of(e, given, check_tokens)
        s = cls(
            redis_url=e.get("FLASHSALE_REDIS_URL", DEFAULT_REDIS_URL),
            database_url=e.get("FLASHSALE_DATABASE_URL", DEFAULT_DATABASE_URL),
            storefront_tokens=storefront_tokens,
            admin_token=admin_token,
            host=e.get("FLASHSALE_HOST", DEFAULT_HOST),
            port=_number(e, "port", DEFAULT_PORT),
            ops_host=e.get("FLASHSALE_OPS_HOST", DEFAULT_OPS_HOST),
            ops_port=_number(e, "ops_port", None),
            workers=_number(e, "workers", 1),
            server=e.get("FLASHSALE_SERVER", "uvicorn"),
            allow_volatile_redis=e.get("FLASHSALE_ALLOW_VOLATILE_REDIS", "") in ("1", "true", "yes"),
            redis_timeout_s=_number(e, "redis_timeout_s", DEFAULT_REDIS_TIMEOUT_S),
            batch_max=_number(e, "batch_max", DEFAULT_BATCH_MAX),
            batch_inflight=_number(e, "batch_inflight", DEFAULT_BATCH_INFLIGHT),
            sweep_interval_s=_number(e, "sweep_interval_s", DEFAULT_SWEEP_INTERVAL_S),
            replica_acks=_number(e, "replica_acks", 0),
            replica_acks_timeout_ms=_number(e, "replica_acks_timeout_ms", DEFAULT_REPLICA_ACKS_TIMEOUT_MS),
            log_level=e.get("FLASHSALE_LOG_LEVEL", "INFO"),
        )
        return (replace(s, **given) if given else s).validate()

    def validate(self) -> Settings:
        """This, if every value is usable; else ``SettingsError`` naming the first that is not."""
        for name, bound in BOUNDS.items():
            value = getattr(self, name)
            if value is not None or name != "ops_port":
                bound.check(name, value)
        if self.server not in SERVERS:
            raise SettingsError(f"setting server (FLASHSALE_SERVER) = {self.server!r} is not allowed: "
                                f"it must be one of {', '.join(SERVERS)}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"setting log_level (FLASHSALE_LOG_LEVEL) = {self.log_level!r} is not "
                                f"allowed: it must be one of {', '.join(LOG_LEVELS)}")
        return self

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes (API workers, demo)."""
        return {
            "FLASHSALE_REDIS_URL": self.redis_url,
            "FLASHSALE_DATABASE_URL": self.database_url,
            "FLASHSALE_STOREFRONT_TOKENS": ",".join(tokens.format_entry(n, t) for n, t in self.storefront_tokens),
            "FLASHSALE_STOREFRONT_TOKENS_FILE": "",  # already read into the line above
            "FLASHSALE_ADMIN_TOKEN": self.admin_token,
            "FLASHSALE_HOST": self.host,
            "FLASHSALE_PORT": str(self.port),
            "FLASHSALE_OPS_HOST": self.ops_host,
            "FLASHSALE_OPS_PORT": "" if self.ops_port is None else str(self.ops_port),
            "FLASHSALE_WORKERS": str(self.workers),
            "FLASHSALE_SERVER": self.server,
            "FLASHSALE_ALLOW_VOLATILE_REDIS": "1" if self.allow_volatile_redis else "",
            "FLASHSALE_REDIS_TIMEOUT": str(self.redis_timeout_s),
            "FLASHSALE_BATCH_MAX": str(self.batch_max),
            "FLASHSALE_BATCH_INFLIGHT": str(self.batch_inflight),
            "FLASHSALE_SWEEP_INTERVAL": str(self.sweep_interval_s),
            "FLASHSALE_REPLICA_ACKS": str(self.replica_acks),
            "FLASHSALE_REPLICA_ACKS_TIMEOUT_MS": str(self.replica_acks_timeout_ms),
            "FLASHSALE_LOG_LEVEL": self.log_level,
        }
