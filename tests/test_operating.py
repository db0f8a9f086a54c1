"""README's "Operating it" works as written: its commands, parsed out of the README's code block,
run one after the other against a private redis-server (AOF on, as the README asks) and a fresh
PostgreSQL database, with a real `flashsale serve` and `flashsale writer` in the background.

Only what the README's ``export`` lines set is substituted (the URLs, the port, the tokens, the
database URL): every ``flashsale`` command runs exactly as printed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import FLASHSALE, Process
from tests.support.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def operating_block() -> list[str]:
    """The lines of the first ``sh`` block under README's "## Operating it"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Operating it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's Operating it has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    server = RedisServer(durable=True).start()
    yield server
    server.stop()


def test_readme_block_is_what_the_test_runs() -> None:
    lines = operating_block()
    exports = [w for line in lines if (w := words(line))[0] == "export"]
    names = {a.split("=", 1)[0] for w in exports for a in w[1:]}
    assert names == {"FLASHSALE_REDIS_URL", "FLASHSALE_DATABASE_URL", "FLASHSALE_PORT", "FLASHSALE_URL",
                     "FLASHSALE_STOREFRONT_TOKENS", "FLASHSALE_ADMIN_TOKEN"}
    commands = [w for line in lines if (w := words(line))[0] != "export"]
    assert all(w[0] == "flashsale" for w in commands)
    assert [w[1] for w in commands] == ["serve", "writer", "campaign", "stats", "loadgen", "reconcile", "export"]


def test_operating_it_as_written(durable_redis: RedisServer, pg_url: str) -> None:
    port = free_port()
    ours = {  # the README's exports, pointed at this test's services
        "FLASHSALE_REDIS_URL": durable_redis.url,
        "FLASHSALE_DATABASE_URL": pg_url,
        "FLASHSALE_PORT": str(port),
        "FLASHSALE_URL": f"http://127.0.0.1:{port}",
        "FLASHSALE_STOREFRONT_TOKENS": "shop-a=tok-readme-shop-0123456789",
        "FLASHSALE_ADMIN_TOKEN": "tok-readme-admin-0123456789",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["PATH"] = f"{Path(FLASHSALE).parent}{os.pathsep}{env.get('PATH', '')}"  # `flashsale` as typed
    background: list[tuple[str, Process]] = []
    ran: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    try:
        for line in operating_block():
            w = words(line)
            if w[0] == "export":
                for assignment in w[1:]:
                    name = assignment.split("=", 1)[0]
                    env[name] = ours[name]
                continue
            if w[-1] == "&":
                proc = Process(w[:-1], dict(env)).start()
                background.append((w[1], proc))
                if w[1] == "serve":
                    wait_healthy(proc, ours["FLASHSALE_URL"])
                continue
            done = subprocess.run(w, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
            ran.append((w[1], done))
            assert done.returncode == 0, f"{line}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
            assert "Traceback" not in done.stderr
        out = dict((name, done.stdout) for name, done in ran)
        assert "window shifted from 2014-03-26T02:00:00.000Z" in out["campaign"]
        assert "verdict" in out["loadgen"].lower()
        holders = out["export"].splitlines()
        assert holders[0] == "user_id,product_id,units,amount" and len(holders) > 1  # someone bought
        for name, proc in background:  # both drain on SIGTERM and exit 0
            assert proc.alive(), f"{name} exited early:\n{proc.output()}"
            assert proc.terminate(30) == 0, f"{name}:\n{proc.output()[-3000:]}"
            assert "Traceback" not in proc.output()
    finally:
        for _, proc in background:
            proc.stop()


def wait_healthy(proc: Process, url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"flashsale serve exited:\n{proc.output()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.signal(signal.SIGKILL)
    raise AssertionError(f"flashsale serve did not become healthy:\n{proc.output()}")
