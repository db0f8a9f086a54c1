"""The waiting room against real Redis: tickets, the order and its recomputation, admission at
the rate, live changes, sold out and back, expiry, and polls answered from memory."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from engine.admission import AdmissionService, Buyer, Keyring, Verified
from engine.admission.queue import draw, recompute
from engine.admission.waiting import REFRESH_S, WaitingRoom
from engine.core import Engine, ReserveRequest
from engine.errors import Closed, InvalidState, NotFound, NotRegistered, QueueNotOpen
from tests.admission.conftest import KEYS, load, now_ms

SEED = "00" * 32  # a fixed seed: the draws, hence the order, are the same on every run


async def settle() -> None:
    await asyncio.sleep(REFRESH_S + 0.05)  # past the poll cache's snapshot


async def until_open(opens_in_s: float, started: float) -> None:
    await asyncio.sleep(max(0.0, opens_in_s - (time.monotonic() - started)) + 0.05)


def ms(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


def spearman(xs: list[int], ys: list[int]) -> float:
    def ranks(v: list[int]) -> list[int]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    rx, ry, n = ranks(xs), ranks(ys), len(xs)
    d2 = sum((a - b) ** 2 for a, b in zip(rx, ry, strict=True))
    return 1 - 6 * d2 / (n * (n * n - 1))


async def test_one_ticket_per_user_and_per_identity(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=3_600_000, identity_cap_units=10)
    t1, new = await admission.join(cid, "u1", Buyer(identity="id-1"), "shop-a")
    assert new and t1.startswith("t") and len(t1) == 33
    assert await admission.join(cid, "u1", Buyer(identity="id-1"), "shop-a") == (t1, False)
    assert await admission.join(cid, "u2", Buyer(identity="id-1"), "shop-a") == (t1, False)  # same person
    t3, new3 = await admission.join(cid, "u3", Buyer(identity="id-3"), "shop-a")
    assert new3 and t3 != t1
    with pytest.raises(InvalidState):  # a ticket of another storefront is never handed over
        await admission.join(cid, "u1", Buyer(identity="id-1"), "shop-b")
    plain = await load(engine, cid="c2", opens_in_ms=3_600_000)  # no identity cap: one per user only
    a, _ = await admission.join(plain, "u1", Buyer(identity="id-1"), "shop-a")
    b, _ = await admission.join(plain, "u2", Buyer(identity="id-1"), "shop-a")
    assert a != b


async def test_queue_not_open_not_registered_closed(engine: Engine, admission: AdmissionService) -> None:
    early = await load(engine, opens_in_ms=3_600_000, queue_opens_in_ms=1_800_000)
    with pytest.raises(QueueNotOpen):
        await admission.join(early, "u1", Buyer(), "shop-a")
    reg = await load(engine, cid="c2", opens_in_ms=3_600_000, eligibility="registered")
    with pytest.raises(NotRegistered):
        await admission.join(reg, "u1", Buyer(), "shop-a")
    await admission.register(reg, "u1", Buyer())
    assert (await admission.join(reg, "u1", Buyer(), "shop-a"))[1] is True
    open_mode = await load(engine, cid="c3", admission={"mode": "open"})
    with pytest.raises(InvalidState):
        await admission.join(open_mode, "u1", Buyer(), "shop-a")
    closed = await load(engine, cid="c4")
    await engine.close_campaign(closed)
    with pytest.raises(Closed):
        await admission.join(closed, "u1", Buyer(), "shop-a")


async def test_join_time_does_not_predict_position_and_the_export_recomputes(
        engine: Engine, admission: AdmissionService) -> None:
    opens_in_s = 6.0
    started = time.monotonic()
    cid = await load(engine, opens_in_ms=int(opens_in_s * 1000), admit_per_second=0)
    assert await admission.commit_seed(cid, SEED) == await admission.commit_seed(cid)  # committed once
    n = 2500
    for start in range(0, n, 250):
        await asyncio.gather(*(admission.join(cid, f"u{i}", Buyer(), "shop-a") for i in range(start, start + 250)))
    before = await admission.export(cid)
    assert before["seed"] is None and before["seed_sha256"]  # committed, not yet revealed
    assert time.monotonic() - started < opens_in_s, "the machine is too slow for this test's pre-queue"
    await until_open(opens_in_s, started)
    late = [(await admission.join(cid, f"late{i}", Buyer(), "shop-a"))[0] for i in range(5)]
    export = await admission.export(cid)
    assert export["seed"] == SEED
    order = [t["user_id"] for t in export["tickets"]]
    assert recompute(export) == order
    assert order[-5:] == [f"late{i}" for i in range(5)]  # behind the pre-queue, in arrival order
    pre = [t for t in export["tickets"] if t["pre_queue"]]
    assert all(t["draw"] == draw(SEED, t["user_id"]) for t in pre) and len(pre) == n
    joined_rank = [int(t["user_id"][1:]) for t in pre]  # u0 joined first, u2499 last
    rho = spearman(joined_rank, [t["position"] for t in pre])
    assert abs(rho) < 0.08, rho  # with this seed: 5 standard errors is 0.1
    # every poll agrees with the export
    positions = {t["user_id"]: t["position"] for t in export["tickets"]}
    polled = await admission.poll(cid, late[0], "shop-a")
    assert polled["position"] == positions["late0"] == n + 1
    export["tickets"][0]["user_id"], export["tickets"][1]["user_id"] = (export["tickets"][1]["user_id"],
                                                                        export["tickets"][0]["user_id"])
    with pytest.raises(ValueError):
        recompute(export)  # a tampered export does not recompute


async def test_admission_follows_positions_at_the_rate(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=-10_000, admit_per_second=2, token_seconds=600)
    tickets = [(await admission.join(cid, f"u{i}", Buyer(), "shop-a"))[0] for i in range(40)]
    views = [await admission.poll(cid, t, "shop-a") for t in tickets]
    assert [v["position"] for v in views] == list(range(1, 41))  # late tickets: arrival order
    admitted = [v["position"] for v in views if v["state"] == "admitted"]
    assert admitted == list(range(1, len(admitted) + 1)) and 20 <= len(admitted) < 40  # a prefix, ~2/s for 10 s
    ring = Keyring.parse(KEYS)
    for i, v in enumerate(views):
        if v["state"] == "admitted":
            verified = ring.verify(v["admission_token"], cid, f"u{i}")
            assert isinstance(verified, Verified)
            assert ring.verify(v["admission_token"], cid, f"u{i + 1}") is not verified  # not another user's
            assert v["ahead"] == 0 and v["poll_after_ms"] > 0
        else:
            assert v["admission_token"] is None and v["state"] == "waiting"
            assert v["ahead"] == v["position"] - 1 - len(admitted) or v["ahead"] >= 0
            assert v["estimated_wait_s"] is not None and v["estimated_wait_s"] >= 0
    again = await admission.poll(cid, tickets[0], "shop-a")
    assert again["admission_token"] == views[0]["admission_token"]  # the same token on every poll


async def test_a_live_rate_change_and_a_pause(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=-1000, admit_per_second=0)
    tickets = [(await admission.join(cid, f"u{i}", Buyer(), "shop-a"))[0] for i in range(10)]
    assert {(await admission.poll(cid, t, "shop-a"))["state"] for t in tickets} == {"waiting"}
    assert (await admission.poll(cid, tickets[0], "shop-a"))["estimated_wait_s"] is None  # paused: no estimate
    await admission.set_rate(cid, 100_000)
    await asyncio.sleep(0.05)
    assert {(await admission.poll(cid, t, "shop-a"))["state"] for t in tickets} == {"admitted"}
    await admission.set_rate(cid, 0)
    more = [(await admission.join(cid, f"v{i}", Buyer(), "shop-a"))[0] for i in range(5)]
    await settle()
    first = [(await admission.poll(cid, t, "shop-a"))["state"] for t in more]
    await settle()
    assert [(await admission.poll(cid, t, "shop-a"))["state"] for t in more] == first == ["waiting"] * 5
    stats = await admission.stats((await engine.view(cid)).campaign, (await engine.view(cid)).now_ms)
    assert stats["admit_per_second"] == 0 and stats["waiting"] + stats["admitted"] == 15
    with pytest.raises(InvalidState):
        await admission.set_rate(await load(engine, cid="c2", admission={"mode": "open"}), 5)


async def test_sold_out_and_back(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=-1000, admit_per_second=0, total_units=1)
    ticket, _ = await admission.join(cid, "u1", Buyer(), "shop-a")
    assert (await admission.poll(cid, ticket, "shop-a"))["state"] == "waiting"
    ring = Keyring.parse(KEYS)  # queue mode: the reserve needs an admission token of its user
    token = ring.verify(ring.sign(cid, "buyer", int(time.time() * 1000) + 60_000), cid, "buyer")
    held = await engine.reserve(cid, ReserveRequest("buyer", "p1", 1, "k1", "shop-a", None, token))
    await settle()
    assert (await admission.poll(cid, ticket, "shop-a"))["state"] == "sold_out"
    await engine.cancel(cid, held.reservation.reservation_id, storefront="shop-a")
    await settle()
    assert (await admission.poll(cid, ticket, "shop-a"))["state"] == "waiting"
    await admission.set_rate(cid, 1000)
    await asyncio.sleep(0.05)
    assert (await admission.poll(cid, ticket, "shop-a"))["state"] == "admitted"


async def test_a_token_expires_after_its_time(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=-5000, admit_per_second=1000, token_seconds=1)
    ticket, _ = await admission.join(cid, "u1", Buyer(), "shop-a")
    view = await admission.poll(cid, ticket, "shop-a")
    assert view["state"] == "admitted"  # a late ticket is admitted when its turn comes, then has 1 s
    await asyncio.sleep(1.1)
    await settle()
    assert (await admission.poll(cid, ticket, "shop-a"))["state"] == "expired"


async def test_the_pre_queue_keeps_its_turn_however_late_it_polls(engine: Engine,
                                                                 admission: AdmissionService) -> None:
    """Before the opening a ticket is told to come back at the opening; after it, positions are
    admitted in order whoever polls when. Pre-queue tickets that do not come back until long after
    their admission (and after a later arrival took its turn) are still admitted, ahead of it, with
    the token's whole time counted from that first poll; the later arrival's counts from its
    admission, which came after its first poll."""
    token_ms = 2000
    started = time.monotonic()
    cid = await load(engine, opens_in_ms=1500, admit_per_second=2, token_seconds=token_ms // 1000)
    early = [(await admission.join(cid, f"u{i}", Buyer(), "shop-a"))[0] for i in range(3)]
    before = await admission.poll(cid, early[0], "shop-a")
    opens_ms = (await engine.view(cid)).campaign.opens_at_ms
    # at the opening, spread over at most half the time the 3 pre-queue tickets take to admit (1.5 s)
    assert before["poll_after_ms"] <= opens_ms - now_ms() + 750 + 200
    await until_open(1.5, started)
    late, _ = await admission.join(cid, "late", Buyer(), "shop-a")  # position 4: admitted 2 s after the opening
    assert (await admission.poll(cid, late, "shop-a"))["state"] == "waiting"  # as the API's join answers
    await asyncio.sleep(max(0.0, (opens_ms + 2100 - now_ms()) / 1000))
    seen_late = await admission.poll(cid, late, "shop-a")
    assert seen_late["state"] == "admitted" and seen_late["position"] == 4
    assert ms(seen_late["token_expires_at"]) == ms(seen_late["admitted_at"]) + token_ms
    # past every pre-queue admission + token_seconds (opens + 1.5 s + 2 s): they poll only now
    await asyncio.sleep(max(0.0, (opens_ms + 3700 - now_ms()) / 1000))
    ring = Keyring.parse(KEYS)
    for i, t in enumerate(early):
        polled_at = now_ms()
        v = await admission.poll(cid, t, "shop-a")
        assert v["state"] == "admitted", v
        assert ms(v["admitted_at"]) < ms(seen_late["admitted_at"])  # admitted before the later arrival
        assert ms(v["token_expires_at"]) >= polled_at + token_ms - 50  # counted from this first poll
        verified = ring.verify(v["admission_token"], cid, f"u{i}")
        assert isinstance(verified, Verified)
        await engine.reserve(cid, ReserveRequest(f"u{i}", "p1", 1, f"k{i}", "shop-a", None, verified))
    assert sorted(v["position"] for v in [await admission.poll(cid, t, "shop-a") for t in early]) == [1, 2, 3]


async def test_polls_come_from_memory_and_tickets_are_private(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=-1000, admit_per_second=0)
    tickets = [(await admission.join(cid, f"u{i}", Buyer(), "shop-a"))[0] for i in range(30)]
    room = WaitingRoom(engine, Keyring.parse(KEYS), max_tickets=10)
    for _ in range(200):
        await room.poll(cid, tickets[0], "shop-a")
    assert room.reads <= 3  # one snapshot, one ticket read (a refresh if the loop was slow)
    for t in tickets:
        await room.poll(cid, t, "shop-a")
    assert len(room._tickets) == 10  # bounded
    with pytest.raises(NotFound):
        await room.poll(cid, tickets[0], "shop-b")  # another storefront's ticket: unknown
    with pytest.raises(NotFound):
        await room.poll(cid, "t" + "0" * 32, "shop-a")
