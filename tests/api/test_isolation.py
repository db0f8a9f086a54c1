"""A reservation belongs to the storefront that made it (docs/API.md), over a real `flashsale serve`:
another storefront's GET, confirm and cancel of it are answered byte for byte as for an unknown
id and change nothing; ``GET …/users/{uid}`` shows each storefront its own units while the caps
count the user's units through every storefront. And a damaged record is a server fault: 500."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis

from engine import keys
from tests.api.conftest import error_code, reserve
from tests.support.processes import storefront_headers
from tests.support.servers import RedisServer

A, B = storefront_headers("shop-a"), storefront_headers("shop-b")


def _calls(client: httpx.Client, cid: str, rid: str, who: dict[str, str]) -> list[httpx.Response]:
    base = f"/v1/campaigns/{cid}/reservations/{rid}"
    return [client.get(base, headers=who),
            client.post(f"{base}/confirm", json={"payment_ref": "pay-b"}, headers=who),
            client.post(f"{base}/cancel", headers=who)]


def test_another_storefronts_reservation_is_an_unknown_id(client: httpx.Client,
                                                          new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    made = reserve(client, cid, user="u1", units=2, shop="shop-a")
    assert made.status_code == 201, made.text
    rid = made.json()["reservation_id"]
    unknown = "0" * 24  # an id of the same form that no reservation has
    for theirs, none in zip(_calls(client, cid, rid, B), _calls(client, cid, unknown, B), strict=True):
        assert theirs.status_code == none.status_code == 404 and error_code(theirs) == "NOT_FOUND"
        assert theirs.content == none.content.replace(unknown.encode(), rid.encode())
    # nothing changed: the owner still sees its hold, and may confirm it, then repeat the confirm
    mine = client.get(f"/v1/campaigns/{cid}/reservations/{rid}", headers=A)
    assert mine.status_code == 200 and mine.json() == made.json()
    done = client.post(f"/v1/campaigns/{cid}/reservations/{rid}/confirm", json={"payment_ref": "pay-a"}, headers=A)
    assert done.status_code == 200 and done.json()["state"] == "confirmed"
    again = client.post(f"/v1/campaigns/{cid}/reservations/{rid}/confirm", json={"payment_ref": "pay-a"}, headers=A)
    assert again.status_code == 200 and again.json() == done.json()
    # a confirmed order is as invisible to the other storefront as a hold was
    assert [r.status_code for r in _calls(client, cid, rid, B)] == [404, 404, 404]
    stats = client.get(f"/v1/campaigns/{cid}/stats", headers=A).json()
    assert (stats["sold_units"], stats["held_units"]) == (2, 0)


def test_each_storefront_sees_its_own_units_and_the_caps_count_both(client: httpx.Client,
                                                                     new_campaign: Callable[..., str]) -> None:
    cid = new_campaign(user_cap_units=6)  # p1: 5 per user; 6 per user over the campaign
    a1 = reserve(client, cid, user="u1", product="p1", units=3, shop="shop-a").json()["reservation_id"]
    reserve(client, cid, user="u1", product="p2", units=1, shop="shop-a")
    reserve(client, cid, user="u1", product="p1", units=2, shop="shop-b")
    client.post(f"/v1/campaigns/{cid}/reservations/{a1}/confirm", json={"payment_ref": "pay"}, headers=A)

    def seen(who: dict[str, str]) -> dict[str, object]:
        r = client.get(f"/v1/campaigns/{cid}/users/u1", headers=who)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    assert seen(A) == {"campaign_id": cid, "user_id": "u1", "held_units": 1, "confirmed_units": 3, "products": [
        {"product_id": "p1", "held_units": 0, "confirmed_units": 3},
        {"product_id": "p2", "held_units": 1, "confirmed_units": 0}]}
    assert seen(B) == {"campaign_id": cid, "user_id": "u1", "held_units": 2, "confirmed_units": 0, "products": [
        {"product_id": "p1", "held_units": 2, "confirmed_units": 0},
        {"product_id": "p2", "held_units": 0, "confirmed_units": 0}]}
    # p1's cap of 5 is full through both storefronts together (3 + 2), and the campaign's 6 all
    # but (3 + 1 + 2): either storefront is told the same
    for shop in ("shop-a", "shop-b"):
        r = reserve(client, cid, user="u1", product="p1", units=1, shop=shop)
        assert r.status_code == 409 and r.json()["error"]["details"] == {"allowed": 0}
        r = reserve(client, cid, user="u1", product="p2", units=1, shop=shop)
        assert r.status_code == 409 and r.json()["error"]["details"] == {"allowed": 0}
    assert seen(A)["held_units"] == 1 and seen(B)["held_units"] == 2


def test_a_damaged_record_is_a_logged_500_and_counted(client: httpx.Client, redis_server: RedisServer,
                                                     new_campaign: Callable[..., str]) -> None:
    cid = new_campaign()
    rid = reserve(client, cid, shop="shop-a").json()["reservation_id"]
    k = keys.CampaignKeys(cid)
    with redis.Redis(port=redis_server.port) as r:
        r.hset(k.reservations, rid, b"\xc1 not msgpack")
    for resp in _calls(client, cid, rid, A):
        assert resp.status_code == 500 and error_code(resp) == "INTERNAL", resp.text
        assert rid not in resp.text and "Traceback" not in resp.text
    stats = client.get(f"/v1/campaigns/{cid}/stats", headers=A).json()
    assert stats["damaged_records"] == 1  # the confirm set it aside; the cancel found it set aside
    with redis.Redis(port=redis_server.port) as r:
        assert r.hgetall(k.damaged) == {rid.encode(): b"unreadable"}
        assert r.zscore(k.holds, rid) is None
