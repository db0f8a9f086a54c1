"""Pre-registration against real Redis: before the opening only, one per user, one per identity
under an identity cap; the CSV import checks the whole file before loading any row."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import keys
from engine.admission import AdmissionService, Buyer
from engine.cli import main
from engine.core import Engine
from engine.errors import BuyerCapExceeded, Closed, InvalidRequest, NotFound
from tests.admission.conftest import load


async def test_register_once_per_user_before_the_opening(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=3_600_000)
    assert await admission.register(cid, "u1", Buyer(identity="id-1")) is True
    assert await admission.register(cid, "u1", Buyer(identity="id-2")) is False  # already: the first stays
    assert await admission.register(cid, "u2", Buyer(identity="id-1")) is True  # no identity cap: allowed
    regs = await engine.redis.hgetall(keys.CampaignKeys(cid).registrations)  # type: ignore[misc]
    assert set(regs) == {b"u|u1", b"u|u2"}


async def test_after_the_opening_registration_is_closed(engine: Engine, admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=-1000)
    with pytest.raises(Closed):
        await admission.register(cid, "u1", Buyer())
    assert await engine.redis.exists(keys.CampaignKeys(cid).registrations) == 0
    with pytest.raises(NotFound):
        await admission.register("nope", "u1", Buyer())


async def test_one_registration_per_identity_under_an_identity_cap(engine: Engine,
                                                                   admission: AdmissionService) -> None:
    cid = await load(engine, opens_in_ms=3_600_000, identity_cap_units=10)
    assert await admission.register(cid, "u1", Buyer(identity="id-1")) is True
    with pytest.raises(BuyerCapExceeded) as info:
        await admission.register(cid, "u2", Buyer(identity="id-1"))
    assert info.value.details == {"dimension": "identity", "allowed": 0}
    with pytest.raises(InvalidRequest) as missing:
        await admission.register(cid, "u3", Buyer())
    assert missing.value.field == "buyer.identity"
    assert await admission.register(cid, "u1", Buyer(identity="id-1")) is False


async def hlen(engine: Engine, key: str) -> int:
    return int(await engine.redis.hlen(key))  # type: ignore[misc]


def _import(redis_url: str, cid: str, path: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["registrations", "import", cid, str(path), "--redis-url", redis_url])
    return result.exit_code, result.stdout, result.stderr


async def test_csv_import_good_rows(engine: Engine, redis_url: str, tmp_path: Path) -> None:
    cid = await load(engine, opens_in_ms=3_600_000, identity_cap_units=10)
    path = tmp_path / "list.csv"
    path.write_text("user_id,identity,ip\n" + "".join(f"u{i},id-{i},10.0.{i % 200}.1\n" for i in range(20_000)))
    code, out, err = await asyncio.to_thread(_import, redis_url, cid, path)
    assert code == 0, err
    assert "20000 registered, 0 already registered" in out
    assert await hlen(engine, keys.CampaignKeys(cid).registrations) == 40_000  # u| and i| fields
    code, out, _ = await asyncio.to_thread(_import, redis_url, cid, path)  # again: nothing new
    assert code == 0 and "0 registered, 20000 already registered" in out


async def test_csv_import_names_every_bad_row_and_loads_nothing(engine: Engine, admission: AdmissionService,
                                                                redis_url: str, tmp_path: Path) -> None:
    cid = await load(engine, opens_in_ms=3_600_000, identity_cap_units=10)
    await admission.register(cid, "earlier", Buyer(identity="taken"))
    path = tmp_path / "list.csv"
    path.write_text("user_id,identity,device\n"
                    "u1,id-1,d1\n"       # 2 good
                    "bad id,id-2,\n"     # 3 bad user id
                    "u3,,d3\n"           # 4 identity missing under an identity cap
                    "u4,id-1,\n"         # 5 identity repeats line 2
                    "u1,id-9,\n"         # 6 user repeats line 2
                    "u7,id-7,é\n"        # 7 bad device
                    "u8,id-8\n"          # 8 two cells
                    "u9,taken,\n"        # 9 identity registered to another user in Redis
                    "u10,id-10,d10\n")   # 10 good
    code, _, err = await asyncio.to_thread(_import, redis_url, cid, path)
    assert code == 1
    named = [line.split(":")[1] for line in err.splitlines() if line.startswith(str(path))]
    assert named == ["3", "4", "5", "6", "7", "8", "9"], err
    assert "nothing loaded" in err
    assert await hlen(engine, keys.CampaignKeys(cid).registrations) == 2  # 'earlier' alone


async def test_csv_import_usage_and_refusals(engine: Engine, redis_url: str, tmp_path: Path) -> None:
    cid = await load(engine, opens_in_ms=3_600_000)
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("uid,identity\nu1,x\n")
    assert (await asyncio.to_thread(_import, redis_url, cid, bad_header))[0] == 2
    assert (await asyncio.to_thread(_import, redis_url, cid, tmp_path / "missing.csv"))[0] == 2
    good = tmp_path / "g.csv"
    good.write_text("user_id\nu1\n")
    assert (await asyncio.to_thread(_import, redis_url, "nope", good))[0] == 1
    opened = await load(engine, cid="c2", opens_in_ms=-1000)
    code, _, err = await asyncio.to_thread(_import, redis_url, opened, good)
    assert code == 1 and "closed" in err
