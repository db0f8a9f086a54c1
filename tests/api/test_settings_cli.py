"""Settings are checked at start: a bad value is one line naming the setting and its range, exit 2,
never a traceback or a server that starts and hangs its requests. Through the real command."""

from __future__ import annotations

import subprocess

import pytest

from engine.settings import BOUNDS, Settings, SettingsError
from tests.support.processes import FLASHSALE, base_env

BAD_ENV = [  # (variable, value, what the line must say)
    ("FLASHSALE_BATCH_MAX", "0", "1..4096"),
    ("FLASHSALE_BATCH_MAX", "4097", "1..4096"),
    ("FLASHSALE_BATCH_MAX", "lots", "1..4096"),
    ("FLASHSALE_BATCH_INFLIGHT", "0", "1..1024"),
    ("FLASHSALE_BATCH_INFLIGHT", "-3", "1..1024"),
    ("FLASHSALE_REDIS_TIMEOUT", "0", "> 0"),
    ("FLASHSALE_REDIS_TIMEOUT", "-1", "> 0"),
    ("FLASHSALE_REDIS_TIMEOUT", "nan", "> 0"),
    ("FLASHSALE_REDIS_TIMEOUT", "half a second", "> 0"),
    ("FLASHSALE_SWEEP_INTERVAL", "0", "> 0"),
    ("FLASHSALE_SWEEP_INTERVAL", "inf", "> 0"),
    ("FLASHSALE_WORKERS", "0", "1..64"),
    ("FLASHSALE_WORKERS", "2.5", "1..64"),
    ("FLASHSALE_PORT", "0", "1..65535"),
    ("FLASHSALE_PORT", "65536", "1..65535"),
    ("FLASHSALE_PORT", "http", "1..65535"),
    ("FLASHSALE_SERVER", "nginx", "uvicorn, granian"),
    ("FLASHSALE_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLASHSALE, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("variable", "value", "allowed"), BAD_ENV)
def test_serve_refuses_a_bad_setting_in_one_line(redis_url: str, variable: str, value: str, allowed: str) -> None:
    # a free port unless the port is the bad setting: a server that started anyway would be found out
    done = _run(["serve", "--host", "127.0.0.1"], base_env(redis_url, **{variable: value}))
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert variable in lines[0] and allowed in lines[0] and value in lines[0], lines


@pytest.mark.parametrize(("args", "env", "named"), [
    (["serve", "--port", "70000"], {}, "FLASHSALE_PORT"),
    (["serve", "--workers", "0"], {}, "--workers"),  # click's own range check: exit 2 as well
    (["sweeper", "--interval", "0"], {}, "FLASHSALE_SWEEP_INTERVAL"),
    (["campaign", "show", "c1"], {"FLASHSALE_BATCH_MAX": "9999"}, "FLASHSALE_BATCH_MAX"),
    (["writer", "--burst"], {"FLASHSALE_REDIS_TIMEOUT": "soon"}, "FLASHSALE_REDIS_TIMEOUT"),
])
def test_every_command_refuses_a_bad_setting(redis_url: str, args: list[str], env: dict[str, str],
                                             named: str) -> None:
    done = _run(args, base_env(redis_url, **env))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert named in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_validate_names_the_setting_and_accepts_the_defaults() -> None:
    assert Settings().validate() == Settings()
    assert Settings(batch_max=4096, batch_inflight=1, redis_timeout_s=1, port=1, workers=64).validate()
    for name, bound in BOUNDS.items():
        below = 0 if bound.low > 0 or bound.open_low else -1  # replica_acks may be 0
        with pytest.raises(SettingsError, match=bound.env):
            Settings(**{name: below}).validate()
