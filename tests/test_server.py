"""The server side: serve_websocket, WebSocketServer, WebSocketRequest, wrap_server_stream."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio
import trio.testing

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionState,
    Endpoint,
    HandshakeError,
    WebSocketRequest,
    WebSocketServer,
    connect_websocket,
    open_websocket,
    serve_websocket,
    wrap_server_stream,
)
from trio_ws.testing import ServerFactory, expect_close

from .conftest import (
    HOST,
    RESOURCE,
    UPGRADE_REQUEST,
    MemoryNetwork,
    RawClient,
    close_payload,
    echo_handler,
    echo_loop,
    frame,
    start_server,
)


async def raw_connect(port: int) -> RawClient:
    return RawClient(await trio.open_tcp_stream(HOST, port))


async def test_serve_structure(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo_handler)
    assert isinstance(server, WebSocketServer)
    assert server.port != 0
    assert len(server.listeners) == 1
    assert isinstance(server.listeners[0], Endpoint)
    assert server.listeners[0].port == server.port
    # serve_websocket is one task in the caller's nursery, whatever the connections.
    assert len(nursery.child_tasks) == 1
    async with open_websocket(HOST, server.port, RESOURCE, use_ssl=False) as ws:
        await ws.send_message("x")
        assert await ws.get_message() == "x"
        assert len(nursery.child_tasks) == 1


async def test_handler_nursery_holds_one_task_per_connection(nursery: trio.Nursery) -> None:
    async with trio.open_nursery() as handlers:
        server = await start_server(nursery, echo_handler, handler_nursery=handlers)
        async with (
            open_websocket(HOST, server.port, RESOURCE, use_ssl=False) as ws1,
            open_websocket(HOST, server.port, RESOURCE, use_ssl=False) as ws2,
        ):
            await ws1.send_message("a")
            await ws2.send_message("b")
            assert [await ws1.get_message(), await ws2.get_message()] == ["a", "b"]
            assert len(handlers.child_tasks) == 2
        handlers.cancel_scope.cancel()


async def test_request_attributes(nursery: trio.Nursery) -> None:
    seen: list[WebSocketRequest] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request)
        ws = await request.accept(subprotocol="b")
        assert ws.path == "/p?q=1"
        assert ws.url == f"ws://{HOST}:{server.port}/p?q=1"
        assert ws.is_server
        assert str(ws).startswith("server-")
        assert ws.subprotocol == "b"
        assert (b"origin", b"http://example.test") in ws.handshake_headers

    server = await start_server(nursery, handler)
    headers = [(b"Origin", b"http://example.test")]
    async with open_websocket(
        HOST, server.port, "/p?q=1", use_ssl=False, subprotocols=["a", "b"], extra_headers=headers
    ) as ws:
        assert ws.subprotocol == "b"
    request = seen[0]
    assert request.path == "/p?q=1"
    assert request.host == f"{HOST}:{server.port}"
    assert request.origin == "http://example.test"
    assert request.proposed_subprotocols == ("a", "b")
    assert (b"origin", b"http://example.test") in request.headers
    assert all(name == name.lower() for name, _ in request.headers)
    assert isinstance(request.local, Endpoint)
    assert request.local.port == server.port
    assert isinstance(request.remote, Endpoint)
    assert str(request.remote.address) == HOST


async def test_origin_is_none_when_absent(nursery: trio.Nursery) -> None:
    origins: list[str | None] = []

    async def handler(request: WebSocketRequest) -> None:
        origins.append(request.origin)
        await request.accept()

    server = await start_server(nursery, handler)
    async with open_websocket(HOST, server.port, "/", use_ssl=False):
        pass
    assert origins == [None]


async def test_handler_return_closes_with_1000(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep(1)

    await memory_network.start_server(nursery, handler)
    with trio.fail_after(2):
        async with open_websocket(HOST, memory_network.port, "/", use_ssl=False) as ws:
            with expect_close(1000) as closed:
                await ws.get_message()
    assert closed.reason is not None
    assert closed.reason.name == "NORMAL_CLOSURE"


async def test_handler_error_closes_1011_logs_and_server_goes_on(
    ws_server_factory: ServerFactory, logged_errors: list[logging.LogRecord]
) -> None:
    fail = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        if request.path == "/bad":
            await fail.wait()
            raise RuntimeError("handler bug")
        await echo_loop(ws)

    server = await ws_server_factory(handler)
    async with open_websocket(HOST, server.port, "/good", use_ssl=False) as good:
        async with server.connect("/bad") as bad:
            fail.set()
            with expect_close(1011, "internal error"):
                await bad.get_message()
        # The other connection, and the server, are unaffected.
        await good.send_message("still here")
        assert await good.get_message() == "still here"
    async with open_websocket(HOST, server.port, "/good", use_ssl=False) as again:
        await again.send_message("new client")
        assert await again.get_message() == "new client"
    assert len(logged_errors) == 1
    assert logged_errors[0].levelno == logging.ERROR
    assert logged_errors[0].exc_info is not None
    assert isinstance(logged_errors[0].exc_info[1], RuntimeError)
    assert str(logged_errors[0].exc_info[1]) == "handler bug"
    with pytest.raises(RuntimeError, match="handler bug"):  # the fixture would fail the test with it
        server.raise_handler_errors()


async def test_handler_exception_group_is_contained(
    ws_server_factory: ServerFactory, logged_errors: list[logging.LogRecord]
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        async with trio.open_nursery() as inner:  # raises an ExceptionGroup
            inner.start_soon(partial(operator_error, "in a child task"))

    server = await ws_server_factory(handler)
    async with server.connect() as ws:
        with expect_close(1011):
            await ws.get_message()
    with pytest.raises(ExceptionGroup):
        server.raise_handler_errors()
    assert len(logged_errors) == 1  # with the child task's error, in its group or not
    assert logged_errors[0].exc_info is not None
    logged = logged_errors[0].exc_info[1]
    errors = logged.exceptions if isinstance(logged, BaseExceptionGroup) else (logged,)
    assert [(type(exc), str(exc)) for exc in errors] == [(LookupError, "in a child task")]


async def operator_error(message: str) -> None:
    raise LookupError(message)


async def test_handler_error_before_accept_gives_500(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord]
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        raise ValueError("before accept")

    server = await start_server(nursery, handler)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(HOST, server.port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    assert info.value.status_code == 500
    assert len(logged_errors) == 1
    assert logged_errors[0].exc_info is not None
    assert isinstance(logged_errors[0].exc_info[1], ValueError)


async def test_handler_returning_without_answer_gives_403(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        return

    server = await start_server(nursery, handler)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(HOST, server.port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    assert info.value.status_code == 403
    assert info.value.body is not None
    assert b"403 Forbidden" in info.value.body


async def test_server_shutdown_closes_connections_with_1001() -> None:
    in_handler = trio.Event()
    seen: list[CloseReason | None] = []
    async with trio.open_nursery() as nursery:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[WebSocketServer]) -> None:
            with server_scope:
                await serve_websocket(handler, HOST, 0, None, task_status=task_status)

        async def handler(request: WebSocketRequest) -> None:
            await request.accept()
            in_handler.set()
            await trio.sleep_forever()

        server: WebSocketServer = await nursery.start(run_server)
        async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
            await in_handler.wait()
            server_scope.cancel()
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            seen.append(info.value.reason)
    assert seen[0] is not None
    assert (seen[0].code, seen[0].reason) == (1001, "server shutting down")
    assert ws.closed is not None
    assert ws.closed.was_clean


async def test_server_answers_a_silent_client_with_nothing_and_drops_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    called = []

    async def handler(request: WebSocketRequest) -> None:
        called.append(request)  # pragma: no cover

    await memory_network.start_server(nursery, handler, connect_timeout=5)
    client = await memory_network.connect()
    async with client.stream:
        start = trio.current_time()
        await client.stream.send_all(b"GET / HTTP/1.1\r\n")  # and then nothing
        assert await client.receive_eof() == b""
        assert trio.current_time() - start == pytest.approx(5)
    assert called == []


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),  # not an upgrade: plain HTTP
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"426"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", b"400"),
        (b"GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n", b"400"),  # an 5-byte key
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 65536 + b"\r\n\r\n", b"431"),
        (
            b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            b"426",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", b"400"),  # TLS to a ws: port
    ],
)
async def test_bad_requests_get_an_http_error(
    echo_server: WebSocketServer, request_bytes: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    client = await raw_connect(echo_server.port)
    async with client.stream:
        await client.stream.send_all(request_bytes)
        response = await client.receive_eof()
    assert response.startswith(b"HTTP/1.1 " + status)
    if status == b"426":
        assert b"Upgrade Required" in response
    else:
        assert b"Invalid WebSocket handshake" in response
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    # ... and the server still serves.
    async with open_websocket(HOST, echo_server.port, "/", use_ssl=False) as ws:
        await ws.send_message("ok")
        assert await ws.get_message() == "ok"


async def test_accept_validates_before_sending(nursery: trio.Nursery) -> None:
    errors: list[BaseException] = []

    async def handler(request: WebSocketRequest) -> None:
        for bad in (lambda: request.accept(subprotocol="nope"), lambda: request.accept(extra_headers=[(b"X", b"\n")])):
            try:
                await bad()
            except ValueError as exc:
                errors.append(exc)
        ws = await request.accept(subprotocol="yes")  # nothing was sent yet: this still works
        with pytest.raises(RuntimeError):
            await request.accept()
        with pytest.raises(RuntimeError):
            await request.reject(400)
        await ws.send_message("accepted")

    server = await start_server(nursery, handler)
    async with open_websocket(HOST, server.port, "/", use_ssl=False, subprotocols=["yes"]) as ws:
        assert await ws.get_message() == "accepted"
    assert len(errors) == 2


async def test_reject_validates_status(nursery: trio.Nursery) -> None:
    raised: list[BaseException] = []

    async def handler(request: WebSocketRequest) -> None:
        for status in (101, 199, 600):
            try:
                await request.reject(status)
            except ValueError as exc:
                raised.append(exc)
        await request.reject(418, extra_headers=[(b"Content-Length", b"999")], body=b"teapot")
        with pytest.raises(ConnectionClosed):
            await request.accept()

    server = await start_server(nursery, handler)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(HOST, server.port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    assert (info.value.status_code, info.value.body) == (418, b"teapot")
    assert len(raised) == 3


async def test_server_closes_tcp_after_the_closing_handshake(raw_client: RawClient) -> None:
    response = await raw_client.handshake()
    assert response.startswith(b"HTTP/1.1 101 ")
    await raw_client.stream.send_all(frame(0x1, b"hi"))
    assert await raw_client.receive_frame() == (0x1, b"hi")
    await raw_client.stream.send_all(frame(0x8, close_payload(1000, "bye")))
    assert await raw_client.receive_frame() == (0x8, close_payload(1000, "bye"))
    assert await raw_client.receive_eof() == b""  # the server closes TCP first


async def test_zero_listeners_and_port_errors(nursery: trio.Nursery) -> None:
    with pytest.raises(ValueError, match="at least one"):
        WebSocketServer(echo_handler, [])
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    listeners.append(FakeListener())  # type: ignore[arg-type]
    server = WebSocketServer(echo_handler, listeners)
    with pytest.raises(RuntimeError, match="more than 1 listener"):
        server.port  # noqa: B018
    assert isinstance(server.listeners[0], Endpoint)
    assert isinstance(server.listeners[1], str)
    assert server.listeners[1].startswith("<")
    await nursery.start(server.run)
    only_fake = WebSocketServer(echo_handler, [FakeListener()])  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="does not have a port"):
        only_fake.port  # noqa: B018


class FakeListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener that never accepts: stands for any non-socket listener."""

    async def accept(self) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_wrap_server_stream(nursery: trio.Nursery) -> None:
    results: list[object] = []

    async def handle(stream: trio.SocketStream) -> None:
        request = await wrap_server_stream(nursery, stream)
        ws = await request.accept()
        async with ws:
            results.append(await ws.get_message())
        results.append(ws.closed)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=HOST))
    port = listeners[0].socket.getsockname()[1]
    async with open_websocket(HOST, port, RESOURCE, use_ssl=False) as ws:
        await ws.send_message("wrapped")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    assert results[0] == "wrapped"
    assert isinstance(results[1], CloseReason)
    assert results[1].code == 1000


