"""The admission schedule: how many positions are admitted at an instant (pure arithmetic).

From ``opens_at`` the frontier grows at the campaign's ``admit_per_second``; each live change
(``PATCH …/admission``, kept by ``queue_rate.lua`` with its Redis ``TIME``) takes over from its
instant, and a change made before the opening sets the rate the room opens with. The frontier
at ``t`` is the integral of the rate, in whole positions: position ``p`` (1-based) is admitted
once it reaches ``p``. Every worker computes the same figures from the same history, so a
ticket's admission instant, and the expiry of its token, are the same whoever answers.
"""

from __future__ import annotations

from dataclasses import dataclass

MS = 1000  # positions x ms per second: the integral is kept in "position-milliseconds"


@dataclass(frozen=True, slots=True)
class Schedule:
    segments: tuple[tuple[int, int], ...]  # (start ms, rate per s), starts ascending; the first at opens_at

    @classmethod
    def build(cls, opens_ms: int, rate: int, changes: str | bytes | None) -> Schedule:
        """From the definition's opening and rate, and the ``rates`` history ``at:rate,...``."""
        segments = [(opens_ms, rate)]
        text = changes.decode() if isinstance(changes, bytes) else (changes or "")
        for entry in filter(None, text.split(",")):
            at, _, r = entry.partition(":")
            start = max(int(at), opens_ms)
            if start == segments[-1][0]:
                segments[-1] = (start, int(r))  # a later change at the same instant replaces it
            else:
                segments.append((start, int(r)))
        return cls(tuple(segments))

    @property
    def opens_ms(self) -> int:
        return self.segments[0][0]

    def rate_at(self, now_ms: int) -> int:
        """The rate in force at ``now_ms`` (the opening rate before the opening)."""
        current = self.segments[0][1]
        for start, rate in self.segments:
            if start > now_ms:
                break
            current = rate
        return current

    def admitted(self, now_ms: int) -> int:
        """Positions admitted at ``now_ms``: 0 before the opening."""
        total = 0
        for i, (start, rate) in enumerate(self.segments):
            if start >= now_ms:
                break
            end = self.segments[i + 1][0] if i + 1 < len(self.segments) else now_ms
            total += rate * (min(end, now_ms) - start)
        return total // MS

    def admitted_at(self, position: int) -> int | None:
        """The first instant (ms) at which ``position`` (1-based) is admitted, or None if the
        schedule as it stands never reaches it (admission paused)."""
        need = position * MS
        done = 0
        for i, (start, rate) in enumerate(self.segments):
            last = i + 1 == len(self.segments)
            span = None if last else self.segments[i + 1][0] - start
            if rate > 0 and (span is None or done + rate * span >= need):
                return start + -(-(need - done) // rate)  # ceil: the frontier reaches it then
            if span is not None:
                done += rate * span
        return None
