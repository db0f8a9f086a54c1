"""The dashboard's admin token in real headless Chromium: taken from the URL fragment and never
put in a request line or a log, asked for with a form when absent or refused, and not needed on
the ops listener.

Between the browser and the server stands a recording TCP relay: the test reads every byte the
browser sent, so "never in a request line" is checked on the wire, not inferred."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.ops.browser import Chromium
from tests.ops.conftest import API_CID as CID
from tests.support.processes import ADMIN_TOKEN, STOREFRONT_TOKENS, ApiServer

pytestmark = pytest.mark.browser
LIVE = f"""(() => {{ const c = document.querySelector('[data-campaign="{CID}"] [data-field="sold_units"]');
    return c && c.dataset.value !== "" && Number(document.body.dataset.polls) >= 2; }})()"""
FORM_SHOWN = "!document.getElementById('token-form').hidden && document.body.dataset.auth"


class Relay:
    """A loopback TCP relay to ``port`` that keeps every byte the clients sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: list[bytearray] = []  # per connection, what the client sent
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bytearray | None) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if keep is not None:
                    keep += data
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        keep = bytearray()
        self.sent.append(keep)
        self.writers += [writer, up_writer]
        with contextlib.suppress(asyncio.CancelledError):  # the relay closing under an open connection
            await asyncio.gather(self._pipe(reader, up_writer, keep), self._pipe(up_reader, writer, None))

    @classmethod
    @contextlib.asynccontextmanager
    async def to(cls, port: int) -> AsyncIterator[Relay]:
        relay = cls(port)
        relay.server = await asyncio.start_server(relay._handle, "127.0.0.1", 0)
        try:
            yield relay
        finally:
            relay.server.close()
            for w in relay.writers:
                w.close()
            await asyncio.sleep(0.1)  # the pipes see their ends and finish

    def requests(self) -> list[tuple[str, dict[str, str]]]:
        """(request line, headers) of every request sent (the page only sends GETs: no bodies)."""
        out = []
        for stream in self.sent:
            for head in bytes(stream).split(b"\r\n\r\n"):
                if not head.strip():
                    continue
                line, *rest = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
                out.append((line, headers))
        return out


async def test_the_token_in_the_fragment_is_sent_as_a_bearer_token_only(
        served: tuple[ApiServer, Path], tmp_path: Path) -> None:
    source, _ = served
    server = ApiServer(source.env["FLASHSALE_REDIS_URL"], FLASHSALE_LOG_LEVEL="DEBUG").start()  # logs all
    try:
        async with Relay.to(server.port) as relay, Chromium.launch(tmp_path) as browser:
            await browser.goto(f"{relay.url}/dashboard?campaign={CID}#token={quote(ADMIN_TOKEN, safe='')}")
            await browser.wait_for(LIVE)
            assert await browser.evaluate("location.href") == f"{relay.url}/dashboard?campaign={CID}"
            assert await browser.evaluate("location.hash") == ""
            assert await browser.evaluate("sessionStorage.getItem('flashsale.admin-token')") == ADMIN_TOKEN
            assert await browser.evaluate("document.getElementById('token-form').hidden") is True
            # a card's link opens another campaign's page in the same tab: the token goes along
            await browser.goto(f"{relay.url}/dashboard")
            await browser.wait_for(LIVE)
            requests = relay.requests()
        log = server.output()
    finally:
        server.stop()
    lines = [line for line, _ in requests]
    data = [(line, h) for line, h in requests if line.startswith("GET /dashboard/data")]
    assert len(data) >= 4 and any(line.startswith("GET /dashboard?campaign=") for line in lines), lines
    for line, headers in data:
        assert headers["authorization"] == f"Bearer {ADMIN_TOKEN}", line
    encoded = quote(ADMIN_TOKEN, safe="")
    for line, headers in requests:
        assert ADMIN_TOKEN not in line and encoded not in line, line
        assert ADMIN_TOKEN not in headers.get("referer", "") and encoded not in headers.get("referer", "")
    assert ADMIN_TOKEN not in log and encoded not in log


async def test_without_a_token_the_page_asks_for_it(served: tuple[ApiServer, Path], tmp_path: Path) -> None:
    server, _ = served

    async def submit(token: str) -> None:
        await browser.evaluate(f"""(() => {{ document.getElementById('token-input').value = {token!r};
            document.getElementById('token-form').requestSubmit(); return true; }})()""")

    async with Chromium.launch(tmp_path) as browser:
        await browser.goto(f"{server.url}/dashboard?campaign={CID}")
        assert await browser.wait_for(FORM_SHOWN) == "needed"
        assert await browser.evaluate("document.querySelectorAll('[data-campaign]').length") == 0
        assert "admin token" in await browser.evaluate("document.getElementById('status').textContent")

        await submit(STOREFRONT_TOKENS["shop-a"])  # a storefront's token is refused: asked again
        assert await browser.wait_for(f"{FORM_SHOWN} === 'refused' && document.body.dataset.auth") == "refused"
        assert await browser.evaluate("sessionStorage.getItem('flashsale.admin-token')") is None

        await submit(ADMIN_TOKEN)
        await browser.wait_for(LIVE)
        assert await browser.evaluate("document.getElementById('token-form').hidden") is True
        assert await browser.evaluate("document.getElementById('status').textContent") == "live"
        polls = await browser.evaluate("Number(document.body.dataset.polls)")
        await browser.wait_for(f"Number(document.body.dataset.polls) > {polls}")  # and it keeps polling


async def test_on_the_ops_listener_no_token_is_needed(served: tuple[ApiServer, Path], tmp_path: Path) -> None:
    source, _ = served
    server = ApiServer(source.env["FLASHSALE_REDIS_URL"], ops=True).start()
    try:
        async with Chromium.launch(tmp_path) as browser:
            await browser.goto(f"{server.ops_url}/dashboard?campaign={CID}")
            await browser.wait_for(LIVE)
            assert await browser.evaluate("document.getElementById('token-form').hidden") is True
            assert await browser.evaluate("document.body.dataset.auth") is None
    finally:
        server.stop()
