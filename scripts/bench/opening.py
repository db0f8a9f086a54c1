"""The opening of a queue-mode campaign with half a million tickets: the longest Redis call.

    python -m scripts.bench.opening [--tickets 500000] [--prequeue-s 240] [--polls 20000] [--no-write]

On a private redis-server (no AOF): a queue-mode campaign whose sale opens ``--prequeue-s`` from
now; ``--tickets`` pre-queue tickets taken through ``AdmissionService.join`` (as many as fit before
10 s ahead of the opening). Then, from the opening on, what the waiting room asks of Redis when
the order becomes fixed: ``--polls`` tickets' first polls through a fresh worker (each reads its
ticket through ``queue_seen.lua``), the campaign's admission block and stats, a live rate change,
1,000 joins behind the pre-queue, and ``flashsale export queue`` of the whole queue (paged).

Redis's ``SLOWLOG`` logs every call over 1 ms (reset before each phase): per phase the calls made,
those over 1 ms and the longest with its command. The order is fixed by each ticket's draw when it
joins (``queue_join.lua``), so the opening itself runs no call whose cost grows with the queue.
Written into BENCHMARKS.md (section ``opening``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import tempfile
import time
from typing import Any

import redis

from engine import keys
from engine.admission import AdmissionService, Buyer, Keyring
from engine.admission.queue import new_seed, new_ticket_id
from engine.campaign import parse
from engine.core import Engine
from engine.settings import Settings
from scripts.bench.report import write_section
from tests.admission.conftest import KEYS, definition
from tests.support.processes import FLASHSALE
from tests.support.servers import RedisServer

CID = "opening"
THRESHOLD_US = 1000  # SLOWLOG logs calls over this
BATCH = 1000  # joins or polls in flight at once


def slow_calls(r: redis.Redis) -> tuple[int, int, float, str]:
    """(calls processed, calls over the threshold, the longest in ms, its command) since the last
    ``reset``."""
    stats: dict[str, Any] = r.info("stats")  # type: ignore[assignment]
    logged: list[dict[str, Any]] = r.slowlog_get(100_000)  # type: ignore[assignment]
    slow = [e for e in logged if not _t(e["command"]).upper().startswith(("SLOWLOG", "CONFIG"))]
    worst = max(slow, key=lambda e: e["duration"], default=None)
    return (int(stats["total_commands_processed"]), len(slow), worst["duration"] / 1000 if worst else 0.0,
            _t(worst["command"])[:70] if worst else "-")


def reset(r: redis.Redis) -> None:
    r.slowlog_reset()
    r.config_resetstat()


def _t(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


async def pre_queue(url: str, n: int, prequeue_s: int) -> tuple[list[str], float, float]:
    """Tickets taken before 10 s ahead of the opening; (tickets, seconds taken, seconds left). The
    first through ``AdmissionService.join``; the rest through the same script with the same
    arguments, ``BATCH`` calls to a pipeline (the Python around each join would take minutes)."""
    engine = Engine.from_settings(Settings(redis_url=url, redis_timeout_s=30.0))
    try:
        await engine.load_campaign(parse(definition(CID, opens_in_ms=prequeue_s * 1000, admit_per_second=500,
                                                    total_units=1_000_000)))
        opens = time.monotonic() + prequeue_s
        service = AdmissionService(engine, Keyring.parse(KEYS))
        t0 = time.monotonic()
        tickets = [(await service.join(CID, "u0", Buyer(), "shop-a"))[0]]
        d = await service.definitions.read(CID)
        c = d.campaign
        assert c.admission is not None and c.admission.queue_opens_at_ms is not None
        k = keys.CampaignKeys(CID)
        sha = service.scripts.queue_join.sha
        for start in range(1, n, BATCH):
            if time.monotonic() > opens - 10:
                break
            batch = [(new_ticket_id(), f"u{i}") for i in range(start, min(start + BATCH, n))]
            async with engine.redis.pipeline(transaction=False) as p:
                for ticket, user in batch:
                    seed, seed_sha = new_seed()
                    p.execute_command("EVALSHA", sha, 6, k.meta, k.admission, k.tickets, k.queue, k.queue_users,
                                      k.registrations, d.fingerprint, c.admission.queue_opens_at_ms, c.opens_at_ms,
                                      "0", "0", ticket, user, "", "shop-a", seed, seed_sha)
                replies = await p.execute()
            assert all(r[0] == 0 and r[2] == 1 for r in replies), replies[:3]
            tickets += [t for t, _ in batch]
        return tickets, time.monotonic() - t0, opens - time.monotonic()
    finally:
        await engine.close()


async def opening(url: str, tickets: list[str], polls: int) -> dict[str, Any]:
    engine = Engine.from_settings(Settings(redis_url=url, redis_timeout_s=30.0))
    try:
        service = AdmissionService(engine, Keyring.parse(KEYS))  # a fresh worker: nothing in memory
        sample = random.Random(1).sample(tickets, min(polls, len(tickets)))
        answers: list[dict[str, Any]] = []
        for start in range(0, len(sample), BATCH):
            answers += await asyncio.gather(*(service.poll(CID, t, "shop-a") for t in sample[start:start + BATCH]))
        assert all(a["position"] is not None for a in answers)
        view = await engine.view(CID)
        public = await service.public(view.campaign, view.now_ms)
        assert public.get("seed"), "the seed is not revealed: the opening has not passed"
        await service.stats(view.campaign, view.now_ms)
        await service.set_rate(CID, 1000)
        late = await asyncio.gather(*(service.join(CID, f"late{i}", Buyer(), "shop-a") for i in range(1000)))
        last = max([(await service.poll(CID, t, "shop-a"))["position"] for t, _ in late])
        return {"positions": len(answers), "last": last}
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=500_000)
    parser.add_argument("--prequeue-s", type=int, default=240)
    parser.add_argument("--polls", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(directory=tmp).start()
        r = redis.Redis.from_url(server.url)
        try:
            r.config_set("slowlog-log-slower-than", THRESHOLD_US)
            r.config_set("slowlog-max-len", 100_000)
            reset(r)
            tickets, took, left = asyncio.run(pre_queue(server.url, args.tickets, args.prequeue_s))
            rows = [("pre-queue: joins", slow_calls(r))]
            time.sleep(max(0.0, left) + 0.5)  # past the opening (Redis shares this machine's clock)
            reset(r)
            result = asyncio.run(opening(server.url, tickets, args.polls))
            rows.append((f"opening: {args.polls:,} first polls, admission block, stats, rate change, "
                         "1,000 late joins", slow_calls(r)))
            reset(r)
            t0 = time.monotonic()
            out = subprocess.run([FLASHSALE, "export", "queue", CID, "--redis-url", server.url], capture_output=True,
                                 check=True, env={**os.environ, "FLASHSALE_LOG_LEVEL": "WARNING"}).stdout
            exported = time.monotonic() - t0
            rows.append((f"`flashsale export queue` ({len(out) / 2**20:,.0f} MiB in {exported:.0f} s)", slow_calls(r)))
            assert result["last"] == len(tickets) + 1000, result
        finally:
            server.stop()
    body = (f"{len(tickets):,} pre-queue tickets (of {args.tickets:,} asked) taken in {took:.0f} s through "
            f"`queue_join.lua` ({len(tickets) / took:,.0f}/s, {BATCH:,} calls to a pipeline); then, after the "
            f"opening, on a private redis-server with `SLOWLOG` logging every call over "
            f"{THRESHOLD_US / 1000:.0f} ms.\n\n"
            "| phase | Redis commands (with those scripts run) | calls > 1 ms | longest call |\n|---|---:|---:|---|\n")
    for what, (calls, slow, longest, command) in rows:
        body += f"| {what} | {calls:,} | {slow:,} | {longest:.1f} ms (`{command}`) |\n"
    body += ("\nSLOWLOG times a call's execution in wall-clock time: on a shared 2-core host a call the OS "
             "preempts shows as long, so read the count beside the maximum. Load average (1 min) "
             f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.\n")
    print(body)
    if not args.no_write:
        write_section("opening", "Opening a queue of half a million tickets: the longest Redis call",
                      f"python -m scripts.bench.opening --tickets {args.tickets} --prequeue-s {args.prequeue_s} "
                      f"--polls {args.polls}", body)


if __name__ == "__main__":
    main()
