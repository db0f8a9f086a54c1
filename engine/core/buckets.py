"""Bucketed stock: one campaign's tranche spread over several hash slots (``stock_buckets`` > 1).

A campaign's keys share one hash slot (``engine.keys``), so one hot campaign runs on one Redis
core however many shards a cluster has. A bucketed campaign spreads its stock over
``stock_buckets`` buckets, each its own hash tag, so its reservations spread over the masters.
Nothing here runs for ``stock_buckets`` = 1: such a campaign keeps v1's keys and scripts.

**Placement.** Bucket ``b`` of ``N`` has the tag ``{c:ID#b.s}`` (``keys.BucketKeys``; ``#`` is in no
campaign id, so no campaign's own tag is ever a bucket's). The salt ``s`` is the smallest whose
slot falls in the middle half of the ``b``-th of ``N`` equal slot ranges (``place``): the buckets
land on ``N`` different slots, spread evenly over the slot space, so on a cluster whose masters
hold equal contiguous ranges (what ``redis-cli --cluster create`` makes) ``N`` buckets over ``M``
masters fill every master evenly. Placement is a pure function of the id and ``N``: every process
finds the same keys without reading anything.

**Affinity.** A request goes to bucket ``hash(key) mod N`` (``bucket_of``; BLAKE2b, the same in
every process), the key being the buyer's identity when the campaign has an identity cap, else the
user id. So a user's (or an identity's) reservations, units taken and Idempotency-Keys all live in
one bucket, and the caps are checked in one atomic script as in v1:

- exact: the per-user campaign and product caps (``user_cap_units``), the identity cap (identity
  affinity: one identity, one bucket), Idempotency-Keys (per storefront, user, key);
- refused: ``device_cap_units`` and ``network_cap_units`` on a bucketed campaign
  (``engine.campaign``: 422 ``INVALID``): a device or a network is no affinity key, so a bucket
  could only count its own share of one.

**Stock.** The campaign's own tag holds the *central reserve* (``fs:{c:ID}:stock``), each bucket
its *bucket stock* (``fs:{c:ID#b.s}:stock``); each is a hash of free units, ``all`` (the
campaign's) and ``p|PID`` (a product's), one conserved quantity per field. ``seed`` puts the
whole tranche in the reserve, then fills each bucket with an initial share; a bucket whose free
units fall below ``low_water`` is refilled by ``step`` units from the reserve (``refill``). A
bucket that cannot serve a request the campaign could serve *borrows* (``borrow``): from the
reserve, then from its siblings through the reserve, before anyone answers ``SOLD_OUT`` or
``INSUFFICIENT_STOCK``.

**Moves, exactly once.** Every move (``move``) is two atomic steps on two slots and a settle:

1. ``stock_debit.lua`` on the source: take ``n`` units (at most ``want``, at least ``least``) of
   each field and record transfer ``tid`` as in flight in the source's ``xout`` hash;
2. ``stock_credit.lua`` on the destination: add the ``n`` units, once per ``tid`` (the id is kept
   in the destination's ``xin`` zset ``keys.TRANSFER_KEEP_MS``); a transfer older than
   ``keys.TRANSFER_CREDIT_MS`` is never credited (answer -1);
3. ``stock_settle.lua`` on the source: ``clear`` the in-flight record (credited), or ``undo`` it
   (never credited: its units come back to the source).

Between 1 and 2 the units are *in flight*: counted by the source's ``xout`` record and in no stock
hash. After a crash anywhere, ``recover`` finishes every in-flight transfer (credit, idempotent,
then clear) or, past the credit horizon, undoes it; it is safe beside live moves (every step is
idempotent) and must run within ``TRANSFER_KEEP_MS`` of a crash (after that a credited transfer
whose clear was lost could no longer be told from one never credited). At every instant, for
every field:

    Σ bucket stock + reserve + in flight + held + sold = tranche

(``held`` and ``sold``: the buckets' counters, once reservations run on buckets; ``tally`` reads
the first three).

**Not built yet** (the engine still serves every campaign on its own tag): routing reserve /
confirm / cancel / expire to a bucket's keys (a reservation id naming its bucket), borrowing and
retrying once on a stock refusal before answering ``SOLD_OUT`` / ``INSUFFICIENT_STOCK``, stats
summed over buckets, the writer draining every bucket's stream, ``reconcile`` / ``recover`` /
``archive`` of a bucketed campaign.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from redis.commands.core import AsyncScript
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from engine import keys
from engine.campaign import Campaign
from engine.core.redis_client import Client
from engine.core.scripts import run, source
from engine.keys import BucketKeys, CampaignKeys, StockKeys
from engine.keys import Stock as S

MAX_SALT = 1_000_000  # far beyond any search: the middle half of 1/64 of the slots is 128 slots
INITIAL_SHARE = 2  # seed gives each bucket 1/(INITIAL_SHARE × N) of each product
STEPS = 8  # a refill moves 1/(STEPS × N) of a product (at least one unit)


def _slot(key: str) -> int:
    return key_slot(key.encode())


@lru_cache(maxsize=4096)  # one entry per (campaign, N): bounded like any per-id structure
def place(campaign_id: str, n: int) -> tuple[BucketKeys, ...]:
    """The ``n`` buckets of a campaign: bucket ``b``'s slot lies in the middle half of the ``b``-th
    of ``n`` equal slot ranges."""
    out = []
    width = REDIS_CLUSTER_HASH_SLOTS / n
    for b in range(n):
        lo, hi = b * width + width / 4, b * width + 3 * width / 4
        for salt in range(MAX_SALT):
            bk = BucketKeys(campaign_id, b, salt)
            if lo <= _slot(bk.stock) < hi:
                out.append(bk)
                break
        else:  # pragma: no cover - CRC16 covers every slot long before
            raise RuntimeError(f"no salt places bucket {b} of {n} of {campaign_id!r}")
    return tuple(out)


def bucket_of(campaign: Campaign, user_id: str, identity: str | None = None) -> int:
    """The bucket a request goes to: by identity under an identity cap, else by user id."""
    if campaign.stock_buckets == 1:
        return 0
    key = identity if campaign.identity_cap_units is not None and identity else user_id
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % campaign.stock_buckets


def fields_of(product_id: str) -> list[str]:
    """The fields a unit of a product takes: the campaign's and the product's."""
    return [S.ALL, S.product(product_id)]


@dataclass(frozen=True, slots=True)
class InFlight:
    """A debited transfer, not yet settled (a record of a source's ``xout`` hash)."""

    tid: str
    source: StockKeys
    units: int
    ms: int
    stock: str  # the destination's stock hash key
    transfers_in: str  # ... and its transfers in zset key
    fields: tuple[str, ...]

    @staticmethod
    def parse(tid: str, source: StockKeys, record: str) -> InFlight:
        n, ms, stock, xin, *fields = record.split(",")
        return InFlight(tid, source, int(n), int(ms), stock, xin, tuple(fields))


@dataclass(frozen=True, slots=True)
class Tally:
    """One field's free units: in the reserve, in each bucket, in flight (debited, not credited)."""

    reserve: int
    buckets: tuple[int, ...]
    in_flight: int

    @property
    def total(self) -> int:
        return self.reserve + sum(self.buckets) + self.in_flight


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class BucketStock:
    """The stock of one bucketed campaign: seed, move, refill, borrow, recover, tally."""

    def __init__(self, client: Client, campaign: Campaign) -> None:
        if campaign.stock_buckets < 2:
            raise ValueError(f"campaign {campaign.id!r} is not bucketed (stock_buckets = 1)")
        self.client = client
        self.campaign = campaign
        self.reserve = CampaignKeys(campaign.id)
        self.buckets = place(campaign.id, campaign.stock_buckets)
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(source(name))  # type: ignore[misc]
            for name in ("stock_seed", "stock_debit", "stock_credit", "stock_settle")}

    def _total(self, field: str) -> int:
        if field == S.ALL:
            return self.campaign.total_units
        product = self.campaign.product(field[len(S.PRODUCT):])
        return 0 if product is None else product.total_units

    def step(self, product_id: str) -> int:
        """Units one refill moves of a product."""
        return max(1, self._total(S.product(product_id)) // (STEPS * len(self.buckets)))

    def low_water(self, product_id: str) -> int:
        """A bucket with fewer free units than this (of the product or the campaign) is refilled."""
        return max(1, self.step(product_id) // 2)

    async def _run(self, name: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        return await run(self._scripts[name], keys_, args)

    # -- the two steps and the settle -------------------------------------------------------------

    async def seed(self) -> bool:
        """The tranche into the reserve, then each bucket's initial share of each product. Seeding
        again moves nothing (False)."""
        pairs: list[Any] = [S.ALL, self.campaign.total_units]
        for p in self.campaign.products:
            pairs += [S.product(p.id), p.total_units]
        if not await self._run("stock_seed", [self.reserve.stock], pairs):
            return False
        for p in self.campaign.products:
            share = p.total_units // (INITIAL_SHARE * len(self.buckets))
            if share > 0:
                for bk in self.buckets:
                    await self.move(self.reserve, bk, share, 1, fields_of(p.id))
        return True

    async def debit(self, source: StockKeys, destination: StockKeys, want: int, least: int,
                    fields: Sequence[str]) -> InFlight | None:
        """Step 1: up to ``want`` units of ``fields`` off ``source`` into flight (None: fewer than
        ``least`` free)."""
        tid = uuid.uuid4().hex
        n, ms = await self._run("stock_debit", [source.stock, source.transfers_out],
                                [tid, destination.stock, destination.transfers_in, want, least, *fields])
        if int(n) == 0:
            return None
        return InFlight(tid, source, int(n), int(ms), destination.stock, destination.transfers_in, tuple(fields))

    async def credit(self, t: InFlight) -> int:
        """Step 2 alone: 0 credited now, 1 credited before, -1 past the credit horizon (never)."""
        return int(await self._run("stock_credit", [t.stock, t.transfers_in],
                                   [t.tid, t.units, t.ms, keys.TRANSFER_CREDIT_MS, keys.TRANSFER_KEEP_MS, *t.fields]))

    async def finish(self, t: InFlight) -> bool:
        """Steps 2 and 3: credit the destination (once) and clear the source; past the credit
        horizon, undo on the source instead. True: credited."""
        credited = await self.credit(t)
        await self._run("stock_settle", [t.source.stock, t.source.transfers_out],
                        [t.tid, "clear" if credited >= 0 else "undo"])
        return credited >= 0

    async def move(self, source: StockKeys, destination: StockKeys, want: int, least: int,
                   fields: Sequence[str]) -> int:
        """Move up to ``want`` units (at least ``least``, else none) of each field; the units moved."""
        t = await self.debit(source, destination, want, least, fields)
        if t is None:
            return 0
        return t.units if await self.finish(t) else 0

    async def recover(self) -> tuple[int, int]:
        """Finish or undo every transfer left in flight (after a crash): (finished, undone)."""
        finished = undone = 0
        for src in (self.reserve, *self.buckets):
            for t in await self.in_flight(src):
                if await self.finish(t):
                    finished += 1
                else:
                    undone += 1
        return finished, undone

    async def in_flight(self, src: StockKeys) -> list[InFlight]:
        raw = await cast("Awaitable[dict[Any, Any]]", self.client.hgetall(src.transfers_out))
        return [InFlight.parse(_text(k), src, _text(v)) for k, v in raw.items()]

    # -- policy -------------------------------------------------------------------------------------

    async def free(self, where: StockKeys, product_id: str) -> int:
        """Units of the product ``where`` could give now (the fewer of the campaign's and the product's)."""
        raw = await cast("Awaitable[list[Any]]", self.client.hmget(where.stock, fields_of(product_id)))
        return min(int(v or 0) for v in raw)

    async def refill(self, bucket: int, product_id: str) -> int:
        """One step from the reserve into a bucket running low; the units moved."""
        bk = self.buckets[bucket]
        if await self.free(bk, product_id) >= self.low_water(product_id):
            return 0
        return await self.move(self.reserve, bk, self.step(product_id), 1, fields_of(product_id))

    async def borrow(self, bucket: int, product_id: str, units: int) -> int:
        """Bring a bucket's free units of a product up to ``units`` if the campaign has them: from
        the reserve, then from the sibling buckets through the reserve. The bucket's free units
        after (below ``units`` only when the whole campaign has fewer)."""
        bk, fields = self.buckets[bucket], fields_of(product_id)
        have = await self.free(bk, product_id)
        if have >= units:
            return have
        have += await self.move(self.reserve, bk, max(units - have, self.step(product_id)), 1, fields)
        for sibling in self.buckets:
            if have >= units:
                break
            if sibling is bk:
                continue
            pulled = await self.move(sibling, self.reserve, units - have, 1, fields)
            if pulled:
                have += await self.move(self.reserve, bk, units - have, 1, fields)
        return have

    # -- the invariant ------------------------------------------------------------------------------

    async def tally(self) -> dict[str, Tally]:
        """Each field's free units where they are (reads one slot after another: exact at rest)."""
        names = [S.ALL, *(S.product(p.id) for p in self.campaign.products)]

        async def read(where: StockKeys) -> list[int]:
            raw = await cast("Awaitable[list[Any]]", self.client.hmget(where.stock, names))
            return [int(v or 0) for v in raw]

        reserve = await read(self.reserve)
        buckets = [await read(bk) for bk in self.buckets]
        flying = dict.fromkeys(names, 0)
        for src in (self.reserve, *self.buckets):
            for t in await self.in_flight(src):
                if await cast("Awaitable[Any]", self.client.zscore(t.transfers_in, t.tid)) is None:
                    for f in t.fields:
                        flying[f] += t.units
        return {f: Tally(reserve[i], tuple(b[i] for b in buckets), flying[f]) for i, f in enumerate(names)}

    def tranche(self, field: str) -> int:
        """The field's whole tranche (what ``tally`` must add up to, with held and sold)."""
        return self._total(field)
