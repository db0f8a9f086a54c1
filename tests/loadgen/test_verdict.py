"""The verdict is a pure function of a record and the observed state: each invariant's check
passes on a consistent pair and fails on a record or state that breaks it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.loadgen.record import CANCELLED, CONFIRMED, HELD, BadResult, Doubt, Grant, Probe, Record, Replay
from engine.loadgen.verdict import Check, LedgerRow, Observed, Verdict, judge

NOW = 1_000_000_000.0
LONG = int(NOW) + 900_000  # a hold still well inside its deadline at NOW
DEFINITION: dict[str, Any] = {
    "id": "c", "total_units": 30, "user_cap_units": 10,
    "products": [{"id": "a", "total_units": 20, "user_cap_units": 6}, {"id": "b", "total_units": 20}],
}


def grant(rid: str, user: str, product: str, units: int, state: str = CONFIRMED, at: float = NOW - 5000,
          released: float | None = None) -> Grant:
    return Grant(rid, f"k-{rid}", user, product, units, units * 100, LONG, at, state, released)


def record(*grants: Grant) -> Record:
    rec = Record("c", "u")
    rec.grants = list(grants)
    rec.requests["reserve 201"] = len(grants)
    return rec


def observed(rec: Record, **over: Any) -> Observed:
    """The state a correct server shows for ``rec``: every counter matching it, every order once."""
    sold = {p["id"]: 0 for p in DEFINITION["products"]}
    held = dict(sold)
    for g in rec.grants:
        if g.state == CONFIRMED:
            sold[g.product] += g.units
        elif g.state == HELD:
            held[g.product] += g.units
    total = DEFINITION["total_units"]
    stats = {"total_units": total, "sold_units": sum(sold.values()), "held_units": sum(held.values()),
             "remaining_units": total - sum(sold.values()) - sum(held.values()),
             "products": [{"product_id": p["id"], "total_units": p["total_units"], "sold_units": sold[p["id"]],
                           "held_units": held[p["id"]],
                           "remaining_units": p["total_units"] - sold[p["id"]] - held[p["id"]]}
                          for p in DEFINITION["products"]]}
    ledger = tuple(LedgerRow(g.rid, g.product, g.user, g.units, g.amount) for g in rec.grants if g.state == CONFIRMED)
    base: dict[str, Any] = {"definition": DEFINITION, "stats": stats, "now_ms": NOW, "ledger": ledger,
                            "reconcile": (0, "ok")}
    base.update(over)
    return Observed(**base)


def failed(v: Verdict) -> list[str]:
    return [c.name for c in v.violations]


def check(v: Verdict, fragment: str) -> Check:
    return next(c for c in v.checks if fragment in c.name)


def clean() -> Record:
    return record(grant("r1", "alice", "a", 6), grant("r2", "bob", "b", 4, HELD),
                  grant("r3", "carol", "a", 2, CANCELLED, released=NOW - 4000))


def test_a_consistent_record_and_state_are_clean() -> None:
    v = judge(clean(), observed(clean()))
    assert v.ok and v.exit_code == 0, failed(v)


def test_a_user_over_the_product_cap_is_a_violation() -> None:
    rec = record(grant("r1", "alice", "a", 6), grant("r2", "alice", "a", 1, at=NOW - 4000))
    v = judge(rec, observed(rec))
    assert v.exit_code == 1
    assert check(v, "no user held more than a cap").ok is False
    assert "alice" in check(v, "no user held more than a cap").detail


def test_a_user_over_the_campaign_cap_across_products_is_a_violation() -> None:
    rec = record(grant("r1", "alice", "a", 6), grant("r2", "alice", "b", 5, HELD, at=NOW - 4000))
    v = judge(rec, observed(rec))
    assert check(v, "no user held more than a cap").ok is False and v.exit_code == 1


def test_units_released_before_the_next_reserve_do_not_count_against_the_cap() -> None:
    rec = record(grant("r1", "alice", "a", 6, CANCELLED, at=NOW - 5000, released=NOW - 4500),
                 grant("r2", "alice", "a", 6, at=NOW - 4000))
    v = judge(rec, observed(rec))
    assert v.ok, failed(v)


def test_the_api_showing_a_user_over_a_cap_is_a_violation() -> None:
    rec = clean()
    users = {"alice": {"held_units": 0, "confirmed_units": 7,
                       "products": [{"product_id": "a", "held_units": 0, "confirmed_units": 7}]}}
    v = judge(rec, observed(rec, users=users))
    assert check(v, "API: no user's holdings over a cap").ok is False


def test_an_over_cap_probe_that_was_granted_is_a_violation() -> None:
    rec = clean()
    rec.probes.append(Probe("over cap", "alice", 201, None, "USER_CAP_EXCEEDED"))
    assert check(judge(rec, observed(rec)), "over-cap requests").ok is False
    rec.probes[-1] = Probe("over cap", "alice", 409, "USER_CAP_EXCEEDED", "USER_CAP_EXCEEDED")
    assert judge(rec, observed(rec)).ok


def test_an_oversold_campaign_is_a_violation() -> None:
    rec = clean()
    obs = observed(rec)
    stats = dict(obs.stats, sold_units=obs.stats["total_units"] + 1 - obs.stats["held_units"])
    v = judge(rec, replace(obs, stats=stats))
    assert check(v, "sold + held ≤ total").ok is False and v.exit_code == 1


def test_a_record_holding_more_than_a_product_has_is_a_violation() -> None:
    rec = record(*(grant(f"r{i}", f"user{i}", "a", 6) for i in range(4)))  # 24 units of a 20-unit product
    v = judge(rec, observed(rec))
    assert check(v, "record: units granted and not released ≤ total").ok is False


def test_units_sold_that_nobody_confirmed_are_a_violation() -> None:
    rec = clean()
    obs = observed(rec)
    stats = dict(obs.stats, sold_units=obs.stats["sold_units"] + 1, remaining_units=obs.stats["remaining_units"] - 1)
    assert check(judge(rec, replace(obs, stats=stats)), "stats match the record").ok is False


def test_a_cancelled_hold_not_returned_is_a_violation() -> None:
    rec = clean()
    obs = observed(rec)
    stats = dict(obs.stats, held_units=obs.stats["held_units"] + 2, remaining_units=obs.stats["remaining_units"] - 2)
    v = judge(rec, replace(obs, stats=stats))
    assert check(v, "stats match the record").ok is False
    assert "not returned" in check(v, "stats match the record").detail


def test_an_expired_hold_may_be_gone_and_must_be_gone_after_the_slack() -> None:
    rec = record(grant("r1", "alice", "a", 3, HELD))
    rec.grants[0].expires_ms = int(NOW) - 60_000  # long past its deadline: must be released
    assert check(judge(rec, observed(rec)), "stats match the record").ok is False  # still counted held
    obs = observed(record())
    assert judge(rec, replace(obs, stats=obs.stats)).ok


def test_a_reserve_without_an_answer_may_or_may_not_have_taken_units() -> None:
    rec = clean()
    rec.doubts.append(Doubt("k-x", "dave", "b", 3, NOW - 3000))
    obs = observed(rec)
    assert judge(rec, obs).ok
    stats = dict(obs.stats, held_units=obs.stats["held_units"] + 3, remaining_units=obs.stats["remaining_units"] - 3)
    assert judge(rec, replace(obs, stats=stats)).ok
    stats = dict(stats, held_units=stats["held_units"] + 1, remaining_units=stats["remaining_units"] - 1)
    assert not judge(rec, replace(obs, stats=stats)).ok


def test_ledger_missing_or_duplicate_orders_are_violations() -> None:
    rec = clean()
    obs = observed(rec)
    assert obs.ledger is not None
    missing = replace(obs, ledger=())
    assert check(judge(rec, missing), "every confirmed order exactly once").ok is False
    dup = replace(obs, ledger=obs.ledger + obs.ledger[:1])
    assert check(judge(rec, dup), "every confirmed order exactly once").ok is False
    stray = replace(obs, ledger=(*obs.ledger, LedgerRow("r2", "b", "bob", 4, 400)))
    assert check(judge(rec, stray), "no order the generator did not confirm").ok is False
    assert check(judge(rec, replace(obs, reconcile=(1, "1 difference"))), "reconcile").ok is False
    assert check(judge(rec, replace(obs, ledger=None)), "every confirmed order").ok is None  # skipped, not failed


def test_a_replay_that_made_a_second_reservation_is_a_violation() -> None:
    rec = clean()
    rec.replays.append(Replay("k-r1", "r1", 200, "r1"))
    assert judge(rec, observed(rec)).ok
    rec.replays.append(Replay("k-r2", "r2", 201, "r9"))
    assert check(judge(rec, observed(rec)), "one reservation per Idempotency-Key").ok is False


def test_bad_input_must_get_its_4xx_and_change_nothing() -> None:
    rec = clean()
    rec.bad.append(BadResult("units zero", "eve", 422, "INVALID", (400, 422)))
    users = {"eve": {"held_units": 0, "confirmed_units": 0, "products": []}}
    assert judge(rec, observed(rec, users=users)).ok
    rec.bad.append(BadResult("units negative", "mallory", 201, None, (400, 422)))
    assert check(judge(rec, observed(rec, users=users)), "documented 4xx").ok is False
    rec.bad.pop()
    users["eve"] = {"held_units": 1, "confirmed_units": 0, "products": []}
    assert check(judge(rec, observed(rec, users=users)), "changed nothing").ok is False


def test_a_server_error_is_a_violation() -> None:
    rec = clean()
    rec.server_errors.append("reserve 500: b'Internal Server Error'")
    assert check(judge(rec, observed(rec)), "never a 5xx").ok is False


def test_a_record_survives_its_json_form() -> None:
    rec = clean()
    rec.doubts.append(Doubt("k-x", "dave", "b", 3, NOW))
    rec.bad.append(BadResult("units zero", "eve", 422, "INVALID", (400, 422)))
    again = Record.from_json(rec.to_json())
    assert again.grants == rec.grants and again.doubts == rec.doubts and again.bad == rec.bad
    assert again.requests == rec.requests


def test_a_user_still_shown_holding_cancelled_units_is_a_violation() -> None:
    rec = clean()
    users = {"carol": {"held_units": 0, "confirmed_units": 0,
                       "products": [{"product_id": "a", "held_units": 0, "confirmed_units": 0}]},
             "alice": {"held_units": 0, "confirmed_units": 6,
                       "products": [{"product_id": "a", "held_units": 0, "confirmed_units": 6}]}}
    assert judge(rec, observed(rec, users=users)).ok
    users["carol"]["products"][0]["held_units"] = 2  # the cancel never gave the user's units back
    assert check(judge(rec, observed(rec, users=users)), "holdings match the record").ok is False
