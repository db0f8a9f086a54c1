"""The commands as an operator runs them (``flashsale …`` processes, FLASHSALE_REDIS_URL naming
one node of the test cluster): ``campaign load/show``, ``stats``, ``registrations import``,
``export queue``, ``writer --burst``, ``reconcile``, ``export holders``, ``campaign archive``.
Tests of tests/test_cli_processes.py and tests/admission/test_registry.py are bound in again."""

from __future__ import annotations

import asyncio

import orjson

from engine.core import Engine
from tests import test_cli_processes as cli
from tests.admission import test_registry as registry
from tests.ledger.sale import campaign, flashsale, sell
from tests.support.processes import base_env

env = cli.env  # the fixture, on the cluster's redis_url
test_open_in_shifts_the_window_and_keeps_its_length = cli.test_open_in_shifts_the_window_and_keeps_its_length
test_loading_an_opened_campaign_again_says_what_to_do = cli.test_loading_an_opened_campaign_again_says_what_to_do
test_loading_a_closed_window_warns_in_one_line = cli.test_loading_a_closed_window_warns_in_one_line
test_csv_import_good_rows = registry.test_csv_import_good_rows
test_csv_import_usage_and_refusals = registry.test_csv_import_usage_and_refusals


async def test_a_campaigns_life_through_the_commands(engine: Engine, redis_url: str, db_url: str) -> None:
    """Sell on a campaign, then show, stats, the writer, reconcile, export and archive it, each
    a process started with one node's URL."""
    e = base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)
    cid = "cli-cluster"
    await engine.load_campaign(campaign(cid, hold_seconds=1))
    sale = await sell(engine, cid, 300, confirm_every=2, cancel_every=3)
    await asyncio.sleep(1.1)
    await engine.expire_due(cid, 10_000)  # nothing held: the campaign may be archived once closed

    shown = await flashsale("campaign", "show", cid, env=e)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["id"] == cid
    stats = await flashsale("stats", cid, "--json", env=e)
    assert stats.returncode == 0, stats.stderr
    assert orjson.loads(stats.stdout)["sold_units"] == sale.units
    burst = await flashsale("writer", "--burst", env=e)
    assert burst.returncode == 0, burst.stderr
    rec = await flashsale("reconcile", cid, env=e)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    holders = await flashsale("export", "holders", cid, "--format", "json", env=e)
    assert holders.returncode == 0, holders.stderr
    assert orjson.loads(holders.stdout)["total_units"] == sale.units
    refused = await flashsale("campaign", "archive", cid, env=e)
    assert refused.returncode == 1 and "not closed" in refused.stdout + refused.stderr
    await engine.close_campaign(cid)
    archived = await flashsale("campaign", "archive", cid, env=e)
    assert archived.returncode == 0, archived.stdout + archived.stderr
    assert f"campaign {cid} archived: {len(sale.confirmed)} orders" in archived.stdout
    assert cid not in await engine.campaign_ids()
