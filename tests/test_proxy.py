"""Proxies: URL parsing, the environment, and connecting through real proxies on loopback.

The proxies are real programs, started by the fixtures below on free loopback
ports with configuration files in a temporary directory, and stopped at the
end of the module:

- tinyproxy (HTTP CONNECT): without authentication, with Basic
  authentication, and with CONNECT allowed to port 443 only;
- microsocks (SOCKS5): without authentication, and with a user name and
  password;
- dante (``danted``; SOCKS4 and SOCKS5, without authentication).

An ``https://`` proxy is tinyproxy behind a TLS front written here (neither
proxy listens with TLS itself).  socks4a, which neither SOCKS server speaks,
is checked against a scripted server that records the request.

In CI (``$CI`` set) a missing proxy program fails the tests that need it;
elsewhere they are skipped.  ``.ci/run`` installs them:
``apt-get install tinyproxy-bin microsocks dante-server``.
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from trio_ws import HandshakeError, WebSocketConnection, WebSocketServer, serve_websocket, wrap_client_stream
from trio_ws._proxy import (
    MAX_RESPONSE_HEAD,
    Proxy,
    ProxyError,
    check_proxy_support,
    connect_through,
    no_proxy_matches,
    parse_proxy,
    proxy_from_environment,
    resolve_proxy,
)

from . import _programs
from ._programs import free_port, stop_process
from .conftest import HOST, RESOURCE, echo_handler

USER, PASSWORD = "alice", "s3cr:t p@ss"  # characters that must be percent-encoded in a URL
QUOTED_PASSWORD = "s3cr%3At%20p%40ss"
TINYPROXY_PASSWORD = "s3cr3t-pw.1"  # tinyproxy's configuration takes letters, digits and "-._" only
STARTUP_TIMEOUT = 10.0  # seconds for a proxy program to accept connections


# --- the proxy programs -------------------------------------------------------------


PROXIES_INSTALL = "apt-get install -y tinyproxy-bin microsocks dante-server"


def find_program(name: str) -> str:
    """A proxy program's path (see tests/_programs.py)."""
    return _programs.find_program(name, PROXIES_INSTALL)


class ProxyProcess:
    """A proxy program running in the foreground, logging to a file."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.command = " ".join(argv)
        self.port = port
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            self._wait_until_accepting()
        except BaseException:
            self.stop()
            raise

    def _wait_until_accepting(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}: {self.log_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.command} does not accept connections: {self.log_text()}") from None
                time.sleep(0.02)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxies")


def start_tinyproxy(directory: Path, name: str, *extra: str) -> Iterator[str]:
    """tinyproxy on a free loopback port, with ``extra`` configuration lines; yields its URL (no credentials)."""
    program = find_program("tinyproxy")
    port = free_port()
    config = directory / f"{name}.conf"
    lines = [f"Port {port}", f"Listen {HOST}", "Timeout 30", f"Allow {HOST}", "LogLevel Info", *extra]
    config.write_text("\n".join(lines) + "\n")
    process = ProxyProcess([program, "-d", "-c", str(config)], port, directory / f"{name}.log")
    try:
        yield f"http://{HOST}:{port}"
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tinyproxy(proxy_dir: Path) -> Iterator[str]:
    yield from start_tinyproxy(proxy_dir, "tinyproxy")


@pytest.fixture(scope="module")
def tinyproxy_auth(proxy_dir: Path) -> Iterator[str]:
    """tinyproxy that wants ``USER``:``TINYPROXY_PASSWORD`` (Basic); yields its URL without them."""
    yield from start_tinyproxy(proxy_dir, "tinyproxy-auth", f"BasicAuth {USER} {TINYPROXY_PASSWORD}")


@pytest.fixture(scope="module")
def tinyproxy_443(proxy_dir: Path) -> Iterator[str]:
    """tinyproxy that allows CONNECT to port 443 only."""
    yield from start_tinyproxy(proxy_dir, "tinyproxy-443", "ConnectPort 443")


def start_microsocks(directory: Path, name: str, *extra: str) -> Iterator[int]:
    program = find_program("microsocks")
    port = free_port()
    process = ProxyProcess([program, "-i", HOST, "-p", str(port), *extra], port, directory / f"{name}.log")
    try:
        yield port
    finally:
        process.stop()


@pytest.fixture(scope="module")
def microsocks(proxy_dir: Path) -> Iterator[int]:
    """microsocks without authentication: yields its port."""
    yield from start_microsocks(proxy_dir, "microsocks")


@pytest.fixture(scope="module")
def microsocks_auth(proxy_dir: Path) -> Iterator[int]:
    """microsocks that wants ``USER``:``PASSWORD``: yields its port."""
    yield from start_microsocks(proxy_dir, "microsocks-auth", "-u", USER, "-P", PASSWORD)


@pytest.fixture(scope="module")
def dante(proxy_dir: Path) -> Iterator[int]:
    """danted (SOCKS4 and SOCKS5) without authentication: yields its port."""
    program = find_program("danted")
    port = free_port()
    lines = [
        "logoutput: stderr",
        f"internal: {HOST} port = {port}",
        f"external: {HOST}",
        "clientmethod: none",
        "socksmethod: none",
    ]
    if os.geteuid() == 0:  # as root, dante wants to know whom to run as (before the rules)
        lines += ["user.privileged: root", "user.unprivileged: nobody"]
    lines += [
        f"client pass {{ from: {HOST}/32 to: 0.0.0.0/0 }}",
        f"socks pass {{ from: {HOST}/32 to: 0.0.0.0/0 }}",
    ]
    config = proxy_dir / "danted.conf"
    config.write_text("\n".join(lines) + "\n")
    process = ProxyProcess([program, "-f", str(config), "-N", "1"], port, proxy_dir / "danted.log")
    try:
        yield port
    finally:
        process.stop()


# --- targets, a TLS front, scripted proxies ----------------------------------------------


async def start_echo(nursery: trio.Nursery, ssl_context: ssl.SSLContext | None = None) -> int:
    server: WebSocketServer = await nursery.start(partial(serve_websocket, echo_handler, HOST, 0, ssl_context))
    return server.port


async def start_echo_on_both_loopbacks(nursery: trio.Nursery) -> int:
    """An echo server on 127.0.0.1 and, where there is IPv6, ::1, on the same port (for a proxy resolving localhost)."""
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port: int = listeners[0].socket.getsockname()[1]
    try:
        listeners += await trio.open_tcp_listeners(port, host="::1")
    except OSError:
        pass
    await nursery.start(WebSocketServer(echo_handler, listeners).run)
    return port


async def open_through(
    nursery: trio.Nursery,
    proxy: Proxy | str,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    proxy_tls: ssl.SSLContext | None = None,
) -> WebSocketConnection:
    """What the client will do: the tunnel, TLS for the target on top for wss://, then the WebSocket handshake."""
    proxy = proxy if isinstance(proxy, Proxy) else parse_proxy(proxy)
    stream = await connect_through(proxy, host, port, ssl_context_for_proxy=proxy_tls)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname=host, https_compatible=True)
    return await wrap_client_stream(nursery, stream, f"{host}:{port}", RESOURCE)


