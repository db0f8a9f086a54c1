"""``flashsale export holders ID``: the holder register, the input for settling the yield."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import orjson

from engine.ledger.sink import Holder

FIELDS = ("user_id", "product_id", "units", "amount")


def holders_csv(holders: Sequence[Holder]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FIELDS)
    w.writerows((h.user_id, h.product_id, h.units, h.amount) for h in holders)
    return out.getvalue()


def holders_json(campaign_id: str, holders: Sequence[Holder]) -> str:
    body = {
        "campaign_id": campaign_id,
        "holders": [{"user_id": h.user_id, "product_id": h.product_id, "units": h.units, "amount": h.amount}
                    for h in holders],
        "total_units": sum(h.units for h in holders),
        "total_amount": sum(h.amount for h in holders),
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n"
