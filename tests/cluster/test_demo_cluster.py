"""`flashsale demo --cluster`: the demo's private Redis Cluster (three masters, a replica each,
joined in the demo's directory and gone afterwards), and the small demo on it to a clean verdict."""

from __future__ import annotations

import os
import subprocess

import pytest
import redis

from engine.loadgen.services import LocalCluster
from tests.support.processes import FLASHSALE

pytestmark = pytest.mark.needs_services  # starts its own servers


def test_the_demos_cluster_has_three_masters_with_a_replica_each_and_leaves_nothing() -> None:
    cluster = LocalCluster().start()
    try:
        roles = []
        for node in cluster.nodes:
            c = redis.Redis(port=node.port)
            roles.append(str(c.info("replication")["role"]))
            c.close()
        assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
        client = redis.RedisCluster.from_url(cluster.url)
        client.set("fs:{c:a}:meta", "x")
        assert client.get("fs:{c:a}:meta") == b"x"
        client.close()
    finally:
        cluster.stop()
    assert not os.path.exists(cluster.dir)
    assert all(node.proc is not None and node.proc.poll() is not None for node in cluster.nodes)


def test_the_demo_on_a_cluster_ends_with_a_clean_verdict() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["COLUMNS"] = "200"
    proc = subprocess.run([FLASHSALE, "demo", "--cluster", "--buyers", "5000", "--units", "10000", "--users", "32",
                           "--opens-in", "3", "--time-bound", "40", "--no-progress", "--seed", "3"],
                          env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert "redis cluster 3 masters + 3 replicas" in out, out[-4000:]
    assert proc.returncode == 0, out[-6000:]
    assert "verdict: clean" in out
    for line in ("ledger: every confirmed order exactly once", "flashsale reconcile exits 0"):
        row = next(x for x in out.splitlines() if line in x)
        assert " ok " in row, row
