"""One simulated buyer's visit: reserve, maybe replay or probe, then pay, cancel or walk away.

In queue mode the visit starts in the waiting room: join (``POST …/queue`` with the buyer
signals), poll as told (``poll_after_ms``, never longer than ``Shelf.poll_cap_s`` at a time) until
admitted, then reserve with the ``Admission-Token`` header. A few buyers first try without their
token, or with someone else's (both must be refused); an account whose join was answered with
another account's ticket (one ticket per identity under an identity cap) tries that ticket's
token, as a scalper would.

Everything the server grants goes into the record the moment it is granted, with what the buyer
then did to it (and which token and signals the reserve carried), so the verdict can account for
every unit.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from engine.loadgen.behaviour import Mix, bad_requests
from engine.loadgen.calls import Caller, now_ms
from engine.loadgen.crowd import Signals
from engine.loadgen.http import Requester, Response
from engine.loadgen.record import (
    CANCEL_DOUBT,
    CANCELLED,
    CONFIRM_DOUBT,
    CONFIRMED,
    EXPIRED,
    BadResult,
    Doubt,
    Grant,
    Probe,
    Replay,
    TicketSeen,
)

DEFAULT_CAP = 10  # units a buyer asks for at most when the campaign sets no cap
NOT_OPEN_POLL_S = (0.3, 0.6)  # an eager buyer refreshes this often before the opening


@dataclass(slots=True)
class Shelf:
    """The products, their caps, and which the generator believes are still in stock."""

    definition: dict[str, Any]
    caps: dict[str, int] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    out: set[str] = field(default_factory=set)
    sold_out_ms: float | None = None
    poll_cap_s: float = 5.0  # queue mode: the longest a buyer waits between two polls
    send_signals: bool = True  # buyer signals on the reserve (off once the server refuses the field)
    ticket_owner: dict[str, str] = field(default_factory=dict)  # ticket -> the account that took it (201)
    last_token: tuple[str, str] | None = None  # (user, token) of the latest admission: for the probes

    @property
    def queued(self) -> bool:
        adm = self.definition.get("admission")
        return isinstance(adm, dict) and adm.get("mode") == "queue"

    def __post_init__(self) -> None:
        ccap = self.definition.get("user_cap_units")
        for p in self.definition["products"]:
            caps = [c for c in (p.get("user_cap_units"), ccap) if c is not None]
            self.caps[p["id"]] = min(caps) if caps else DEFAULT_CAP
            self.weights[p["id"]] = int(p["total_units"])

    def pick(self, rng: random.Random) -> str:
        """A product in stock, by stock; once everything is out, any product (the crowd still comes)."""
        live = [pid for pid in self.weights if pid not in self.out]
        if not live:
            return rng.choice(list(self.weights))
        return rng.choices(live, [max(self.weights[p], 1) for p in live])[0]

    def all_out(self) -> bool:
        return len(self.out) == len(self.weights)

    def mark_out(self, pid: str) -> None:
        self.out.add(pid)
        if len(self.out) == len(self.weights) and self.sold_out_ms is None:
            self.sold_out_ms = now_ms()

    def restock(self, remaining: dict[str, int]) -> None:
        """From the stats: units come back when holds are cancelled or expire."""
        for pid, left in remaining.items():
            if pid in self.weights:
                self.weights[pid] = left
                if left > 0:
                    self.out.discard(pid)
                else:
                    self.out.add(pid)


def _saw(seen: TicketSeen, d: dict[str, Any]) -> None:
    """What one poll (or the join) showed of a ticket."""
    pos = d.get("position")
    if isinstance(pos, int):
        if seen.position is None:
            seen.position = pos
        elif pos != seen.position:
            seen.moved = True
    seen.state = str(d["state"])
    if seen.state == "admitted" and seen.admitted_ms is None:
        seen.admitted_ms = now_ms()
        seen.token_expires_ms = _ms(str(d["token_expires_at"]))
        seen.admitted_at_ms = _ms(str(d["admitted_at"])) if d.get("admitted_at") else None


def _ms(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


class Buyer:
    """A storefront session for one virtual user: one keep-alive connection, many buyers in turn."""

    def __init__(self, caller: Caller, shelf: Shelf, mix: Mix, conn: Requester, rng: random.Random,
                 bad_conns: tuple[Requester, Requester]) -> None:
        self.c = caller
        self.shelf = shelf
        self.mix = mix
        self.conn = conn
        self.rng = rng
        self.bad_conns = bad_conns  # (no token, wrong token)
        self.signals: Signals | None = None  # this visit's buyer signals
        self.token: str | None = None  # this visit's admission token (queue mode)
        self.token_user: str | None = None  # whose token it is ("": none; None: open mode)

    async def visit(self, uid: str, signals: Signals | None = None) -> None:
        self.signals, self.token, self.token_user = signals, None, None
        if self.rng.random() < self.mix.bad:
            await self.bad(uid)
            return
        if self.shelf.queued:
            admitted = await self.wait_in_queue(uid)
            if admitted is None:
                return
            self.token, self.token_user = admitted
            if self.token_user != uid:  # another account's ticket (one per identity): a scalper tries it
                await self.token_probe("another account's token", uid, "ADMISSION_INVALID")
                return
            other = self.shelf.last_token
            self.shelf.last_token = (uid, self.token)
            if self.rng.random() < self.mix.token_probe:
                await self.token_probe("no admission token", uid, "ADMISSION_REQUIRED", token=("", None))
            if other is not None and other[0] != uid and self.rng.random() < self.mix.token_probe:
                await self.token_probe("another user's token", uid, "ADMISSION_INVALID", token=other)
        grant = await self.reserve_any(uid)
        if grant is None:
            return
        mine = [grant]
        if self.rng.random() < self.mix.replay:
            await self.replay(grant)
        if self.rng.random() < self.mix.key_reuse:
            await self.key_reuse(grant, mine)
        if self.rng.random() < self.mix.cap_probe:
            await self.cap_probe(uid, grant, mine)
        fate = self.mix.fate(self.rng)
        if fate == "confirm":
            await self.confirm(grant)
        elif fate == "cancel":
            await self.cancel(grant)

    # -- the waiting room ----------------------------------------------------------------------

    async def wait_in_queue(self, uid: str) -> tuple[str, str] | None:
        """Join and poll as told until admitted: (the token, the account whose ticket it is); None
        when the ticket ends sold out or expired, or the run stops first."""
        body: dict[str, Any] = {"user_id": uid}
        if self.signals is not None:
            body["buyer"] = self.signals.body()
        while True:
            resp = await self.c.call(self.conn, "join", b"POST", self.c.base + "/queue", orjson.dumps(body))
            if resp is None:
                return None
            if resp.status in (200, 201):
                break
            code = resp.error_code()
            self.c.record.rejections[f"join {code}"] += 1
            if code != "QUEUE_NOT_OPEN" or self.c.stopping:
                return None
            await asyncio.sleep(self.rng.uniform(*NOT_OPEN_POLL_S))
        d = resp.json()
        tid = str(d["ticket"])
        if resp.status == 201:
            self.shelf.ticket_owner[tid] = uid
        rec = self.c.record
        seen = rec.tickets.get(tid)
        if seen is None:
            t = now_ms()
            seen = rec.tickets[tid] = TicketSeen(tid, self.shelf.ticket_owner.get(tid, "?"), t, t < rec.opens_ms)
        while True:
            _saw(seen, d)
            state = d["state"]
            if state == "admitted":
                return str(d["admission_token"]), self.shelf.ticket_owner.get(tid, "?")
            if state in ("sold_out", "expired") or self.c.stopping:
                return None
            await asyncio.sleep(min(max(int(d.get("poll_after_ms") or 0), 0) / 1000.0, self.shelf.poll_cap_s))
            resp = await self.c.call(self.conn, "poll", b"GET", f"{self.c.base}/queue/{tid}", None)
            if resp is None or resp.status != 200:
                return None
            d = resp.json()

    async def token_probe(self, name: str, uid: str, expect: str,
                          token: tuple[str, str | None] | None = None) -> None:
        """A reserve with no token or another's, which must be refused with ``expect``."""
        pid = self.shelf.pick(self.rng)
        mine = self.token, self.token_user
        if token is not None:
            self.token_user, self.token = token
        try:
            await self._probe(name, uid, f"{uid}-tok{len(name)}", pid, 1, expect, [])
        finally:
            self.token, self.token_user = mine

    # -- reserve -----------------------------------------------------------------------------

    def _body(self, uid: str, pid: str, units: int) -> bytes:
        d: dict[str, Any] = {"user_id": uid, "product_id": pid, "units": units}
        if self.signals is not None and self.shelf.send_signals:
            d["buyer"] = self.signals.body()
        return orjson.dumps(d)

    async def _reserve(self, key: str, body: bytes) -> Response | None:
        headers = f"Idempotency-Key: {key}\r\n".encode()
        if self.token:
            headers += f"Admission-Token: {self.token}\r\n".encode()
        while True:
            resp = await self.c.call(self.conn, "reserve", b"POST", self.c.base + "/reservations", body, headers)
            if resp is None:
                return None
            if resp.status == 422 and resp.details().get("field") == "buyer" and b'"buyer"' in body:
                # a server before v1.1's buyer caps: send without (and so does every buyer from now on)
                if self.shelf.send_signals:
                    self.shelf.send_signals = False
                    self.c.record.notes.append("the server refused buyer signals on reserve (422 buyer): "
                                               "sent without, buyer caps not judged")
                d = orjson.loads(body)
                d.pop("buyer", None)
                body = orjson.dumps(d)
                continue
            code = resp.error_code() if resp.status >= 400 else None
            if code is not None:
                self.c.record.rejections[code] += 1
            if code != "NOT_OPEN" or self.c.stopping:
                return resp
            await asyncio.sleep(self.rng.uniform(*NOT_OPEN_POLL_S))

    def _grant(self, resp: Response, key: str, fallback_units: int) -> Grant:
        d = resp.json()
        sig = self.signals if self.shelf.send_signals else None
        g = Grant(rid=d["reservation_id"], key=key, user=d["user_id"], product=d["product_id"],
                  units=int(d.get("units", fallback_units)), amount=int(d["amount"]),
                  expires_ms=_ms(d["expires_at"]), granted_ms=now_ms(),
                  token_user=None if not self.shelf.queued else (self.token_user or "") if self.token else "",
                  identity=sig.identity if sig else None, device=sig.device if sig else None,
                  network=sig.network if sig else None)
        self.c.record.grants.append(g)
        return g

    async def reserve_any(self, uid: str) -> Grant | None:
        pid = self.shelf.pick(self.rng)
        units = self.mix.units(self.rng, self.shelf.caps[pid])
        for attempt in range(4):
            key = f"{uid}-{attempt}"
            sent = now_ms()
            resp = await self._reserve(key, self._body(uid, pid, units))
            if resp is None:
                self.c.record.doubts.append(Doubt(key, uid, pid, units, sent))
                return None
            if resp.status in (200, 201):
                return self._grant(resp, key, units)
            code = resp.error_code()
            if code == "SOLD_OUT":
                self.shelf.mark_out(pid)
            elif code == "INSUFFICIENT_STOCK" and int(resp.details().get("remaining", 0)) > 0:
                units = int(resp.details()["remaining"])
                continue
            elif code == "USER_CAP_EXCEEDED" and int(resp.details().get("allowed", 0)) > 0:
                units = int(resp.details()["allowed"])
                continue
            else:
                return None
            if self.shelf.all_out():
                return None
            nxt = self.shelf.pick(self.rng)
            pid, units = nxt, min(units, self.shelf.caps[nxt])
        return None

    async def replay(self, g: Grant) -> None:
        resp = await self._reserve(g.key, self._body(g.user, g.product, g.units))
        if resp is None:
            return
        d = resp.json() if resp.status < 400 else None
        rid = d.get("reservation_id") if isinstance(d, dict) else None
        self.c.record.replays.append(Replay(g.key, g.rid, resp.status, rid))
        if resp.status == 201 and rid and rid != g.rid:  # a second reservation: account for it
            self._grant(resp, g.key + "#replay", g.units)

    async def key_reuse(self, g: Grant, mine: list[Grant]) -> None:
        units = g.units + 1 if g.units < self.shelf.caps[g.product] else g.units - 1
        if units < 1:
            return
        await self._probe("key reused", g.user, g.key, g.product, units, "IDEMPOTENCY_KEY_REUSED", mine)

    async def cap_probe(self, uid: str, g: Grant, mine: list[Grant]) -> None:
        held = sum(x.units for x in mine if x.product == g.product)
        units = self.shelf.caps[g.product] - held + 1
        await self._probe("over cap", uid, f"{uid}-cap", g.product, units, "USER_CAP_EXCEEDED", mine)

    async def _probe(self, name: str, uid: str, key: str, pid: str, units: int, expect: str,
                     mine: list[Grant]) -> None:
        resp = await self._reserve(key, self._body(uid, pid, units))
        if resp is None:
            return
        self.c.record.probes.append(Probe(name, uid, resp.status, resp.error_code(), expect))
        if resp.status == 201:  # granted against the rules: the verdict will say so
            mine.append(self._grant(resp, key, units))

    # -- after the reserve -------------------------------------------------------------------

    async def confirm(self, g: Grant) -> None:
        body = orjson.dumps({"payment_ref": f"pay-{g.rid}"})
        path = f"{self.c.base}/reservations/{g.rid}/confirm"
        resp = await self.c.call(self.conn, "confirm", b"POST", path, body)
        if resp is None or resp.status == 503:
            g.state = CONFIRM_DOUBT
        elif resp.status == 200:
            g.state = CONFIRMED
        elif resp.status == 409 and resp.details().get("state") == EXPIRED:
            g.state = EXPIRED
        else:
            g.state = CONFIRM_DOUBT
            self.c.record.server_errors.append(f"confirm of a held reservation: {resp.status} {resp.body[:200]!r}")

    async def cancel(self, g: Grant) -> None:
        sent = now_ms()
        resp = await self.c.call(self.conn, "cancel", b"POST", f"{self.c.base}/reservations/{g.rid}/cancel", b"")
        if resp is None or resp.status == 503:
            g.state = CANCEL_DOUBT
        elif resp.status == 200:
            g.state, g.released_ms = CANCELLED, sent
        elif resp.status == 409 and resp.details().get("state") == EXPIRED:
            g.state = EXPIRED
        else:
            g.state = CANCEL_DOUBT
            self.c.record.server_errors.append(f"cancel of a held reservation: {resp.status} {resp.body[:200]!r}")

    # -- bad input ---------------------------------------------------------------------------

    async def bad(self, uid: str) -> None:
        pid = next(iter(self.shelf.weights))
        req = self.rng.choice(bad_requests(uid, pid))
        path = req.path[1:] if req.path.startswith("//") else self.c.base + req.path
        conn = {"ok": self.conn, "none": self.bad_conns[0], "wrong": self.bad_conns[1]}[req.auth]
        headers = f"Idempotency-Key: bad-{uid}\r\n".encode() if req.key else b""
        resp = await self.c.call(conn, "bad", req.method, path, req.body, headers)
        if resp is not None:
            self.c.record.bad.append(BadResult(req.name, uid, resp.status, resp.error_code(),
                                               tuple(sorted(req.allowed))))
