"""ws:// and wss:// URLs: what parse_url makes of them, and what it refuses."""

from __future__ import annotations

import pytest
import trio

from trio_ws import WebSocketServer, connect_websocket_url, open_websocket_url
from trio_ws._url import parse_url

from .conftest import HOST, RESOURCE


@pytest.mark.parametrize(
    ("url", "secure", "host", "port", "resource"),
    [
        ("ws://example.com", False, "example.com", 80, "/"),
        ("ws://example.com/", False, "example.com", 80, "/"),
        ("wss://example.com", True, "example.com", 443, "/"),
        ("WSS://Example.COM:8443/a/b?x=1&y=2", True, "example.com", 8443, "/a/b?x=1&y=2"),
        ("ws://[::1]:9000/chat", False, "::1", 9000, "/chat"),
        ("ws://h/path?", False, "h", 80, "/path?"),
        ("ws://h/p#fragment", False, "h", 80, "/p"),
        ("ws://h/caf\u00e9 au lait?q=\u00e9", False, "h", 80, "/caf%C3%A9%20au%20lait?q=%C3%A9"),
        ("ws://h/%D7%90%D7%91", False, "h", 80, "/%D7%90%D7%91"),
    ],
)
def test_parse(url: str, secure: bool, host: str, port: int, resource: str) -> None:
    parsed = parse_url(url)
    assert (parsed.secure, parsed.host, parsed.port, parsed.resource) == (secure, host, port, resource)


@pytest.mark.parametrize(
    ("url", "host_header", "normalised"),
    [
        ("ws://a:80/", "a", "ws://a/"),
        ("wss://a:443/x", "a", "wss://a/x"),
        ("ws://a:443/", "a:443", "ws://a:443/"),
        ("ws://[::1]:8000", "[::1]:8000", "ws://[::1]:8000/"),
        ("wss://[::1]", "[::1]", "wss://[::1]/"),
    ],
)
def test_host_header_and_url(url: str, host_header: str, normalised: str) -> None:
    parsed = parse_url(url)
    assert parsed.host_header == host_header
    assert parsed.geturl() == normalised


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/", 'scheme must be "ws:" or "wss:", not http:'),
        ("example.com", "scheme must be"),
        ("ws://", "has no host"),
        ("ws://:80/", "has no host"),
        ("ws://h:99999/", "invalid port"),
        ("ws://h:0/", "invalid port"),
        ("ws://h:abc/", "invalid port"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


async def test_open_websocket_url_rejects_bad_url_before_connecting() -> None:
    with pytest.raises(ValueError, match="scheme"):
        async with open_websocket_url("http://127.0.0.1/"):
            pytest.fail("must not connect")  # pragma: no cover


async def test_url_path_and_query_reach_the_server(echo_server: WebSocketServer) -> None:
    url = f"ws://{HOST}:{echo_server.port}{RESOURCE}/caf\u00e9?a=1"
    async with open_websocket_url(url) as ws:
        assert ws.path == f"{RESOURCE}/caf%C3%A9?a=1"
        assert ws.url == f"ws://{HOST}:{echo_server.port}{RESOURCE}/caf%C3%A9?a=1"
        await ws.send_message("x")
        assert await ws.get_message() == "x"


async def test_connect_url_with_empty_path(echo_server: WebSocketServer, nursery: trio.Nursery) -> None:
    ws = await connect_websocket_url(nursery, f"ws://{HOST}:{echo_server.port}")
    assert ws.path == "/"
    await ws.aclose()
    assert ws.closed is not None
    assert ws.closed.code == 1000
