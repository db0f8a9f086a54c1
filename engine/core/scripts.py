"""The Lua scripts: read once from package data, registered once per client.

A script may say ``-- @include NAME`` on a line of its own; the line is replaced by
``engine/lua/includes/NAME.lua`` (the bullmq convention), so helpers shared by several
scripts stand in one file. Registered scripts run by EVALSHA; on NOSCRIPT the same call goes
as EVAL (``run``), which cannot meet NOSCRIPT again and caches the script for the next call.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, cast

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from engine.core.redis_client import Client

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
    def register(cls, client: Client) -> Scripts:
        # RedisCluster has register_script too (its stub types it for Redis only)
        return cls(**{name: client.register_script(source(name)) for name in SCRIPT_NAMES})  # type: ignore[misc]

    async def preload(self, client: Client) -> None:
        """SCRIPT LOAD every script (``/readyz`` checks they are there)."""
        for name in SCRIPT_NAMES:
            script: AsyncScript = getattr(self, name)
            await client.script_load(script.script)

    async def loaded(self, client: Client) -> bool:
        shas = [getattr(self, name).sha for name in SCRIPT_NAMES]
        return all(await client.script_exists(*shas))


async def run(script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA of a registered script; EVAL on NOSCRIPT (redis-py's own retry does SCRIPT LOAD
    then EVALSHA, which a SCRIPT FLUSH in between defeats)."""
    client = script.registered_client
    try:
        return await cast("Awaitable[Any]", client.evalsha(script.sha, len(keys), *keys, *args))
    except NoScriptError:  # the call did not run: repeating it is safe
        text = script.script if isinstance(script.script, str) else bytes(script.script).decode()
        return await cast("Awaitable[Any]", client.eval(text, len(keys), *keys, *args))
