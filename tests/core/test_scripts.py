"""Each Lua script called directly (EVAL of the text the engine registers): return codes, the keys
it writes and their layout (no TTLs anywhere), the stream entries it appends, and that a refused
or malformed call writes nothing."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine import keys
from engine.core import Engine
from engine.core.scripts import SCRIPT_NAMES, source
from engine.status import Status
from tests.core.conftest import (
    campaign,
    make_overdue,
    redis_ms,
    reserve_keys,
    run_script,
    stream,
    text,
    transition_keys,
)

K = keys.CampaignKeys("c1")


async def dump(r: aioredis.Redis) -> dict[str, Any]:
    """Every key's type and content: to show a call changed nothing."""
    out: dict[str, Any] = {}
    for key in sorted(await r.keys("*")):
        kind = text(await r.type(key))
        if kind == "hash":
            out[text(key)] = await r.hgetall(key)
        elif kind == "zset":
            out[text(key)] = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[text(key)] = await r.xrange(key)
        elif kind == "set":
            out[text(key)] = await r.smembers(key)
        else:
            out[text(key)] = kind
    return out


async def reserve(r: aioredis.Redis, *requests: tuple[Any, ...], cid: str = "c1") -> list[list[Any]]:
    """reserve.lua with (rid, storefront, key, user, product, units[, gate]) per request; 4 values
    each. The gate (buyer signals, admission) is '' unless given."""
    args: list[Any] = [len(requests)]
    for req in requests:
        args += list(req) if len(req) == 7 else [*req, ""]
    out = await run_script(r, "reserve", reserve_keys(cid), args)
    return [out[i : i + 4] for i in range(0, len(out), 4)]


def record(packed: bytes) -> list[Any]:
    return list(msgpack.unpackb(packed, raw=False))


async def assert_no_ttl(r: aioredis.Redis) -> None:
    for key in await r.keys("*"):
        assert await r.ttl(key) == -1, f"{text(key)} carries a TTL"


# -- includes -------------------------------------------------------------------------------


def test_includes_are_spliced_in() -> None:
    for name in ("confirm", "cancel", "expire"):
        text_ = source(name)
        assert "-- @include" not in text_
        assert "local function release_hold(rid, e, state, now)" in text_
        assert "local function redis_now()" in text_ and "local function flush()" in text_
        assert text_.index("local function read_entries") < text_.index("local function flush")
        assert text_.index("local function flush") < text_.rindex("flush()")
    for name in SCRIPT_NAMES:
        assert "-- @include" not in source(name)
    assert "release_hold" not in source("reserve")


async def test_every_script_compiles(aredis: aioredis.Redis) -> None:
    for name in SCRIPT_NAMES:
        sha = await aredis.script_load(source(name))
        assert len(sha) == 40


# -- load ------------------------------------------------------------------------------------


async def test_load_creates_meta_and_counters_without_ttl(engine: Engine, aredis: aioredis.Redis) -> None:
    assert await engine.load_campaign(campaign()) is True
    meta = {text(k): text(v) for k, v in (await aredis.hgetall(K.meta)).items()}
    assert meta["flag"] == "active" and meta["total"] == "100" and meta["cap"] == "10"
    assert meta["price"] == "10000" and meta["hold"] == "900000" and meta["products"] == "2"
    assert meta["total|p1"] == "60" and meta["cap|p1"] == "4" and meta["total|p2"] == "80"
    assert "cap|p2" not in meta
    assert meta["rl_rate"] == "1000000" and meta["rl_burst"] == "1000000"
    assert int(meta["opens"]) < int(meta["closes"])
    counters = {text(k): int(v) for k, v in (await aredis.hgetall(K.counters)).items()}
    assert counters == {"sold": 0, "held": 0, "orders": 0, "buyers": 0}
    assert await aredis.smembers(keys.CAMPAIGNS) == {b"c1"}
    assert not await aredis.exists(K.events)
    await assert_no_ttl(aredis)


async def test_load_replaces_before_opening_and_refuses_after(engine: Engine, aredis: aioredis.Redis) -> None:
    now = await redis_ms(aredis)
    await engine.load_campaign(campaign(opens_ms=now + 3_600_000))
    await aredis.hset(K.counters, "rej|NOT_OPEN", 3)  # state of the old definition
    assert await engine.load_campaign(campaign(opens_ms=now + 7_200_000, total_units=90)) is False
    assert await aredis.hget(K.meta, "total") == b"90"
    assert await aredis.hget(K.counters, "rej|NOT_OPEN") is None

    await engine.load_campaign(campaign("c2"))  # open already
    args = await _load_args(engine, "c2")
    assert await run_script(aredis, "load", args[0], args[1]) == [Status.ALREADY_OPEN, b"open"]
    await engine.close_campaign("c2")
    assert await run_script(aredis, "load", args[0], args[1]) == [Status.ALREADY_OPEN, b"closed"]


