"""wss:// over trio.SSLStream, with trustme certificates on loopback."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from ipaddress import ip_address

import pytest
import trio
import trustme

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionTimeout,
    Endpoint,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    connect_websocket_url,
    open_websocket,
    open_websocket_url,
    serve_websocket,
)
from trio_ws._url import parse_url
from trio_ws.testing import ServerFactory, assert_closed_with

from .conftest import HOST, RESOURCE, echo_handler

# A TLS failure must be reported at once, not after connect_timeout (60 s by
# default, left as it is in these tests).
FAST = 5


async def start_tls_server(
    nursery: trio.Nursery,
    context: ssl.SSLContext,
    handler: Callable[[WebSocketRequest], Awaitable[None]] = echo_handler,
) -> WebSocketServer:
    server: WebSocketServer = await nursery.start(partial(serve_websocket, handler, HOST, 0, context))
    return server


def assert_tls_endpoint(endpoint: Endpoint | str, port: int | None = None) -> None:
    assert isinstance(endpoint, Endpoint), endpoint
    assert endpoint.is_ssl is True
    assert endpoint.address == ip_address(HOST)
    assert endpoint.url.startswith("wss://")
    if port is not None:
        assert endpoint.port == port


async def echo_once(ws: WebSocketConnection, message: str | bytes) -> None:
    await ws.send_message(message)
    assert await ws.get_message() == message


# --- a working wss:// connection ---------------------------------------------


async def test_open_websocket_wss_echo(
    wss_server_factory: ServerFactory, ws_client_ssl_context: ssl.SSLContext
) -> None:
    server = await wss_server_factory(echo_handler)
    assert_tls_endpoint(server.server.listeners[0], server.port)
    with trio.fail_after(FAST):
        async with open_websocket(HOST, server.port, RESOURCE, use_ssl=ws_client_ssl_context) as ws:
            await echo_once(ws, "hello over TLS")
            await echo_once(ws, b"\x00\x01binary")
            assert_tls_endpoint(ws.local)
            assert_tls_endpoint(ws.remote, server.port)
            assert ws.url == server.url + RESOURCE
    assert_closed_with(ws, 1000)


async def test_open_websocket_url_wss_echo_and_server_side_view(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    seen: dict[str, Endpoint | str] = {}
    server_url: list[str | None] = []
    close_reasons: list[CloseReason | None] = []
    handler_done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        seen["local"] = request.local
        seen["remote"] = request.remote
        ws = await request.accept()
        server_url.append(ws.url)
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed as exc:
            close_reasons.append(exc.reason)
        handler_done.set()

    server = await start_tls_server(nursery, server_context, handler)
    url = f"wss://{HOST}:{server.port}{RESOURCE}?q=1"
    with trio.fail_after(FAST):
        async with open_websocket_url(url, client_context) as ws:
            await echo_once(ws, "via URL")
            assert ws.url is not None
            assert ws.url.startswith("wss://")
            assert ws.url == url
            assert_tls_endpoint(ws.local)
            assert_tls_endpoint(ws.remote, server.port)
        await handler_done.wait()
    assert isinstance(ws.local, Endpoint)
    assert_tls_endpoint(seen["local"], server.port)
    assert_tls_endpoint(seen["remote"], ws.local.port)
    assert server_url == [f"wss://{HOST}:{server.port}{RESOURCE}?q=1"]
    assert len(close_reasons) == 1
    assert close_reasons[0] is not None
    assert close_reasons[0].code == 1000


async def test_connect_websocket_url_wss_echo(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = await start_tls_server(nursery, server_context)
    with trio.fail_after(FAST):
        async with trio.open_nursery() as conn_nursery:
            ws = await connect_websocket_url(conn_nursery, f"wss://{HOST}:{server.port}{RESOURCE}", client_context)
            assert_tls_endpoint(ws.remote, server.port)
            assert ws.url is not None
            assert ws.url.startswith("wss://")
            await echo_once(ws, "connect_websocket_url")
            await ws.aclose()
    assert ws.closed is not None
    assert ws.closed.code == 1000


# --- certificate problems: HandshakeError at once, with the ssl error as cause --


Connect = Callable[[], AbstractAsyncContextManager[WebSocketConnection]]


async def expect_tls_failure(connect: Connect) -> ssl.SSLError:
    """Enter the client context manager ``connect()``; return the ssl error behind the HandshakeError."""
    with trio.fail_after(FAST), pytest.raises(HandshakeError) as exc_info:
        async with connect():
            pytest.fail("connected although the certificate should have been refused")
    error = exc_info.value
    assert not isinstance(error, ConnectionTimeout)
    cause = error.__cause__
    assert isinstance(cause, ssl.SSLError), repr(cause)
    return cause


@pytest.mark.parametrize("how", ["default_context_url", "no_context_url", "use_ssl_true", "default_context_host"])
async def test_untrusted_ca_fails_at_once(nursery: trio.Nursery, server_context: ssl.SSLContext, how: str) -> None:
    server = await start_tls_server(nursery, server_context)
    url = f"wss://{HOST}:{server.port}{RESOURCE}"
    connect: Connect
    if how == "default_context_url":
        connect = partial(open_websocket_url, url, ssl.create_default_context())
    elif how == "no_context_url":
        connect = partial(open_websocket_url, url)
    elif how == "use_ssl_true":
        connect = partial(open_websocket, HOST, server.port, RESOURCE, use_ssl=True)
    else:
        connect = partial(open_websocket, HOST, server.port, RESOURCE, use_ssl=ssl.create_default_context())
    cause = await expect_tls_failure(connect)
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "certificate" in cause.verify_message.lower()


async def test_certificate_for_another_name(
    nursery: trio.Nursery, ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    """A trusted certificate that does not name the address connected to is refused."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(context)
    server = await start_tls_server(nursery, context)
    cause = await expect_tls_failure(
        partial(open_websocket_url, f"wss://{HOST}:{server.port}{RESOURCE}", client_context)
    )
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "mismatch" in cause.verify_message.lower()


