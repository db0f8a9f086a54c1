"""Pre-registration: one registration per user (and per identity under an identity cap), taken
only before ``opens_at``. One row at a time from the API, or in bulk from an import: the same
script (``register.lua``) judges every row, many rows per call and many calls per round trip."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import NoScriptError

from engine import keys
from engine.admission.buyer import Buyer
from engine.admission.definitions import Definition, Definitions
from engine.admission.scripts import AdmissionScripts
from engine.core.scripts import run
from engine.errors import BuyerCapExceeded, InvalidRequest, rejection
from engine.status import Status

ROWS_PER_CALL = 1000  # rows one register.lua call carries in an import
CALLS_PER_ROUND_TRIP = 8  # script calls pipelined together


def identity_of(d: Definition, buyer: Buyer) -> str:
    """The identity the campaign's rules need ('' when it sets no identity cap: not kept)."""
    if d.campaign.identity_cap_units is None:
        return ""
    if buyer.identity is None:
        raise InvalidRequest("buyer.identity", "required: this campaign caps units per identity")
    return buyer.identity


@dataclass
class ImportResult:
    registered: int = 0
    already: int = 0
    refused: list[int] = field(default_factory=list)  # row indexes whose identity is another user's


class Registry:
    def __init__(self, definitions: Definitions, scripts: AdmissionScripts) -> None:
        self.definitions = definitions
        self.scripts = scripts
        self.redis = definitions.redis

    async def register(self, campaign_id: str, user_id: str, buyer: Buyer) -> bool:
        """Register a user: True when new, False when already registered; raises ``Closed`` at or
        after ``opens_at``, ``BuyerCapExceeded`` when the identity is another user's."""
        k = keys.CampaignKeys(campaign_id)
        for _ in range(2):  # once more if the definition was replaced meanwhile
            d = await self.definitions.read(campaign_id)
            identity = identity_of(d, buyer)
            capped = "1" if identity else "0"
            reply = await run(self.scripts.register, [k.meta, k.registrations],
                              [d.fingerprint, capped, 1, user_id, identity])
            if reply[0] != Status.DEFINITION_CHANGED:
                break
        if reply[0] != 0:
            raise rejection(reply[0], "", campaign_id)
        if reply[1] == Status.BUYER_CAP_EXCEEDED:
            raise BuyerCapExceeded("this identity is registered under another user", "identity", 0)
        return bool(reply[1] == 1)

    async def conflicts(self, campaign_id: str, d: Definition,
                        rows: Sequence[tuple[str, str]]) -> list[tuple[int, str]]:
        """Rows that Redis would refuse as things stand: (row index, the other user) for each
        identity already registered to another user. Read-only."""
        if d.campaign.identity_cap_units is None:
            return []
        k = keys.CampaignKeys(campaign_id)
        out: list[tuple[int, str]] = []
        for start in range(0, len(rows), ROWS_PER_CALL * CALLS_PER_ROUND_TRIP):
            chunk = rows[start:start + ROWS_PER_CALL * CALLS_PER_ROUND_TRIP]
            holders = await cast("Awaitable[list[bytes | None]]",
                                 self.redis.hmget(k.registrations, [f"i|{identity}" for _, identity in chunk]))
            for offset, ((user, _), holder) in enumerate(zip(chunk, holders, strict=True)):
                if holder is not None and holder.decode() != user:
                    out.append((start + offset, holder.decode()))
        return out

    async def register_many(self, campaign_id: str, d: Definition,
                            rows: Sequence[tuple[str, str]]) -> ImportResult:
        """Register rows of (user id, identity) in batches; ``Closed`` (or ``NotFound``) before
        any row is written when the campaign refuses registrations."""
        k = keys.CampaignKeys(campaign_id)
        capped = "1" if d.campaign.identity_cap_units is not None else "0"
        await self.scripts.preload(self.redis)
        result = ImportResult()
        per_trip = ROWS_PER_CALL * CALLS_PER_ROUND_TRIP
        for start in range(0, len(rows), per_trip):
            batches = [rows[i:i + ROWS_PER_CALL] for i in range(start, min(start + per_trip, len(rows)),
                                                                  ROWS_PER_CALL)]
            replies = await self._pipelined(k, d.fingerprint, capped, batches)
            offset = start
            for batch, reply in zip(batches, replies, strict=True):
                if reply[0] != 0:
                    raise rejection(reply[0], "", campaign_id)
                for i, r in enumerate(reply[1:]):
                    if r == 1:
                        result.registered += 1
                    elif r == 0:
                        result.already += 1
                    else:
                        result.refused.append(offset + i)
                offset += len(batch)
        return result

    async def _pipelined(self, k: keys.CampaignKeys, fingerprint: str, capped: str,
                         batches: list[Sequence[tuple[str, str]]]) -> list[Any]:
        sha = self.scripts.register.sha
        async with self.redis.pipeline(transaction=False) as p:
            for batch in batches:
                argv: list[Any] = [fingerprint, capped, len(batch)]
                for user, identity in batch:
                    argv += [user, identity]
                # the command, not p.evalsha: a cluster pipeline refuses that method
                p.execute_command("EVALSHA", sha, 2, k.meta, k.registrations, *argv)
            try:
                return list(await p.execute())
            except NoScriptError:  # flushed since the preload: load again, the calls did not run
                await self.scripts.preload(self.redis)
                raise
