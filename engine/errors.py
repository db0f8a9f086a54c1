"""The exception tree of flashsale.

    FlashsaleError
    ├── InvalidDefinition            a campaign definition that does not hold together (field, reason)
    ├── Rejected                     a business outcome the engine refused (carries ``code``)
    │   ├── InvalidRequest           a request field out of bounds (``field``); changes nothing
    │   ├── NotFound                 campaign, product or reservation (``what``)
    │   ├── NotOpen / Closed / Paused
    │   ├── SoldOut
    │   ├── InsufficientStock        (``remaining``)
    │   ├── UserCapExceeded          (``allowed``)
    │   ├── IdempotencyKeyReused
    │   ├── InvalidState             (``state``)
    │   ├── RateLimited              (``retry_after_ms``)
    │   ├── QueueNotOpen / NotRegistered           admission (``engine.admission``)
    │   ├── BuyerCapExceeded         (``dimension``, ``allowed``)
    │   └── AdmissionRefused         a reserve's admission token (``code``: ADMISSION_*)
    ├── StorageUnavailable           Redis unreachable, slow, or the campaign is recovering
    ├── DamagedRecord                a stored reservation record no script can read (a server fault: 500)
    ├── UnsafeRedis                  Redis is configured so that acknowledged writes may be lost
    └── LedgerError                  the durable ledger refused or failed (``engine.ledger``)
        └── SchemaTooNew

Each exception carries structured fields; the HTTP status of each is decided once, in
``engine.api.errors``.
"""

from __future__ import annotations

from typing import Any

from engine.status import PUBLIC_CODE, Status


class FlashsaleError(Exception):
    """Base of every error flashsale raises on purpose."""


class InvalidDefinition(FlashsaleError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Rejected(FlashsaleError):
    code = "REJECTED"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(Rejected):
    """A request the engine will not send to Redis: a field of the wrong type or out of bounds."""

    code = "INVALID"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", field=field)
        self.field = field
        self.reason = reason


class NotFound(Rejected):
    code = "NOT_FOUND"

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} not found", what=what, id=ident)
        self.what = what


class NotOpen(Rejected):
    code = "NOT_OPEN"


class Closed(Rejected):
    code = "CLOSED"


class Paused(Rejected):
    code = "PAUSED"


class SoldOut(Rejected):
    code = "SOLD_OUT"


class InsufficientStock(Rejected):
    code = "INSUFFICIENT_STOCK"

    def __init__(self, remaining: int) -> None:
        super().__init__(f"only {remaining} units left; ask for fewer", remaining=remaining)
        self.remaining = remaining


class UserCapExceeded(Rejected):
    code = "USER_CAP_EXCEEDED"

    def __init__(self, allowed: int) -> None:
        super().__init__(f"this user may take at most {allowed} more units", allowed=allowed)
        self.allowed = allowed


class IdempotencyKeyReused(Rejected):
    code = "IDEMPOTENCY_KEY_REUSED"


class InvalidState(Rejected):
    code = "INVALID_STATE"

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message, state=state)
        self.state = state


class RateLimited(Rejected):
    code = "RATE_LIMITED"

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("too many reservation attempts by this user; retry later",
                         retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


class QueueNotOpen(Rejected):
    code = "QUEUE_NOT_OPEN"


class NotRegistered(Rejected):
    code = "NOT_REGISTERED"


class BuyerCapExceeded(Rejected):
    code = "BUYER_CAP_EXCEEDED"

    def __init__(self, message: str, dimension: str, allowed: int) -> None:
        super().__init__(message, dimension=dimension, allowed=allowed)
        self.dimension = dimension
        self.allowed = allowed


class AdmissionRefused(Rejected):
    """Queue mode: a reserve without a valid admission token. ``code`` is ``ADMISSION_REQUIRED``,
    ``ADMISSION_INVALID`` or ``ADMISSION_EXPIRED`` (``engine.admission.tokens``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StorageUnavailable(FlashsaleError):
    """Redis could not be reached in time; the caller may retry with the same Idempotency-Key."""


class DamagedRecord(FlashsaleError):
    """A stored reservation record that cannot be decoded, or has fields of the wrong type or shape.
    Not the caller's fault, and a retry will not mend it: the API answers 500 ``INTERNAL``."""

    code = "INTERNAL"

    def __init__(self, campaign_id: str, reservation_id: str) -> None:
        super().__init__(f"campaign {campaign_id!r}: the record of reservation {reservation_id!r} is damaged")
        self.campaign_id = campaign_id
        self.reservation_id = reservation_id


class UnsafeRedis(FlashsaleError):
    """Redis would lose acknowledged writes (no AOF, or an eviction policy)."""


class LedgerError(FlashsaleError):
    """The durable ledger failed."""


class SchemaTooNew(LedgerError):
    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"the ledger database has schema version {found}, newer than this flashsale supports "
            f"({supported}); upgrade flashsale or point it at another database"
        )
        self.found = found
        self.supported = supported