async def _load_args(engine: Engine, cid: str) -> tuple[list[str], list[Any]]:
    c = campaign(cid)
    k = keys.CampaignKeys(cid)
    argv: list[Any] = [b"{}", c.opens_at_ms, c.closes_at_ms, c.hold_seconds * 1000, c.unit_price,
                       c.total_units, c.user_cap_units or 0, 5, 10, len(c.products)]
    for p in c.products:
        argv += [p.id, p.total_units, p.user_cap_units or 0]
    return [k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds, k.rate, k.ratelimit], argv


@pytest.mark.parametrize("bad", [
    lambda a: a.__setitem__(1, "x"),          # opens not a number
    lambda a: a.__setitem__(3, 0),            # hold 0
    lambda a: a.__setitem__(2, a[1]),         # closes == opens
    lambda a: a.__setitem__(11, 0),           # a product of 0 units
    lambda a: a.__setitem__(12, -1),          # a negative cap
    lambda a: a.__setitem__(9, 3),            # product count does not match
])
async def test_load_malformed_writes_nothing(engine: Engine, aredis: aioredis.Redis, bad: Any) -> None:
    now = await redis_ms(aredis)
    await engine.load_campaign(campaign(opens_ms=now + 3_600_000))  # replaceable
    before = await dump(aredis)
    keys_, argv = await _load_args(engine, "c1")
    argv[1] = now + 3_600_000
    bad(argv)
    with pytest.raises(ResponseError, match=r"^load: "):
        await run_script(aredis, "load", keys_, argv)
    assert await dump(aredis) == before


# -- reserve ---------------------------------------------------------------------------------


async def test_reserve_writes_every_key(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    [res] = await reserve(aredis, ("rid1", "sf", "key1", "u1", "p1", 3))
    code, rid, packed, replayed = res
    assert (code, rid, replayed) == (Status.OK, b"rid1", 0)
    rec = record(packed)
    now = await redis_ms(aredis)
    assert rec[:5] == ["held", "p1", "u1", 3, 30000]
    assert rec[5] - rec[6] == 900_000 and now - 5000 < rec[6] <= now
    assert rec[7:] == ["sf", "key1", "", 0]
    assert await aredis.hget(K.reservations, "rid1") == packed
    assert await aredis.hget(K.idempotency, "sf|key1") == b"rid1"
    assert await aredis.zrange(K.holds, 0, -1, withscores=True) == [(b"rid1", float(rec[5]))]
    assert await aredis.hmget(K.counters, ["held", "held|p1", "sold"]) == [b"3", b"3", b"0"]
    assert await aredis.hgetall(K.users) == {b"t|u1": b"3", b"t|u1|p1": b"3", b"t|u1|p1|sf": b"3"}
    assert float(await aredis.hget(K.ratelimit, "u1") or 0) >= rec[6]
    ring = {text(k): int(v) for k, v in (await aredis.hgetall(K.rate)).items()}
    slot = (rec[6] // 1000) % 120
    assert ring == {f"s{slot}": rec[6] // 1000, f"u{slot}": 3}
    [event] = await stream(aredis, "c1")
    assert event == {"e": "reserved", "rid": "rid1", "pid": "p1", "uid": "u1", "units": "3",
                     "amount": "30000", "at": str(rec[6]), "sf": "sf", "exp": str(rec[5]), "key": "key1"}
    await assert_no_ttl(aredis)


async def test_reserve_judges_a_batch_in_order(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(products=[{"id": "p1", "title": "t", "total_units": 5}],
                                        total_units=None))
    out = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 3), ("r2", "sf", "k2", "u2", "p1", 3),
                        ("r3", "sf", "k1", "u1", "p1", 3), ("r4", "sf", "k4", "u3", "p1", 2),
                        ("r5", "sf", "k5", "u4", "p1", 1), ("r6", "sf", "k1", "u1", "p1", 2))
    assert [o[0] for o in out] == [0, Status.INSUFFICIENT_STOCK, 0, 0, Status.SOLD_OUT,
                                   Status.IDEMPOTENCY_KEY_REUSED]
    assert out[1][1] == 2  # remaining
    assert out[2][1:] == [b"r1", out[0][2], 1]  # replay of a reservation made in the same batch
    assert out[4][1] == b"p1"
    assert await aredis.hlen(K.reservations) == 2 and await aredis.zcard(K.holds) == 2
    assert [e["rid"] for e in await stream(aredis, "c1")] == ["r1", "r4"]
    counters = await aredis.hgetall(K.counters)
    assert counters[b"held"] == b"5" and counters[b"held|p1"] == b"5"
    assert counters[b"rej|INSUFFICIENT_STOCK"] == b"1" and counters[b"rej|SOLD_OUT"] == b"1"
    assert counters[b"rej|IDEMPOTENCY_KEY_REUSED"] == b"1"


async def test_reserve_caps(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())  # p1 cap 4, campaign cap 10
    out = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 3), ("r2", "sf", "k2", "u1", "p1", 2),
                        ("r3", "sf", "k3", "u1", "p2", 7), ("r4", "sf", "k4", "u1", "p2", 1),
                        ("r5", "sf", "k5", "u1", "p1", 1))
    assert [(o[0], o[1]) for o in out] == [(0, b"r1"), (Status.USER_CAP_EXCEEDED, 1), (0, b"r3"),
                                           (Status.USER_CAP_EXCEEDED, 0), (Status.USER_CAP_EXCEEDED, 0)]
    assert await aredis.hgetall(K.users) == {b"t|u1": b"10", b"t|u1|p1": b"3", b"t|u1|p2": b"7",
                                             b"t|u1|p1|sf": b"3", b"t|u1|p2|sf": b"7"}


