"""The state machine of ``test_model.py`` with the fair launch's gates (docs/API.md, v1.1): each
example loads the campaign with a drawn mix of buyer caps (identity, device, network /24 and /48),
eligibility ``registered`` and queue mode, before its opening. Registrations are taken until a step
opens the sale; reserves carry drawn buyer signals and an admission token (valid, none, forged,
another user's, expired), verified as the API verifies it; every rule of the core machine (replays,
confirm, cancel, holds forced overdue and expired, pause, SCRIPT FLUSH) runs beside them. After
every step, besides the core invariants: no buyer cap is ever exceeded, the buyers hash and the
registrations hash are the model's.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, multiple, precondition, rule, run_state_machine_as_test

from engine.admission import AdmissionService, Buyer, Keyring
from engine.campaign import ms_to_rfc3339, parse
from engine.core import Outcome, ReserveRequest
from engine.errors import Rejected
from tests.core import model as m
from tests.core.conftest import definition
from tests.core.test_model import (
    CAMPAIGN_CAP,
    CID,
    KEYS,
    PRICE,
    PRODUCTS,
    PROFILE,
    STOREFRONTS,
    TOTAL,
    USERS,
    CoreMachine,
    K,
    text,
)

RING = Keyring.parse("k1:" + "s" * 32)
FORGED = "v1.k1.9999999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
CAPS = (3, 4, 4)  # identity, device, network: below the user cap (6), so that they bind
IDENTITIES = ["A", "B"]
DEVICES = ["d1", "d2"]
#: ip -> its network, written out here rather than computed by engine.admission.buyer
NETWORKS = {"203.0.113.7": "203.0.113.0/24", "203.0.113.200": "203.0.113.0/24",
            "::ffff:203.0.113.9": "203.0.113.0/24", "203.0.114.1": "203.0.114.0/24",
            "2001:db8:1::1": "2001:db8:1::/48", "2001:db8:1:ffff::2": "2001:db8:1::/48",
            "2001:db8:2::1": "2001:db8:2::/48"}
DAY_MS = 86_400_000

Signals = tuple[str | None, str | None, str | None]  # identity, device, ip as sent
# a signal missing or a token other than valid now and then: most reserves pass the gates
# (Hypothesis leans to the first of a list: the values that pass come first)
signals_st = st.tuples(*(st.sampled_from([*values, *values, None]) for values in (IDENTITIES, DEVICES, NETWORKS)))
tokens_st = st.sampled_from(["valid", "valid", "valid", *m.TOKENS])


class FairMachine(CoreMachine):
    """Rules of the core machine not redefined here run unchanged on the gated campaign."""

    @initialize(caps=st.tuples(*(st.sampled_from([None, cap]) for cap in CAPS)), queued=st.booleans(),
                registered=st.booleans(), opened=st.booleans())
    def load(self, caps: tuple[int | None, int | None, int | None], queued: bool, registered: bool,  # type: ignore[override]
             opened: bool) -> None:
        self.run(self.redis.flushall())
        now = int(time.time() * 1000)
        names = ("identity_cap_units", "device_cap_units", "network_cap_units")
        extra: dict[str, Any] = {name: cap for name, cap in zip(names, caps, strict=True) if cap is not None}
        if registered:
            extra["eligibility"] = "registered"
        if queued:
            extra["admission"] = {"mode": "queue", "queue_opens_at": ms_to_rfc3339(now - DAY_MS),
                                  "admit_per_second": 100, "token_seconds": 600}
        d = definition(CID, unit_price=PRICE, hold_seconds=3600, total_units=TOTAL, user_cap_units=CAMPAIGN_CAP,
                       opens_ms=now + DAY_MS, closes_ms=now + 2 * DAY_MS,
                       products=[{"id": p, "title": p, "total_units": pd.total,
                                  **({"user_cap_units": pd.cap} if pd.cap else {})} for p, pd in PRODUCTS.items()],
                       **extra)
        self.run(self.engine.load_campaign(parse(d)))
        if opened:  # at once: otherwise registrations first, until a step opens the sale
            self.open_the_sale()
        self.admission = AdmissionService(self.engine, RING)
        self.model = m.Model(total=TOTAL, cap=CAMPAIGN_CAP, products=PRODUCTS, price=PRICE, caps=caps,
                             queued=queued, registered=registered, opened=opened)

    # -- the fair launch's rules -----------------------------------------------------------

    @precondition(lambda self: not self.model.opened)
    @rule(user=st.sampled_from(USERS), identity=st.sampled_from([*IDENTITIES, None]))
    def register(self, user: str, identity: str | None) -> None:
        want = self.model.register(user, identity)
        try:
            got: bool | Rejected = self.run(self.admission.register(CID, user, Buyer(identity=identity)))
        except Rejected as exc:
            got = exc
        event(f"register: {want.code if isinstance(want, m.Refused) else want}")
        if isinstance(want, m.Refused):
            assert isinstance(got, Rejected) and got.code == want.code, (got, want)
            assert all(got.details.get(k) == v for k, v in want.details.items()), (got.details, want)
        else:
            assert got is want

    @precondition(lambda self: not self.model.opened)
    @rule()
    def opening(self) -> None:
        self.open_the_sale()
        self.model.opened = True
        self.register(USERS[0], IDENTITIES[0])  # registrations end at the opening: CLOSED

    def open_the_sale(self) -> None:
        """The opening, brought forward: ``opens`` in the stored meta (what the scripts judge) to
        Redis TIME, as make_overdue brings a deadline forward."""
        sec, usec = self.run(self.redis.time())
        self.run(self.redis.hset(K.meta, "opens", str(int(sec) * 1000 + int(usec) // 1000 - 1)))

    def token(self, kind: str, user: str) -> Any:
        """The token of that kind as the API hands it to the engine (``Keyring.verify``, no clock)."""
        now = int(time.time() * 1000)
        raw = {"valid": RING.sign(CID, user, now + 3_600_000), "forged": FORGED,
               "other": RING.sign(CID, USERS[(USERS.index(user) + 1) % len(USERS)], now + 3_600_000),
               "expired": RING.sign(CID, user, now - 1000)}.get(kind)
        return None if raw is None else RING.verify(raw, CID, user)

    @rule(target=CoreMachine.requests, sf=st.sampled_from(STOREFRONTS), key=st.sampled_from(KEYS),
          user=st.sampled_from(USERS), product=st.sampled_from([*PRODUCTS, "nope"]), units=st.integers(1, 4),
          signals=signals_st, token=tokens_st)
    def reserve(self, sf: str, key: str, user: str, product: str, units: int,  # type: ignore[override]
                signals: Signals = m.NO_SIGNALS, token: str = "valid") -> Any:
        return self._reserve_gated(sf, key, user, product, units, signals, token)

    def _reserve_gated(self, sf: str, key: str, user: str, product: str, units: int, signals: Signals,
                       token: str) -> Any:
        identity, device, ip = signals
        sent = (identity, device, None if ip is None else NETWORKS[ip])
        want = self.model.reserve(sf, key, user, product, units, sent, token)
        buyer = None if signals == m.NO_SIGNALS else Buyer(identity, device, ip)
        got = self.call(self.engine.reserve(CID, ReserveRequest(user, product, units, key, sf, buyer,
                                                                self.token(token, user))))
        self.check(got, want)
        event(f"reserve: {want.code if isinstance(want, m.Refused) else 'new' if want.rid is None else 'replay'}")
        if isinstance(want, m.Ok) and want.rid is None:
            assert isinstance(got, Outcome)
            self.model.add(got.reservation.reservation_id, sf, key, user, product, units, sent)
        return multiple((sf, key, user, product, units, signals, token))

    @rule(req=CoreMachine.requests, token=tokens_st)
    def replay_same_body(self, req: tuple[Any, ...], token: str) -> None:  # type: ignore[override]
        """A replay is answered whatever token it carries (the first reservation, as it is now)."""
        sf, key, user, product, units, signals, _ = req
        self._reserve_gated(sf, key, user, product, units, signals, token)

    @rule(req=CoreMachine.requests, change=st.sampled_from(["units", "product", "user", "signals"]),
          signals=signals_st)
    def replay_other_body(self, req: tuple[Any, ...], change: str,  # type: ignore[override]
                          signals: Signals = m.NO_SIGNALS) -> None:
        sf, key, user, product, units, old_signals, token = req
        if change == "units":
            units = units % 4 + 1
        elif change == "product":
            product = "p2" if product != "p2" else "p1"
        elif change == "user":
            user = USERS[(USERS.index(user) + 1) % len(USERS)]
        self._reserve_gated(sf, key, user, product, units, signals if change == "signals" else old_signals, token)

    # -- invariants beyond the core machine's -----------------------------------------------

    @invariant()
    def buyer_caps_and_registrations_match_the_model(self) -> None:
        raw_buyers = self.run(self.redis.hgetall(K.buyers))
        got = {text(f): int(v) for f, v in raw_buyers.items() if int(v)}
        want = self.model.signal_units()
        assert got == want
        for field, units in got.items():  # no cap ever exceeded, whatever the model says
            cap = dict(zip("idn", self.model.caps, strict=True))[field[0]]
            assert cap is not None and units <= cap, (field, units)
        regs = {text(f): text(v) for f, v in self.run(self.redis.hgetall(K.registrations)).items()}
        assert {f[2:]: v.split("|", 1)[1] for f, v in regs.items() if f.startswith("u|")} == self.model.registrations
        assert {f[2:]: v for f, v in regs.items() if f.startswith("i|")} == {
            i: u for u, i in self.model.registrations.items() if i}


def test_the_gated_engine_matches_the_reference_model(redis_url: str) -> None:
    FairMachine.redis_url = redis_url
    # each example draws one mix of gates among 64: more examples than the core machine's dev profile
    profile = settings.get_profile(PROFILE)
    run_state_machine_as_test(FairMachine, settings=settings(profile, max_examples=max(profile.max_examples, 150),
                                                                   stateful_step_count=60))