async def echo_through(nursery: trio.Nursery, proxy: Proxy | str, host: str, port: int, **options: Any) -> None:
    ws = await open_through(nursery, proxy, host, port, **options)
    try:
        for message in ("through the proxy", b"\x00\xff" * 1000):
            await ws.send_message(message)
            assert await ws.get_message() == message
    finally:
        await ws.aclose()


async def relay(upstream_port: int, client: trio.abc.Stream) -> None:
    """Connect ``client`` to ``upstream_port`` and copy bytes both ways until either side stops."""
    async with client:
        try:
            upstream = await trio.open_tcp_stream(HOST, upstream_port)
        except OSError:
            return
        async with upstream, trio.open_nursery() as nursery:

            async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                try:
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


async def start_tls_front(nursery: trio.Nursery, context: ssl.SSLContext, upstream_port: int) -> int:
    """A TLS listener that relays to ``upstream_port``: with tinyproxy behind it, an https:// proxy."""
    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, partial(relay, upstream_port), 0, context, host=HOST)
    )
    port: int = listeners[0].transport_listener.socket.getsockname()[1]
    return port


Script = Callable[[trio.SocketStream], Awaitable[None]]


async def start_scripted(nursery: trio.Nursery, script: Script) -> int:
    """A TCP server on loopback that runs ``script`` on each connection and closes it."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await script(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=HOST))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def read_head(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


def http_answer(answer: bytes, then: Script | None = None) -> Script:
    """A scripted HTTP proxy: read the CONNECT, send ``answer``, then run ``then`` (or close)."""

    async def script(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(answer)
        if then is not None:
            await then(stream)

    return script


async def echo_bytes(stream: trio.SocketStream) -> None:
    while data := await stream.receive_some(4096):
        await stream.send_all(data)


async def hang(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


# --- parsing proxy URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.example:3128", Proxy("http", "proxy.example", 3128)),
        ("HTTP://Proxy.Example", Proxy("http", "proxy.example", 80)),
        ("https://proxy.example/", Proxy("https", "proxy.example", 443)),
        ("socks5://127.0.0.1", Proxy("socks5", "127.0.0.1", 1080)),
        ("socks5h://[::1]:1081", Proxy("socks5h", "::1", 1081)),
        ("socks4://10.0.0.1:1080", Proxy("socks4", "10.0.0.1", 1080)),
        ("socks4a://someone@proxy", Proxy("socks4a", "proxy", 1080, "someone")),
        (f"http://{USER}:{QUOTED_PASSWORD}@proxy:8080", Proxy("http", "proxy", 8080, USER, PASSWORD)),
        ("socks5://b%C3%B8b:pw@proxy".replace("%C3%B8", "o"), Proxy("socks5", "proxy", 1080, "bob", "pw")),
        ("http://user@proxy", Proxy("http", "proxy", 80, "user")),
        ("http://@proxy", Proxy("http", "proxy", 80)),
        ("http://user:@proxy", Proxy("http", "proxy", 80, "user", "")),
        ("http://%C3%A9l%C3%A8ve:mot@proxy", Proxy("http", "proxy", 80, "\u00e9l\u00e8ve", "mot")),
        ("http://b\u00fccher.example:3128", Proxy("http", "b\u00fccher.example", 3128)),
    ],
)
def test_parse_proxy(url: str, expected: Proxy) -> None:
    assert parse_proxy(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("proxy.example:3128", "has no scheme: write http://proxy.example:3128"),
        ("ftp://proxy.example", "unsupported proxy scheme 'ftp:'"),
        ("socks6://proxy.example", "unsupported proxy scheme"),
        ("http://", "has no host"),
        ("http://:3128", "has no host"),
        ("http://proxy:99999", "invalid proxy URL"),
        ("http://proxy:0", "port 0"),
        ("http://proxy:http", "invalid proxy URL"),
        ("http://[::1", "invalid proxy URL"),
        ("http://proxy/path", "without a path, query or fragment"),
        ("http://proxy/?x=1", "without a path, query or fragment"),
        ("http://proxy#top", "without a path, query or fragment"),
        ("http://proxy?", "without a path, query or fragment"),
        ("http://pro%20xy:80", "not a proxy host name"),
        ("http://a%3Ab:pw@proxy", "cannot contain ':'"),
        ("socks4://user:pw@proxy", "takes a user ID only"),
        ("socks4://a%00b@proxy", "cannot contain NUL"),
        ("http://" + "\u00fc" * 70 + ".example", "not a proxy host name"),
        ("socks5://user@proxy", "needs both a user name and a password"),
        ("socks5://:pw@proxy", "needs both a user name and a password"),
        ("socks5://%C3%A9:pw@proxy", "must be ASCII"),
        ("socks5h://u:" + "p" * 256 + "@proxy", "at most 255"),
    ],
)
def test_parse_proxy_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="proxy") as exc_info:
        parse_proxy(url)
    assert message in str(exc_info.value)


@pytest.mark.parametrize(
    "url", ["http://alice:hunter2@proxy/path", "ftp://alice:hunter2@proxy", "alice:hunter2@proxy:80"]
)
def test_parse_errors_hide_the_password(url: str) -> None:
    with pytest.raises(ValueError, match=r"alice:\*\*\*@proxy") as exc_info:
        parse_proxy(url)
    assert "hunter2" not in str(exc_info.value)


def test_password_is_never_shown() -> None:
    proxy = parse_proxy(f"http://{USER}:{QUOTED_PASSWORD}@[::1]:3128")
    assert proxy.password == PASSWORD
    assert proxy.url == f"http://{USER}:***@[::1]:3128"
    assert str(proxy) == proxy.url
    assert proxy.address == "[::1]:3128"
    for text in (repr(proxy), str(proxy), proxy.url):
        assert "s3cr" not in text
    assert repr(proxy) == "Proxy(scheme='http', host='::1', port=3128, username='alice')"
    assert parse_proxy("socks5://proxy:1").url == "socks5://proxy:1"
    assert parse_proxy("http://us%20er@proxy").url == "http://us%20er@proxy:80"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("gopher", "proxy", 80), "unsupported proxy scheme"),
        (("http", "", 80), "not a proxy host"),
        (("http", "proxy\r\nX: y", 80), "not a proxy host"),
        (("http", "proxy", 0), "from 1 to 65535"),
        (("http", "proxy", True), "from 1 to 65535"),
        (("http", "proxy", 80, None, "pw"), "needs a user name"),
    ],
)
def test_proxy_checks_its_fields(arguments: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Proxy(*arguments)


def test_proxy_error_attributes_and_pickling() -> None:
    error = ProxyError("refused", "http://proxy:3128", 407, ((b"proxy-authenticate", b"Basic"),))
    assert isinstance(error, HandshakeError)
    assert (error.proxy, error.status_code, error.reply_code) == ("http://proxy:3128", 407, None)
    assert repr(error) == "ProxyError<proxy=http://proxy:3128, status_code=407>"
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.proxy, copy.status_code, copy.headers) == (
        "refused",
        "http://proxy:3128",
        407,
        ((b"proxy-authenticate", b"Basic"),),
    )


# --- the environment --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "scheme", "expected"),
    [
        ({}, "wss", None),
        ({"https_proxy": "http://s:1"}, "wss", "http://s:1"),
        ({"https_proxy": "http://s:1"}, "ws", None),
        ({"http_proxy": "http://p:1"}, "ws", "http://p:1"),
        ({"http_proxy": "http://p:1"}, "wss", None),
        ({"wss_proxy": "http://w:1", "https_proxy": "http://s:1", "all_proxy": "http://a:1"}, "wss", "http://w:1"),
        ({"https_proxy": "http://s:1", "all_proxy": "http://a:1"}, "wss", "http://s:1"),
        ({"ws_proxy": "http://w:1", "http_proxy": "http://p:1"}, "ws", "http://w:1"),
        ({"wss_proxy": "http://w:1"}, "ws", None),
        ({"all_proxy": "socks5h://a:1"}, "ws", "socks5h://a:1"),
        ({"all_proxy": "socks5h://a:1"}, "wss", "socks5h://a:1"),
        ({"ALL_PROXY": "socks5://A:1"}, "wss", "socks5://a:1"),
        # lower case wins over upper case; an empty variable counts as unset
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "wss", "http://lower:1"),
        ({"HTTPS_PROXY": "http://upper:1"}, "wss", "http://upper:1"),
        ({"https_proxy": "", "HTTPS_PROXY": "http://upper:1"}, "wss", "http://upper:1"),
        ({"wss_proxy": " ", "https_proxy": "http://s:1"}, "wss", "http://s:1"),
        ({"WSS_PROXY": "http://W:1", "https_proxy": "http://s:1"}, "wss", "http://w:1"),
        ({"HTTP_PROXY": "http://upper:1"}, "ws", "http://upper:1"),
        # httpoxy: under CGI, HTTP_PROXY comes from the request's Proxy header
        ({"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"}, "ws", None),
        ({"http_proxy": "http://p:1", "REQUEST_METHOD": "GET"}, "ws", "http://p:1"),
        ({"HTTPS_PROXY": "http://s:1", "REQUEST_METHOD": "GET"}, "wss", "http://s:1"),
        # no scheme: an HTTP proxy; the schemes http/https stand for ws/wss
        ({"https_proxy": "proxy.example:3128"}, "wss", "http://proxy.example:3128"),
        ({"https_proxy": " https://p "}, "https", "https://p:443"),
        ({"http_proxy": "user:pw@p:8"}, "http", "http://user:***@p:8"),
        # no_proxy
        ({"https_proxy": "http://s:1", "no_proxy": "target.example"}, "wss", None),
        ({"https_proxy": "http://s:1", "NO_PROXY": "*"}, "wss", None),
        ({"https_proxy": "http://s:1", "no_proxy": "", "NO_PROXY": "*"}, "wss", None),
        ({"https_proxy": "http://s:1", "no_proxy": "other.example"}, "wss", "http://s:1"),
        ({"https_proxy": "not a url://", "no_proxy": "*"}, "wss", None),
    ],
)
def test_proxy_from_environment(environ: dict[str, str], scheme: str, expected: str | None) -> None:
    proxy = proxy_from_environment(scheme, "target.example", 443, environ)
    assert (proxy.url if proxy is not None else None) == expected


def test_proxy_from_environment_errors() -> None:
    with pytest.raises(ValueError, match=r"^\$HTTPS_PROXY: unsupported proxy scheme 'ftp:'"):
        proxy_from_environment("wss", "h", 443, {"HTTPS_PROXY": "ftp://p"})
    with pytest.raises(ValueError, match=r"^\$all_proxy: invalid proxy URL 'http://u:\*\*\*@p:x'"):
        proxy_from_environment("ws", "h", 80, {"all_proxy": "u:secret@p:x"})
    with pytest.raises(ValueError, match="scheme must be 'ws' or 'wss'"):
        proxy_from_environment("ftp", "h", 80, {})


def test_proxy_from_environment_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("wss_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("https_proxy", "socks5h://env-proxy:1080")
    proxy = proxy_from_environment("wss", "example.com", 443)
    assert proxy == Proxy("socks5h", "env-proxy", 1080)
    assert resolve_proxy(True, "wss", "example.com", 443) == proxy


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "expected"),
    [
        ("*", "anything.example", 80, True),
        ("localhost, *", "example.com", 80, True),
        ("", "example.com", 80, False),
        (" , ,", "example.com", 80, False),
        # names and domain suffixes
        ("example.com", "example.com", 80, True),
        ("example.com", "EXAMPLE.COM.", 80, True),
        ("EXAMPLE.com", "ws.example.com", 80, True),
        (".example.com", "example.com", 80, True),
        (".example.com", "a.b.example.com", 80, True),
        ("*.example.com", "ws.example.com", 80, True),
        ("example.com.", "example.com", 80, True),
        ("example.com", "badexample.com", 80, False),
        ("example.com", "example.com.evil", 80, False),
        ("ws.example.com", "example.com", 80, False),
        ("localhost", "localhost", 9000, True),
        ("localhost", "127.0.0.1", 9000, False),  # no name is resolved
        ("other.example example.com", "example.com", 80, True),  # white space separates too
        ("other.example,\texample.com", "example.com", 80, True),
        # IP addresses and ranges
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("127.0.0.1", "127.0.0.2", 80, False),
        ("127.0.0.1", "localhost", 80, False),
        ("10.0.0.0/8", "10.20.30.40", 80, True),
        ("10.0.0.0/8", "11.0.0.1", 80, False),
        ("10.1.2.3/8", "10.9.9.9", 80, True),  # host bits set: the network is meant
        ("192.168.0.0/16", "example.com", 80, False),
        ("::1", "::1", 80, True),
        ("::1", "[::1]", 80, True),
        ("[::1]", "::1", 80, True),
        ("::1", "0:0:0:0:0:0:0:1", 80, True),
        ("fd00::/8", "fd12:3456::1", 80, True),
        ("fd00::/8", "fe80::1", 80, False),
        ("[fd00::]/8", "[fd00::5]", 80, True),
        ("fd00::/8", "10.0.0.1", 80, False),
        ("10.0.0.0/8", "::ffff:10.0.0.1", 80, False),  # families are not mixed
        ("::/0", "127.0.0.1", 80, False),
        ("0.0.0.0/0", "127.0.0.1", 80, True),
        # ports
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        (".example.com:443", "ws.example.com", 443, True),
        ("127.0.0.1:9000", "127.0.0.1", 9000, True),
        ("127.0.0.1:9000", "127.0.0.1", 9001, False),
        ("[::1]:9000", "::1", 9000, True),
        ("[::1]:9000", "::1", 9001, False),
        ("10.0.0.0/8:80", "10.0.0.1", 80, True),
        # malformed entries match nothing (and do not stop the others)
        ("example.com:http", "example.com", 80, False),
        ("example.com:0", "example.com", 80, False),
        ("example.com:99999", "example.com", 99999, False),
        (":80", "example.com", 80, False),
        ("[::1", "::1", 80, False),
        ("[::1]x", "::1", 80, False),
        ("[::1]:x", "::1", 80, False),
        ("10.0.0.0/33", "10.0.0.1", 80, False),
        (".", "example.com", 80, False),
        ("*.", "example.com", 80, False),
        ("10.0.0.0/33, example.com", "example.com", 80, True),
    ],
)
def test_no_proxy_matches(no_proxy: str, host: str, port: int, expected: bool) -> None:
    assert no_proxy_matches(no_proxy, host, port) is expected


def test_resolve_proxy() -> None:
    proxy = Proxy("socks5", "proxy", 1080)
    environ = {"https_proxy": "http://env:1"}
    assert resolve_proxy(None, "wss", "h", 443, environ) is None
    assert resolve_proxy(False, "wss", "h", 443, environ) is None
    assert resolve_proxy(True, "wss", "h", 443, environ) == Proxy("http", "env", 1)
    assert resolve_proxy(True, "ws", "h", 80, environ) is None
    assert resolve_proxy(proxy, "wss", "h", 443, environ) is proxy
    # an explicit proxy is used for every host: no_proxy is for the environment's proxies
    assert resolve_proxy("socks5://proxy", "wss", "h", 443, {"no_proxy": "*"}) == proxy
    with pytest.raises(TypeError, match="not int"):
        resolve_proxy(1080, "wss", "h", 443, environ)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no scheme"):
        resolve_proxy("proxy:1080", "wss", "h", 443, environ)


# --- connecting: argument checks, the socks extra ---------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("bad host", 80, "not a valid host name"),
        ("example.com\r\nX-Injected: 1", 80, "not a valid host name"),
        ("example.com", 0, "from 1 to 65535"),
        ("example.com", 65536, "from 1 to 65535"),
    ],
)
async def test_bad_target_is_value_error_before_connecting(host: str, port: int, message: str) -> None:
    with trio.testing.assert_no_checkpoints(), pytest.raises(ValueError, match=message):
        await connect_through(Proxy("http", HOST, 9), host, port)


async def test_missing_python_socks_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "python_socks.async_.trio.v2", None)  # import fails
    proxy = parse_proxy("socks5h://127.0.0.1:9")
    with pytest.raises(ImportError, match=r"pip install 'trio-ws\[socks\]'") as exc_info:
        check_proxy_support(proxy)
    assert exc_info.value.name == "python_socks"
    # connect_through says so before it opens anything
    with (
        trio.testing.assert_no_checkpoints(),
        pytest.raises(ImportError, match=r"socks5h:// proxies need python-socks"),
    ):
        await connect_through(proxy, "example.com", 443)
    check_proxy_support(parse_proxy("http://127.0.0.1:9"))  # HTTP proxies do not need it


# --- HTTP CONNECT through tinyproxy ------------------------------------------------------


async def test_http_proxy_echo(nursery: trio.Nursery, tinyproxy: str) -> None:
    port = await start_echo(nursery)
    stream = await connect_through(parse_proxy(tinyproxy), HOST, port)
    assert type(stream) is trio.SocketStream  # no wrapper: trio_ws's fast path for plain TCP applies
    await stream.aclose()
    await echo_through(nursery, tinyproxy, HOST, port)
    await echo_through(nursery, tinyproxy, "localhost", port)  # the proxy resolves the name


async def test_http_proxy_with_credentials(nursery: trio.Nursery, tinyproxy_auth: str) -> None:
    port = await start_echo(nursery)
    with_credentials = tinyproxy_auth.replace("://", f"://{USER}:{TINYPROXY_PASSWORD}@")
    await echo_through(nursery, with_credentials, HOST, port)


async def test_http_proxy_wants_credentials(nursery: trio.Nursery, tinyproxy_auth: str) -> None:
    port = await start_echo(nursery)
    with pytest.raises(ProxyError) as exc_info:
        await connect_through(parse_proxy(tinyproxy_auth), HOST, port)
    error = exc_info.value
    assert error.status_code == 407
    assert error.proxy == tinyproxy_auth
    assert str(error).startswith(f"the proxy {tinyproxy_auth} refused CONNECT {HOST}:{port}: 407 ")
    assert "put user:password@ in the proxy URL" in str(error)
    assert (b"proxy-authenticate", b'Basic realm="Tinyproxy"') in error.headers


async def test_http_proxy_refuses_wrong_credentials(nursery: trio.Nursery, tinyproxy_auth: str) -> None:
    port = await start_echo(nursery)
    proxy = parse_proxy(tinyproxy_auth.replace("://", f"://{USER}:wrong@"))
    with pytest.raises(ProxyError) as exc_info:
        await connect_through(proxy, HOST, port)
    error = exc_info.value
    # tinyproxy 1.11 answers wrong credentials with 401 (missing ones with 407)
    assert error.status_code in (401, 407)
    assert "did not accept the credentials" in str(error)
    assert error.proxy == f"http://{USER}:***@{HOST}:{proxy.port}"
    assert "wrong" not in str(error)


async def test_http_proxy_refuses_the_port(nursery: trio.Nursery, tinyproxy_443: str) -> None:
    port = await start_echo(nursery)
    with pytest.raises(ProxyError, match=rf"refused CONNECT {HOST}:{port}: 403") as exc_info:
        await connect_through(parse_proxy(tinyproxy_443), HOST, port)
    assert exc_info.value.status_code == 403


async def test_http_proxy_cannot_reach_the_target(tinyproxy: str) -> None:
    with pytest.raises(ProxyError) as exc_info:
        await connect_through(parse_proxy(tinyproxy), HOST, free_port())
    assert exc_info.value.status_code is not None
    assert exc_info.value.status_code >= 500  # tinyproxy: 500; others say 502 or 503


@pytest.mark.parametrize("scheme", ["http", "https", "socks5", "socks4"])
async def test_proxy_not_listening(scheme: str) -> None:
    proxy = parse_proxy(f"{scheme}://{HOST}:{free_port()}")
    with pytest.raises(ProxyError, match=f"could not connect to the proxy {proxy.url}") as exc_info:
        await connect_through(proxy, "example.com", 443)
    assert exc_info.value.status_code is None
    assert isinstance(exc_info.value.__cause__, OSError)


# --- wss:// through a proxy: TLS to the target inside the tunnel ---------------------------


@dataclass
class TLSTarget:
    port: int
    server_names: list[str | None]  # the SNI each TLS client sent


async def start_tls_echo(nursery: trio.Nursery, ca: trustme.CA, *names: str) -> TLSTarget:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    server_names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    return TLSTarget(await start_echo(nursery, context), server_names)


async def test_wss_through_http_proxy(
    nursery: trio.Nursery, ca: trustme.CA, client_context: ssl.SSLContext, tinyproxy: str
) -> None:
    target = await start_tls_echo(nursery, ca, "localhost")
    await echo_through(nursery, tinyproxy, "localhost", target.port, tls=client_context)
    assert target.server_names == ["localhost"]  # SNI names the target, not the proxy


async def test_wss_through_proxy_checks_the_targets_certificate(
    nursery: trio.Nursery, ca: trustme.CA, client_context: ssl.SSLContext, tinyproxy: str, microsocks: int
) -> None:
    target = await start_tls_echo(nursery, ca, "other.example")
    for proxy in (tinyproxy, f"socks5h://{HOST}:{microsocks}"):
        with pytest.raises(HandshakeError) as exc_info:
            await open_through(nursery, proxy, "localhost", target.port, tls=client_context)
        assert not isinstance(exc_info.value, ProxyError)  # the proxy did its part
        cause = exc_info.value.__cause__
        assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
        assert "mismatch" in cause.verify_message.lower()
    assert target.server_names == ["localhost", "localhost"]


async def test_wss_through_socks5_proxy(
    nursery: trio.Nursery, ca: trustme.CA, client_context: ssl.SSLContext, microsocks: int
) -> None:
    target = await start_tls_echo(nursery, ca, HOST)
    await echo_through(nursery, f"socks5://{HOST}:{microsocks}", HOST, target.port, tls=client_context)
    assert target.server_names == [None]  # no SNI for an IP address


# --- an https:// proxy: TLS to the proxy, then CONNECT ---------------------------------------


async def test_https_proxy(
    nursery: trio.Nursery,
    ca: trustme.CA,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    tinyproxy: str,
) -> None:
    front = await start_tls_front(nursery, server_context, parse_proxy(tinyproxy).port)
    proxy = parse_proxy(f"https://localhost:{front}")
    stream = await connect_through(proxy, "localhost", await start_echo(nursery), ssl_context_for_proxy=client_context)
    assert isinstance(stream, trio.SSLStream)
    assert stream.server_hostname == "localhost"
    await stream.aclose()
    # ws:// and (TLS inside TLS) wss:// through it
    await echo_through(nursery, proxy, HOST, await start_echo(nursery), proxy_tls=client_context)
    target = await start_tls_echo(nursery, ca, "localhost")
    await echo_through(nursery, proxy, "localhost", target.port, tls=client_context, proxy_tls=client_context)
    assert target.server_names == ["localhost"]


async def test_https_proxy_certificate_is_checked(
    nursery: trio.Nursery, server_context: ssl.SSLContext, tinyproxy: str
) -> None:
    front = await start_tls_front(nursery, server_context, parse_proxy(tinyproxy).port)
    proxy = parse_proxy(f"https://localhost:{front}")
    # the default context (the system's CAs) does not trust the test CA
    with pytest.raises(ProxyError, match=f"the TLS handshake with the proxy {proxy.url} failed") as exc_info:
        await connect_through(proxy, HOST, 443)
    cause = exc_info.value.__cause__
    assert isinstance(cause, trio.BrokenResourceError)
    assert isinstance(cause.__cause__, ssl.SSLCertVerificationError)


# --- SOCKS through microsocks and dante ----------------------------------------------------


async def test_socks5_proxy_echo(nursery: trio.Nursery, microsocks: int) -> None:
    port = await start_echo(nursery)
    stream = await connect_through(parse_proxy(f"socks5://{HOST}:{microsocks}"), HOST, port)
    assert type(stream) is trio.SocketStream
    await stream.aclose()
    await echo_through(nursery, f"socks5://{HOST}:{microsocks}", HOST, port)
    await echo_through(nursery, f"socks5://{HOST}:{microsocks}", "localhost", port)  # resolved here


async def test_socks5_proxy_with_credentials(nursery: trio.Nursery, microsocks_auth: int) -> None:
    port = await start_echo(nursery)
    await echo_through(nursery, f"socks5://{USER}:{QUOTED_PASSWORD}@{HOST}:{microsocks_auth}", HOST, port)


@pytest.mark.parametrize(
    ("userinfo", "message"),
    [("", "No acceptable authentication methods"), (f"{USER}:wrong@", "authentication failure")],
)
async def test_socks5_proxy_refuses(nursery: trio.Nursery, microsocks_auth: int, userinfo: str, message: str) -> None:
    port = await start_echo(nursery)
    proxy = parse_proxy(f"socks5://{userinfo}{HOST}:{microsocks_auth}")
    with pytest.raises(ProxyError, match=f"the proxy {proxy.url.replace('*', '[*]')} refused") as exc_info:
        await connect_through(proxy, HOST, port)
    assert message.lower() in str(exc_info.value).lower()
    assert exc_info.value.status_code is None
    assert "wrong" not in str(exc_info.value)


async def test_socks5_proxy_cannot_reach_the_target(microsocks: int) -> None:
    with pytest.raises(ProxyError, match="refused the connection to") as exc_info:
        await connect_through(parse_proxy(f"socks5://{HOST}:{microsocks}"), HOST, free_port())
    assert exc_info.value.reply_code is not None


class RefuseNames(trio.abc.HostnameResolver):
    """Resolve no name here (numeric addresses never reach a resolver): which side resolves shows."""

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None, *args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        raise socket.gaierror(socket.EAI_NONAME, f"this test resolves no names here (asked for {host!r})")

    async def getnameinfo(self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def test_socks5h_lets_the_proxy_resolve(nursery: trio.Nursery, microsocks: int) -> None:
    port = await start_echo_on_both_loopbacks(nursery)
    previous = trio.socket.set_custom_hostname_resolver(RefuseNames())
    try:
        await echo_through(nursery, f"socks5h://{HOST}:{microsocks}", "localhost", port)
        # socks5 (and socks4) resolve here, and cannot in this test
        with pytest.raises(ProxyError, match="resolves no names here") as exc_info:
            await connect_through(parse_proxy(f"socks5://{HOST}:{microsocks}"), "localhost", port)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert isinstance(exc_info.value.__cause__, socket.gaierror)


async def test_socks4_and_socks5_through_dante(nursery: trio.Nursery, dante: int) -> None:
    port = await start_echo(nursery)
    for scheme in ("socks4", "socks5", "socks5h"):
        await echo_through(nursery, f"{scheme}://{HOST}:{dante}", HOST, port)
    await echo_through(nursery, f"socks4://someone@{HOST}:{dante}", "localhost", port)
    with pytest.raises(ProxyError) as exc_info:
        await connect_through(parse_proxy(f"socks4://{HOST}:{dante}"), HOST, free_port())
    assert exc_info.value.reply_code == 0x5B  # request rejected or failed
    with pytest.raises(ValueError, match="cannot reach an IPv6 address"):
        await connect_through(parse_proxy(f"socks4://{HOST}:{dante}"), "::1", port)


async def test_socks4a_sends_the_name(nursery: trio.Nursery) -> None:
    """Neither dante nor microsocks speaks SOCKS4a: a scripted server checks the request and tunnels."""
    requests: list[bytes] = []

    async def socks4a(stream: trio.SocketStream) -> None:
        request = b""
        while len(request) < 8 or request[8:].count(b"\0") < 2:  # the header, the user ID, the name
            request += await stream.receive_some(1)
        requests.append(request)
        await stream.send_all(b"\x00\x5a" + b"\x00" * 6)
        await echo_bytes(stream)

    proxy_port = await start_scripted(nursery, socks4a)
    stream = await connect_through(parse_proxy(f"socks4a://me@{HOST}:{proxy_port}"), "b\u00fccher.example", 8765)
    async with stream:
        await stream.send_all(b"hello")
        assert await stream.receive_some(5) == b"hello"
    # version 4, CONNECT, the port, 0.0.0.x (the name follows), the user ID, the name (IDNA)
    assert requests == [b"\x04\x01" + (8765).to_bytes(2, "big") + b"\x00\x00\x00\x01me\0xn--bcher-kva.example\0"]


async def test_socks_proxy_that_is_not_one(nursery: trio.Nursery) -> None:
    async def http_server(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    port = await start_scripted(nursery, http_server)
    with pytest.raises(ProxyError, match="refused") as exc_info:
        await connect_through(parse_proxy(f"socks5://{HOST}:{port}"), HOST, 443)
    assert exc_info.value.status_code is None
    closing = await start_scripted(nursery, lambda stream: stream.aclose())
    with pytest.raises(ProxyError):
        await connect_through(parse_proxy(f"socks5://{HOST}:{closing}"), HOST, 443)


# --- HTTP answers from a scripted proxy ---------------------------------------------------


async def test_bytes_after_the_answer_belong_to_the_tunnel(nursery: trio.Nursery) -> None:
    port = await start_scripted(nursery, http_answer(b"HTTP/1.1 200 OK\r\n\r\nearly", then=echo_bytes))
    stream = await connect_through(parse_proxy(f"http://{HOST}:{port}"), "example.com", 443)
    async with stream:
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        with pytest.raises(ValueError, match="max_bytes"):
            await stream.receive_some(0)
        assert await stream.receive_some(2) == b"ea"
        assert await stream.receive_some() == b"rly"
        await stream.send_all(b"ping")
        await stream.wait_send_all_might_not_block()
        assert await stream.receive_some(4) == b"ping"
        await stream.send_eof()
        assert await stream.receive_some() == b""


async def test_bytes_after_the_answer_of_an_https_proxy(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    port = await start_scripted(nursery, http_answer(b"HTTP/1.1 200 OK\r\n\r\nearly", then=echo_bytes))
    front = await start_tls_front(nursery, server_context, port)
    stream = await connect_through(
        parse_proxy(f"https://{HOST}:{front}"), "example.com", 443, ssl_context_for_proxy=client_context
    )
    async with stream:
        assert not isinstance(stream, trio.abc.HalfCloseableStream)
        assert await stream.receive_some() == b"early"
        await stream.send_all(b"ping")
        assert await stream.receive_some(4) == b"ping"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 Connection established\r\nProxy-agent: x\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    ],
)
async def test_any_2xx_opens_the_tunnel(nursery: trio.Nursery, answer: bytes) -> None:
    requests: list[bytes] = []

    async def script(stream: trio.SocketStream) -> None:
        requests.append(await read_head(stream))
        await stream.send_all(answer)
        await echo_bytes(stream)

    port = await start_scripted(nursery, script)
    proxy = parse_proxy(f"http://{USER}:{QUOTED_PASSWORD}@{HOST}:{port}")
    async with await connect_through(proxy, "::1", 8443) as stream:
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
    assert requests == [
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6czNjcjp0IHBAc3M=\r\n\r\n"  # alice:s3cr:t p@ss
    ]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "closed the connection without answering CONNECT"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection in the middle of its answer to CONNECT"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "did not answer CONNECT with HTTP: illegal status line"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_RESPONSE_HEAD, f"more than {MAX_RESPONSE_HEAD} bytes of head"),
        (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", "refused CONNECT example.com:443: 502 Bad Gateway"),
        (b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n", "refused CONNECT example.com:443: 302 Found"),
    ],
)
async def test_bad_answers_from_an_http_proxy(nursery: trio.Nursery, answer: bytes, message: str) -> None:
    port = await start_scripted(nursery, http_answer(answer))
    with pytest.raises(ProxyError, match=message):
        await connect_through(parse_proxy(f"http://{HOST}:{port}"), "example.com", 443)


async def test_idn_target(nursery: trio.Nursery) -> None:
    requests: list[bytes] = []

    async def script(stream: trio.SocketStream) -> None:
        requests.append(await read_head(stream))
        await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\n")

    port = await start_scripted(nursery, script)
    stream = await connect_through(parse_proxy(f"http://{HOST}:{port}"), "b\u00fccher.example", 443)
    await stream.aclose()
    assert requests == [b"CONNECT xn--bcher-kva.example:443 HTTP/1.1\r\nHost: xn--bcher-kva.example:443\r\n\r\n"]


async def test_connection_reset_by_the_proxy(nursery: trio.Nursery) -> None:
    async def reset(stream: trio.SocketStream) -> None:
        await read_head(stream)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    port = await start_scripted(nursery, reset)
    with pytest.raises(ProxyError, match=r"the connection to the proxy .* broke") as exc_info:
        await connect_through(parse_proxy(f"http://{HOST}:{port}"), "example.com", 443)
    assert isinstance(exc_info.value.__cause__, trio.BrokenResourceError)


# --- timeouts and cancellation --------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https", "socks5", "socks4a"])
async def test_a_silent_proxy_times_out(nursery: trio.Nursery, scheme: str) -> None:
    """A proxy that accepts the connection and never answers: the caller's deadline ends it, nothing leaks."""
    port = await start_scripted(nursery, hang)
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(0.2):
            await connect_through(parse_proxy(f"{scheme}://{HOST}:{port}"), "example.com", 443)


