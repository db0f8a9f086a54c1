"""The data layout the Lua scripts write out and ``engine.keys`` declares are one table.

Every quoted string of every script (comments aside) is a declared name (a hash field or the
head of a field pattern, a stream event field, a value of a field, a record state), or one of the
few words below that are not part of the layout (Redis commands, messages, punctuation). A field
a script reads or writes directly on one of its KEYS belongs to that key's hash; the fields of
every XADD are event fields; the record's positions and arity are ``keys.RECORD``'s. And every
declared name is used by some script (or, for the few Python writes, by that Python module).
"""

from __future__ import annotations

import re
from importlib import resources

import msgpack
import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.admission.buyer import Buyer
from engine.core import Engine, ReserveRequest
from engine.status import Status
from tests.core.conftest import campaign

LUA = resources.files("engine") / "lua"
LUA_FILES = sorted(
    [p.name for p in LUA.iterdir() if p.name.endswith(".lua")]
    + [f"includes/{p.name}" for p in (LUA / "includes").iterdir() if p.name.endswith(".lua")])

# Quoted strings the scripts use that are not data layout.
REDIS_WORDS = {
    "DEL", "EXISTS", "HDEL", "HEXISTS", "HGET", "HINCRBY", "HMGET", "HSCAN", "HSET", "HSETNX", "RENAME", "TIME",
    "TYPE", "UNLINK", "XADD", "XCLAIM", "XGROUP", "XINFO", "XPENDING", "XSETID", "ZADD", "ZCARD", "ZRANGEBYSCORE",
    "ZRANK", "ZREM", "ZREMRANGEBYSCORE", "ZSCORE", "COUNT", "CREATE", "JUSTID", "LIMIT", "MKSTREAM", "STREAM",
    "BUSYGROUP", "last-generated-id", "ok", "none", "-inf", "*", "0-0",
}
NOT_LAYOUT = REDIS_WORDS | {
    "", "|", ",", ":", "\\n", "0",  # separators, an empty value, a script argument
    "number", "string", "table",  # Lua types
    "pause", "close", "recovered",  # admin.lua's actions (its ARGV)
    "anyone", "open",  # load.lua's ARGV: eligibility, admission mode (the definition's words)
    "identity|", "device|", "network|",  # BUYER_CAP_EXCEEDED's detail: the API's words
    "buyer.identity", "buyer.device", "buyer.ip",  # BUYER_SIGNAL_MISSING's detail
    "too_many_changes",  # queue_rate.lua's INVALID_STATE detail
    "clear", "undo",  # stock_settle.lua's ARGV
    "(", "[^,]+",  # an exclusive ZREMRANGEBYSCORE bound; a pattern splitting a transfer record
    "\\155\\164held", "\\158\\164held", "\\160\\0",  # reserve.lua's record heads (checked below)
}
# Declared names no script writes: Python writes them, in the module named.
WRITTEN_IN_PYTHON = {keys.Ledger.DEAD_LETTERS: ("engine/ledger/streams.py", "keys.Ledger.DEAD_LETTERS")}

