"""The client's reach: User-Agent, credentials in the URL, redirects, Unix sockets (both roles)."""

from __future__ import annotations

import base64
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from functools import partial

import pytest
import trio

import trio_ws
from trio_ws import (
    ConnectionRejected,
    HandshakeError,
    WebSocketRequest,
    WebSocketServer,
    connect_websocket_url,
    open_unix_listener,
    open_websocket,
    open_websocket_url,
    serve_websocket,
)

from .conftest import HOST, echo_handler


class Recorder:
    """A handler that keeps every request and echoes."""

    def __init__(self) -> None:
        self.requests: list[WebSocketRequest] = []

    async def __call__(self, request: WebSocketRequest) -> None:
        self.requests.append(request)
        await echo_handler(request)

    def header(self, name: bytes, index: int = -1) -> bytes | None:
        return dict(self.requests[index].headers).get(name)


async def start(nursery: trio.Nursery, handler: object, **options: object) -> WebSocketServer:
    server: WebSocketServer = await nursery.start(partial(serve_websocket, handler, HOST, 0, None, **options))
    return server


# --- User-Agent -------------------------------------------------------------------------------


async def test_a_user_agent_is_sent_by_default_and_can_be_changed_or_left_out(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server = await start(nursery, recorder)
    url = f"ws://{HOST}:{server.port}/"
    async with open_websocket_url(url):
        pass
    assert recorder.header(b"user-agent") == trio_ws._client.DEFAULT_USER_AGENT.encode()
    assert recorder.header(b"user-agent", -1).startswith(b"trio_ws/" + trio_ws.__version__.encode() + b" Python/3.")
    async with open_websocket_url(url, user_agent="my-bot/1.0"):
        pass
    assert recorder.header(b"user-agent") == b"my-bot/1.0"
    async with open_websocket_url(url, user_agent=None):
        pass
    assert recorder.header(b"user-agent") is None
    async with open_websocket_url(url, extra_headers=[(b"User-Agent", b"from-headers")]):
        pass
    assert recorder.header(b"user-agent") == b"from-headers"  # the caller's own wins


# --- credentials in the URL -------------------------------------------------------------------


async def test_credentials_in_the_url_become_basic_authorization(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_ws")
    recorder = Recorder()
    server = await start(nursery, recorder)
    url = f"ws://al%20ice:p%40ss%3Aword@{HOST}:{server.port}/private"
    async with open_websocket_url(url) as ws:
        assert "p%40ss" not in repr(ws)
        assert "p@ss" not in repr(ws)
        assert ws.url == f"ws://{HOST}:{server.port}/private"
        await ws.send_message("hello")
        await ws.get_message()
    expected = b"Basic " + base64.b64encode(b"al ice:p@ss:word")
    assert recorder.header(b"authorization") == expected
    assert not [record for record in caplog.records if "p@ss" in record.getMessage() or "word" in record.getMessage()]
    async with trio.open_nursery() as connections:
        ws = await connect_websocket_url(connections, url)
        await ws.aclose()
    assert recorder.header(b"authorization") == expected
    # An Authorization header of the caller's own wins.
    async with open_websocket_url(url, extra_headers=[(b"Authorization", b"Bearer token")]):
        pass
    assert recorder.header(b"authorization") == b"Bearer token"


# --- redirects --------------------------------------------------------------------------------


def redirecting(status: int, location: str, recorder: Recorder | None = None, source: str = "/old") -> object:
    async def handler(request: WebSocketRequest) -> None:
        if request.path.startswith(source):
            if recorder is not None:
                recorder.requests.append(request)
            await request.reject(status, extra_headers=[(b"Location", location.encode())])
        else:
            await (recorder or echo_handler)(request)

    return handler


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_followed_when_asked(nursery: trio.Nursery, status: int) -> None:
    recorder = Recorder()
    server = await start(nursery, redirecting(status, "/new?x=1", recorder))
    url = f"ws://{HOST}:{server.port}/old"
    with pytest.raises(ConnectionRejected) as info:  # trio-websocket's meaning, by default
        async with open_websocket_url(url):
            pass  # pragma: no cover
    assert info.value.status_code == status
    async with open_websocket_url(url, follow_redirects=True) as ws:
        assert ws.path == "/new?x=1"
        await ws.send_message("after the redirect")
        assert await ws.get_message() == "after the redirect"
    assert recorder.requests[-1].path == "/new?x=1"


async def test_redirects_absolute_relative_and_across_servers(nursery: trio.Nursery) -> None:
    target = Recorder()
    other = await start(nursery, target)
    # Absolute, to another server (another origin: no credentials go there), as http:// (meaning ws://).
    first = await start(nursery, redirecting(302, f"http://{HOST}:{other.port}/there"))
    url = f"ws://user:secret@{HOST}:{first.port}/old"
    async with open_websocket_url(
        url, follow_redirects=True, extra_headers=[(b"Cookie", b"a=b"), (b"X-Kept", b"yes")]
    ) as ws:
        assert ws.url == f"ws://{HOST}:{other.port}/there"
    headers = dict(target.requests[-1].headers)
    assert b"authorization" not in headers
    assert b"cookie" not in headers
    assert headers[b"x-kept"] == b"yes"
    # Relative, on the same server: credentials stay.
    same = Recorder()
    server = await start(nursery, redirecting(307, "new", same, source="/old/x"))
    async with open_websocket_url(f"ws://user:secret@{HOST}:{server.port}/old/x", follow_redirects=True) as ws:
        assert ws.path == "/old/new"
    assert dict(same.requests[-1].headers)[b"authorization"] == b"Basic " + base64.b64encode(b"user:secret")


async def test_at_most_max_redirects(nursery: trio.Nursery) -> None:
    server = await start(nursery, redirecting(302, "/old"))  # a loop
    url = f"ws://{HOST}:{server.port}/old"
    with pytest.raises(HandshakeError, match="more than 3 redirects"):
        async with open_websocket_url(url, follow_redirects=True, max_redirects=3):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="max_redirects"):
        async with open_websocket_url(url, follow_redirects=True, max_redirects=-1):
            pass  # pragma: no cover


async def test_never_from_wss_to_ws(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    plain = await start(nursery, echo_handler)
    server: WebSocketServer = await nursery.start(
        partial(serve_websocket, redirecting(301, f"ws://{HOST}:{plain.port}/"), HOST, 0, server_context)
    )
    with pytest.raises(HandshakeError, match="from wss:// to ws://"):
        async with open_websocket_url(f"wss://{HOST}:{server.port}/old", client_context, follow_redirects=True):
            pass  # pragma: no cover


async def test_a_redirect_without_location_or_to_no_websocket_url(nursery: trio.Nursery) -> None:
    async def no_location(request: WebSocketRequest) -> None:
        await request.reject(302)

    server = await start(nursery, no_location)
    with pytest.raises(ConnectionRejected):
        async with open_websocket_url(f"ws://{HOST}:{server.port}/", follow_redirects=True):
            pass  # pragma: no cover
    server = await start(nursery, redirecting(302, "ftp://example.com/"))
    with pytest.raises(HandshakeError, match="no WebSocket URL"):
        async with open_websocket_url(f"ws://{HOST}:{server.port}/old", follow_redirects=True):
            pass  # pragma: no cover


# --- Unix sockets -----------------------------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield os.path.join(directory, "ws.sock")


async def test_unix_sockets_both_roles(nursery: trio.Nursery, socket_path: str) -> None:
    recorder = Recorder()
    listener = await open_unix_listener(socket_path, mode=0o600)
    server = WebSocketServer(recorder, [listener])
    await nursery.start(server.run)
    assert oct(os.stat(socket_path).st_mode & 0o777) == "0o600"
    async with open_websocket_url("ws://example.com/chat", unix_socket=socket_path) as ws:
        await ws.send_message("over a Unix socket")
        assert await ws.get_message() == "over a Unix socket"
        assert isinstance(ws.local, str)  # no IP endpoint: the stream's repr()
    assert recorder.requests[-1].host == "example.com"
    assert recorder.requests[-1].path == "/chat"
    async with open_websocket("example.com", 80, "/x", use_ssl=False, unix_socket=socket_path) as ws:
        await ws.send_message("again")
        assert await ws.get_message() == "again"
    assert len(server.connections) == 0
    with pytest.raises(RuntimeError, match="port"):
        server.port  # noqa: B018  (a Unix socket has none)
    await server.aclose()


async def test_a_stale_socket_file_is_replaced_but_nothing_else(socket_path: str) -> None:
    listener = await open_unix_listener(socket_path)
    await listener.aclose()
    assert await trio.Path(socket_path).exists()  # left behind, as a crashed server would
    listener = await open_unix_listener(socket_path)
    await listener.aclose()
    await trio.Path(socket_path + ".txt").write_text("not a socket")
    with pytest.raises(FileExistsError):
        await open_unix_listener(socket_path + ".txt")
