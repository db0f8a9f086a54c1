"""Bearer tokens: several storefronts, one admin; compared in constant time.

A storefront is known by its name (``settings.storefront_tokens``: (name, token) pairs); the name,
never the token, scopes its Idempotency-Keys and is stored with its reservations. Every token is
compared on every call (no early exit), so the time taken says nothing about which one nearly
matched.
"""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from engine.api import audit
from engine.api.errors import ApiError
from engine.api.validation import Headers

ADMIN = "admin"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="flashsale"'}


@dataclass(frozen=True, slots=True)
class Caller:
    name: str  # the storefront's name, or "admin"
    admin: bool
    credential: str = ""  # which credential, never the token: the storefront's name, the admin's fingerprint


class Authenticator:
    def __init__(self, storefront_tokens: tuple[tuple[str, str], ...], admin_token: str) -> None:
        self._callers: list[tuple[bytes, Caller]] = [
            (token.encode(), Caller(name, False, name)) for name, token in storefront_tokens if token]
        if admin_token:
            self._callers.append((admin_token.encode(), Caller(ADMIN, True, audit.fingerprint(admin_token))))

    def caller(self, hdrs: Headers) -> Caller:
        """Who is calling, or 401 UNAUTHENTICATED."""
        raw = hdrs.get(b"authorization")
        if raw is None:
            raise ApiError(401, "UNAUTHENTICATED", "send Authorization: Bearer <token>", headers=_CHALLENGE)
        scheme, _, token = raw.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise ApiError(401, "UNAUTHENTICATED", "the Authorization header must be: Bearer <token>",
                           headers=_CHALLENGE)
        token = token.strip()
        found: Caller | None = None
        for known, who in self._callers:
            if hmac.compare_digest(known, token):
                found = who
        if found is None:
            raise ApiError(401, "UNAUTHENTICATED", "unknown token", headers=_CHALLENGE)
        return found

    def storefront(self, hdrs: Headers) -> str:
        """The calling storefront's name; 403 for the admin token (it is no storefront)."""
        who = self.caller(hdrs)
        if who.admin:
            raise ApiError(403, "FORBIDDEN", "this call needs a storefront token, not the admin token")
        return who.name

    def admin_of(self, hdrs: Headers, scope: MutableMapping[str, Any]) -> Caller:
        """Only the admin token passes; a storefront token gets 403. The caller is noted in the
        request's scope first, for the audit line of an admin route (``engine.api.audit``)."""
        who = self.caller(hdrs)
        audit.note(scope, who.name, who.credential)
        if not who.admin:
            raise ApiError(403, "FORBIDDEN", "this call needs the admin token")
        return who
