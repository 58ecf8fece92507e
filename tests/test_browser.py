"""trio_ws against a real browser: headless Chromium, driven over CDP by trio_ws's own client.

One Chromium per module (see ``chromium``); each test gets a fresh tab on a
CDP connection of its own (``page``), starts a trio_ws server with the
handler it needs, loads ``browser_page.html`` (its helpers are ``window.T``)
and runs JavaScript that opens WebSockets to the server and returns what the
page saw as JSON.  Each test then checks what both sides saw.

Chromium is required in CI (``$CI`` set): without it these tests fail; elsewhere
they are skipped.  Install it with ``apt-get install -y chromium`` (Debian), or
point ``$CHROMIUM`` at a Chromium or Chrome executable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from trio_ws import (
    ConnectionClosed,
    ConnectionState,
    HTTPRequest,
    HTTPResponse,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

from ._browser import BrowserPage, Chromium, find_chromium, launch_chromium, open_cdp, open_page, serve_page
from ._browser import spki_sha256_base64 as spki_hash
from .conftest import HOST, echo_loop

PAGE_HTML = (Path(__file__).parent / "browser_page.html").read_bytes()
TEXT = "h\u00e9llo \u4e16\u754c \U0001f600"
TIMEOUT = 20  # seconds; no scenario needs more than a few

# A tab of its own (CDP commands bounded by CDP_TIMEOUT, 30 s) and a scenario
# bounded by TIMEOUT: more than conftest's default deadline.
pytestmark = pytest.mark.deadline(120)


# --- fixtures ---------------------------------------------------------------


@dataclass
class BrowserTLS:
    """A certificate for 127.0.0.1 that the module's Chromium trusts, by its key's hash."""

    server_context: ssl.SSLContext
    spki: str  # base64(SHA-256(SubjectPublicKeyInfo)) of the leaf certificate


@pytest.fixture(scope="module")
def browser_tls(ca: trustme.CA) -> BrowserTLS:
    leaf = ca.issue_cert(HOST, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return BrowserTLS(context, spki_hash(leaf.cert_chain_pems[0].bytes()))


@pytest.fixture(scope="module")
def chromium(browser_tls: BrowserTLS) -> Iterator[Chromium]:
    """One headless Chromium for the whole module.

    pytest-trio only allows function-scoped async fixtures, so this is a
    synchronous fixture that runs trio itself (``trio.run``) to launch the
    browser and, after the module's last test, to stop it.  Its file
    descriptors (the pidfd trio keeps for the process) are opened before the
    first test's ``no_fd_leak`` snapshot and closed after the last one's check:
    pytest sets up module-scoped fixtures before function-scoped ones and
    tears them down after, so the check is untouched.  Each test's own CDP
    connection is opened and closed within the test.
    """
    executable = find_chromium()
    if executable is None:
        message = (
            "Chromium not found (looked for $CHROMIUM, /usr/lib/chromium/chromium, chromium, chromium-browser, "
            "google-chrome): install it with `apt-get install -y chromium`"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the browser tests need a browser. {message}", pytrace=False)
        pytest.skip(message)
    # The wss:// scenario's server certificate is trusted through its public
    # key hash: no CA store to edit, no download, and only that key is trusted
    # (test_wss_with_an_untrusted_certificate_fails checks that).  Reportedly the
    # flag needs --user-data-dir too; launch_chromium always passes a fresh one.
    browser = trio.run(
        partial(launch_chromium, executable, [f"--ignore-certificate-errors-spki-list={browser_tls.spki}"])
    )
    try:
        yield browser
    finally:
        trio.run(browser.stop)


@pytest.fixture
async def page(chromium: Chromium) -> AsyncIterator[BrowserPage]:
    """A fresh tab, on a CDP connection of its own (closed at the end of the test)."""
    async with open_cdp(chromium.ws_url) as cdp, open_page(cdp) as tab:
        yield tab


@dataclass
class Site:
    """Where a test's page comes from, and where its WebSockets go."""

    server: WebSocketServer
    origin: str  # the page's origin, http://127.0.0.1:PORT
    ws_url: str  # the trio_ws server, ws://127.0.0.1:PORT/ws (wss:// with TLS)


