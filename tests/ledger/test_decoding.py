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
    except (MalformedEvent, UnicodeDecodeError):  # the writer dead-letters both alike
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


NAMES = st.sampled_from([b"e", b"rid", b"pid", b"uid", b"units", b"amount", b"at", b"sf", b"exp", b"ref", b"x"])
VALUES = st.one_of(st.sampled_from([b"reserved", b"confirmed", b"cancelled", b"expired", b"12", b"-3", b" 7",
                                    b"", b"1.5", b"\xff"]), st.binary(max_size=6))


@given(st.dictionaries(NAMES, VALUES, min_size=0, max_size=11), st.booleans())
def test_any_entry_decodes_the_same_or_is_malformed_the_same(fields: dict[bytes, bytes], flat: bool) -> None:
    assert fast(fields, flat) == reference(fields)


@pytest.mark.parametrize("kind", ["cancelled", "confirmed", "reserved"])
def test_the_script_layouts_take_the_positional_path(kind: str) -> None:
    common = [b"e", kind.encode(), b"rid", b"r1", b"pid", b"p", b"uid", b"u", b"units", b"2", b"amount", b"20",
              b"at", b"5"]
    extra = {"cancelled": [], "confirmed": [b"ref", b"pay"], "reserved": [b"sf", b"shop", b"exp", b"9"]}[kind]
    row = row_of(CID, "3-4", common + extra)
    assert row[:10] == (CID, 3, 4, kind, "r1", "p", "u", 2, 20, 5)
    assert row[10:] == {"cancelled": (None, None, None), "confirmed": (None, None, "pay"),
                        "reserved": ("shop", 9, None)}[kind]
