"""The load generator's own record of what it asked for and what it was granted.

The verdict judges the server against this record: every unit the record says was confirmed
must be in the stats and the ledger; every unit it released must be back in stock; no user in it
may ever have held more than a cap. Times are wall-clock ms (the server's clock is Redis ``TIME``
on the same host), latencies are ms.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# What the record knows of a grant at the end of the run.
HELD, CONFIRMED, CANCELLED, EXPIRED = "held", "confirmed", "cancelled", "expired"
CONFIRM_DOUBT, CANCEL_DOUBT = "confirm?", "cancel?"  # the call got no answer, even after retries


@dataclass(slots=True)
class Grant:
    """A reservation the server granted (201) to this generator."""

    rid: str
    key: str
    user: str
    product: str
    units: int
    amount: int
    expires_ms: int
    granted_ms: float  # when the 201 arrived (the hold began at or before this)
    state: str = HELD
    released_ms: float | None = None  # when the cancel was sent (the hold ended at or after this)
    # queue mode: the user whose admission token the reserve carried ("": none); None: open mode
    token_user: str | None = None
    # the buyer signals the reserve carried (None: not sent); network is the /24 or /48 of the ip
    identity: str | None = None
    device: str | None = None
    network: str | None = None


@dataclass(frozen=True, slots=True)
class Doubt:
    """A reserve that never got an answer, even after retries with the same Idempotency-Key."""

    key: str
    user: str
    product: str
    units: int
    sent_ms: float


@dataclass(frozen=True, slots=True)
class Replay:
    """The same reserve sent again with the same key: must return the same reservation."""

    key: str
    rid: str
    status: int
    replay_rid: str | None


@dataclass(frozen=True, slots=True)
class Probe:
    """A request that must be refused with ``expect`` (a cap probe, a reused key)."""

    name: str
    user: str
    status: int
    code: str | None
    expect: str


@dataclass(slots=True)
class TicketSeen:
    """A waiting-room ticket as the generator saw it (one per ticket, however many accounts poll it)."""

    ticket: str
    user: str  # the account that took it (its join was answered 201)
    joined_ms: float  # when the 201 arrived
    pre_queue: bool  # taken before the opening (by this clock)
    position: int | None = None  # the first position polled
    state: str = "waiting"  # the last state polled
    admitted_ms: float | None = None  # when it was first polled admitted
    admitted_at_ms: int | None = None  # the instant its position was admitted, as the poll said
    token_expires_ms: int | None = None  # the admission token's expiry, as the poll said
    moved: bool = False  # a later poll showed another position (positions are fixed at the opening)


@dataclass(frozen=True, slots=True)
class BadResult:
    name: str
    user: str
    status: int
    code: str | None
    allowed: tuple[int, ...]


@dataclass(slots=True, repr=False)  # a repr of 10^5 grants would stall whoever logs it
class Record:
    campaign_id: str
    user_prefix: str
    started_ms: float = 0.0
    opens_ms: float = 0.0
    sold_out_ms: float | None = None
    ended_ms: float = 0.0
    buyers: int = 0
    baseline: dict[str, Any] | None = None  # the campaign's stats before the run
    grants: list[Grant] = field(default_factory=list)
    doubts: list[Doubt] = field(default_factory=list)
    replays: list[Replay] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    bad: list[BadResult] = field(default_factory=list)
    queued: bool = False  # the campaign was in queue mode: every reserve needed an admission token
    tickets: dict[str, TicketSeen] = field(default_factory=dict)  # ticket id -> what was seen of it
    people: int = 0  # ordinary buyers who came (each their own identity, device and network)
    scalpers: int = 0  # scalper accounts that fired (user ids "<prefix>s<operator>-<account>")
    notes: list[str] = field(default_factory=list)  # what the generator had to adapt to
    arrivals: dict[str, float] = field(default_factory=dict)  # with --arrive: person -> when they came
    requests: Counter[str] = field(default_factory=Counter)  # "reserve 201", "confirm 503" ...
    rejections: Counter[str] = field(default_factory=Counter)  # reserve refusals by error code
    server_errors: list[str] = field(default_factory=list)  # 5xx other than 503, with the body
    latencies: dict[str, list[float]] = field(default_factory=dict)  # op -> ms

    def count(self, op: str, status: int | str) -> None:
        self.requests[f"{op} {status}"] += 1

    def latency(self, op: str, ms: float) -> None:
        lst = self.latencies.get(op)
        if lst is None:
            lst = self.latencies[op] = []
        lst.append(ms)

    def attempts(self, op: str | None = None) -> int:
        return sum(n for k, n in self.requests.items() if op is None or k.split(" ", 1)[0] == op)

    def units_in(self, *states: str) -> int:
        return sum(g.units for g in self.grants if g.state in states)

    def operator_of(self, uid: str) -> int | None:
        """The scalper operator behind an account (``<prefix>s<operator>-<account>``); None for a person."""
        rest = uid[len(self.user_prefix):] if uid.startswith(self.user_prefix) else ""
        head, sep, _ = rest.partition("-")
        return int(head[1:]) if sep and head[:1] == "s" and head[1:].isdigit() else None

    # -- persistence (``flashsale loadgen --record-out`` / ``--judge``) --------------------------

    def to_json(self) -> bytes:
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("grants", "doubts", "replays", "probes", "bad"):
            data[name] = [dataclasses.astuple(x) for x in data[name]]
        data["tickets"] = [dataclasses.astuple(x) for x in self.tickets.values()]
        data["requests"] = dict(self.requests)
        data["rejections"] = dict(self.rejections)
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        d = orjson.loads(raw)
        rec = cls(d["campaign_id"], d["user_prefix"])
        for name in ("started_ms", "opens_ms", "sold_out_ms", "ended_ms", "buyers", "baseline", "server_errors",
                     "latencies"):
            setattr(rec, name, d[name])
        rec.grants = [Grant(*x) for x in d["grants"]]
        rec.doubts = [Doubt(*x) for x in d["doubts"]]
        rec.replays = [Replay(*x) for x in d["replays"]]
        rec.probes = [Probe(*x) for x in d["probes"]]
        rec.bad = [BadResult(x[0], x[1], x[2], x[3], tuple(x[4])) for x in d["bad"]]
        for name in ("queued", "people", "scalpers", "notes", "arrivals"):
            if name in d:
                setattr(rec, name, d[name])
        rec.tickets = {x[0]: TicketSeen(*x) for x in d.get("tickets", [])}
        rec.requests = Counter(d["requests"])
        rec.rejections = Counter(d["rejections"])
        return rec

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Record:
        return cls.from_json(Path(path).read_bytes())
