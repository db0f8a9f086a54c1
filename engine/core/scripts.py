"""The Lua scripts: read once from package data, registered once per client.

A script may say ``-- @include NAME`` on a line of its own; the line is replaced by
``engine/lua/includes/NAME.lua`` (the bullmq convention), so helpers shared by several
scripts stand in one file. Registered scripts run by EVALSHA and reload on NOSCRIPT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

SCRIPT_NAMES = ("reserve", "confirm", "cancel", "expire", "load", "admin")
_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of ``engine/lua/NAME.lua`` with its includes spliced in."""
    lua = resources.files("engine") / "lua"
    text = (lua / f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: (lua / "includes" / f"{m.group(1)}.lua").read_text(encoding="utf-8"), text)


@dataclass(frozen=True, slots=True)
class Scripts:
    reserve: AsyncScript
    confirm: AsyncScript
    cancel: AsyncScript
    expire: AsyncScript
    load: AsyncScript
    admin: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        return cls(**{name: client.register_script(source(name)) for name in SCRIPT_NAMES})

    async def preload(self, client: aioredis.Redis) -> None:
        """SCRIPT LOAD every script (``/readyz`` checks they are there)."""
        for name in SCRIPT_NAMES:
            script: AsyncScript = getattr(self, name)
            await client.script_load(script.script)

    async def loaded(self, client: aioredis.Redis) -> bool:
        shas = [getattr(self, name).sha for name in SCRIPT_NAMES]
        return all(await client.script_exists(*shas))
