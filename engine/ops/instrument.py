"""Script-level metrics for an Engine: the round trip and batch size of every script call.

``instrument(engine)`` wraps two public seams of one Engine instance, the way tracing
instrumentors wrap a client library, so the core stays free of any metrics code:

- ``engine.wire.evalsha``, which carries every batched reserve / confirm / cancel call:
  each call is observed as ``flashsale_script_duration_seconds{script}`` and
  ``flashsale_script_batch_requests{script}``;
- ``engine.expire_due``, the sweeper's call: its round trip, and the holds it released as
  outcome ``expire``/``OK``.

Without a lean wire (TLS, Cluster: ``engine.wire is None``) batched calls go through redis-py
and only the expiry is observed. Calling ``instrument`` twice on one engine changes nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from functools import wraps
from time import perf_counter
from typing import Any

from engine.core import Engine
from engine.core.scripts import SCRIPT_NAMES
from engine.ops import metrics

_done: weakref.WeakSet[Engine] = weakref.WeakSet()


def _batch_size(args: list[bytes]) -> int:
    """The request count a batched script gets first in ARGV (RESP-encoded: ``$2\\r\\n64\\r\\n``)."""
    try:
        return int(args[0].split(b"\r\n", 2)[1])
    except (IndexError, ValueError):
        return 1


def _timed_evalsha(evalsha: Callable[..., Awaitable[Any]], names: dict[str, str]) -> Callable[..., Awaitable[Any]]:
    @wraps(evalsha)
    async def timed(script: str, head: list[bytes], args: list[bytes]) -> Any:
        start = perf_counter()
        try:
            return await evalsha(script, head, args)
        finally:
            metrics.observe_script(names.get(script, "other"), _batch_size(args), perf_counter() - start)

    return timed


def _timed_expire(expire_due: Callable[..., Awaitable[tuple[int, bool]]]) -> Callable[..., Awaitable[tuple[int, bool]]]:
    @wraps(expire_due)
    async def timed(campaign_id: str, limit: int = 1000) -> tuple[int, bool]:
        start = perf_counter()
        try:
            expired, more = await expire_due(campaign_id, limit)
        finally:
            metrics.observe_script("expire", 1, perf_counter() - start)
        metrics.count_expired(expired)
        return expired, more

    return timed


def instrument(engine: Engine) -> Engine:
    """Observe ``engine``'s script calls in the metrics; returns the same engine."""
    if engine in _done:
        return engine
    if engine.wire is not None:
        texts = {}
        for name in SCRIPT_NAMES:
            text = getattr(engine.scripts, name).script
            texts[text if isinstance(text, str) else bytes(text).decode()] = name
        setattr(engine.wire, "evalsha", _timed_evalsha(engine.wire.evalsha, texts))  # noqa: B010
    setattr(engine, "expire_due", _timed_expire(engine.expire_due))  # noqa: B010
    _done.add(engine)
    return engine
