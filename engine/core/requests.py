"""What a caller asks of the engine, checked before anything is sent to Redis.

A malformed field raises ``InvalidRequest`` naming it: it must never reach a batched script
call, where it would fail every request sharing that call.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.campaign import MAX_UNITS
from engine.errors import InvalidRequest

if TYPE_CHECKING:  # engine.admission imports engine.core
    from engine.admission.buyer import Buyer
    from engine.admission.tokens import Refusal, Verified

# '|' separates fields in the users and idempotency hashes (engine/keys.py): never in an id
USER_ID = re.compile(r"[^|\x00-\x1f\x7f]{1,255}")
PRINTABLE = re.compile(r"[\x20-\x7e]+")  # printable ASCII
MAX_IDEMPOTENCY_KEY = 255
MAX_PAYMENT_REF = 128
ID_BYTES = 12  # 96 random bits per reservation id


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """One reserve. ``buyer``: the storefront's buyer signals (``engine.admission.buyer``);
    ``admission``: the admission token as the caller verified it (``Keyring.verify`` without
    ``now_ms``: the script judges the expiry by Redis TIME), None when the request carried none.
    The script reads either only for a campaign in queue mode, with eligibility ``registered``
    or with buyer caps (engine/lua/reserve.lua)."""

    user_id: str
    product_id: str
    units: int
    idempotency_key: str
    storefront: str
    buyer: Buyer | None = None
    admission: Verified | Refusal | None = None


def gate_of(req: ReserveRequest) -> str:
    """reserve.lua's 7th value of a request: '' (nothing sent), or the admission (none '', refused
    '-', else its expiry in ms), identity, device and network joined by newlines (a signal is
    printable ASCII: no newline in it)."""
    buyer, admission = req.buyer, req.admission
    if buyer is None and admission is None:
        return ""
    if admission is None:
        a = ""
    elif isinstance(admission, str):  # a Refusal
        a = "-"
    else:
        a = str(admission.expires_at_ms)
    if buyer is None:
        return a + "\n\n\n"
    return "\n".join((a, buyer.identity or "", buyer.device or "", buyer.network or ""))


def check_reserve(req: ReserveRequest) -> None:
    """Raise ``InvalidRequest`` for a field no script should see."""
    if not isinstance(req.user_id, str) or not USER_ID.fullmatch(req.user_id):
        raise InvalidRequest("user_id", "must be 1 to 255 characters, without '|' or control characters")
    if not isinstance(req.product_id, str) or not req.product_id:
        raise InvalidRequest("product_id", "must be a product id of the campaign")
    u = req.units
    if isinstance(u, bool) or not isinstance(u, int) or not 1 <= u <= MAX_UNITS:
        raise InvalidRequest("units", f"must be an integer from 1 to {MAX_UNITS}")
    k = req.idempotency_key
    if not isinstance(k, str) or len(k) > MAX_IDEMPOTENCY_KEY or not PRINTABLE.fullmatch(k):
        raise InvalidRequest("idempotency_key", "must be 1 to 255 printable ASCII characters")
    check_storefront(req.storefront)
    if req.buyer is not None:
        for name in ("identity", "device", "ip"):
            value = getattr(req.buyer, name)
            if value is not None and (not isinstance(value, str) or not PRINTABLE.fullmatch(value)):
                raise InvalidRequest(f"buyer.{name}", "must be 1 to 128 printable ASCII characters")


def check_storefront(storefront: str) -> None:
    if not isinstance(storefront, str) or not storefront or "|" in storefront:
        raise InvalidRequest("storefront", "must be a non-empty name without '|'")


def check_payment_ref(ref: str) -> None:
    if not isinstance(ref, str) or len(ref) > MAX_PAYMENT_REF or not PRINTABLE.fullmatch(ref):
        raise InvalidRequest("payment_ref", f"must be 1 to {MAX_PAYMENT_REF} printable ASCII characters")


class _Ids:
    """Reservation ids: 96 random bits as 24 hex digits, unique across campaigns and processes
    (the ledger's primary key). Random bytes come from the OS in blocks, not per id; a forked
    child drops its parent's block, or both would hand out the same ids."""

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pool, self._pos = b"", 0

    def __call__(self) -> str:
        pos = self._pos
        if pos + ID_BYTES > len(self._pool):
            self._pool, pos = os.urandom(ID_BYTES * 512), 0
        self._pos = pos + ID_BYTES
        return self._pool[pos : pos + ID_BYTES].hex()


new_reservation_id = _Ids()