async def test_reserve_rejections_write_only_limiter_and_counts(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await engine.pause("c1")
    before = await dump(aredis)
    out = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), ("r2", "sf", "k2", "u1", "nope", 1))
    assert [o[0] for o in out] == [Status.PAUSED, Status.PRODUCT_NOT_FOUND]
    after = await dump(aredis)
    assert after.pop(K.ratelimit).keys() == {b"u1"}
    assert after[K.counters].pop(b"rej|PAUSED") == b"1"
    assert after == before


async def test_reserve_unknown_campaign(aredis: aioredis.Redis) -> None:
    out = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), ("r2", "sf", "k2", "u2", "p1", 1), cid="nope")
    assert out == [[Status.CAMPAIGN_NOT_FOUND, b"", b"", 0]] * 2
    assert await aredis.dbsize() == 0


@pytest.mark.parametrize("requests", [
    [("r1", "sf", "k1", "u1", "p1", 0)],
    [("r1", "sf", "k1", "u1", "p1", "1.5")],
    [("r1", "sf", "k1", "u1", "p1", "x")],
    [("r1", "sf", "k1", "u1", "p1", 10**13)],
    [("r1", "sf", "k1", "u1", "p1", 1), ("r2", "sf", "k2", "u|2", "p1", 1)],
    [("r1", "sf", "k1", "u1", "p1", 1), ("", "sf", "k2", "u2", "p1", 1)],
])
async def test_reserve_malformed_batch_writes_nothing(engine: Engine, aredis: aioredis.Redis,
                                                      requests: list[tuple[Any, ...]]) -> None:
    await engine.load_campaign(campaign())
    before = await dump(aredis)
    with pytest.raises(ResponseError, match=r"^reserve: "):
        await reserve(aredis, *requests)
    with pytest.raises(ResponseError, match=r"^reserve: "):  # n does not match the values
        await run_script(aredis, "reserve", reserve_keys("c1"), [2, "r1", "sf", "k1", "u1", "p1", 1])
    assert await dump(aredis) == before


async def test_reserve_malformed_batch_for_an_unknown_campaign_fails(aredis: aioredis.Redis) -> None:
    with pytest.raises(ResponseError, match=r"^reserve: units"):
        await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), ("r2", "sf", "k2", "u2", "p1", 0), cid="nope")
    assert await aredis.dbsize() == 0


async def test_reserve_records_are_what_cmsgpack_packs(engine: Engine, aredis: aioredis.Redis) -> None:
    """reserve.lua puts a new record's msgpack together from pieces: it must equal, byte for byte,
    cmsgpack.pack of the record's list (strings across the fixstr / str8 / str16 bounds, numbers
    of each width)."""
    await engine.load_campaign(campaign(total_units=10**9, user_cap_units=None, products=[
        {"id": "p1", "title": "t", "total_units": 10**9}, {"id": "p" * 40, "title": "t", "total_units": 10**9}]))
    reqs = []
    for i, (uid, key, sf, pid, units) in enumerate([
            ("u", "k", "s", "p1", 1), ("", "k" * 31, "s" * 31, "p1", 2), ("u" * 31, "k" * 32, "s" * 32, "p" * 40, 127),
            ("u" * 32, "k" * 255, "s", "p" * 40, 128), ("u" * 300, "k" * 40, "s" * 300, "p1", 70_000),
            ("ü" * 20, "k2", "s", "p1", 1), ("v", "k3", "s", "p1", 2)]):
        reqs.append((f"r{i}", sf, key, uid, pid, units))
    out = await reserve(aredis, *reqs)
    cmsgpack = ("return cmsgpack.pack({ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), "
                "tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])})")
    for (_rid, sf, key, uid, pid, units), (code, _, packed, _) in zip(reqs, out, strict=True):
        assert code == Status.OK
        rec = record(packed)
        assert rec[:5] == ["held", pid, uid, units, units * 10000] and rec[7:] == [sf, key, "", 0]
        assert await aredis.eval(cmsgpack, 0, *rec) == packed


