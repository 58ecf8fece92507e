"""Shared fixtures: echo servers on loopback, trustme TLS contexts, raw-socket helpers.

Every test runs under pytest-trio.  Warnings are errors (pyproject.toml), so a
socket left open (ResourceWarning) or an exception nobody retrieved fails
the test; ``no_fd_leak`` also checks that each test closes every file
descriptor it opened.
"""

from __future__ import annotations

import gc
import os
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial

import pytest
import trio
import trustme

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

HOST = "127.0.0.1"
RESOURCE = "/resource"


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Fail a test that leaves a file descriptor (a socket, usually) open."""
    gc.collect()
    before = _open_fds()
    yield
    gc.collect()
    leaked = {fd for fd in _open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    leaked = {fd for fd in leaked if not os.readlink(f"/proc/self/fd/{fd}").startswith("/")}
    assert not leaked, f"file descriptors left open: {[os.readlink(f'/proc/self/fd/{fd}') for fd in leaked]}"


async def echo_loop(ws: WebSocketConnection) -> None:
    """Send every message back until the connection closes."""
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def echo_handler(request: WebSocketRequest) -> None:
    """Accept (picking the first proposed subprotocol) and echo every message."""
    await echo_loop(await request.accept(subprotocol=next(iter(request.proposed_subprotocols), None)))


class CloseWatcher:
    """A server handler: accept, wait for a message, and record why the connection closed."""

    def __init__(self) -> None:
        self.closes: list[CloseReason | None] = []
        self.done = trio.Event()

    async def __call__(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            self.closes.append(exc.reason)
        self.done.set()


async def start_server(nursery: trio.Nursery, handler: object, **options: object) -> WebSocketServer:
    """serve_websocket(handler) on a free loopback port, in ``nursery``."""
    server: WebSocketServer = await nursery.start(partial(serve_websocket, handler, HOST, 0, None, **options))
    return server


@pytest.fixture
async def echo_server(nursery: trio.Nursery) -> WebSocketServer:
    return await start_server(nursery, echo_handler)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost", "::1").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# --- raw protocol helpers, to play a misbehaving peer -----------------------


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One WebSocket frame, masked (as a client sends) unless ``mask`` is false."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 2**16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + payload
    key = b"\x01\x02\x03\x04"
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


UPGRADE_REQUEST = (
    b"GET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class RawClient:
    """A TCP client that speaks WebSocket by hand, to send what a good client would not."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def receive_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(f"EOF before {marker!r}; got {self.buffer!r}")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def handshake(self, request: bytes = UPGRADE_REQUEST) -> bytes:
        await self.stream.send_all(request)
        return await self.receive_until(b"\r\n\r\n")

    async def receive_frame(self) -> tuple[int, bytes]:
        """The next frame: (opcode, payload), unmasked if it was masked."""
        while True:
            if len(self.buffer) >= 2:
                length = self.buffer[1] & 0x7F
                masked = bool(self.buffer[1] & 0x80)
                offset = 2
                if length == 126:
                    (length,) = struct.unpack("!H", self.buffer[2:4])
                    offset = 4
                elif length == 127:
                    (length,) = struct.unpack("!Q", self.buffer[2:10])
                    offset = 10
                key = self.buffer[offset : offset + 4] if masked else b""
                offset += len(key)
                if len(self.buffer) >= offset + length:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[offset : offset + length]
                    if masked:
                        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
                    self.buffer = self.buffer[offset + length :]
                    return opcode, payload
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("EOF while waiting for a frame")
            self.buffer += data

    async def receive_eof(self) -> bytes:
        """Read until the server closes TCP; return whatever came."""
        rest = self.buffer
        while data := await self.stream.receive_some(65536):
            rest += data
        self.buffer = b""
        return rest


@pytest.fixture
async def raw_client(echo_server: WebSocketServer) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream(HOST, echo_server.port)
    async with stream:
        yield RawClient(stream)


def accept_token(key: bytes) -> bytes:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


class RawServerPeer(RawClient):
    """The server end of a raw TCP connection: answers the upgrade by hand, then follows a script."""

    async def accept(self, extra: bytes = b"") -> bytes:
        request = await self.receive_until(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        await self.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_token(key) + b"\r\n" + extra + b"\r\n"
        )
        return request


async def start_raw_server(nursery: trio.Nursery, script: Callable[[RawServerPeer], Awaitable[None]]) -> int:
    """Serve TCP on a free loopback port; each connection runs ``script``.  Returns the port."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await script(RawServerPeer(stream))
            except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                pass

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=HOST))
    port: int = listeners[0].socket.getsockname()[1]
    return port
