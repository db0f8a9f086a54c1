"""The writer's COPY text lines agree with the reference decoder (``engine.events.decode``): a line
is made only of what it reads back as the reference's row; anything else goes the slow way."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.events import MalformedEvent, decode
from engine.ledger import sink_for
from engine.ledger.config import Batch, decode_batch, merged
from engine.ledger.copytext import EventRows, encode_run, parse_line
from engine.ledger.rows import EventRow, event_row
from engine.ledger.sink import entry_key

CID = "ct-c1"
STREAM = "fs:{c:ct-c1}:events"
COMMON = [b"e", b"rid", b"pid", b"uid", b"units", b"amount", b"at"]
EXTRA = {"cancelled": [], "expired": [], "confirmed": [b"ref"], "reserved": [b"sf", b"exp", b"key"],
         "reserved-v1": [b"sf", b"exp"], "reserved-buyer": [b"sf", b"exp", b"key", b"bi", b"bd", b"bn"]}
INTS = {b"units", b"amount", b"at", b"exp"}
ODD = [b"", b" 7", b"+7", b"-3", b"1_000", b"1" * 19, b"\t", b"a\tb", b"a\nb", b"a\rb", b"a\\b", b"\\N", b"\x00",
       b"\x7f", b"\xc3\xa9", b"\xff", b"\xef\xbb\xbf1", b"\xd9\xa3"]  # ... "é", bad UTF-8, a BOM, an Arabic-Indic 3


def reference(eid: str, fields: dict[bytes, bytes]) -> EventRow | type[MalformedEvent]:
    try:
        return event_row(decode(CID, eid, fields))
    except MalformedEvent:
        return MalformedEvent


def flat(fields: dict[bytes, bytes]) -> list[bytes]:
    return [x for kv in fields.items() for x in kv]


def entry(kind: str, i: int, **odd: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    names = COMMON + EXTRA[kind]
    values = {b"e": kind.removesuffix("-v1").removesuffix("-buyer").encode(), b"rid": b"r%d" % i, b"pid": b"p-1",
              b"uid": b"u %d" % i,
              b"units": b"2", b"amount": b"020000", b"at": b"1700000000000", b"ref": b"pay-%d" % i,
              b"sf": b"shop", b"exp": b"1700000900000", b"key": b"k%d" % i,
              b"bi": b"person %d" % i, b"bd": b"", b"bn": b"203.0.113.0/24"}
    values.update({k.encode(): v for k, v in odd.items()})
    return b"1700000000000-%d" % i, {n: values[n] for n in names}


def check(items: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
    """Lines only for what the reference decodes, reading back as its rows; the rest left over."""
    ids, text, confirmed, rest = encode_run(CID, [[eid, flat(f)] for eid, f in items])
    lines = text.split(b"\n")[:-1]
    assert len(lines) == len(ids) and text == b"".join(line + b"\n" for line in lines)
    by_id = dict(items)
    for eid, line in zip(ids, lines, strict=True):
        row = parse_line(line)
        assert row == reference(eid.decode(), by_id[eid])
        assert (row[3] == "confirmed") == (eid in confirmed)
    assert sorted([eid for eid, _ in rest] + ids) == sorted(by_id)
    assert len(confirmed) == len(set(confirmed))


@pytest.mark.parametrize("kind", list(EXTRA))
def test_each_script_layout_is_one_line(kind: str) -> None:
    items = [entry(kind, i) for i in range(3)]
    ids, _, _, rest = encode_run(CID, [[eid, flat(f)] for eid, f in items])
    assert (len(ids), rest) == (3, [])
    check(items)


@pytest.mark.parametrize("value", ODD)
@pytest.mark.parametrize("name", [b"rid", b"uid", b"units", b"at", b"ref", b"sf", b"exp", b"key", b"bi", b"bn"])
def test_odd_bytes_go_the_slow_way(name: bytes, value: bytes) -> None:
    """A number that is not plain digits, a string beyond printable ASCII or with a backslash."""
    kind = {b"ref": "confirmed", b"sf": "reserved", b"exp": "reserved", b"key": "reserved", b"bi": "reserved-buyer",
            b"bn": "reserved-buyer"}.get(name, "cancelled")
    items = [entry(kind, 0), entry(kind, 1, **{name.decode(): value}), entry(kind, 2)]
    ids, _, _, rest = encode_run(CID, [[eid, flat(f)] for eid, f in items])
    plain = re.fullmatch(rb"[\x20-\x5b\x5d-\x7e]*", value) is not None  # a string as it is in COPY text
    slow = [items[1][0]] if name in INTS or not plain else []
    assert [eid for eid, _ in rest] == slow and len(ids) == 3 - len(slow)
    check(items)


def test_an_unusual_campaign_id_sends_every_entry_the_slow_way() -> None:
    ids, text, _, rest = encode_run("c\tx", [[eid, flat(f)] for eid, f in [entry("confirmed", 0)]])
    assert (ids, text, len(rest)) == ([], b"", 1)


NAMES = st.sampled_from([b"e", b"rid", b"pid", b"uid", b"units", b"amount", b"at", b"sf", b"exp", b"ref", b"key",
                         b"bi", b"bd", b"bn", b"x"])
VALUES = st.one_of(st.sampled_from([b"reserved", b"confirmed", b"cancelled", b"expired", b"12", b"0", *ODD]),
                   st.binary(max_size=6))


@given(st.lists(st.tuples(st.sampled_from(list(EXTRA)), st.dictionaries(NAMES, VALUES, max_size=3)), max_size=6))
def test_layouts_with_any_values(entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
    items = []
    for i, (kind, changes) in enumerate(entries):
        eid, fields = entry(kind, i)
        for k, v in changes.items():
            if k in fields:
                fields[k] = v
        items.append((eid, fields))
    check(items)


@given(st.lists(st.dictionaries(NAMES, VALUES, max_size=12), max_size=5))
def test_any_fields(entries: list[dict[bytes, bytes]]) -> None:
    check([(b"5-%d" % i, f) for i, f in enumerate(entries)])


def runs(*kinds: str, stream: str = STREAM, cid: str = CID, start: int = 0) -> list[tuple[str, str, list[object]]]:
    """One stream's entries; "odd": a confirmed one with a user id beyond ASCII (the slow way)."""
    items = [entry("confirmed", start + i, uid=b"\xc3\xa9") if k == "odd" else entry(k, start + i)
             for i, k in enumerate(kinds)]
    return [(stream, cid, [[eid, flat(f)] for eid, f in items])]


