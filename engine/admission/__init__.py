"""Admission: pre-registration, the waiting room (queue mode), signed admission tokens.

A part of its own beside the core: its own keys under each campaign's hash tag and its own
scripts (``engine/lua/register.lua``, ``queue_*.lua``); it reads the campaign's counters through
the Engine. The reserve path takes an admission token's verdict (``tokens.Keyring.verify``, no
Redis round trip) as one more judgement.

    buyer.py        the buyer signals (identity, device, ip -> network)
    tokens.py       signing and verifying admission tokens; the keyring from the environment
    schedule.py     the admitted frontier from the rate history (pure)
    registry.py     registrations (one, or an import in bulk)
    queue.py        tickets, the seed, the rate, the export and its recomputation
    waiting.py      polls answered from the worker's memory
    service.py      ``AdmissionService``: the facade the API and the command line use
"""

from engine.admission.buyer import Buyer, parse_buyer
from engine.admission.service import AdmissionService
from engine.admission.tokens import Keyring, KeyringError, Refusal, Verified

__all__ = ["AdmissionService", "Buyer", "Keyring", "KeyringError", "Refusal", "Verified", "parse_buyer"]