class CancelAfterSteps(trio.abc.Instrument):
    """Cancel ``scope`` after the ``k``-th scheduling step of ``task``."""

    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope, k: int) -> None:
        self.task, self.scope, self.k, self.steps = task, scope, k, 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps == self.k:
                self.scope.cancel()


OpenedStreams = list[tuple[trio.lowlevel.Task, trio.SocketStream]]


@pytest.fixture
def opened_streams(monkeypatch: pytest.MonkeyPatch) -> OpenedStreams:
    """Every TCP stream trio.open_tcp_stream returns during the test, and the task that opened it.

    python-socks opens its connection to the proxy through trio.open_tcp_stream too.
    """
    opened: OpenedStreams = []
    real = trio.open_tcp_stream

    async def recording(*args: Any, **kwargs: Any) -> trio.SocketStream:
        stream = await real(*args, **kwargs)
        opened.append((trio.lowlevel.current_task(), stream))
        return stream

    monkeypatch.setattr(trio, "open_tcp_stream", recording)
    return opened


async def cancel_at_each_step(connect: Callable[[], Awaitable[trio.abc.Stream]], opened: OpenedStreams) -> int:
    """Cancel ``connect()`` after 1, 2, ... of its steps until it completes; each time nothing may stay open."""
    task = trio.lowlevel.current_task()
    for k in itertools.count(1):
        assert k < 500, "connecting took more than 500 steps"
        stream: trio.abc.Stream | None = None
        with trio.CancelScope() as scope:
            instrument = CancelAfterSteps(task, scope, k)
            trio.lowlevel.add_instrument(instrument)
            try:
                stream = await connect()
            finally:
                trio.lowlevel.remove_instrument(instrument)
        left_open = [s for t, s in opened if t is task and s.socket.fileno() != -1]
        if stream is not None:  # finished before the k-th step
            assert not scope.cancelled_caught
            await stream.aclose()
            assert all(s.socket.fileno() == -1 for t, s in opened if t is task)
            return k
        assert scope.cancelled_caught
        assert not left_open, f"cancelled after {k} steps, {len(left_open)} socket(s) left open"
    raise AssertionError("unreachable")


