"""The admission part's Lua scripts (``engine/lua/register.lua``, ``queue_*.lua``), registered once
per client beside the core's, and run the core's way (EVALSHA, EVAL on NOSCRIPT)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from engine.core.scripts import source

SCRIPT_NAMES = ("register", "queue_join", "queue_seed", "queue_rate", "queue_seen")


@dataclass(frozen=True, slots=True)
class AdmissionScripts:
    register: AsyncScript
    queue_join: AsyncScript
    queue_seed: AsyncScript
    queue_rate: AsyncScript
    queue_seen: AsyncScript

    @classmethod
    def register_on(cls, client: aioredis.Redis) -> AdmissionScripts:
        return cls(**{name: client.register_script(source(name)) for name in SCRIPT_NAMES})

    async def preload(self, client: aioredis.Redis) -> None:
        for name in SCRIPT_NAMES:
            script: AsyncScript = getattr(self, name)
            await client.script_load(script.script)
