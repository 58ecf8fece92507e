"""The client side: open_websocket(_url), connect_websocket(_url), wrap_client_stream."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio
import trio.testing

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionState,
    ConnectionTimeout,
    DisconnectionTimeout,
    Endpoint,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    connect_websocket,
    connect_websocket_url,
    open_websocket,
    open_websocket_url,
    serve_websocket,
    wrap_client_stream,
    wrap_server_stream,
)

from .conftest import (
    HOST,
    RESOURCE,
    MemoryNetwork,
    RawServerPeer,
    close_payload,
    frame,
    start_raw_server,
    start_server,
)


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


class Recorder:
    """A server handler that accepts, echoes, and records how each connection closed."""

    def __init__(self) -> None:
        self.closes: list[CloseReason | None] = []
        self.done = trio.Event()
        self.requests: list[WebSocketRequest] = []

    async def __call__(self, request: WebSocketRequest) -> None:
        self.requests.append(request)
        ws = await request.accept(subprotocol=next(iter(request.proposed_subprotocols), None))
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed as exc:
            self.closes.append(exc.reason)
            self.done.set()


async def test_open_websocket_echo_and_attributes(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept(extra_headers=[(b"X-Server", b"hello")])
        await ws.send_message(await ws.get_message())
        await ws.get_message()  # until the client closes

    server = await start_server(nursery, handler)
    async with open_websocket(HOST, server.port, RESOURCE, use_ssl=False) as ws:
        assert isinstance(ws, WebSocketConnection)
        assert ws.is_client
        assert not ws.is_server
        assert str(ws).startswith("client-")
        assert ws.state is ConnectionState.OPEN
        assert ws.closed is None
        assert ws.path == RESOURCE
        assert ws.url == f"ws://{HOST}:{server.port}{RESOURCE}"
        assert ws.subprotocol is None
        assert ws.extensions == ""
        assert (b"x-server", b"hello") in ws.handshake_headers
        assert isinstance(ws.local, Endpoint)
        assert isinstance(ws.remote, Endpoint)
        assert ws.remote.port == server.port
        assert not ws.local.is_ssl
        await ws.send_message("hello")
        assert await ws.get_message() == "hello"
    assert ws.state is ConnectionState.CLOSED
    assert ws.closed is not None
    assert (ws.closed.code, ws.closed.reason, ws.closed.was_clean) == (1000, None, True)
    with pytest.raises(ConnectionClosed):
        await ws.get_message()
    with pytest.raises(ConnectionClosed):
        await ws.send_message("late")


async def test_addresses_are_known_after_the_socket_closed(nursery: trio.Nursery) -> None:
    """Neither side asked for them while open: they were taken when the socket closed."""
    seen: list[WebSocketConnection] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(await request.accept())

    server = await start_server(nursery, handler)
    async with open_websocket(HOST, server.port, RESOURCE, use_ssl=False) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.get_message()  # the handler returned: the server closed
    await trio.testing.wait_all_tasks_blocked()
    for conn in (ws, seen[0]):
        assert conn.state is ConnectionState.CLOSED
        assert isinstance(conn.local, Endpoint)
        assert isinstance(conn.remote, Endpoint)
    assert ws.remote.port == seen[0].local.port == server.port  # type: ignore[union-attr]
    assert ws.local.port == seen[0].remote.port  # type: ignore[union-attr]


async def test_nondefault_close_code_reaches_server(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server = await start_server(nursery, recorder)
    async with open_websocket_url(f"ws://{HOST}:{server.port}/") as ws:
        await ws.aclose(code=4001, reason="done here")
        assert ws.closed is not None
        assert (ws.closed.code, ws.closed.reason) == (4001, "done here")
        await ws.aclose()  # idempotent
    await recorder.done.wait()
    assert recorder.closes[0] is not None
    assert (recorder.closes[0].code, recorder.closes[0].reason) == (4001, "done here")


async def test_subprotocol_negotiation(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server = await start_server(nursery, recorder)
    async with open_websocket(HOST, server.port, "/", use_ssl=False, subprotocols=("chat", "file")) as ws:
        assert ws.subprotocol == "chat"
    assert recorder.requests[0].proposed_subprotocols == ("chat", "file")


async def test_extra_headers_sent_and_protocol_headers_dropped(nursery: trio.Nursery) -> None:
    seen: list[WebSocketRequest] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request)
        await request.accept()

    server = await start_server(nursery, handler)
    headers = [
        (b"X-Test", b"yes"),
        (b"Host", b"example.test"),  # replaces the computed Host header
        (b"Sec-WebSocket-Version", b"8"),  # the handshake's own header: ignored
    ]
    async with open_websocket(HOST, server.port, "/", use_ssl=False, extra_headers=headers) as ws:
        assert ws.url == "ws://example.test/"
    request = seen[0]
    names = [name for name, _ in request.headers]
    assert (b"x-test", b"yes") in request.headers
    assert names.count(b"sec-websocket-version") == 1
    assert request.host == "example.test"


@pytest.mark.parametrize(
    "bad", [[(b"X-Bad", b"a\r\nInjected: 1")], [(b"Bad Name", b"v")], [(b"X", 1)], [(b"only-name",)]]
)
async def test_invalid_extra_headers_raise_before_anything_is_sent(echo_server: WebSocketServer, bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="header"):
        async with open_websocket(HOST, echo_server.port, "/", use_ssl=False, extra_headers=bad):  # type: ignore[arg-type]
            pytest.fail("must not connect")  # pragma: no cover


async def test_body_exception_is_not_wrapped(echo_server: WebSocketServer) -> None:
    context = KeyError("context")
    cause = RuntimeError("cause")
    error = ValueError("boom")
    with pytest.raises(ValueError, match="boom") as info:
        async with open_websocket(HOST, echo_server.port, "/", use_ssl=False):
            try:
                raise context
            except KeyError:
                raise error from cause
    assert info.value is error
    assert error.__cause__ is cause
    assert error.__context__ is context


async def test_body_exception_group_passes_through_unchanged(echo_server: WebSocketServer) -> None:
    group = ExceptionGroup("mine", [ValueError(1), TypeError(2)])
    with pytest.raises(ExceptionGroup) as info:
        async with open_websocket(HOST, echo_server.port, "/", use_ssl=False):
            raise group
    assert info.value is group


async def test_body_exception_closes_with_1000(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server = await start_server(nursery, recorder)
    with pytest.raises(ZeroDivisionError):
        async with open_websocket(HOST, server.port, "/", use_ssl=False):
            1 / 0  # noqa: B018
    await recorder.done.wait()
    assert recorder.closes[0] is not None
    assert recorder.closes[0].code == 1000


async def test_cancelled_body_still_closes_cleanly(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server = await start_server(nursery, recorder)
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        with pytest.raises(trio.Cancelled) as info:
            async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
                scope.cancel()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled as exc:
                    caught.append(exc)
                    raise
        assert info.value is caught[0]
        raise info.value
    assert scope.cancelled_caught
    assert ws.state is ConnectionState.CLOSED
    assert ws.closed is not None
    assert ws.closed.was_clean
    await recorder.done.wait()
    assert recorder.closes[0] is not None
    assert recorder.closes[0].code == 1000


async def test_cancelled_body_with_silent_peer_ends_within_disconnect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()  # never reads, so never answers the Close

    # A queue of 0 and one unread message block the server's reader.
    await memory_network.start_server(nursery, handler, message_queue_size=0)
    start = trio.current_time()
    with trio.move_on_after(1) as scope:
        async with open_websocket(HOST, memory_network.port, "/", use_ssl=False, disconnect_timeout=5) as ws:
            await ws.send_message("blocks the server's reader")
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(6)
    assert ws.state is ConnectionState.CLOSED
    assert ws.closed is not None
    assert ws.closed.code == 1000
    assert not ws.closed.was_clean


async def test_disconnection_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()

    await memory_network.start_server(nursery, handler, message_queue_size=0)
    with pytest.raises(DisconnectionTimeout):
        async with open_websocket(HOST, memory_network.port, "/", use_ssl=False, disconnect_timeout=2) as ws:
            await ws.send_message("blocks the server's reader")
    assert ws.state is ConnectionState.CLOSED


async def test_body_error_wins_over_disconnection_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()

    await memory_network.start_server(nursery, handler, message_queue_size=0)
    with pytest.raises(KeyError):
        async with open_websocket(HOST, memory_network.port, "/", use_ssl=False, disconnect_timeout=2) as ws:
            await ws.send_message("blocks the server's reader")
            raise KeyError("mine")


async def test_connect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await trio.sleep(10)
        await request.accept()  # pragma: no cover

    await memory_network.start_server(nursery, handler)
    start = trio.current_time()
    with pytest.raises(ConnectionTimeout):
        async with open_websocket(HOST, memory_network.port, "/", use_ssl=False, connect_timeout=3):
            pytest.fail("must not connect")  # pragma: no cover
    assert trio.current_time() - start == pytest.approx(3)


async def test_connection_refused() -> None:
    port = closed_port()
    with pytest.raises(HandshakeError) as info:
        async with open_websocket(HOST, port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(HandshakeError):
        async with open_websocket_url(f"ws://{HOST}:{port}/"):
            pytest.fail("must not connect")  # pragma: no cover


async def test_connect_websocket_raises_oserror_like_trio_websocket(nursery: trio.Nursery) -> None:
    with pytest.raises(OSError, match="failed"):
        await connect_websocket(nursery, HOST, closed_port(), "/", use_ssl=False)


async def test_use_ssl_must_be_bool_or_context(nursery: trio.Nursery, echo_server: WebSocketServer) -> None:
    with pytest.raises(TypeError, match=r"`use_ssl` argument must be bool or ssl\.SSLContext"):
        await connect_websocket(nursery, HOST, echo_server.port, "/", use_ssl=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        async with open_websocket(HOST, echo_server.port, "/", use_ssl="yes"):  # type: ignore[arg-type]
            pytest.fail("must not connect")  # pragma: no cover


async def test_rejected_with_body(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(401, extra_headers=[(b"WWW-Authenticate", b"Basic")], body=b"who are you?")

    server = await start_server(nursery, handler)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(HOST, server.port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    rejected = info.value
    assert rejected.status_code == 401
    assert rejected.body == b"who are you?"
    assert (b"www-authenticate", b"Basic") in rejected.headers
    assert (b"content-length", b"12") in rejected.headers


async def test_rejected_without_body(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(404)

    server = await start_server(nursery, handler)
    with pytest.raises(ConnectionRejected) as info:
        await connect_websocket(nursery, HOST, server.port, "/", use_ssl=False)
    assert info.value.status_code == 404
    assert info.value.body == b""


async def test_rejected_with_informational_status(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.receive_until(b"\r\n\r\n")
        await peer.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        await peer.receive_eof()

    port = await start_raw_server(nursery, script)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(HOST, port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    assert info.value.status_code == 100
    assert info.value.body is None
    assert repr(info.value) == "ConnectionRejected<status_code=100>"


async def test_rejection_body_ending_at_eof(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.receive_until(b"\r\n\r\n")
        await peer.stream.send_all(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\ntry later")

    port = await start_raw_server(nursery, script)
    with pytest.raises(ConnectionRejected) as info:
        await connect_websocket(nursery, HOST, port, "/", use_ssl=False)
    assert (info.value.status_code, info.value.body) == (503, b"try later")


async def test_bad_accept_token_is_a_handshake_error(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.receive_until(b"\r\n\r\n")
        await peer.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n"
        )
        await peer.receive_eof()

    port = await start_raw_server(nursery, script)
    with pytest.raises(HandshakeError, match=r"Bad accept token") as info:
        async with open_websocket(HOST, port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    assert not isinstance(info.value, ConnectionRejected)


async def test_server_closes_during_handshake(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.receive_until(b"\r\n\r\n")  # then close without answering

    port = await start_raw_server(nursery, script)
    with pytest.raises(HandshakeError, match="closed"):
        async with open_websocket(HOST, port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover


async def test_server_closing_right_after_accept(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("first and last")

    server = await start_server(nursery, handler)
    async with open_websocket(HOST, server.port, "/", use_ssl=False, message_queue_size=4) as ws:
        assert await ws.get_message() == "first and last"
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason is not None
        assert info.value.reason.code == 1000
        assert info.value.reason.name == "NORMAL_CLOSURE"


async def test_connect_websocket_and_url(nursery: trio.Nursery, echo_server: WebSocketServer) -> None:
    ws1 = await connect_websocket(nursery, HOST, echo_server.port, RESOURCE, use_ssl=False)
    ws2 = await connect_websocket_url(nursery, f"ws://{HOST}:{echo_server.port}{RESOURCE}")
    for ws in (ws1, ws2):
        assert ws.state is ConnectionState.OPEN
        await ws.send_message(b"bytes")
        assert await ws.get_message() == b"bytes"
        await ws.aclose()
        assert ws.closed is not None
        assert ws.closed.was_clean


async def test_cancelling_the_callers_nursery_aborts_the_connection(echo_server: WebSocketServer) -> None:
    async with trio.open_nursery() as nursery:
        ws = await connect_websocket(nursery, HOST, echo_server.port, "/", use_ssl=False)
        nursery.cancel_scope.cancel()
    assert ws.state is ConnectionState.CLOSED
    assert ws.closed is not None
    assert ws.closed.code == 1006
    assert ws.closed.reason is not None
    assert "reader task was cancelled" in ws.closed.reason


async def test_wrap_streams_over_memory(nursery: trio.Nursery) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server_side: list[WebSocketConnection] = []

    async def serve() -> None:
        request = await wrap_server_stream(nursery, server_stream)
        assert request.path == RESOURCE
        ws = await request.accept()
        server_side.append(ws)
        await ws.send_message(await ws.get_message())
        with pytest.raises(ConnectionClosed):
            await ws.get_message()

    nursery.start_soon(serve)
    ws = await wrap_client_stream(nursery, client_stream, "memory.test", RESOURCE)
    async with ws:
        await ws.send_message("over memory")
        assert await ws.get_message() == "over memory"
        assert isinstance(ws.local, str)
        assert ws.local.startswith("StapledStream(")
        assert ws.url == f"ws://memory.test{RESOURCE}"
    assert ws.closed is not None
    assert ws.closed.code == 1000
    assert server_side[0].closed is not None
    assert server_side[0].closed.code == 1000


async def test_client_sends_close_before_eof_from_server(nursery: trio.Nursery) -> None:
    """After the closing handshake the client closes its socket; the server saw a clean Close."""
    got: list[tuple[int, bytes]] = []

    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        got.append(await peer.receive_frame())
        await peer.stream.send_all(frame(0x8, close_payload(1000), mask=False))
        await peer.receive_eof()

    port = await start_raw_server(nursery, script)
    async with open_websocket(HOST, port, "/", use_ssl=False) as ws:
        pass
    assert got == [(0x8, close_payload(1000))]
    assert ws.closed is not None
    assert ws.closed.was_clean


async def test_explicit_aclose_timeout_is_not_raised_again_at_exit(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()

    await memory_network.start_server(nursery, handler, message_queue_size=0)
    async with open_websocket(HOST, memory_network.port, "/", use_ssl=False, disconnect_timeout=2) as ws:
        await ws.send_message("blocks the server's reader")
        await ws.aclose()  # times out, quietly: aclose() does not raise
        assert ws.closed is not None
        assert not ws.closed.was_clean
    assert ws.state is ConnectionState.CLOSED


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback on this machine")
async def test_ipv6_loopback(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server: WebSocketServer = await nursery.start(partial(serve_websocket, recorder, "::1", 0, None))
    url = f"ws://[::1]:{server.port}/six"
    async with open_websocket_url(url) as ws:
        assert ws.url == url
        assert isinstance(ws.remote, Endpoint)
        assert str(ws.remote.address) == "::1"
        assert ws.remote.url == f"ws://[::1]:{server.port}"
        await ws.send_message("over IPv6")
        assert await ws.get_message() == "over IPv6"
    assert recorder.requests[0].host == f"[::1]:{server.port}"


async def test_aclose_ends_the_reader_task(nursery: trio.Nursery, echo_server: WebSocketServer) -> None:
    async with trio.open_nursery() as connections:
        ws = await connect_websocket(connections, HOST, echo_server.port, "/", use_ssl=False)
        assert len(connections.child_tasks) == 1  # the reader
        await ws.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert len(connections.child_tasks) == 0


async def test_a_crash_in_the_reader_comes_out_unwrapped(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a bug gets here; it must still not reach the user as an ExceptionGroup."""
    bug = RuntimeError("bug in the reader")

    def broken() -> int:
        raise bug

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(await ws.get_message())  # the client's "go" comes back and hits the bug
        with pytest.raises(ConnectionClosed):
            await ws.get_message()

    server = await start_server(nursery, handler)
    # The reader of this one client connection is broken, once its body runs.
    with pytest.raises(RuntimeError) as info:
        async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
            monkeypatch.setattr(ws, "_deliver", broken)
            await ws.send_message("go")
            await trio.sleep_forever()
    assert info.value is bug
    # When the body raises too, the body's exception wins, with the bug in its context.
    with pytest.raises(KeyError) as info2:
        async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
            monkeypatch.setattr(ws, "_deliver", broken)
            await ws.send_message("go")
            try:
                await trio.sleep_forever()
            finally:
                raise KeyError("the body's own error")
    assert info2.value.args == ("the body's own error",)
    context = info2.value.__context__
    assert isinstance(context, BaseExceptionGroup)
    assert bug in context.exceptions
