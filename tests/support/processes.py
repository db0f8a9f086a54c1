"""flashsale processes for tests: a real API server on a real socket, a real writer process.

They run the installed ``flashsale`` command (``.venv/bin/flashsale``), exactly as an operator
would, with settings passed through the ``FLASHSALE_*`` environment of docs/API.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.servers import free_port

#: At least 16 characters each (shorter ones are refused at start); base64 with its padding.
STOREFRONT_TOKENS = {"shop-a": "dG9rLXNob3AtYS0wMQ==", "shop-b": "dG9rLXNob3AtYi0wMg=="}
ADMIN_TOKEN = "dG9rLWFkbWluLTAwMDE="
FLASHSALE = str(Path(sys.executable).with_name("flashsale"))


def base_env(redis_url: str, **extra: str) -> dict[str, str]:
    # FLASHSALE_FAST_PATH passes through: `make test-slowpath` runs the servers with it off
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_") or k == "FLASHSALE_FAST_PATH"}
    env.update({
        "FLASHSALE_REDIS_URL": redis_url,
        "FLASHSALE_STOREFRONT_TOKENS": ",".join(f"{n}={t}" for n, t in STOREFRONT_TOKENS.items()),
        "FLASHSALE_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLASHSALE_ALLOW_VOLATILE_REDIS": "1",
        "FLASHSALE_LOG_LEVEL": "WARNING",
    })
    env.update(extra)
    return env


class Process:
    """A child process with its output in a log file (shown when a test fails to start it)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.log = tempfile.NamedTemporaryFile(prefix="fs-proc-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)  # the whole group: server workers too

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(10)
        os.unlink(self.log.name)


class ApiServer(Process):
    """``flashsale serve`` on a free loopback port."""

    def __init__(self, redis_url: str, *, workers: int = 1, server: str | None = None,
                 port: int | None = None, ops: bool = False, args: tuple[str, ...] = (), **env: str) -> None:
        self.port = port or free_port()
        self.ops_port = free_port() if ops else None  # the ops listener (--ops-port), when asked for
        argv = [FLASHSALE, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        if server:
            argv += ["--server", server]
        if self.ops_port is not None:
            argv += ["--ops-port", str(self.ops_port)]
        super().__init__([*argv, *args], base_env(redis_url, **env))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        assert self.ops_port is not None, "started without ops=True"
        return f"http://127.0.0.1:{self.ops_port}"

    def start(self, timeout: float = 30) -> ApiServer:
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"flashsale serve exited:\n{self.output()}")
            try:
                urls = [self.url] if self.ops_port is None else [self.url, self.ops_url]
                if all(httpx.get(f"{u}/healthz", timeout=0.5).status_code == 200 for u in urls):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"flashsale serve did not become healthy:\n{self.output()}")


def storefront_headers(name: str = "shop-a", key: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {STOREFRONT_TOKENS[name]}"}
    if key is not None:
        h["Idempotency-Key"] = key
    return h


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
