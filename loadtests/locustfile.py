"""Launch day in Locust: a storefront buyer and the launch-day spike.

    FLASHSALE_CAMPAIGN=yulebao-2014-p1 FLASHSALE_LOADGEN_TOKEN=… SPIKE_PEAK_USERS=500 \\
        locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000

Each Locust user is a storefront session serving buyers one after another: a buyer reserves 1..cap
units of one product (weighted by stock), then pays (most), cancels (some) or walks away and lets
the hold expire (some). A 503 or a timeout is retried with the same Idempotency-Key, as docs/API.md
allows; business refusals (409 SOLD_OUT, USER_CAP_EXCEEDED …, 429) are outcomes, not failures.
Anything else (a 5xx, an unexpected 4xx) is a failure, and Locust exits 1.

The ``LaunchDaySpike`` shape (the same curve as ``flashsale loadgen``, engine/loadgen/profile.py):
a pre-sale trickle, a cliff at the opening to ``SPIKE_PEAK_USERS`` spawned as fast as Locust can,
a plateau until the campaign sells out (read from its stats) or ``SPIKE_PLATEAU_MAX_S``, a decay
over ``SPIKE_DECAY_S``. Also ``SPIKE_TRICKLE_USERS``, ``SPIKE_TRICKLE_S``. Time zero is the
campaign's ``opens_at``; if it cannot be read, the opening is ``SPIKE_TRICKLE_S`` after the start.

Queue mode (a campaign with ``admission.mode = "queue"``): each buyer joins the waiting room
(``POST …/queue`` with their buyer signals), polls as told (``poll_after_ms``, at most
``FLASHSALE_POLL_CAP_S`` apart, default 5) until admitted, then reserves with the
``Admission-Token`` header. Every buyer is a person with their own identity, device and network
(engine/loadgen/crowd.py). ``FLASHSALE_SCALPERS=20x100`` (with ``FLASHSALE_SCALPER_SPREAD=3,5,2``:
identities, devices, networks per operator) makes the first 20 Locust users scalper operators:
each fires its 100 accounts at the first millisecond of the opening (of the pre-queue, in queue
mode); the shape must have spawned them by then (``SPIKE_TRICKLE_USERS`` ≥ operators).

Locust is far slower than ``flashsale loadgen`` (one greenlet per user, gevent): use it for a
realistic browser-like crowd and Locust's UI; use ``flashsale loadgen`` to saturate the server.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import urllib.request
import uuid
from datetime import datetime
from typing import Any

from locust import LoadTestShape, constant, task
from locust.contrib.fasthttp import FastHttpUser

from engine.loadgen.behaviour import Mix
from engine.loadgen.crowd import Scalpers, Signals, person, scalper, scalper_user
from engine.loadgen.profile import SpikeProfile
from engine.settings import parse_storefront_tokens

CAMPAIGN = os.environ.get("FLASHSALE_CAMPAIGN", "yulebao-2014-p1")
RETRIES = 5
BUSINESS = {409, 429}  # refusals docs/API.md documents for a well-formed reserve: outcomes, not failures
MIX = Mix()
POLL_CAP_S = float(os.environ.get("FLASHSALE_POLL_CAP_S", "5"))
NOT_OPEN_TRIES = 600  # a join refused QUEUE_NOT_OPEN is tried again this many times, ~0.5 s apart


def _scalpers() -> Scalpers | None:
    farms = os.environ.get("FLASHSALE_SCALPERS", "").strip().lower()
    if not farms:
        return None
    ops, accounts = (int(x) for x in farms.split("x"))
    identities, devices, networks = (int(x) for x in os.environ.get("FLASHSALE_SCALPER_SPREAD", "3,5,2").split(","))
    return Scalpers(ops, accounts, identities, devices, networks)


SCALPERS = _scalpers()


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _token() -> str:
    tok = os.environ.get("FLASHSALE_LOADGEN_TOKEN")
    if tok:
        return tok
    tokens = parse_storefront_tokens(os.environ.get("FLASHSALE_STOREFRONT_TOKENS", ""))  # the server's rule
    return tokens[0][1] if tokens else ""


def _get(host: str, path: str) -> Any:
    req = urllib.request.Request(f"{host}/v1/campaigns/{CAMPAIGN}{path}",
                                 headers={"Authorization": f"Bearer {_token()}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


class Storefront(FastHttpUser):
    """One storefront session: buyers one after another on a keep-alive connection."""

    wait_time = constant(0)
    network_timeout = 10.0
    connection_timeout = 5.0
    _definition: dict[str, Any] | None = None
    _ids = itertools.count(1)
    _operators = itertools.count(0)
    _prefix = f"lc{uuid.uuid4().hex[:6]}-"
    _send_signals = True  # buyer signals on the reserve, until a server refuses the field

    def on_start(self) -> None:
        if Storefront._definition is None:
            Storefront._definition = _get(self.host, "")
        self.headers = {"Authorization": f"Bearer {_token()}"}
        self.base = f"/v1/campaigns/{CAMPAIGN}"
        self.operator: int | None = None
        if SCALPERS is not None:
            n = next(Storefront._operators)
            self.operator = n if n < SCALPERS.operators else None

    @property
    def queued(self) -> bool:
        adm = (Storefront._definition or {}).get("admission") or {}
        return bool(adm.get("mode") == "queue")

    def _product(self) -> tuple[str, int]:
        d = Storefront._definition or {}
        products = d["products"]
        p = random.choices(products, [p["total_units"] for p in products])[0]
        caps = [c for c in (p.get("user_cap_units"), d.get("user_cap_units")) if c is not None]
        return p["id"], min(caps) if caps else 10

    def _post(self, name: str, path: str, body: dict[str, Any], key: str | None = None,
              extra: dict[str, str] | None = None) -> Any:
        """POST with docs/API.md's retry rule: 503 and timeouts again, with the same Idempotency-Key."""
        headers = dict(self.headers, **({"Idempotency-Key": key} if key else {}), **(extra or {}))
        for attempt in range(RETRIES + 1):
            with self.client.post(path, json=body, headers=headers, name=name, catch_response=True) as r:
                if r.status_code in (0, 503) and attempt < RETRIES:  # 0: no answer (timeout, reset)
                    r.success()
                    time.sleep(min(0.05 * 2 ** attempt, 1.0))
                    continue
                if (r.status_code == 422 and "buyer" in body and name == "reserve"
                        and '"field":"buyer"' in (r.text or "")):  # a server before v1.1's buyer caps
                    r.success()
                    Storefront._send_signals = False
                    body = {k: v for k, v in body.items() if k != "buyer"}
                    continue
                if name == "join" and r.status_code == 409 and "QUEUE_NOT_OPEN" in (r.text or ""):
                    r.success()
                    return "not open"
                if r.status_code in (200, 201) or r.status_code in BUSINESS:
                    r.success()
                    return r.json() if r.status_code in (200, 201) else None
                r.failure(f"{r.status_code}: {(r.text or '')[:200]}")
                return None
        return None

    def _admit(self, uid: str, sig: Signals) -> str | None:
        """The waiting room: join, poll as told until admitted; the admission token, or None."""
        body = {"user_id": uid, "buyer": sig.body()}
        for _ in range(NOT_OPEN_TRIES):
            joined = self._post("join", f"{self.base}/queue", body)
            if joined != "not open":
                break
            time.sleep(random.uniform(0.3, 0.6))
        if not isinstance(joined, dict):
            return None
        d: Any = joined
        while True:
            if d["state"] == "admitted":
                return str(d["admission_token"])
            if d["state"] in ("sold_out", "expired"):
                return None
            time.sleep(min(max(int(d.get("poll_after_ms") or 0), 0) / 1000.0, POLL_CAP_S))
            with self.client.get(f"{self.base}/queue/{d['ticket']}", headers=self.headers, name="poll",
                                 catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"{r.status_code}: {(r.text or '')[:200]}")
                    return None
                d = r.json()

    @task
    def buy(self) -> None:
        if self.operator is not None and SCALPERS is not None:
            self.farm(self.operator, SCALPERS)
            return
        n = next(self._ids)
        self.visit(f"{self._prefix}{n}", person(self._prefix, n))

    def farm(self, operator: int, s: Scalpers) -> None:
        """A scalper operator: every account at the first millisecond of the (pre-)opening, then stop."""
        d = Storefront._definition or {}
        fire = _epoch(d["admission"]["queue_opens_at"] if self.queued else d["opens_at"])
        time.sleep(max(fire - time.time(), 0.0))
        for j in range(s.accounts):
            self.visit(scalper_user(self._prefix, operator, j), scalper(self._prefix, s, operator, j))
        self.operator = None  # the farm is done: this user serves ordinary buyers from now on

    def visit(self, uid: str, sig: Signals) -> None:
        extra: dict[str, str] = {}
        if self.queued:
            token = self._admit(uid, sig)
            if token is None:
                return
            extra["Admission-Token"] = token
        pid, cap = self._product()
        units = MIX.units(random.Random(), cap)
        body: dict[str, Any] = {"user_id": uid, "product_id": pid, "units": units}
        if Storefront._send_signals:
            body["buyer"] = sig.body()
        res = self._post("reserve", f"{self.base}/reservations", body, key=f"{uid}-0", extra=extra)
        if not res:
            return
        rid, fate = res["reservation_id"], MIX.fate(random.Random())
        if fate == "confirm":
            self._post("confirm", f"{self.base}/reservations/{rid}/confirm", {"payment_ref": f"pay-{rid}"})
        elif fate == "cancel":
            self._post("cancel", f"{self.base}/reservations/{rid}/cancel", {})