async def start_site(
    nursery: trio.Nursery,
    page: BrowserPage,
    handler: Callable[[WebSocketRequest], Awaitable[object]],
    *,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> Site:
    """Run ``handler`` on a trio_ws server that also serves the test page; load it in ``page``.

    The page and its WebSockets share one port, as in a real application:
    the page comes from the server's ``http_handler``.  With TLS the page is
    still loaded over plain HTTP, from a little server of its own
    (``serve_page``), because Chromium is told to trust the certificate only
    for WebSockets' sake.
    """
    options.setdefault("http_handler", serve_test_page)
    server: WebSocketServer = await nursery.start(partial(serve_websocket, handler, HOST, 0, ssl_context, **options))
    if ssl_context is None:
        origin = f"http://{HOST}:{server.port}"
    else:
        origin = await serve_page(nursery, {"/": ("text/html; charset=utf-8", PAGE_HTML)})
    await page.navigate(f"{origin}/")
    scheme = "wss" if ssl_context is not None else "ws"
    return Site(server, origin, f"{scheme}://{HOST}:{server.port}/ws")


async def serve_test_page(request: HTTPRequest) -> HTTPResponse | None:
    if request.path == "/":
        return HTTPResponse(200, [(b"content-type", b"text/html; charset=utf-8")], PAGE_HTML)
    return None


async def wait_until(predicate: Callable[[], bool], timeout: float = 5) -> None:
    """Poll ``predicate`` until it holds (the server side finishes closing a moment after the page)."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - trio_ws has no public "closed" event to wait on
            await trio.sleep(0.01)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- scenarios ----------------------------------------------------------------


async def test_subprotocol_chosen_from_list(nursery: trio.Nursery, page: BrowserPage) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: WebSocketRequest) -> None:
        seen["proposed"] = request.proposed_subprotocols
        seen["origin"] = request.origin
        conn = await request.accept(subprotocol="b")
        seen["subprotocol"] = conn.subprotocol
        await echo_loop(conn)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url, ["a", "b", "c"]);
                const report = s.report();
                await s.close(1000);
                return report;
            }""",
            site.ws_url,
        )
    assert result["protocol"] == "b"
    assert seen == {"proposed": ("a", "b", "c"), "origin": site.origin, "subprotocol": "b"}


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_extensions_as_the_page_sees_them(
    nursery: trio.Nursery, page: BrowserPage, compression: str | None
) -> None:
    seen: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        seen.append(conn.extensions)
        await conn.send_message(conn.extensions)
        await echo_loop(conn)

    big = "compress me " * 20_000 + TEXT  # compressible, and more than one deflate block
    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler, compression=compression)
        result = await page.call(
            """async (url, big) => {
                const s = await T.Socket.open(url);
                const told = await s.receive();
                s.send(big);
                const echo = await s.receive();
                await s.close(1000);
                return {...s.report(), told, echoed: echo === big};
            }""",
            site.ws_url,
            big,
        )
    assert seen == [result["extensions"]] == [result["told"]]
    assert result["protocol"] == ""  # none offered, none chosen
    if compression is None:
        assert result["extensions"] == ""
    else:
        assert result["extensions"].startswith("permessage-deflate")
    assert result["echoed"]
    assert result["close"] == {"code": 1000, "reason": "", "wasClean": True}


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_non_ascii_text_both_ways(nursery: trio.Nursery, page: BrowserPage, compression: str | None) -> None:
    received: list[str | bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        received.append(await conn.get_message())
        await conn.send_message(TEXT)
        await echo_loop(conn)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler, compression=compression)
        result = await page.call(
            """async (url, text) => {
                const s = await T.Socket.open(url);
                s.send(text);
                const got = await s.receive();
                await s.close(1000);
                return {got, same: got === text, utf8: new TextEncoder().encode(got).length, units: got.length};
            }""",
            site.ws_url,
            TEXT,
        )
    assert received == [TEXT]
    assert result["got"] == TEXT
    assert result["same"]
    assert result["utf8"] == len(TEXT.encode("utf-8"))
    assert result["units"] == len(TEXT.encode("utf-16-le")) // 2  # the emoji is a surrogate pair in JS


