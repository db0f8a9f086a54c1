"""A real Redis Cluster for tests: 3 masters and 3 replicas on free loopback ports.

Each node is a private ``redis-server --cluster-enabled yes`` (AOF ``always``, ``noeviction``,
a short ``cluster-node-timeout`` so a failover takes a few seconds), joined with
``redis-cli --cluster create``. Fault tests kill and restart single nodes; the shared Redis on
6379 is never touched.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.servers import redis_server_binary, wait_for_ping

NODE_TIMEOUT_MS = 1000


def free_cluster_port() -> int:
    """A loopback port whose cluster bus port (+10000) is free too: so at most 55535."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair (P, P+10000) for a cluster node")


def redis_cli_binary() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        raise RuntimeError("redis-cli not found: run `make setup` (it installs Debian's redis-server and redis-tools)")
    return path


class ClusterNode:
    def __init__(self, port: int, directory: str):
        self.port = port
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--maxmemory-policy", "noeviction", "--logfile", str(Path(self.dir) / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_ping(self.proc, self.port, self.dir)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)


class RedisClusterServers:
    """``masters`` masters, each with ``replicas_per_master`` replicas; ``url`` names one node."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1):
        self.base = tempfile.mkdtemp(prefix="fs-cluster-")
        self.masters_count = masters
        self.replicas_per_master = replicas_per_master
        self.nodes: list[ClusterNode] = []
        for _ in range(masters * (1 + replicas_per_master)):
            port = free_cluster_port()
            directory = Path(self.base) / str(port)
            directory.mkdir()
            self.nodes.append(ClusterNode(port, str(directory)))

    @property
    def url(self) -> str:
        """Any live node will do: the clients find the rest."""
        return next(node.url for node in self.nodes if node.alive)

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run([redis_cli_binary(), "--cluster", "create", *addresses,
                            "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def node(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def roles(self) -> dict[int, str]:
        """Port -> ``master`` / ``slave`` for each live node, as the node itself says."""
        out: dict[int, str] = {}
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            try:
                out[node.port] = str(client.info("replication")["role"])
            except redis.exceptions.RedisError:
                pass
            finally:
                client.close()
        return out

    def masters(self) -> list[ClusterNode]:
        return [self.node(port) for port, role in self.roles().items() if role == "master"]

    def master_of(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now."""
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            try:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return self.node(int(master[1]))
            except redis.exceptions.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError(f"no live node knows who serves {key!r}")

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Every live node says cluster_state:ok and agrees there are ``masters_count`` masters with slots."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test cluster did not become healthy; logs under {self.base}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            try:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                slots = client.execute_command("CLUSTER", "SLOTS")
                if sum(end - start + 1 for start, end, *_ in slots) != 16384:
                    return False
            except redis.exceptions.RedisError:
                return False
            finally:
                client.close()
        return True

    def flush(self) -> None:
        """Empty every master (replicas follow) and drop their scripts."""
        for node in self.masters():
            client = node.client()
            try:
                client.flushall()
                client.script_flush()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.base, ignore_errors=True)