def aligned(batch: Batch) -> list[EventRow]:
    rows = list(batch.rows)
    assert len(rows) == len(batch.rows) == len(batch.ids) == len(batch.streams)
    for row, eid, stream in zip(rows, batch.ids, batch.streams, strict=True):
        assert entry_key(eid.decode()) == (row[1], row[2]) and stream.endswith(f"{{c:{row[0]}}}:events")
    assert batch.rows.events == {c: sum(r[0] == c for r in rows) for c in {r[0] for r in rows}}
    assert {c: sorted(ids) for c, ids in batch.rows.confirmed.items()} == {
        c: sorted(b"%d-%d" % r[1:3] for r in rows if r[0] == c and r[3] == "confirmed")
        for c in {r[0] for r in rows if r[3] == "confirmed"}}
    return rows


def test_a_batch_keeps_rows_ids_and_streams_aligned_through_merges_and_slices() -> None:
    one = decode_batch(runs("reserved", "confirmed", "odd", "cancelled")
                       + runs("reserved", "confirmed", stream="fs:{c:ct-c2}:events", cid="ct-c2", start=10))
    two = decode_batch(runs("odd", "expired", "confirmed", start=20))
    assert (one.rows.text_rows, len(one.rows.odd), two.rows.text_rows, len(two.rows.odd)) == (5, 1, 2, 1)
    assert one.rows.copy_text() is None  # an odd row: the binary COPY of rows
    rows = aligned(merged([one, two]))
    assert sorted(rows) == sorted(aligned(one) + aligned(two))
    both = merged([one, two]).rows
    for lo, hi in [(0, 9), (0, 3), (3, 8), (6, 9), (8, 9), (4, 4)]:
        part = both[lo:hi]
        assert list(part) == rows[lo:hi] and isinstance(part, EventRows)
        assert part.events == {c: sum(r[0] == c for r in rows[lo:hi]) for c in {r[0] for r in rows[lo:hi]}}
    fast = decode_batch(runs("reserved", "confirmed"))
    assert fast.rows.copy_text() == b"".join(line + b"\n" for line in fast.rows.lines())