# The words a script header gives its KEYS, and the hash whose fields each holds.
KEY_NAMESPACE: dict[str, type | None] = {
    "meta hash": keys.Meta, "campaign meta hash": keys.Meta, "counters hash": keys.Counters,
    "users hash": keys.Users, "buyers hash": keys.Buyers, "ledger hash": keys.Ledger,
    "the campaign's ledger hash": keys.Ledger, "rate ring hash": keys.Rate, "registrations hash": keys.Registrations,
    "queue users hash": keys.QueueUsers, "admission hash": keys.Admission,
    # hashes keyed by ids (reservation, Idempotency-Key, ticket, user), and keys that are not hashes
    "reservations": None, "reservations hash": None, "idempotency hash": None, "damaged hash": None,
    "rate limiter hash": None, "tickets hash": None, "first polls hash": None,
    "holds zset": None, "queue zset": None, "events stream": None,
    "the campaign's events stream": None, "the campaign's rate limiter hash": None, "staged counters": None,
    "staged users": None, "staged reservation records": None, "staged idempotency hash": None,
    "staged buyers hash": None,
    # the stock of a bucketed campaign (its central reserve's and each bucket's)
    "stock hash": keys.Stock, "transfers out hash": None, "transfers in zset": None,
}
# ... and the CampaignKeys property each of those words names.
KEY_PROPERTY = {
    "meta hash": "meta", "campaign meta hash": "meta", "counters hash": "counters", "users hash": "users",
    "buyers hash": "buyers", "ledger hash": "ledger", "the campaign's ledger hash": "ledger", "rate ring hash": "rate",
    "registrations hash": "registrations", "queue users hash": "queue_users", "admission hash": "admission",
    "reservations": "reservations", "reservations hash": "reservations", "idempotency hash": "idempotency",
    "damaged hash": "damaged", "rate limiter hash": "ratelimit", "the campaign's rate limiter hash": "ratelimit",
    "tickets hash": "tickets", "first polls hash": "first_polls",
    "holds zset": "holds", "queue zset": "queue", "events stream": "events",
    "the campaign's events stream": "events",
    "stock hash": "stock", "transfers out hash": "transfers_out", "transfers in zset": "transfers_in",
}
HASH_COMMANDS = ("HGET", "HMGET", "HSET", "HSETNX", "HINCRBY", "HEXISTS", "HDEL")
# writes.lua plans a batch's hash writes in tables, flushed into these hashes
PLANS = {"plan_counters": keys.Counters, "plan_users": keys.Users, "plan_signals": keys.Buyers}

QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")
KEY_DOC = re.compile(r"KEYS\[(\d+)\] ([a-z' ]+?)(?=\s{2,}|\s*\(|\s*:|\s*$)", re.MULTILINE)


def text(name: str) -> str:
    return (LUA / name).read_text(encoding="utf-8")


def code(name: str) -> str:
    """A script without its comments."""
    t = re.sub(r"--\[\[.*?\]\]", "", text(name), flags=re.DOTALL)
    return re.sub(r"--[^\n]*", "", t)


def literals(name: str) -> set[str]:
    return set(QUOTED.findall(code(name)))


def declared() -> set[str]:
    out = {v for ns in (*keys.HASH_FIELDS, keys.Flag, keys.MetaValue, keys.Damaged,
                                                 keys.EventField) for v in keys.names(ns).values()}
    return out | set(keys.STATES) | set(keys.EVENT_TYPES)


def not_layout(word: str) -> bool:
    return word in NOT_LAYOUT or word in Status.__members__ or word.startswith("ERR ") or " " in word \
        or "%" in word or word.startswith("^") or word.endswith("[")


def key_docs(name: str) -> dict[int, str]:
    """KEYS index -> the words the script's header gives it."""
    head = text(name).split("]]", 1)[0]
    return {int(i): words.strip() for i, words in KEY_DOC.findall(head)}


def arguments(call: str) -> list[str]:
    """The top-level, comma-separated arguments of a call's text (after its opening bracket)."""
    out, depth, cur = [], 0, ""
    for ch in call:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*out, cur.strip()]


def head_literal(arg: str) -> str | None:
    """The quoted string an argument starts with (``'sold|' .. pid`` -> ``sold|``), if any."""
    m = re.match(r"'((?:[^'\\]|\\.)*)'", arg)
    return m.group(1) if m else None


def hash_fields(name: str) -> list[tuple[int, str]]:
    """(KEYS index, field) of each quoted field a hash command of the script names directly."""
    out: list[tuple[int, str]] = []
    src = code(name)
    for m in re.finditer(r"rcall\('(" + "|".join(HASH_COMMANDS) + r")', KEYS\[(\d+)\],", src):
        cmd, idx = m.group(1), int(m.group(2))
        args = arguments(src[m.end():])
        if cmd in ("HSET", "HSETNX"):
            fields = args[0::2]
        elif cmd == "HINCRBY":
            fields = args[:1]
        else:
            fields = args
        out += [(idx, f) for f in (head_literal(a) for a in fields) if f is not None]
    return out


def event_fields(name: str) -> list[list[str]]:
    """The field/value list of each event the script appends (XADD, or writes.lua's ``event{}``)."""
    src = code(name)
    lists = [arguments(src[m.end():])[2:] for m in re.finditer(r"rcall\('XADD', ", src)]
    lists += [arguments(src[m.end():]) for m in re.finditer(r"\bevent\(\{", src)]
    return [a for a in lists if not (len(a) == 1 and a[0].startswith("unpack("))]