async def test_reserve_largest_batch(engine: Engine, aredis: aioredis.Redis) -> None:
    """4096 requests: what the batch reads comes in calls of at most 2000 fields each."""
    await engine.load_campaign(campaign(total_units=10**6, products=[
        {"id": "p1", "title": "t", "total_units": 10**6, "user_cap_units": 4}]))
    [first] = await reserve(aredis, ("rl", "sf", "kl", "late", "p1", 3))
    reqs = [(f"r{i}", "sf", f"k{i}", f"u{i}", "p1", 1) for i in range(4096)]
    reqs[0] = ("x0", "sf", "kl", "late", "p1", 3)  # a replay first: users are read from request 2 on
    reqs[3000] = ("x1", "sf", "kl", "late", "p1", 3)  # a stored key past the first 2000
    reqs[3500] = ("x2", "sf", "k-late", "late", "p1", 2)  # stored counters past the first 4000 fields
    reqs[4095] = ("x3", "sf", "k10", "u10", "p1", 1)  # a key taken earlier in the batch
    out = await reserve(aredis, *reqs)
    assert out[0] == out[3000] == [Status.OK, b"rl", first[2], 1]
    assert out[3500] == [Status.USER_CAP_EXCEEDED, 1, b"", 0]
    assert out[4095] == [Status.OK, b"r10", out[10][2], 1]
    made = [i for i, o in enumerate(out) if o[3] == 0 and o[0] == Status.OK]
    assert len(made) == 4092 and all(out[i][1] == f"r{i}".encode() for i in made)
    assert await aredis.hget(K.counters, "held") == b"4095"
    assert await aredis.hlen(K.users) == 3 + 3 * 4092
    assert await aredis.hmget(K.users, ["t|late", "t|late|p1", "t|u4094", "t|u4094|p1"]) == [b"3", b"3", b"1", b"1"]
    assert await aredis.xlen(K.events) == 4093


async def test_reserve_key_pointing_at_a_missing_record(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await aredis.hset(K.idempotency, "sf|k1", "gone")
    out = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), ("r2", "sf", "k2", "u1", "p1", 1))
    assert out[0] == [Status.RESERVATION_NOT_FOUND, b"gone", b"", 0]
    assert out[1][0] == 0
    assert await aredis.hkeys(K.reservations) == [b"r2"]


async def test_reserve_replay_of_an_overdue_hold_reads_expired(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 2))
    await make_overdue(aredis, "c1", "r1")
    before = await dump(aredis)
    [(code, rid, packed, replayed)] = await reserve(aredis, ("r9", "sf", "k1", "u1", "p1", 2))
    assert (code, rid, replayed) == (0, b"r1", 1) and record(packed)[0] == "expired"
    assert await dump(aredis) == before  # the sweeper, not a read, releases it


async def test_reserve_window(engine: Engine, aredis: aioredis.Redis) -> None:
    now = await redis_ms(aredis)
    await engine.load_campaign(campaign("early", opens_ms=now + 3_600_000))
    await engine.load_campaign(campaign("late", opens_ms=now - 7_200_000, closes_ms=now - 3_600_000))
    [[code, *_]] = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), cid="early")
    assert code == Status.NOT_OPEN
    [[code, *_]] = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), cid="late")
    assert code == Status.CLOSED
    await engine.set_recovering("early", True)
    [[code, *_]] = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), cid="early")
    assert code == Status.RECOVERING


async def test_reserve_rate_limit_gcra(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(rate_limit={"per_second": 2, "burst": 3}))
    reqs = [(f"r{i}", "sf", f"k{i}", "u1", "p2", 1) for i in range(5)]
    out = await reserve(aredis, *reqs, ("r9", "sf", "k0", "u1", "p2", 1), ("ra", "sf", "ka", "u2", "p2", 1))
    assert [o[0] for o in out] == [0, 0, 0, Status.RATE_LIMITED, Status.RATE_LIMITED, 0, 0]
    assert 0 < out[3][1] <= 500  # ms until the next attempt: one emission interval at most
    assert out[5][3] == 1  # the replay is answered, and does not count
    assert await aredis.hget(K.counters, "rej|RATE_LIMITED") == b"2"


# -- confirm / cancel / expire ----------------------------------------------------------------


async def confirm(r: aioredis.Redis, *pairs: tuple[str, str], sf: str = "sf") -> list[list[Any]]:
    """confirm.lua with (rid, ref) per request, every one from storefront ``sf``."""
    return await confirm_as(r, *((rid, sf, ref) for rid, ref in pairs))


async def confirm_as(r: aioredis.Redis, *requests: tuple[str, str, str]) -> list[list[Any]]:
    """confirm.lua with (rid, storefront, ref) per request."""
    args: list[Any] = [len(requests)]
    for req in requests:
        args += list(req)
    out = await run_script(r, "confirm", transition_keys("c1"), args)
    return [out[i : i + 4] for i in range(0, len(out), 4)]


async def cancel(r: aioredis.Redis, *rids: str, sf: str = "sf") -> list[list[Any]]:
    args: list[Any] = [len(rids)]
    for rid in rids:
        args += [rid, sf]
    out = await run_script(r, "cancel", transition_keys("c1"), args)
    return [out[i : i + 4] for i in range(0, len(out), 4)]


