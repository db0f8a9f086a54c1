"""campaign_stats after a scripted sale: every figure of the docs/API.md stats body, exactly."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from engine import keys
from engine.core import Engine
from engine.errors import NotFound
from engine.ops.stats import REJECTION_CODES, campaign_stats
from tests.ops.conftest import publish_persisted
from tests.ops.sale import ALPHA, BETA, EXPECTED, EngineDriver, definition

API_FIELDS = ["campaign_id", "state", "as_of", "total_units", "sold_units", "held_units", "remaining_units",
              "sell_through", "buyers", "units_per_second_1m", "projected_sellout_at", "rejections", "ledger",
              "products", "damaged_records"]


async def test_stats_after_a_sale(engine: Engine, sold: str) -> None:
    await publish_persisted(engine.redis, sold, 4)
    s = await campaign_stats(engine, sold)

    assert list(s) == API_FIELDS
    assert s["campaign_id"] == sold
    assert s["state"] == "open"
    assert (s["total_units"], s["sold_units"], s["held_units"], s["remaining_units"]) == (
        60, EXPECTED.sold, EXPECTED.held, EXPECTED.remaining)
    assert s["sell_through"] == round(35 / 60, 4) == 0.5833
    assert s["buyers"] == EXPECTED.buyers
    assert s["units_per_second_1m"] == round(EXPECTED.taken / 60, 2) == 1.05
    assert s["rejections"] == {code: EXPECTED.rejections.get(code, 0) for code in REJECTION_CODES}
    assert s["ledger"] == {"persisted_orders": 4, "lag_orders": EXPECTED.orders - 4}
    assert s["products"] == [
        {"product_id": pid, "total_units": total, "sold_units": sold_, "held_units": held, "remaining_units": rem}
        for pid, (sold_, held, rem, total) in EXPECTED.products.items()]
    assert s["damaged_records"] == 0


async def test_projected_sellout_is_now_plus_remaining_at_the_last_minutes_rate(engine: Engine, sold: str) -> None:
    s = await campaign_stats(engine, sold)
    as_of = datetime.fromisoformat(s["as_of"])
    sellout = datetime.fromisoformat(s["projected_sellout_at"])
    # 2 units left at 63 units a minute: 2 * 60000 // 63 ms
    assert sellout - as_of == timedelta(milliseconds=EXPECTED.remaining * 60_000 // EXPECTED.taken)


async def test_a_fresh_campaign_has_no_rate_and_no_projection(engine: Engine) -> None:
    await EngineDriver(engine, "fresh").load(definition("fresh"))
    s = await campaign_stats(engine, "fresh")
    assert s["units_per_second_1m"] == 0
    assert s["projected_sellout_at"] is None
    assert s["sell_through"] == 0
    assert s["remaining_units"] == 60
    assert s["rejections"] == dict.fromkeys(REJECTION_CODES, 0)
    assert s["ledger"] == {"persisted_orders": 0, "lag_orders": 0}
    assert [p["remaining_units"] for p in s["products"]] == [40, 40]


async def test_a_closed_campaign_projects_no_sellout(engine: Engine, sold: str) -> None:
    await engine.close_campaign(sold)
    s = await campaign_stats(engine, sold)
    assert s["state"] == "closed"
    assert s["projected_sellout_at"] is None
    assert s["sold_units"] == EXPECTED.sold  # closing changes no figure


async def test_a_product_remainder_is_capped_by_the_tranche(engine: Engine) -> None:
    """40 + 40 allotted, 60 in the tranche: with 50 of alpha+beta taken, beta has 10 left, not 30."""
    cid = "capped"
    d = EngineDriver(engine, cid)
    await d.load(definition(cid))
    for i in range(8):
        assert (await d.reserve(f"a{i}", ALPHA, 5, f"ka{i}"))[0] == "OK"
    assert (await d.reserve("b0", BETA, 10, "kb0"))[0] == "OK"
    s = await campaign_stats(engine, cid)
    assert {p["product_id"]: p["remaining_units"] for p in s["products"]} == {ALPHA: 0, BETA: 10}
    assert s["remaining_units"] == 10


async def test_stats_read_counters_without_scanning_keys(engine: Engine, sold: str) -> None:
    """The stats read touches only the campaign's meta, counters, rate and ledger hashes."""
    monitor_client = engine.redis.client()
    seen: list[str] = []
    async with monitor_client.monitor() as m:
        await campaign_stats(engine, sold)
        await engine.redis.ping()  # a marker: everything before it was the stats read
        async for cmd in m.listen():
            if cmd["command"].upper().startswith("PING"):
                break
            seen.append(cmd["command"])
    await monitor_client.aclose()
    assert {c.split()[0].upper() for c in seen} == {"HMGET", "HGETALL", "HGET", "TIME"}
    k = keys.CampaignKeys(sold)
    touched = {c.split()[1] for c in seen if len(c.split()) > 1}
    assert touched == {k.meta, k.counters, k.rate, k.ledger}


async def test_unknown_campaign_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        await campaign_stats(engine, "no-such-campaign")