async def test_wrap_server_stream_bad_handshake(nursery: trio.Nursery) -> None:
    outcomes: list[BaseException] = []
    done = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await wrap_server_stream(nursery, stream)
        except HandshakeError as exc:
            outcomes.append(exc)
        done.set()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=HOST))
    client = await raw_connect(listeners[0].socket.getsockname()[1])
    async with client.stream:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await client.receive_eof()).startswith(b"HTTP/1.1 426")
    await done.wait()
    assert isinstance(outcomes[0], HandshakeError)


async def test_server_side_close_from_handler(nursery: trio.Nursery) -> None:
    states: list[ConnectionState] = []
    handler_done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.aclose(4000, "server says bye")
        states.append(ws.state)
        handler_done.set()

    server = await start_server(nursery, handler)
    ws = await connect_websocket(nursery, HOST, server.port, "/", use_ssl=False)
    with pytest.raises(ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.reason) == (4000, "server says bye")
    await ws.aclose()
    await handler_done.wait()
    assert states == [ConnectionState.CLOSED]


async def test_upgrade_request_fixture_is_accepted(raw_client: RawClient) -> None:
    response = await raw_client.handshake(UPGRADE_REQUEST)
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in response


async def test_accept_cancelled_before_the_101_leaves_no_half_open_connection(nursery: trio.Nursery) -> None:
    states: list[ConnectionState] = []

    async def handler(request: WebSocketRequest) -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await request.accept()
        states.append(request._connection.state)

    server = await start_server(nursery, handler)
    with trio.fail_after(5), pytest.raises(HandshakeError):
        async with open_websocket(HOST, server.port, "/", use_ssl=False):
            pytest.fail("must not connect")  # pragma: no cover
    assert states == [ConnectionState.CONNECTING]


async def test_handler_ended_by_its_own_connection_closing_is_not_an_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:  # the common loop that never catches ConnectionClosed
                await ws.send_message(await ws.get_message())
        finally:
            done.set()

    server = await start_server(nursery, handler)
    async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
        await ws.send_message("hi")
        assert await ws.get_message() == "hi"
    await done.wait()
    assert ws.closed is not None
    assert ws.closed.code == 1000
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_connection_closed_from_another_connection_is_a_handler_error(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord]
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        raise ConnectionClosed(CloseReason(1000, "some other connection"))

    server = await start_server(nursery, handler)
    async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1011
    assert len(logged_errors) == 1
    assert logged_errors[0].exc_info is not None
    assert isinstance(logged_errors[0].exc_info[1], ConnectionClosed)
