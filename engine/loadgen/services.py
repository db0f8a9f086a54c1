"""The pieces ``flashsale demo`` and the benchmarks start on this machine: a private redis-server
(or, for ``demo --cluster``, a private Redis Cluster of three masters with a replica each),
and flashsale's own processes (``serve``, ``writer``) as children with their output in a log.

Everything binds loopback on a free port and lives in a temporary directory, so a demo never
touches a Redis or a port someone else uses, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair (P, P+10000) for a cluster node")


def flashsale_exe() -> list[str]:
    exe = Path(sys.executable).with_name("flashsale")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from engine.cli import main; main()"]


#: AOF with ``appendfsync always`` (no acknowledged write lost); rewrites (a fork that writes the
#: whole dataset out again) wait until the AOF reaches 1 GB, not Redis's default 64 MB, which a
#: launch spike fills within seconds: each rewrite costs reserves while it runs (BENCHMARKS.md,
#: "Design measurements"). A restart replays at most that much more log;
#: ``BGREWRITEAOF`` after the sale compacts it.
DURABLE_AOF = ["--appendonly", "yes", "--appendfsync", "always", "--auto-aof-rewrite-min-size", "1gb"]


class LocalRedis:
    """A private redis-server: loopback, a free port, its own directory; ``durable`` turns on AOF
    ``appendfsync always`` (no acknowledged write lost), else no persistence at all."""

    def __init__(self, directory: str | None = None, *, durable: bool = False, cluster: bool = False) -> None:
        self.durable = durable
        self.cluster = cluster  # a node of a Redis Cluster (``LocalCluster`` joins them)
        self.port = free_cluster_port() if cluster else free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="flashsale-redis-")
        os.makedirs(self.dir, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: `make setup` installs it "
                               "(Debian: apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--maxmemory-policy", "noeviction", "--logfile", str(Path(self.dir) / "redis.log"),
             *(DURABLE_AOF if self.durable else ["--appendonly", "no"]),
             *(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)] if self.cluster else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.dir}/redis.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


CLUSTER_NODE_TIMEOUT_MS = 2000


class LocalCluster:
    """A private Redis Cluster: ``masters`` masters with a replica each, joined by
    ``redis-cli --cluster create``; ``url`` names the first node (clients find the rest)."""

    def __init__(self, directory: str | None = None, *, masters: int = 3, durable: bool = False) -> None:
        self.dir = directory or tempfile.mkdtemp(prefix="flashsale-cluster-")
        os.makedirs(self.dir, exist_ok=True)
        self.nodes = [LocalRedis(str(Path(self.dir) / f"node-{i}"), durable=durable, cluster=True)
                      for i in range(2 * masters)]

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def describe(self) -> str:
        return f"{len(self.nodes) // 2} masters + {len(self.nodes) // 2} replicas on 127.0.0.1:" + \
            ",".join(str(n.port) for n in self.nodes)

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found: `make setup` installs it (Debian: apt-get install redis-tools)")
        try:
            for node in self.nodes:
                node.start()
            out = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                                  "--cluster-replicas", "1", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=timeout_s)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
            deadline = time.monotonic() + timeout_s
            while not self._ok(cli):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the demo's Redis Cluster did not come up; logs under {self.dir}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _ok(self, cli: str) -> bool:
        """Every node says cluster_state:ok and knows every other."""
        for node in self.nodes:
            out = subprocess.run([cli, "-p", str(node.port), "cluster", "info"], capture_output=True, text=True,
                                 timeout=5)
            if "cluster_state:ok" not in out.stdout or f"cluster_known_nodes:{len(self.nodes)}" not in out.stdout:
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Child:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: str) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def wait_http(self, url: str, timeout_s: float = 60.0) -> None:
        """Until ``url`` answers 200; raises with the child's log if it dies or never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout_s:.0f} s:\n{self.output()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM to the group (server workers too), then SIGKILL if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode
