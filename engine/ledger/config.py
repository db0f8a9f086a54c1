"""The writer's settings and figures, and the small pieces of its loop: batches, backoff."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from engine.events import MalformedEvent
from engine.ledger.copytext import EventRows, count_rows, encode_run
from engine.ledger.decoding import row_of
from engine.ledger.rows import EventRow
from engine.ledger.streams import Entry, Run

X = TypeVar("X")
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
READ_AHEAD = 2  # batches read while the one before commits
ACKS_AHEAD = 2  # committed batches whose acknowledgement may still be on its way


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WriterSettings:
    consumer: str = field(default_factory=default_consumer)
    batch_size: int = 500  # entries read per stream per call
    block_ms: int = 1000  # how long a read waits for new entries
    # after a read short of a full batch, wait this long before the next: under a steady stream
    # a commit (and its fsync) then carries what arrived meanwhile, instead of a commit per trickle
    linger_ms: int = 20
    claim_idle_ms: int = 5000  # an entry unacknowledged this long is claimed by another writer
    max_deliveries: int = 5  # then it is dead-lettered
    refresh_s: float = 2.0  # how often the list of campaigns is re-read
    trim_interval_s: float = 5.0
    heartbeat_s: float = 1.0  # liveness key, and idle-time refresh of the batch in flight
    burst: bool = False  # drain everything, then return


@dataclass(slots=True)
class WriterStats:
    batches: int = 0
    events: int = 0  # events committed (first time or again)
    dead_letters: int = 0
    db_retries: int = 0
    trimmed: int = 0
    persisted: dict[str, int] = field(default_factory=dict)  # campaign -> persisted_orders


class Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_MIN_S

    def next(self) -> float:
        d = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)
        return d


@dataclass(slots=True)
class Batch:
    """Entries delivered to this writer and not yet acknowledged, decoded: ``rows[i]`` came from
    entry ``ids[i]`` of stream ``streams[i]``; ``malformed``: those that are no event at all."""

    streams: list[str]
    ids: list[bytes]
    rows: EventRows
    malformed: list[tuple[Entry, str]]

    def by_stream(self, spans: Sequence[tuple[int, int]] | None = None) -> dict[str, list[bytes]]:
        """stream -> ids, of the rows in ``spans`` (index ranges; None: every row and the malformed)."""
        out: dict[str, list[bytes]] = {}
        for lo, hi in [(0, len(self.ids))] if spans is None else spans:
            streams = self.streams[lo:hi]
            if streams and streams[0] == streams[-1] and streams.count(streams[0]) == len(streams):
                out.setdefault(streams[0], []).extend(self.ids[lo:hi])  # one stream: the usual case
                continue
            for stream, eid in zip(streams, self.ids[lo:hi], strict=True):
                out.setdefault(stream, []).append(eid)
        if spans is None:
            for e, _ in self.malformed:
                out.setdefault(e.stream, []).append(e.entry_id.encode())
        return out


def merged(group: Sequence[Batch]) -> Batch:
    """One batch of several; the rows kept as text first, then the others (``EventRows``' order)."""
    cuts = [b.rows.text_rows for b in group]

    def text_first(parts: list[list[X]]) -> list[X]:  # each batch's text rows, then each one's others
        pairs = list(zip(parts, cuts, strict=True))
        return [x for xs, n in pairs for x in xs[:n]] + [x for xs, n in pairs for x in xs[n:]]

    return Batch(text_first([b.streams for b in group]), text_first([b.ids for b in group]),
                 EventRows.joined([b.rows for b in group]), [m for b in group for m in b.malformed])


def decode_batch(runs: Sequence[Run]) -> Batch:
    streams: list[str] = []
    ids: list[bytes] = []
    text: list[bytes] = []
    events: dict[str, int] = {}
    confirmed: dict[str, list[bytes]] = {}
    odd: list[tuple[str, bytes, EventRow]] = []
    malformed: list[tuple[Entry, str]] = []
    for stream, cid, items in runs:
        done, lines, conf, rest = encode_run(cid, items)
        if done:
            text.append(lines)
            ids += done
            streams += [stream] * len(done)
            events[cid] = events.get(cid, 0) + len(done)
            if conf:
                confirmed.setdefault(cid, []).extend(conf)
        for eid, fields in rest:  # the slow way: a row, or the reason it is none
            entry = Entry(stream, cid, eid.decode() if isinstance(eid, bytes) else str(eid), fields)
            try:
                row = row_of(cid, entry.entry_id, fields)
            except MalformedEvent as exc:
                malformed.append((entry, str(exc)))
                continue
            odd.append((stream, entry.entry_id.encode(), row))
    odd_rows = [r for _, _, r in odd]
    count_rows(odd_rows, events, confirmed)
    rows = EventRows(text, len(ids), odd_rows, events, confirmed)
    return Batch(streams + [s for s, _, _ in odd], ids + [i for _, i, _ in odd], rows, malformed)