BINARY = bytes(range(256)) + bytes(range(255, -1, -1)) + b"\x00\xff\x80\x7f" * 64


@pytest.mark.parametrize("binary_type", ["blob", "arraybuffer"])
async def test_binary_both_ways(nursery: trio.Nursery, page: BrowserPage, binary_type: str) -> None:
    received: list[str | bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        for _ in range(3):
            received.append(await conn.get_message())
        await conn.send_message(BINARY)
        await conn.send_message(memoryview(BINARY[::-1]))
        await echo_loop(conn)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url, binaryType, data) => {
                const s = await T.Socket.open(url, [], binaryType);
                const bytes = T.fromBase64(data);
                s.send(bytes);                      // a Uint8Array
                s.send(new Blob([bytes]));          // a Blob
                s.send(bytes.buffer);               // an ArrayBuffer
                const got = [await T.describe(await s.receive()), await T.describe(await s.receive())];
                await s.close(1000);
                return got;
            }""",
            site.ws_url,
            binary_type,
            b64(BINARY),
        )
    assert received == [BINARY, BINARY, BINARY]
    assert [item["kind"] for item in result] == [binary_type, binary_type]
    assert [base64.b64decode(item["base64"]) for item in result] == [BINARY, BINARY[::-1]]


BIG = 16 * 2**20  # 16 MiB


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_16_mib_message_each_way(nursery: trio.Nursery, page: BrowserPage, compression: str | None) -> None:
    seen: dict[str, Any] = {}
    outgoing = os.urandom(BIG)

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        message = await conn.get_message()
        seen["type"] = type(message).__name__
        seen["length"] = len(message)
        seen["sha256"] = hashlib.sha256(message if isinstance(message, bytes) else message.encode()).hexdigest()
        await conn.send_message(outgoing)
        seen["buffered_after_send"] = conn.buffered_amount
        await echo_loop(conn)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler, max_message_size=32 * 2**20, compression=compression)
        result = await page.call(
            """async (url, size) => {
                const s = await T.Socket.open(url, [], "arraybuffer");
                const data = T.randomBytes(size);
                const sentHash = await T.sha256Hex(data);
                s.send(data);
                const got = await s.receive();
                await s.close(1000);
                return {sentHash, isArrayBuffer: got instanceof ArrayBuffer,
                        gotLength: got.byteLength, gotHash: await T.sha256Hex(got), close: s.closeEvent};
            }""",
            site.ws_url,
            BIG,
        )
    assert seen["type"] == "bytes"
    assert seen["length"] == BIG
    assert seen["sha256"] == result["sentHash"]
    assert seen["buffered_after_send"] == 0
    assert result["isArrayBuffer"]
    assert result["gotLength"] == BIG
    assert result["gotHash"] == hashlib.sha256(outgoing).hexdigest()
    assert result["close"] == {"code": 1000, "reason": "", "wasClean": True}


async def test_1000_messages_in_order_each_way(nursery: trio.Nursery, page: BrowserPage) -> None:
    count = 1000
    received: list[str | bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        for _ in range(count):
            received.append(await conn.get_message())
        for i in range(count):
            await conn.send_message(f"server {i}" if i % 2 else f"server {i}".encode())
        await echo_loop(conn)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url, count) => {
                const s = await T.Socket.open(url, [], "arraybuffer");
                for (let i = 0; i < count; i++) s.send(`page ${i}`);
                const got = [];
                for (let i = 0; i < count; i++) {
                    const data = await s.receive();
                    got.push(typeof data === "string" ? data : "bytes:" + new TextDecoder().decode(data));
                }
                await s.close(1000);
                return got;
            }""",
            site.ws_url,
            count,
        )
    assert received == [f"page {i}" for i in range(count)]
    assert result == [f"server {i}" if i % 2 else f"bytes:server {i}" for i in range(count)]


