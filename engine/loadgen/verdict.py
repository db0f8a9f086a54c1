"""The verdict: the generator's record against what the API and the ledger show, per invariant.

``judge(record, observed)`` is a pure function (no I/O): ``engine.loadgen.observe`` gathers the
``Observed`` state, a test can build one by hand. Each check names the invariant of docs/API.md it
guards (1 never oversold · 2 caps · 3 ledger exactly once · 4 released units come back ·
5 idempotency · 6 bad input changes nothing; v1.1: 2 also the buyer caps per identity, device and
network, and 7 queue mode: a reserve needs its own user's admission token, admission follows the
positions). A check fails only on certain evidence: where the
record cannot know (a request that never got an answer, a hold at the edge of its deadline) the
expected value becomes a range, and only a value outside it is a violation.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.loadgen.record import (
    CANCEL_DOUBT,
    CANCELLED,
    CONFIRM_DOUBT,
    CONFIRMED,
    EXPIRED,
    HELD,
    Grant,
    Record,
)

INF = float("inf")
PROBE_TOLERATED = frozenset({"RATE_LIMITED", "PAUSED", "CLOSED", "UNAVAILABLE"})
# a reserve with no token or another's may also meet an empty shelf first: refused all the same
TOKEN_PROBE_TOLERATED = PROBE_TOLERATED | {"SOLD_OUT", "INSUFFICIENT_STOCK", "USER_CAP_EXCEEDED",
                                           "BUYER_CAP_EXCEEDED", "NOT_REGISTERED"}
SIGNALS = ("identity", "device", "network")
QUEUE = 7  # the v1.1 queue-mode checks


@dataclass(frozen=True, slots=True)
class LedgerRow:
    rid: str
    product: str
    user: str
    units: int
    amount: int


@dataclass(frozen=True, slots=True, repr=False)
class Observed:
    """What the API (and the ledger) showed after the run."""

    definition: dict[str, Any]  # GET /v1/campaigns/{cid}
    stats: dict[str, Any]  # GET …/stats, after the writer drained
    now_ms: float  # when ``stats`` was read
    baseline: dict[str, Any] | None = None  # GET …/stats before the run
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> GET …/users/{uid}
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)  # rid -> GET …/reservations/{rid}
    ledger: tuple[LedgerRow, ...] | None = None  # the campaign's ``orders`` rows; None: no database
    reconcile: tuple[int, str] | None = None  # exit code and output of ``flashsale reconcile``
    expiry_slack_ms: float = 5000.0  # the sweeper releases a hold within about this of its deadline


@dataclass(frozen=True, slots=True)
class Check:
    invariant: int  # 1..6 as numbered in docs/API.md; 0 for the stats' own arithmetic
    name: str
    ok: bool | None  # None: skipped (nothing to judge it by)
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def violations(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.ok is False)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def judge(record: Record, observed: Observed) -> Verdict:
    """Every invariant of docs/API.md, judged from the record against the observed state."""
    checks: list[Check] = [_made_requests(record)]
    for part in (_oversold, _caps, _buyer_caps, _ledger, _returned, _idempotency, _bad_input, _queue):
        checks.extend(part(record, observed))
    return Verdict(tuple(checks))


def _fail_list(items: Iterable[str], limit: int = 5) -> str:
    lst = list(items)
    more = f" (+{len(lst) - limit} more)" if len(lst) > limit else ""
    return "; ".join(lst[:limit]) + more


def _check(invariant: int, name: str, problems: list[str], ok_detail: str = "") -> Check:
    return Check(invariant, name, not problems, _fail_list(problems) if problems else ok_detail)


def _made_requests(r: Record) -> Check:
    """A run that sent nothing proves nothing: it is never a clean verdict."""
    n = r.attempts()
    return _check(0, "the run made requests", [] if n else ["no request was made: nothing was judged"],
                  f"{n:,} requests")


# -- 1. never oversold -------------------------------------------------------------------------

def _products(o: Observed) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in o.definition.get("products", [])}


def _oversold(r: Record, o: Observed) -> list[Check]:
    s, problems = o.stats, []
    total, sold, held = int(s["total_units"]), int(s["sold_units"]), int(s["held_units"])
    if sold + held > total:
        problems.append(f"campaign: sold {sold} + held {held} > total {total}")
    for p in s.get("products", []):
        if int(p["sold_units"]) + int(p["held_units"]) > int(p["total_units"]):
            problems.append(f"{p['product_id']}: sold {p['sold_units']} + held {p['held_units']} "
                            f"> total {p['total_units']}")
    out = [_check(1, "stats: sold + held ≤ total, campaign and every product", problems,
                  f"{sold + held} of {total} taken")]
    arith = [] if int(s["remaining_units"]) == total - sold - held and int(s["remaining_units"]) >= 0 else [
        f"remaining {s['remaining_units']} ≠ total {total} − sold {sold} − held {held}"]
    out.append(_check(0, "stats: remaining = total − sold − held ≥ 0", arith))
    mine = [g for g in r.grants if g.state in (HELD, CONFIRMED, CONFIRM_DOUBT, CANCEL_DOUBT)]
    problems = []
    if sum(g.units for g in mine) > int(o.definition["total_units"]):
        problems.append(f"the record holds {sum(g.units for g in mine)} units of a {total}-unit tranche")
    per: Counter[str] = Counter()
    for g in mine:
        per[g.product] += g.units
    for pid, units in per.items():
        ptotal = int(_products(o).get(pid, {}).get("total_units", 0))
        if units > ptotal:
            problems.append(f"the record holds {units} units of {pid} (total {ptotal})")
    out.append(_check(1, "record: units granted and not released ≤ total", problems))
    return out


# -- 2. caps -----------------------------------------------------------------------------------

def _release_low(g: Grant) -> float:
    """The earliest instant the hold can have ended (a certain-overlap test needs the earliest)."""
    if g.state == CANCELLED and g.released_ms is not None:
        return g.released_ms
    if g.state in (EXPIRED, HELD):
        return float(g.expires_ms)
    return INF  # confirmed, or a release in doubt


def _peak(grants: list[Grant]) -> int:
    """Most units certainly held at once: a hold spans [answered, earliest possible end)."""
    best = 0
    for g in grants:
        t = g.granted_ms
        best = max(best, sum(h.units for h in grants if h.granted_ms <= t < _release_low(h)))
    return best


def _caps(r: Record, o: Observed) -> list[Check]:
    pcaps = {pid: p.get("user_cap_units") for pid, p in _products(o).items()}
    ccap = o.definition.get("user_cap_units")
    by_user: dict[str, list[Grant]] = defaultdict(list)
    for g in r.grants:
        by_user[g.user].append(g)
    problems = []
    for uid, grants in by_user.items():
        if ccap is not None and (peak := _peak(grants)) > ccap:
            problems.append(f"{uid} held {peak} units at once (campaign cap {ccap})")
        per: dict[str, list[Grant]] = defaultdict(list)
        for g in grants:
            per[g.product].append(g)
        for pid, gs in per.items():
            cap = pcaps.get(pid)
            if cap is not None and (peak := _peak(gs)) > cap:
                problems.append(f"{uid} held {peak} units of {pid} at once (cap {cap})")
    out = [_check(2, "record: no user held more than a cap allows", problems,
                  f"{len(by_user)} users granted units")]
    problems = []
    for uid, h in o.users.items():
        if ccap is not None and int(h["held_units"]) + int(h["confirmed_units"]) > ccap:
            problems.append(f"{uid}: {h['held_units']} held + {h['confirmed_units']} confirmed > cap {ccap}")
        for p in h.get("products", []):
            cap = pcaps.get(p["product_id"])
            if cap is not None and int(p["held_units"]) + int(p["confirmed_units"]) > cap:
                problems.append(f"{uid}/{p['product_id']}: {p['held_units']} + {p['confirmed_units']} > cap {cap}")
    out.append(_check(2, "API: no user's holdings over a cap", problems, f"{len(o.users)} users looked up"))
    probes = [p for p in r.probes if p.expect == "USER_CAP_EXCEEDED"]
    problems = [f"{p.user}: {p.status} {p.code}" for p in probes
                if p.status < 400 or (p.code != p.expect and p.code not in PROBE_TOLERATED)]
    out.append(_check(2, "over-cap requests refused with USER_CAP_EXCEEDED", problems, f"{len(probes)} probes")
               if probes else Check(2, "over-cap requests refused with USER_CAP_EXCEEDED", None, "no probes sent"))
    return out


# -- 3. the ledger -----------------------------------------------------------------------------

def _ledger(r: Record, o: Observed) -> list[Check]:
    name = "ledger: every confirmed order exactly once, as confirmed"
    if o.ledger is None:
        return [Check(3, name, None, "no database given (--database-url)")]
    rows: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in o.ledger:
        rows[row.rid].append(row)
    confirmed = [g for g in r.grants if g.state == CONFIRMED or _seen(o, g) == CONFIRMED]
    problems = []
    for g in confirmed:
        found = rows.get(g.rid, [])
        if len(found) != 1:
            problems.append(f"{g.rid}: {len(found)} rows")
        elif (found[0].product, found[0].user, found[0].units, found[0].amount) != (
                g.product, g.user, g.units, g.amount):
            problems.append(f"{g.rid}: row {found[0]} differs from the confirmed reservation")
    out = [_check(3, name, problems, f"{len(confirmed)} orders found once each")]
    known = {g.rid for g in r.grants}
    possible = {g.rid for g in confirmed} | {g.rid for g in r.grants if g.state == CONFIRM_DOUBT
                                             and _seen(o, g) is None}
    strays = [f"{rid}: the generator did not confirm it" for rid in rows if rid in known and rid not in possible]
    if _fresh(o):  # on a campaign only this run drove, every order is one of ours
        strays += [f"{rid}: not a reservation of this run" for rid in rows if rid not in known]
    out.append(_check(3, "ledger: no order the generator did not confirm", strays, f"{len(rows)} rows"))
    sold, units = int(o.stats["sold_units"]), sum(row.units for row in o.ledger)
    out.append(_check(3, "ledger: units = stats sold_units", [] if units == sold else
                      [f"ledger {units} units, stats sold {sold}"], f"{units} units"))
    if o.reconcile is None:
        out.append(Check(3, "flashsale reconcile exits 0", None, "not run"))
    else:
        code, text = o.reconcile
        out.append(_check(3, "flashsale reconcile exits 0", [] if code == 0 else
                          [f"exit {code}: {text.strip()[-400:]}"]))
    return out


# -- 4. released units come back ---------------------------------------------------------------

def _seen(o: Observed, g: Grant) -> str | None:
    body = o.reservations.get(g.rid)
    return str(body["state"]) if body else None


def _fresh(o: Observed) -> bool:
    b = o.baseline
    return b is None or int(b["sold_units"]) + int(b["held_units"]) == 0


def _held_range(g: Grant, o: Observed) -> tuple[int, int]:
    """(certain, possible) units this grant holds at ``o.now_ms``."""
    st = _seen(o, g) if g.state in (CONFIRM_DOUBT, CANCEL_DOUBT) else g.state
    if st in (CONFIRMED, CANCELLED, EXPIRED):
        return 0, 0
    if st in (CONFIRM_DOUBT, CANCEL_DOUBT, None):
        return 0, g.units
    if g.expires_ms > o.now_ms + o.expiry_slack_ms:
        return g.units, g.units
    if g.expires_ms < o.now_ms - o.expiry_slack_ms:
        return 0, 0
    return 0, g.units


def _sold_range(g: Grant, o: Observed) -> tuple[int, int]:
    st = _seen(o, g) if g.state in (CONFIRM_DOUBT, CANCEL_DOUBT) else g.state
    if st == CONFIRMED:
        return g.units, g.units
    return (0, g.units) if st in (CONFIRM_DOUBT, None) else (0, 0)


def _returned(r: Record, o: Observed) -> list[Check]:
    base = o.baseline or {"sold_units": 0, "held_units": 0, "products": []}
    base_p = {p["product_id"]: p for p in base.get("products", [])}
    doubt_units: Counter[str] = Counter()
    for d in r.doubts:
        doubt_units[d.product] += d.units
    ranges: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # sold lo/hi, held lo/hi
    for g in r.grants:
        s_lo, s_hi = _sold_range(g, o)
        h_lo, h_hi = _held_range(g, o)
        for key in ("", g.product):
            v = ranges[key]
            v[0] += s_lo
            v[1] += s_hi
            v[2] += h_lo
            v[3] += h_hi
    problems = []
    stats_p = {p["product_id"]: p for p in o.stats.get("products", [])}
    scopes: list[tuple[str, dict[str, Any], dict[str, Any], int]] = [
        ("", o.stats, base, sum(doubt_units.values()))]
    scopes += [(pid, p, base_p.get(pid, {}), doubt_units[pid]) for pid, p in stats_p.items()]
    for key, now, before, doubts in scopes:
        v = ranges[key]
        b_sold, b_held = int(before.get("sold_units", 0)), int(before.get("held_units", 0))
        sold, held = int(now["sold_units"]), int(now["held_units"])
        where = key or "campaign"
        if not b_sold + v[0] <= sold <= b_sold + v[1] + doubts:
            problems.append(f"{where}: sold {sold}, the record explains {b_sold + v[0]}..{b_sold + v[1] + doubts}")
        if not v[2] <= held <= b_held + v[3] + doubts:
            problems.append(f"{where}: held {held}, the record explains {v[2]}..{b_held + v[3] + doubts} "
                            "(cancelled or expired units not returned, or holds lost)")
    out = [_check(4, "stats match the record: confirmed sold, released returned", problems,
                  f"sold {o.stats['sold_units']}, held {o.stats['held_units']}")]
    problems = []
    for g in r.grants:
        seen = _seen(o, g)
        if seen is None or g.state in (CONFIRM_DOUBT, CANCEL_DOUBT):
            continue
        lo, hi = _held_range(g, o)
        expected = {CONFIRMED: {CONFIRMED}, CANCELLED: {CANCELLED}, EXPIRED: {EXPIRED}}.get(
            g.state, {HELD} if lo else ({EXPIRED} if not hi else {HELD, EXPIRED}))
        if seen not in expected:
            problems.append(f"{g.rid}: {seen}, expected {'/'.join(sorted(expected))}")
    looked = sum(1 for g in r.grants if g.rid in o.reservations)
    out.append(_check(4, "reservations in the state the record left them", problems, f"{looked} looked up"))
    out.append(_check(4, "users' holdings match the record", _holdings(r, o), f"{len(o.users)} users"))
    return out


def _holdings(r: Record, o: Observed) -> list[str]:
    """Each looked-up user's held and confirmed units, per product, against the record's range."""
    expect: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # confirmed lo/hi, held lo/hi
    for g in r.grants:
        if g.user in o.users:
            v, (s_lo, s_hi), (h_lo, h_hi) = expect[g.user, g.product], _sold_range(g, o), _held_range(g, o)
            v[0], v[1], v[2], v[3] = v[0] + s_lo, v[1] + s_hi, v[2] + h_lo, v[3] + h_hi
    for d in r.doubts:
        if d.user in o.users:
            v = expect[d.user, d.product]
            v[1], v[3] = v[1] + d.units, v[3] + d.units
    problems = []
    for uid, h in o.users.items():
        seen = {p["product_id"]: p for p in h.get("products", [])}
        pids = set(seen) | {pid for (u, pid) in expect if u == uid}
        for pid in sorted(pids):
            p = seen.get(pid, {})
            conf, held = int(p.get("confirmed_units", 0)), int(p.get("held_units", 0))
            v = expect.get((uid, pid), [0, 0, 0, 0])
            if not (v[0] <= conf <= v[1] and v[2] <= held <= v[3]):
                problems.append(f"{uid}/{pid}: {conf} confirmed, {held} held; the record explains "
                                f"{v[0]}..{v[1]} confirmed, {v[2]}..{v[3]} held")
    return problems


# -- 5. idempotency ----------------------------------------------------------------------------

def _idempotency(r: Record, o: Observed) -> list[Check]:
    keys = Counter(g.key for g in r.grants)
    rids = Counter(g.rid for g in r.grants)
    problems = [f"key {k!r} created {n} reservations" for k, n in keys.items() if n > 1]
    problems += [f"reservation {k} granted {n} times" for k, n in rids.items() if n > 1]
    problems += [f"replay of {p.key!r}: {p.status} {p.replay_rid} (first {p.rid})" for p in r.replays
                 if p.status != 200 or p.replay_rid != p.rid]
    out = [_check(5, "one reservation per Idempotency-Key; replays return it (200)", problems,
                  f"{len(r.replays)} replays")]
    reuse = [p for p in r.probes if p.expect == "IDEMPOTENCY_KEY_REUSED"]
    problems = [f"{p.user}: {p.status} {p.code}" for p in reuse
                if p.status < 400 or (p.code != p.expect and p.code not in PROBE_TOLERATED)]
    out.append(_check(5, "a key reused with another body is refused", problems, f"{len(reuse)} probes")
               if reuse else Check(5, "a key reused with another body is refused", None, "no probes sent"))
    return out


# -- 6. bad input ------------------------------------------------------------------------------

def _bad_input(r: Record, o: Observed) -> list[Check]:
    problems = [f"{b.name}: {b.status} {b.code} (expected {'/'.join(map(str, b.allowed))} with an error body)"
                for b in r.bad if b.status not in b.allowed or b.code is None]
    out = [_check(6, "bad requests get their documented 4xx", problems, f"{len(r.bad)} sent")
           if r.bad else Check(6, "bad requests get their documented 4xx", None, "none sent")]
    bad_users = {b.user for b in r.bad}
    problems = [f"{uid}: {h['held_units']} held, {h['confirmed_units']} confirmed" for uid, h in o.users.items()
                if uid in bad_users and (int(h["held_units"]) or int(h["confirmed_units"]))]
    looked = len(bad_users & o.users.keys())
    out.append(_check(6, "bad requests changed nothing", problems, f"{looked} senders hold nothing")
               if looked else Check(6, "bad requests changed nothing", None, "no sender looked up"))
    out.append(_check(6, "never a 5xx other than 503", r.server_errors[:5] + (
        [f"{len(r.server_errors)} in all"] if len(r.server_errors) > 5 else []),
        f"{r.attempts()} requests"))
    return out


# -- 2. buyer caps (v1.1): per identity, device and network ------------------------------------

def _buyer_caps(r: Record, o: Observed) -> list[Check]:
    caps = {kind: int(o.definition[f"{kind}_cap_units"]) for kind in SIGNALS
            if o.definition.get(f"{kind}_cap_units") is not None}
    if not caps:
        return []
    signed = [g for g in r.grants if g.identity is not None or g.device is not None or g.network is not None]
    name = "record: no identity, device or network held more than its cap"
    if not signed:
        out = [Check(2, name, None, "no reserve carried buyer signals")]
    else:
        problems = []
        for kind, cap in caps.items():
            groups: dict[str, list[Grant]] = defaultdict(list)
            for g in signed:
                value = getattr(g, kind)
                if value is not None:
                    groups[value].append(g)
            problems += [f"{kind} {v}: {peak} units at once (cap {cap})" for v, gs in groups.items()
                         if (peak := _peak(gs)) > cap]
        out = [_check(2, name, problems, f"{len(signed)} reservations with signals")]
    signals = {g.user: g for g in signed}  # an account's signals never change within a run
    if o.ledger is not None and signals:
        per: Counter[tuple[str, str]] = Counter()
        for row in o.ledger:
            sg = signals.get(row.user)
            for kind in caps:
                value = getattr(sg, kind) if sg is not None else None
                if value is not None:
                    per[kind, value] += row.units
        problems = [f"{kind} {v}: {n} units confirmed in the ledger (cap {caps[kind]})"
                    for (kind, v), n in per.items() if n > caps[kind]]
        out.append(_check(2, "ledger: no identity, device or network confirmed over its cap", problems,
                          f"{len(per)} signals"))
    if o.users and signals:
        held: Counter[tuple[str, str]] = Counter()
        for uid, h in o.users.items():
            sg = signals.get(uid)
            for kind in caps:
                value = getattr(sg, kind) if sg is not None else None
                if value is not None:
                    held[kind, value] += int(h["held_units"]) + int(h["confirmed_units"])
        problems = [f"{kind} {v}: looked-up users hold {n} units (cap {caps[kind]})"
                    for (kind, v), n in held.items() if n > caps[kind]]
        out.append(_check(2, "API: looked-up users of one identity, device or network within its cap",
                          problems, f"{len(held)} signals"))
    return out


# -- 7. queue mode (v1.1) ----------------------------------------------------------------------

def _queue(r: Record, o: Observed) -> list[Check]:
    adm = o.definition.get("admission")
    if not r.queued and not (isinstance(adm, dict) and adm.get("mode") == "queue"):
        return []
    wrong = [f"{g.rid} ({g.user}): " + ("no admission token" if not g.token_user else f"{g.token_user}'s token")
             for g in r.grants if g.token_user != g.user]
    out = [_check(QUEUE, "queue: every reservation carried its own user's admission token", wrong,
                  f"{len(r.grants)} reservations, each with its own token")]
    probes = [p for p in r.probes if p.expect.startswith("ADMISSION_")]
    name = "queue: a reserve without a token, or with another user's, is refused (403)"
    problems = [f"{p.name} ({p.user}): {p.status} {p.code}" for p in probes
                if p.status < 400 or (p.code != p.expect and p.code not in TOKEN_PROBE_TOLERATED)]
    out.append(_check(QUEUE, name, problems, f"{len(probes)} probes") if probes
               else Check(QUEUE, name, None, "no probes sent"))
    seen = sorted((t for t in r.tickets.values() if t.position is not None), key=lambda t: t.position or 0)
    problems = [f"ticket {t.ticket}: its position changed after the opening" for t in r.tickets.values() if t.moved]
    problems += [f"tickets {a.ticket} and {b.ticket} share position {a.position}"
                 for a, b in itertools.pairwise(seen) if a.position == b.position]
    admitted = [t for t in seen if t.admitted_at_ms is not None]
    problems += [f"position {b.position} admitted before position {a.position} (admitted at "
                 f"{b.admitted_at_ms} < {a.admitted_at_ms})"
                 for a, b in itertools.pairwise(admitted)
                 if (b.admitted_at_ms or 0) < (a.admitted_at_ms or 0)]
    name = "queue: positions fixed, distinct, admitted in position order"
    out.append(_check(QUEUE, name, problems, f"{len(admitted)} of {len(seen)} positioned tickets admitted")
               if seen else Check(QUEUE, name, None, "no ticket got a position"))
    return out
