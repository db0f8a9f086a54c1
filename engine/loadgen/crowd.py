"""Who comes to a queued launch: ordinary people, each with their own identity, device and network,
and scalper operators, each running many user accounts over a few identities, devices and networks.

The buyer signals are what a storefront would send (``buyer`` of docs/API.md, v1.1): opaque
identity and device ids, and an IP address whose /24 is the network a cap counts. People get
addresses in 10.0.0.0/8 (one /24 each), operators in 172.16.0.0/12 (a few /24 each).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.admission.buyer import network_of


@dataclass(frozen=True, slots=True)
class Signals:
    identity: str
    device: str
    ip: str

    @property
    def network(self) -> str:
        return network_of(self.ip)

    def body(self) -> dict[str, str]:
        return {"identity": self.identity, "device": self.device, "ip": self.ip}


@dataclass(frozen=True, slots=True)
class Scalpers:
    """``operators`` farms of ``accounts`` user accounts each, spread over that many identities,
    devices and networks per operator; they all fire at the first millisecond of the opening (of
    the pre-queue, in queue mode)."""

    operators: int = 20
    accounts: int = 100
    identities: int = 3
    devices: int = 5
    networks: int = 2

    def __post_init__(self) -> None:
        for name in ("operators", "accounts", "identities", "devices", "networks"):
            if getattr(self, name) < 1:
                raise ValueError(f"scalpers: {name} must be at least 1")
        if self.networks > 16 or self.operators > 256:
            raise ValueError("scalpers: at most 256 operators of 16 networks each")

    @property
    def total(self) -> int:
        return self.operators * self.accounts


def person(prefix: str, n: int) -> Signals:
    """Person ``n`` (1-based): an identity, a device and a /24 of their own (unique up to millions)."""
    return Signals(f"{prefix}id{n}", f"{prefix}dev{n}", f"{10 + (n >> 16) % 90}.{(n >> 8) & 255}.{n & 255}.7")


def scalper(prefix: str, s: Scalpers, operator: int, account: int) -> Signals:
    """Account ``account`` of operator ``operator`` (both 0-based): on its operator's few signals."""
    net = account % s.networks
    return Signals(f"{prefix}op{operator}-id{account % s.identities}", f"{prefix}op{operator}-dev{account % s.devices}",
                   f"172.{16 + net}.{operator}.{1 + account % 250}")


def scalper_user(prefix: str, operator: int, account: int) -> str:
    return f"{prefix}s{operator}-{account}"
