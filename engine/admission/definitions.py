"""The stored definition as the admission part reads it: parsed once per distinct definition,
with its fingerprint (hex SHA-1 of the stored JSON), which the admission scripts compare with
what they find, so that a definition replaced between the read and the script is never judged
by the old one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from engine.campaign import Campaign, parse
from engine.core import reads
from engine.errors import NotFound

MAX_CACHED = 256  # distinct definitions kept parsed per process


@dataclass(frozen=True, slots=True)
class Definition:
    campaign: Campaign
    fingerprint: str


class Definitions:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._parsed: dict[bytes, Definition] = {}

    def of(self, raw: bytes) -> Definition:
        d = self._parsed.get(raw)
        if d is None:
            if len(self._parsed) >= MAX_CACHED:
                self._parsed.clear()
            d = self._parsed[raw] = Definition(parse(orjson.loads(raw)), hashlib.sha1(raw).hexdigest())
        return d

    async def read(self, campaign_id: str) -> Definition:
        raw = await reads.definition(campaign_id).run(self.redis)
        if raw is None:
            raise NotFound("campaign", campaign_id)
        return self.of(raw)
