"""Buyer signals: validation naming the field, and the network a buyer cap counts."""

from __future__ import annotations

from typing import Any

import pytest

from engine.admission.buyer import Buyer, parse_buyer
from engine.errors import InvalidRequest


def test_signals_and_networks() -> None:
    b = parse_buyer({"identity": "9f86d081", "device": "d-7c1e", "ip": "203.0.113.7"})
    assert b == Buyer("9f86d081", "d-7c1e", "203.0.113.7") and b.network == "203.0.113.0/24"
    assert parse_buyer({"ip": "2001:db8:abcd:12::1"}).network == "2001:db8:abcd::/48"
    assert parse_buyer({"ip": "::ffff:198.51.100.9"}).network == "198.51.100.0/24"
    assert parse_buyer(None) == Buyer() and parse_buyer({}).network is None


@pytest.mark.parametrize(("value", "field"), [
    ("x", "buyer"), ([], "buyer"), ({"name": "x"}, "buyer.name"), ({"identity": ""}, "buyer.identity"),
    ({"identity": "x" * 129}, "buyer.identity"), ({"device": "é"}, "buyer.device"), ({"device": 7}, "buyer.device"),
    ({"identity": "a\nb"}, "buyer.identity"), ({"ip": "203.0.113.256"}, "buyer.ip"),
    ({"ip": "fe80::1%eth0"}, "buyer.ip"),
    ({"ip": "example.com"}, "buyer.ip"), ({"ip": "010.1.2.3"}, "buyer.ip"), ({"ip": "1.2.3"}, "buyer.ip"),
    ({"ip": "1:2:3:4:5:6:7:8:9"}, "buyer.ip"), ({"ip": " 1.2.3.4"}, "buyer.ip"),
    ({"ip": None, "identity": True}, "buyer.identity"),
])
def test_bad_signals_are_refused_naming_the_field(value: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_buyer(value)
    assert info.value.field == field