async def test_confirm(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 3), ("r2", "sf", "k2", "u1", "p2", 2))
    out = await confirm(aredis, ("r1", "pay-1"), ("r1", "pay-1"), ("r1", "pay-2"), ("r2", "pay-3"),
                        ("nope", "pay-4"))
    assert [o[0] for o in out] == [0, 0, Status.INVALID_STATE, 0, Status.RESERVATION_NOT_FOUND]
    assert [o[3] for o in out[:2]] == [0, 1] and out[0][2] == out[1][2]
    assert out[2][1] == b"confirmed" and out[4][1] == b"nope"
    rec = record(out[0][2])
    assert rec[0] == "confirmed" and rec[9] == "pay-1" and rec[10] >= rec[6]
    counters = {text(k): int(v) for k, v in (await aredis.hgetall(K.counters)).items()}
    assert counters == {"sold": 5, "held": 0, "orders": 2, "buyers": 1, "held|p1": 0, "held|p2": 0,
                        "sold|p1": 3, "sold|p2": 2}
    users = {text(k): int(v) for k, v in (await aredis.hgetall(K.users)).items()}
    assert users == {"t|u1": 5, "t|u1|p1": 3, "t|u1|p2": 2, "c|u1": 5, "c|u1|p1": 3, "c|u1|p2": 2,
                     "t|u1|p1|sf": 3, "t|u1|p2|sf": 2, "c|u1|p1|sf": 3, "c|u1|p2|sf": 2}
    assert await aredis.zcard(K.holds) == 0
    events = [e for e in await stream(aredis, "c1") if e["e"] == "confirmed"]
    assert events == [
        {"e": "confirmed", "rid": "r1", "pid": "p1", "uid": "u1", "units": "3", "amount": "30000",
         "at": str(rec[10]), "ref": "pay-1"},
        {"e": "confirmed", "rid": "r2", "pid": "p2", "uid": "u1", "units": "2", "amount": "20000",
         "at": events[1]["at"], "ref": "pay-3"}]
    await assert_no_ttl(aredis)


async def test_confirm_malformed_writes_nothing(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 3))
    before = await dump(aredis)
    for args in ([1, "r1", "sf", ""], [1, "r1", "sf", "x" * 129], [2, "r1", "sf", "pay"], [0],
                 ["x", "r1", "sf", "pay"], [1, "r1", "", "pay"], [1, "r1", "s|f", "pay"], [1, "r1", "pay"]):
        with pytest.raises(ResponseError, match=r"^confirm: "):
            await run_script(aredis, "confirm", transition_keys("c1"), args)
    with pytest.raises(ResponseError, match=r"^confirm: "):  # one bad ref fails the batch up front
        await confirm(aredis, ("r1", "pay"), ("r1", ""))
    assert await dump(aredis) == before


async def test_cancel(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 3), ("r2", "sf", "k2", "u1", "p2", 2))
    await confirm(aredis, ("r2", "pay"))
    out = await cancel(aredis, "r1", "r1", "r2", "nope")
    assert [o[0] for o in out] == [0, 0, Status.INVALID_STATE, Status.RESERVATION_NOT_FOUND]
    assert [o[3] for o in out[:2]] == [0, 1] and out[0][2] == out[1][2]
    assert record(out[0][2])[0] == "cancelled" and out[2][1] == b"confirmed"
    assert await aredis.hmget(K.counters, ["held", "held|p1", "sold"]) == [b"0", b"0", b"2"]
    assert await aredis.hmget(K.users, ["t|u1", "t|u1|p1"]) == [b"2", b"0"]
    assert await aredis.zrange(K.holds, 0, -1) == []
    cancelled = [e for e in await stream(aredis, "c1") if e["e"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["rid"] == "r1" and cancelled[0]["units"] == "3"
    assert (await confirm(aredis, ("r1", "pay")))[0][:2] == [Status.INVALID_STATE, b"cancelled"]
    with pytest.raises(ResponseError, match=r"^cancel: "):
        await run_script(aredis, "cancel", transition_keys("c1"), [2, "r1", "sf"])
    for bad in ("", "s|f"):
        with pytest.raises(ResponseError, match=r"^cancel: "):
            await run_script(aredis, "cancel", transition_keys("c1"), [1, "r1", bad])


@pytest.mark.parametrize("script", ["confirm", "cancel"])
async def test_an_overdue_hold_expires_on_touch(engine: Engine, aredis: aioredis.Redis, script: str) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 3))
    await make_overdue(aredis, "c1", "r1")
    out = await (confirm(aredis, ("r1", "pay")) if script == "confirm" else cancel(aredis, "r1"))
    assert out == [[Status.INVALID_STATE, b"expired", b"", 0]]
    assert record(await aredis.hget(K.reservations, "r1") or b"")[0] == "expired"
    assert await aredis.hmget(K.counters, ["held", "sold"]) == [b"0", b"0"]
    assert await aredis.hget(K.users, "t|u1") == b"0"
    again = await (confirm(aredis, ("r1", "pay")) if script == "confirm" else cancel(aredis, "r1"))
    assert again == out
    assert [e["e"] for e in await stream(aredis, "c1")] == ["reserved", "expired"]


