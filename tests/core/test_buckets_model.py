"""A Hypothesis state machine drives bucketed stock (``engine.core.buckets``) on one Redis (the
buckets' tags work on one node as on a cluster) beside a simple model: moves, refills, borrows,
crashes between a transfer's debit and its credit and between its credit and its settle, and the
recovery. After every step each location's free units must be the model's, and for every field
Σ bucket stock + reserve + in flight = tranche (nothing is held or sold at this layer yet).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine import keys
from engine.core.buckets import BucketStock, InFlight, fields_of
from tests.core.conftest import campaign

pytestmark = [pytest.mark.needs_services, pytest.mark.timeout(300)]
PRODUCTS = {"p1": 20, "p2": 15}
TOTAL, N = 30, 3
FIELDS = ["all", *(f"p|{p}" for p in PRODUCTS)]
LOCATIONS = ["reserve", *(f"b{b}" for b in range(N))]  # the model's names of the stock hashes


@dataclass
class Flight:
    t: InFlight
    destination: str
    credited: bool = False


@dataclass
class Model:
    free: dict[str, dict[str, int]] = field(default_factory=dict)
    flights: list[Flight] = field(default_factory=list)

    def available(self, loc: str, product: str) -> int:
        return min(self.free[loc][f] for f in fields_of(product))

    def take(self, loc: str, product: str, n: int) -> None:
        for f in fields_of(product):
            self.free[loc][f] -= n

    def give(self, loc: str, fields: tuple[str, ...], n: int) -> None:
        for f in fields:
            self.free[loc][f] += n


class BucketMachine(RuleBasedStateMachine):
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.stock = BucketStock(self.redis, campaign(
            "bm", total_units=TOTAL, stock_buckets=N,
            products=[{"id": p, "title": p, "total_units": u} for p, u in PRODUCTS.items()]))
        self.model = Model()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()

    def where(self, loc: str) -> keys.StockKeys:
        return self.stock.reserve if loc == "reserve" else self.stock.buckets[int(loc[1:])]

    async def read(self) -> dict[str, dict[str, int]]:
        t = await self.stock.tally()
        return {loc: {f: (t[f].reserve if loc == "reserve" else t[f].buckets[int(loc[1:])]) for f in FIELDS}
                for loc in LOCATIONS}

    @initialize()
    def seed(self) -> None:
        self.run(self.redis.flushall())
        assert self.run(self.stock.seed())
        self.model.free = self.run(self.read())  # the seed's shares: checked against the tranche below

    @rule(src=st.sampled_from(LOCATIONS), dst=st.sampled_from(LOCATIONS), product=st.sampled_from(list(PRODUCTS)),
          want=st.integers(1, 12), least=st.integers(1, 12), crash=st.sampled_from(["none", "debit", "credit"]))
    def move(self, src: str, dst: str, product: str, want: int, least: int, crash: str) -> None:
        least = min(least, want)
        can = min(want, self.model.available(src, product))
        t = self.run(self.stock.debit(self.where(src), self.where(dst), want, least, fields_of(product)))
        if can < least:
            assert t is None
            return
        assert t is not None and t.units == can
        self.model.take(src, product, can)
        flight = Flight(t, dst)
        self.model.flights.append(flight)
        if crash == "debit":  # the process dies after the debit
            return
        credited = self.run(self.stock.credit(t))
        assert credited == 0
        self.model.give(dst, t.fields, t.units)
        flight.credited = True
        if crash == "credit":  # ... or after the credit, before the settle
            return
        assert self.run(self.stock.finish(t))  # credit again (a no-op) and clear
        self.model.flights.remove(flight)

    @precondition(lambda self: bool(self.model.flights))
    @rule(data=st.data())
    def a_retry_finishes_one(self, data: st.DataObject) -> None:
        flight = data.draw(st.sampled_from(self.model.flights))
        assert self.run(self.stock.finish(flight.t))
        if not flight.credited:
            self.model.give(flight.destination, flight.t.fields, flight.t.units)
        self.model.flights.remove(flight)

    @rule()
    def recover(self) -> None:
        finished, undone = self.run(self.stock.recover())
        assert (finished, undone) == (len(self.model.flights), 0)
        for flight in self.model.flights:
            if not flight.credited:
                self.model.give(flight.destination, flight.t.fields, flight.t.units)
        self.model.flights.clear()

    @rule(bucket=st.integers(0, N - 1), product=st.sampled_from(list(PRODUCTS)))
    def refill(self, bucket: int, product: str) -> None:
        loc, have = f"b{bucket}", self.model.available(f"b{bucket}", product)
        moved = self.run(self.stock.refill(bucket, product))
        if have >= self.stock.low_water(product):
            assert moved == 0
        else:
            assert moved == min(self.stock.step(product), self.model.available("reserve", product))
        self.model.take("reserve", product, moved)
        self.model.give(loc, tuple(fields_of(product)), moved)

    @rule(bucket=st.integers(0, N - 1), product=st.sampled_from(list(PRODUCTS)), units=st.integers(1, 25))
    def borrow(self, bucket: int, product: str, units: int) -> None:
        anywhere = sum(self.model.available(loc, product) for loc in LOCATIONS)
        have = self.run(self.stock.borrow(bucket, product, units))
        # never short while the campaign has the units outside flight; never more than it has
        assert min(units, anywhere) <= have <= anywhere
        self.model.free = self.run(self.read())  # where the units came from is borrow's choice

    @invariant()
    def conserved(self) -> None:
        if not self.model.free:
            return
        got = self.run(self.read())
        assert got == self.model.free
        t = self.run(self.stock.tally())
        for name in FIELDS:
            assert t[name].total == self.stock.tranche(name), (name, t[name])
            mine = sum(f.t.units for f in self.model.flights if not f.credited and name in f.t.fields)
            assert t[name].in_flight == mine


def test_bucketed_stock_matches_the_model(redis_url: str) -> None:
    BucketMachine.redis_url = redis_url
    run_state_machine_as_test(BucketMachine, settings=settings(
        max_examples=30, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
