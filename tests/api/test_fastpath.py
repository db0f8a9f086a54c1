"""engine.fastpath: the parts built on other packages' internals run only on tested releases, and
one switch turns them off; ``flashsale serve`` says so in one line and serves alike either way."""

from __future__ import annotations

import io
import logging

import httpx
import orjson
import pytest

from engine import fastpath
from tests.api.conftest import definition, new_id
from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer


def test_a_release_not_tested_turns_its_part_off_and_says_which() -> None:
    tested = frozenset({"0.54.0", "0.55.0"})
    assert fastpath.decide("lane", "uvicorn", "0.55.0", tested, off=False) == fastpath.Part("lane", True)
    for version in ("0.56.0", "0.55.1", "1.0.0", "0.53.0", None):
        part = fastpath.decide("lane", "uvicorn", version, tested, off=False)
        assert not part.on and f"uvicorn {version} is not among the tested releases (0.54.0, 0.55.0)" in part.why
    assert fastpath.decide("lane", "uvicorn", "0.55.0", tested, off=True) == fastpath.Part(
        "lane", False, "FLASHSALE_FAST_PATH=0")


@pytest.mark.parametrize(("value", "off"), [("0", True), ("off", True), (" FALSE ", True), ("no", True),
                                            ("1", False), ("", False), ("on", False)])
def test_the_switch(value: str, off: bool) -> None:
    assert fastpath.switched_off({fastpath.SWITCH: value}) is off
    tested = fastpath.serving({}).on
    assert fastpath.serving({fastpath.SWITCH: value}).on is (tested and not off)


def _lines(parts: list[fastpath.Part]) -> list[str]:
    stream = io.StringIO()
    log = logging.getLogger("test.fastpath")
    log.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        fastpath.notice(parts, log)
    finally:
        log.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_one_line_for_every_part_off_a_warning_when_a_release_was_not_tested() -> None:
    on = fastpath.Part("a", True)
    assert _lines([on, on]) == []
    untested = fastpath.decide("the reserve lane", "uvicorn", "9.9", frozenset({"0.55.0"}), off=False)
    switched = fastpath.decide("the lean metric values", "prometheus-client", "0.26.0", frozenset(), off=True)
    [line] = _lines([untested, switched])
    assert line.startswith("WARNING fast path off: the reserve lane: uvicorn 9.9 is not among the tested")
    assert "the lean metric values: FLASHSALE_FAST_PATH=0" in line
    [line] = _lines([switched])
    assert line.startswith("INFO fast path off: the lean metric values: FLASHSALE_FAST_PATH=0")


def test_the_installed_releases_are_tested_ones() -> None:
    """A newer release installs and serves (the documented path); this says the suite did not test the
    fast path on it, until it is tested both ways and listed in engine/fastpath.py."""
    for part in (fastpath.serving({}), fastpath.metric_values({})):
        if not part.on:
            pytest.skip(part.why)


def test_serve_with_the_switch_off_says_so_once_and_serves_alike(redis_server: RedisServer) -> None:
    server = ApiServer(redis_server.url, workers=2, FLASHSALE_FAST_PATH="0", FLASHSALE_LOG_LEVEL="INFO").start()
    try:
        cid = new_id()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            r = client.put(f"/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers())
            assert r.status_code == 201, r.text
            headers = [*storefront_headers("shop-a", new_id("k")).items(), ("X-Request-Id", "one"),
                       ("X-Request-Id", "two")]
            r = client.post(f"/v1/campaigns/{cid}/reservations", headers=headers,
                            content=orjson.dumps({"user_id": "u1", "product_id": "p1", "units": 1}))
            assert r.status_code == 201 and r.headers["x-request-id"] == "one"
        server.terminate()
        output = server.output()
    finally:
        server.stop()
    lines = [line for line in output.splitlines() if "fast path off" in line]
    assert len(lines) == 1, output
    assert ("the reserve lane: FLASHSALE_FAST_PATH=0; the lean metric values: FLASHSALE_FAST_PATH=0"
            in orjson.loads(lines[0])["msg"])


def test_serve_warns_once_only_on_a_release_not_tested(api_server: ApiServer) -> None:
    """The session's server (one worker, uvicorn, log level WARNING): silent on tested releases."""
    if fastpath.switched_off():
        pytest.skip("the fast path is switched off for this run (an INFO line, below the server's level)")
    lines = [line for line in api_server.output().splitlines() if "fast path off" in line]
    part = fastpath.serving()
    assert len(lines) == (0 if part.on else 1), lines
    if lines:
        assert orjson.loads(lines[0])["level"] == "warning" and part.why in lines[0]