def test_malformed_entries_are_kept_with_their_reason() -> None:
    batch = decode_batch([(STREAM, CID, [[b"1-1", [b"e", b"refunded"]], [b"1-2", flat(entry("expired", 2)[1])]])])
    assert [(e.entry_id, e.fields) for e, _ in batch.malformed] == [("1-1", [b"e", b"refunded"])]
    assert "unknown event type" in batch.malformed[0][1] and batch.ids == [b"1-2"]
    assert batch.by_stream() == {STREAM: [b"1-2", b"1-1"]} and batch.by_stream([(0, 1)]) == {STREAM: [b"1-2"]}


@pytest.mark.postgres
@pytest.mark.parametrize("odd", [False, True])
async def test_postgres_stores_the_lines_as_the_reference_rows(pg_url: str, odd: bool) -> None:
    """Text COPY (or, with an odd row, the binary COPY), then the same batch again (ON CONFLICT)."""
    batch = decode_batch(runs("reserved", "confirmed", "cancelled", "reserved-v1", "expired", "confirmed",
                              *(["odd"] if odd else [])))
    assert (batch.rows.copy_text() is None) == odd
    sink = sink_for(pg_url)
    await sink.open()
    try:
        assert await sink.write(batch.rows) == {CID: 2 + odd}
        assert await sink.write(batch.rows) == {CID: 2 + odd}  # redelivered: nothing twice
        assert await sink.write(batch.rows[2:5]) == {CID: 2 + odd}
        snap = await sink.snapshot(CID)
    finally:
        await sink.close()
    assert sorted(event_row(e) for e in snap.events) == sorted(batch.rows)
    assert {o.reservation_id for o in snap.orders} == {r[4] for r in batch.rows if r[3] == "confirmed"}
    assert snap.persisted_orders == 2 + odd


@pytest.mark.postgres
async def test_a_batch_reads_what_it_writes_not_the_whole_ledger(pg_url: str) -> None:
    """The orders statement finds a batch's confirmed events by primary key however large the
    ledger grows: with a plan that scans ``events`` per batch, the writer's database work grows
    with the sale (it did: 6 M rows read in 10 s at 4,000 orders/s, the ledger growing from empty)."""
    import asyncio

    import asyncpg

    async def seq_read(expect_inserted: int) -> int:
        for _ in range(100):  # a backend's statistics arrive when it leaves, or within a second
            stats = await conn.fetchrow("SELECT n_tup_ins, seq_tup_read FROM pg_stat_user_tables "
                                        "WHERE relname = 'events'")
            if stats["n_tup_ins"] >= expect_inserted:
                return int(stats["seq_tup_read"])
            await asyncio.sleep(0.1)
        raise AssertionError(f"statistics did not arrive: {stats}")

    async def write(batches: range) -> None:
        for b in batches:
            batch = decode_batch(runs(*(["reserved", "confirmed"] * 50), start=b * 100))
            assert batch.rows.copy_text() is not None
            assert await sink.write(batch.rows) == {CID: 50 * (b + 1)}

    sink = sink_for(pg_url)
    await sink.open()
    conn = await asyncpg.connect(pg_url)
    try:
        await write(range(0, 20))  # a sale starting on an empty ledger: plans made for a small table
        await conn.execute(  # the ledger grows (no ANALYZE yet, as between two autovacuum runs)
            "INSERT INTO events (campaign_id, entry_ms, entry_seq, type, reservation_id, product_id, user_id, "
            "units, amount, at_ms) SELECT 'other', g, 0, 'reserved', 'x' || g, 'p', 'u', 1, 1, g "
            "FROM generate_series(1, 200000) g")
        await write(range(20, 60))  # the same connections, their statements prepared on the small table
        await sink.close()
        read = await seq_read(206_000)
        assert read < 200_000, read  # not even one whole scan in 60 batches
    finally:
        await sink.close()
        await conn.close()
