"""Which Redis errors mean "Redis is away" (503, retry later) and which mean a bug (500).

An outage is Redis unreachable, timing out, loading its dataset, read-only or failing over: the
same call, retried with the same Idempotency-Key once Redis is back, may succeed. Anything else
Redis answers with an error, a Lua script's runtime error above all (``WRONGTYPE`` inside
``reserve.lua``, a bad argument), is a bug or damaged data: a retry meets it again, so it must not
be answered as if it invited one.

redis-py's parser maps some error replies to classes (``LOADING``, ``READONLY``); the others that
mean an outage (``MASTERDOWN``, ``CLUSTERDOWN``, ``TRYAGAIN``, ``BUSY``) arrive as plain
``ResponseError`` with the code first in the message, so both are checked. An error inside a
redis-py pipeline has its message wrapped (``Command # 1 (HMGET …) of pipeline caused error: …``):
the code is looked for after that prefix.
"""

from __future__ import annotations

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeout

#: exception classes that always mean an outage (BusyLoadingError is a ConnectionError; OSError
#: covers the builtin ConnectionError and socket errors; TimeoutError is asyncio's)
OUTAGE_CLASSES: tuple[type[BaseException], ...] = (
    ConnectionError, RedisTimeout, BusyLoadingError, ReadOnlyError, ClusterDownError, TryAgainError,
    OSError, TimeoutError,
)

#: error-reply codes that mean an outage when they arrive as a plain ResponseError
OUTAGE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY ")
_PIPELINE = "of pipeline caused error: "


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says Redis cannot answer now (retry later), False for anything else."""
    if isinstance(exc, OUTAGE_CLASSES):
        return True
    if not isinstance(exc, ResponseError):
        return False
    message = str(exc)
    _, wrapped, inner = message.partition(_PIPELINE)
    if wrapped:
        message = inner.lstrip("('\"")
    return message.startswith(OUTAGE_REPLIES)
