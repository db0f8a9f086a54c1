"""The ops routes of a real `flashsale serve --ops-port`: behind the admin token on the storefront
listener, open on the ops listener, which serves nothing else; under each server and worker count."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import definition, error_code, new_id
from tests.ops.promtext import Samples
from tests.support.processes import FLASHSALE, ApiServer, admin_headers, base_env, storefront_headers
from tests.support.servers import RedisServer

OPS_DATA = ["/metrics", "/dashboard/data"]
OPS_OPEN = ["/dashboard", "/dashboard/static/dashboard.js", "/healthz", "/readyz"]


@pytest.fixture(scope="module", params=[("uvicorn", 1), ("uvicorn", 2), ("granian", 2)],
                ids=["uvicorn-1", "uvicorn-2", "granian-2"])
def served(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ApiServer]:
    server_name, workers = request.param
    server = ApiServer(redis_server.url, workers=workers, server=server_name, ops=True).start()
    yield server
    server.stop()


def get(url: str, **kw: object) -> httpx.Response:
    """On a new connection each time: with two workers, both get requests."""
    with httpx.Client(timeout=10) as c:
        return c.get(url, **kw)  # type: ignore[arg-type]


def test_on_the_storefront_listener_ops_data_needs_the_admin_token(served: ApiServer) -> None:
    for path in OPS_DATA:
        r = get(served.url + path)
        assert (r.status_code, error_code(r)) == (401, "UNAUTHENTICATED"), path
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = get(served.url + path, headers={"Authorization": "Bearer not-a-known-token-at-all"})
        assert (r.status_code, error_code(r)) == (401, "UNAUTHENTICATED"), path
        r = get(served.url + path, headers=storefront_headers("shop-a"))
        assert (r.status_code, error_code(r)) == (403, "FORBIDDEN"), path
        assert get(served.url + path, headers=admin_headers()).status_code == 200, path
    page = get(served.url + "/dashboard")  # the page is a shell: what it shows comes from the data
    assert page.status_code == 200 and "<template" in page.text


def test_the_ops_listener_serves_the_ops_routes_without_a_token(served: ApiServer) -> None:
    for path in [*OPS_DATA, *OPS_OPEN]:
        r = get(served.ops_url + path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["x-request-id"]
    assert "flashsale_redis_up 1.0" in get(served.ops_url + "/metrics").text


def test_the_ops_listener_serves_nothing_else(served: ApiServer) -> None:
    cid = new_id()
    with httpx.Client(base_url=served.ops_url, timeout=10) as c:
        answers = [
            c.put(f"/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers()),
            c.get(f"/v1/campaigns/{cid}", headers=admin_headers()),
            c.post(f"/v1/campaigns/{cid}/pause", headers=admin_headers()),
            c.post(f"/v1/campaigns/{cid}/reservations", json={"user_id": "u", "product_id": "p1", "units": 1},
                   headers=storefront_headers("shop-a", "k1")),
            c.get("/openapi.json"),
        ]
    for r in answers:
        assert (r.status_code, error_code(r)) == (404, "NOT_FOUND"), r.request.url
    assert get(f"{served.url}/v1/campaigns/{cid}", headers=admin_headers()).status_code == 404  # nothing was made


def test_one_ops_scrape_counts_every_workers_requests(served: ApiServer) -> None:
    """Reserves served by the API workers show in the ops listener's scrape, summed, and the
    dashboard data there shows the campaign."""
    cid = new_id()
    assert httpx.put(f"{served.url}/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers(),
                     timeout=10).status_code == 201
    n = 12
    for i in range(n):
        with httpx.Client(timeout=10) as c:  # new connections: both workers serve some
            r = c.post(f"{served.url}/v1/campaigns/{cid}/reservations", json={"user_id": f"u{i}", "product_id": "p2",
                                                                              "units": 1},
                       headers=storefront_headers("shop-a", uuid.uuid4().hex))
            assert r.status_code == 201, r.text
    route = {"route": "/v1/campaigns/{cid}/reservations", "method": "POST", "status": "201"}
    for _ in range(100):  # a worker counts a request as it finishes it, a moment after the client has the answer
        m = Samples(get(served.ops_url + "/metrics").text)
        # every test of the module reserved on its own campaign: compare with the storefront
        # listener's scrape, which sums the same workers' files
        mine = m.get("flashsale_http_requests_total", **route)
        theirs = Samples(get(served.url + "/metrics", headers=admin_headers()).text).get(
            "flashsale_http_requests_total", **route)
        if mine is not None and mine == theirs and mine >= n:
            break
        time.sleep(0.05)
    assert mine == theirs and mine is not None and mine >= n, (mine, theirs)
    assert m.get("flashsale_campaign_sold_units_total", campaign=cid) == 0
    assert m.get("flashsale_campaign_held_units", campaign=cid) == n
    data = get(served.ops_url + "/dashboard/data", params={"campaign": cid}).json()
    assert data["campaigns"][0]["held_units"] == n


def _ops_pids(server: ApiServer) -> list[int]:
    """The ops listener's processes: in the server's process group, running engine.ops.listener."""
    assert server.proc is not None
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            pgid = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if pgid == server.proc.pid and b"engine.ops.listener" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_torn_worker_metrics_file_leaves_metrics_up(redis_server: RedisServer, tmp_path: Path) -> None:
    """A process SIGKILLed while it created its metrics file leaves it empty or cut short: the
    scrape leaves that file out (and says so), it does not answer 500."""
    server = ApiServer(redis_server.url, workers=2, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).start()
    try:
        auth = admin_headers()
        assert httpx.get(server.url + "/metrics", headers=auth).status_code == 200
        (tmp_path / "counter_999999.db").write_bytes(b"")  # created, never sized
        (tmp_path / "histogram_999998.db").write_bytes(b"\x10\x00")  # a header cut short
        answer = httpx.get(server.url + "/metrics", headers=auth)
        assert answer.status_code == 200, answer.text[:300]
        assert "flashsale_http_requests_total" in answer.text
        assert "unreadable worker files" in server.output()
    finally:
        server.stop()


def test_a_dead_ops_listener_is_started_again(redis_server: RedisServer) -> None:
    server = ApiServer(redis_server.url, ops=True).start()
    try:
        pids = _ops_pids(server)
        assert pids, server.output()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for _ in range(300):
            new = _ops_pids(server)
            if new and not set(new) & set(pids):
                try:
                    if get(server.ops_url + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        assert get(server.ops_url + "/metrics").status_code == 200
        assert get(server.url + "/healthz").status_code == 200
        assert "the ops listener exited" in server.output()
    finally:
        server.stop()


def test_an_ops_port_that_cannot_listen_is_refused_at_start(redis_server: RedisServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for args in (["--port", str(port + 1), "--ops-port", str(port)],  # in use
                     ["--port", str(port + 1), "--ops-port", str(port + 1)]):  # the API's own
            out = subprocess.run([FLASHSALE, "serve", *args], env=base_env(redis_server.url), capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 2, out
            assert len(out.stderr.strip().splitlines()) == 1 and "--ops-port" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr


def test_an_ops_listener_told_to_stop_stays_stopped(redis_server: RedisServer) -> None:
    """A SIGTERM (or the Ctrl-C a terminal sends the whole group) stops it for good; the API serves on."""
    server = ApiServer(redis_server.url, ops=True, FLASHSALE_LOG_LEVEL="INFO").start()
    try:
        for pid in _ops_pids(server):
            os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if "the ops listener stopped" in server.output():
                break
            time.sleep(0.1)
        assert "the ops listener stopped" in server.output()  # logged as the watcher returns: no restart after
        assert _ops_pids(server) == []
        assert "the ops listener exited" not in server.output()
        assert get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()
