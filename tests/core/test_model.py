"""A Hypothesis state machine drives the real engine and the reference model (``model.py``) side by
side: reserve, replays (same body, another body), confirm (repeats, another payment_ref), cancel,
holds forced past their deadline and expired by the real ``expire_due``, pause/resume and SCRIPT
FLUSH. After every step each answer must match the model, and every invariant of docs/API.md must hold
in what Redis holds.

Runs ``CI`` profile (300 examples × 40 steps) when the CI environment variable is set, a shorter
one otherwise; ``FLASHSALE_HYPOTHESIS_PROFILE`` picks one by name.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine import keys
from engine.campaign import parse
from engine.core import Engine, Outcome, ReserveRequest
from engine.errors import NotFound, Rejected
from engine.events import decode
from engine.settings import Settings
from tests.core import model as m
from tests.core.conftest import definition, make_overdue

settings.register_profile("ci", max_examples=300, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("dev", max_examples=40, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
PROFILE = os.environ.get("FLASHSALE_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")

CID = "sm"
K = keys.CampaignKeys(CID)
PRICE = 10000
TOTAL, CAMPAIGN_CAP = 10, 6
PRODUCTS = {"p1": m.ProductDef(6, 3), "p2": m.ProductDef(7, None), "p3": m.ProductDef(3, 2)}
USERS = ["u1", "u2", "u3"]
STOREFRONTS = ["shop-a", "shop-b"]
KEYS = [f"key-{i}" for i in range(8)]
REFS = ["pay-1", "pay-2"]


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class CoreMachine(RuleBasedStateMachine):
    redis_url = ""  # set by the test below
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.engine = Engine.from_settings(Settings(redis_url=self.redis_url, redis_timeout_s=10.0))
        self.model = m.Model(total=TOTAL, cap=CAMPAIGN_CAP, products=PRODUCTS, price=PRICE)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.engine.close())
        self.run(self.redis.aclose())
        self.loop.close()

    @initialize()
    def load(self) -> None:
        self.run(self.redis.flushall())
        d = definition(CID, unit_price=PRICE, hold_seconds=3600, total_units=TOTAL, user_cap_units=CAMPAIGN_CAP,
                       products=[{"id": p, "title": p, "total_units": pd.total,
                                  **({"user_cap_units": pd.cap} if pd.cap else {})} for p, pd in PRODUCTS.items()])
        self.run(self.engine.load_campaign(parse(d)))

    # -- comparing an answer with the model's -------------------------------------------

    def call(self, coro: Any) -> Outcome | Rejected:
        try:
            out: Outcome = self.run(coro)
            return out
        except Rejected as exc:
            return exc

    @staticmethod
    def check(got: Outcome | Rejected, want: m.Ok | m.Refused) -> None:
        if isinstance(want, m.Refused):
            assert isinstance(got, Rejected), f"engine answered {got}, model refuses {want}"
            assert got.code == want.code, (got, want)
            for k, v in want.details.items():
                assert got.details.get(k) == v, (got.details, want)
            return
        assert isinstance(got, Outcome), f"engine refused {got!r} {getattr(got, 'details', '')}, model says {want}"
        r = got.reservation
        assert got.replayed == want.replayed, (got, want)
        assert (r.state, r.product_id, r.user_id, r.units, r.amount) == (
            want.state, want.product, want.user, want.units, want.amount), (r, want)
        assert r.payment_ref == want.ref and r.campaign_id == CID
        if want.rid is not None:
            assert r.reservation_id == want.rid

    # -- rules ---------------------------------------------------------------------------

    @rule(target=requests, sf=st.sampled_from(STOREFRONTS), key=st.sampled_from(KEYS),
          user=st.sampled_from(USERS), product=st.sampled_from([*PRODUCTS, "nope"]), units=st.integers(1, 4))
    def reserve(self, sf: str, key: str, user: str, product: str, units: int) -> Any:
        return self._reserve(sf, key, user, product, units)

    def _reserve(self, sf: str, key: str, user: str, product: str, units: int) -> Any:
        want = self.model.reserve(sf, key, user, product, units)
        got = self.call(self.engine.reserve(CID, ReserveRequest(user, product, units, key, sf)))
        self.check(got, want)
        if isinstance(want, m.Ok) and want.rid is None:
            assert isinstance(got, Outcome)
            self.model.add(got.reservation.reservation_id, sf, key, user, product, units)
        return multiple((sf, key, user, product, units))

    @rule(req=requests)
    def replay_same_body(self, req: tuple[str, str, str, str, int]) -> None:
        self._reserve(*req)

    @rule(req=requests, change=st.sampled_from(["units", "product", "user"]))
    def replay_other_body(self, req: tuple[str, str, str, str, int], change: str) -> None:
        sf, key, user, product, units = req
        if change == "units":
            units = units % 4 + 1
        elif change == "product":
            product = "p2" if product != "p2" else "p1"
        else:
            user = USERS[(USERS.index(user) + 1) % len(USERS)]
        self._reserve(sf, key, user, product, units)

    def _some_rid(self, data: st.DataObject) -> str:
        # in creation order: the ids are random, so sorting them would make the draws flaky
        return data.draw(st.sampled_from([*self.model.reservations, "no-such-reservation"]))

    @rule(data=st.data(), ref=st.sampled_from(REFS), sf=st.sampled_from(STOREFRONTS))
    def confirm(self, data: st.DataObject, ref: str, sf: str) -> None:
        rid = self._some_rid(data)
        self.check(self.call(self.engine.confirm(CID, rid, ref, storefront=sf)), self.model.confirm(rid, ref, sf))

    @rule(data=st.data(), sf=st.sampled_from(STOREFRONTS))
    def cancel(self, data: st.DataObject, sf: str) -> None:
        rid = self._some_rid(data)
        self.check(self.call(self.engine.cancel(CID, rid, storefront=sf)), self.model.cancel(rid, sf))

    @rule(data=st.data(), sf=st.sampled_from(STOREFRONTS))
    def read(self, data: st.DataObject, sf: str) -> None:
        rid = self._some_rid(data)
        r = self.model.mine(rid, sf)
        if r is None:  # unknown, or another storefront's: the same answer
            with pytest.raises(NotFound):
                self.run(self.engine.reservation(CID, rid, storefront=sf))
        else:
            got = self.run(self.engine.reservation(CID, rid, storefront=sf))
            assert (got.state, got.units, got.storefront) == (r.visible_state, r.units, sf)

    @precondition(lambda self: any(r.state == m.HELD and not r.overdue for r in self.model.reservations.values()))
    @rule(data=st.data())
    def overdue(self, data: st.DataObject) -> None:
        held = [r.rid for r in self.model.reservations.values() if r.state == m.HELD and not r.overdue]
        rid = data.draw(st.sampled_from(held))
        self.run(make_overdue(self.redis, CID, rid))
        self.model.make_overdue(rid)
        owner = self.model.reservations[rid].storefront
        assert self.run(self.engine.reservation(CID, rid, storefront=owner)).state == m.EXPIRED

    @rule(limit=st.sampled_from([1, 2, 1000]))
    def expire(self, limit: int) -> None:
        expired = 0
        more = True
        while more:
            n, more = self.run(self.engine.expire_due(CID, limit))
            expired += n
        assert expired == self.model.expire_due()

    @rule()
    def pause(self) -> None:
        assert self.run(self.engine.pause(CID)) == "paused"
        self.model.paused = True

    @rule()
    def resume(self) -> None:
        assert self.run(self.engine.resume(CID)) == "active"
        self.model.paused = False

    @rule()
    def flush_script_cache(self) -> None:
        self.run(self.redis.script_flush())

    # -- invariants (docs/API.md), read from Redis after every step --------------------------

    @invariant()
    def matches_the_model_and_keeps_every_promise(self) -> None:
        self.run(self._check_state())

    async def _check_state(self) -> None:
        model = self.model
        async with self.redis.pipeline(transaction=False) as p:
            p.hgetall(K.reservations)
            p.hgetall(K.idempotency)
            p.zrange(K.holds, 0, -1)
            p.hgetall(K.users)
            p.xrange(K.events)
            raw_res, raw_idem, holds, raw_users, entries = await p.execute()
        c = await self.engine.counters(CID)

        # 1. never oversold, and the counters equal the sum of the holds (and of the orders)
        assert c.sold + c.held <= TOTAL
        assert (c.sold, c.held) == (model.units(state=m.CONFIRMED), model.units(state=m.HELD))
        for pid, pd in PRODUCTS.items():
            assert c.product_sold[pid] + c.product_held[pid] <= pd.total
            assert c.product_sold[pid] == model.units(state=m.CONFIRMED, product=pid)
            assert c.product_held[pid] == model.units(state=m.HELD, product=pid)
        assert c.orders == sum(r.state == m.CONFIRMED for r in model.reservations.values())
        assert c.buyers == model.buyers()
        assert c.rejections == {k: v for k, v in model.rejections.items() if v}

        # 2. no user beyond a cap, and each user's counts are the model's
        users = {text(k): int(v) for k, v in raw_users.items()}
        for u in USERS:
            assert model.taken(u) <= CAMPAIGN_CAP
            assert users.get(f"t|{u}", 0) == model.taken(u)
            assert users.get(f"c|{u}", 0) == model.units(state=m.CONFIRMED, user=u)
            for pid, pd in PRODUCTS.items():
                assert pd.cap is None or model.taken(u, pid) <= pd.cap
                assert users.get(f"t|{u}|{pid}", 0) == model.taken(u, pid)
                assert users.get(f"c|{u}|{pid}", 0) == model.units(state=m.CONFIRMED, user=u, product=pid)
        u = USERS[len(model.events) % len(USERS)]  # the read API, one user a step
        for sf in STOREFRONTS:  # each storefront sees its own units; the caps above count them all
            h = await self.engine.holdings(CID, u, storefront=sf)
            assert (h.held_units, h.confirmed_units) == (model.units(state=m.HELD, user=u, storefront=sf),
                                                         model.units(state=m.CONFIRMED, user=u, storefront=sf))
            for p in h.products:
                assert (p.held_units, p.confirmed_units) == (
                    model.units(state=m.HELD, user=u, storefront=sf, product=p.product_id),
                    model.units(state=m.CONFIRMED, user=u, storefront=sf, product=p.product_id))

        # every record is the model's; the work list holds exactly the holds not yet released
        records = {text(k): msgpack.unpackb(v, raw=False) for k, v in raw_res.items()}
        assert set(records) == set(model.reservations)
        for rid, rec in records.items():
            r = model.reservations[rid]
            assert (rec[0], rec[1], rec[2], rec[3], rec[4]) == (r.state, r.product, r.user, r.units, r.amount)
            assert (rec[9] or None) == r.ref and (rec[7], rec[8]) == (r.storefront, r.key)
        assert {text(h) for h in holds} == {r.rid for r in model.reservations.values() if r.state == m.HELD}

        # 5. one reservation per (storefront, Idempotency-Key)
        assert {text(k): text(v) for k, v in raw_idem.items()} == {
            f"{sf}|{key}": rid for (sf, key), rid in model.idem.items()}

        # 3, 4. the stream carries each transition once: what the ledger will be built from
        events = [decode(CID, eid, fields) for eid, fields in entries]
        got = Counter((e.type, e.reservation_id, e.product_id, e.user_id, e.units, e.amount, e.payment_ref)
                      for e in events)
        want = Counter((e.type, e.rid, e.product, e.user, e.units, e.amount, e.ref) for e in model.events)
        assert got == want
        released = Counter(e.reservation_id for e in events if e.type in ("cancelled", "expired", "confirmed"))
        assert max(released.values(), default=0) <= 1  # units come back (or are sold) exactly once


def test_engine_matches_the_reference_model(redis_url: str) -> None:
    CoreMachine.redis_url = redis_url
    run_state_machine_as_test(CoreMachine, settings=settings.get_profile(PROFILE))