async def test_expire(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    reqs = [(f"r{i}", "sf", f"k{i}", f"u{i}", "p2", 1) for i in range(5)]
    await reserve(aredis, *reqs)
    for i in range(4):
        await make_overdue(aredis, "c1", f"r{i}")
    await confirm(aredis, ("r3", "pay"))  # overdue: expires instead
    assert await run_script(aredis, "expire", transition_keys("c1"), [2]) == [2, 1]
    assert await run_script(aredis, "expire", transition_keys("c1"), [2]) == [1, 0]
    assert await run_script(aredis, "expire", transition_keys("c1"), [2]) == [0, 0]
    states = {f"r{i}": record(await aredis.hget(K.reservations, f"r{i}") or b"")[0] for i in range(5)}
    assert states == {"r0": "expired", "r1": "expired", "r2": "expired", "r3": "expired", "r4": "held"}
    assert await aredis.zrange(K.holds, 0, -1) == [b"r4"]
    assert await aredis.hget(K.counters, "held") == b"1"
    events = await stream(aredis, "c1")
    assert sorted(e["rid"] for e in events if e["e"] == "expired") == ["r0", "r1", "r2", "r3"]
    for bad in (0, 10001, "x"):
        with pytest.raises(ResponseError, match=r"^expire: "):
            await run_script(aredis, "expire", transition_keys("c1"), [bad])


async def test_expire_drops_stale_zset_entries(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await aredis.zadd(K.holds, {"ghost": 1})
    assert await run_script(aredis, "expire", transition_keys("c1"), [10]) == [0, 0]
    assert await aredis.zcard(K.holds) == 0


# -- admin -----------------------------------------------------------------------------------


async def admin(r: aioredis.Redis, action: str, cid: str = "c1") -> list[Any]:
    out: list[Any] = await run_script(r, "admin", [keys.CampaignKeys(cid).meta], [action])
    return out


async def test_admin(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    assert await admin(aredis, "pause") == [0, b"paused"]
    assert await admin(aredis, "pause") == [0, b"paused"]
    assert await admin(aredis, "resume") == [0, b"active"]
    assert await admin(aredis, "recovering") == [0, b"recovering"]
    assert await admin(aredis, "pause") == [Status.INVALID_STATE, b"recovering"]
    assert await admin(aredis, "recovered") == [0, b"active"]
    assert await aredis.hget(K.meta, "flag_before_recovery") is None
    assert await admin(aredis, "recovered") == [0, b"active"]  # no-op
    await admin(aredis, "pause")
    await admin(aredis, "recovering")
    assert await admin(aredis, "recovered") == [0, b"paused"]
    assert await admin(aredis, "close") == [0, b"closed"]
    assert await admin(aredis, "resume") == [Status.INVALID_STATE, b"closed"]
    assert await admin(aredis, "recovered") == [0, b"closed"]  # never reopens a closed campaign
    await admin(aredis, "recovering")
    assert await admin(aredis, "recovered") == [0, b"closed"]
    assert await admin(aredis, "pause", "nope") == [Status.CAMPAIGN_NOT_FOUND, b""]
    with pytest.raises(ResponseError, match="unknown action"):
        await admin(aredis, "explode")
    await assert_no_ttl(aredis)


# -- storefronts -------------------------------------------------------------------------------


async def test_another_storefronts_reservation_is_not_found_and_untouched(engine: Engine,
                                                                          aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 3), ("r2", "sf", "k2", "u1", "p2", 2))
    await make_overdue(aredis, "c1", "r2")  # even an overdue hold is not expired by a stranger's touch
    before = await dump(aredis)
    assert await confirm(aredis, ("r1", "pay"), ("r2", "pay"), ("nope", "pay"), sf="other") == [
        [Status.RESERVATION_NOT_FOUND, b"r1", b"", 0], [Status.RESERVATION_NOT_FOUND, b"r2", b"", 0],
        [Status.RESERVATION_NOT_FOUND, b"nope", b"", 0]]
    assert await cancel(aredis, "r1", "r2", "nope", sf="other") == [
        [Status.RESERVATION_NOT_FOUND, b"r1", b"", 0], [Status.RESERVATION_NOT_FOUND, b"r2", b"", 0],
        [Status.RESERVATION_NOT_FOUND, b"nope", b"", 0]]
    assert await dump(aredis) == before
    # in one batch beside the owner's own requests: each is judged for its own storefront
    out = await confirm_as(aredis, ("r1", "other", "pay"), ("r1", "sf", "pay"), ("r1", "other", "pay"),
                           ("r1", "sf", "pay"))
    assert [(o[0], o[3]) for o in out] == [(Status.RESERVATION_NOT_FOUND, 0), (0, 0),
                                           (Status.RESERVATION_NOT_FOUND, 0), (0, 1)]


async def test_users_hash_keeps_each_storefronts_units(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())  # p1 cap 4 per user, campaign cap 10
    out = await reserve(aredis, ("r1", "a", "k1", "u1", "p1", 2), ("r2", "b", "k1", "u1", "p1", 2),
                        ("r3", "b", "k3", "u1", "p1", 1), ("r4", "a", "k4", "u1", "p2", 3))
    assert [o[0] for o in out] == [0, 0, Status.USER_CAP_EXCEEDED, 0]  # the cap counts both storefronts
    await confirm_as(aredis, ("r1", "a", "pay"))
    await cancel(aredis, "r4", sf="a")
    users = {text(k): int(v) for k, v in (await aredis.hgetall(K.users)).items()}
    assert users == {"t|u1": 4, "t|u1|p1": 4, "t|u1|p2": 0, "c|u1": 2, "c|u1|p1": 2,
                     "t|u1|p1|a": 2, "t|u1|p1|b": 2, "t|u1|p2|a": 0, "c|u1|p1|a": 2}
    await make_overdue(aredis, "c1", "r2")
    assert await run_script(aredis, "expire", transition_keys("c1"), [10]) == [1, 0]
    assert await aredis.hmget(K.users, ["t|u1|p1|b", "t|u1|p1", "t|u1"]) == [b"0", b"2", b"2"]


# -- judged before written --------------------------------------------------------------------


async def test_repeated_ids_in_one_batch_are_judged_in_order(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1), ("r2", "sf", "k2", "u2", "p1", 1),
                  ("r3", "sf", "k3", "u3", "p1", 1))
    await make_overdue(aredis, "c1", "r2")
    out = await confirm(aredis, ("r1", "pay"), ("r2", "pay"), ("r1", "pay"), ("r2", "pay"), ("r1", "other"))
    assert [(o[0], o[1], o[3]) for o in out] == [
        (0, b"r1", 0), (Status.INVALID_STATE, b"expired", 0), (0, b"r1", 1),
        (Status.INVALID_STATE, b"expired", 0), (Status.INVALID_STATE, b"confirmed", 0)]
    assert out[0][2] == out[2][2] == await aredis.hget(K.reservations, "r1")
    out = await cancel(aredis, "r3", "r3", "r1")
    assert [(o[0], o[1], o[3]) for o in out] == [(0, b"r3", 0), (0, b"r3", 1), (Status.INVALID_STATE, b"confirmed", 0)]
    assert (await confirm(aredis, ("r3", "pay")))[0][:2] == [Status.INVALID_STATE, b"cancelled"]
    assert [(e["e"], e["rid"]) for e in await stream(aredis, "c1")][3:] == [
        ("confirmed", "r1"), ("expired", "r2"), ("cancelled", "r3")]  # each transition once, in order
    counters = {text(k): int(v) for k, v in (await aredis.hgetall(K.counters)).items()}
    assert (counters["held"], counters["sold"], counters["orders"], counters["buyers"]) == (0, 1, 1, 1)
    assert await aredis.zcard(K.holds) == 0


GARBAGE = b"\xc1\xc1 no msgpack"  # 0xc1 is never used by msgpack: cmsgpack.unpack raises


async def _damaged_setup(engine: Engine, aredis: aioredis.Redis) -> int:
    """r1..r3 good holds; 'bad' a record cmsgpack cannot read, 'odd' one of the wrong shape,
    both in the holds zset. Returns the deadline they share."""
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p2", 1), ("r2", "sf", "k2", "u2", "p2", 1),
                  ("r3", "sf", "k3", "u3", "p2", 1))
    odd = await aredis.eval("return cmsgpack.pack({'held', 'p2', 'u4', 'three', 1, 2, 3, 'sf', 'k', '', 0})", 0)
    await aredis.hset(K.reservations, mapping={"bad": GARBAGE, "odd": odd})
    deadline = int(await aredis.zscore(K.holds, "r1") or 0)
    await aredis.zadd(K.holds, {"bad": deadline, "odd": deadline})
    return deadline


