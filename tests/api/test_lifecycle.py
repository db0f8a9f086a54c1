"""`flashsale serve` under either server: SIGTERM drains the requests in flight, then exits."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import orjson
import pytest

from tests.api.conftest import definition, new_id
from tests.support.processes import STOREFRONT_TOKENS, ApiServer, admin_headers
from tests.support.servers import RedisServer


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_sigterm_drains_a_request_in_flight(redis_server: RedisServer, server: str) -> None:
    api = ApiServer(redis_server.url, server=server).start()
    try:
        cid = new_id()
        assert httpx.put(f"{api.url}/v1/campaigns/{cid}", json=definition(cid), headers=admin_headers(),
                         timeout=10).status_code == 201
        body = orjson.dumps({"user_id": "u1", "product_id": "p1", "units": 2})
        head = (f"POST /v1/campaigns/{cid}/reservations HTTP/1.1\r\nHost: t\r\n"
                f"Authorization: Bearer {STOREFRONT_TOKENS['shop-a']}\r\n"
                f"Idempotency-Key: drain\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        with socket.create_connection(("127.0.0.1", api.port), timeout=20) as s:
            s.sendall(head.encode() + body[:5])  # the request is in flight: its body is still coming
            time.sleep(0.3)
            api.signal(signal.SIGTERM)
            time.sleep(0.5)
            s.sendall(body[5:])
            reply = b""
            while b'"units"' not in reply and (chunk := s.recv(65536)):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
        assert b'"units":2' in reply
        assert api.proc is not None
        code = api.proc.wait(30)
        assert code == 0, api.output()  # drained: a clean exit under either server
        assert "Traceback" not in api.output()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api.url}/healthz", timeout=2)
    finally:
        api.stop()
