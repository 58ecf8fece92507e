"""wss:// over trio.SSLStream, with trustme certificates on loopback."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from ipaddress import ip_address

import pytest
import trio
import trio.testing
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
from trio_ws._transport import Transport
from trio_ws._url import parse_url
from trio_ws.testing import ServerFactory, assert_closed_with

from .conftest import HOST, RESOURCE, echo_handler, echo_loop

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


# --- the direct path over TLS 1.3 (trio_ws._transport) --------------------------
#
# After the opening handshake, a connection over a trio.SSLStream on a plain
# socket drives the stream's SSLObject itself.  These tests look at which path
# a transport took (``_transport._tls``): the direct path reads trio's private
# attributes, and a trio that renamed them must fail here, not quietly slow down.

SIZES = [0, 1, 4095, 4096, 16384, 16385, 100_000, 1_000_000]


async def start_path_recording_server(
    nursery: trio.Nursery, context: ssl.SSLContext
) -> tuple[WebSocketServer, list[bool]]:
    """A TLS echo server, and for each connection it accepts, whether it took the direct path."""
    paths: list[bool] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        paths.append(ws._transport._tls is not None)
        await echo_loop(ws)

    return await start_tls_server(nursery, context, handler), paths


async def test_tls13_connections_take_the_direct_path_and_carry_every_size(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, server_paths = await start_path_recording_server(nursery, server_context)
    with trio.fail_after(FAST):
        async with open_websocket(HOST, server.port, RESOURCE, use_ssl=client_context) as ws:
            assert ws._transport._tls is not None
            assert ws._transport.stream.version() == "TLSv1.3"
            for size in SIZES:
                await echo_once(ws, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
            await echo_once(ws, "text é" * 1000)
            # A burst: many records arrive in one socket read, and are read out in order.
            for i in range(50):
                await ws.send_message(f"burst {i}")
            assert [await ws.get_message() for _ in range(50)] == [f"burst {i}" for i in range(50)]
            assert ws.statistics().bytes_received >= sum(SIZES)
    assert_closed_with(ws, 1000)
    assert server_paths == [True]


async def test_tls12_keeps_the_general_path(
    nursery: trio.Nursery, ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    ca.issue_cert(HOST).configure_cert(context)
    server, server_paths = await start_path_recording_server(nursery, context)
    with trio.fail_after(FAST):
        async with open_websocket(HOST, server.port, RESOURCE, use_ssl=client_context) as ws:
            assert ws._transport.stream.version() == "TLSv1.2"
            assert ws._transport._tls is None
            for size in (1, 16385, 100_000):
                await echo_once(ws, b"y" * size)
    assert_closed_with(ws, 1000)
    assert server_paths == [False]


@pytest.fixture
def pha_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts for post-handshake authentication: the server asks
    for the client's certificate after the handshake, and the client's answer is made
    by its next read (the one way to make a TLS 1.3 read produce records from Python)."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED
    server.post_handshake_auth = True
    client = ssl.create_default_context()
    ca.configure_trust(client)
    ca.issue_cert("client@example.org").configure_cert(client)
    client.post_handshake_auth = True
    return server, client


async def test_records_that_a_read_makes_are_sent_by_the_reader(
    pha_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    transport, server = await direct_transport(*pha_contexts, over="client")
    link = transport._tls
    assert link is not None
    with trio.fail_after(FAST):
        server._ssl_object.verify_client_post_handshake()
        await server.send_all(b"who are you?")  # the certificate request, then this
        assert await transport.receive() == b"who are you?"
        # The answer went out with the read: no writer may ever come to send it.
        assert link.outgoing.pending == 0
        await transport.send_all(b"me")
        assert await server.receive_some() == b"me"
    assert server.getpeercert(), "the server never got the client's certificate"
    await transport.aclose()
    await server.aclose()


async def test_post_handshake_authentication_over_websocket(
    nursery: trio.Nursery, pha_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = pha_contexts
    peer_certificates: list[object] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        assert ws._transport._tls is not None
        ws._transport.stream._ssl_object.verify_client_post_handshake()  # (Python has no public way)
        await ws.send_message("who are you?")  # the request goes out before this message
        assert await ws.get_message() == "me"  # read after the client's certificate
        peer_certificates.append(ws._transport.stream.getpeercert())
        await echo_loop(ws)

    server = await start_tls_server(nursery, server_context, handler)
    with trio.fail_after(FAST):
        async with open_websocket(HOST, server.port, RESOURCE, use_ssl=client_context) as ws:
            assert ws._transport._tls is not None
            assert await ws.get_message() == "who are you?"
            await ws.send_message("me")
            await echo_once(ws, "still talking")
    assert_closed_with(ws, 1000)
    assert len(peer_certificates) == 1
    assert peer_certificates[0], "the server never got the client's certificate"


async def tls_socket_pair(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, *, https_compatible: bool = False
) -> tuple[trio.SSLStream[trio.SocketStream], trio.SSLStream[trio.SocketStream]]:
    """A server and a client SSLStream over a socketpair, handshaken, as trio_ws's server leaves them."""
    a, b = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(a), server_context, server_side=True, https_compatible=https_compatible)
    client = trio.SSLStream(trio.SocketStream(b), client_context, server_hostname=HOST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    # The 101 goes out through the stream (it sends the session tickets OpenSSL held back).
    await server.send_all(b"101")
    assert await client.receive_some() == b"101"
    return server, client


async def direct_transport(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    *,
    over: str = "server",
    https_compatible: bool = False,
) -> tuple[Transport, trio.SSLStream[trio.SocketStream]]:
    """A Transport on the direct path over one end of ``tls_socket_pair()``, and the other end."""
    server, client = await tls_socket_pair(server_context, client_context, https_compatible=https_compatible)
    mine, other = (server, client) if over == "server" else (client, server)
    transport = Transport(mine, 4096)
    transport.go_direct()
    assert transport._tls is not None
    return transport, other


async def test_a_writer_waits_while_another_task_sends_records(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    transport, client = await direct_transport(server_context, client_context)
    link = transport._tls
    assert link is not None
    written = trio.Event()

    async def write() -> None:
        await transport.send_all(b"second")
        written.set()

    with trio.fail_after(FAST):
        async with trio.open_nursery() as nursery:
            await link.lock.acquire()  # as the reader holds it while it sends what a read made
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            assert not written.is_set()
            assert link.outgoing.pending > 0  # encrypted, waiting its turn
            link.lock.release()
            await written.wait()
        assert await client.receive_some() == b"second"
        await client.send_all(b"back")
        assert await transport.receive() == b"back"
    await transport.aclose()
    await client.aclose()


@pytest.mark.parametrize("https_compatible", [False, True])
async def test_an_eof_without_close_notify_is_an_error_unless_the_stream_says_otherwise(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, https_compatible: bool
) -> None:
    transport, client = await direct_transport(server_context, client_context, https_compatible=https_compatible)
    with trio.fail_after(FAST):
        await client.send_all(b"last words")
        assert await transport.receive() == b"last words"
        await client.transport_stream.aclose()  # TCP closes, no close_notify
        if https_compatible:
            assert await transport.receive() == b""
        else:
            with pytest.raises(trio.BrokenResourceError) as caught:
                await transport.receive()
            assert isinstance(caught.value.__cause__, ssl.SSLEOFError)
    await transport.aclose()


async def test_a_close_notify_is_an_eof(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    transport, client = await direct_transport(server_context, client_context)
    with trio.fail_after(FAST):
        await client.aclose()  # close_notify, then TCP closes
        assert await transport.receive() == b""
    await transport.aclose()


async def test_a_tls_stream_over_another_stream_keeps_the_general_path(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_context, server_side=True)
    client = trio.SSLStream(right, client_context, server_hostname=HOST)
    with trio.fail_after(FAST):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        transport = Transport(server, 4096)
        transport.go_direct()
        assert transport._tls is None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.send_all, b"general")
            assert await client.receive_some() == b"general"
    await transport.aclose()
    await client.aclose()


async def test_a_forged_record_breaks_the_stream_after_what_came_before(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    transport, client = await direct_transport(server_context, client_context)
    # Valid records, then an application-data record whose authentication fails, in one go.
    client._ssl_object.write(b"a" * 20_000)
    forged = b"\x17\x03\x03\x00\x20" + bytes(32)
    with trio.fail_after(FAST):
        await client.transport_stream.send_all(client._outgoing.read() + forged)
        received = b""
        while len(received) < 20_000:  # a large read takes what decrypts, and stops at the forgery
            received += await transport.receive(wants=100_000)
        assert received == b"a" * 20_000
        with pytest.raises(trio.BrokenResourceError) as caught:
            await transport.receive(wants=100_000)
        assert isinstance(caught.value.__cause__, ssl.SSLError)
        await transport.send_all(b"")  # nothing to send: no record, no error
        with pytest.raises(trio.BrokenResourceError):
            await transport.send_all(b"after the fault")
    await transport.aclose()
    await client.aclose()
