"""deploy/docker-compose.cluster.yml, checked without Docker: six durable cluster nodes, the job
that joins them names each, the flashsale services point at a node and wait for the join,
Prometheus scrapes every node, and what the file takes from docker-compose.yml exists there."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.cluster.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SINGLE: dict[str, dict[str, Any]] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
NODES = [f"redis-{i}" for i in range(1, 7)]


def words(service: str) -> list[str]:
    cmd = SERVICES[service].get("command") or SINGLE[SERVICES[service]["extends"]["service"]]["command"]
    return shlex.split(" ".join(cmd)) if isinstance(cmd, list) else shlex.split(cmd)


def test_six_durable_cluster_nodes() -> None:
    for node in NODES:
        args = words(node)
        assert SERVICES[node]["hostname"] == node
        for a, b in [("--cluster-enabled", "yes"), ("--appendonly", "yes"), ("--appendfsync", "always"),
                     ("--maxmemory-policy", "noeviction"), ("--cluster-preferred-endpoint-type", "hostname")]:
            assert args[args.index(a) + 1] == b, (node, a)
        assert any(v.endswith(":/data") for v in SERVICES[node]["volumes"])
        assert SERVICES[node]["volumes"][0].split(":")[0] in COMPOSE["volumes"]


def test_the_init_job_joins_every_node_with_a_replica_each() -> None:
    args = words("redis-cluster-init")
    create = args[args.index("--cluster") + 1:]
    assert create[0] == "create"
    assert [a.split(":")[0] for a in create[1:7]] == NODES
    assert create[create.index("--cluster-replicas") + 1] == "1"
    assert set(SERVICES["redis-cluster-init"]["depends_on"]) == set(NODES)


def test_flashsale_services_name_a_node_and_wait_for_the_cluster() -> None:
    for name in ("api", "writer", "load-campaign"):
        s = SERVICES[name]
        host = s["environment"]["FLASHSALE_REDIS_URL"].split("//")[1].split(":")[0]
        assert host in NODES, name
        assert s["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully", name
    for name, s in SERVICES.items():
        for dep in s.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
        if "extends" in s:
            assert s["extends"]["file"] == "docker-compose.yml" and s["extends"]["service"] in SINGLE


def test_prometheus_scrapes_every_node_through_the_exporter() -> None:
    mounts = [v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]]
    config = yaml.safe_load((DEPLOY / Path(mounts[0]).name).read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = jobs["redis-shards"]["static_configs"][0]["targets"]
    assert [t.split("//")[1].split(":")[0] for t in targets] == NODES
    assert any(r.get("replacement") == "redis-exporter:9121" for r in jobs["redis-shards"]["relabel_configs"])
    assert jobs["flashsale-api"]["static_configs"][0]["targets"] == ["api:9100"]
    for m in mounts:
        assert m.startswith("prometheus-data") or (DEPLOY / m).exists(), m
