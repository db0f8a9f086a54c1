"""An open-loop load generator: POST reservations at a fixed offered rate, whatever the answers do.

    python -m scripts.bench.http_openloop --port 8000 --campaign ID --token TOK --rate 3000 --seconds 8

wrk is closed-loop: at saturation its latencies are mostly queueing, and a stalled server also
stalls the load. Here request i is due at ``start + i / rate``; it goes out on an idle keep-alive
connection (a new one is opened when none is idle) and its latency counts from when it was *due*,
so time spent waiting for a connection is charged to the server (no coordinated omission). Times
are ``perf_counter`` (uvloop's own clock ticks in whole milliseconds). The client is callbacks on
protocols, no task or future per request, so that it takes little of the CPU it shares with the
server. Prints one JSON line: offered and achieved rate, p50/p90/p99/max in µs, failures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections import deque
from typing import cast

import orjson
import uvloop

MAX_CONNECTIONS = 1024  # past this, due requests wait for a connection (and that wait is counted)
WARMUP_S = 1.0  # the first second's requests are sent but not counted


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; responses carry Content-Length."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.due = 0.0
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not an asyncio.Transport subclass
        self.gen.ready(self)

    def send(self, request: bytes, due: float, counted: bool) -> None:
        assert self.transport is not None
        self.due, self.counted = due, counted
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        length = 0
        for line in buf[:end].lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(buf) < end + 4 + length:
            self.buf = buf
            return
        self.buf = buf[end + 4 + length:]
        self.gen.answered(self, int(buf[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class Generator:
    def __init__(self, port: int, campaign: str, token: str, rate: float, seconds: float) -> None:
        self.port, self.rate, self.seconds = port, rate, seconds
        self.head = (f"POST /v1/campaigns/{campaign}/reservations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n").encode()
        self.tag = os.urandom(4).hex().encode()
        self.idle: list[_Conn] = []
        self.waiting: deque[tuple[bytes, float, bool]] = deque()
        self.opening = 0
        self.opened = 0
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.outstanding = 0
        self.all_fired = False
        self.finished = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # connections being opened (strong references)

    def request(self, i: int) -> bytes:
        body = b'{"user_id":"ol%d","product_id":"p1","units":1}' % (i % 100_000)
        return self.head + b"Idempotency-Key: %s-%d\r\nContent-Length: %d\r\n\r\n%s" % (self.tag, i, len(body), body)

    def fire(self, i: int, due: float, counted: bool) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(self.request(i), due, counted)
            return
        self.waiting.append((self.request(i), due, counted))
        if self.opened + self.opening < MAX_CONNECTIONS and self.opening < len(self.waiting):
            self.opening += 1
            task = asyncio.ensure_future(self._open())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
            self.opened += 1
        except OSError:
            if self.waiting:
                self.waiting.popleft()
                self._finish_one(None, 0.0, False)
        finally:
            self.opening -= 1

    def ready(self, conn: _Conn) -> None:
        if self.waiting:
            request, due, counted = self.waiting.popleft()
            conn.send(request, due, counted)
        else:
            self.idle.append(conn)

    def answered(self, conn: _Conn, status: int) -> None:
        self._finish_one(status, conn.due, conn.counted)
        self.ready(conn)

    def lost(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        elif conn.due:
            self._finish_one(None, conn.due, conn.counted)
        self.opened -= 1

    def _finish_one(self, status: int | None, due: float, counted: bool) -> None:
        self.outstanding -= 1
        if status is None:
            self.errors += 1
        elif counted:
            self.latencies.append(time.perf_counter() - due)
            self.statuses[status] = self.statuses.get(status, 0) + 1
        if self.outstanding == 0 and self.all_fired:
            self.finished.set()

    async def run(self) -> dict[str, object]:
        total = int(self.rate * (self.seconds + WARMUP_S))
        start = time.perf_counter() + 0.05
        i = 0
        while i < total:
            now = time.perf_counter()
            while i < total and start + i / self.rate <= now:
                due = start + i / self.rate
                self.fire(i, due, due - start >= WARMUP_S)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, start + i / self.rate - time.perf_counter()))
        self.all_fired = True
        if self.outstanding:
            await asyncio.wait_for(self.finished.wait(), 60)
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        return self.summary()

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> int:
            return int(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6) if lat else 0

        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "offered_rps": self.rate,
                "achieved_rps": round(len(lat) / self.seconds, 1), "requests": len(lat),
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
