"""Campaign definitions: the shipped TOML files load; every bad definition is refused naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from engine.campaign import Campaign, load_file, ms_to_rfc3339, parse, parse_time
from engine.errors import InvalidDefinition

CAMPAIGNS = Path(__file__).resolve().parents[2] / "campaigns"


def good() -> dict[str, Any]:
    return {
        "id": "yulebao-2014-p1", "title": "娱乐宝 第一期", "currency": "CNY", "unit_price": 10000,
        "opens_at": "2014-03-26T10:00:00+08:00", "closes_at": "2014-03-31T00:00:00+08:00",
        "hold_seconds": 900, "total_units": 920000, "user_cap_units": 10,
        "products": [
            {"id": "tiny-times-3", "title": "小时代3", "total_units": 300000, "user_cap_units": 10},
            {"id": "wolf-totem", "title": "狼图腾", "total_units": 220000},
        ],
    }


@pytest.mark.parametrize("name, cap", [("yulebao-2014-p1", 10), ("yulebao-2014-p2", 20)])
def test_shipped_campaigns_load(name: str, cap: int) -> None:
    c = load_file(CAMPAIGNS / f"{name}.toml")
    assert c.id == name and c.currency == "CNY" and c.unit_price == 10000  # 100 yuan in fen
    assert c.total_units == 920_000 and c.total_units * c.unit_price == 92_000_000 * 100
    assert c.user_cap_units == cap  # 1,000 / 2,000 yuan per user
    assert len(c.products) == 5 and {"小时代3", "狼图腾"} <= {p.title for p in c.products}
    assert c.opens_at_ms < c.closes_at_ms
    assert parse(c.to_dict()) == c  # the stored form reads back the same


def test_api_md_example_parses() -> None:
    c = parse(good())
    assert c.opens_at_ms == 1395799200000  # 2014-03-26T02:00:00Z
    assert c.products[1].user_cap_units is None
    assert c.rate_limit.per_second == 5 and c.rate_limit.burst == 10


def test_total_units_defaults_to_the_products_sum() -> None:
    d = good()
    del d["total_units"]
    assert parse(d).total_units == 520000


def test_times_are_exact_ms_in_utc() -> None:
    assert parse_time("2014-03-26T10:00:00.123+08:00", "t") == 1395799200123
    assert parse_time("2014-03-26T02:00:00Z", "t") == 1395799200000
    for ms in (0, 1395799200123, 1395799200999, 4102444799999):
        assert parse_time(ms_to_rfc3339(ms), "t") == ms
    assert ms_to_rfc3339(1395799200123) == "2014-03-26T02:00:00.123Z"


@pytest.mark.parametrize("value", [
    "1969-12-31T23:59:59.999Z",  # before the epoch: the scripts count ms from it
    "1970-01-01T07:59:59+08:00",  # the same side of the epoch, by its offset
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: OverflowError if not caught
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-00:01",  # past 9999 in UTC
])
@pytest.mark.parametrize("field", ["opens_at", "closes_at"])
def test_times_outside_1970_to_9999_are_refused_naming_the_field(value: str, field: str) -> None:
    d = good()
    d[field] = value
    with pytest.raises(InvalidDefinition) as e:
        parse(d)
    assert e.value.field == field and "1970-01-01" in e.value.reason


def test_times_at_the_ends_of_the_range_are_kept() -> None:
    assert parse_time("1970-01-01T00:00:00Z", "t") == 0
    assert parse_time("1970-01-01T08:00:00+08:00", "t") == 0
    last = parse_time("9999-12-31T23:59:59.999Z", "t")
    assert ms_to_rfc3339(last) == "9999-12-31T23:59:59.999Z"
    d = good()
    d["opens_at"], d["closes_at"] = "1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z"
    c = parse(d)
    assert (c.opens_at_ms, c.closes_at_ms) == (0, last)
    assert parse(c.to_dict()) == c


def test_path_id_must_agree() -> None:
    d = good()
    del d["id"]
    assert parse(d, campaign_id="yulebao-2014-p1").id == "yulebao-2014-p1"
    with pytest.raises(InvalidDefinition) as e:
        parse(good(), campaign_id="other")
    assert e.value.field == "id"


def change(path: str, value: Any) -> dict[str, Any]:
    """good() with the field at ``path`` (``products.0.total_units``) set, or removed if ... ."""
    d = copy.deepcopy(good())
    *parents, last = path.split(".")
    node: Any = d
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return d


BAD: list[tuple[str, Any, str]] = [
    # negative or zero stock
    ("total_units", 0, "total_units"),
    ("total_units", -5, "total_units"),
    ("products.0.total_units", 0, "products[0].total_units"),
    ("products.1.total_units", -1, "products[1].total_units"),
    ("user_cap_units", 0, "user_cap_units"),
    ("products.0.user_cap_units", -3, "products[0].user_cap_units"),
    # closes before (or when) it opens
    ("closes_at", "2014-03-25T00:00:00+08:00", "closes_at"),
    ("closes_at", "2014-03-26T10:00:00+08:00", "closes_at"),
    # unknown fields
    ("colour", "red", "colour"),
    ("products.0.price", 1, "products[0].price"),
    ("rate_limit", {"per_second": 5, "burst": 10, "x": 1}, "rate_limit.x"),
    # float (or string, or bool) money and units
    ("unit_price", 100.0, "unit_price"),
    ("unit_price", "10000", "unit_price"),
    ("unit_price", True, "unit_price"),
    ("total_units", 920000.0, "total_units"),
    ("products.0.total_units", 1e5, "products[0].total_units"),
    ("hold_seconds", 1.5, "hold_seconds"),
    # a product tranche larger than the campaign's
    ("products.0.total_units", 920001, "products[0].total_units"),
    # bad ids
    ("id", "", "id"),
    ("id", "-starts-with-dash", "id"),
    ("id", "has{brace}", "id"),
    ("id", "a" * 65, "id"),
    ("id", 42, "id"),
    ("products.1.id", "wolf|totem", "products[1].id"),
    ("products.1.id", "tiny-times-3", "products[1].id"),  # duplicate
    # missing, wrong types, bad times
    ("title", ..., "title"),
    ("products.0.title", "", "products[0].title"),
    ("products", [], "products"),
    ("products", "many", "products"),
    ("opens_at", "2014-03-26T10:00:00", "opens_at"),  # no offset
    ("opens_at", "next tuesday", "opens_at"),
    ("opens_at", 1395799200, "opens_at"),
    ("currency", "yuan", "currency"),
    ("hold_seconds", 0, "hold_seconds"),
    ("rate_limit", {"per_second": 0, "burst": 10}, "rate_limit.per_second"),
    ("total_units", 10**12, "unit_price"),  # 10^12 units × 10,000 fen exceeds 2^53 minor units
    # bucketed stock: 1..64 buckets, an integer
    ("stock_buckets", 0, "stock_buckets"),
    ("stock_buckets", 65, "stock_buckets"),
    ("stock_buckets", 3.0, "stock_buckets"),
    ("stock_buckets", "3", "stock_buckets"),
]


@pytest.mark.parametrize("path, value, field", BAD, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD])
def test_bad_definitions_are_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(InvalidDefinition) as e:
        parse(change(path, value))
    assert e.value.field == field
    assert e.value.reason and str(e.value).startswith(f"{field}: ")


def test_not_an_object() -> None:
    with pytest.raises(InvalidDefinition) as e:
        parse(["not", "an", "object"])
    assert e.value.field == "campaign"


def test_bad_toml(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text('id = "x"\nunit_price = 1.0\n')
    with pytest.raises(InvalidDefinition):
        load_file(f)
    f.write_text("id = [")
    with pytest.raises(InvalidDefinition, match="not valid TOML"):
        load_file(f)


def test_toml_native_datetimes(tmp_path: Path) -> None:
    text = (CAMPAIGNS / "yulebao-2014-p1.toml").read_text(encoding="utf-8")
    text = text.replace('opens_at = "2014-03-26T10:00:00+08:00"', "opens_at = 2014-03-26T10:00:00+08:00")
    f = tmp_path / "native.toml"
    f.write_text(text, encoding="utf-8")
    c: Campaign = load_file(f)
    assert c.opens_at_ms == 1395799200000
    f.write_text(text.replace("opens_at = 2014-03-26T10:00:00+08:00", "opens_at = 2014-03-26T10:00:00"),
                 encoding="utf-8")
    with pytest.raises(InvalidDefinition) as e:
        load_file(f)
    assert e.value.field == "opens_at"


def test_stock_buckets_defaults_to_one_and_reads_back() -> None:
    assert parse(good()).stock_buckets == 1 and "stock_buckets" not in parse(good()).to_dict()
    c = parse({**good(), "stock_buckets": 3, "identity_cap_units": 5})
    assert c.stock_buckets == 3 and c.to_dict()["stock_buckets"] == 3 and parse(c.to_dict()) == c


@pytest.mark.parametrize("cap", ["device_cap_units", "network_cap_units"])
def test_a_bucketed_campaign_refuses_device_and_network_caps(cap: str) -> None:
    parse({**good(), "stock_buckets": 1, cap: 3})  # one bucket: as before
    with pytest.raises(InvalidDefinition) as e:
        parse({**good(), "stock_buckets": 2, cap: 3})
    assert e.value.field == cap and "stock_buckets" in e.value.reason
