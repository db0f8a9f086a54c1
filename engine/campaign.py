"""The campaign model: one sale phase of several products, validated on the way in.

A definition arrives as JSON (``PUT /v1/campaigns/{id}``) or as TOML under ``campaigns/``; both
become the same ``Campaign``. Whatever does not hold together raises ``InvalidDefinition`` naming
the field (``products[1].total_units``). Times are kept as UTC instants in ms; the sale window is
judged by Redis ``TIME`` inside the scripts, never by this process's clock.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.errors import InvalidDefinition

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
MAX_UNITS = 10**12  # far beyond any tranche; keeps every counter exact in Lua's doubles
MAX_PRICE = 10**9  # minor units per unit
MAX_HOLD_SECONDS = 7 * 24 * 3600
MAX_PRODUCTS = 64
MAX_AMOUNT = 2**53  # a tranche's worth in minor units stays exact in Lua's doubles
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MAX_TIME_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // _MS  # the last ms of 9999
DEFAULT_RATE_PER_SECOND = 5  # reserve attempts per user per second, sustained
DEFAULT_RATE_BURST = 10  # attempts a user may make at once

_CAMPAIGN_FIELDS = {"id", "title", "currency", "unit_price", "opens_at", "closes_at", "hold_seconds",
                    "total_units", "user_cap_units", "products", "rate_limit"}
_PRODUCT_FIELDS = {"id", "title", "total_units", "user_cap_units"}
_RATE_FIELDS = {"per_second", "burst"}


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    title: str
    total_units: int
    user_cap_units: int | None


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: int
    burst: int


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    title: str
    currency: str
    unit_price: int
    opens_at_ms: int
    closes_at_ms: int
    hold_seconds: int
    total_units: int
    user_cap_units: int | None
    products: tuple[Product, ...]
    rate_limit: RateLimit

    def product(self, product_id: str) -> Product | None:
        return next((p for p in self.products if p.id == product_id), None)

    def to_dict(self) -> dict[str, Any]:
        """The definition as docs/API.md shows it (times in UTC, RFC 3339)."""
        out: dict[str, Any] = {
            "id": self.id, "title": self.title, "currency": self.currency,
            "unit_price": self.unit_price, "opens_at": ms_to_rfc3339(self.opens_at_ms),
            "closes_at": ms_to_rfc3339(self.closes_at_ms), "hold_seconds": self.hold_seconds,
            "total_units": self.total_units,
        }
        if self.user_cap_units is not None:
            out["user_cap_units"] = self.user_cap_units
        out["products"] = [_product_dict(p) for p in self.products]
        out["rate_limit"] = {"per_second": self.rate_limit.per_second, "burst": self.rate_limit.burst}
        return out


def _product_dict(p: Product) -> dict[str, Any]:
    d: dict[str, Any] = {"id": p.id, "title": p.title, "total_units": p.total_units}
    if p.user_cap_units is not None:
        d["user_cap_units"] = p.user_cap_units
    return d


def ms_to_rfc3339(ms: int) -> str:
    """An instant in ms as RFC 3339 UTC with millisecond precision."""
    dt = _EPOCH + timedelta(milliseconds=ms)  # exact: no float seconds on the way
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(value: Any, field: str) -> int:
    """RFC 3339 with an explicit offset -> ms since the epoch, an instant in 1970-01-01..9999-12-31 UTC
    (the scripts and ``ms_to_rfc3339`` count ms from the epoch, never before it)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidDefinition(field, "not an RFC 3339 time, e.g. 2014-03-26T10:00:00+08:00") from None
    else:
        raise InvalidDefinition(field, "must be an RFC 3339 time string")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise InvalidDefinition(field, "needs an offset, e.g. +08:00 or Z")
    try:
        ms = (dt - _EPOCH) // _MS  # exact integer ms (dt.timestamp() * 1000 can be 1 ms off)
    except OverflowError:  # its offset takes it past year 1 or 9999 in UTC
        ms = -1
    if not 0 <= ms <= MAX_TIME_MS:
        raise InvalidDefinition(field, "must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z")
    return ms


