"""Ops endpoints of a real `flashsale serve` with 2 workers, after the scripted sale over HTTP.

The server writes its metrics to a PROMETHEUS_MULTIPROC_DIR this test chose, so the test can
read each worker's own file and check a scrape of either worker sums them exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import redis
from prometheus_client.multiprocess import MultiProcessCollector

from engine import keys
from engine.ops.stats import REJECTION_CODES
from tests.ops.conftest import API_CID as CID
from tests.ops.conftest import API_OTHER as OTHER
from tests.ops.conftest import fresh_get
from tests.ops.promtext import Samples
from tests.ops.sale import EXPECTED
from tests.support.processes import ADMIN_TOKEN, FLASHSALE, ApiServer, Process, admin_headers, base_env


def _worker_requests(prom: Path) -> dict[str, float]:
    """Requests each worker counted, read from its own file."""
    out = {}
    for f in prom.glob("counter_*.db"):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(f)]):
            if metric.name == "flashsale_http_requests":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        out[f.name] = total
    return out


def test_both_workers_count_and_any_scrape_sums_them(served: tuple[ApiServer, Path]) -> None:
    server, prom = served
    for _ in range(200):  # until each worker has served something (the kernel picks who accepts)
        if sum(1 for n in _worker_requests(prom).values() if n > 0) >= 2:
            break
        fresh_get(f"{server.url}/healthz")
    per_worker = _worker_requests(prom)
    assert sum(1 for n in per_worker.values() if n > 0) == 2, per_worker

    scrapes = [Samples(fresh_get(f"{server.url}/metrics", headers=admin_headers()).text) for _ in range(6)]
    for m in scrapes:
        for (operation, code), n in EXPECTED.outcomes.items():
            assert m.get("flashsale_outcomes_total", operation=operation, code=code) == n, (operation, code)
        served_before_scrape = m.get("flashsale_http_requests_total", route="/v1/campaigns/{cid}/reservations",
                                     method="POST", status="201")
        assert served_before_scrape == EXPECTED.outcomes[("reserve", "OK")]
    # every request either worker counted is in the last scrape, which is counted once it is sent
    total = sum(v for (n, _), v in scrapes[-1].values.items() if n == "flashsale_http_requests_total")
    for _ in range(100):
        if sum(_worker_requests(prom).values()) == total + 1:
            break
        time.sleep(0.05)
    assert sum(_worker_requests(prom).values()) == total + 1


def test_redis_figures_equal_the_stats_endpoint(served: tuple[ApiServer, Path]) -> None:
    server, _ = served
    stats = fresh_get(f"{server.url}/v1/campaigns/{CID}/stats", headers=admin_headers()).json()
    m = Samples(fresh_get(f"{server.url}/metrics", headers=admin_headers()).text)
    c = {"campaign": CID}
    assert (stats["sold_units"], stats["held_units"], stats["remaining_units"]) == (
        EXPECTED.sold, EXPECTED.held, EXPECTED.remaining)
    assert m.get("flashsale_campaign_sold_units_total", **c) == stats["sold_units"]
    assert m.get("flashsale_campaign_held_units", **c) == stats["held_units"]
    assert m.get("flashsale_campaign_remaining_units", **c) == stats["remaining_units"]
    assert m.get("flashsale_campaign_buyers", **c) == stats["buyers"] == EXPECTED.buyers
    assert stats["rejections"] == {code: EXPECTED.rejections.get(code, 0) for code in REJECTION_CODES}
    for code, n in stats["rejections"].items():
        assert m.get("flashsale_campaign_rejections_total", code=code, **c) == n
    assert m.get("flashsale_ledger_lag_orders", **c) == stats["ledger"]["lag_orders"] == EXPECTED.orders
    for p in stats["products"]:
        assert m.get("flashsale_product_sold_units_total", campaign=CID, product=p["product_id"]) == p["sold_units"]
    assert m.get("flashsale_campaign_sold_units_total", campaign=OTHER) == 0


def test_dashboard_data_is_the_stats_of_every_campaign_or_one(served: tuple[ApiServer, Path]) -> None:
    server, _ = served
    stats = fresh_get(f"{server.url}/v1/campaigns/{CID}/stats", headers=admin_headers()).json()
    every = fresh_get(f"{server.url}/dashboard/data", headers=admin_headers()).json()
    assert [c["campaign_id"] for c in every["campaigns"]] == [CID, OTHER]
    one = fresh_get(f"{server.url}/dashboard/data", headers=admin_headers(), params={"campaign": CID}).json()
    assert len(one["campaigns"]) == 1
    page = one["campaigns"][0]
    for field in ("state", "total_units", "sold_units", "held_units", "remaining_units", "sell_through", "buyers",
                  "rejections", "ledger"):
        assert page[field] == stats[field], field
    assert [{k: p[k] for k in stats["products"][0]} for p in page["products"]] == stats["products"]
    assert page["writer"] == {"stream_entries": 18, "undelivered_entries": 18, "pending_entries": 0,
                              "dead_letters": 0}
    assert (one["dead_letters"], one["writers_alive"]) == (0, 0)


def test_dashboard_refuses_unknown_campaigns_in_the_error_shape(served: tuple[ApiServer, Path]) -> None:
    server, _ = served
    for cid in ("no-such", "bad id!"):
        res = fresh_get(f"{server.url}/dashboard/data", headers=admin_headers(), params={"campaign": cid})
        assert res.status_code == 404
        assert res.json()["error"]["code"] == "NOT_FOUND"


def test_dashboard_page_and_assets_are_served_without_any_cdn(served: tuple[ApiServer, Path]) -> None:
    server, _ = served
    page = fresh_get(f"{server.url}/dashboard", params={"campaign": CID})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"):
        res = fresh_get(f"{server.url}/dashboard/static/{asset}")
        assert res.status_code == 200, asset
    assert "MIT License" in fresh_get(f"{server.url}/dashboard/static/uPlot.LICENSE").text
    assert fresh_get(f"{server.url}/dashboard/static/../../api/app.py").status_code == 404


def test_stats_command_reads_a_running_api(served: tuple[ApiServer, Path]) -> None:
    server, _ = served
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    run = [FLASHSALE, "stats", CID, "--url", server.url, "--json"]
    out = subprocess.run([*run, "--token", ADMIN_TOKEN], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    expected = fresh_get(f"{server.url}/v1/campaigns/{CID}/stats", headers=admin_headers()).json()
    assert {k: v for k, v in body.items() if k not in ("as_of", "projected_sellout_at")} == {
        k: v for k, v in expected.items() if k not in ("as_of", "projected_sellout_at")}
    refused = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "--token" in refused.stderr and "Traceback" not in refused.stderr


def test_a_live_writer_drains_the_lag_and_dead_letters_show(served: tuple[ApiServer, Path], tmp_path: Path) -> None:
    """Runs last in this module: a real `flashsale writer` persists the 6 orders of the sale and
    dead-letters one malformed entry; while it runs it counts as alive, once stopped it does not."""
    server, _ = served
    redis_url = server.env["FLASHSALE_REDIS_URL"]
    client = redis.Redis.from_url(redis_url)
    client.xadd(keys.CampaignKeys(CID).events, {"e": "bogus"})
    client.close()
    writer = Process([FLASHSALE, "writer", "--database-url", f"sqlite:///{tmp_path / 'ledger.db'}",
                      "--allow-volatile-redis"], base_env(redis_url)).start()
    try:
        m = Samples("")
        for _ in range(300):
            m = Samples(fresh_get(f"{server.url}/metrics", headers=admin_headers()).text)
            if (m.get("flashsale_ledger_lag_orders", campaign=CID) == 0 and m.get("flashsale_writers_alive") == 1
                    and m.get("flashsale_writer_dead_letters") == 1):
                break
            assert writer.alive(), writer.output()
            time.sleep(0.1)
        c = {"campaign": CID}
        assert m.get("flashsale_ledger_persisted_orders_total", **c) == EXPECTED.orders
        assert m.get("flashsale_ledger_lag_orders", **c) == 0
        assert m.get("flashsale_writer_pending_entries", **c) == 0
        assert m.get("flashsale_writer_undelivered_entries", **c) == 0
        assert m.get("flashsale_ledger_dead_letters", **c) == 1
        assert (m.get("flashsale_writer_dead_letters"), m.get("flashsale_writers_alive")) == (1, 1)
        stats = fresh_get(f"{server.url}/v1/campaigns/{CID}/stats", headers=admin_headers()).json()
        assert stats["ledger"] == {"persisted_orders": EXPECTED.orders, "lag_orders": 0}
        assert writer.terminate() == 0
        final = Samples(fresh_get(f"{server.url}/metrics", headers=admin_headers()).text)
        assert final.get("flashsale_writers_alive") == 0
    finally:
        writer.stop()