async def test_close_initiated_by_the_page(nursery: trio.Nursery, page: BrowserPage) -> None:
    seen: dict[str, Any] = {}
    connections: list[WebSocketConnection] = []

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        connections.append(conn)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await conn.get_message()
        reason = closed.value.reason
        seen["code"], seen["reason"] = (reason.code, reason.reason) if reason is not None else (None, None)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url);
                await s.close(4001, "bye from page");
                return s.report();
            }""",
            site.ws_url,
        )
        await wait_until(lambda: connections[0].state is ConnectionState.CLOSED)
    assert seen == {"code": 4001, "reason": "bye from page"}
    closed = connections[0].closed
    assert closed is not None
    assert (closed.code, closed.reason, closed.was_clean) == (4001, "bye from page", True)
    # trio_ws answers with the page's code and reason.
    assert result["close"] == {"code": 4001, "reason": "bye from page", "wasClean": True}
    assert result["events"] == ["open", "close"]


async def test_close_initiated_by_the_server(nursery: trio.Nursery, page: BrowserPage) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        assert await conn.get_message() == "close me, please"
        seen["state_before"] = conn.state
        await conn.aclose(4002, "bye from server")
        seen["state"] = conn.state
        seen["closed"] = conn.closed

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url);
                s.send("close me, please");
                await s.closed;
                return s.report();
            }""",
            site.ws_url,
        )
        await wait_until(lambda: "closed" in seen)
    assert result["close"] == {"code": 4002, "reason": "bye from server", "wasClean": True}
    assert result["events"] == ["open", "close"]
    assert result["states"] == [0, 1, 3]
    assert seen["state_before"] is ConnectionState.OPEN
    assert seen["state"] is ConnectionState.CLOSED
    assert (seen["closed"].code, seen["closed"].reason, seen["closed"].was_clean) == (4002, "bye from server", True)


async def test_rejected_handshake(nursery: trio.Nursery, page: BrowserPage) -> None:
    calls: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        calls.append(request.path)
        await request.reject(403, body=b"not you")

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url) => {
                const s = new T.Socket(url);
                await s.closed;
                return s.report();
            }""",
            site.ws_url + "?who=page",
        )
    assert calls == ["/ws?who=page"]
    assert result["events"] == ["error", "close"]
    assert result["close"] == {"code": 1006, "reason": "", "wasClean": False}
    assert result["states"][0] == 0
    assert set(result["states"][1:]) == {3}  # never OPEN


async def test_wss_with_a_trusted_certificate(
    nursery: trio.Nursery, page: BrowserPage, browser_tls: BrowserTLS
) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        seen["url"] = conn.url
        await echo_loop(conn)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler, ssl_context=browser_tls.server_context)
        assert site.ws_url.startswith("wss://")
        result = await page.call(
            """async (url, text) => {
                const s = await T.Socket.open(url);
                s.send(text);
                const echo = await s.receive();
                await s.close(1000);
                return {...s.report(), echo};
            }""",
            site.ws_url,
            "hello over TLS " + TEXT,
        )
    assert result["echo"] == "hello over TLS " + TEXT
    assert result["close"] == {"code": 1000, "reason": "", "wasClean": True}
    assert seen["url"] == site.ws_url


async def test_wss_with_an_untrusted_certificate_fails(nursery: trio.Nursery, page: BrowserPage) -> None:
    """The counter-check: a certificate whose key is not in Chromium's list is refused."""
    calls: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        calls.append(request.path)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert(HOST).configure_cert(context)
    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler, ssl_context=context)
        result = await page.call(
            """async (url) => {
                const s = new T.Socket(url);
                await s.closed;
                return s.report();
            }""",
            site.ws_url,
        )
    assert result["events"] == ["error", "close"]
    assert result["close"]["code"] == 1006
    assert calls == []


