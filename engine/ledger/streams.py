"""The writer's side of the campaign streams: one consumer group, ``ledger``, on each of them.

An entry read by a writer stays in the group's pending list until that writer acknowledges it,
which it does only after the batch holding it has committed. Entries a writer took and never
acknowledged (it died, or the database refused a row) are claimed by any writer once idle longer
than ``claim_idle_ms``; a writer working on a batch for longer (the database is down and it keeps
retrying) refreshes the idle time of the entries it still holds (``ledger_touch.lua``: ``XCLAIM …
JUSTID`` of only those still pending to it, which does not count as a delivery). A writer that
stalled past ``claim_idle_ms`` finds its entries claimed by another writer and leaves them there:
a refresh never takes back an entry another consumer holds. An entry delivered ``max_deliveries``
times that is still unacknowledged goes to the dead-letter stream ``fs:dead``, which keeps the
newest ``keys.DEAD_LETTERS_MAX`` entries (what is trimmed off is counted in ``fs:dead:trimmed``
and logged by the writer).

Trimming removes only what every group on a stream has acknowledged: below the oldest pending
entry and at most up to the last entry delivered (``XTRIM MINID``; never ``MAXLEN ~``).

Reads and acknowledgements, the per-entry work, go over the core's lean connections
(``engine.core.wire``: a reply is hiredis's lists, no per-entry dict or per-argument encoding);
for a Redis they cannot reach (TLS, …) redis-py does the same.

On a Redis Cluster each campaign's stream lives in its campaign's slot, and one XREADGROUP may
name only streams of one slot: a read is one XREADGROUP per slot (streams sharing a slot share
it), all sent in one cluster pipeline, which redis-py splits into one round trip per master, in
parallel, following MOVED/ASK. Those reads do not block (a blocking read would hold a master's
connection, and the other masters' replies, for its whole wait): when every stream came back
empty the read sleeps ``CLUSTER_POLL_MS`` instead. A dead letter is two steps there, parked in
``fs:dead`` (its own slot) and then acknowledged: a crash in between parks it twice, never loses
it. The writer's scripts go as EVALSHA, then EVAL on NOSCRIPT (a promoted replica may not have
them). A read whose reply was lost (a master failed over) left its entries pending to this consumer:
they are claimed again once idle, as after any crash; the ledger skips what it already holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ResponseError

from engine import keys
from engine.core.redis_client import Client
from engine.core.scripts import run, source
from engine.core.wire import Arg, Wire, command
from engine.ledger.sink import entry_key

GROUP = "ledger"  # the consumer group every writer joins
CONSUMER_GC_IDLE_MS = 600_000  # a consumer with nothing pending, silent this long, is removed
CLUSTER_POLL_MS = 50  # on a cluster, the pause after a read that found nothing new (reads do not block)


class Entry(NamedTuple):
    stream: str
    campaign_id: str
    entry_id: str
    fields: list[bytes]  # flat, as Redis sends them: name, value, name, value, …


Run = tuple[str, str, list[Any]]  # (stream, campaign id, its entries as Redis sent them: [id, [fields]])


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def next_id(entry_id: str) -> str:
    ms, seq = entry_key(entry_id)
    return f"{ms}-{seq + 1}"


def registered(client: Client, name: str) -> AsyncScript:
    """``engine/lua/NAME.lua`` registered on ``client`` (redis-py's script works on a cluster
    client too, routed by its first key; its stubs type ``self`` as a plain client)."""
    return cast("aioredis.Redis", client).register_script(source(name))


def is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class Streams:
    """Consumer-group operations over the streams of the campaigns a writer knows."""

    def __init__(self, redis: Client, consumer: str, *, batch_size: int, claim_idle_ms: int,
                 max_deliveries: int, timeout_s: float = 30.0, dead_max: int = keys.DEAD_LETTERS_MAX) -> None:
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        self.dead_max = dead_max
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.streams: dict[str, str] = {}  # stream key -> campaign id
        self._touch = registered(redis, "ledger_touch")
        # two connections: an acknowledgement never waits behind a blocking read
        plain = redis if isinstance(redis, aioredis.Redis) else None
        self._reads = None if plain is None else Wire.for_client(plain, timeout_s)
        self._acks = None if plain is None else Wire.for_client(plain, timeout_s)

    def close(self) -> None:
        for wire in (self._reads, self._acks):
            if wire is not None:
                wire.close()

    async def watch(self, campaign_ids: Iterable[str]) -> list[str]:
        """Follow exactly these campaigns, creating the group where missing; returns the new ones."""
        wanted = {keys.CampaignKeys(c).events: c for c in campaign_ids}
        new = [c for k, c in wanted.items() if k not in self.streams]
        for key, cid in wanted.items():
            if key not in self.streams:
                await self.ensure_group(key)
            self.streams[key] = cid
        for key in set(self.streams) - set(wanted):
            del self.streams[key]
        return new

    async def ensure_group(self, key: str) -> None:
        try:
            await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ensure_all(self) -> None:
        for key in self.streams:
            await self.ensure_group(key)

    def _run(self, key: Any, items: Iterable[Any]) -> tuple[Run, list[bytes]]:
        """((stream, campaign, entries), ids of entries whose content is gone); each entry as
        [id, flat fields] (a dict of fields, from redis-py, is flattened)."""
        stream = _text(key)
        cid = self.streams.get(stream) or keys.campaign_of_stream(stream)
        out: list[Any] = []
        gone: list[bytes] = []
        for item in items:
            fields = item[1]
            if fields is None:
                gone.append(item[0])
            elif isinstance(fields, dict):
                out.append([item[0], [x for kv in fields.items() for x in kv]])
            else:
                out.append(item)
        return (stream, cid, out), gone

    async def read(self, *, block_ms: int | None, after: dict[str, str] | None = None) -> list[Run]:
        """New entries (``>``); or, with ``after`` (stream -> id), this consumer's own pending
        entries past those ids (what it had taken before a restart under the same name)."""
        if not self.streams:
            return []
        streams = list(self.streams)
        starts = [">"] * len(streams) if after is None else [after.get(k, "0") for k in streams]
        if self.cluster:
            resp = await self._read_per_slot(streams, starts)
            if not resp and block_ms is not None:
                await asyncio.sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)
        elif self._reads is not None:
            args: list[Arg] = ["XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch_size]
            if block_ms is not None:
                args += ["BLOCK", block_ms]
            resp = await self._reads.call(command(*args, "STREAMS", *streams, *starts))
        else:
            resp = await self.redis.xreadgroup(GROUP, self.consumer, dict(zip(streams, starts, strict=True)),
                                               count=self.batch_size, block=block_ms)
        out: list[Run] = []
        for key, items in resp or []:
            run, gone = self._run(key, items)
            if run[2]:
                out.append(run)
            if gone:  # deleted under our feet: nothing left to persist
                await self.redis.xack(_text(key), GROUP, *gone)
        return out

    async def _read_per_slot(self, streams: list[str], starts: list[str]) -> list[Any]:
        """One XREADGROUP per slot, in one pipeline (a round trip per master, in parallel). A read
        that failed while others brought entries is left for the next round; if all failed, or
        none brought anything, the first error is raised."""
        slots: dict[int, list[int]] = {}
        for i, key in enumerate(streams):
            slots.setdefault(key_slot(key.encode()), []).append(i)
        async with self.redis.pipeline(transaction=False) as p:
            for idx in slots.values():
                p.execute_command("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch_size, "STREAMS",
                                  *(streams[i] for i in idx), *(starts[i] for i in idx))
            replies = await p.execute(raise_on_error=False)
        resp: list[Any] = []
        errors = [r for r in replies if isinstance(r, Exception)]
        for r in replies:
            if r and not isinstance(r, Exception):
                resp.extend(r)
        if errors and not resp:
            raise errors[0]
        return resp

    async def claim(self) -> tuple[list[Run], list[tuple[Entry, int]]]:
        """Entries idle longer than ``claim_idle_ms``: (to retry, [(to dead-letter, deliveries)])."""
        retry: list[Run] = []
        dead: list[tuple[Entry, int]] = []
        for key in list(self.streams):
            stuck = await self.redis.xpending_range(key, GROUP, "-", "+", self.batch_size, idle=self.claim_idle_ms)
            if not stuck:
                continue
            deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in stuck}
            spent = [eid for eid, n in deliveries.items() if n >= self.max_deliveries]
            if spent:
                # XCLAIM moves only entries still idle: two writers never dead-letter the same one
                claimed = await self.redis.xclaim(key, GROUP, self.consumer, self.claim_idle_ms, cast("Any", spent))
                (stream, cid, items), _ = self._run(key, claimed)
                dead += [(Entry(stream, cid, _text(eid), fields), deliveries[_text(eid)]) for eid, fields in items]
            resp = await self.redis.xautoclaim(key, GROUP, self.consumer, self.claim_idle_ms, "0-0",
                                               count=self.batch_size)
            run, gone = self._run(key, resp[1])
            if run[2]:
                retry.append(run)
            if gone:
                await self.redis.xack(key, GROUP, *gone)
        return retry, dead

    async def ack(self, ids: dict[str, list[bytes]]) -> None:
        """Acknowledge entries (stream -> ids), one XACK per stream."""
        if self._acks is not None:
            wire = self._acks
            # hiredis packs the command in C (its stub types it as a 1-tuple)
            await asyncio.gather(*(wire.call(pack_command(cast("Any", (b"XACK", key, GROUP, *eids))))
                                   for key, eids in ids.items()))
        elif ids:
            async with self.redis.pipeline(transaction=False) as p:
                for stream, eids in ids.items():
                    p.xack(stream, GROUP, *eids)
                await p.execute()

    async def touch(self, ids: dict[str, list[bytes]]) -> int:
        """Reset the idle time of entries this writer is still working on and still holds (no
        delivery counted); an entry another writer claimed meanwhile stays with it. Returns the
        entries refreshed."""
        refreshed = 0
        for stream, eids in ids.items():
            refreshed += int(await run(self._touch, [stream], [GROUP, self.consumer, *eids]))
        return refreshed

    async def dead_letter(self, entry: Entry, reason: str, deliveries: int) -> int:
        """Park an entry in ``fs:dead`` and acknowledge it, in one MULTI (the original fields as
        ``f.*``); ``fs:dead`` is trimmed to its newest ``dead_max`` entries, the count trimmed
        added to ``fs:dead:trimmed``. Returns the entries trimmed off."""
        fields: dict[str | bytes, str | bytes | int] = {
            "campaign": entry.campaign_id, "stream": entry.stream, "id": entry.entry_id,
            "reason": reason[:1000], "deliveries": deliveries, "consumer": self.consumer,
        }
        flat = entry.fields
        for k, v in zip(flat[0::2], flat[1::2], strict=True):
            fields[b"f." + k] = v
        if self.cluster:  # fs:dead and the stream live in different slots: park, then acknowledge
            async with self.redis.pipeline(transaction=True) as p:
                p.xadd(keys.DEAD_LETTERS, cast("Any", fields))
                p.xtrim(keys.DEAD_LETTERS, maxlen=self.dead_max, approximate=False)
                trimmed = int((await p.execute())[-1])
            async with self.redis.pipeline(transaction=True) as p:
                p.xack(entry.stream, GROUP, entry.entry_id)
                p.hincrby(keys.CampaignKeys(entry.campaign_id).ledger, "dead_letters", 1)
                await p.execute()
        else:
            trimmed = await self._dead_letter_at_once(entry, fields)
        if trimmed:
            await self.redis.incrby(keys.DEAD_LETTERS_TRIMMED, trimmed)
        return trimmed

    async def _dead_letter_at_once(self, entry: Entry, fields: dict[str | bytes, str | bytes | int]) -> int:
        async with self.redis.pipeline(transaction=True) as p:
            p.xadd(keys.DEAD_LETTERS, cast("Any", fields))
            p.xack(entry.stream, GROUP, entry.entry_id)
            p.hincrby(keys.CampaignKeys(entry.campaign_id).ledger, keys.Ledger.DEAD_LETTERS, 1)
            p.xtrim(keys.DEAD_LETTERS, maxlen=self.dead_max, approximate=False)
            return int((await p.execute())[-1])

    async def idle(self) -> bool:
        """Nothing pending in any stream (with a read of ``>`` that came back empty: all drained)."""
        for key in self.streams:
            if await self.pending(key):
                return False
        return True

    async def pending(self, key: str) -> int:
        summary = await self.redis.xpending(key, GROUP)
        return int(summary["pending"])

    async def trim(self) -> int:
        """Trim each stream below what every group has acknowledged; returns the entries removed."""
        removed = 0
        for key in list(self.streams):
            floor = await acked_floor(self.redis, key)
            if floor is not None:
                removed += int(await self.redis.xtrim(key, minid=floor, approximate=False))
        return removed

    async def forget_dead_consumers(self) -> None:
        for key in list(self.streams):
            try:
                consumers = await self.redis.xinfo_consumers(key, GROUP)
            except ResponseError:
                continue  # the stream went away (an archived campaign): the next refresh forgets it
            for c in consumers:
                name = _text(c["name"])
                if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) > CONSUMER_GC_IDLE_MS:
                    await self.redis.xgroup_delconsumer(key, GROUP, name)


async def acked_floor(redis: Client, key: str) -> str | None:
    """The lowest entry id some group on ``key`` still needs (None: no group, trim nothing)."""
    try:
        groups = await cast("Awaitable[list[dict[str, Any]]]", redis.xinfo_groups(key))
    except ResponseError:
        return None  # no such stream
    floor: tuple[int, int] | None = None
    for g in groups:
        # last-delivered-id only grows: read before XPENDING, it is never past what is needed
        need = entry_key(next_id(_text(g["last-delivered-id"])))
        first = (await redis.xpending(key, g["name"]))["min"] if int(g["pending"]) else None
        if first is not None:
            need = min(need, entry_key(_text(first)))
        floor = need if floor is None or need < floor else floor
    return None if floor is None else f"{floor[0]}-{floor[1]}"
