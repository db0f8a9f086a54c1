"""The launch-day spike: how many buyers are active at each instant, relative to the opening.

    users
      ▲        cliff
 peak │        ┌──────────── plateau ──────────┐
      │        │                               │╲  decay
      │ trickle│                               │  ╲
      └────────┴───────────────────────────────┴────▶ t
   -trickle_s  0 (opens_at)                sold out

Shared by ``flashsale loadgen`` and the Locust ``LaunchDaySpike`` shape, so both draw the same
curve. Before the opening a few eager buyers poll (and get ``NOT_OPEN``); at the opening every
buyer arrives at once; the plateau lasts until the campaign sells out (or the time bound); then
the crowd thins out over ``decay_s``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpikeProfile:
    peak_users: int
    trickle_users: int = 2  # buyers refreshing the page before the opening
    trickle_s: float = 3.0  # how long before the opening they start
    decay_s: float = 2.0  # from sold out to nobody
    plateau_max_s: float = 60.0  # the plateau ends here even if nothing sells out

    def users_at(self, t: float, sold_out_at: float | None = None) -> int:
        """Active users at ``t`` seconds after the opening (negative: before it)."""
        if t < -self.trickle_s:
            return 0
        if t < 0:
            return min(self.trickle_users, self.peak_users)
        end = self.plateau_max_s if sold_out_at is None else min(sold_out_at, self.plateau_max_s)
        if t < end:
            return self.peak_users
        if self.decay_s <= 0:
            return 0
        left = 1.0 - (t - end) / self.decay_s
        return max(0, int(self.peak_users * left + 0.999)) if left > 0 else 0

    def finished(self, t: float, sold_out_at: float | None = None) -> bool:
        """Whether the curve has come back to zero after the opening."""
        return t >= 0 and self.users_at(t, sold_out_at) == 0

    @classmethod
    def from_env(cls, prefix: str = "SPIKE_", **defaults: float) -> SpikeProfile:
        """``SPIKE_PEAK_USERS``, ``SPIKE_TRICKLE_USERS``, ``SPIKE_TRICKLE_S``, ``SPIKE_DECAY_S``,
        ``SPIKE_PLATEAU_MAX_S`` (the Locust shape reads these)."""

        def get(name: str, default: float) -> float:
            raw = os.environ.get(prefix + name.upper())
            return float(raw) if raw not in (None, "") else default

        base = cls(peak_users=int(defaults.get("peak_users", 50)))
        return cls(
            peak_users=int(get("peak_users", base.peak_users)),
            trickle_users=int(get("trickle_users", defaults.get("trickle_users", base.trickle_users))),
            trickle_s=get("trickle_s", defaults.get("trickle_s", base.trickle_s)),
            decay_s=get("decay_s", defaults.get("decay_s", base.decay_s)),
            plateau_max_s=get("plateau_max_s", defaults.get("plateau_max_s", base.plateau_max_s)),
        )
