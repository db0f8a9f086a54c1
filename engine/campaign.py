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
MAX_STOCK_BUCKETS = 64  # buckets one campaign's stock may be spread over (engine.core.buckets)
MAX_AMOUNT = 2**53  # a tranche's worth in minor units stays exact in Lua's doubles
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MAX_TIME_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // _MS  # the last ms of 9999
DEFAULT_RATE_PER_SECOND = 5  # reserve attempts per user per second, sustained
DEFAULT_RATE_BURST = 10  # attempts a user may make at once
MAX_ADMIT_PER_SECOND = 1_000_000  # queue mode: positions admitted per second (0 pauses admission)
MAX_TOKEN_SECONDS = 24 * 3600  # queue mode: how long an admission token stays valid
ELIGIBILITY = ("anyone", "registered")
ADMISSION_MODES = ("open", "queue")

_CAMPAIGN_FIELDS = {"id", "title", "currency", "unit_price", "opens_at", "closes_at", "hold_seconds",
                    "total_units", "user_cap_units", "products", "rate_limit",
                    # v1.1: admission (engine.admission) and buyer caps
                    "eligibility", "admission", "identity_cap_units", "device_cap_units", "network_cap_units",
                    # bucketed stock (engine.core.buckets)
                    "stock_buckets"}
_PRODUCT_FIELDS = {"id", "title", "total_units", "user_cap_units"}
_RATE_FIELDS = {"per_second", "burst"}
_ADMISSION_FIELDS = {"mode", "queue_opens_at", "admit_per_second", "token_seconds"}
_BUYER_CAPS = ("identity_cap_units", "device_cap_units", "network_cap_units")


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
class Admission:
    """How buyers get in: ``open`` (anyone, once the sale opens) or ``queue`` (a waiting room whose
    pre-queue opens at ``queue_opens_at_ms``; the three queue fields are None in open mode)."""

    mode: str
    queue_opens_at_ms: int | None = None
    admit_per_second: int | None = None
    token_seconds: int | None = None

    @property
    def queued(self) -> bool:
        return self.mode == "queue"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.queue_opens_at_ms is not None:
            out["queue_opens_at"] = ms_to_rfc3339(self.queue_opens_at_ms)
            out["admit_per_second"] = self.admit_per_second
            out["token_seconds"] = self.token_seconds
        return out


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
    eligibility: str = "anyone"  # or "registered": only pre-registered users may queue and reserve
    admission: Admission | None = None  # None: open mode, as in v1
    identity_cap_units: int | None = None  # buyer caps (enforced by the reserve script)
    device_cap_units: int | None = None
    network_cap_units: int | None = None
    stock_buckets: int = 1  # buckets the stock is spread over (1: one hash slot, as in v1)

    @property
    def queued(self) -> bool:
        """Queue mode: buyers wait in the waiting room and reserve with an admission token."""
        return self.admission is not None and self.admission.queued

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
        # v1.1 fields only when set: a campaign without them reads exactly as in v1
        if self.eligibility != "anyone":
            out["eligibility"] = self.eligibility
        if self.admission is not None:
            out["admission"] = self.admission.to_dict()
        for name in _BUYER_CAPS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.stock_buckets != 1:
            out["stock_buckets"] = self.stock_buckets
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


def _admission(data: Any, opens_ms: int) -> Admission | None:
    if data is None:
        return None
    d = _known(data, _ADMISSION_FIELDS, {"mode"}, "admission")
    mode = d["mode"]
    if mode not in ADMISSION_MODES:
        raise InvalidDefinition("admission.mode", "must be \"open\" or \"queue\"")
    if mode == "open":
        for key in sorted(d.keys() - {"mode"}):
            raise InvalidDefinition(f"admission.{key}", "only with mode \"queue\"")
        return Admission("open")
    for key in ("queue_opens_at", "admit_per_second", "token_seconds"):
        if key not in d:
            raise InvalidDefinition(f"admission.{key}", "missing (required with mode \"queue\")")
    queue_opens = parse_time(d["queue_opens_at"], "admission.queue_opens_at")
    if queue_opens > opens_ms:
        raise InvalidDefinition("admission.queue_opens_at", "must not be after opens_at")
    return Admission("queue", queue_opens,
                     _int(d["admit_per_second"], "admission.admit_per_second", 0, MAX_ADMIT_PER_SECOND),
                     _int(d["token_seconds"], "admission.token_seconds", 1, MAX_TOKEN_SECONDS))


def _eligibility(value: Any) -> str:
    if value is None:
        return "anyone"
    if value not in ELIGIBILITY:
        raise InvalidDefinition("eligibility", "must be \"anyone\" or \"registered\"")
    return str(value)


def _optional_cap(d: dict[str, Any], name: str) -> int | None:
    value = d.get(name)
    return None if value is None else _int(value, name, 1, MAX_UNITS)


def _stock_buckets(d: dict[str, Any]) -> int:
    """``stock_buckets`` (1..64, default 1). A bucket enforces device and network caps over its own
    buyers only (a device or network is no affinity key), so a bucketed campaign refuses them."""
    buckets = 1 if d.get("stock_buckets") is None else _int(d["stock_buckets"], "stock_buckets", 1,
                                                            MAX_STOCK_BUCKETS)
    if buckets > 1:
        for name in ("device_cap_units", "network_cap_units"):
            if d.get(name) is not None:
                raise InvalidDefinition(name, "not with stock_buckets > 1: a device or network cap is only "
                                              "exact on one bucket")
    return buckets


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
        eligibility=_eligibility(d.get("eligibility")),
        admission=_admission(d.get("admission"), opens),
        identity_cap_units=_optional_cap(d, "identity_cap_units"),
        device_cap_units=_optional_cap(d, "device_cap_units"),
        network_cap_units=_optional_cap(d, "network_cap_units"),
        stock_buckets=_stock_buckets(d),
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
    admission = data.get("admission")
    if isinstance(admission, dict) and isinstance(admission.get("queue_opens_at"), datetime):
        data["admission"] = {**admission, "queue_opens_at": admission["queue_opens_at"].isoformat()}
    return parse(data)
