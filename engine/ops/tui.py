"""``flashsale stats ID [--watch]``: the stats body as rich tables, once or live.

The figures come from a ``StatsSource``: the Engine over Redis (``FLASHSALE_REDIS_URL``), or a
running API (``--url``, reading ``GET /v1/campaigns/ID/stats`` with a token).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Protocol

import httpx
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine.core import Engine
from engine.errors import FlashsaleError, NotFound, StorageUnavailable
from engine.ops.stats import campaign_stats

HTTP_TIMEOUT_S = 5.0
STATE_STYLE = {"open": "bold green", "paused": "bold yellow", "closed": "bold red", "scheduled": "cyan"}


class StatsSource(Protocol):
    async def fetch(self, campaign_id: str) -> dict[str, Any]: ...


class EngineSource:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def fetch(self, campaign_id: str) -> dict[str, Any]:
        return await campaign_stats(self.engine, campaign_id)


class HttpSource:
    """Reads the stats endpoint of a running API."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str | None) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def fetch(self, campaign_id: str) -> dict[str, Any]:
        url = f"{self.base_url}/v1/campaigns/{campaign_id}/stats"
        try:
            res = await self.client.get(url, headers=self.headers, timeout=HTTP_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"cannot reach {url}: {exc!r}") from exc
        if res.status_code == 404:
            raise NotFound("campaign", campaign_id)
        if res.status_code in (401, 403):
            raise FlashsaleError(f"{url} refused the token ({res.status_code}): pass --token or set "
                                 "FLASHSALE_ADMIN_TOKEN")
        if res.status_code != 200:
            raise StorageUnavailable(f"{url} answered {res.status_code}: {res.text[:200]}")
        body: dict[str, Any] = res.json()
        return body


def _n(value: int | float) -> str:
    return f"{value:,}"


def _when(iso: str | None, as_of: str) -> str:
    if not iso:
        return "—"
    delta = datetime.fromisoformat(iso) - datetime.fromisoformat(as_of)
    return f"{iso}  (in {max(int(delta.total_seconds()), 0)} s)"


def render(s: dict[str, Any]) -> RenderableType:
    """The stats body as a header, a sell-through bar and three tables."""
    head = Text.assemble((s["campaign_id"], "bold"), "  ", (s["state"], STATE_STYLE.get(s["state"], "")),
                         ("  as of " + s["as_of"], "dim"))
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(s["total_units"], 1), completed=s["sold_units"], width=50),
                Text(f"{s['sell_through'] * 100:.2f}% sold", style="bold"))
    totals = Table(title="tranche", show_header=False, title_justify="left")
    totals.add_column(style="dim")
    totals.add_column(justify="right")
    ledger = s["ledger"]
    for label, value in (("sold units", _n(s["sold_units"])), ("held units", _n(s["held_units"])),
                         ("remaining units", _n(s["remaining_units"])), ("tranche", _n(s["total_units"])),
                         ("buyers", _n(s["buyers"])), ("units/s (1 min)", f"{s['units_per_second_1m']:.2f}"),
                         ("projected sell-out", _when(s["projected_sellout_at"], s["as_of"])),
                         ("ledger persisted orders", _n(ledger["persisted_orders"])),
                         ("ledger lag (orders)", _n(ledger["lag_orders"]))):
        totals.add_row(label, value)
    products = Table(title="products", title_justify="left")
    for col in ("product", "sold", "held", "remaining", "allotted"):
        products.add_column(col, justify="left" if col == "product" else "right")
    for p in s["products"]:
        products.add_row(p["product_id"], _n(p["sold_units"]), _n(p["held_units"]), _n(p["remaining_units"]),
                         _n(p["total_units"]))
    rejections = Table(title="rejections", title_justify="left")
    rejections.add_column("code")
    rejections.add_column("count", justify="right")
    for code, count in s["rejections"].items():
        rejections.add_row(code, Text(_n(count), style="red" if count else ""))
    side = Table.grid(padding=(0, 3))
    side.add_row(totals, rejections)
    return Group(head, bar, side, products)


async def show(source: StatsSource, campaign_id: str, console: Console) -> None:
    console.print(render(await source.fetch(campaign_id)))


async def watch(source: StatsSource, campaign_id: str, console: Console, interval_s: float,
                count: int | None = None) -> None:
    """Refresh the tables every ``interval_s`` until interrupted (or ``count`` refreshes)."""
    from rich.live import Live

    done = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while count is None or done < count:
            try:
                view: RenderableType = render(await source.fetch(campaign_id))
            except NotFound:
                raise
            except FlashsaleError as exc:  # keep watching through a Redis or API outage
                view = Panel(Text(str(exc), style="red"), title="stats unavailable")
            live.update(view, refresh=True)
            done += 1
            if count is None or done < count:
                await asyncio.sleep(interval_s)
