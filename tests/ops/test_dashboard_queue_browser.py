"""The dashboard of a queue-mode campaign in real headless Chromium, against a real `flashsale
serve`: the waiting room's figures (waiting, admitted, the admission rate) equal the stats'
``queue`` block, follow a live pause without a reload, and an open-mode card shows none of them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.campaign import ms_to_rfc3339
from tests.ops.browser import Chromium, save
from tests.ops.test_dashboard_browser import ARTIFACTS, with_token
from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer

pytestmark = pytest.mark.browser
KEYS = "dq1:" + "q" * 40
QCID = "dash-queue"
OCID = "dash-open"

READ_QUEUE = """
((cid) => {
  const card = document.querySelector(`[data-campaign="${cid}"]`);
  if (!card) return null;
  const box = card.querySelector(".queue");
  const f = (name) => {
    const el = card.querySelector(`[data-field="${name}"]`);
    return {value: el.dataset.value, text: el.textContent, alert: el.classList.contains("alert")};
  };
  return {hidden: box.hidden, shown: box.getBoundingClientRect().height > 0, waiting: f("queue_waiting"),
          admitted: f("queue_admitted"), rate: f("queue_admit_per_second")};
})
"""


def definition(cid: str, now_ms: int, queued: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": cid, "title": "排队 " + cid, "currency": "CNY", "unit_price": 10000,
        "opens_at": ms_to_rfc3339(now_ms - 60_000), "closes_at": ms_to_rfc3339(now_ms + 3_600_000),
        "hold_seconds": 900, "total_units": 100, "user_cap_units": 10,
        "products": [{"id": "p1", "title": "小时代3", "total_units": 100}]}
    if queued:  # opened a minute ago at 1 admission a second: after the joins, some are admitted
        d["admission"] = {"mode": "queue", "queue_opens_at": ms_to_rfc3339(now_ms - 120_000),
                          "admit_per_second": 1, "token_seconds": 600}
    return d


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    redis = RedisServer().start()
    api = ApiServer(redis.url, workers=2, FLASHSALE_ADMISSION_KEYS=KEYS)
    try:
        api.start(timeout=60)
        yield api
    finally:
        api.stop()
        redis.stop()


def queue_stats(url: str, cid: str) -> dict[str, Any]:
    res = httpx.get(f"{url}/v1/campaigns/{cid}/stats", headers=admin_headers(), timeout=10)
    assert res.status_code == 200, res.text
    block: dict[str, Any] = res.json()["queue"]
    return block


def launch(url: str) -> None:
    """A queue-mode campaign with 200 tickets, and an open-mode one beside it."""
    now = int(time.time() * 1000)  # Redis shares this machine's clock
    with httpx.Client(base_url=url, timeout=10) as c:
        for cid, queued in ((QCID, True), (OCID, False)):
            res = c.put(f"/v1/campaigns/{cid}", headers=admin_headers(), json=definition(cid, now, queued))
            assert res.status_code in (200, 201), res.text
        for i in range(200):  # late tickets (after the opening): admitted in arrival order, 1 a second
            res = c.post(f"/v1/campaigns/{QCID}/queue", headers=storefront_headers(), json={"user_id": f"q{i}"})
            assert res.status_code == 201, res.text


def pause(url: str) -> None:
    res = httpx.patch(f"{url}/v1/campaigns/{QCID}/admission", headers=admin_headers(), json={"admit_per_second": 0},
                      timeout=10)
    assert res.status_code == 200, res.text


async def test_the_waiting_room_shows_on_the_dashboard_and_follows_a_pause(server: ApiServer, tmp_path: Path) -> None:
    launch(server.url)
    before = queue_stats(server.url, QCID)
    assert before["waiting"] > 0 and before["admitted"] > 0 and before["admit_per_second"] == 1
    async with Chromium.launch(tmp_path) as browser:
        await browser.goto(with_token(f"{server.url}/dashboard"))
        await browser.wait_for("Number(document.body.dataset.polls) >= 2")
        page = await browser.evaluate(f"{READ_QUEUE}({QCID!r})")
        after = queue_stats(server.url, QCID)
        assert not page["hidden"] and page["shown"]
        # the page's figures lie between what the stats said before and after its read
        assert before["waiting"] >= int(page["waiting"]["value"]) >= after["waiting"]
        assert before["admitted"] <= int(page["admitted"]["value"]) <= after["admitted"]
        assert page["waiting"]["text"] == f"{int(page['waiting']['value']):,}"
        assert page["rate"] == {"value": "1", "text": "1", "alert": False}
        other = await browser.evaluate(f"{READ_QUEUE}({OCID!r})")
        assert other["hidden"] and not other["shown"]  # an open-mode campaign has no waiting room
        save(ARTIFACTS / "dashboard-queue.png", await browser.screenshot())

        # ops pause admission while stock remains: the page says so, in the alert colour, without a reload
        pause(server.url)
        rate = f"""document.querySelector('[data-campaign="{QCID}"] [data-field="queue_admit_per_second"]')"""
        await browser.wait_for(f'{rate}.dataset.value === "0"')
        page = await browser.evaluate(f"{READ_QUEUE}({QCID!r})")
        assert page["rate"] == {"value": "0", "text": "paused", "alert": True}
        assert await browser.evaluate("performance.getEntriesByType('navigation').length") == 1
        save(ARTIFACTS / "dashboard-queue-paused.png", await browser.screenshot())