def test_the_files_are_found() -> None:
    assert {"reserve.lua", "confirm.lua", "load.lua", "includes/writes.lua", "includes/records.lua",
            "register.lua", "queue_join.lua"} <= set(LUA_FILES)


@pytest.mark.parametrize("name", LUA_FILES)
def test_every_quoted_string_of_a_script_is_declared(name: str) -> None:
    unknown = {w for w in literals(name) if w not in declared() and not not_layout(w)}
    assert unknown == set(), f"{name} uses {sorted(unknown)}: declare them in engine/keys.py (or, if they are " \
                             "not data layout, in this test's NOT_LAYOUT)"


def test_every_declared_name_is_used() -> None:
    used = set().union(*(literals(n) for n in LUA_FILES))
    unused = declared() - used
    for name, (module, reference) in WRITTEN_IN_PYTHON.items():
        assert reference in (resources.files("engine").parent / module).read_text(encoding="utf-8")
        unused.discard(name)
    assert unused == set(), f"declared in engine/keys.py, used by no script: {sorted(unused)}"
    assert NOT_LAYOUT - used == set(), "NOT_LAYOUT lists words no script uses"


@pytest.mark.parametrize("name", LUA_FILES)
def test_a_field_named_on_a_key_belongs_to_that_keys_hash(name: str) -> None:
    docs = key_docs(name)
    for idx, field in hash_fields(name):
        assert idx in docs, f"{name}: KEYS[{idx}] is not described in the header"
        assert docs[idx] in KEY_NAMESPACE, f"{name}: KEYS[{idx}] {docs[idx]!r}: which key is it?"
        ns = KEY_NAMESPACE[docs[idx]]
        assert ns is not None, f"{name}: field {field!r} on KEYS[{idx}] {docs[idx]!r}, a hash keyed by ids"
        assert field in keys.names(ns).values(), f"{name}: {field!r} on {docs[idx]}: not in keys.{ns.__name__}"
    for plan, ns in PLANS.items():
        for m in re.finditer(r"add\(" + plan + r", ", code(name)):
            field = head_literal(arguments(code(name)[m.end():])[0])
            assert field is None or field in keys.names(ns).values(), f"{name}: {field!r} in {plan}"


@pytest.mark.parametrize("name", LUA_FILES)
def test_every_described_key_is_a_key_of_the_campaign(name: str) -> None:
    for idx, words in key_docs(name).items():
        assert words in KEY_NAMESPACE, f"{name}: KEYS[{idx}] {words!r}: which key is it?"
        if words in KEY_PROPERTY:
            assert KEY_PROPERTY[words] in dir(keys.CampaignKeys)


def test_every_event_field_is_declared() -> None:
    fields = set(keys.names(keys.EventField).values())
    seen: set[str] = set()
    for name in LUA_FILES:
        for args in event_fields(name):
            names = [head_literal(a) for a in args[0::2]]
            assert None not in names and set(names) <= fields, f"{name}: an event with fields {args[0::2]}"
            assert names[0] == keys.EventField.TYPE
            assert head_literal(args[1]) in (*keys.EVENT_TYPES, None)
            seen |= set(names)  # type: ignore[arg-type]
    assert seen == fields


def test_the_parser_sees_what_it_should() -> None:
    assert (2, "held|") in hash_fields("reserve.lua") and (11, "i|") not in hash_fields("reserve.lua")
    assert (1, "persisted_orders") in hash_fields("ledger_progress.lua")
    assert key_docs("reserve.lua")[11] == "buyers hash"
    assert len(event_fields("reserve.lua")) == 2 and len(event_fields("includes/writes.lua")) == 1


# -- the record ----------------------------------------------------------------------------------


