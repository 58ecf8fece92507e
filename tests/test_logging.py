"""Logging: the loggers, the connection in every record, levels, the frame trace; the Server header."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial

import pytest
import trio

import trio_ws
from trio_ws import WebSocketRequest, WebSocketServer, open_websocket_url, serve_websocket

from .conftest import HOST, UPGRADE_REQUEST, RawClient, close_payload, echo_handler, frame


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, logger: str | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if logger is None or r.name == logger]


@pytest.fixture
def records() -> Iterator[Records]:
    """Every record of the trio_ws loggers, DEBUG and up (the frame trace included)."""
    handler = Records()
    root = logging.getLogger("trio_ws")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_server_and_client_records_go_to_their_own_loggers(nursery: trio.Nursery, records: Records) -> None:
    server: WebSocketServer = await nursery.start(serve_websocket, echo_handler, HOST, 0, None)
    async with open_websocket_url(f"ws://{HOST}:{server.port}/") as ws:
        await ws.send_message("hello")
        assert await ws.get_message() == "hello"
        client_name = str(ws)
    await trio.testing.wait_all_tasks_blocked()
    server_lines = records.messages("trio_ws.server")
    client_lines = records.messages("trio_ws.client")
    # The trace: each side's frames out and events in, each line named after its connection.
    assert any(line.endswith("> TEXT 5 bytes b'hello'") and line.startswith("server-") for line in server_lines)
    assert any("< MESSAGE 5 characters 'hello'" in line for line in server_lines)
    assert any(line.startswith(f"{client_name}: > TEXT 5 bytes") for line in client_lines)
    assert any(line.startswith(f"{client_name}: < MESSAGE 5 characters 'hello'") for line in client_lines)
    assert any("> CLOSE" in line for line in client_lines)
    for record in records.records:
        if record.name in ("trio_ws.server", "trio_ws.client") and record.getMessage().startswith(
            ("server-", "client-")
        ):
            assert record.ws_connection == record.getMessage().split(":")[0]  # type: ignore[attr-defined]
            assert isinstance(record.ws_id, int)  # type: ignore[attr-defined]


async def test_a_logger_of_ones_own(nursery: trio.Nursery) -> None:
    handler = Records()
    mine = logging.getLogger("my_app.websockets")
    mine.addHandler(handler)
    mine.setLevel(logging.DEBUG)
    mine.propagate = False
    try:
        server: WebSocketServer = await nursery.start(
            partial(serve_websocket, echo_handler, HOST, 0, None, logger=mine)
        )
        async with open_websocket_url(f"ws://{HOST}:{server.port}/", logger=mine) as ws:
            await ws.send_message("x")
            await ws.get_message()
        await trio.testing.wait_all_tasks_blocked()
    finally:
        mine.removeHandler(handler)
        mine.propagate = True
    names = {line.split(":")[0] for line in handler.messages()}
    assert any(name.startswith("server-") for name in names)
    assert any(name.startswith("client-") for name in names)
    with pytest.raises(TypeError, match="logger"):
        async with open_websocket_url(f"ws://{HOST}:{server.port}/", logger="my_app"):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_the_peers_faults_are_info_never_error(nursery: trio.Nursery, records: Records) -> None:
    server: WebSocketServer = await nursery.start(serve_websocket, echo_handler, HOST, 0, None)
    # A protocol violation (a reserved opcode) and a bad handshake.
    async with await trio.open_tcp_stream(HOST, server.port) as stream:
        client = RawClient(stream)
        await client.handshake()
        await stream.send_all(frame(0x3, b"reserved"))
        assert await client.receive_frame() == (0x8, close_payload(1002, "reserved data opcode 0x3"))
    async with await trio.open_tcp_stream(HOST, server.port) as stream:
        await stream.send_all(UPGRADE_REQUEST.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"))
        assert (await RawClient(stream).receive_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 426 ")
    await trio.testing.wait_all_tasks_blocked()
    violations = [r for r in records.records if "broke the protocol" in r.getMessage()]
    assert [r.levelno for r in violations] == [logging.INFO]
    assert "1002 reserved data opcode 0x3" in violations[0].getMessage()
    assert not [r for r in records.records if r.levelno >= logging.ERROR]


async def test_no_trace_unless_debug_is_on_when_the_connection_opens(nursery: trio.Nursery) -> None:
    handler = Records()
    root = logging.getLogger("trio_ws")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        server: WebSocketServer = await nursery.start(serve_websocket, echo_handler, HOST, 0, None)
        async with open_websocket_url(f"ws://{HOST}:{server.port}/") as ws:
            await ws.send_message("quiet")
            await ws.get_message()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert not [line for line in handler.messages() if "> " in line or "< " in line]


# --- the Server header ------------------------------------------------------------------------


async def _head(port: int, request: bytes = UPGRADE_REQUEST) -> bytes:
    async with await trio.open_tcp_stream(HOST, port) as stream:
        return await RawClient(stream).handshake(request)


@pytest.mark.parametrize("server_header", ["default", "custom", None])
async def test_every_http_answer_has_a_server_header(nursery: trio.Nursery, server_header: str | None) -> None:
    async def handler(request: WebSocketRequest) -> None:
        if request.path == "/reject":
            await request.reject(401, extra_headers=[(b"WWW-Authenticate", b"Basic")])
        else:
            await echo_handler(request)

    options = {} if server_header == "default" else {"server_header": "example/2" if server_header else None}
    server: WebSocketServer = await nursery.start(partial(serve_websocket, handler, HOST, 0, None, **options))
    expected = {
        "default": b"Server: trio_ws/" + trio_ws.__version__.encode(),
        "custom": b"Server: example/2",
        None: None,
    }[server_header]
    answers = [
        await _head(server.port),  # 101
        await _head(server.port, UPGRADE_REQUEST.replace(b"GET /raw", b"GET /reject")),  # 401
        await _head(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),  # 426: plain HTTP
        await _head(server.port, UPGRADE_REQUEST.replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: x")),  # 400
    ]
    assert [answer.split(b" ", 2)[1] for answer in answers] == [b"101", b"401", b"426", b"400"]
    for answer in answers:
        lines = answer.split(b"\r\n")
        servers = [line for line in lines if line.lower().startswith(b"server:")]
        assert servers == ([expected] if expected else [])


async def test_an_http_handlers_own_server_header_wins(nursery: trio.Nursery) -> None:
    async def http(request: trio_ws.HTTPRequest) -> trio_ws.HTTPResponse:
        return trio_ws.HTTPResponse(200, [(b"Server", b"mine/1")], b"ok")

    server: WebSocketServer = await nursery.start(
        partial(serve_websocket, echo_handler, HOST, 0, None, http_handler=http)
    )
    answer = await _head(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [line for line in answer.split(b"\r\n") if line.lower().startswith(b"server:")] == [b"Server: mine/1"]


async def test_server_header_is_checked(nursery: trio.Nursery) -> None:
    with pytest.raises(ValueError, match="server_header"):
        await serve_websocket(echo_handler, HOST, 0, None, server_header="bad\r\nheader")
