"""Origin checks and plain HTTP on the WebSocket port."""

from __future__ import annotations

import logging

import pytest
import trio

from trio_ws import (
    ConnectionRejected,
    HTTPRequest,
    HTTPResponse,
    WebSocketRequest,
    WebSocketServer,
    open_websocket,
    serve_websocket,
)

from .conftest import HOST, RawClient, echo_handler, start_server


async def http_get(port: int, request: bytes) -> bytes:
    client = RawClient(await trio.open_tcp_stream(HOST, port))
    async with client.stream:
        await client.stream.send_all(request)
        return await client.receive_eof()


# --- origins ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.origins: list[str | None] = []

    async def __call__(self, request: WebSocketRequest) -> None:
        self.origins.append(request.origin)
        await echo_handler(request)


@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        ("https://good.example", True),
        ("HTTPS://GOOD.EXAMPLE", True),  # origins compare without regard to case
        ("http://127.0.0.1:8765", True),
        ("https://evil.example", False),
        ("null", False),  # a sandboxed page or a file: URL
        (None, False),  # no Origin header: not a browser
    ],
)
async def test_origins(nursery: trio.Nursery, origin: str | None, admitted: bool) -> None:
    recorder = Recorder()
    server = await start_server(nursery, recorder, origins=["https://good.example", "http://127.0.0.1:8765"])
    if admitted:
        async with open_websocket(HOST, server.port, "/", use_ssl=False, origin=origin) as ws:
            await ws.send_message("hi")
            assert await ws.get_message() == "hi"
        assert recorder.origins == [origin]
    else:
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket(HOST, server.port, "/", use_ssl=False, origin=origin):
                pytest.fail("must not connect")  # pragma: no cover
        assert info.value.status_code == 403
        assert info.value.body is not None
        assert b"origin" in info.value.body
        assert recorder.origins == []  # the handler never ran


async def test_none_in_origins_admits_clients_without_origin(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo_handler, origins={"https://good.example", None})
    async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
        await ws.send_message("no origin")
        assert await ws.get_message() == "no origin"


async def test_origins_must_be_a_collection() -> None:
    with pytest.raises(TypeError, match="collection"):
        await serve_websocket(echo_handler, HOST, 0, None, origins="https://good.example")


async def test_client_sends_origin(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server = await start_server(nursery, recorder)
    async with open_websocket(HOST, server.port, "/", use_ssl=False, origin="https://me.example"):
        pass
    assert recorder.origins == ["https://me.example"]


# --- plain HTTP -----------------------------------------------------------------------------


async def test_plain_http_gets_426_by_default(echo_server: WebSocketServer) -> None:
    response = await http_get(echo_server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 Upgrade Required")
    assert b"upgrade: websocket" in head.lower()
    assert b"WebSocket endpoint" in body


async def page(request: HTTPRequest) -> HTTPResponse | None:
    if request.path == "/":
        return HTTPResponse(200, [(b"content-type", b"text/html; charset=utf-8")], b"<h1>hello</h1>")
    if request.path == "/echo-body":
        return HTTPResponse(200, [], request.method.encode() + b" " + request.body)
    if request.path == "/boom":
        raise RuntimeError("the page handler broke")
    if request.path == "/bad-header":
        return HTTPResponse(200, [(b"x", b"a\r\nb")], b"")
    return None


@pytest.mark.parametrize(
    ("request_bytes", "status", "body"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"200", b"<h1>hello</h1>"),
        (b"GET /?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", b"200", b"<h1>hello</h1>"),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", b"200", b""),
        (b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"200", b"POST hello"),
        (b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n", b"404", b"404 Not Found\n"),
        (b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n", b"500", b"500 Internal Server Error\n"),
        (b"GET /bad-header HTTP/1.1\r\nHost: x\r\n\r\n", b"500", b"500 Internal Server Error\n"),
    ],
)
async def test_http_handler(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord], request_bytes: bytes, status: bytes, body: bytes
) -> None:
    server = await start_server(nursery, echo_handler, http_handler=page)
    response = await http_get(server.port, request_bytes)
    head, _, got = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status)
    assert got == body
    if status == b"200" and b"HEAD" in request_bytes:
        assert b"content-length: 14" in head.lower()  # HEAD: the length, without the body
    # WebSockets still work on the same port.
    async with open_websocket(HOST, server.port, "/", use_ssl=False) as ws:
        await ws.send_message("still a WebSocket server")
        assert await ws.get_message() == "still a WebSocket server"
    # A handler that fails (raises, or returns a response that cannot be sent) is logged, once.
    assert len(logged_errors) == (1 if status == b"500" else 0)
    if b"/boom" in request_bytes:
        assert logged_errors[0].exc_info is not None
        assert str(logged_errors[0].exc_info[1]) == "the page handler broke"


async def test_request_body_limit(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo_handler, http_handler=page)
    big = b"x" * 100_000
    response = await http_get(
        server.port, b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + big
    )
    assert response.startswith(b"HTTP/1.1 413")


async def bad_pages(request: HTTPRequest) -> object:
    return {
        "/header": HTTPResponse(200, [(b"x", 1)], b""),  # type: ignore[list-item]
        "/str-body": HTTPResponse(200, [], "text"),  # type: ignore[arg-type]
        "/not-a-response": "hello",
        "/status-101": HTTPResponse(101, [], b""),
        "/status-999": HTTPResponse(999, [], b""),
    }[request.path]


@pytest.mark.parametrize("path", ["/header", "/str-body", "/not-a-response", "/status-101", "/status-999"])
async def test_invalid_http_responses_become_500(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord], path: str
) -> None:
    server = await start_server(nursery, echo_handler, http_handler=bad_pages)
    response = await http_get(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 500")
    assert len(logged_errors) == 1
    again = await http_get(server.port, b"GET /status-101 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 500")  # and the server still serves
    assert len(logged_errors) == 2  # each invalid response is logged
    assert all(record.levelno == logging.ERROR for record in logged_errors)


async def test_origin_keyword_replaces_an_origin_header(nursery: trio.Nursery) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request.headers)
        await request.accept()

    server = await start_server(nursery, handler)
    async with open_websocket(
        HOST, server.port, "/", use_ssl=False, origin="https://kw.example", extra_headers=[(b"Origin", b"https://hdr")]
    ):
        pass
    assert [value for name, value in seen[0] if name == b"origin"] == [b"https://kw.example"]
