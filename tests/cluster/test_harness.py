"""The test cluster itself: three masters with a replica each, every slot served, failover in seconds."""

from __future__ import annotations

import time

import pytest
import redis

from tests.support.cluster import RedisClusterServers

pytestmark = pytest.mark.needs_services  # starts its own redis-server: not the fast tier


def test_the_cluster_has_three_masters_each_with_a_replica(redis_cluster: RedisClusterServers) -> None:
    redis_cluster.wait_healthy()
    roles = redis_cluster.roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3
    owners = {redis_cluster.master_of(f"fs:{{c:camp-{i}}}:meta").port for i in range(40)}
    assert len(owners) == 3  # campaigns spread over every master


def test_a_killed_master_is_replaced_by_its_replica_and_rejoins_as_one() -> None:
    cluster = RedisClusterServers().start()
    try:
        key = "fs:{c:failover}:meta"
        master = cluster.master_of(key)
        direct = master.client()  # WAIT counts this connection's writes: the SET and the WAIT share it
        direct.set(key, "v")
        assert direct.execute_command("WAIT", 1, 2000) == 1
        direct.close()
        master.kill()
        deadline = time.monotonic() + 30
        while cluster.master_of(key).port == master.port and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.master_of(key).port != master.port
        cluster.wait_healthy()
        master.start()  # comes back as a replica of the promoted node
        deadline = time.monotonic() + 30
        while cluster.roles().get(master.port) != "slave" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.roles()[master.port] == "slave"
        client = redis.RedisCluster.from_url(cluster.url)
        assert client.get(key) == b"v"  # the write its replica acknowledged survived the failover
        client.close()
    finally:
        cluster.stop()