def rejection(status: int, detail: Any, subject: str) -> Rejected | StorageUnavailable | DamagedRecord:
    """Map a script's status code (and its detail) to the domain exception."""
    st = Status(status)
    if st in (Status.CAMPAIGN_NOT_FOUND, Status.PRODUCT_NOT_FOUND, Status.RESERVATION_NOT_FOUND):
        what = {Status.CAMPAIGN_NOT_FOUND: "campaign", Status.PRODUCT_NOT_FOUND: "product",
                Status.RESERVATION_NOT_FOUND: "reservation"}[st]
        return NotFound(what, str(detail) if detail else subject)
    if st is Status.NOT_OPEN:
        return NotOpen(f"campaign {subject!r} has not opened yet")
    if st is Status.CLOSED:
        return Closed(f"campaign {subject!r} is closed")
    if st is Status.PAUSED:
        return Paused(f"campaign {subject!r} is paused; retry later")
    if st is Status.SOLD_OUT:
        return SoldOut(f"{detail or subject} is sold out")
    if st is Status.INSUFFICIENT_STOCK:
        return InsufficientStock(int(detail))
    if st is Status.USER_CAP_EXCEEDED:
        return UserCapExceeded(int(detail))
    if st is Status.IDEMPOTENCY_KEY_REUSED:
        return IdempotencyKeyReused("this Idempotency-Key was used with a different body")
    if st is Status.INVALID_STATE:
        return InvalidState(f"{subject} is {detail}", state=str(detail))
    if st is Status.ALREADY_OPEN:
        return InvalidState(f"campaign {subject!r} has already opened and cannot be replaced",
                            state=str(detail))
    if st is Status.RECOVERING:
        return StorageUnavailable(f"campaign {subject!r} is being recovered; retry shortly")
    if st is Status.RATE_LIMITED:
        return RateLimited(int(detail))
    if st is Status.DAMAGED_RECORD:
        return DamagedRecord(subject, str(detail))
    if st is Status.QUEUE_NOT_OPEN:
        return QueueNotOpen(f"the waiting room of campaign {subject!r} has not opened yet")
    if st is Status.NOT_REGISTERED:
        return NotRegistered(f"this user is not registered for campaign {subject!r}")
    if st is Status.BUYER_CAP_EXCEEDED:
        dimension, sep, allowed = str(detail or "identity").partition("|")
        if sep:  # reserve.lua: the cap of one identity, device or network, and what it still allows
            return BuyerCapExceeded(f"this buyer's {dimension} may take at most {allowed} more units",
                                    dimension=dimension, allowed=int(allowed))
        return BuyerCapExceeded(f"this {dimension} already took part under another user",
                                dimension=dimension, allowed=0)
    if st is Status.ADMISSION_REQUIRED:
        return AdmissionRefused("ADMISSION_REQUIRED", f"campaign {subject!r} admits through its queue: "
                                "send the Admission-Token header of this user's admitted ticket")
    if st is Status.ADMISSION_INVALID:
        return AdmissionRefused("ADMISSION_INVALID", "the Admission-Token is not one this engine signed "
                                f"for this user of campaign {subject!r}")
    if st is Status.ADMISSION_EXPIRED:
        return AdmissionRefused("ADMISSION_EXPIRED", "the Admission-Token has expired; poll the ticket")
    if st is Status.BUYER_SIGNAL_MISSING:
        field = str(detail)
        return InvalidRequest(field, f"required: campaign {subject!r} caps units per "
                              f"{field.removeprefix('buyer.').replace('ip', 'network')}")
    if st is Status.QUEUED_ELSEWHERE:
        return InvalidState("this user already holds a ticket of another storefront", state="queued_elsewhere")
    if st is Status.DEFINITION_CHANGED:
        return StorageUnavailable(f"campaign {subject!r} was replaced meanwhile; retry")
    raise ValueError(f"status {st!r} is not a rejection")


assert set(PUBLIC_CODE) == set(Status) - {Status.OK}
