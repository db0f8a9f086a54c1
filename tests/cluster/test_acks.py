"""``--replica-acks N``: a write is acknowledged only once N replicas have it (WAIT after each
batch on the batch's own connection). On one node with a replica and on a cluster (a private one:
these tests kill nodes): answered while the replica lives, 503 when it is gone (the write stays on
the master, and the retry with the same key replays it), refused at start when a master has fewer
than N replicas; and the fault run: a master SIGKILLed mid-sale loses no acknowledged write."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import msgpack
import pytest
import redis

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.core.redis_client import TooFewReplicas, require_durable
from engine.errors import StorageUnavailable
from engine.settings import Settings
from tests.api.conftest import definition as api_definition
from tests.core.conftest import campaign
from tests.support.cluster import ClusterNode, RedisClusterServers
from tests.support.failover import in_sync, kill_a_master_mid_sale, replicas_of, wait_for
from tests.support.processes import FLASHSALE, ApiServer, admin_headers, base_env, storefront_headers
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.timeout(180), pytest.mark.needs_services]  # starts its own servers
ACKS_TIMEOUT_MS = 300  # short: a WAIT that cannot succeed costs the tests this much per call


# -- one node and its replica ---------------------------------------------------------------------

@pytest.fixture
def primary_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    primary, replica = RedisServer(durable=True).start(), RedisServer().start()
    try:
        follow(replica, primary)
        yield primary, replica
    finally:
        primary.stop()
        replica.stop()


def follow(replica: RedisServer, primary: RedisServer) -> None:
    client = redis.Redis(port=replica.port)
    client.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
    client.close()
    wait_for(lambda: replicas_of(primary.port) == 1, "the replica to connect")


async def test_one_node_with_a_replica(primary_and_replica: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = primary_and_replica
    acked = Engine.from_settings(Settings(redis_url=primary.url, redis_timeout_s=5.0, replica_acks=1,
                                          replica_acks_timeout_ms=ACKS_TIMEOUT_MS))
    unacked = Engine.from_settings(Settings(redis_url=primary.url, redis_timeout_s=5.0))
    try:
        assert (await require_durable(acked.redis, allow_volatile=False, replica_acks=1)).safe
        with pytest.raises(TooFewReplicas, match=r"--replica-acks 2 .* has 1 connected replica"):
            await require_durable(acked.redis, allow_volatile=False, replica_acks=2)
        await acked.load_campaign(campaign())
        first = await acked.reserve("c1", ReserveRequest("u1", "p1", 1, "k1", "shop"))
        await acked.confirm("c1", first.reservation.reservation_id, "pay-1", storefront="shop")

        replica.kill()
        wait_for(lambda: replicas_of(primary.port) == 0, "the primary to see its replica gone")
        with pytest.raises(StorageUnavailable, match="replica"):
            await acked.reserve("c1", ReserveRequest("u2", "p1", 1, "k2", "shop"))
        with pytest.raises(StorageUnavailable):
            await acked.cancel("c1", first.reservation.reservation_id, storefront="shop")
        # without acks the same master answers at once: nothing but WAIT stood in the way
        await unacked.reserve("c1", ReserveRequest("u3", "p1", 1, "k3", "shop"))

        replica.start()
        follow(replica, primary)
        again = await acked.reserve("c1", ReserveRequest("u2", "p1", 1, "k2", "shop"))
        assert again.replayed  # the 503'd write was there all along: the retry replays it
        c = await acked.counters("c1")
        assert (c.held, c.sold) == (2, 1)
    finally:
        await acked.close()
        await unacked.close()


# -- a cluster -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_cluster() -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers().start()
    in_sync(cluster)
    yield cluster
    cluster.stop()


def replica_node(cluster: RedisClusterServers, master: ClusterNode) -> ClusterNode:
    client = master.client()
    try:
        info = client.info("replication")
    finally:
        client.close()
    return cluster.node(int(info["slave0"]["port"]))


def test_serve_refuses_more_acks_than_replicas(private_cluster: RedisClusterServers) -> None:
    private_cluster.wait_healthy()
    done = subprocess.run([FLASHSALE, "serve", "--port", "1", "--replica-acks", "2"], capture_output=True,
                          text=True, timeout=60, env=base_env(private_cluster.url))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("flashsale serve: refusing to start: --replica-acks 2"), done.stderr
    assert "has 1 connected replica(s)" in lines[-1]


def test_serve_with_acks_answers_503_without_the_replica(private_cluster: RedisClusterServers) -> None:
    in_sync(private_cluster)
    server = ApiServer(private_cluster.url, args=("--replica-acks", "1"),
                       FLASHSALE_REPLICA_ACKS_TIMEOUT_MS=str(ACKS_TIMEOUT_MS)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            ids = [f"acks-{i}" for i in range(12)]
            for cid in ids:
                r = http.put(f"/v1/campaigns/{cid}", json=api_definition(cid), headers=admin_headers())
                assert r.status_code == 201, r.text
            target = private_cluster.master_of(keys.CampaignKeys(ids[0]).meta)
            elsewhere = next(c for c in ids if private_cluster.master_of(keys.CampaignKeys(c).meta).port
                             != target.port)

            def reserve(cid: str, key: str) -> httpx.Response:
                return http.post(f"/v1/campaigns/{cid}/reservations", headers=storefront_headers("shop-a", key),
                                 json={"user_id": key, "product_id": "p1", "units": 1})

            assert reserve(ids[0], "a1").status_code == 201
            replica = replica_node(private_cluster, target)
            replica.kill()
            try:
                wait_for(lambda: replicas_of(target.port) == 0, "the master to see its replica gone")
                r = reserve(ids[0], "a2")
                assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE", r.text
                assert reserve(elsewhere, "b1").status_code == 201  # another master keeps its replica
            finally:
                replica.start()
            wait_for(lambda: replicas_of(target.port) == 1, "the replica to come back")
            again = reserve(ids[0], "a2")
            assert again.status_code in (200, 201), again.text
            stats = http.get(f"/v1/campaigns/{ids[0]}/stats", headers=admin_headers()).json()
            assert stats["held_units"] == 2  # a1, and a2 once: the retry replayed the 503'd write
    finally:
        server.stop()


async def test_a_master_killed_mid_sale_loses_no_acknowledged_write(private_cluster: RedisClusterServers) -> None:
    """The fault run: 16 clients reserve and confirm over six campaigns with ``replica_acks`` 1; one
    master is SIGKILLed, its replica takes over, the old master comes back as the new one's replica.
    Every acknowledged reservation and confirm is there afterwards, nothing is oversold, and the
    victim's campaigns answered 503 (never a wrong answer) from the kill until a replica was in sync
    again; the window the clients saw is printed (``-s``)."""
    in_sync(private_cluster)
    engine = Engine.from_settings(Settings(redis_url=private_cluster.url, redis_timeout_s=1.0, replica_acks=1,
                                           replica_acks_timeout_ms=500))
    total = 5000
    ids = [f"fault-{i}" for i in range(6)]
    for cid in ids:
        await engine.load_campaign(campaign(cid, total_units=total, user_cap_units=None, products=[
            {"id": "p1", "title": "t", "total_units": total}]))
    run = await kill_a_master_mid_sale(private_cluster, engine, ids)
    reserved, confirmed = run.reserved, run.confirmed
    try:
        assert run.confirmed_before_kill > 0 and run.refused and run.answered_after
        # no answer on the victim's campaigns while their master had no replica: from shortly after
        # the first 503 (a reply already on its way may land) until the old master came back
        assert not [t for t in run.answered_after if min(run.refused) + 0.5 < t < run.restarted_at]
        print(f"\nfault run: {len(reserved)} reservations and {len(confirmed)} confirms acknowledged; "
              f"503s on the victim's campaigns for {run.window_s:.1f} s after the kill "
              f"({len(run.refused)} calls refused)")
        # the first read may meet a connection the failover closed (a 503): read as a client would
        await run.retried(ids[0], lambda: engine.counters(ids[0]))
        for (cid, _), rid in reserved.items():
            r = await engine.reservation(cid, rid, storefront="shop")
            assert r.state == ("confirmed" if (cid, rid) in confirmed else "held"), (cid, rid, r.state)
        for cid in ids:
            c = await engine.counters(cid)
            mine = sum(1 for (c_id, _) in confirmed if c_id == cid)
            assert c.sold == mine and c.sold + c.held <= total, (cid, c.sold, c.held, mine)
            raw = await engine.redis.hgetall(keys.CampaignKeys(cid).reservations)
            states = [msgpack.unpackb(v, raw=False)[0] for v in raw.values()]
            assert states.count("confirmed") == mine
    finally:
        await engine.close()
