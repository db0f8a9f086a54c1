"""The writer's fast decoding agrees with the reference decoder (``engine.events.decode``)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from engine import keys
from engine.core import Engine
from engine.events import MalformedEvent, decode
from engine.ledger.decoding import row_of
from engine.ledger.rows import event_row
from tests.ledger.sale import campaign, sell

CID = "dec-c1"


def reference(fields: dict[bytes, bytes]) -> object:
    try:
        return event_row(decode(CID, "1700000000000-7", fields))
    except MalformedEvent:  # not UTF-8 included: nothing else may escape the reference
        return MalformedEvent


def fast(fields: dict[bytes, bytes], flat: bool) -> object:
    given_fields: list[bytes] | dict[bytes, bytes] = [x for kv in fields.items() for x in kv] if flat else fields
    try:
        return row_of(CID, "1700000000000-7", given_fields)
    except MalformedEvent:
        return MalformedEvent


async def test_entries_the_scripts_write_decode_the_same(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(CID, hold_seconds=1))
    await sell(engine, CID, 60, confirm_every=2, cancel_every=3)
    entries = await aredis.xrange(keys.CampaignKeys(CID).events)
    assert {f[b"e"] for _, f in entries} == {b"reserved", b"confirmed", b"cancelled"}
    for eid, f in entries:
        flat = [x for kv in f.items() for x in kv]
        assert row_of(CID, eid.decode(), flat) == event_row(decode(CID, eid, f))
    keys_ = {f[b"rid"].decode(): f[b"key"].decode() for _, f in entries if f[b"e"] == b"reserved"}
    assert sorted(keys_.values()) == sorted(f"k{i}" for i in range(60))  # every reserved event carries its key
    rows = [row_of(CID, eid.decode(), [x for kv in f.items() for x in kv]) for eid, f in entries]
    assert {r[4]: r[13] for r in rows if r[3] == "reserved"} == keys_
    assert {r[13] for r in rows if r[3] != "reserved"} == {None}


NAMES = st.sampled_from([b"e", b"rid", b"pid", b"uid", b"units", b"amount", b"at", b"sf", b"exp", b"ref", b"key",
                         b"bi", b"bd", b"bn", b"x"])
VALUES = st.one_of(st.sampled_from([b"reserved", b"confirmed", b"cancelled", b"expired", b"12", b"-3", b" 7",
                                    b"", b"1.5", b"\xff"]), st.binary(max_size=6))


@given(st.dictionaries(NAMES, VALUES, min_size=0, max_size=12), st.booleans())
def test_any_entry_decodes_the_same_or_is_malformed_the_same(fields: dict[bytes, bytes], flat: bool) -> None:
    assert fast(fields, flat) == reference(fields)


@pytest.mark.parametrize("kind", ["cancelled", "confirmed", "reserved", "reserved-v1", "reserved-buyer"])
def test_the_script_layouts_take_the_positional_path(kind: str) -> None:
    e = kind.removesuffix("-v1").removesuffix("-buyer")
    common = [b"e", e.encode(), b"rid", b"r1", b"pid", b"p", b"uid", b"u", b"units", b"2", b"amount", b"20",
              b"at", b"5"]
    extra = {"cancelled": [], "confirmed": [b"ref", b"pay"], "reserved": [b"sf", b"shop", b"exp", b"9", b"key", b"k1"],
             "reserved-v1": [b"sf", b"shop", b"exp", b"9"],  # v1: written before events carried the key
             "reserved-buyer": [b"sf", b"shop", b"exp", b"9", b"key", b"k1", b"bi", b"p1", b"bd", b"",
                                b"bn", b"203.0.113.0/24"]}[kind]  # under buyer caps: the signals they counted
    row = row_of(CID, "3-4", common + extra)
    assert row[:10] == (CID, 3, 4, e, "r1", "p", "u", 2, 20, 5)
    nobody = (None, None, None)
    assert row[10:] == {"cancelled": (None, None, None, None, *nobody), "confirmed": (None, None, "pay", None, *nobody),
                        "reserved": ("shop", 9, None, "k1", *nobody), "reserved-v1": ("shop", 9, None, None, *nobody),
                        "reserved-buyer": ("shop", 9, None, "k1", "p1", "", "203.0.113.0/24")}[kind]
    assert row == event_row(decode(CID, "3-4", dict(zip(common[0::2] + extra[0::2], common[1::2] + extra[1::2],
                                                         strict=True))))


@pytest.mark.parametrize("fields", [
    {b"e": b"reserved", b"rid": b"r\xff", b"pid": b"p", b"uid": b"u", b"units": b"1", b"amount": b"1", b"at": b"1"},
    {b"e": b"reserved", b"rid": b"r", b"pid": b"p", b"uid": b"u", b"units": b"1", b"amount": b"1", b"at": b"1",
     b"key": b"\xc3("},
    {b"\xff": b"x", b"e": b"expired"},
])
def test_bytes_that_are_not_utf8_are_a_malformed_event(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(MalformedEvent, match="not UTF-8"):
        decode(CID, b"1-1", fields)
    with pytest.raises(MalformedEvent):
        row_of(CID, "1-1", [x for kv in fields.items() for x in kv])
