"""The reserve path of v1.1 in reserve.lua (real Redis, through the Engine): eligibility
"registered" (NOT_REGISTERED) and queue mode (the admission token: required, verified by the
caller, its expiry judged by Redis TIME), decided from the campaign's stored meta."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.admission import AdmissionService, Buyer, Keyring, Refusal, Verified
from engine.campaign import parse
from engine.core import Engine, ReserveRequest
from engine.errors import AdmissionRefused, NotRegistered
from tests.admission.conftest import KEYS, definition, load, now_ms

RING = Keyring.parse(KEYS)


def req(user: str, admission: Verified | Refusal | None = None, key: str | None = None) -> ReserveRequest:
    return ReserveRequest(user, "p1", 1, key or f"k-{user}-{time.monotonic_ns()}", "shop", None, admission)


async def test_only_registered_users_reserve(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=1500, admission={"mode": "open"}, eligibility="registered")
    await admission.register(cid, "u1", Buyer())
    await asyncio.sleep(1.6)  # until the opening (Redis shares this machine's clock)
    assert (await engine.reserve(cid, req("u1"))).reservation.user_id == "u1"
    with pytest.raises(NotRegistered):
        await engine.reserve(cid, req("u2"))
    counters = await engine.counters(cid)
    assert counters.held == 1 and counters.rejections == {"NOT_REGISTERED": 1}


async def test_an_open_campaign_needs_no_registration_or_token(engine: Engine) -> None:
    cid = await load(engine, admission={"mode": "open"})
    await engine.reserve(cid, req("u1"))
    await engine.reserve(cid, req("u2", Refusal.INVALID))  # a token is not looked at in open mode
    assert (await engine.counters(cid)).held == 2


async def test_queue_mode_needs_a_valid_unexpired_token(engine: Engine) -> None:
    cid = await load(engine)
    cases: list[tuple[Verified | Refusal | None, str]] = [
        (None, "ADMISSION_REQUIRED"), (Refusal.INVALID, "ADMISSION_INVALID"),
        (Verified(now_ms() - 1), "ADMISSION_EXPIRED"),
    ]
    for admission, code in cases:
        with pytest.raises(AdmissionRefused) as refused:
            await engine.reserve(cid, req("u1", admission))
        assert refused.value.code == code
    assert (await engine.counters(cid)).held == 0
    token = RING.sign(cid, "u1", now_ms() + 60_000)
    verified = RING.verify(token, cid, "u1")
    assert isinstance(verified, Verified)
    await engine.reserve(cid, req("u1", verified))
    await engine.reserve(cid, req("u1", verified))  # the same user may reserve again while it lasts
    assert (await engine.counters(cid)).held == 2


async def test_a_token_expires_by_redis_time(engine: Engine) -> None:
    cid = await load(engine)
    verified = RING.verify(RING.sign(cid, "u1", now_ms() + 300), cid, "u1")
    assert isinstance(verified, Verified)
    await engine.reserve(cid, req("u1", verified))
    await asyncio.sleep(0.4)
    with pytest.raises(AdmissionRefused) as refused:
        await engine.reserve(cid, req("u1", verified))
    assert refused.value.code == "ADMISSION_EXPIRED"


async def test_the_script_reads_queue_mode_from_the_stored_meta(engine: Engine) -> None:
    """An engine that read the definition before it became queue mode still cannot reserve
    without a token: the script judges by what Redis holds."""
    d = definition(opens_in_ms=1200, admission={"mode": "open"})
    cid = str(d["id"])
    await engine.load_campaign(parse(d))
    await engine.view(cid)  # this engine has read (and cached) the open-mode definition
    await engine.load_campaign(parse(definition(opens_in_ms=1200)))  # replaced: queue mode now
    await asyncio.sleep(1.3)
    with pytest.raises(AdmissionRefused) as refused:
        await engine.reserve(cid, req("u1"))
    assert refused.value.code == "ADMISSION_REQUIRED"