async def test_100_sockets_from_one_page(nursery: trio.Nursery, page: BrowserPage) -> None:
    count = 100
    connections: list[WebSocketConnection] = []
    open_now = peak = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal open_now, peak
        conn = await request.accept()
        connections.append(conn)
        open_now += 1
        peak = max(peak, open_now)
        try:
            await echo_loop(conn)
        finally:
            open_now -= 1

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url, count) => {
                const urls = Array.from({length: count}, (_, i) => `${url}?socket=${i}`);
                const sockets = await T.openMany(urls, 4);  // all open at once from here on
                const allOpen = sockets.every((s) => s.ws.readyState === WebSocket.OPEN);
                sockets.forEach((s, i) => s.send(`socket ${i}`));
                const echoes = await Promise.all(sockets.map((s) => s.receive()));
                const closes = await Promise.all(sockets.map((s) => s.close(1000)));
                return {allOpen, echoes, closes};
            }""",
            site.ws_url,
            count,
        )
        await wait_until(lambda: all(conn.state is ConnectionState.CLOSED for conn in connections))
    assert result["allOpen"]
    assert result["echoes"] == [f"socket {i}" for i in range(count)]
    assert result["closes"] == [{"code": 1000, "reason": "", "wasClean": True}] * count
    assert len(connections) == count
    assert peak == count  # the server had all 100 at once
    assert sorted(conn.path or "" for conn in connections) == sorted(f"/ws?socket={i}" for i in range(count))
    assert all(conn.closed is not None and conn.closed.code == 1000 and conn.closed.was_clean for conn in connections)


async def test_ready_state_and_buffered_amount(nursery: trio.Nursery, page: BrowserPage) -> None:
    seen: dict[str, Any] = {}
    chunk = 512 * 2**10

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        seen["accepted"] = conn.state
        total = 0
        for _ in range(4):
            total += len(await conn.get_message())
        await conn.send_message(f"got {total}")
        seen["buffered"] = conn.buffered_amount
        try:
            await conn.get_message()
        except ConnectionClosed:
            pass
        seen["closing"] = conn.state

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url, chunk) => {
                const s = new T.Socket(url);
                const atStart = s.ws.bufferedAmount;
                await s.opened;
                for (let i = 0; i < 4; i++) s.send(new Uint8Array(chunk));
                const afterSend = s.ws.bufferedAmount;
                await s.drained();
                const reply = await s.receive();
                const afterReply = s.ws.bufferedAmount;
                await s.close(1000);
                return {...s.report(), atStart, afterSend, afterReply, reply};
            }""",
            site.ws_url,
            chunk,
        )
    # constructed, open event, right after close(), close event
    assert result["states"] == [0, 1, 2, 3]
    assert result["events"] == ["open", "close"]
    assert result["atStart"] == 0
    # Within the task that called send(), nothing can have been sent yet (the
    # count goes down in later tasks); then it drains to 0.
    assert result["afterSend"] == 4 * chunk
    assert result["afterReply"] == 0
    assert result["bufferedAmount"] == 0
    assert result["reply"] == f"got {4 * chunk}"
    assert seen["accepted"] is ConnectionState.OPEN
    assert seen["buffered"] == 0
    assert seen["closing"] in (ConnectionState.CLOSING, ConnectionState.CLOSED)