async def test_confirm_and_cancel_set_a_damaged_record_aside_and_serve_the_rest(
        engine: Engine, aredis: aioredis.Redis) -> None:
    await _damaged_setup(engine, aredis)
    out = await confirm(aredis, ("r1", "pay"), ("bad", "pay"), ("r2", "pay"), ("bad", "pay"), ("odd", "pay"))
    assert out[1:] == [[Status.DAMAGED_RECORD, b"bad", b"", 0], [0, b"r2", out[2][2], 0],
                       [Status.DAMAGED_RECORD, b"bad", b"", 1], [Status.DAMAGED_RECORD, b"odd", b"", 0]]
    assert out[0][:2] == [0, b"r1"]  # the good ones are confirmed, beside the damaged
    assert await cancel(aredis, "bad", "r3") == [[Status.DAMAGED_RECORD, b"bad", b"", 1],
                                                 [0, b"r3", await aredis.hget(K.reservations, "r3"), 0]]
    assert await aredis.hgetall(K.damaged) == {b"bad": b"unreadable", b"odd": b"malformed"}
    assert await aredis.zrange(K.holds, 0, -1) == []
    assert await aredis.hget(K.reservations, "bad") == GARBAGE  # kept as it was, for an operator
    counters = {text(k): int(v) for k, v in (await aredis.hgetall(K.counters)).items()}
    assert (counters["damaged"], counters["sold"], counters["orders"], counters["held"]) == (2, 2, 2, 0)
    assert [e["e"] for e in await stream(aredis, "c1")][3:] == ["confirmed", "confirmed", "cancelled"]


