"""The status codes of the Lua scripts and the Python enum are one table."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from engine import errors
from engine.status import PUBLIC_CODE, Status

# a status code: `local NAME = -N` (or OK = 0); positive locals (strides, limits) are not codes
CONSTANT = re.compile(r"^local ([A-Z_]+) = (-\d+|0)\s*(?:--.*)?$", re.MULTILINE)
LUA = resources.files("engine") / "lua"
LUA_FILES = sorted(
    [f"{p.name}" for p in LUA.iterdir() if p.name.endswith(".lua")]
    + [f"includes/{p.name}" for p in (LUA / "includes").iterdir() if p.name.endswith(".lua")])


def constants(name: str) -> dict[str, int]:
    text = (LUA / name).read_text(encoding="utf-8")
    return {k: int(v) for k, v in CONSTANT.findall(text)}


def test_the_files_are_found() -> None:
    assert {"reserve.lua", "confirm.lua", "cancel.lua", "expire.lua", "load.lua", "admin.lua"} <= set(LUA_FILES)


@pytest.mark.parametrize("name", LUA_FILES)
def test_every_lua_constant_matches_the_enum(name: str) -> None:
    for const, value in constants(name).items():
        assert const in Status.__members__, f"{name}: {const} is not in engine.status.Status"
        assert Status[const] == value, f"{name}: {const} = {value}, but Status.{const} = {Status[const].value}"


def test_every_rejection_code_is_used_by_some_script() -> None:
    used = {c for name in LUA_FILES for c in constants(name)}
    assert set(Status.__members__) - used == set()


def test_the_parser_sees_what_it_should() -> None:
    assert constants("reserve.lua")["SOLD_OUT"] == -7
    assert constants("confirm.lua") == {"OK": 0, "RESERVATION_NOT_FOUND": -3, "INVALID_STATE": -11,
                                        "DAMAGED_RECORD": -15}


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.OK])
def test_every_rejection_maps_to_an_exception_with_its_public_code(status: Status) -> None:
    exc = errors.rejection(status, "7", "c1")
    if isinstance(exc, errors.StorageUnavailable):
        assert PUBLIC_CODE[status] == "UNAVAILABLE"
    else:
        assert exc.code == PUBLIC_CODE[status]
        assert str(exc)


def test_rejection_details() -> None:
    exc = errors.rejection(Status.INSUFFICIENT_STOCK, "7", "c1")
    assert isinstance(exc, errors.InsufficientStock) and exc.details == {"remaining": 7}
    exc = errors.rejection(Status.USER_CAP_EXCEEDED, "2", "c1")
    assert isinstance(exc, errors.UserCapExceeded) and exc.details == {"allowed": 2}
    exc = errors.rejection(Status.RATE_LIMITED, "150", "c1")
    assert isinstance(exc, errors.RateLimited) and exc.retry_after_ms == 150
    with pytest.raises(ValueError, match="not a rejection"):
        errors.rejection(Status.OK, "", "c1")
