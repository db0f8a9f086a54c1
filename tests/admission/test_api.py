"""The admission endpoints on a real `flashsale serve` (two workers) over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from engine.admission import Keyring, Verified
from engine.admission.queue import recompute
from engine.cli import main
from tests.admission.conftest import KEYS, definition
from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer

SHOP_A, SHOP_B = storefront_headers("shop-a"), storefront_headers("shop-b")


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[ApiServer]:
    s = ApiServer(redis_server.url, workers=2, FLASHSALE_ADMISSION_KEYS=KEYS).start()
    yield s
    s.stop()


@pytest.fixture
def client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def put(client: httpx.Client, **kw: Any) -> str:
    cid = f"q-{uuid.uuid4().hex[:10]}"
    r = client.put(f"/v1/campaigns/{cid}", json=definition(cid, **kw), headers=admin_headers())
    assert r.status_code == 201, r.text
    return cid


def code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def test_registration(client: httpx.Client) -> None:
    cid = put(client, opens_in_ms=3_600_000, identity_cap_units=5)
    url = f"/v1/campaigns/{cid}/registrations"
    body = {"user_id": "u1", "buyer": {"identity": "id-1", "ip": "203.0.113.7"}}
    r = client.post(url, json=body, headers=SHOP_A)
    assert r.status_code == 201 and r.json() == {"campaign_id": cid, "user_id": "u1", "state": "registered"}
    assert client.post(url, json=body, headers=SHOP_B).status_code == 200
    r = client.post(url, json={"user_id": "u2", "buyer": {"identity": "id-1"}}, headers=SHOP_A)
    assert r.status_code == 409 and code(r) == "BUYER_CAP_EXCEEDED"
    assert r.json()["error"]["details"]["dimension"] == "identity"
    for bad, field in (({"user_id": "u3", "buyer": {"identity": "x", "ip": "1.2.3"}}, "buyer.ip"),
                       ({"user_id": "u3"}, "buyer.identity"), ({"user_id": "u 3"}, "user_id"),
                       ({"user_id": "u3", "extra": 1}, "extra"), ({"buyer": {}}, "user_id")):
        r = client.post(url, json=bad, headers=SHOP_A)
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == field, (bad, r.text)
    assert client.post(url, json=body, headers=admin_headers()).status_code == 403
    assert client.post(f"/v1/campaigns/nope-{cid}/registrations", json=body, headers=SHOP_A).status_code == 404
    opened = put(client, opens_in_ms=-1000)
    r = client.post(f"/v1/campaigns/{opened}/registrations", json={"user_id": "u1"}, headers=SHOP_A)
    assert r.status_code == 409 and code(r) == "CLOSED"


def test_the_queue_before_and_after_the_opening(client: httpx.Client) -> None:
    opens_in_s = 3.0
    started = time.monotonic()
    cid = put(client, opens_in_ms=int(opens_in_s * 1000), admit_per_second=0, eligibility="registered")
    view = client.get(f"/v1/campaigns/{cid}", headers=SHOP_A).json()
    seed_sha = view["admission"]["seed_sha256"]
    assert len(seed_sha) == 64 and "seed" not in view["admission"]
    queue = f"/v1/campaigns/{cid}/queue"
    r = client.post(queue, json={"user_id": "u1"}, headers=SHOP_A)
    assert r.status_code == 409 and code(r) == "NOT_REGISTERED"
    for user in ("u1", "u2"):
        client.post(f"/v1/campaigns/{cid}/registrations", json={"user_id": user}, headers=SHOP_A)
    r = client.post(queue, json={"user_id": "u1"}, headers=SHOP_A)
    assert r.status_code == 201, r.text
    first = r.json()
    assert set(first) == {"ticket", "state", "position", "ahead", "estimated_wait_s", "poll_after_ms",
                          "admitted_at", "admission_token", "token_expires_at"}
    assert first["state"] == "waiting" and first["position"] is None and first["ahead"] is None
    assert first["poll_after_ms"] > 0
    again = client.post(queue, json={"user_id": "u1"}, headers=SHOP_A)
    assert again.status_code == 200 and again.json()["ticket"] == first["ticket"]
    ticket = f"{queue}/{first['ticket']}"
    assert client.get(ticket, headers=SHOP_A).json()["position"] is None
    r = client.get(ticket, headers=SHOP_B)
    assert r.status_code == 404 and code(r) == "NOT_FOUND"  # another storefront's ticket is unknown
    assert client.get(f"{queue}/t{'0' * 32}", headers=SHOP_A).status_code == 404
    assert client.post(queue, json={"user_id": "u1"}, headers=SHOP_B).status_code == 409
    second = client.post(queue, json={"user_id": "u2"}, headers=SHOP_A).json()
    assert time.monotonic() - started < opens_in_s, "the machine is too slow for this test's pre-queue"
    time.sleep(max(0.0, opens_in_s - (time.monotonic() - started)) + 0.3)

    view = client.get(f"/v1/campaigns/{cid}", headers=SHOP_A).json()
    assert hashlib.sha256(view["admission"]["seed"].encode()).hexdigest() == seed_sha  # revealed
    polls = {t: client.get(f"{queue}/{t}", headers=SHOP_A).json() for t in (first["ticket"], second["ticket"])}
    assert sorted(p["position"] for p in polls.values()) == [1, 2]
    assert {p["state"] for p in polls.values()} == {"waiting"}  # admission paused (rate 0)
    r = client.patch(f"/v1/campaigns/{cid}/admission", json={"admit_per_second": 1000}, headers=admin_headers())
    assert r.status_code == 200 and r.json()["admit_per_second"] == 1000
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = client.get(ticket, headers=SHOP_A).json()
        if body["state"] == "admitted":
            break
        time.sleep(0.1)
    assert body["state"] == "admitted" and body["ahead"] == 0
    ring = Keyring.parse(KEYS)
    assert isinstance(ring.verify(body["admission_token"], cid, "u1"), Verified)
    assert ring.verify(body["admission_token"], cid, "u2") is not None
    assert not isinstance(ring.verify(body["admission_token"], cid, "u2"), Verified)  # never another user's
    stats = client.get(f"/v1/campaigns/{cid}/stats", headers=SHOP_A).json()
    assert stats["queue"]["seed_sha256"] == seed_sha and stats["queue"]["admit_per_second"] == 1000
    assert stats["queue"]["waiting"] + stats["queue"]["admitted"] == 2
    r = client.patch(f"/v1/campaigns/{cid}/admission", json={"admit_per_second": 0}, headers=admin_headers())
    assert r.status_code == 200 and r.json()["admit_per_second"] == 0  # paused, live
    assert client.get(f"/v1/campaigns/{cid}/stats", headers=SHOP_A).json()["queue"]["admit_per_second"] == 0
    metrics = client.get("/metrics", headers=admin_headers()).text
    assert f'flashsale_queue_admit_per_second{{campaign="{cid}"}} 0.0' in metrics
    assert 'flashsale_queue_requests_total{call="poll",outcome="admitted"}' in metrics


def test_queue_refusals(client: httpx.Client) -> None:
    early = put(client, opens_in_ms=3_600_000, queue_opens_in_ms=1_800_000)
    r = client.post(f"/v1/campaigns/{early}/queue", json={"user_id": "u1"}, headers=SHOP_A)
    assert r.status_code == 409 and code(r) == "QUEUE_NOT_OPEN"
    plain = put(client, admission={"mode": "open"})
    assert "admission" in client.get(f"/v1/campaigns/{plain}", headers=SHOP_A).json()
    assert "queue" not in client.get(f"/v1/campaigns/{plain}/stats", headers=SHOP_A).json()
    r = client.post(f"/v1/campaigns/{plain}/queue", json={"user_id": "u1"}, headers=SHOP_A)
    assert r.status_code == 409 and code(r) == "INVALID_STATE"
    url = f"/v1/campaigns/{early}/admission"
    assert client.patch(url, json={"admit_per_second": 5}, headers=SHOP_A).status_code == 403
    for bad in ({"admit_per_second": -1}, {"admit_per_second": 1.5}, {"rate": 5}, {}):
        r = client.patch(url, json=bad, headers=admin_headers())
        assert r.status_code == 422 and code(r) == "INVALID", bad
    r = client.patch(f"/v1/campaigns/{plain}/admission", json={"admit_per_second": 5}, headers=admin_headers())
    assert r.status_code == 409
    r = client.post(f"/v1/campaigns/{early}/queue", content=b"[1]", headers=SHOP_A)
    assert r.status_code == 400


async def _join_all(url: str, cid: str, users: list[str], until: float) -> dict[str, tuple[str, float]]:
    """Join every user, spread over the time until ``until`` (monotonic), through many connections."""
    out: dict[str, tuple[str, float]] = {}
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as c:
        async def one(user: str, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            r = await c.post(f"/v1/campaigns/{cid}/queue", json={"user_id": user}, headers=SHOP_A)
            assert r.status_code == 201, r.text
            out[user] = (r.json()["ticket"], time.monotonic())
        start = time.monotonic()
        step = (until - start) / len(users)
        await asyncio.gather(*(one(u, start + i * step) for i, u in enumerate(users)))
    return out


def test_the_order_is_fixed_once_with_two_workers_racing(server: ApiServer, client: httpx.Client,
                                                          redis_server: RedisServer) -> None:
    opens_in_s = 3.0
    started = time.monotonic()
    cid = put(client, opens_in_ms=int(opens_in_s * 1000), admit_per_second=0)
    users = [f"u{i}" for i in range(300)]
    # joins spread over the opening instant: some in the pre-queue, some after it
    joined = asyncio.run(_join_all(server.url, cid, users, started + opens_in_s + 1.5))
    time.sleep(0.3)
    result = CliRunner().invoke(main, ["export", "queue", cid, "--redis-url", redis_server.url])
    assert result.exit_code == 0, result.output
    export = orjson.loads(result.stdout)
    order = [t["user_id"] for t in export["tickets"]]
    assert recompute(export) == order and sorted(order) == sorted(users)
    pre = [t for t in export["tickets"] if t["pre_queue"]]
    assert 0 < len(pre) < len(users), "the joins did not straddle the opening"
    expected = {t["user_id"]: t["position"] for t in export["tickets"]}

    async def positions() -> dict[str, int]:
        got: dict[str, int] = {}
        async with httpx.AsyncClient(base_url=server.url, timeout=20,
                                     limits=httpx.Limits(max_connections=8)) as c:
            async def one(user: str) -> None:
                r = await c.get(f"/v1/campaigns/{cid}/queue/{joined[user][0]}", headers=SHOP_A)
                got[user] = r.json()["position"]
            await asyncio.gather(*(one(u) for u in users))
        return got

    # asked twice over fresh connections (both workers answer some): the same positions, the export's
    assert asyncio.run(positions()) == expected == asyncio.run(positions())


def test_serve_refuses_queue_mode_without_keys(redis_server: RedisServer, client: httpx.Client) -> None:
    put(client)  # a queue-mode campaign is in Redis now
    for keys in (None, "k1:short"):  # none, or too short a secret
        s = ApiServer(redis_server.url) if keys is None else ApiServer(redis_server.url, FLASHSALE_ADMISSION_KEYS=keys)
        super(ApiServer, s).start()  # the process alone: it is not expected to become healthy
        assert s.proc is not None
        assert s.proc.wait(30) == 2
        lines = [line for line in s.output().splitlines() if line.startswith("flashsale serve:")]
        assert len(lines) == 1 and "FLASHSALE_ADMISSION_KEYS" in lines[0], s.output()
        s.stop()


@pytest.mark.needs_services  # starts its own redis-server
def test_a_server_without_keys_refuses_a_queue_mode_definition() -> None:
    redis = RedisServer().start()
    s = ApiServer(redis.url).start()
    try:
        cid = "q-nokeys"
        r = httpx.put(f"{s.url}/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers())
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "admission.mode"
        r = httpx.put(f"{s.url}/v1/campaigns/{cid}", json=definition(cid, admission={"mode": "open"}),
                      headers=admin_headers())
        assert r.status_code == 201
    finally:
        s.stop()
        redis.stop()


def test_no_endpoint_reveals_another_tickets_state_or_the_next_in_line(server: ApiServer,
                                                                       client: httpx.Client) -> None:
    """Another storefront's ticket reads exactly as an unknown one; a poll answers about its own
    ticket only; the campaign, its stats and the refusals carry no ticket id and no user id; there
    is no route that lists tickets."""
    cid = put(client, opens_in_ms=-60_000, admit_per_second=2, identity_cap_units=10)
    queue = f"/v1/campaigns/{cid}/queue"
    tickets = {}
    for i in range(12):
        r = client.post(queue, json={"user_id": f"u{i}", "buyer": {"identity": f"id-{i}"}}, headers=SHOP_A)
        assert r.status_code == 201, r.text
        tickets[f"u{i}"] = r.json()["ticket"]
    unknown = "t" + "0" * 32
    for user, t in tickets.items():
        mine = client.get(f"{queue}/{t}", headers=SHOP_A).json()
        assert mine["ticket"] == t
        text = orjson.dumps(mine).decode()
        assert not any(o in text for o in tickets.values() if o != t), (user, mine)  # no other ticket
        assert not any(f'"{o}"' in text for o in tickets if o != user), (user, mine)  # nor user
        theirs, none = client.get(f"{queue}/{t}", headers=SHOP_B), client.get(f"{queue}/{unknown}", headers=SHOP_B)
        assert theirs.status_code == none.status_code == 404
        assert theirs.text.replace(t, unknown) == none.text  # indistinguishable from an unknown ticket
    refusals = [client.post(queue, json={"user_id": "u1", "buyer": {"identity": "id-1"}}, headers=SHOP_B),
                client.post(queue, json={"user_id": "v1", "buyer": {"identity": "id-1"}}, headers=SHOP_B)]
    public = [*refusals, client.get(f"/v1/campaigns/{cid}", headers=SHOP_A),
              client.get(f"/v1/campaigns/{cid}/stats", headers=SHOP_A),
              client.get(f"/v1/campaigns/{cid}/stats", headers=SHOP_B)]
    assert [r.status_code for r in public] == [409, 409, 200, 200, 200]
    for r in public:
        assert not any(t in r.text for t in tickets.values()), r.text
        assert not any(f'"{u}"' in r.text for u in tickets), r.text
    assert client.get(queue, headers=SHOP_A).status_code == 405  # no listing of the line
    spec = client.get("/openapi.json").json()
    assert [p for p in spec["paths"] if "/queue" in p] == ["/v1/campaigns/{cid}/queue",
                                                           "/v1/campaigns/{cid}/queue/{ticket}"]
    assert set(spec["paths"]["/v1/campaigns/{cid}/queue/{ticket}"]) == {"get"}