async def test_server_ping_answered_by_the_browser(nursery: trio.Nursery, page: BrowserPage) -> None:
    pongs: list[bool] = []

    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        for payload in (b"one", b"two", None):
            with trio.fail_after(5):
                await conn.ping(payload)
            pongs.append(True)
        await conn.send_message("pinged")
        await echo_loop(conn)

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url);
                const got = await s.receive();
                await s.close(1000);
                return got;
            }""",
            site.ws_url,
        )
    assert result == "pinged"
    assert pongs == [True, True, True]


async def test_close_by_the_page_without_a_code(nursery: trio.Nursery, page: BrowserPage) -> None:
    """``ws.close()`` sends a Close frame with no status: 1005 on both sides, and still clean."""
    connections: list[WebSocketConnection] = []

    async def handler(request: WebSocketRequest) -> None:
        connections.append(await request.accept())
        await echo_loop(connections[0])

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url);
                await s.close();
                return s.report();
            }""",
            site.ws_url,
        )
        await wait_until(lambda: connections[0].state is ConnectionState.CLOSED)
    assert result["close"] == {"code": 1005, "reason": "", "wasClean": True}
    closed = connections[0].closed
    assert closed is not None
    assert (closed.code, closed.reason, closed.was_clean) == (1005, None, True)


async def test_too_big_a_message_from_the_page(nursery: trio.Nursery, page: BrowserPage) -> None:
    """Over ``max_message_size``: the page's socket is closed with 1009 and the server's reason."""
    connections: list[WebSocketConnection] = []

    async def handler(request: WebSocketRequest) -> None:
        connections.append(await request.accept())
        await echo_loop(connections[0])

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler, max_message_size=1000)
        result = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url);
                s.send("fits");
                const echo = await s.receive();
                s.send("x".repeat(1001));
                s.send("dropped");
                await s.closed;
                return {...s.report(), echo};
            }""",
            site.ws_url,
        )
        await wait_until(lambda: connections[0].state is ConnectionState.CLOSED)
    reason = "message is larger than max_message_size (1000 bytes)"
    assert result["echo"] == "fits"
    assert result["close"] == {"code": 1009, "reason": reason, "wasClean": True}
    closed = connections[0].closed
    assert closed is not None
    assert (closed.code, closed.reason, closed.was_clean) == (1009, reason, True)


async def test_handler_error_closes_with_1011(
    nursery: trio.Nursery, page: BrowserPage, logged_errors: list[logging.LogRecord]
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        conn = await request.accept()
        await conn.get_message()
        raise RuntimeError("a bug in the handler")

    with trio.fail_after(TIMEOUT):
        site = await start_site(nursery, page, handler)
        result = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url);
                s.send("trigger the bug");
                await s.closed;
                return s.report();
            }""",
            site.ws_url,
        )
    assert result["close"] == {"code": 1011, "reason": "internal error", "wasClean": True}
    assert len(logged_errors) == 1
    assert logged_errors[0].exc_info is not None
    assert str(logged_errors[0].exc_info[1]) == "a bug in the handler"


async def test_server_shutdown_closes_with_1001(nursery: trio.Nursery, page: BrowserPage) -> None:
    received = trio.Event()
    connections: list[WebSocketConnection] = []
    results: list[Any] = []

    async def handler(request: WebSocketRequest) -> None:
        connections.append(await request.accept())
        await connections[0].get_message()
        received.set()
        await trio.sleep_forever()

    async def run_page(url: str) -> None:
        script = """async (url) => {
            const s = await T.Socket.open(url);
            s.send("here");
            await s.closed;
            return s.report();
        }"""
        results.append(await page.call(script, url))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as server_nursery:
            site = await start_site(server_nursery, page, handler)
            nursery.start_soon(run_page, site.ws_url)
            await received.wait()
            server_nursery.cancel_scope.cancel()  # what stopping a server is
        await wait_until(lambda: bool(results))
    assert results[0]["close"] == {"code": 1001, "reason": "server shutting down", "wasClean": True}
    closed = connections[0].closed
    assert connections[0].state is ConnectionState.CLOSED
    assert closed is not None
    assert (closed.code, closed.was_clean) == (1001, True)


