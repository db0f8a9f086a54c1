"""Real servers for tests: a private redis-server per test session (or per fault test).

Tests never touch a Redis they did not start: each ``RedisServer`` binds a free loopback port
and a temporary directory, and is killed when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server not found: run `make setup` (it installs Debian's redis-server)")
    return path


def wait_for_ping(proc: subprocess.Popen[bytes], port: int, directory: str, timeout_s: float = 10) -> None:
    """Until the redis-server ``proc`` answers PING on ``port`` (after any AOF loading), or fail naming its log."""
    deadline = time.monotonic() + timeout_s
    client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start; see {directory}/redis.log")
            time.sleep(0.02)
    finally:
        client.close()


class RedisServer:
    """A private redis-server on a free loopback port; ``durable`` turns on AOF ``always``."""

    def __init__(self, *, durable: bool = False, port: int | None = None, directory: str | None = None):
        self.port = port or free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="fs-redis-")
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--maxmemory-policy", "noeviction",
                "--logfile", str(Path(self.dir) / "redis.log")]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_ping(self.proc, self.port, self.dir)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
