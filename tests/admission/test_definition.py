"""The v1.1 campaign fields: eligibility, admission, buyer caps; validated naming the field, kept
through to_dict, JSON and TOML; a campaign without them reads exactly as in v1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.campaign import Admission, load_file, parse
from engine.errors import InvalidDefinition

BASE: dict[str, Any] = {
    "id": "c1", "title": "t", "currency": "CNY", "unit_price": 10000,
    "opens_at": "2014-03-26T10:00:00+08:00", "closes_at": "2014-03-31T00:00:00+08:00", "hold_seconds": 900,
    "products": [{"id": "p1", "title": "p", "total_units": 100}],
}
QUEUE = {"mode": "queue", "queue_opens_at": "2014-03-26T09:30:00+08:00", "admit_per_second": 500,
         "token_seconds": 600}
V11 = {"eligibility": "registered", "admission": QUEUE, "identity_cap_units": 10, "device_cap_units": 20,
       "network_cap_units": 200}


def test_the_fields_parse_and_round_trip() -> None:
    c = parse({**BASE, **V11})
    assert c.eligibility == "registered" and c.queued
    assert c.admission == Admission("queue", parse({**BASE})  # 09:30 +08:00 in ms
                                    .opens_at_ms - 30 * 60 * 1000, 500, 600)
    assert (c.identity_cap_units, c.device_cap_units, c.network_cap_units) == (10, 20, 200)
    d = c.to_dict()
    assert d["admission"] == {"mode": "queue", "queue_opens_at": "2014-03-26T01:30:00.000Z",
                              "admit_per_second": 500, "token_seconds": 600}
    assert parse(orjson.loads(orjson.dumps(d))) == c


def test_a_v1_campaign_reads_as_before() -> None:
    c = parse(BASE)
    assert c.eligibility == "anyone" and c.admission is None and not c.queued
    assert set(c.to_dict()) == {"id", "title", "currency", "unit_price", "opens_at", "closes_at",
                                "hold_seconds", "total_units", "products", "rate_limit"}
    assert parse({**BASE, "admission": {"mode": "open"}}).to_dict()["admission"] == {"mode": "open"}


def test_toml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('''id = "c1"
title = "t"
currency = "CNY"
unit_price = 10000
opens_at = 2014-03-26T10:00:00+08:00
closes_at = 2014-03-31T00:00:00+08:00
hold_seconds = 900
eligibility = "registered"
identity_cap_units = 10

[admission]
mode = "queue"
queue_opens_at = 2014-03-26T09:30:00+08:00
admit_per_second = 500
token_seconds = 600

[[products]]
id = "p1"
title = "p"
total_units = 100
''')
    c = load_file(path)
    assert c == parse({**BASE, "eligibility": "registered", "identity_cap_units": 10, "admission": QUEUE})


@pytest.mark.parametrize(("change", "field"), [
    ({"eligibility": "vip"}, "eligibility"),
    ({"admission": "queue"}, "admission"),
    ({"admission": {}}, "admission.mode"),
    ({"admission": {"mode": "lottery"}}, "admission.mode"),
    ({"admission": {"mode": "open", "admit_per_second": 5}}, "admission.admit_per_second"),
    ({"admission": {**QUEUE, "extra": 1}}, "admission.extra"),
    ({"admission": {k: v for k, v in QUEUE.items() if k != "token_seconds"}}, "admission.token_seconds"),
    ({"admission": {**QUEUE, "queue_opens_at": "2014-03-26T10:00:01+08:00"}}, "admission.queue_opens_at"),
    ({"admission": {**QUEUE, "queue_opens_at": "soon"}}, "admission.queue_opens_at"),
    ({"admission": {**QUEUE, "admit_per_second": -1}}, "admission.admit_per_second"),
    ({"admission": {**QUEUE, "admit_per_second": 1.5}}, "admission.admit_per_second"),
    ({"admission": {**QUEUE, "token_seconds": 0}}, "admission.token_seconds"),
    ({"identity_cap_units": 0}, "identity_cap_units"),
    ({"device_cap_units": True}, "device_cap_units"),
    ({"network_cap_units": "5"}, "network_cap_units"),
])
def test_bad_fields_are_refused_naming_them(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidDefinition) as info:
        parse({**BASE, **change})
    assert info.value.field == field


def test_queue_opening_at_the_sale_opening_is_allowed_and_zero_rate_too() -> None:
    c = parse({**BASE, "admission": {**QUEUE, "queue_opens_at": BASE["opens_at"], "admit_per_second": 0}})
    assert c.admission is not None and c.admission.queue_opens_at_ms == c.opens_at_ms