async def test_foreign_origin_refused(nursery: trio.Nursery, page: BrowserPage) -> None:
    """A page from another origin cannot open a WebSocket to a server with ``origins``."""
    calls: list[str | None] = []

    async def handler(request: WebSocketRequest) -> None:
        calls.append(request.origin)
        await echo_loop(await request.accept())

    with trio.fail_after(TIMEOUT):
        # Bind first: the allowed origin is the server's own, which names its port.
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        own_origin = f"http://{HOST}:{listeners[0].socket.getsockname()[1]}"
        server = WebSocketServer(handler, listeners, origins={own_origin}, http_handler=serve_test_page)
        await nursery.start(server.run)
        foreign = await serve_page(nursery, {"/": ("text/html; charset=utf-8", PAGE_HTML)})
        await page.navigate(f"{foreign}/")
        refused = await page.call(
            """async (url) => { const s = new T.Socket(url); await s.closed; return s.report(); }""",
            f"ws://{HOST}:{server.port}/ws",
        )
        await page.navigate(f"{own_origin}/")
        admitted = await page.call(
            """async (url) => {
                const s = await T.Socket.open(url);
                s.send("same origin");
                const echo = await s.receive();
                await s.close(1000);
                return {echo, report: s.report()};
            }""",
            f"ws://{HOST}:{server.port}/ws",
        )
    assert refused["events"] == ["error", "close"]
    assert refused["close"]["code"] == 1006
    assert admitted["echo"] == "same origin"
    assert calls == [own_origin]  # the foreign page never reached the handler


async def test_the_demo_page(nursery: trio.Nursery, page: BrowserPage) -> None:
    """python -m trio_ws serve's page: it connects, shows the API live, and chats with Python clients."""
    from trio_ws import open_websocket
    from trio_ws._demo import run_demo

    with trio.fail_after(TIMEOUT):
        server: WebSocketServer = await nursery.start(partial(run_demo, HOST, 0, compression="deflate"))
        await page.navigate(f"http://{HOST}:{server.port}/")
        shown = await page.call(
            """async () => {
                for (let i = 0; i < 200 && document.getElementById("readyState").textContent[0] !== "1"; i++) {
                    await new Promise((resolve) => setTimeout(resolve, 25));
                }
                const text = (id) => document.getElementById(id).textContent;
                return {state: text("readyState"), protocol: text("protocol"), extensions: text("extensions")};
            }"""
        )
        assert shown["state"] == "1 (OPEN)"
        assert shown["protocol"] == '"chat.v1"'
        assert "permessage-deflate" in shown["extensions"]
        async with open_websocket(HOST, server.port, "/chat", use_ssl=False, subprotocols=["chat.v1"]) as python:
            await page.call(
                """async () => {
                    document.getElementById("text").value = "hello from the page";
                    document.getElementById("chat").requestSubmit();
                }"""
            )
            while True:
                message = json.loads(await python.get_message())
                if message["type"] == "chat":
                    break
            assert message["text"] == "hello from the page"
            await python.send_message("hello from Python")
            logged = await page.call(
                """async () => {
                    for (let i = 0; i < 200; i++) {
                        if (document.getElementById("log").textContent.includes("hello from Python")) return true;
                        await new Promise((resolve) => setTimeout(resolve, 25));
                    }
                    return document.getElementById("log").textContent;
                }"""
            )
            assert logged is True


DEMO_UPLOAD = 64 * 2**20


