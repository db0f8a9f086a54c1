"""The Locust storefront and the LaunchDaySpike shape, headless for a few seconds against a real
server: the shape ends the test itself after the sell-out, nothing fails, nothing is oversold."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import httpx

from tests.loadgen.conftest import TOKEN, Stack
from tests.support.processes import base_env, storefront_headers

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"
CAMPAIGN = "lc-spike"


def test_locust_spike_sells_out_without_failures(stack: Stack, tmp_path: Path) -> None:
    stack.campaign(CAMPAIGN, units=600, opens_in_s=2.5)
    env = base_env(stack.redis.url, FLASHSALE_CAMPAIGN=CAMPAIGN, FLASHSALE_LOADGEN_TOKEN=TOKEN,
                   SPIKE_PEAK_USERS="20", SPIKE_TRICKLE_USERS="2", SPIKE_TRICKLE_S="2",
                   SPIKE_DECAY_S="1", SPIKE_PLATEAU_MAX_S="8")
    locust = str(Path(sys.executable).with_name("locust"))
    proc = subprocess.run(
        [locust, "-f", str(LOCUSTFILE), "--headless", "--host", stack.api.url, "--run-time", "40s",
         "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel", "WARNING"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert int(rows["reserve"]["Request Count"]) > 0 and int(rows["confirm"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    stats = httpx.get(f"{stack.api.url}/v1/campaigns/{CAMPAIGN}/stats", headers=storefront_headers()).json()
    assert stats["sold_units"] > 0
    assert stats["sold_units"] + stats["held_units"] <= stats["total_units"]
    assert stats["remaining_units"] == 0  # the plateau lasted until the sell-out


def test_locust_goes_through_the_waiting_room_of_a_queued_campaign(stack: Stack, tmp_path: Path) -> None:
    """Queue mode: people and two scalper farms join, poll as told and reserve with their admission
    token (the server answers a reserve without it 403 once it checks them: a Locust failure)."""
    from datetime import UTC, datetime, timedelta

    queue_opens = (datetime.now(UTC) + timedelta(seconds=2)).isoformat(timespec="milliseconds")
    stack.campaign("lc-queue", units=300, opens_in_s=4.0,
                   admission={"mode": "queue", "queue_opens_at": queue_opens, "admit_per_second": 200,
                              "token_seconds": 120})
    env = base_env(stack.redis.url, FLASHSALE_CAMPAIGN="lc-queue", FLASHSALE_LOADGEN_TOKEN=TOKEN,
                   SPIKE_PEAK_USERS="12", SPIKE_TRICKLE_USERS="3", SPIKE_TRICKLE_S="3.5",
                   SPIKE_DECAY_S="1", SPIKE_PLATEAU_MAX_S="10", FLASHSALE_POLL_CAP_S="0.5",
                   FLASHSALE_SCALPERS="2x5", FLASHSALE_SCALPER_SPREAD="2,2,1")
    locust = str(Path(sys.executable).with_name("locust"))
    proc = subprocess.run(
        [locust, "-f", str(LOCUSTFILE), "--headless", "--host", stack.api.url, "--run-time", "40s",
         "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel", "WARNING"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    for name in ("join", "poll", "reserve"):
        assert int(rows[name]["Request Count"]) > 0, name
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    stats = httpx.get(f"{stack.api.url}/v1/campaigns/lc-queue/stats", headers=storefront_headers()).json()
    assert stats["sold_units"] > 0
    assert stats["sold_units"] + stats["held_units"] <= stats["total_units"]
    assert stats["queue"]["admitted"] > 0
