"""Status codes returned by the Lua scripts, mirrored once in Python.

Each Lua script declares the codes it returns as ``local NAME = -N`` lines at its top;
``tests/core/test_status.py`` checks every such line against this enum. ``0`` is success; a negative code is a named
business outcome, never a Lua ``error()``.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    OK = 0
    CAMPAIGN_NOT_FOUND = -1
    PRODUCT_NOT_FOUND = -2
    RESERVATION_NOT_FOUND = -3
    NOT_OPEN = -4
    CLOSED = -5
    PAUSED = -6
    SOLD_OUT = -7
    INSUFFICIENT_STOCK = -8  # detail: units remaining
    USER_CAP_EXCEEDED = -9  # detail: units the user may still take
    IDEMPOTENCY_KEY_REUSED = -10
    INVALID_STATE = -11  # detail: the reservation's (or campaign's) current state
    ALREADY_OPEN = -12  # a campaign that has opened cannot be replaced
    RECOVERING = -13  # the campaign is being rebuilt from the ledger
    RATE_LIMITED = -14  # detail: ms until the next attempt is allowed
    DAMAGED_RECORD = -15  # detail: the reservation id; a stored record no script can read (a server fault)
    # admission (engine.admission: register.lua, queue_join.lua, queue_rate.lua)
    QUEUE_NOT_OPEN = -21  # before queue_opens_at
    NOT_REGISTERED = -22  # eligibility "registered" and the user is not
    BUYER_CAP_EXCEEDED = -23  # detail: the dimension ("identity"); from reserve.lua "dimension|allowed"
    QUEUED_ELSEWHERE = -24  # the user (or identity) holds a ticket of another storefront
    DEFINITION_CHANGED = -25  # the definition was replaced since the caller read it: re-read, retry
    # the reserve path of v1.1 (reserve.lua): queue mode, buyer caps
    ADMISSION_REQUIRED = -26  # queue mode and the reserve carried no admission token
    ADMISSION_INVALID = -27  # queue mode and the token did not verify (the API verified it)
    ADMISSION_EXPIRED = -28  # queue mode and the token's expiry has passed, by Redis TIME
    BUYER_SIGNAL_MISSING = -29  # detail: the field (``buyer.identity``) a buyer cap of the campaign needs


#: The public error code (docs/API.md) of each rejection, as counted in ``counters`` (``rej|CODE``).
PUBLIC_CODE: dict[Status, str] = {
    Status.CAMPAIGN_NOT_FOUND: "NOT_FOUND",
    Status.PRODUCT_NOT_FOUND: "NOT_FOUND",
    Status.RESERVATION_NOT_FOUND: "NOT_FOUND",
    Status.NOT_OPEN: "NOT_OPEN",
    Status.CLOSED: "CLOSED",
    Status.PAUSED: "PAUSED",
    Status.SOLD_OUT: "SOLD_OUT",
    Status.INSUFFICIENT_STOCK: "INSUFFICIENT_STOCK",
    Status.USER_CAP_EXCEEDED: "USER_CAP_EXCEEDED",
    Status.IDEMPOTENCY_KEY_REUSED: "IDEMPOTENCY_KEY_REUSED",
    Status.INVALID_STATE: "INVALID_STATE",
    Status.ALREADY_OPEN: "INVALID_STATE",
    Status.RECOVERING: "UNAVAILABLE",
    Status.RATE_LIMITED: "RATE_LIMITED",
    Status.DAMAGED_RECORD: "INTERNAL",
    Status.QUEUE_NOT_OPEN: "QUEUE_NOT_OPEN",
    Status.NOT_REGISTERED: "NOT_REGISTERED",
    Status.BUYER_CAP_EXCEEDED: "BUYER_CAP_EXCEEDED",
    Status.QUEUED_ELSEWHERE: "INVALID_STATE",
    Status.DEFINITION_CHANGED: "UNAVAILABLE",
    Status.ADMISSION_REQUIRED: "ADMISSION_REQUIRED",
    Status.ADMISSION_INVALID: "ADMISSION_INVALID",
    Status.ADMISSION_EXPIRED: "ADMISSION_EXPIRED",
    Status.BUYER_SIGNAL_MISSING: "INVALID",
}
