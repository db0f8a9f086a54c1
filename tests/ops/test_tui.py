"""`flashsale stats ID [--watch] [--json]` as an operator runs it, against the private Redis."""

from __future__ import annotations

import asyncio
import os

import orjson

from engine.core import Engine
from engine.ops.stats import campaign_stats
from tests.ops.sale import EXPECTED
from tests.support.processes import FLASHSALE


async def flashsale(*args: str, redis_url: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update({"FLASHSALE_REDIS_URL": redis_url, "COLUMNS": "160", "TERM": "dumb"})
    proc = await asyncio.create_subprocess_exec(FLASHSALE, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _stable(s: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in s.items() if k not in ("as_of", "projected_sellout_at")}


async def test_json_is_the_stats_body(engine: Engine, sold: str, redis_url: str) -> None:
    code, out, err = await flashsale("stats", sold, "--json", redis_url=redis_url)
    assert code == 0, err
    assert _stable(orjson.loads(out)) == _stable(await campaign_stats(engine, sold))


async def test_table_shows_the_figures(sold: str, redis_url: str) -> None:
    code, out, err = await flashsale("stats", sold, redis_url=redis_url)
    assert code == 0, err
    assert "58.33% sold" in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert lines["sold units"].split("│")[2].strip() == str(EXPECTED.sold)
    assert lines["remaining units"].split("│")[2].strip() == str(EXPECTED.remaining)
    assert lines["ledger lag (orders)"].split("│")[2].strip() == str(EXPECTED.orders)
    assert "USER_CAP_EXCEEDED" in out and "alpha" in out and "beta" in out


async def test_watch_refreshes_until_told_to_stop(sold: str, redis_url: str) -> None:
    code, out, err = await flashsale("stats", sold, "--watch", "--count", "3", "--interval", "0.1",
                                     redis_url=redis_url)
    assert code == 0, err
    assert "58.33% sold" in out


async def test_unknown_campaign_exits_1_naming_it(redis_url: str) -> None:
    code, out, err = await flashsale("stats", "nope", redis_url=redis_url)
    assert code == 1
    assert "campaign 'nope' not found" in err
    assert "Traceback" not in err + out
