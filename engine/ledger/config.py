"""The writer's settings and figures, and the small pieces of its loop: batches, backoff."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field

from engine.events import MalformedEvent
from engine.ledger.decoding import row_of
from engine.ledger.rows import EventRow
from engine.ledger.streams import Entry

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
    """Entries delivered to this writer and not yet acknowledged, decoded."""

    entries: list[Entry]
    rows: list[tuple[Entry, EventRow]]
    malformed: list[tuple[Entry, str]]


def decode_batch(entries: list[Entry]) -> Batch:
    rows: list[tuple[Entry, EventRow]] = []
    malformed: list[tuple[Entry, str]] = []
    for entry in entries:
        try:
            rows.append((entry, row_of(entry.campaign_id, entry.entry_id, entry.fields)))
        except MalformedEvent as exc:
            malformed.append((entry, str(exc)))
    return Batch(entries, rows, malformed)
