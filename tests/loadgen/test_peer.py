"""The benchmark's PostgreSQL peer keeps the same promises it is compared on: caps, stock,
idempotency, docs/API.md's error shape. A peer that cut corners would flatter itself."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.loadgen.services import Child, free_port
from scripts.bench.peer import CAMPAIGN, prepare_peer

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-peer"


@pytest.fixture
def peer(pg_url: str, tmp_path: Path) -> Iterator[str]:
    asyncio.run(prepare_peer(pg_url))
    port = free_port()
    env = {"PEER_DATABASE_URL": pg_url, "PEER_POOL_SIZE": "4", "FLASHSALE_STOREFRONT_TOKENS": f"shop={TOKEN}",
           "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    child = Child("peer", [sys.executable, "-m", "scripts.bench.peer_app", "--port", str(port), "--workers", "1"],
                  env, str(tmp_path)).start()
    try:
        child.wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=60)
        yield f"http://127.0.0.1:{port}/v1/campaigns/{CAMPAIGN}"
    finally:
        child.stop()


def reserve(base: str, key: str, user: str, units: int) -> httpx.Response:
    return httpx.post(f"{base}/reservations", json={"user_id": user, "product_id": "p1", "units": units},
                      headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key}, timeout=30)


def test_the_peer_enforces_caps_and_idempotency(peer: str) -> None:
    first = reserve(peer, "k1", "alice", 6)
    assert first.status_code == 201
    again = reserve(peer, "k1", "alice", 6)
    assert again.status_code == 200 and again.json()["reservation_id"] == first.json()["reservation_id"]
    assert reserve(peer, "k1", "alice", 5).json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    over = reserve(peer, "k2", "alice", 5)
    assert over.status_code == 409 and over.json()["error"]["code"] == "USER_CAP_EXCEEDED"
    assert reserve(peer, "k3", "alice", 4).status_code == 201
    assert reserve(peer, "k4", "bob", 0).status_code == 422
    stats = httpx.get(f"{peer}/stats", timeout=30).json()
    assert stats["held_units"] == 10  # alice's 6 + 4; nothing for the refusals
