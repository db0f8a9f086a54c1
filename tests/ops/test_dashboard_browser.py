"""The dashboard in real headless Chromium, against a real 2-worker `flashsale serve` after a sale.

The page's figures must equal the stats endpoint's, its chart must have points, and it must
follow a new sale without a reload. On the storefront listener it takes the admin token from its
URL fragment or asks for it (``test_dashboard_token.py``). Screenshots go to ``artifacts/`` (gitignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.ops.browser import Chromium, save
from tests.ops.conftest import API_CID as CID
from tests.ops.conftest import API_OTHER as OTHER
from tests.ops.conftest import fresh_get
from tests.ops.sale import ALPHA
from tests.support.processes import ADMIN_TOKEN, ApiServer, admin_headers, storefront_headers

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

#: Everything the page shows of one campaign: data-value of each field, per product and per code.
READ_CARD = """
((cid) => {
  const card = document.querySelector(`[data-campaign="${cid}"]`);
  if (!card) return null;
  const fields = {};
  for (const el of card.querySelectorAll(".top [data-field], h2 [data-field]"))
    fields[el.dataset.field] = {value: el.dataset.value, text: el.textContent};
  const products = {};
  for (const tr of card.querySelectorAll("tr[data-product]")) {
    const row = products[tr.dataset.product] = {};
    for (const td of tr.querySelectorAll("[data-field]")) row[td.dataset.field] = td.dataset.value;
  }
  const rejections = {};
  for (const tr of card.querySelectorAll("tr[data-code]")) rejections[tr.dataset.code] = tr.lastChild.dataset.value;
  const chart = card.querySelector(".chart");
  return {fields, products, rejections, points: Number(chart.dataset.points), canvas: !!chart.querySelector("canvas"),
          legend: [...card.querySelectorAll(".u-legend .u-series th")].map((th) => th.textContent.trim())};
})
"""


def with_token(url: str, token: str = ADMIN_TOKEN) -> str:
    """The page's URL carrying the admin token in its fragment, as the dashboard takes it."""
    return f"{url}#token={quote(token, safe='')}"


def stats(server: ApiServer) -> dict[str, Any]:
    res = fresh_get(f"{server.url}/v1/campaigns/{CID}/stats", headers=admin_headers())
    assert res.status_code == 200, res.text
    body: dict[str, Any] = res.json()
    return body


def assert_page_equals(page: dict[str, Any], s: dict[str, Any]) -> None:
    f = page["fields"]
    assert f["state"]["value"] == s["state"]
    for name in ("sold_units", "held_units", "remaining_units", "total_units", "buyers"):
        assert int(f[name]["value"]) == s[name], name
        assert f[name]["text"] == f"{s[name]:,}", name  # what ops read, not only the attribute
    assert float(f["sell_through"]["value"]) == s["sell_through"]
    assert f["sell_through"]["text"] == f"{s['sell_through'] * 100:.2f}%"
    assert float(f["units_per_second_1m"]["value"]) == s["units_per_second_1m"]
    assert int(f["persisted_orders"]["value"]) == s["ledger"]["persisted_orders"]
    assert int(f["lag_orders"]["value"]) == s["ledger"]["lag_orders"]
    assert (f["projected_sellout_at"]["value"] == "") == (s["projected_sellout_at"] is None)
    assert page["products"] == {
        p["product_id"]: {k: str(p[k]) for k in ("sold_units", "held_units", "remaining_units", "total_units")}
        for p in s["products"]}
    assert page["rejections"] == {code: str(n) for code, n in s["rejections"].items()}