async def test_host_name_missing_from_certificate(
    nursery: trio.Nursery, ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    """Connecting by a name ("localhost") that a certificate for 127.0.0.1 lacks."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    server = await start_tls_server(nursery, context)
    # The same certificate is accepted for the address it names...
    with trio.fail_after(FAST):
        async with open_websocket(HOST, server.port, RESOURCE, use_ssl=client_context) as ws:
            await echo_once(ws, "right name")
    # ...and refused for a name it does not have.
    cause = await expect_tls_failure(
        partial(open_websocket, "localhost", server.port, RESOURCE, use_ssl=client_context)
    )
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "mismatch" in cause.verify_message.lower()


# --- URLs and arguments --------------------------------------------------------


async def test_ssl_context_with_ws_url_is_value_error(
    nursery: trio.Nursery, echo_server: WebSocketServer, client_context: ssl.SSLContext
) -> None:
    url = f"ws://{HOST}:{echo_server.port}{RESOURCE}"
    with pytest.raises(ValueError, match=r"^SSL context must be None for ws: URL scheme$"):
        await connect_websocket_url(nursery, url, client_context)
    # open_websocket_url refuses it when called, before any connection.
    with pytest.raises(ValueError, match=r"^SSL context must be None for ws: URL scheme$"):
        open_websocket_url(url, client_context)


def test_wss_url_defaults_to_port_443() -> None:
    parsed = parse_url("wss://example.com/chat")
    assert parsed.secure is True
    assert parsed.port == 443
    assert parsed.resource == "/chat"
    assert parsed.host_header == "example.com"
    assert parse_url("wss://example.com").port == 443
    assert parse_url("WSS://example.com").port == 443
    # An explicit port wins; ws:// defaults to 80.
    assert parse_url("wss://example.com:8443/").port == 8443
    assert parse_url("wss://example.com:8443/").host_header == "example.com:8443"
    assert parse_url("ws://example.com/").port == 80
    assert parse_url("ws://example.com/").secure is False


# --- the server survives clients that fail TLS -------------------------------------


async def test_server_survives_failed_tls_clients(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handled = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal handled
        handled += 1
        await echo_handler(request)

    server = await start_tls_server(nursery, server_context, handler)
    url = f"wss://{HOST}:{server.port}{RESOURCE}"

    # A client that does not trust the server's CA.
    await expect_tls_failure(partial(open_websocket_url, url, ssl.create_default_context()))

    # A client that speaks plain ws:// to the TLS port.
    with trio.fail_after(FAST), pytest.raises(HandshakeError):
        async with open_websocket(HOST, server.port, RESOURCE, use_ssl=False):
            pytest.fail("a plain-text handshake succeeded on a TLS port")

    # A client that sends garbage instead of a TLS ClientHello, then hangs up.
    with trio.fail_after(FAST):
        stream = await trio.open_tcp_stream(HOST, server.port)
        async with stream:
            await stream.send_all(b"\x16\x03\x01\x00\x05hello, not TLS at all\r\n\r\n")
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass  # a reset is as good as an EOF here

    assert handled == 0

    # A good client still gets through.
    with trio.fail_after(FAST):
        async with open_websocket_url(url, client_context) as ws:
            await echo_once(ws, "still serving")
    assert handled == 1
