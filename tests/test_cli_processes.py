"""The operator's commands against real processes: `campaign load --open-in`, `loadgen` refusing
what it cannot drive, `serve` and `writer` draining to exit 0, and one log format for all of them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from engine.loadgen.campaigns import read_definition, shifted
from engine.loadgen.record import Record
from engine.loadgen.verdict import Observed, judge
from tests.support.processes import FLASHSALE, STOREFRONT_TOKENS, ApiServer, Process, base_env

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "campaigns" / "yulebao-2014-p2.toml"
ESCAPE = "\x1b"


def run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLASHSALE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return base_env(redis_url)


@pytest.fixture
def api(redis_url: str) -> Iterator[ApiServer]:
    server = ApiServer(redis_url, FLASHSALE_LOG_LEVEL="INFO").start(timeout=60)
    yield server
    server.stop()


# -- campaign load --open-in ---------------------------------------------------------------------

def test_open_in_shifts_the_window_and_keeps_its_length(env: dict[str, str]) -> None:
    done = run("campaign", "load", str(CAMPAIGN), "--open-in", "5m", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # an open window: no warning
    created, shifted_line = done.stdout.splitlines()
    assert created == "campaign yulebao-2014-p2 created"
    m = re.fullmatch(r"window shifted from (\S+) – (\S+) to (\S+) – (\S+) \(opens in 300 s\)", shifted_line)
    assert m is not None, shifted_line
    old_open, old_close, new_open, new_close = (instant(g) for g in m.groups())
    assert new_close - new_open == old_close - old_open
    now = asyncio.run(redis_now(env["FLASHSALE_REDIS_URL"]))
    assert 0 < new_open - now <= 300
    shown = orjson.loads(run("campaign", "show", "yulebao-2014-p2", env=env).stdout)
    assert instant(shown["opens_at"]) == new_open and instant(shown["closes_at"]) == new_close


async def redis_now(url: str) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        secs, micros = await client.time()
        return secs + micros / 1e6
    finally:
        await client.aclose()


def test_loading_an_opened_campaign_again_says_what_to_do(env: dict[str, str]) -> None:
    assert run("campaign", "load", str(CAMPAIGN), "--open-in", "0s", env=env).returncode == 0
    done = run("campaign", "load", str(CAMPAIGN), "--open-in", "1m", env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "has already opened" in lines[0] and "under another id" in lines[0]


def test_loading_a_closed_window_warns_in_one_line(env: dict[str, str]) -> None:
    done = run("campaign", "load", str(CAMPAIGN), env=env)
    assert done.returncode == 0
    assert done.stdout.strip() == "campaign yulebao-2014-p2 created"
    warning = done.stderr.strip().splitlines()
    assert len(warning) == 1 and "closed at 2014-06-13T16:00:00.000Z" in warning[0] and "--open-in" in warning[0]


# -- loadgen refuses what it cannot drive ----------------------------------------------------------

def loadgen(api: ApiServer, env: dict[str, str], campaign: str, *args: str) -> subprocess.CompletedProcess[str]:
    # a far smaller bound than the 30 s loadgen waits for an API that does not answer yet
    return run("loadgen", "--url", api.url, "--campaign", campaign, "--duration", "5", "--no-progress", *args,
               env=env, timeout=20)


@pytest.mark.parametrize(("token", "campaign", "expected"), [
    ("wrong-token", "yulebao-2014-p2", "(401)"),
    (STOREFRONT_TOKENS["shop-a"], "no-such-campaign", "(404)"),
])
def test_loadgen_fails_at_once_on_answers_that_cannot_change(api: ApiServer, env: dict[str, str], token: str,
                                                             campaign: str, expected: str) -> None:
    assert run("campaign", "load", str(CAMPAIGN), "--open-in", "1s", env=env).returncode == 0
    done = loadgen(api, env, campaign, "--token", token)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr


def test_loadgen_refuses_a_closed_campaign(api: ApiServer, env: dict[str, str]) -> None:
    assert run("campaign", "load", str(CAMPAIGN), env=env).returncode == 0  # closed in 2014
    done = loadgen(api, env, "yulebao-2014-p2")
    assert done.returncode == 2
    assert "closed at 2014-06-13T16:00:00.000Z" in done.stderr and "--open-in" in done.stderr
    assert "verdict" not in done.stdout.lower()


def test_loadgen_refuses_a_campaign_opening_after_the_run(api: ApiServer, env: dict[str, str]) -> None:
    assert run("campaign", "load", str(CAMPAIGN), "--open-in", "1h", env=env).returncode == 0
    done = loadgen(api, env, "yulebao-2014-p2")
    assert done.returncode == 2
    assert "after this run's --duration 5 s" in done.stderr


def test_a_run_without_requests_is_never_clean() -> None:
    d = shifted(read_definition(CAMPAIGN), opens_in_s=-1, campaign_id="no-requests")
    stats = {"total_units": d["total_units"], "sold_units": 0, "held_units": 0, "remaining_units": d["total_units"],
             "products": []}
    verdict = judge(Record(campaign_id="no-requests", user_prefix="u"), Observed(definition=d, stats=stats, now_ms=0))
    assert not verdict.ok and verdict.exit_code == 1
    assert any("no request was made" in c.detail for c in verdict.violations)


# -- serve and writer: exit 0 on SIGTERM, one log format ---------------------------------------------

def json_lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_serve_drains_to_exit_0_and_logs_json_without_escapes(api: ApiServer) -> None:
    assert api.terminate(30) == 0, api.output()
    out = api.output()
    records = json_lines(out)
    assert any(r["msg"] == "Application shutdown complete." for r in records)
    assert any(str(r["msg"]).startswith("serving with uvicorn, 1 worker(s)") for r in records)
    assert all(line.startswith("{") for line in out.splitlines() if line.strip())  # every line: one format
    assert ESCAPE not in out
    assert all("color_message" not in r for r in records)


def test_plain_log_format_for_serve_and_writer(redis_url: str, tmp_path: Path) -> None:
    server = ApiServer(redis_url, FLASHSALE_LOG_LEVEL="INFO", FLASHSALE_LOG_FORMAT="plain").start(timeout=60)
    try:
        assert server.terminate(30) == 0
        lines = [ln for ln in server.output().splitlines() if "uvicorn" in ln]
        assert lines and not any(ln.startswith("{") for ln in lines)
        assert any(re.match(r"\d{4}-\d\d-\d\dT\S+Z info uvicorn\.error Application startup complete\.", ln)
                   for ln in lines)
        assert ESCAPE not in server.output()
    finally:
        server.stop()
    db = f"sqlite:///{tmp_path}/ledger.db"
    env = base_env(redis_url, FLASHSALE_LOG_LEVEL="INFO")
    done = run("writer", "--burst", "--allow-volatile-redis", "--log-format", "plain", "--database-url", db, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\S+Z \w+ flashsale\.writer ", ln) for ln in lines), lines


def test_writer_logs_json_like_serve(redis_url: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/ledger.db"
    env = base_env(redis_url, FLASHSALE_LOG_LEVEL="INFO")
    writer = Process([FLASHSALE, "writer", "--allow-volatile-redis", "--database-url", db], env).start()
    try:
        for _ in range(600):
            if "schema version" in writer.output():
                break
            time.sleep(0.05)
        assert writer.terminate(30) == 0, writer.output()
        records = json_lines(writer.output())
        assert records and all(r["logger"] == "flashsale.writer" for r in records)
        assert any("ledger sqlite at schema version" in str(r["msg"]) for r in records)
        assert all(line.startswith("{") for line in writer.output().splitlines() if line.strip())
    finally:
        writer.stop()
