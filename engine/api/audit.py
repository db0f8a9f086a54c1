"""The audit trail: one structured line for each admin action, whatever its outcome.

    {"ts": "2026-12-04T18:30:00.123Z", "level": "info", "logger": "flashsale.audit",
     "msg": "admin action", "request_id": "…", "action": "campaign.pause", "campaign_id": "c-1",
     "method": "POST", "status": 200, "who": "admin", "credential": "admin-3f9a0c2b41de"}

- **what**: ``action`` (``ACTIONS``: the admin routes by method and route template), the
  ``campaign_id`` of the path as sent, and ``status``, the HTTP status answered (a refusal too: a
  storefront token 403, no token or an unknown one 401, an unknown campaign 404);
- **who**: ``admin`` or the storefront whose token was used, ``-`` when no known token was sent;
  ``credential`` tells credentials apart without revealing them: ``admin-`` and a prefix of the
  token's SHA-256 (a rotated admin token shows as a new credential), a storefront's name;
- **when** and **which request**: ``ts`` and ``request_id``, as on every log line.

The request middleware writes the line once the answer is decided (``engine.api.middleware``),
from the caller the route's authentication left in the scope (``note``). The logger
``flashsale.audit`` logs at INFO whatever ``FLASHSALE_LOG_LEVEL`` says: quieting the rest of
the log never quiets the trail (``engine.api.logs.configure``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import MutableMapping
from typing import Any

log = logging.getLogger("flashsale.audit")
CALLER = "flashsale.caller"  # the scope key where authentication leaves the caller

#: (method, route template) -> action. A new admin route (e.g. an admission change) adds its line here.
ACTIONS: dict[tuple[str, str], str] = {
    ("PUT", "/v1/campaigns/{cid}"): "campaign.put",
    ("POST", "/v1/campaigns/{cid}/pause"): "campaign.pause",
    ("POST", "/v1/campaigns/{cid}/resume"): "campaign.resume",
    ("POST", "/v1/campaigns/{cid}/close"): "campaign.close",
    ("PATCH", "/v1/campaigns/{cid}/admission"): "admission.change",
}


def fingerprint(token: str) -> str:
    """A name for the admin credential that does not reveal it."""
    return "admin-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def note(scope: MutableMapping[str, Any], who: str, credential: str) -> None:
    """Authentication's record of the caller, for the audit line of this request."""
    scope[CALLER] = (who, credential)


def record(action: str, scope: MutableMapping[str, Any], status: int) -> None:
    """The audit line of one admin request (called by the middleware once it is answered)."""
    who, credential = scope.get(CALLER, ("-", "-"))
    params = scope.get("path_params") or {}
    log.info("admin action", extra={"action": action, "campaign_id": params.get("cid"),
                                    "method": scope.get("method"), "status": status,
                                    "who": who, "credential": credential})
