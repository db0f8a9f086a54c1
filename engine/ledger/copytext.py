"""Stream entries straight to lines of PostgreSQL's ``COPY`` text format: the writer's hot path.

An entry laid out as the scripts write it (``decoding``'s layouts) becomes one line by joining
its values as Redis sent them, with no ``int()``, no ``decode()`` and no binary encoding::

    confirmed<TAB>r1<TAB>p3<TAB>u9<TAB>2<TAB>20000<TAB>1700000000001<TAB>\\N<TAB>\\N<TAB>\\N<TAB>\\N<TAB>\\N<TAB>\\N<TAB>pay-9<TAB>1700000000001<TAB>0<TAB>c1

(the columns of ``COPY_COLUMNS``). Every line of a run is then checked by one regular expression
(``_TEXT``) that accepts only what needs no escaping in that format and reads as the very row the
reference decoding gives: strings of printable ASCII without a backslash, whole numbers of at
most 18 digits, a known event type, ``\\N`` only where the layout has no value (and no backslash
but those: a value ``\\N`` would read as NULL). An entry that is laid out otherwise, or whose
line fails the check (UTF-8 beyond ASCII, a tab, a sign, …), is decoded the slow way
(``decoding.row_of``: a row, or ``MalformedEvent``); a batch holding any such row is written by
the binary ``COPY`` of rows, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, overload

from engine.events import MalformedEvent
from engine.ledger.decoding import row_of
from engine.ledger.rows import EventRow

COPY_COLUMNS = ("type", "reservation_id", "product_id", "user_id", "units", "amount", "at_ms", "storefront",
                "expires_at_ms", "idempotency_key", "buyer_identity", "buyer_device", "buyer_network", "payment_ref",
                "entry_ms", "entry_seq", "campaign_id")

_N = b"\\N"
_COMMON = [b"e", b"rid", b"pid", b"uid", b"units", b"amount", b"at"]
# len(fields) -> (field names, what follows the values: the \N of the absent columns (None:
# confirmed, whose ref comes after three of them), how many \N the line has)
_LAYOUTS: dict[int, tuple[list[bytes], bytes | None, int]] = {
    14: (_COMMON, b"\t".join([_N] * 7), 7),  # cancelled, expired
    16: ([*_COMMON, b"ref"], None, 6),  # confirmed
    18: ([*_COMMON, b"sf", b"exp"], b"\t".join([_N] * 5), 5),  # reserved, before it carried the key
    20: ([*_COMMON, b"sf", b"exp", b"key"], b"\t".join([_N] * 4), 4),  # reserved
    26: ([*_COMMON, b"sf", b"exp", b"key", b"bi", b"bd", b"bn"], _N, 1),  # reserved, under buyer caps
}
_BEFORE_REF = b"\t".join([_N] * 6)

_S = rb"[\x20-\x5b\x5d-\x7e]*+"  # printable ASCII, no backslash: the same str decoded, nothing to escape
_I = rb"[0-9]{1,18}+"  # int() of it is the number PostgreSQL reads, well inside int8
_LINE = (rb"(?:reserved|confirmed|cancelled|expired)\t" + rb"\t".join([_S] * 3 + [_I] * 3) + rb"\t"
         # storefront, expires_at_ms, idempotency_key, the three buyer signals, payment_ref of each
         # layout: \N never where a value is
         + rb"(?:(?:\\N\t){6}(?:\\N|" + _S + rb")|" + _S + rb"\t" + _I + rb"\t(?:\\N|" + _S
         + rb")\t(?:\\N\t\\N\t\\N|" + _S + rb"\t" + _S + rb"\t" + _S + rb")\t\\N)"
         + rb"\t" + _I + rb"\t" + _I + rb"\t" + _S + rb"\n")
_TEXT = re.compile(rb"(?:" + _LINE + rb")*+")
_ONE = re.compile(_LINE)

Item = Any  # one entry as Redis sent it: [entry id (bytes), [name, value, name, value, …]]


def encode_run(campaign_id: str, items: list[Item]) -> tuple[list[bytes], bytes, list[bytes], list[Item]]:
    """The entries of one stream: (ids of those encoded, their lines, ids of the confirmed among
    them, the items left for the slow path), each list in stream order."""
    cid = campaign_id.encode()
    ids: list[bytes] = []
    lines: list[bytes] = []
    confirmed: list[bytes] = []
    odd: list[Item] = []
    line, layouts, join = lines.append, _LAYOUTS.get, b"\t".join
    marks = 0  # the \N put in: a value of "\N" would read as NULL, so no value may hold a backslash
    for item in items:
        eid, f = item
        layout = layouts(len(f))
        if layout is None or f[0::2] != layout[0] or not isinstance(eid, bytes):
            odd.append(item)
            continue
        v = f[1::2]
        if layout[1] is None:
            v.insert(7, _BEFORE_REF)
        else:
            v.append(layout[1])
        v.append(eid.replace(b"-", b"\t"))
        v.append(cid)
        line(join(v))
        marks += layout[2]
        ids.append(eid)
        if v[0] == b"confirmed":
            confirmed.append(eid)
    if not lines:
        return ids, b"", confirmed, odd
    lines.append(b"")
    text = b"\n".join(lines)
    if text.count(b"\\") == marks and _TEXT.fullmatch(text):
        return ids, text, confirmed, odd
    lines.pop()
    return _sifted(campaign_id, items, ids, lines, confirmed, odd)


def _sifted(campaign_id: str, items: list[Item], ids: list[bytes], lines: list[bytes], confirmed: list[bytes],
            odd: list[Item]) -> tuple[list[bytes], bytes, list[bytes], list[Item]]:
    """Some line failed the check: keep the lines that pass it alone and read back as the row the
    slow way gives; the others' entries go the slow way."""
    fields = {item[0]: item[1] for item in items}
    keep = [i for i, line in enumerate(lines)
            if _ONE.fullmatch(line + b"\n") and _same(campaign_id, ids[i], fields[ids[i]], line)]
    failed = set(ids) - {ids[i] for i in keep}
    slow = [item for item in items if isinstance(item[0], bytes) and item[0] in failed]
    return ([ids[i] for i in keep], b"".join(lines[i] + b"\n" for i in keep),
            [c for c in confirmed if c not in failed], odd + slow)


