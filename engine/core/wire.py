"""A lean, pipelined Redis connection for the hot path: EVALSHA of the batched scripts.

redis-py spends most of a call's CPU around the wire, not on it: a pool lock, observability
hooks, a health probe, a task for each write timeout.
``Wire`` is one asyncio protocol over one socket with a hiredis reader: a request is written at
once and its future waits in a FIFO until its reply arrives, so several batches can be in
flight on one connection, and a call costs a few µs of Python.

It serves only what the engine's hot path needs (``redis://`` and ``unix://``, AUTH, SELECT);
``Wire.for_client`` returns None for anything else (TLS, Sentinel) and the engine falls back to
redis-py. On a Redis Cluster the engine holds one Wire per master (``engine.core.cluster``).

With ``acks`` N > 0 every EVALSHA goes with a ``WAIT N timeout`` in the same write, on the same
connection (WAIT counts that connection's writes): the call returns only when N replicas have
the script's writes, else raises ``ReplicasBehind`` (an outage: the caller answers 503, and the
retry with the same Idempotency-Key replays what the script did).

Errors are redis-py's own exception types, so callers handle one family: ``ConnectionError``
when the socket fails, ``TimeoutError`` when Redis does not answer in time (the connection is
then dropped: every call waiting on it fails, the next one reconnects), ``ResponseError`` for an
error reply, of the subclass redis-py would give its code (``MovedError`` / ``AskError`` for a
cluster redirection, ``NoScriptError`` for NOSCRIPT, ``AuthenticationError`` for WRONGPASS,
``BusyLoadingError`` for LOADING, ``ReadOnlyError`` for READONLY, and the classes of MASTERDOWN,
CLUSTERDOWN, TRYAGAIN), so ``engine.core.outage`` tells an outage from a script error the same
way whichever path a call took.
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
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    MovedError,
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


class ReplicasBehind(ConnectionError):
    """``WAIT`` counted fewer replicas than asked within its timeout: the write is on the master
    only, so it is not acknowledged (an outage, like a lost connection: 503, retry)."""


def _reply_error(message: str) -> ResponseError | ConnectionError:
    code, _, rest = message.partition(" ")
    if code == "MOVED":
        return MovedError(rest)
    if code == "ASK":
        return AskError(rest)
    cls = _ERROR_CLASSES.get(code, ResponseError)
    return cls(message)


_ASKING = command("ASKING")


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
                 timeout_s: float = 0.5, acks: int = 0, acks_timeout_ms: int = 1000) -> None:
        self.host, self.port, self.path = host, port, path
        self.db, self.username, self.password = db, username, password
        self.acks, self.acks_timeout_ms = acks, acks_timeout_ms
        # a reply may wait behind a WAIT (ours or an earlier batch's) on this connection
        self.timeout_s = timeout_s + (acks_timeout_ms / 1000 if acks else 0)
        self._wait = command("WAIT", acks, acks_timeout_ms)
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        #: the WAIT that will follow the calls written in this loop turn, and its connection
        self._ack_group: tuple[_Protocol, asyncio.Future[Any]] | None = None

    @classmethod
    def for_client(cls, client: aioredis.Redis, timeout_s: float, *, acks: int = 0,
                   acks_timeout_ms: int = 1000) -> Wire | None:
        """A wire to the same server as ``client``, or None when it is not a plain one."""
        pool = getattr(client, "connection_pool", None)  # a RedisCluster has none: redis-py routes
        if pool is None:
            return None
        kw = pool.connection_kwargs
        db, user, password = int(kw.get("db") or 0), kw.get("username"), kw.get("password")
        if pool.connection_class is Connection:
            return cls(host=kw.get("host", "127.0.0.1"), port=int(kw.get("port", 6379)), db=db, username=user,
                       password=password, timeout_s=timeout_s, acks=acks, acks_timeout_ms=acks_timeout_ms)
        if pool.connection_class is UnixDomainSocketConnection:
            return cls(path=kw["path"], db=db, username=user, password=password, timeout_s=timeout_s, acks=acks,
                       acks_timeout_ms=acks_timeout_ms)
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
                        await self._send(proto, cmd)[0]
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
    def _send(proto: _Protocol, payload: bytes | list[bytes], replies: int = 1) -> list[asyncio.Future[Any]]:
        """Write ``payload`` (``replies`` commands) in one go; a future for each reply."""
        if proto.transport is None:
            raise proto.lost or ConnectionError("not connected to Redis")
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(replies)]
        proto.waiters.extend(futs)
        # one write of one buffer: writelines() of many small pieces costs more per piece
        proto.transport.write(payload if isinstance(payload, bytes) else b"".join(payload))
        return futs

    async def call(self, payload: bytes | list[bytes]) -> Any:
        """Send one RESP-encoded command; its reply, or the error it raised."""
        proto = await self._protocol()
        fut = self._send(proto, payload)[0]
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fut
        except TimeoutError as exc:
            raise self._dropped(proto) from exc

    def _dropped(self, proto: _Protocol) -> RedisTimeout:
        """A reply that never came leaves the connection in doubt: drop it, and with it every
        call waiting on it; the next call reconnects."""
        if proto.transport is not None:
            proto.transport.abort()
        return RedisTimeout(f"Redis did not answer within {self.timeout_s}s")

    async def calls(self, payload: bytes | list[bytes], replies: int, *, raise_first: bool = False) -> list[Any]:
        """Send ``replies`` RESP-encoded commands in one write; their replies, an error reply as
        its exception in the list (raised instead with ``raise_first``, for the first error)."""
        proto = await self._protocol()
        futs = self._send(proto, payload, replies)
        try:
            async with asyncio.timeout(self.timeout_s):
                done: list[Any] = await asyncio.gather(*futs, return_exceptions=True)
        except TimeoutError as exc:
            raise self._dropped(proto) from exc
        lost = next((r for r in done if isinstance(r, ConnectionError)), None)
        if lost is not None:
            raise lost
        if raise_first:
            error = next((r for r in done if isinstance(r, BaseException)), None)
            if error is not None:
                raise error
        return done

    async def evalsha(self, script: bytes, head: list[bytes], args: list[bytes], *, asking: bool = False) -> Any:
        """EVALSHA with ``head`` (sha, numkeys, keys; RESP-encoded) and ``args``. On NOSCRIPT (the
        call did not run, so repeating it is safe) the same call goes as EVAL of ``script`` (its
        RESP bulk string), which also caches it: no SCRIPT LOAD that a concurrent SCRIPT FLUSH
        could undo before the retry. ``asking``: preceded by ASKING (a cluster's ASK redirection).
        With ``acks``, followed by WAIT (``ReplicasBehind`` when too few replicas answered)."""
        n = len(head) + len(args) + 1
        try:
            return await self._run([b"*%d\r\n$7\r\nEVALSHA\r\n" % n, *head, *args], asking)
        except NoScriptError:
            return await self._run([b"*%d\r\n$4\r\nEVAL\r\n" % n, script, *head[1:], *args], asking)

    async def _run(self, cmd: list[bytes], asking: bool) -> Any:
        if asking:
            cmd.insert(0, _ASKING)
        if not self.acks:
            if not asking:
                return await self.call(cmd)
            return (await self.calls(cmd, 2, raise_first=True))[1]
        proto = await self._protocol()
        futs = self._send(proto, cmd, 2 if asking else 1)
        acked = self._acked_after(proto)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await futs[-1]
                replicas = await acked
        except TimeoutError as exc:
            raise self._dropped(proto) from exc
        if int(replicas) < self.acks:
            raise ReplicasBehind(f"WAIT {self.acks} {self.acks_timeout_ms}: only {replicas} replica(s) "
                                 "acknowledged the write in time")
        return reply

    def _acked_after(self, proto: _Protocol) -> asyncio.Future[Any]:
        """The reply of the WAIT that follows what was just written on ``proto``: one WAIT, sent on
        the next loop turn, serves every call written in this one (it counts every write before it
        on its connection), so batches in flight together wait for their replicas together."""
        group = self._ack_group
        if group is not None and group[0] is proto:
            return group[1]
        loop = asyncio.get_running_loop()
        shared: asyncio.Future[Any] = loop.create_future()
        self._ack_group = (proto, shared)

        def settle(result: Any = None, error: BaseException | None = None) -> None:
            if shared.done():
                return
            if error is None:
                shared.set_result(result)
            else:
                shared.set_exception(error)
                shared.exception()  # retrieved: the callers that await it still get it

        def relay(reply: asyncio.Future[Any]) -> None:
            if reply.cancelled():
                settle(error=ConnectionError("the WAIT was cancelled"))
            else:
                settle(reply.result() if reply.exception() is None else None, reply.exception())

        def send_wait() -> None:
            if self._ack_group is not None and self._ack_group[1] is shared:
                self._ack_group = None
            try:
                (reply,) = self._send(proto, self._wait)
            except BaseException as exc:  # the connection is gone: so are the calls before it
                settle(error=exc)
                return
            reply.add_done_callback(relay)

        loop.call_soon(send_wait)
        return shared

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
