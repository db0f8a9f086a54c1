"""``AdmissionService``: the admission part's Python API, beside the Engine (no HTTP here).

    admission = AdmissionService(engine, Keyring.from_env())
    await admission.register(cid, "u1", Buyer(identity="…"))          # pre-registration
    ticket, new = await admission.join(cid, "u1", Buyer(), storefront)  # the waiting room
    body = await admission.poll(cid, ticket, storefront)                # from this worker's memory
    await admission.set_rate(cid, 0)                                    # pause admission

It shares the Engine's Redis client and reads the campaign's counters through the Engine; its
keys (``engine.keys``: ``reg``, ``adm``, ``tix``, ``queue``, ``qusers``) and scripts are its own.
"""

from __future__ import annotations

from typing import Any

from engine import keys
from engine.admission.buyer import Buyer
from engine.admission.definitions import Definitions
from engine.admission.queue import EXPORT_CHUNK, Queue, schedule_of
from engine.admission.registry import Registry
from engine.admission.scripts import AdmissionScripts
from engine.admission.tokens import Keyring
from engine.admission.waiting import WaitingRoom
from engine.campaign import Campaign
from engine.core import Engine
from engine.core.engine import STORAGE_ERRORS
from engine.errors import StorageUnavailable


class _Storage:
    """Redis errors become ``StorageUnavailable`` (503), as in the Engine."""

    def __init__(self, what: str) -> None:
        self.what = what

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and isinstance(exc, STORAGE_ERRORS):
            raise StorageUnavailable(f"Redis did not answer {self.what}: {exc.__class__.__name__}: {exc}; "
                                     "retry") from exc


class AdmissionService:
    def __init__(self, engine: Engine, keyring: Keyring | None) -> None:
        self.engine = engine
        self.keyring = keyring
        self.scripts = AdmissionScripts.register_on(engine.redis)
        self.definitions = Definitions(engine.redis)
        self.registry = Registry(self.definitions, self.scripts)
        self.queue = Queue(self.definitions, self.scripts)
        self.waiting = WaitingRoom(engine, keyring)

    async def register(self, campaign_id: str, user_id: str, buyer: Buyer) -> bool:
        async with _Storage("a registration"):
            return await self.registry.register(campaign_id, user_id, buyer)

    async def join(self, campaign_id: str, user_id: str, buyer: Buyer, storefront: str) -> tuple[str, bool]:
        async with _Storage("a queue join"):
            return await self.queue.join(campaign_id, user_id, buyer, storefront)

    async def poll(self, campaign_id: str, ticket: str, storefront: str) -> dict[str, Any]:
        async with _Storage("a queue poll"):
            return await self.waiting.poll(campaign_id, ticket, storefront)

    async def set_rate(self, campaign_id: str, rate: int) -> None:
        async with _Storage("an admission rate change"):
            await self.queue.set_rate(campaign_id, rate)
        self.waiting.forget(campaign_id)

    async def commit_seed(self, campaign_id: str, seed: str | None = None) -> str:
        async with _Storage("a seed commitment"):
            return await self.queue.commit_seed(campaign_id, seed)

    async def public(self, c: Campaign, now_ms: int) -> dict[str, Any]:
        """The ``admission`` block of ``GET /v1/campaigns/{cid}`` for a queue-mode campaign: the
        definition's fields with the rate in force, ``seed_sha256`` (committing the seed if none
        is yet: the pre-queue's order is fixed by it) and, from ``opens_at`` on, the ``seed``."""
        assert c.admission is not None
        async with _Storage("reading the admission state"):
            fields, _ = await self.queue.state(c.id)
            sha, seed = fields[keys.Admission.SEED_SHA], fields[keys.Admission.SEED]
            seed_sha = sha.decode() if sha else await self.queue.commit_seed(c.id)
        out = c.admission.to_dict()
        out["admit_per_second"] = schedule_of(c, fields[keys.Admission.RATES]).rate_at(now_ms)
        out["seed_sha256"] = seed_sha
        if now_ms >= c.opens_at_ms and seed is not None:
            out["seed"] = seed.decode()
        return out

    async def stats(self, c: Campaign, now_ms: int) -> dict[str, Any]:
        return await queue_stats(self.engine, c, now_ms)

    async def export(self, campaign_id: str, page: int = EXPORT_CHUNK) -> dict[str, Any]:
        async with _Storage("exporting the queue"):
            return await self.queue.export(campaign_id, page)


async def queue_stats(engine: Engine, c: Campaign, now_ms: int) -> dict[str, Any]:
    """The ``queue`` block of the stats body (queue mode): tickets waiting and admitted, the rate
    in force and the seed's hash; one round trip on the Engine's client."""
    k = keys.CampaignKeys(c.id)
    async with _Storage("reading the queue"), engine.redis.pipeline(transaction=False) as p:
        p.hmget(k.admission, [keys.Admission.SEED_SHA, keys.Admission.RATES])
        p.zcard(k.queue)
        (seed_sha, rates), tickets = await p.execute()
    schedule = schedule_of(c, rates)
    admitted = min(schedule.admitted(now_ms), int(tickets))
    return {"waiting": int(tickets) - admitted, "admitted": admitted, "admit_per_second": schedule.rate_at(now_ms),
            "seed_sha256": None if seed_sha is None else seed_sha.decode()}