def _same(campaign_id: str, eid: bytes, fields: list[bytes], line: bytes) -> bool:
    """The line, which passes ``_ONE`` (so holds a backslash only in a ``\\N``, read as NULL by
    PostgreSQL as by ``parse_line``), stands for the row the slow way gives."""
    try:
        return parse_line(line) == row_of(campaign_id, eid.decode(), fields)
    except MalformedEvent:
        return False


def parse_line(line: bytes) -> EventRow:
    """The row a line (no newline) of ``encode_run`` stands for, as PostgreSQL reads it."""
    f = line.split(b"\t")
    sf, exp, key, bi, bd, bn, ref = f[7:14]
    return (f[16].decode(), int(f[14]), int(f[15]), f[0].decode(), f[1].decode(), f[2].decode(), f[3].decode(),
            int(f[4]), int(f[5]), int(f[6]), None if sf == _N else sf.decode(), None if exp == _N else int(exp),
            None if ref == _N else ref.decode(), None if key == _N else key.decode(),
            None if bi == _N else bi.decode(), None if bd == _N else bd.decode(), None if bn == _N else bn.decode())


def count_rows(rows: Sequence[EventRow], events: dict[str, int], confirmed: dict[str, list[bytes]]) -> None:
    """Add decoded rows to a batch's figures: campaign -> rows, campaign -> confirmed entry ids."""
    for r in rows:
        events[r[0]] = events.get(r[0], 0) + 1
        if r[3] == "confirmed":
            confirmed.setdefault(r[0], []).append(b"%d-%d" % (r[1], r[2]))


class EventRows(Sequence[EventRow]):
    """A batch's rows: first those held as ``COPY`` text lines (decoded only if asked), then
    ``odd``, decoded the slow way. ``events``: campaign -> rows; ``confirmed``: campaign -> entry
    ids of its confirmed events."""

    __slots__ = ("_lines", "_text", "confirmed", "events", "odd", "text_rows")

    def __init__(self, text: list[bytes], text_rows: int, odd: list[EventRow], events: dict[str, int],
                 confirmed: dict[str, list[bytes]]) -> None:
        self._text = text  # chunks of whole lines
        self.text_rows = text_rows
        self.odd = odd
        self.events = events
        self.confirmed = confirmed
        self._lines: list[bytes] | None = None

    @classmethod
    def of_lines(cls, lines: list[bytes], odd: list[EventRow]) -> EventRows:
        events: dict[str, int] = {}
        confirmed: dict[str, list[bytes]] = {}
        for line in lines:
            f = line.split(b"\t")
            cid = f[16].decode()
            events[cid] = events.get(cid, 0) + 1
            if f[0] == b"confirmed":
                confirmed.setdefault(cid, []).append(f[14] + b"-" + f[15])
        count_rows(odd, events, confirmed)
        rows = cls([b"".join(line + b"\n" for line in lines)] if lines else [], len(lines), odd, events, confirmed)
        rows._lines = lines
        return rows

    @classmethod
    def joined(cls, parts: Sequence[EventRows]) -> EventRows:
        events: dict[str, int] = {}
        confirmed: dict[str, list[bytes]] = {}
        for p in parts:
            for cid, n in p.events.items():
                events[cid] = events.get(cid, 0) + n
            for cid, ids in p.confirmed.items():
                confirmed.setdefault(cid, []).extend(ids)
        return cls([t for p in parts for t in p._text], sum(p.text_rows for p in parts),
                   [r for p in parts for r in p.odd], events, confirmed)

    def copy_text(self) -> bytes | None:
        """Every row as ``COPY`` text, or None if some row was decoded the slow way."""
        return None if self.odd else b"".join(self._text)

    def lines(self) -> list[bytes]:
        if self._lines is None:
            self._lines = [line for t in self._text for line in t.split(b"\n")[:-1]]
        return self._lines

    def __len__(self) -> int:
        return self.text_rows + len(self.odd)

    @overload
    def __getitem__(self, i: int) -> EventRow: ...

    @overload
    def __getitem__(self, i: slice) -> EventRows: ...

    def __getitem__(self, i: int | slice) -> EventRow | EventRows:
        n = self.text_rows
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("EventRows slices take no step")
            return EventRows.of_lines(self.lines()[lo:hi], self.odd[max(lo - n, 0):max(hi - n, 0)])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return parse_line(self.lines()[i]) if i < n else self.odd[i - n]

    def __iter__(self) -> Iterator[EventRow]:
        yield from map(parse_line, self.lines())
        yield from self.odd
