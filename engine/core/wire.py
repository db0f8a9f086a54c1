"""A lean, pipelined Redis connection for the hot path: EVALSHA of the batched scripts.

redis-py spends most of a call's CPU around the wire, not on it: a pool lock, observability
hooks, a health probe, a task for each write timeout.
``Wire`` is one asyncio protocol over one socket with a hiredis reader: a request is written at
once and its future waits in a FIFO until its reply arrives, so several batches can be in
flight on one connection, and a call costs a few µs of Python.

It serves only what the engine's hot path needs (``redis://`` and ``unix://``, AUTH, SELECT);
``Wire.for_client`` returns None for anything else (TLS, Sentinel, Cluster) and the engine
falls back to redis-py. Errors are redis-py's own exception types, so callers handle one family:
``ConnectionError`` when the socket fails, ``TimeoutError`` when Redis does not answer in time
(the connection is then dropped: every call waiting on it fails, the next one reconnects),
``ResponseError`` for an error reply, of the subclass redis-py would give its code
(``NoScriptError`` for NOSCRIPT, ``AuthenticationError`` for WRONGPASS, ``BusyLoadingError`` for
LOADING, ``ReadOnlyError`` for READONLY, and the classes of MASTERDOWN, CLUSTERDOWN, TRYAGAIN), so
``engine.core.outage`` tells an outage from a script error the same way whichever path a call took.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeout

Arg = bytes | str | int


def encode(args: Sequence[Arg]) -> list[bytes]:
    """RESP bulk strings for ``args`` (no array header)."""
    out: list[bytes] = []
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return out


def command(*args: Arg) -> bytes:
    """One RESP command."""
    return b"*%d\r\n" % len(args) + b"".join(encode(args))


_ERROR_CLASSES: dict[str, type[ResponseError] | type[ConnectionError]] = {
    "NOSCRIPT": NoScriptError, "LOADING": BusyLoadingError, "READONLY": ReadOnlyError,
    "MASTERDOWN": MasterDownError, "CLUSTERDOWN": ClusterDownError, "TRYAGAIN": TryAgainError,
    "WRONGPASS": AuthenticationError, "NOAUTH": AuthenticationError,
}


def _reply_error(message: str) -> ResponseError | ConnectionError:
    cls = _ERROR_CLASSES.get(message.partition(" ")[0], ResponseError)
    return cls(message)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while (reply := self.reader.gets()) is not False:
            fut = waiters.popleft()
            if fut.done():  # its caller timed out or was cancelled; the reply is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(_reply_error(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self.transport = None
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(self.lost)


class Wire:
    """One pipelined connection; ``call`` sends one command and awaits its reply."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None,
                 db: int = 0, username: str | None = None, password: str | None = None,
                 timeout_s: float = 0.5) -> None:
        self.host, self.port, self.path = host, port, path
        self.db, self.username, self.password = db, username, password
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def for_client(cls, client: aioredis.Redis, timeout_s: float) -> Wire | None:
        """A wire to the same server as ``client``, or None when it is not a plain one."""
        pool = getattr(client, "connection_pool", None)  # a RedisCluster has none: redis-py routes
        if pool is None:
            return None
        kw = pool.connection_kwargs
        db, user, password = int(kw.get("db") or 0), kw.get("username"), kw.get("password")
        if pool.connection_class is Connection:
            return cls(host=kw.get("host", "127.0.0.1"), port=int(kw.get("port", 6379)), db=db,
                       username=user, password=password, timeout_s=timeout_s)
        if pool.connection_class is UnixDomainSocketConnection:
            return cls(path=kw["path"], db=db, username=user, password=password, timeout_s=timeout_s)
        return None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.path is not None:
                    _, proto = await loop.create_unix_connection(_Protocol, self.path)
                else:
                    _, proto = await loop.create_connection(_Protocol, self.host, self.port)
                setup: list[bytes] = []
                if self.password is not None:
                    auth: list[Arg] = ["AUTH", self.password]
                    if self.username:
                        auth.insert(1, self.username)
                    setup.append(command(*auth))
                if self.db:
                    setup.append(command("SELECT", self.db))
                try:
                    for cmd in setup:
                        await self._send(proto, cmd)
                except BaseException:
                    if proto.transport is not None:
                        proto.transport.abort()
                    raise
        except OSError as exc:
            raise ConnectionError(f"cannot connect to Redis: {exc}") from exc
        except TimeoutError as exc:  # asyncio's, from asyncio.timeout
            raise RedisTimeout("timed out connecting to Redis") from exc
        return proto

    async def _protocol(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            return proto
        if self._connecting is None:  # one connect at a time; concurrent callers share it
            loop = asyncio.get_running_loop()
            self._connecting = fut = loop.create_future()
            try:
                self._proto = await self._open()
                fut.set_result(self._proto)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: callers that share it get it below
                raise
            finally:
                self._connecting = None
            return self._proto
        return await asyncio.shield(self._connecting)

    @staticmethod
    def _send(proto: _Protocol, payload: bytes | list[bytes]) -> asyncio.Future[Any]:
        if proto.transport is None:
            raise proto.lost or ConnectionError("not connected to Redis")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiters.append(fut)
        # one write of one buffer: writelines() of many small pieces costs more per piece
        proto.transport.write(payload if isinstance(payload, bytes) else b"".join(payload))
        return fut

    async def call(self, payload: bytes | list[bytes]) -> Any:
        """Send one RESP-encoded command; its reply, or the error it raised."""
        proto = await self._protocol()
        fut = self._send(proto, payload)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fut
        except TimeoutError as exc:
            # A reply that never came leaves the connection in doubt: drop it, and with it
            # every call waiting on it; the next call reconnects.
            if proto.transport is not None:
                proto.transport.abort()
            raise RedisTimeout(f"Redis did not answer within {self.timeout_s}s") from exc

    async def evalsha(self, script: bytes, head: list[bytes], args: list[bytes]) -> Any:
        """EVALSHA with ``head`` (sha, numkeys, keys; RESP-encoded) and ``args``. On NOSCRIPT (the
        call did not run, so repeating it is safe) the same call goes as EVAL of ``script`` (its
        RESP bulk string), which also caches it: no SCRIPT LOAD that a concurrent SCRIPT FLUSH
        could undo before the retry."""
        n = len(head) + len(args) + 1
        try:
            return await self.call([b"*%d\r\n$7\r\nEVALSHA\r\n" % n, *head, *args])
        except NoScriptError:
            return await self.call([b"*%d\r\n$4\r\nEVAL\r\n" % n, script, *head[1:], *args])

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