async def test_expire_sets_a_damaged_record_aside_and_the_sweep_goes_on(engine: Engine,
                                                                        aredis: aioredis.Redis) -> None:
    await _damaged_setup(engine, aredis)
    for rid in ("r1", "r2"):
        deadline = await make_overdue(aredis, "c1", rid)
    await aredis.zadd(K.holds, {"bad": deadline, "odd": deadline})
    got = await run_script(aredis, "expire", transition_keys("c1"), [10])
    assert got[:2] == [2, 0] and sorted(got[2:]) == [b"bad", b"odd"]
    assert await run_script(aredis, "expire", transition_keys("c1"), [10]) == [0, 0]
    assert await aredis.zrange(K.holds, 0, -1) == [b"r3"]
    assert await aredis.hgetall(K.damaged) == {b"bad": b"unreadable", b"odd": b"malformed"}
    counters = await aredis.hmget(K.counters, ["damaged", "held", "held|p2"])
    assert counters == [b"2", b"1", b"1"]
    assert sorted(e["rid"] for e in await stream(aredis, "c1") if e["e"] == "expired") == ["r1", "r2"]
    # through the engine: the same, logged, and the sweep is never stalled
    await aredis.hset(K.reservations, "bad2", GARBAGE)
    await aredis.zadd(K.holds, {"bad2": 1})
    assert await engine.expire_due("c1") == (0, False)
    assert (await engine.counters("c1")).damaged == 3


async def test_reserve_replay_of_a_damaged_record_is_refused_alone(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 1))
    await aredis.hset(K.reservations, "r1", GARBAGE)
    out = await reserve(aredis, ("r9", "sf", "k1", "u1", "p1", 1), ("r2", "sf", "k2", "u2", "p1", 1))
    assert out[0] == [Status.DAMAGED_RECORD, b"r1", b"", 0] and out[1][:2] == [0, b"r2"]


# -- money bounds inside Lua ------------------------------------------------------------------


async def test_reserve_refuses_a_stored_price_out_of_bounds_before_any_write(engine: Engine,
                                                                             aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(total_units=10**12, user_cap_units=None, unit_price=1, products=[
        {"id": "p1", "title": "t", "total_units": 10**12}]))
    for price in (10**10, 10**5):  # past MAX_PRICE; within it, but total × price past 2^53
        await aredis.hset(K.meta, "price", price)
        before = await dump(aredis)
        with pytest.raises(ResponseError, match=r"^reserve: the campaign's stored price or total is out of bounds"):
            await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 10**11))
        assert await dump(aredis) == before


async def test_reserve_refuses_an_amount_past_2_53(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(total_units=9_000_000, user_cap_units=None, unit_price=10**9, products=[
        {"id": "p1", "title": "t", "total_units": 9_000_000}]))
    out = await reserve(aredis, ("r1", "sf", "k1", "u1", "p1", 10**7), ("r2", "sf", "k2", "u2", "p1", 9_000_000))
    assert out[0] == [Status.INSUFFICIENT_STOCK, 9_000_000, b"", 0]
    assert out[1][0] == 0 and record(out[1][2])[4] == 9 * 10**15  # exact


@pytest.mark.parametrize("change", [
    lambda a: a.__setitem__(4, 10**9 + 1),             # price past MAX_PRICE
    lambda a: (a.__setitem__(4, 10**9), a.__setitem__(5, 10**7), a.__setitem__(11, 10**7)),  # 10^16 > 2^53
    lambda a: (a.__setitem__(5, 10**12 + 1)),           # total past MAX_UNITS
    lambda a: a.__setitem__(3, 8 * 24 * 3_600_000),     # hold past 7 days
    lambda a: a.__setitem__(2, 253402300800000),        # closes after 9999
    lambda a: a.__setitem__(11, 101),                   # a product larger than the tranche of 100
    lambda a: a.__setitem__(7, 10**6 + 1),              # rate limit past 10^6
])
async def test_load_refuses_values_out_of_bounds(engine: Engine, aredis: aioredis.Redis, change: Any) -> None:
    now = await redis_ms(aredis)
    await engine.load_campaign(campaign(opens_ms=now + 3_600_000))  # replaceable
    before = await dump(aredis)
    keys_, argv = await _load_args(engine, "c1")
    argv[1] = now + 3_600_000
    change(argv)
    with pytest.raises(ResponseError, match=r"^load: "):
        await run_script(aredis, "load", keys_, argv)
    assert await dump(aredis) == before


async def test_load_of_thousands_of_products_is_refused_and_changes_nothing(engine: Engine,
                                                                          aredis: aioredis.Redis) -> None:
    """3000 products with caps are 12,000 meta fields: unpacked at once they overflow Lua's C stack
    (past about 8000 values), and the old script failed there, after it had deleted the campaign
    it was replacing. Python allows 64 products; so does the script now, and it writes in chunks."""
    now = await redis_ms(aredis)
    await engine.load_campaign(campaign(opens_ms=now + 3_600_000))
    before = await dump(aredis)
    keys_, argv = await _load_args(engine, "c1")
    argv[1] = now + 3_600_000
    argv[9:] = [3000]
    for i in range(3000):
        argv += [f"p{i}", 1, 1]
    with pytest.raises(ResponseError, match=r"^load: at most 64 products"):
        await run_script(aredis, "load", keys_, argv)
    assert await dump(aredis) == before
