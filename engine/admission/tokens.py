"""Admission tokens: signed by the engine, bound to a campaign, a user and an expiry.

    v1.<kid>.<expires_at ms>.<base64url HMAC-SHA256>

The MAC covers the version, the key id, the campaign, the user and the expiry, so a token
verifies for that user of that campaign only. Keys come from ``FLASHSALE_ADMISSION_KEYS``
(``kid1:secret1,kid2:secret2``; secrets of at least 32 bytes): the first signs, every one
verifies, so a key rotates by putting the new one first and dropping the old once the tokens it
signed have expired. ``verify`` needs no Redis round trip; whether a token is past its expiry is
judged against Redis ``TIME`` by the caller (the reserve script), or here when given ``now_ms``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

KEYS_ENV = "FLASHSALE_ADMISSION_KEYS"
MIN_SECRET_BYTES = 32
VERSION = "v1"
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_TOKEN = 256  # characters: anything longer is no token of ours
_MAC_CHARS = 43  # base64url of 32 bytes, unpadded


class KeyringError(ValueError):
    """``FLASHSALE_ADMISSION_KEYS`` is malformed (the message says how, never the secret)."""


class Refusal(StrEnum):
    """Why a token does not admit (the API's error codes)."""

    INVALID = "ADMISSION_INVALID"
    EXPIRED = "ADMISSION_EXPIRED"


@dataclass(frozen=True, slots=True)
class Verified:
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Keyring:
    keys: tuple[tuple[str, bytes], ...]  # (kid, secret); the first signs

    @classmethod
    def parse(cls, raw: str) -> Keyring:
        keys: list[tuple[str, bytes]] = []
        for i, item in enumerate(part.strip() for part in raw.split(",")):
            kid, sep, secret = item.partition(":")
            if not sep or not KID_PATTERN.fullmatch(kid):
                raise KeyringError(f"{KEYS_ENV} entry {i + 1}: use kid:secret, kid of 1-32 [A-Za-z0-9_-]")
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise KeyringError(f"{KEYS_ENV} key {kid!r}: the secret must be at least {MIN_SECRET_BYTES} bytes")
            if any(k == kid for k, _ in keys):
                raise KeyringError(f"{KEYS_ENV}: key id {kid!r} appears twice")
            keys.append((kid, secret.encode()))
        return cls(tuple(keys))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Keyring | None:
        """The keyring of the environment, None when unset; ``KeyringError`` when malformed."""
        raw = (os.environ if env is None else env).get(KEYS_ENV, "").strip()
        return cls.parse(raw) if raw else None

    def sign(self, campaign_id: str, user_id: str, expires_at_ms: int) -> str:
        kid, secret = self.keys[0]
        return f"{VERSION}.{kid}.{expires_at_ms}.{_mac(secret, kid, campaign_id, user_id, expires_at_ms)}"

    def verify(self, token: str, campaign_id: str, user_id: str,
               now_ms: int | None = None) -> Verified | Refusal:
        """``Verified(expires_at_ms)`` when this keyring signed ``token`` for this campaign and user;
        ``Refusal.INVALID`` otherwise (forged, another user or campaign, an unknown key id);
        ``Refusal.EXPIRED`` when ``now_ms`` is given and the expiry has passed."""
        if len(token) > MAX_TOKEN:
            return Refusal.INVALID
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION or not parts[2].isdigit() or len(parts[3]) != _MAC_CHARS:
            return Refusal.INVALID
        _, kid, expiry, mac = parts
        secret = next((s for k, s in self.keys if k == kid), None)
        if secret is None:
            return Refusal.INVALID
        expires_at_ms = int(expiry)
        if not hmac.compare_digest(mac.encode(), _mac(secret, kid, campaign_id, user_id, expires_at_ms).encode()):
            return Refusal.INVALID
        if now_ms is not None and now_ms >= expires_at_ms:
            return Refusal.EXPIRED
        return Verified(expires_at_ms)


def _mac(secret: bytes, kid: str, campaign_id: str, user_id: str, expires_at_ms: int) -> str:
    # ids never contain '|' (engine.campaign.ID_PATTERN): the fields cannot run into each other
    message = f"flashsale-admission|{VERSION}|{kid}|{campaign_id}|{user_id}|{expires_at_ms}".encode()
    return base64.urlsafe_b64encode(hmac.new(secret, message, hashlib.sha256).digest()).rstrip(b"=").decode()