async def test_dashboard_shows_the_stats_and_follows_the_sale(served: tuple[ApiServer, Path], tmp_path: Path) -> None:
    server, _ = served
    before = stats(server)
    async with Chromium.launch(tmp_path) as browser:
        await browser.goto(with_token(f"{server.url}/dashboard?campaign={CID}"))
        await browser.wait_for(f"""(() => {{ const c = document.querySelector('[data-campaign="{CID}"] .chart');
            return c && Number(c.dataset.points) >= 2 && Number(document.body.dataset.polls) >= 2; }})()""")
        page = await browser.evaluate(f"{READ_CARD}({CID!r})")
        after = stats(server)
        assert before["sold_units"] == after["sold_units"] == 35
        assert_page_equals(page, after)
        assert page["canvas"] and page["points"] >= 2
        assert "Alpha 阿尔法" in page["legend"]
        assert await browser.evaluate("document.querySelectorAll('[data-campaign]').length") == 1
        assert await browser.evaluate("document.getElementById('status').textContent") == "live"
        assert await browser.evaluate("document.querySelector('.soldout').hidden") is True
        origins = await browser.evaluate(
            "performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)")
        assert set(origins) == {server.url}, origins  # nothing from a CDN
        save(ARTIFACTS / "dashboard-campaign.png", await browser.screenshot())

        # a new order lands: the page follows within a few polls, without a reload
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            res = await c.post(f"/v1/campaigns/{CID}/reservations", headers=storefront_headers("shop-a", "late-1"),
                               json={"user_id": "late", "product_id": ALPHA, "units": 2})
            assert res.status_code == 201, res.text
            rid = res.json()["reservation_id"]
            res = await c.post(f"/v1/campaigns/{CID}/reservations/{rid}/confirm", headers=storefront_headers(),
                               json={"payment_ref": "pay-late"})
            assert res.status_code == 200, res.text
        points = page["points"]
        await browser.wait_for(f"""document.querySelector('[data-campaign="{CID}"] [data-field="sold_units"]')
            .dataset.value === "37" """)
        await browser.wait_for(f"""Number(document.querySelector('[data-campaign="{CID}"] .chart')
            .dataset.points) > {points}""")
        page = await browser.evaluate(f"{READ_CARD}({CID!r})")
        assert page["fields"]["remaining_units"]["value"] == "0"
        assert await browser.evaluate(f"document.querySelector('[data-campaign=\"{CID}\"] .soldout').hidden") is False
        assert page["products"][ALPHA]["sold_units"] == "27"
        assert await browser.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
        save(ARTIFACTS / "dashboard-sold-out.png", await browser.screenshot())


async def test_dashboard_of_every_campaign(served: tuple[ApiServer, Path], tmp_path: Path) -> None:
    server, _ = served
    async with Chromium.launch(tmp_path) as browser:
        await browser.goto(with_token(f"{server.url}/dashboard"))
        await browser.wait_for("document.querySelectorAll('[data-campaign] canvas').length === 2")
        ids = await browser.evaluate("[...document.querySelectorAll('[data-campaign]')].map((e) => e.dataset.campaign)")
        assert ids == [CID, OTHER]
        link = await browser.evaluate(f"document.querySelector('[data-campaign=\"{OTHER}\"] a.cid').href")
        assert link == f"{server.url}/dashboard?campaign={OTHER}"
        other = await browser.evaluate(f"{READ_CARD}({OTHER!r})")
        assert other["fields"]["sold_units"]["value"] == "0"
        assert other["fields"]["projected_sellout_at"]["text"] == "—"
        assert await browser.evaluate("document.getElementById('dead-letters').dataset.value") == "0"
        save(ARTIFACTS / "dashboard-all.png", await browser.screenshot())


async def test_dashboard_of_an_unknown_campaign_says_so(served: tuple[ApiServer, Path], tmp_path: Path) -> None:
    server, _ = served
    async with Chromium.launch(tmp_path) as browser:
        await browser.goto(with_token(f"{server.url}/dashboard?campaign=no-such-campaign"))
        status = await browser.wait_for(
            "(() => { const s = document.getElementById('status').textContent;"
            " return s.includes('NOT_FOUND') && s; })()")
        assert "no-such-campaign" in status
        assert await browser.evaluate("document.querySelectorAll('[data-campaign]').length") == 0
