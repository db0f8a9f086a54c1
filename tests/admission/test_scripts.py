"""The admission scripts called directly: every return code, the keys they write, the clock."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.admission.queue import LATE, draw
from engine.core.scripts import source
from engine.status import Status
from tests.admission.conftest import load


def fingerprint_of(raw: bytes) -> str:
    return hashlib.sha1(raw).hexdigest()


async def run(r: aioredis.Redis, name: str, keys_: list[str], argv: list[Any]) -> Any:
    return await r.eval(source(name), len(keys_), *keys_, *argv)  # type: ignore[misc]


async def stored(r: aioredis.Redis, cid: str) -> tuple[str, dict[str, Any]]:
    raw = await r.hget(keys.CampaignKeys(cid).meta, "def")  # type: ignore[misc]
    return fingerprint_of(raw), orjson.loads(raw)


def join_args(fp: str, d: dict[str, Any], user: str, *, ticket: str = "t1", identity: str = "",
              storefront: str = "shop-a", registered: str = "0", capped: str = "0") -> list[Any]:
    qopens = _ms(d["admission"]["queue_opens_at"])
    return [fp, qopens, _ms(d["opens_at"]), registered, capped, ticket, user, identity, storefront,
            "seed-1", hashlib.sha256(b"seed-1").hexdigest()]


def _ms(text: str) -> int:
    from engine.campaign import parse_time

    return parse_time(text, "t")


def join_keys(cid: str) -> list[str]:
    k = keys.CampaignKeys(cid)
    return [k.meta, k.admission, k.tickets, k.queue, k.queue_users, k.registrations]


async def test_register_codes(engine: Any, aredis: aioredis.Redis) -> None:
    k = keys.CampaignKeys("c1")
    assert await run(aredis, "register", [k.meta, k.registrations], ["x", "0", 1, "u1", ""]) == \
        [Status.CAMPAIGN_NOT_FOUND, b""]
    cid = await load(engine, opens_in_ms=3_600_000)
    fp, _ = await stored(aredis, cid)
    assert await run(aredis, "register", [k.meta, k.registrations], ["stale", "0", 1, "u1", ""]) == \
        [Status.DEFINITION_CHANGED, b""]
    reply = await run(aredis, "register", [k.meta, k.registrations], [fp, "1", 3, "u1", "i1", "u2", "i1", "u1", "i9"])
    assert reply == [0, 1, Status.BUYER_CAP_EXCEEDED, 0]
    assert await aredis.hgetall(k.registrations) == {  # type: ignore[misc]
        b"u|u1": (await aredis.hget(k.registrations, "u|u1")), b"i|i1": b"u1"}  # type: ignore[misc]
    with pytest.raises(Exception, match="rows"):
        await run(aredis, "register", [k.meta, k.registrations], [fp, "0", 2, "u1", ""])
    await engine.close_campaign(cid)
    assert await run(aredis, "register", [k.meta, k.registrations], [fp, "0", 1, "u3", ""]) == [Status.CLOSED, b""]


async def test_queue_join_codes_and_scores(engine: Any, aredis: aioredis.Redis) -> None:
    cid = await load(engine, opens_in_ms=3_600_000)
    fp, d = await stored(aredis, cid)
    k = keys.CampaignKeys(cid)
    assert await run(aredis, "queue_join", join_keys("nope"), join_args(fp, d, "u1")) == \
        [Status.CAMPAIGN_NOT_FOUND, b""]
    assert await run(aredis, "queue_join", join_keys(cid), join_args("stale", d, "u1")) == \
        [Status.DEFINITION_CHANGED, b""]
    early = {**d, "admission": {**d["admission"], "queue_opens_at": d["opens_at"]}}
    assert await run(aredis, "queue_join", join_keys(cid), join_args(fp, early, "u1")) == \
        [Status.QUEUE_NOT_OPEN, b""]
    assert await run(aredis, "queue_join", join_keys(cid), join_args(fp, d, "u1", registered="1")) == \
        [Status.NOT_REGISTERED, b""]
    before = int(time.time() * 1000)
    assert await run(aredis, "queue_join", join_keys(cid), join_args(fp, d, "u1", identity="i1", capped="1")) == \
        [0, b"t1", 1]
    assert await aredis.zscore(k.queue, "t1") == draw("seed-1", "u1")  # the pre-queue draw
    user, shop, joined, score = (await aredis.hget(k.tickets, "t1")).decode().split("|")  # type: ignore[misc]
    assert (user, shop, int(score)) == ("u1", "shop-a", draw("seed-1", "u1")) and int(joined) >= before - 50
    assert await run(aredis, "queue_join", join_keys(cid), join_args(fp, d, "u2", ticket="t2", identity="i1",
                                                                     capped="1")) == [0, b"t1", 0]
    assert await run(aredis, "queue_join", join_keys(cid), join_args(fp, d, "u1", ticket="t3",
                                                                     storefront="shop-b")) == \
        [Status.QUEUED_ELSEWHERE, b""]
    seed = await aredis.hmget(k.admission, ["seed", "seed_sha"])  # type: ignore[misc]
    assert seed == [b"seed-1", hashlib.sha256(b"seed-1").hexdigest().encode()]
    # after the opening: behind every draw, by arrival
    opened = await load(engine, cid="c2", opens_in_ms=-1000)
    fp2, d2 = await stored(aredis, opened)
    for i in range(3):
        await run(aredis, "queue_join", join_keys(opened), join_args(fp2, d2, f"u{i}", ticket=f"t{i}"))
    k2 = keys.CampaignKeys(opened)
    assert await aredis.zrange(k2.queue, 0, -1, withscores=True) == [(b"t0", LATE + 1), (b"t1", LATE + 2),
                                                                     (b"t2", LATE + 3)]
    await engine.close_campaign(opened)
    assert await run(aredis, "queue_join", join_keys(opened), join_args(fp2, d2, "u9", ticket="t9")) == \
        [Status.CLOSED, b""]


async def test_queue_seed_commits_once(aredis: aioredis.Redis) -> None:
    k = keys.CampaignKeys("c1")
    first = hashlib.sha256(b"a").hexdigest()
    assert await run(aredis, "queue_seed", [k.admission], ["a", first]) == [0, first.encode()]
    assert await run(aredis, "queue_seed", [k.admission], ["b", hashlib.sha256(b"b").hexdigest()]) == \
        [0, first.encode()]
    assert await aredis.hget(k.admission, "seed") == b"a"  # type: ignore[misc]


async def test_queue_rate_records_changes_with_a_clamped_base(engine: Any, aredis: aioredis.Redis) -> None:
    k = keys.CampaignKeys("c1")
    rate_keys = [k.meta, k.admission, k.queue]
    assert await run(aredis, "queue_rate", rate_keys, [5, 10, 0, 1]) == [Status.CAMPAIGN_NOT_FOUND, b""]
    cid = await load(engine, opens_in_ms=-10_000, admit_per_second=100)
    _, d = await stored(aredis, cid)
    opens = _ms(d["opens_at"])
    await aredis.zadd(k.queue, {"a": LATE + 1, "b": LATE + 2})
    ok, at = await run(aredis, "queue_rate", rate_keys, [0, 2, opens, 100])
    assert ok == 0 and at >= opens + 10_000
    assert await aredis.hget(k.admission, "rates") == f"{at}:0:2000".encode()  # type: ignore[misc]
    ok, at2 = await run(aredis, "queue_rate", rate_keys, [7, 2, opens, 100])  # often in the same ms: base kept
    assert await aredis.hget(k.admission, "rates") == f"{at}:0:2000,{at2}:7:2000".encode()  # type: ignore[misc]
    assert await run(aredis, "queue_rate", rate_keys, [9, 2, opens, 100]) == [Status.INVALID_STATE,
                                                                             b"too_many_changes"]
    with pytest.raises(Exception, match="rate"):
        await run(aredis, "queue_rate", rate_keys, [-1, 2, opens, 100])