def test_the_record_layout_the_scripts_describe_is_the_declared_one() -> None:
    for name in ("reserve.lua", "includes/records.lua"):
        described = re.findall(r"\{(state, [a-z_, ]+)\}", text(name))
        assert described and all(tuple(d.split(", ")) == keys.RECORD for d in described), name
        assert tuple(re.findall(r"\{\.\.\., ([a-z_, ]+)\}", text(name))[0].split(", ")) == keys.RECORD_BUYER
    heads = re.findall(r"'\\(\d+)\\164held'", text("reserve.lua"))  # fixarray headers: 0x90 + arity
    assert sorted(int(h) - 0x90 for h in heads) == [len(keys.RECORD), len(keys.RECORD) + len(keys.RECORD_BUYER)]


def test_every_record_position_is_in_the_layout() -> None:
    n = len(keys.RECORD) + len(keys.RECORD_BUYER)
    used = {int(i) for name in LUA_FILES for i in re.findall(r"\br\[(\d+)\]", code(name))}
    assert used == set(range(1, n + 2)), "positions 1..14, and 15 (nothing more) in records.lua"
    assert keys.RECORD.index("storefront") == 7 and "r[8] ~= sf" in code("confirm.lua")


@pytest.mark.needs_services
@pytest.mark.parametrize("capped", [False, True])
async def test_python_reads_and_writes_the_record_reserve_lua_writes(engine: Engine, aredis: aioredis.Redis,
                                                                     capped: bool) -> None:
    caps = {"identity_cap_units": 5, "device_cap_units": 5, "network_cap_units": 5} if capped else {}
    await engine.load_campaign(campaign(**caps))
    buyer = Buyer(identity="person-A", device="dev-1", ip="203.0.113.7") if capped else None
    out = await engine.reserve("c1", ReserveRequest("u1", "p1", 2, "key-1", "shop", buyer))
    rid = out.reservation.reservation_id
    packed = await aredis.hget(keys.CampaignKeys("c1").reservations, rid)
    r = keys.unpack_record(packed)
    assert (r.state, r.product, r.user, r.units, r.amount, r.storefront, r.key, r.ref, r.confirmed_ms) == \
        ("held", "p1", "u1", 2, 20000, "shop", "key-1", "", 0)
    assert r.expires_ms - r.created_ms == 900_000
    assert (r.identity, r.device, r.network) == \
        (("person-A", "dev-1", "203.0.113.0/24") if capped else (None, None, None))
    assert keys.pack_record(r) == packed  # byte for byte what the script writes
    assert msgpack.unpackb(packed)[keys.RECORD.index("storefront")] == "shop"
    assert keys.record_owner(packed) == "shop"
    await engine.confirm("c1", rid, "pay-1", storefront="shop")
    c = keys.unpack_record(await aredis.hget(keys.CampaignKeys("c1").reservations, rid))
    assert (c.state, c.ref) == ("confirmed", "pay-1") and c.confirmed_ms >= c.created_ms


def test_a_record_of_another_arity_is_refused() -> None:
    with pytest.raises(ValueError, match="11 or 14"):
        keys.unpack_record(msgpack.packb(["held", "p1"]))
    assert keys.record_owner(b"\xc1") is None


# -- who reads the core's keys ---------------------------------------------------------------------

READERS = ("ledger", "ops")  # engine/<these>: read the core's keys through engine.core.reads
HASH_READ = re.compile(r"\.(hget|hmget|hgetall|hkeys|hvals|hexists)\(\s*([^,)]+)")


@pytest.mark.parametrize("part", READERS)
def test_the_ledger_and_ops_read_no_hash_field_of_their_own(part: str) -> None:
    """Their only hash reads: ``fs:archived`` (theirs) and whole hashes page by page (``scan_hash``)."""
    root = resources.files("engine") / part
    found = [(p.name, m.group(0)) for p in root.iterdir() if p.name.endswith(".py")
             for m in HASH_READ.finditer(p.read_text(encoding="utf-8")) if m.group(2).strip() != "keys.ARCHIVED"]
    assert found == [], f"read these through engine.core.reads: {found}"
    fields = {v for ns in keys.HASH_FIELDS for v in keys.names(ns).values() if len(v) > 2}
    quoted = {(p.name, w) for p in root.iterdir() if p.name.endswith(".py")
              for w in re.findall(r"\"([a-z_|]+)\"", p.read_text(encoding="utf-8"))
              if w in fields and w.endswith("|")}
    assert quoted == set(), f"field patterns written out: {quoted}"
