"""An open-loop load generator: POST reservations at a fixed offered rate, whatever the answers do.

    python -m scripts.bench.http_openloop --port 8000 --campaign ID --token TOK --rate 3000 --seconds 8

wrk is closed-loop: at saturation its latencies are mostly queueing, and a stalled server also
stalls the load. Here request i is due at ``start + i / rate``; it goes out on an idle keep-alive
connection (a new one when none is idle) and its latency counts from when it was *due*, so time
spent waiting for a connection is charged to the server (no coordinated omission). Times are
``perf_counter`` (uvloop's own clock ticks in whole milliseconds). Prints one
JSON line: offered and achieved rate, p50/p90/p99/max in µs, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import cast

import orjson
import uvloop

MAX_CONNECTIONS = 1024  # past this, due requests wait for a connection (and that wait is counted)
WARMUP_S = 1.0  # the first second's requests are sent but not counted


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; Content-Length responses."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buf[:end + 4 + length]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("closed"))

    def send(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


class Generator:
    def __init__(self, port: int, campaign: str, token: str, rate: float, seconds: float) -> None:
        self.port, self.rate, self.seconds = port, rate, seconds
        self.path = f"/v1/campaigns/{campaign}/reservations"
        self.token = token
        self.tag = os.urandom(4).hex()
        self.idle: list[_Conn] = []
        self.opened = 0
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0

    def request(self, i: int) -> bytes:
        body = b'{"user_id":"ol%d","product_id":"p1","units":1}' % (i % 100_000)
        return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nIdempotency-Key: %s-%d\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (self.path.encode(), self.token.encode(), self.tag.encode(), i, len(body), body))

    async def one(self, i: int, due: float, counted: bool) -> None:
        loop = asyncio.get_running_loop()
        async with self.slots:
            try:
                conn = self.idle.pop() if self.idle else None
                if conn is None:
                    _, conn = await loop.create_connection(_Conn, "127.0.0.1", self.port)
                    self.opened += 1
                status = await conn.send(self.request(i))
                self.idle.append(conn)
            except Exception:  # any failure is a counted error, not a crash
                self.errors += 1
                return
        if counted:
            self.latencies.append(time.perf_counter() - due)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    async def run(self) -> dict[str, object]:
        total = int(self.rate * (self.seconds + WARMUP_S))
        start = time.perf_counter() + 0.05
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while i < total:
            now = time.perf_counter()
            while i < total and start + i / self.rate <= now:
                due = start + i / self.rate
                task = asyncio.create_task(self.one(i, due, due - start >= WARMUP_S))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, start + i / self.rate - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        return self.summary()

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> int:
            return int(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6) if lat else 0

        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        return {"offered_rps": self.rate, "achieved_rps": round(len(lat) / self.seconds, 1), "requests": len(lat),
                "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99), "max_us": int(lat[-1] * 1e6) if lat else 0,
                "non2xx": len(lat) - ok, "errors": self.errors, "connections": self.opened}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--campaign", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--rate", type=float, required=True, help="requests per second offered")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds (after 1 s of warm-up)")
    a = ap.parse_args()
    result = uvloop.run(Generator(a.port, a.campaign, a.token, a.rate, a.seconds).run())
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
