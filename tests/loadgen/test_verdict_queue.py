"""The verdict's v1.1 checks as pure functions: in queue mode every reservation carries its own
user's admission token, token probes are refused, admission follows the positions; every buyer
cap (identity, device, network) held, by the record, the ledger and the looked-up users."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.loadgen.record import CONFIRMED, HELD, Probe, Record, TicketSeen
from engine.loadgen.verdict import judge
from tests.loadgen.test_verdict import DEFINITION, NOW, check, failed, grant, observed, record

QUEUED: dict[str, Any] = {**DEFINITION, "admission": {"mode": "queue"}}
CAPPED: dict[str, Any] = {**DEFINITION, "identity_cap_units": 4, "device_cap_units": 6, "network_cap_units": 8}


def queued(*grants: Any) -> Record:
    rec = record(*grants)
    rec.queued = True
    return rec


def ticket(tid: str, user: str, position: int, admitted_at: int | None) -> TicketSeen:
    """A ticket polled admitted at ``admitted_at`` (its token's expiry counts from a first poll
    that may come later: it says nothing of the order)."""
    return TicketSeen(tid, user, NOW - 9000, True, position, "admitted" if admitted_at else "waiting",
                      NOW - 8000 if admitted_at else None, admitted_at_ms=admitted_at,
                      token_expires_ms=None if admitted_at is None else admitted_at + 600_000)


def test_a_queued_run_with_every_reservation_on_its_own_token_is_clean() -> None:
    rec = queued(replace(grant("r1", "u1", "a", 2), token_user="u1"),
                 replace(grant("r2", "u2", "b", 3), token_user="u2"))
    rec.tickets = {"t1": ticket("t1", "u1", 1, 100), "t2": ticket("t2", "u2", 2, 150),
                   "t3": ticket("t3", "u3", 3, None)}
    v = judge(rec, observed(rec, definition=QUEUED))
    assert v.ok, failed(v)
    assert check(v, "its own user's admission token").ok
    assert check(v, "admitted in position order").ok


def test_a_reservation_without_a_token_or_on_another_users_token_is_a_violation() -> None:
    for token_user in ("", "u2"):
        rec = queued(replace(grant("r1", "u1", "a", 2), token_user=token_user))
        v = judge(rec, observed(rec, definition=QUEUED))
        assert failed(v) == ["queue: every reservation carried its own user's admission token"]


def test_the_token_checks_are_not_judged_in_open_mode() -> None:
    rec = record(grant("r1", "u1", "a", 2))  # token_user None: open mode
    v = judge(rec, observed(rec))
    assert v.ok and not any(c.invariant == 7 for c in v.checks)


def test_a_token_probe_answered_201_is_a_violation_a_403_is_not() -> None:
    ok = queued()
    ok.probes = [Probe("no admission token", "u1", 403, "ADMISSION_REQUIRED", "ADMISSION_REQUIRED"),
                 Probe("another user's token", "u1", 403, "ADMISSION_INVALID", "ADMISSION_INVALID")]
    ok.requests["reserve 403"] = 2
    assert check(judge(ok, observed(ok, definition=QUEUED)), "is refused (403)").ok
    bad = queued()
    bad.probes = [Probe("no admission token", "u1", 201, None, "ADMISSION_REQUIRED")]
    bad.requests["reserve 201"] = 1
    assert check(judge(bad, observed(bad, definition=QUEUED)), "is refused (403)").ok is False


def test_admission_out_of_position_order_or_a_moved_position_is_a_violation() -> None:
    rec = queued()
    rec.requests["poll 200"] = 3
    rec.tickets = {"t1": ticket("t1", "u1", 1, 200), "t2": ticket("t2", "u2", 2, 150)}  # 2 admitted before 1
    v = judge(rec, observed(rec, definition=QUEUED))
    assert failed(v) == ["queue: positions fixed, distinct, admitted in position order"]
    rec.tickets = {"t1": replace(ticket("t1", "u1", 1, 100), moved=True)}
    assert not judge(rec, observed(rec, definition=QUEUED)).ok
    rec.tickets = {"t1": ticket("t1", "u1", 1, 100), "t2": ticket("t2", "u2", 1, 100)}  # one position twice
    assert not judge(rec, observed(rec, definition=QUEUED)).ok


def signed(rid: str, user: str, units: int, identity: str, device: str, network: str,
           state: str = CONFIRMED) -> Any:
    return replace(grant(rid, user, "a" if units <= 6 else "b", units, state), identity=identity, device=device,
                   network=network)


def test_buyer_caps_held_is_clean_and_one_identity_over_its_cap_is_caught_three_ways() -> None:
    fine = record(signed("r1", "u1", 2, "i1", "d1", "n1"), signed("r2", "u2", 2, "i1", "d1", "n1"),
                  signed("r3", "u3", 4, "i2", "d2", "n1"))
    v = judge(fine, observed(fine, definition=CAPPED))
    assert v.ok, failed(v)
    # two accounts of one identity, 3 + 3 units > the identity cap of 4 (each within its user cap)
    over = record(signed("r1", "u1", 3, "i1", "d1", "n1"), signed("r2", "u2", 3, "i1", "d2", "n2", HELD))
    users = {"u1": {"held_units": 0, "confirmed_units": 3, "products": []},
             "u2": {"held_units": 3, "confirmed_units": 0, "products": []}}
    v = judge(over, observed(over, definition=CAPPED, users=users))
    names = failed(v)
    assert "record: no identity, device or network held more than its cap" in names
    assert "API: looked-up users of one identity, device or network within its cap" in names
    over_ledger = record(signed("r1", "u1", 3, "i1", "d1", "n1"), signed("r2", "u2", 3, "i1", "d2", "n2"))
    assert "ledger: no identity, device or network confirmed over its cap" in failed(
        judge(over_ledger, observed(over_ledger, definition=CAPPED)))
    # a device shared by three identities: 2 + 2 + 3 = 7 units > the device cap of 6
    dev = record(signed("r1", "u1", 2, "i1", "d9", "n1"), signed("r2", "u2", 2, "i2", "d9", "n2"),
                 signed("r3", "u3", 3, "i3", "d9", "n3"))
    assert "record: no identity, device or network held more than its cap" in failed(
        judge(dev, observed(dev, definition=CAPPED)))


def test_buyer_caps_without_signals_sent_are_skipped_not_passed() -> None:
    rec = record(grant("r1", "u1", "a", 2))
    c = check(judge(rec, observed(rec, definition=CAPPED)), "no identity, device or network held")
    assert c.ok is None and "no reserve carried buyer signals" in c.detail


def test_a_queued_run_record_round_trips_through_json() -> None:
    rec = queued(replace(grant("r1", "u1", "a", 2), token_user="u1", identity="i", device="d", network="n"))
    rec.tickets = {"t1": ticket("t1", "u1", 1, 100)}
    rec.people, rec.scalpers, rec.notes = 3, 2, ["x"]
    back = Record.from_json(rec.to_json())
    assert back.grants == rec.grants and back.tickets == rec.tickets
    assert (back.queued, back.people, back.scalpers, back.notes) == (True, 3, 2, ["x"])