@pytest.mark.deadline(60)
async def test_cancelled_at_any_point_closes_everything(
    nursery: trio.Nursery,
    opened_streams: OpenedStreams,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    tinyproxy: str,
    microsocks: int,
) -> None:
    port = await start_echo(nursery)
    front = await start_tls_front(nursery, server_context, parse_proxy(tinyproxy).port)
    proxies = [
        parse_proxy(tinyproxy),
        parse_proxy(f"https://localhost:{front}"),
        parse_proxy(f"socks5://{HOST}:{microsocks}"),
        parse_proxy(f"socks5h://{HOST}:{microsocks}"),
    ]
    for proxy in proxies:
        steps = await cancel_at_each_step(
            partial(connect_through, proxy, "localhost", port, ssl_context_for_proxy=client_context), opened_streams
        )
        assert steps > 3, proxy  # at least a connect, a send and a receive


async def test_cancelled_before_the_first_step(tinyproxy: str) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await connect_through(parse_proxy(tinyproxy), HOST, 9)
    assert scope.cancelled_caught


# --- the proxy= keyword of the client entry points -----------------------------------------------


async def test_open_websocket_url_through_each_kind_of_proxy(
    nursery: trio.Nursery, tinyproxy: str, tinyproxy_auth: str, microsocks: int, microsocks_auth: int
) -> None:
    from urllib.parse import quote

    from trio_ws import open_websocket_url

    port = await start_echo(nursery)
    credentials = f"{quote(USER)}:{quote(TINYPROXY_PASSWORD)}@"
    socks_credentials = f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@"
    proxies = [
        tinyproxy,
        tinyproxy_auth.replace("http://", f"http://{credentials}"),
        f"socks5://{HOST}:{microsocks}",
        f"socks5://{socks_credentials}{HOST}:{microsocks_auth}",
    ]
    for proxy in proxies:
        async with open_websocket_url(f"ws://{HOST}:{port}{RESOURCE}", proxy=proxy) as ws:
            await ws.send_message("through " + proxy.split("://")[0])
            assert await ws.get_message() == "through " + proxy.split("://")[0]
            # The socket's peer is the proxy: the connection's own addresses are the tunnel's.
            assert ws.url == f"ws://{HOST}:{port}{RESOURCE}"


