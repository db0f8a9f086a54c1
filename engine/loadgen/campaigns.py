"""Campaign definitions for load runs: the Yulebao phase shifted to open in a few seconds, scaled.

Everything but the window (and, when asked, the tranche size and the rate limit) is kept as the
definition file says, so the demo sells what Yulebao sold under the same caps and hold time.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from engine.loadgen.http import Connection, split_url

CAMPAIGNS_DIR = Path(__file__).resolve().parents[2] / "campaigns"
YULEBAO_P1 = CAMPAIGNS_DIR / "yulebao-2014-p1.toml"


def read_definition(path: str | Path = YULEBAO_P1) -> dict[str, Any]:
    """A campaign TOML file as the JSON definition of docs/API.md."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: campaign file not found; pass one with --campaign-file")
    data = tomllib.loads(p.read_text(encoding="utf-8"))
    for key in ("opens_at", "closes_at"):
        if isinstance(data.get(key), datetime):
            data[key] = data[key].isoformat()
    return data


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shifted(definition: dict[str, Any], *, opens_in_s: float, campaign_id: str | None = None,
            units: int | None = None, rate_limit: tuple[int, int] | None = None,
            hold_seconds: int | None = None) -> dict[str, Any]:
    """The same campaign opening ``opens_in_s`` from now (its window's length kept), optionally
    under another id, with its tranche scaled to ``units`` (products in proportion)."""
    d = dict(definition)
    opens = datetime.fromisoformat(str(d["opens_at"]).replace("Z", "+00:00"))
    closes = datetime.fromisoformat(str(d["closes_at"]).replace("Z", "+00:00"))
    new_open = datetime.now(UTC) + timedelta(seconds=opens_in_s)
    d["opens_at"], d["closes_at"] = _rfc3339(new_open), _rfc3339(new_open + (closes - opens))
    if campaign_id:
        d["id"] = campaign_id
    if units is not None:
        d["products"] = _scaled(d["products"], units)
        d["total_units"] = sum(p["total_units"] for p in d["products"])
    if rate_limit is not None:
        d["rate_limit"] = {"per_second": rate_limit[0], "burst": rate_limit[1]}
    if hold_seconds is not None:
        d["hold_seconds"] = hold_seconds
    return d


def _scaled(products: list[dict[str, Any]], units: int) -> list[dict[str, Any]]:
    total = sum(int(p["total_units"]) for p in products)
    out = [dict(p, total_units=max(1, int(p["total_units"]) * units // total)) for p in products]
    out[0]["total_units"] += units - sum(p["total_units"] for p in out)  # rounding goes to the first
    return out


async def put_campaign(url: str, admin_token: str, definition: dict[str, Any]) -> int:
    """``PUT /v1/campaigns/{id}`` with the admin token; returns the status (201 or 200)."""
    host, port, prefix = split_url(url)
    conn = Connection(host, port, token=admin_token)
    try:
        resp = await conn.request(b"PUT", f"{prefix}/v1/campaigns/{definition['id']}",
                                  orjson.dumps(definition), timeout_s=30)
    finally:
        conn.close()
    if resp.status not in (200, 201):
        raise RuntimeError(f"PUT campaign {definition['id']}: {resp.status} {resp.body[:300]!r}")
    return resp.status
