"""The admission schedule: how many positions are admitted at an instant (pure arithmetic).

From ``opens_at`` the frontier grows at the campaign's ``admit_per_second``. Each live change
(``PATCH …/admission``, recorded by ``queue_rate.lua`` with its Redis ``TIME``) starts a segment
at its instant with the new rate and a base: the frontier then, but never more than the tickets
there were then, so that a pause really stops admission and a rate change hands out no credit
saved up while the queue was empty. A change made before the opening sets the opening rate.
Within a segment the frontier, in "position-milliseconds", is ``base + rate x elapsed ms``;
position ``p`` (1-based) is admitted once it reaches ``p x 1000``, and never before its ticket
was taken. Every worker computes the same figures from the same history, so a ticket's admission
instant, and its token's expiry, are the same whoever answers.
"""

from __future__ import annotations

from dataclasses import dataclass

MS = 1000  # the frontier is kept in position-milliseconds: exact integers throughout


@dataclass(frozen=True, slots=True)
class Schedule:
    segments: tuple[tuple[int, int, int], ...]  # (start ms, rate per s, base in position-ms), starts ascending

    @classmethod
    def build(cls, opens_ms: int, rate: int, changes: str | bytes | None) -> Schedule:
        """From the definition's opening and rate, and the ``rates`` history ``at:rate:base,...``."""
        segments = [(opens_ms, rate, 0)]
        text = changes.decode() if isinstance(changes, bytes) else (changes or "")
        for entry in filter(None, text.split(",")):
            at, r, base = (int(x) for x in entry.split(":"))
            start = max(at, opens_ms)
            if start == segments[-1][0]:
                segments[-1] = (start, r, 0 if at <= opens_ms else base)  # the later change at one instant wins
            else:
                segments.append((start, r, base))
        return cls(tuple(segments))

    @property
    def opens_ms(self) -> int:
        return self.segments[0][0]

    def _segment(self, now_ms: int) -> int:
        index = 0
        for i, (start, _, _) in enumerate(self.segments):
            if start > now_ms:
                break
            index = i
        return index

    def rate_at(self, now_ms: int) -> int:
        """The rate in force at ``now_ms`` (the opening rate before the opening)."""
        return self.segments[self._segment(now_ms)][1]

    def frontier(self, now_ms: int) -> int:
        """The frontier at ``now_ms`` in position-milliseconds (0 before the opening)."""
        if now_ms <= self.opens_ms:
            return 0
        start, rate, base = self.segments[self._segment(now_ms)]
        return base + rate * (now_ms - start)

    def admitted(self, now_ms: int) -> int:
        """Positions admitted at ``now_ms`` (ignoring when their tickets were taken)."""
        return self.frontier(now_ms) // MS

    def admitted_at(self, position: int, not_before_ms: int = 0) -> int | None:
        """The first instant (ms), not before ``not_before_ms`` (when the ticket was taken), at
        which ``position`` (1-based) is admitted; None if the schedule as it stands never
        reaches it (admission paused)."""
        need = position * MS
        t = max(not_before_ms, self.opens_ms)
        for i in range(self._segment(t), len(self.segments)):
            start, rate, base = self.segments[i]
            end = self.segments[i + 1][0] if i + 1 < len(self.segments) else None
            begin = max(start, t)
            if begin > self.opens_ms and base + rate * (begin - start) >= need:
                return begin
            if rate > 0:
                at = start + -(-(need - base) // rate)  # ceil: when this segment's frontier reaches it
                if end is None or at < end:
                    return at
            elif end is None:
                return None
        return None
