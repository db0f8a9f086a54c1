"""Stream entries straight to ``events`` rows: the writer decodes every entry of every batch.

``engine.events.decode`` is the reference; ``row_of`` gives the same row as
``event_row(decode(...))``, several times faster: an entry laid out as the scripts write it
(the field names in their order) is read by position, with no ``Event`` and no dict in between;
any other layout goes through a dict, and anything unusual to the reference, which raises
``MalformedEvent`` naming the problem.
"""

from __future__ import annotations

from engine.events import decode
from engine.ledger.rows import EventRow, event_row

_TYPES: dict[bytes, str] = {b"reserved": "reserved", b"confirmed": "confirmed", b"cancelled": "cancelled",
                            b"expired": "expired"}
_COMMON = [b"e", b"rid", b"pid", b"uid", b"units", b"amount", b"at"]
_LAYOUTS = {  # field names as reserve.lua, confirm.lua and release_hold.lua write them
    7: _COMMON,  # cancelled, expired
    8: [*_COMMON, b"ref"],  # confirmed
    9: [*_COMMON, b"sf", b"exp"],  # reserved, as written before it carried the Idempotency-Key
    10: [*_COMMON, b"sf", b"exp", b"key"],  # reserved
    13: [*_COMMON, b"sf", b"exp", b"key", b"bi", b"bd", b"bn"],  # reserved, under buyer caps
}


def row_of(campaign_id: str, entry_id: str, fields: list[bytes] | dict[bytes, bytes]) -> EventRow:
    """The ``events`` row of a stream entry (fields flat, as Redis sends them, or a dict)."""
    try:
        if isinstance(fields, list):
            names, v = fields[0::2], fields[1::2]
            if names == _LAYOUTS.get(len(names)):
                ms, _, seq = entry_id.partition("-")
                n = len(v)
                if n == 7:
                    return (campaign_id, int(ms), int(seq), _TYPES[v[0]], v[1].decode(), v[2].decode(),
                            v[3].decode(), int(v[4]), int(v[5]), int(v[6]), None, None, None, None, None, None,
                            None)
                if n == 8:
                    return (campaign_id, int(ms), int(seq), _TYPES[v[0]], v[1].decode(), v[2].decode(),
                            v[3].decode(), int(v[4]), int(v[5]), int(v[6]), None, None, v[7].decode(), None, None,
                            None, None)
                if n == 13:
                    return (campaign_id, int(ms), int(seq), _TYPES[v[0]], v[1].decode(), v[2].decode(),
                            v[3].decode(), int(v[4]), int(v[5]), int(v[6]), v[7].decode(), int(v[8]), None,
                            v[9].decode(), v[10].decode(), v[11].decode(), v[12].decode())
                return (campaign_id, int(ms), int(seq), _TYPES[v[0]], v[1].decode(), v[2].decode(),
                        v[3].decode(), int(v[4]), int(v[5]), int(v[6]), v[7].decode(), int(v[8]), None,
                        v[9].decode() if n == 10 else None, None, None, None)
            fields = dict(zip(names, v, strict=True))
        return _by_name(campaign_id, entry_id, fields)
    except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError):
        if isinstance(fields, list):
            fields = dict(zip(fields[0::2], fields[1::2], strict=False))
        return event_row(decode(campaign_id, entry_id, fields))  # the reference: MalformedEvent


def _by_name(campaign_id: str, entry_id: str, f: dict[bytes, bytes]) -> EventRow:
    ms, _, seq = entry_id.partition("-")
    sf, exp, ref, key = f.get(b"sf"), f.get(b"exp"), f.get(b"ref"), f.get(b"key")
    bi, bd, bn = f.get(b"bi"), f.get(b"bd"), f.get(b"bn")
    return (campaign_id, int(ms), int(seq), _TYPES[f[b"e"]], f[b"rid"].decode(), f[b"pid"].decode(),
            f[b"uid"].decode(), int(f[b"units"]), int(f[b"amount"]), int(f[b"at"]),
            None if sf is None else sf.decode(), None if exp is None else int(exp),
            None if ref is None else ref.decode(), None if key is None else key.decode(),
            None if bi is None else bi.decode(), None if bd is None else bd.decode(),
            None if bn is None else bn.decode())