def demo_upload_sha256(seed: int) -> str:
    """The SHA-256 of what the demo page's "Stream 64 MiB" sends for ``seed``, made again here.

    The page's ``uploadData(seed)``: 64 KiB of xorshift32 (13, 17, 5) from ``seed``,
    little-endian 32-bit words, repeated to 64 MiB.
    """
    words = []
    x = seed
    for _ in range(2**16 // 4):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        words.append(x)
    block = struct.pack(f"<{len(words)}I", *words)
    sha256 = hashlib.sha256()
    for _ in range(DEMO_UPLOAD // len(block)):
        sha256.update(block)
    return sha256.hexdigest()


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_the_demo_page_streams_64_mib(nursery: trio.Nursery, page: BrowserPage, compression: str | None) -> None:
    """The demo's "Stream 64 MiB": one 64 MiB message, which the server hashes piece by piece.

    Over its 16 MiB max_message_size, so only receive_fragments() could take it.
    """
    from trio_ws._demo import MAX_MESSAGE_SIZE, run_demo

    assert MAX_MESSAGE_SIZE < DEMO_UPLOAD
    with trio.fail_after(TIMEOUT):
        server: WebSocketServer = await nursery.start(partial(run_demo, HOST, 0, compression=compression))
        await page.navigate(f"http://{HOST}:{server.port}/")
        outcome = await page.call(
            """async () => {
                document.getElementById("stream").click();
                const outcome = await lastUpload;
                return {...outcome, shown: document.getElementById("upload").textContent};
            }"""
        )
    ack = outcome["ack"]
    expected = demo_upload_sha256(outcome["seed"])
    assert ack["type"] == "upload"
    assert ack["bytes"] == DEMO_UPLOAD
    assert ack["sha256"] == outcome["pageSha256"] == expected
    assert outcome["match"] is True
    assert f"sha256 {expected}: matches what this page sent" in outcome["shown"]
    # Taken as it came: many pieces, none larger than one read (1 MiB).
    assert ack["pieces"] >= DEMO_UPLOAD // 2**20
    assert ack["largest"] <= 2**20
    # send() only queues the message; it is all sent by the time the answer comes.
    assert outcome["bufferedAfterSend"] == DEMO_UPLOAD
    assert outcome["bufferedAtAck"] == 0


async def _chat_worker(page: BrowserPage) -> str:
    """The worker whose chat this page is on, once its first tick says so."""
    worker = await page.call(
        """async () => {
            for (let i = 0; i < 200; i++) {
                const shown = document.getElementById("worker").textContent;
                if (shown) return shown;
                await new Promise((resolve) => setTimeout(resolve, 25));
            }
            return "";
        }"""
    )
    assert worker in ("1", "2"), worker
    return str(worker)


async def test_the_demo_chat_across_two_workers_and_redis(
    chromium: Chromium, page: BrowserPage, redis_server: Any
) -> None:
    """`python -m trio_ws serve --workers 2 --pubsub redis://...`: two pages on the same URL,
    whose chats are served by different workers, see each other's messages; each page
    shows the worker that serves it, and each message the worker of its sender."""
    from .test_cli import cli, read_server_port

    with trio.fail_after(60):
        async with cli(
            "serve", "--host", HOST, "--port", "0", "--workers", "2", "--pubsub", redis_server.url
        ) as server:
            port = await read_server_port(server)
            url = f"http://{HOST}:{port}/"
            await page.navigate(url)
            first = await _chat_worker(page)
            async with open_cdp(chromium.ws_url) as cdp, open_page(cdp) as other:
                # The kernel picks the worker of each connection (SO_REUSEPORT hashes its
                # addresses and ports): load the second page until it lands on the other one.
                for _ in range(30):
                    await other.navigate(url)
                    second = await _chat_worker(other)
                    if second != first:
                        break
                assert second != first, "30 loads of the page all landed on one worker"
                await page.call(
                    """async () => {
                        document.getElementById("text").value = "hello across workers";
                        document.getElementById("chat").requestSubmit();
                    }"""
                )
                heard = await other.call(
                    """async () => {
                        for (let i = 0; i < 200; i++) {
                            const log = document.getElementById("log").textContent;
                            if (log.includes("hello across workers")) return log;
                            await new Promise((resolve) => setTimeout(resolve, 25));
                        }
                        return document.getElementById("log").textContent;
                    }"""
                )
            assert f"(worker {first}): hello across workers" in heard, heard[-500:]
            server.send_signal(signal.SIGINT)
            assert await server.wait() == 0
