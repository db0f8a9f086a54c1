"""The durable writer: every campaign's stream into the ledger, each entry exactly once.

    writer = Writer(redis, sink, WriterSettings(consumer="w1"))
    await writer.run()        # until stop() (SIGTERM), or, with burst=True, until drained

A reader task reads batches ahead — entries other writers left pending first, then new ones —
and decodes them; committers (one; two for PostgreSQL, so that one sends while the other's
server works) each commit what has been read in one transaction (group commit: a writer that
is behind commits less often, not later), then acknowledge it and publish the campaign's
``persisted_orders`` while the next commit runs. A crash between commit and acknowledgement
redelivers the batch; the sink skips what it holds.

- The database away: the same batch is retried with backoff, nothing is acknowledged, nothing
  more is read; a background task keeps the batch's entries from looking abandoned.
- A row the database refuses: the batch is split until the culprit stands alone; the rest is
  committed and the culprit stays pending, to be retried until it has been delivered
  ``max_deliveries`` times, then dead-lettered. An entry that is not an event at all is
  dead-lettered at once: no retry could decode it.
- ``stop()``: no more reads; the batch in flight finishes (or, if the database is away, is left
  pending for the next writer); ``run`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from redis.exceptions import RedisError, ResponseError

from engine import keys
from engine.core import reads
from engine.core.redis_client import Client
from engine.core.scripts import run
from engine.ledger.config import (
    ACKS_AHEAD,
    READ_AHEAD,
    Backoff,
    Batch,
    WriterSettings,
    WriterStats,
    decode_batch,
    merged,
)
from engine.ledger.health import announce, farewell, progress_script
from engine.ledger.rows import EventRow
from engine.ledger.sink import LedgerUnavailable, RowRejected, Sink
from engine.ledger.streams import Entry, Run, Streams, is_nogroup

__all__ = ["Writer", "WriterSettings", "WriterStats"]

log = logging.getLogger("flashsale.writer")
T = TypeVar("T")
Spans = list[tuple[int, int]]  # index ranges of a batch's rows
LOG_EVERY_S = 5.0  # repeated warnings (database down, Redis away) at most this often


class Writer:
    def __init__(self, redis: Client, sink: Sink, settings: WriterSettings | None = None) -> None:
        self.redis = redis
        self.sink = sink
        self.settings = s = settings or WriterSettings()
        self.streams = Streams(redis, s.consumer, batch_size=s.batch_size, claim_idle_ms=s.claim_idle_ms,
                               max_deliveries=s.max_deliveries, timeout_s=s.block_ms / 1000 + 10)
        self.stats = WriterStats()
        self.database_ok = True
        self._progress = progress_script(redis)
        self._stopping = asyncio.Event()
        self._inflight: list[Batch] = []  # read, not yet acknowledged: kept from looking abandoned
        self._definitions: dict[str, bytes] = {}
        self._due: dict[str, float] = {}
        self._last_log: dict[str, float] = {}
        self._started = time.time()

    def stop(self) -> None:
        """Stop reading; the batches read finish (unless the database is away); ``run`` returns."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> WriterStats:
        """Read ahead (``READ_AHEAD`` batches) while the batch before commits, until stopped or drained."""
        heartbeat = asyncio.create_task(self._heartbeat())
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=READ_AHEAD)
        reader = asyncio.create_task(self._read_loop(queue))
        committers: list[asyncio.Task[None]] = []
        try:
            await self._redis(self._publish_all)
            # as many committers as the sink can use at once (PostgreSQL: one encodes and sends
            # while the other's server works); each commits, then passes the end mark on
            committers = [asyncio.create_task(self._commit_loop(queue)) for _ in range(max(self.sink.concurrency, 1))]
            await asyncio.gather(*committers)
            if reader.done() and not reader.cancelled() and (exc := reader.exception()) is not None:
                raise exc
            await self._redis(self._trim)
            return self.stats
        finally:
            for task in (reader, heartbeat, *committers):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(RedisError, OSError):
                await farewell(self.redis, self.settings.consumer)
            self.streams.close()
            log.info("writer %s stopped: %s", self.settings.consumer, self.stats)

    async def _read_loop(self, queue: asyncio.Queue[Batch | None]) -> None:
        try:
            await self._redis(self._refresh)
            await self._read_own_pending(queue)
            while not self.stopping:
                runs = await self._redis(self._next_batch)
                if runs:
                    await self._enqueue(queue, runs)
                    if self._short(runs):
                        await self._sleep(self.settings.linger_ms / 1000)
                elif self.settings.burst and not self._inflight and await self._redis(self._drained):
                    break
        finally:
            await queue.put(None)

    def _short(self, runs: list[Run]) -> bool:
        """Whether to linger after this read: it came back short of a full batch (the writer has
        caught up), and it is not draining to exit (``burst``)."""
        s = self.settings
        return s.linger_ms > 0 and not s.burst and all(len(items) < s.batch_size for _, _, items in runs)

    async def _enqueue(self, queue: asyncio.Queue[Batch | None], runs: list[Run]) -> None:
        batch = decode_batch(runs)
        self._inflight.append(batch)
        await queue.put(batch)

    async def _commit_loop(self, queue: asyncio.Queue[Batch | None]) -> None:
        """Commit batch after batch; each batch's acknowledgement runs while the next commits."""
        acks: set[asyncio.Task[None]] = set()
        last = False
        try:
            while not last and (batch := await queue.get()) is not None:
                batch, last = self._group(batch, queue)
                if len(acks) >= ACKS_AHEAD:
                    await asyncio.wait(acks, return_when=asyncio.FIRST_COMPLETED)
                try:
                    done, totals = await self._process(batch)
                except BaseException:
                    self._inflight.remove(batch)
                    raise
                if not done:
                    self._inflight.remove(batch)
                    if done is None and self.stopping:
                        return  # the database is away and we are stopping: the rest stays pending
                    continue
                task = asyncio.create_task(self._acknowledge(batch, done, totals))
                acks.add(task)
                task.add_done_callback(acks.discard)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # the end, for the other committers
            if acks:
                await asyncio.gather(*acks)

    def _group(self, batch: Batch, queue: asyncio.Queue[Batch | None]) -> tuple[Batch, bool]:
        """Group commit: the batches already read behind this one join its transaction (a writer
        that is behind commits less often, not later). Returns (the group, the queue ended)."""
        group = [batch]
        while not queue.empty():
            more = queue.get_nowait()
            if more is None:
                return self._merged(group), True
            group.append(more)
        return self._merged(group), False

    def _merged(self, group: list[Batch]) -> Batch:
        if len(group) == 1:
            return group[0]
        one = merged(group)
        for b in group:
            self._inflight.remove(b)
        self._inflight.append(one)
        return one

    async def _acknowledge(self, batch: Batch, done: Spans, totals: dict[str, int]) -> None:
        try:
            # if Redis stays away until we stop, the batch is redelivered later and skipped by the sink
            ids = batch.by_stream(done)
            await self._redis(lambda: self._ack(ids, totals))
            self.stats.batches += 1
            self.stats.events += sum(hi - lo for lo, hi in done)
        finally:
            self._inflight.remove(batch)

    async def _read_own_pending(self, queue: asyncio.Queue[Batch | None]) -> None:
        """Entries this consumer name took before a restart: no need to wait for them to idle."""
        after: dict[str, str] = {}
        while not self.stopping:
            runs = await self._redis(lambda: self.streams.read(block_ms=None, after=after))
            if not runs:
                return
            for stream, _, items in runs:
                after[stream] = items[-1][0].decode()
            await self._enqueue(queue, runs)

    async def _next_batch(self) -> list[Run]:
        await self._periodic("refresh", self.settings.refresh_s, self._refresh)
        await self._periodic("trim", self.settings.trim_interval_s, self._trim)
        if self._tick("claim", max(self.settings.claim_idle_ms / 2000, 0.05)):
            retry, spent = await self.streams.claim()
            for entry, deliveries in spent:
                await self._dead_letter(entry, f"delivered {deliveries} times without being persisted", deliveries)
            if retry:
                return retry
        if not self.streams.streams:
            await self._sleep(self.settings.block_ms / 1000)
            return []
        block = None if self.settings.burst else self.settings.block_ms
        runs = await self.streams.read(block_ms=block)
        if not runs and self.settings.burst:
            await self._sleep(0.02)  # waiting for other writers' pending entries to be claimable
        return runs

    async def _drained(self) -> bool:
        """After a read came back empty: no campaign appeared since, and nothing is pending."""
        before = set(self.streams.streams)
        await self._refresh()
        return set(self.streams.streams) <= before and await self.streams.idle()

    async def _process(self, batch: Batch) -> tuple[Spans | None, dict[str, int]]:
        """Dead-letter what is not an event, persist the rest: (spans of ``batch.rows``
        committed, campaign -> persisted_orders); spans None if the database stayed away until stop."""
        for entry, reason in batch.malformed:
            await self._dead_letter(entry, f"malformed: {reason}", 1)
        if not batch.rows:
            return [], {}
        return await self._persist(batch, 0, len(batch.rows))

    # -- the database ------------------------------------------------------------------------

    async def _persist(self, batch: Batch, lo: int, hi: int) -> tuple[Spans | None, dict[str, int]]:
        """Commit what can be committed of rows lo…hi: (spans stored, campaign -> persisted_orders);
        spans None if the database stayed away until stop."""
        try:
            totals = await self._commit(batch.rows if hi - lo == len(batch.rows) else batch.rows[lo:hi])
        except RowRejected as exc:
            if hi - lo == 1:
                log.error("ledger refused entry %s of %s (left pending, retried until dead-lettered): %s",
                          batch.ids[lo].decode(), batch.streams[lo], exc)
                return [], {}
            half = (lo + hi) // 2
            done_a, totals_a = await self._persist(batch, lo, half)
            if done_a is None:
                return None, {}
            done_b, totals_b = await self._persist(batch, half, hi)
            if done_b is None:
                return None, {}
            return done_a + done_b, {**totals_a, **totals_b}
        if totals is None:
            return None, {}
        return [(lo, hi)], totals

    async def _commit(self, rows: Sequence[EventRow]) -> dict[str, int] | None:
        """Write with retries while the database is away; None if stopped before it came back."""
        backoff = Backoff()
        while True:
            try:
                totals = await self.sink.write(rows)
            except LedgerUnavailable as exc:
                self.database_ok = False
                self.stats.db_retries += 1
                self._warn("db", f"ledger unavailable, retrying the batch of {len(rows)}: {exc}")
                if self.stopping:
                    log.warning("stopping with %d entries not persisted; they stay pending for another writer",
                                len(rows))
                    return None
                await self._sleep(backoff.next())
                continue
            if not self.database_ok:
                log.warning("ledger available again")
            self.database_ok = True
            return totals

    # -- Redis -------------------------------------------------------------------------------

    async def _redis(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis step, riding out outages with backoff (NOGROUP: the groups are re-made).
        Once stopping, an outage abandons the step (returns an empty list): every step is safe to
        leave undone, since unacknowledged entries are redelivered and the sink skips duplicates."""
        backoff = Backoff()
        regroup = False
        while True:
            try:
                if regroup:
                    await self._refresh()
                    await self.streams.ensure_all()
                    regroup = False
                return await fn()
            except ResponseError as exc:
                if is_nogroup(exc):
                    self._warn("nogroup", f"consumer group missing (Redis lost its data?); re-creating: {exc}")
                    regroup = True
                # LOADING after a restart, BUSY with a long script, …: wait, as for an outage
                else:
                    self._warn("redis", f"Redis refused, retrying: {exc}")
                if self.stopping:
                    return cast("T", [])
                await asyncio.sleep(backoff.next())
            except (RedisError, OSError, AttributeError) as exc:
                if isinstance(exc, AttributeError) and not self._cluster_glitch(exc):
                    raise
                self._warn("redis", f"Redis unavailable, retrying: {exc.__class__.__name__}: {exc}")
                if self.stopping:
                    return cast("T", [])
                await asyncio.sleep(backoff.next())

    def _cluster_glitch(self, exc: AttributeError) -> bool:
        """redis-py's cluster client closes every connection when one fails (a master went away):
        a command another task was sending on one of them then fails inside redis-py with an
        AttributeError (its writer gone). On a cluster that is an outage like the first."""
        return self.streams.cluster and "'NoneType' object" in str(exc)

    async def _refresh(self) -> None:
        """Follow every campaign in ``fs:campaigns``; keep each definition in the ledger."""
        raw = await cast("Awaitable[set[bytes]]", self.redis.smembers(keys.CAMPAIGNS))
        cids = sorted(c.decode() for c in raw)
        new = await self.streams.watch(cids)
        if new:
            log.info("following campaigns %s", ", ".join(new))
        for cid in cids:
            definition = await reads.definition(cid).run(self.redis)
            if definition is not None and self._definitions.get(cid) != definition:
                try:
                    await self.sink.save_campaign(cid, definition.decode())
                    self._definitions[cid] = definition
                except LedgerUnavailable as exc:
                    self._warn("db", f"could not save the definition of {cid}, will retry: {exc}")

    async def _publish(self, totals: dict[str, int]) -> None:
        for cid, n in totals.items():
            # EVAL on NOSCRIPT: a master promoted by a failover may not have the script yet
            await run(self._progress, [keys.CampaignKeys(cid).ledger], [n])
            self.stats.persisted[cid] = n

    async def _ack(self, ids: dict[str, list[bytes]], totals: dict[str, int]) -> None:
        """Acknowledge a committed batch and publish persisted_orders, at the same time."""
        await asyncio.gather(self.streams.ack(ids), self._publish(totals))

    async def _publish_all(self) -> None:
        """persisted_orders of every campaign in Redis (an archived one's keys stay gone)."""
        try:
            progress = await self.sink.progress()
        except LedgerUnavailable as exc:
            self._warn("db", f"could not read the ledger's progress: {exc}")
            return
        live = {c.decode() for c in await cast("Awaitable[set[bytes]]", self.redis.smembers(keys.CAMPAIGNS))}
        await self._publish({c: n for c, n in progress.items() if c in live})

    async def _trim(self) -> None:
        self.stats.trimmed += await self.streams.trim()
        await self.streams.forget_dead_consumers()
        # persisted_orders again, from the ledger: a failover may have lost the last one published
        # (a promoted replica that missed it), and a writer with nothing new to commit would
        # never publish it again (never backwards: ledger_progress.lua)
        await self._publish_all()

    async def _dead_letter(self, entry: Entry, reason: str, deliveries: int) -> None:
        trimmed = await self._redis(lambda: self.streams.dead_letter(entry, reason, deliveries))
        self.stats.dead_letters += 1
        if trimmed:
            self._warn("dead-trim", f"{keys.DEAD_LETTERS} is full ({self.streams.dead_max} entries): "
                                    f"its oldest entries are trimmed, counted in {keys.DEAD_LETTERS_TRIMMED}")
        log.error("dead letter: entry %s of %s -> %s (%s)", entry.entry_id, entry.stream, keys.DEAD_LETTERS, reason)

    async def _heartbeat(self) -> None:
        """Liveness, and the batches read but not acknowledged kept from looking abandoned (their
        idle time reset well within ``claim_idle_ms``, however long the database stays away)."""
        every = min(self.settings.heartbeat_s, self.settings.claim_idle_ms / 4000)
        announced = 0.0
        while True:
            try:
                inflight: dict[str, list[bytes]] = {}
                for b in self._inflight:
                    for stream, ids in b.by_stream().items():
                        inflight.setdefault(stream, []).extend(ids)
                if inflight:
                    await self.streams.touch(inflight)
                if time.monotonic() - announced >= self.settings.heartbeat_s:
                    await self._announce()
                    announced = time.monotonic()
            except (RedisError, OSError, AttributeError) as exc:
                if isinstance(exc, AttributeError) and not self._cluster_glitch(exc):
                    raise
                self._warn("redis", f"heartbeat failed: {exc}")
            await asyncio.sleep(every)

    async def _announce(self) -> None:
        s = self.stats
        await announce(self.redis, self.settings.consumer, {
            "pid": os.getpid(), "host": socket.gethostname(), "started_at": int(self._started * 1000),
            "batches": s.batches, "events": s.events, "dead_letters": s.dead_letters,
            "db_retries": s.db_retries, "database_ok": self.database_ok, "campaigns": len(self.streams.streams),
        }, ttl_ms=int(self.settings.heartbeat_s * 5000))

    # -- small helpers -------------------------------------------------------------------------

    def _tick(self, name: str, every_s: float) -> bool:
        now = time.monotonic()
        if now >= self._due.get(name, 0.0):
            self._due[name] = now + every_s
            return True
        return False

    async def _periodic(self, name: str, every_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        if self._tick(name, every_s):
            await fn()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _warn(self, topic: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(topic, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[topic] = now
            log.warning(message)
