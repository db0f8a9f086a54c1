"""Admission tokens: signed, bound to campaign, user and expiry; keys rotate by id."""

from __future__ import annotations

import pytest

from engine.admission.tokens import KEYS_ENV, Keyring, KeyringError, Refusal, Verified

OLD = "k1:" + "a" * 32
NEW = "k2:" + "b" * 40


def ring(raw: str = OLD) -> Keyring:
    return Keyring.parse(raw)


def test_a_token_verifies_for_its_campaign_and_user() -> None:
    token = ring().sign("c1", "u1", 1_700_000_000_000)
    assert ring().verify(token, "c1", "u1") == Verified(1_700_000_000_000)
    assert token.startswith("v1.k1.1700000000000.")


@pytest.mark.parametrize(("campaign", "user"), [("c1", "u2"), ("c2", "u1"), ("c1", "u1x")])
def test_another_user_or_campaign_is_invalid(campaign: str, user: str) -> None:
    token = ring().sign("c1", "u1", 10**13)
    assert ring().verify(token, campaign, user) is Refusal.INVALID


def test_forged_tokens_are_invalid() -> None:
    token = ring().sign("c1", "u1", 10**13)
    version, kid, expiry, mac = token.split(".")
    later = f"{version}.{kid}.{int(expiry) + 1}.{mac}"  # a longer life, same MAC
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_key = Keyring.parse("k1:" + "z" * 32).sign("c1", "u1", 10**13)  # same kid, another secret
    for forged in (later, flipped, other_key, "", "v1", "v2" + token[2:], token + ".x", "x" * 300,
                   f"v1.k1.-5.{mac}", f"v1.k1.{expiry}.{mac[:-1]}"):
        assert ring().verify(forged, "c1", "u1") is Refusal.INVALID, forged


def test_expiry_is_judged_when_a_time_is_given() -> None:
    token = ring().sign("c1", "u1", 5000)
    assert ring().verify(token, "c1", "u1", now_ms=4999) == Verified(5000)
    assert ring().verify(token, "c1", "u1", now_ms=5000) is Refusal.EXPIRED
    assert ring().verify(token, "c1", "u2", now_ms=9999) is Refusal.INVALID  # invalid before expired


def test_unknown_key_id_is_invalid() -> None:
    token = ring(NEW).sign("c1", "u1", 10**13)
    assert ring(OLD).verify(token, "c1", "u1") is Refusal.INVALID


def test_rotation_new_key_signs_old_still_verifies_until_dropped() -> None:
    old_token = ring(OLD).sign("c1", "u1", 10**13)
    rotated = ring(f"{NEW},{OLD}")
    assert rotated.verify(old_token, "c1", "u1") == Verified(10**13)
    new_token = rotated.sign("c1", "u1", 10**13)
    assert new_token.split(".")[1] == "k2"
    assert ring(NEW).verify(new_token, "c1", "u1") == Verified(10**13)
    assert ring(NEW).verify(old_token, "c1", "u1") is Refusal.INVALID  # the old key dropped


@pytest.mark.parametrize("raw", ["k1:short", "k1", ":" + "a" * 32, "bad kid:" + "a" * 32,
                                 f"{OLD},{OLD}", f"{OLD},"])
def test_malformed_keyrings_are_refused(raw: str) -> None:
    with pytest.raises(KeyringError) as info:
        Keyring.parse(raw)
    assert "a" * 32 not in str(info.value)  # a secret never appears in the message


def test_from_env() -> None:
    assert Keyring.from_env({}) is None
    assert Keyring.from_env({KEYS_ENV: f" {OLD} "}) == ring()
