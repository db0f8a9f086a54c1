"""Buyer signals: what a storefront knows of the person behind a user id.

``{"identity", "device", "ip"}``, each optional, each 1 to 128 printable ASCII characters, ``ip`` a
valid IPv4 or IPv6 address. The network a buyer cap counts is derived here, never sent: the IPv4
/24 or the IPv6 /48 the address falls in (an IPv4-mapped IPv6 address counts as its IPv4).
Registration, the waiting room and (in queue mode) the reserve path read the same ``Buyer``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidRequest

MAX_SIGNAL = 128  # characters of one signal
SIGNAL_REGEX = "^[ -~]{1,128}$"  # printable ASCII (the openapi document states it)
BUYER_FIELDS = ("identity", "device", "ip")
IPV4_NETWORK_BITS = 24
IPV6_NETWORK_BITS = 48
_SIGNAL = re.compile(SIGNAL_REGEX[1:-1])


@dataclass(frozen=True, slots=True)
class Buyer:
    identity: str | None = None
    device: str | None = None
    ip: str | None = None

    @property
    def network(self) -> str | None:
        """The /24 (IPv4) or /48 (IPv6) network of ``ip``, e.g. ``203.0.113.0/24``."""
        return None if self.ip is None else network_of(self.ip)


NOBODY = Buyer()


def network_of(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bits = IPV4_NETWORK_BITS if addr.version == 4 else IPV6_NETWORK_BITS
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def _signal(value: Any, field: str) -> str:
    if type(value) is not str or not _SIGNAL.fullmatch(value):
        raise InvalidRequest(field, f"must be 1 to {MAX_SIGNAL} printable ASCII characters")
    return value


def _ip(value: Any, field: str) -> str:
    # inet_pton (C) rather than ipaddress (Python): an import checks hundreds of thousands; it takes
    # no zone id ("fe80::1%eth0" names an interface of the storefront's host, not the buyer's)
    text = _signal(value, field)
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        raise InvalidRequest(field, "must be an IPv4 or IPv6 address") from None
    return text


def parse_buyer(value: Any, field: str = "buyer") -> Buyer:
    """A request's ``buyer`` object (None or absent: no signals); raises ``InvalidRequest`` naming
    the field (``buyer.ip``)."""
    if value is None:
        return NOBODY
    if not isinstance(value, dict):
        raise InvalidRequest(field, "must be an object with identity, device, ip (each optional)")
    for key in value:
        if key not in BUYER_FIELDS:
            raise InvalidRequest(f"{field}.{key}", "unknown field")
    identity, device, ip = (value.get(k) for k in BUYER_FIELDS)
    return Buyer(
        identity=None if identity is None else _signal(identity, f"{field}.identity"),
        device=None if device is None else _signal(device, f"{field}.device"),
        ip=None if ip is None else _ip(ip, f"{field}.ip"),
    )