def _int(value: Any, field: str, low: int, high: int) -> int:
    # bool is an int in Python; money and units must never be booleans or floats
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidDefinition(field, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidDefinition(field, f"must be between {low} and {high}, got {value}")
    return value


def _id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidDefinition(field, "must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    return value


def _title(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        raise InvalidDefinition(field, "must be a string of 1 to 200 characters")
    return value


def _known(data: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidDefinition(where or "campaign", "must be an object")
    for key in data:
        if key not in allowed:
            raise InvalidDefinition(f"{where}{'.' if where else ''}{key}", "unknown field")
    for key in sorted(required - data.keys()):
        raise InvalidDefinition(f"{where}{'.' if where else ''}{key}", "missing")
    return data


def _product(data: Any, where: str) -> Product:
    d = _known(data, _PRODUCT_FIELDS, {"id", "title", "total_units"}, where)
    cap = d.get("user_cap_units")
    return Product(
        id=_id(d["id"], f"{where}.id"),
        title=_title(d["title"], f"{where}.title"),
        total_units=_int(d["total_units"], f"{where}.total_units", 1, MAX_UNITS),
        user_cap_units=None if cap is None else _int(cap, f"{where}.user_cap_units", 1, MAX_UNITS),
    )


def _rate_limit(data: Any) -> RateLimit:
    if data is None:
        return RateLimit(DEFAULT_RATE_PER_SECOND, DEFAULT_RATE_BURST)
    d = _known(data, _RATE_FIELDS, _RATE_FIELDS, "rate_limit")
    return RateLimit(_int(d["per_second"], "rate_limit.per_second", 1, 1_000_000),
                     _int(d["burst"], "rate_limit.burst", 1, 1_000_000))


def parse(data: Any, *, campaign_id: str | None = None) -> Campaign:
    """Validate a definition (a JSON object or parsed TOML); raises ``InvalidDefinition``."""
    required = {"id", "title", "currency", "unit_price", "opens_at", "closes_at", "hold_seconds",
                "products"}
    if campaign_id is not None and isinstance(data, dict) and "id" not in data:
        data = {**data, "id": campaign_id}
    d = _known(data, _CAMPAIGN_FIELDS, required, "")
    cid = _id(d["id"], "id")
    if campaign_id is not None and cid != campaign_id:
        raise InvalidDefinition("id", f"must equal the id in the path ({campaign_id!r})")
    currency = d["currency"]
    if not isinstance(currency, str) or not CURRENCY_PATTERN.fullmatch(currency):
        raise InvalidDefinition("currency", "must be an ISO 4217 code such as CNY")
    opens = parse_time(d["opens_at"], "opens_at")
    closes = parse_time(d["closes_at"], "closes_at")
    if closes <= opens:
        raise InvalidDefinition("closes_at", "must be after opens_at")
    raw_products = d["products"]
    if not isinstance(raw_products, list) or not 1 <= len(raw_products) <= MAX_PRODUCTS:
        raise InvalidDefinition("products", f"must be a list of 1 to {MAX_PRODUCTS} products")
    products = tuple(_product(p, f"products[{i}]") for i, p in enumerate(raw_products))
    seen: set[str] = set()
    for i, p in enumerate(products):
        if p.id in seen:
            raise InvalidDefinition(f"products[{i}].id", f"duplicate product id {p.id!r}")
        seen.add(p.id)
    product_sum = sum(p.total_units for p in products)
    total = d.get("total_units")
    total_units = product_sum if total is None else _int(total, "total_units", 1, MAX_UNITS)
    for i, p in enumerate(products):
        if p.total_units > total_units:
            raise InvalidDefinition(f"products[{i}].total_units",
                                    f"{p.total_units} exceeds the campaign tranche {total_units}")
    unit_price = _int(d["unit_price"], "unit_price", 1, MAX_PRICE)
    if total_units * unit_price > MAX_AMOUNT:
        raise InvalidDefinition("unit_price", f"total_units × unit_price must not exceed 2^53 minor units, "
                                f"got {total_units} × {unit_price}")
    cap = d.get("user_cap_units")
    return Campaign(
        id=cid,
        title=_title(d["title"], "title"),
        currency=currency,
        unit_price=unit_price,
        opens_at_ms=opens,
        closes_at_ms=closes,
        hold_seconds=_int(d["hold_seconds"], "hold_seconds", 1, MAX_HOLD_SECONDS),
        total_units=total_units,
        user_cap_units=None if cap is None else _int(cap, "user_cap_units", 1, MAX_UNITS),
        products=products,
        rate_limit=_rate_limit(d.get("rate_limit")),
    )


def load_file(path: str | Path) -> Campaign:
    """Read a campaign from a TOML file (the same fields as the JSON definition)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidDefinition(str(path), f"not valid TOML: {exc}") from exc
    for key in ("opens_at", "closes_at"):  # TOML has native datetimes; keep them as instants
        if isinstance(data.get(key), datetime):
            data[key] = data[key].isoformat()
    return parse(data)
