"""``flashsale serve`` on the test cluster, over HTTP: the API's tests bound here run against a real
server process whose FLASHSALE_REDIS_URL names one node of the cluster (two workers, an ops
listener), then what the operator sees of a cluster: stats, metrics, the dashboard, readiness."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.api import test_endpoints, test_ops_routes, test_race
from tests.api.conftest import client, definition, new_campaign, new_id
from tests.support.cluster import RedisClusterServers
from tests.support.processes import ApiServer, admin_headers, storefront_headers

__all__ = ["client", "new_campaign"]
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster_api(redis_cluster: RedisClusterServers) -> Iterator[ApiServer]:
    redis_cluster.wait_healthy()
    server = ApiServer(redis_cluster.url, workers=2, ops=True).start()
    yield server
    server.stop()


@pytest.fixture
def api_server(cluster_api: ApiServer) -> ApiServer:
    return cluster_api


@pytest.fixture
def two_workers(cluster_api: ApiServer) -> ApiServer:
    return cluster_api


@pytest.fixture
def served(cluster_api: ApiServer) -> ApiServer:
    return cluster_api


test_health_ready_and_spec = test_endpoints.test_health_ready_and_spec
test_put_creates_replaces = test_endpoints.test_put_creates_replaces_and_refuses_an_open_campaign
test_get_campaign_for_storefront_and_admin = test_endpoints.test_get_campaign_for_storefront_and_admin
test_kill_switch_pause_resume_close = test_endpoints.test_kill_switch_pause_resume_close
test_reserve_then_replay_and_key_reuse = test_endpoints.test_reserve_then_replay_and_key_reuse
test_reserve_rejections = test_endpoints.test_reserve_rejections
test_rate_limited_with_retry_after = test_endpoints.test_rate_limited_with_retry_after
test_get_confirm_cancel = test_endpoints.test_get_confirm_cancel
test_holdings_and_stats = test_endpoints.test_holdings_and_stats
test_race_never_oversold = test_race.test_race_never_oversold_caps_hold_replays_identical
test_ops_data_needs_the_admin_token = test_ops_routes.test_on_the_storefront_listener_ops_data_needs_the_admin_token
test_the_ops_listener_serves_ops_routes = test_ops_routes.test_the_ops_listener_serves_the_ops_routes_without_a_token


def test_campaigns_on_every_master_show_in_stats_metrics_and_the_dashboard(
        client: httpx.Client, cluster_api: ApiServer, redis_cluster: RedisClusterServers,
        new_campaign: Callable[..., str]) -> None:
    ids = [new_campaign() for _ in range(9)]
    assert len({redis_cluster.master_of(f"fs:{{c:{cid}}}:meta").port for cid in ids}) > 1
    for n, cid in enumerate(ids):
        for u in range(n % 3 + 1):
            r = client.post(f"/v1/campaigns/{cid}/reservations", json={"user_id": f"u{u}", "product_id": "p1",
                                                                       "units": 1},
                            headers=storefront_headers("shop-a", new_id()))
            assert r.status_code == 201, r.text
    for n, cid in enumerate(ids):
        stats = client.get(f"/v1/campaigns/{cid}/stats", headers=admin_headers()).json()
        assert stats["held_units"] == n % 3 + 1, stats
    data = httpx.get(f"{cluster_api.ops_url}/dashboard/data", timeout=10).json()
    shown = {c["campaign_id"] for c in data["campaigns"]}
    assert set(ids) <= shown
    metrics = httpx.get(f"{cluster_api.ops_url}/metrics", timeout=10).text
    assert "flashsale_redis_up 1.0" in metrics
    for path in ("/readyz", "/healthz"):
        assert client.get(path).status_code == 200
        assert httpx.get(cluster_api.ops_url + path, timeout=10).status_code == 200
    assert definition  # the API's own definition helper made these campaigns
