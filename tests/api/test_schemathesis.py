"""schemathesis against /openapi.json with every check, negative data and auth included: 0 failures.

Two bounded runs on a real server: one with generated ids (paths, bodies and headers fuzzed,
nearly every call a 404 or a 4xx), one pinned to an open campaign so that reserve, confirm, cancel,
the stateful links and the kill switch reach the engine's own logic.

Two allowances, stated here and nowhere else. The admission calls (registrations, the waiting
room, the admission rate) answer a schema-valid request with 409 when the campaign's phase or mode
refuses it (registration after the opening, a queue call on a campaign not in queue mode), which
no request body can change. And a schema-valid campaign definition may still be
refused with 422, because some of its rules join two fields (``closes_at`` after ``opens_at``, a
product's total within the tranche, unique product ids, ``id`` equal to the path), which JSON
Schema cannot say. Every other operation must accept every schema-valid request.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import ADMIN_TOKEN, STOREFRONT_TOKENS, ApiServer

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
MAX_EXAMPLES = int(os.environ.get("FLASHSALE_SCHEMATHESIS_EXAMPLES", "25"))
SEED = os.environ.get("FLASHSALE_SCHEMATHESIS_SEED", "20140326")
CONFIG = f"""
[auth.openapi.storefrontToken]
bearer = "{STOREFRONT_TOKENS['shop-a']}"
[auth.openapi.adminToken]
bearer = "{ADMIN_TOKEN}"

[[operations]]
include-operation-id = "putCampaign"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-operation-id = ["register", "joinQueue", "getTicket", "setAdmissionRate"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409"]
"""


@pytest.mark.parametrize("pinned", [False, True], ids=["generated-ids", "known-campaign"])
def test_schemathesis_all_checks(api_server: ApiServer, new_campaign: Callable[..., str], tmp_path: Path,
                                 pinned: bool) -> None:
    logged_before = len(api_server.output())  # the server is shared: other tests log their own 500s
    config = CONFIG
    if pinned:
        cid = new_campaign(total_units=10**9, user_cap_units=None, products=[
            {"id": "p1", "title": "a", "total_units": 10**9}])
        config += (f'\n[dictionaries.products]\nvalues = ["p1"]\n'
                   f'[parameters]\ncid = "{cid}"\nuid = "u1"\n'
                   '"body.product_id" = { dictionary = "products", probability = 0.9 }\n')
    (tmp_path / "schemathesis.toml").write_text(config)
    args = [SCHEMATHESIS, "run", f"{api_server.url}/openapi.json", "--checks", "all", "--mode", "all",
            "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--generation-database", "none",
            "--request-timeout", "10", "--no-color", "--report", "junit",
            "--report-junit-path", str(tmp_path / "junit.xml")]
    if pinned:  # closing is for good: it would leave nothing open to reserve from (tested by the other run)
        args += ["--exclude-operation-id", "closeCampaign"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert " passed" in done.stdout.split("SUMMARY")[-1], done.stdout[-5000:]
    assert "Traceback" not in api_server.output()[logged_before:]
