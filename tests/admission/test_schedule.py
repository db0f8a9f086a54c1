"""The admitted frontier from the opening, the rate and its live changes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.admission.schedule import Schedule

OPENS = 1_000_000


def test_nothing_is_admitted_before_the_opening() -> None:
    s = Schedule.build(OPENS, 10, None)
    assert s.admitted(OPENS - 1) == 0 and s.admitted(OPENS) == 0
    assert s.admitted(OPENS + 100) == 1 and s.admitted(OPENS + 999) == 9 and s.admitted(OPENS + 1000) == 10
    assert s.admitted_at(1) == OPENS + 100 and s.admitted_at(10) == OPENS + 1000


def test_a_change_takes_over_from_its_instant_with_its_base_and_zero_pauses() -> None:
    s = Schedule.build(OPENS, 10, f"{OPENS + 1000}:0:10000,{OPENS + 5000}:100:10000")
    assert s.admitted(OPENS + 1000) == 10
    assert s.admitted(OPENS + 4999) == 10  # paused
    assert s.rate_at(OPENS + 2000) == 0 and s.rate_at(OPENS + 6000) == 100
    assert s.admitted(OPENS + 5010) == 11
    assert s.admitted_at(11) == OPENS + 5010


def test_a_clamped_base_hands_out_no_saved_credit() -> None:
    # an hour at 10/s with 3 tickets: the change to 20/s starts from 3 admitted, not 36,000
    s = Schedule.build(OPENS, 10, f"{OPENS + 3_600_000}:20:3000")
    assert s.admitted(OPENS + 3_600_000) == 3
    assert s.admitted_at(4, not_before_ms=OPENS + 3_600_000) == OPENS + 3_600_050


def test_a_ticket_is_never_admitted_before_it_was_taken() -> None:
    s = Schedule.build(OPENS, 10, None)
    assert s.admitted_at(1, not_before_ms=OPENS + 50_000) == OPENS + 50_000


def test_a_change_before_the_opening_sets_the_opening_rate() -> None:
    s = Schedule.build(OPENS, 10, f"{OPENS - 500}:1:0,{OPENS - 100}:2:0")
    assert s.segments == ((OPENS, 2, 0),)
    assert s.admitted(OPENS + 1000) == 2


def test_paused_at_the_end_never_reaches_a_position() -> None:
    s = Schedule.build(OPENS, 10, f"{OPENS + 1000}:0:10000")
    assert s.admitted_at(10) == OPENS + 1000
    assert s.admitted_at(11) is None


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 50), st.integers(0, 400)), max_size=6),
       st.integers(0, 60), st.integers(1, 300), st.integers(0, 30_000))
def test_admitted_at_is_the_first_instant_the_frontier_reaches(changes: list[tuple[int, int, int]], rate: int,
                                                                position: int, taken: int) -> None:
    at = OPENS - 2000
    entries: list[str] = []
    for gap, r, cap in changes:
        at += gap
        base = 0 if at <= OPENS else min(Schedule.build(OPENS, rate, ",".join(entries)).frontier(at), cap * 1000)
        entries.append(f"{at}:{r}:{base}")
    s = Schedule.build(OPENS, rate, ",".join(entries))
    not_before = OPENS - 1000 + taken
    t = s.admitted_at(position, not_before)
    if t is None:
        assert s.admitted(10**12) < position
    else:
        assert t >= not_before and s.admitted(t) >= position
        assert t - 1 < not_before or s.admitted(t - 1) < position