class LaunchDaySpike(LoadTestShape):
    """Trickle, cliff, plateau until sold out, decay: ``SPIKE_*`` environment variables."""

    def __init__(self) -> None:
        super().__init__()
        self.profile = SpikeProfile.from_env(peak_users=50)
        self.opens_at: float | None = None  # wall-clock seconds
        self.sold_out_at: float | None = None
        self.polled = 0.0

    def _host(self) -> str | None:
        runner = self.runner
        return runner.environment.host if runner is not None else None

    def _poll(self) -> None:
        """The opening once, then the stats every second: the plateau lasts until sold out."""
        now = time.time()
        host = self._host()
        if host is None or now - self.polled < 1.0:
            return
        self.polled = now
        try:
            if self.opens_at is None:
                opens = _get(host, "")["opens_at"]
                self.opens_at = datetime.fromisoformat(opens.replace("Z", "+00:00")).timestamp()
            if self.sold_out_at is None and now >= self.opens_at and _get(host, "/stats")["remaining_units"] <= 0:
                self.sold_out_at = now
        except (OSError, ValueError, KeyError):
            pass

    def tick(self) -> tuple[int, float] | None:
        run_time = self.get_run_time()
        self._poll()
        opens = self.opens_at if self.opens_at is not None else time.time() - run_time + self.profile.trickle_s
        t = time.time() - opens
        sold = None if self.sold_out_at is None else self.sold_out_at - opens
        if self.profile.finished(t, sold):
            return None
        users = self.profile.users_at(t, sold)
        if t < 0 and users == 0:
            return (0, 1.0) if t > -3600 else None
        return max(users, 0), float(max(self.profile.peak_users, 1))  # the cliff: spawn all at once