async def test_proxy_true_reads_the_environment(
    nursery: trio.Nursery, tinyproxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_ws import ProxyError, open_websocket_url

    port = await start_echo(nursery)
    monkeypatch.setenv("ws_proxy", tinyproxy)
    monkeypatch.setenv("no_proxy", "")
    async with open_websocket_url(f"ws://{HOST}:{port}{RESOURCE}", proxy=True) as ws:
        await ws.send_message("from the environment")
        assert await ws.get_message() == "from the environment"
    # A dead proxy in the environment is used (and fails) unless no_proxy exempts the host.
    monkeypatch.setenv("ws_proxy", f"http://{HOST}:{free_port()}")
    with pytest.raises(ProxyError):
        async with open_websocket_url(f"ws://{HOST}:{port}{RESOURCE}", proxy=True):
            pass  # pragma: no cover
    monkeypatch.setenv("no_proxy", HOST)
    async with open_websocket_url(f"ws://{HOST}:{port}{RESOURCE}", proxy=True) as ws:
        await ws.send_message("exempt")
        assert await ws.get_message() == "exempt"
    # proxy=None, the default, never reads the environment.
    monkeypatch.setenv("no_proxy", "")
    async with open_websocket_url(f"ws://{HOST}:{port}{RESOURCE}") as ws:
        await ws.send_message("direct")
        assert await ws.get_message() == "direct"


async def test_connect_timeout_covers_the_proxy_step(nursery: trio.Nursery) -> None:
    from trio_ws import ConnectionTimeout, open_websocket_url

    silent = await start_scripted(nursery, hang)
    with trio.fail_after(5):
        with pytest.raises(ConnectionTimeout):
            async with open_websocket_url(
                f"ws://{HOST}:1{RESOURCE}", proxy=f"http://{HOST}:{silent}", connect_timeout=0.2
            ):
                pass  # pragma: no cover


async def test_a_proxys_refusal_reaches_the_caller_as_proxy_error(tinyproxy_auth: str) -> None:
    from trio_ws import ProxyError, connect_websocket_url

    async with trio.open_nursery() as nursery:
        with pytest.raises(ProxyError) as info:
            await connect_websocket_url(nursery, f"ws://{HOST}:1{RESOURCE}", proxy=tinyproxy_auth)
    assert info.value.status_code == 407
    assert isinstance(info.value, HandshakeError)
