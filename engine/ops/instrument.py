"""Script-level metrics for an Engine: the round trip and batch size of every script call.

``instrument(engine)`` wraps two public seams of one Engine instance, the way tracing
instrumentors wrap a client library, so the core stays free of any metrics code:

- ``engine.wire.evalsha`` (a ``Wire``, or on a cluster a ``ClusterWire``), which carries every
  batched reserve / confirm / cancel call:
  each call is observed as ``flashsale_script_duration_seconds{script}`` and
  ``flashsale_script_batch_requests{script}``;
- ``engine.expire_due``, the sweeper's call: its round trip, and the holds it released as
  outcome ``expire``/``OK``.

Without a lean wire (TLS: ``engine.wire is None``) batched calls go through redis-py
and only the expiry is observed. Both seams are looked up at each call, so the engine may be
instrumented after its batchers or its sweeper have started; a second call changes nothing.
Meant for the API's lifespan: once per worker, right after building the Engine.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from time import perf_counter
from typing import Any

from engine.core import Engine
from engine.core.scripts import SCRIPT_NAMES
from engine.ops import metrics

_done: weakref.WeakSet[Engine] = weakref.WeakSet()


def _value(arg: Any) -> bytes:
    """One argument as the wire got it: RESP-encoded (``$2\\r\\n64\\r\\n``) or plain."""
    b = arg.encode() if isinstance(arg, str) else bytes(arg)
    if b.startswith(b"$"):
        parts = b.split(b"\r\n", 2)
        if len(parts) == 3:
            return parts[1]
    return b


def _batch_size(args: Sequence[Any]) -> int:
    """The request count a batched script gets first in ARGV."""
    try:
        return int(_value(args[0]))
    except (IndexError, ValueError):
        return 1


def _timed_evalsha(evalsha: Callable[..., Awaitable[Any]], names: dict[bytes, str]) -> Callable[..., Awaitable[Any]]:
    @wraps(evalsha)
    async def timed(script: Any, head: Sequence[Any], args: Sequence[Any]) -> Any:
        start = perf_counter()
        try:
            return await evalsha(script, head, args)
        finally:  # head starts with the script's sha
            name = names.get(_value(head[0]), "other") if head else "other"
            metrics.observe_script(name, _batch_size(args), perf_counter() - start)

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
        shas = {getattr(engine.scripts, name).sha.encode(): name for name in SCRIPT_NAMES}
        setattr(engine.wire, "evalsha", _timed_evalsha(engine.wire.evalsha, shas))  # noqa: B010
    setattr(engine, "expire_due", _timed_expire(engine.expire_due))  # noqa: B010
    _done.add(engine)
    return engine
