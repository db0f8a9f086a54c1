"""Every error a user can make is one or two lines naming the fix and a non-zero exit (2 for a usage
error), never a traceback: each case through the real ``flashsale`` executable."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.processes import FLASHSALE, base_env
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "campaigns" / "yulebao-2014-p1.toml"
GOOD = CAMPAIGN.read_text(encoding="utf-8")


def run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLASHSALE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def assert_short(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    err = done.stderr
    assert done.returncode == code, f"exit {done.returncode}, want {code}:\n{err}"
    assert "Traceback" not in err and "Traceback" not in done.stdout
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, f"{len(lines)} lines on stderr:\n{err}"
    assert "Idempotency-Key" not in err  # that advice is for HTTP callers
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    return err


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return base_env(redis_url)


@pytest.fixture
def down_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def toml(tmp_path: Path, text: str, name: str = "c.toml") -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


# -- campaign files ------------------------------------------------------------------------------

def test_bad_toml(env: dict[str, str], tmp_path: Path) -> None:
    assert_short(run("campaign", "load", toml(tmp_path, GOOD + "\nbroken = \n"), env=env), 2, "not valid TOML")


def test_unknown_field(env: dict[str, str], tmp_path: Path) -> None:
    path = toml(tmp_path, GOOD.replace("hold_seconds", "hold_secs"))
    assert_short(run("campaign", "load", path, env=env), 2, f"{path}: hold_secs: unknown field")


def test_bad_value(env: dict[str, str], tmp_path: Path) -> None:
    bad = GOOD.replace("unit_price = 10000", "unit_price = 100.5")
    assert bad != GOOD
    assert_short(run("campaign", "load", toml(tmp_path, bad), env=env), 2, "unit_price")


def test_missing_and_unreadable_files(env: dict[str, str], tmp_path: Path) -> None:
    assert_short(run("campaign", "load", str(tmp_path / "nope.toml"), env=env), 2, "does not exist")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert_short(run("campaign", "load", str(binary), env=env), 2)


def test_bad_duration(env: dict[str, str]) -> None:
    assert_short(run("campaign", "load", str(CAMPAIGN), "--open-in", "soon", env=env), 2, "30s")


def test_unknown_command_is_two_lines(env: dict[str, str]) -> None:
    assert_short(run("campain", env=env), 2, "--help")


# -- Redis ---------------------------------------------------------------------------------------

def test_malformed_redis_url(env: dict[str, str]) -> None:
    assert_short(run("campaign", "show", "x", "--redis-url", "127.0.0.1:6379", env=env), 2, "--redis-url")
    for url in ("localhost", "redis://127.0.0.1:port/0", "redis://[::1"):
        assert_short(run("campaign", "show", "x", env={**env, "FLASHSALE_REDIS_URL": url}), 2,
                     "bad Redis URL", "FLASHSALE_REDIS_URL")


@pytest.mark.parametrize("args", [
    ("reconcile", "c1"),
    ("recover", "c1"),
    ("campaign", "show", "c1"),
    ("campaign", "load", str(CAMPAIGN)),
    ("stats", "c1"),
])
def test_redis_down(env: dict[str, str], down_redis_url: str, tmp_path: Path, args: tuple[str, ...]) -> None:
    e = {**env, "FLASHSALE_REDIS_URL": down_redis_url, "FLASHSALE_DATABASE_URL": f"sqlite:///{tmp_path}/l.db"}
    if args[0] == "reconcile":  # a ledger to read, so that Redis is what fails
        assert run("writer", "--burst", "--allow-volatile-redis", env={**e, "FLASHSALE_REDIS_URL": env[
            "FLASHSALE_REDIS_URL"]}).returncode == 0
    assert_short(run(*args, env=e), 1, "Redis did not answer", "--redis-url")


def test_debug_shows_the_traceback(env: dict[str, str], down_redis_url: str) -> None:
    e = {**env, "FLASHSALE_REDIS_URL": down_redis_url}
    assert "Traceback" in run("--debug", "campaign", "show", "c1", env=e).stderr
    assert "Traceback" in run("campaign", "show", "c1", env={**e, "FLASHSALE_DEBUG": "1"}).stderr


# -- the ledger ----------------------------------------------------------------------------------

def test_bad_database_url(env: dict[str, str], tmp_path: Path) -> None:
    assert_short(run("export", "holders", "c1", "--database-url", "mysql://db/x", env=env), 2, "sqlite:///")
    assert_short(run("export", "holders", "c1", "--database-url", "postgresql://u@127.0.0.1:port/db", env=env), 2,
                 "bad database URL", "--database-url")
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("not a database\n")
    for args in (("export", "holders", "c1"), ("writer", "--burst", "--allow-volatile-redis")):
        assert_short(run(*args, "--database-url", f"sqlite:///{not_sqlite}", env=env), 1, "not a database")


def test_sqlite_in_a_missing_directory_is_not_created(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    url = f"sqlite:///{missing}/x.db"
    err = assert_short(run("writer", "--burst", "--allow-volatile-redis", "--database-url", url, "--log-format",
                           "plain", env=env), 1, "does not exist")
    assert str(missing) in err
    assert not (tmp_path / "no").exists()


def test_read_only_commands_create_no_file(env: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    for args in (("export", "holders", "c1"), ("reconcile", "c1")):
        assert_short(run(*args, "--database-url", url, env=env), 1, "does not exist", "FLASHSALE_DATABASE_URL")
    assert list(tmp_path.iterdir()) == []


def test_read_only_commands_create_no_schema(env: dict[str, str], pg_url: str) -> None:
    for args in (("export", "holders", "c1"), ("reconcile", "c1")):
        assert_short(run(*args, "--database-url", pg_url, env=env), 1, "no ledger")

    async def tables() -> list[str]:
        conn = await asyncpg.connect(pg_url)
        try:
            return [r[0] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        finally:
            await conn.close()

    assert asyncio.run(tables()) == []


def test_unknown_campaign_is_exit_1(env: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    assert run("writer", "--burst", "--allow-volatile-redis", "--database-url", url, env=env).returncode == 0
    for args in (("export", "holders", "nope"), ("reconcile", "nope")):
        assert_short(run(*args, "--database-url", url, env=env), 1, "campaign 'nope' not found")
    assert_short(run("campaign", "show", "nope", env=env), 1, "campaign 'nope' not found")


def test_writer_burst_gives_up_on_a_missing_database(env: dict[str, str], pg_url: str) -> None:
    gone = pg_url + "_never_created"
    done = run("writer", "--burst", "--allow-volatile-redis", "--db-wait", "1", "--database-url", gone, env=env)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("flashsale writer: gave up after 1 s") and "--db-wait" in last
    assert "Traceback" not in done.stderr


# -- serve and loadgen ---------------------------------------------------------------------------

@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_serve_on_a_port_in_use(env: dict[str, str], taken_port: int) -> None:
    assert_short(run("serve", "--port", str(taken_port), env=env), 1, "already in use", "--port")


def test_bad_setting_is_a_usage_error(env: dict[str, str]) -> None:
    assert_short(run("serve", env={**env, "FLASHSALE_LOG_FORMAT": "xml"}), 2, "FLASHSALE_LOG_FORMAT")


def test_loadgen_url_without_scheme(env: dict[str, str]) -> None:
    assert_short(run("loadgen", "--campaign", "c1", "--url", "127.0.0.1:8000", env=env), 2, "http://")


def test_loadgen_judge_of_a_file_that_is_no_record(env: dict[str, str], tmp_path: Path) -> None:
    assert_short(run("loadgen", "--campaign", "c1", "--judge", toml(tmp_path, "not json", "r.json"), env=env),
                 2, "not a saved run record")


def test_stats_url_without_scheme(env: dict[str, str]) -> None:
    assert_short(run("stats", "c1", "--url", "127.0.0.1:8000", "--token", "t", env=env), 2, "http://")


def test_no_token_configured(env: dict[str, str]) -> None:
    e = {k: v for k, v in env.items() if k != "FLASHSALE_STOREFRONT_TOKENS"}
    assert_short(run("loadgen", "--campaign", "c1", env=e), 2, "--token")

