"""broadcast(): one message to many connections, waiting on none; write_limit; server.connections.

Most tests run on loopback TCP with hand-written peers (``Peer``), which read
frames exactly as they are on the wire: masked or not, RSV1, FIN, opcodes.
A peer that "never reads" sets a small ``SO_RCVBUF`` before it connects, and
servers that need TCP to push back soon get a small ``SO_SNDBUF`` on their
listening socket (``sndbuf=``; accepted sockets inherit it), so that a few
dozen KiB fill the kernel's buffers instead of the megabytes loopback
autotunes to.  Kernel-side accounting (``held_in_user_space``) reads
``FIONREAD`` on the peer's socket and the server socket's send queue in
``/proc/net/tcp``: what the library still holds is what it accepted minus
what the kernel holds.

Real time throughout (TCP's push-back needs real sockets; see conftest).
"""

from __future__ import annotations

import fcntl
import inspect
import os
import random
import socket
import struct
import sys
import termios
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import pytest
import trio
import trio.lowlevel
import trio.testing
from wsproto import ConnectionType

import trio_ws
import trio_ws._engine
import trio_ws._protocol
from trio_ws import (
    BroadcastResult,
    ConnectionClosed,
    ConnectionState,
    OpenConnections,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    broadcast,
    connect_websocket,
    connect_websocket_url,
    open_websocket,
    open_websocket_url,
    serve_websocket,
    wrap_client_stream,
    wrap_server_stream,
)
from trio_ws._deflate import PerMessageDeflate
from trio_ws._options import WRITE_LIMIT
from trio_ws.testing import websocket_pair

from .conftest import HOST, MemoryListener, close_payload, frame, start_raw_server
from .test_router import doc_examples, run_doc_example

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel socket accounting is Linux's")

TAIL = b"\x00\x00\xff\xff"  # RFC 7692: stripped from each compressed message
TEXT, BINARY, CONTINUATION, CLOSE = 0x1, 0x2, 0x0, 0x8


# --- a peer that reads the wire -------------------------------------------------------


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    opcode: int
    key: bytes | None  # the masking key, if the frame was masked
    payload: bytes  # unmasked

    @property
    def size(self) -> int:
        """The frame's length on the wire."""
        length = len(self.payload)
        header = 2 + (2 if 126 <= length < 2**16 else 8 if length >= 2**16 else 0)
        return header + (4 if self.key is not None else 0) + length


def take_frame(buffer: bytearray) -> Frame | None:
    """The first whole frame in ``buffer`` (removed from it), else ``None``."""
    if len(buffer) < 2:
        return None
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,), offset = struct.unpack_from("!H", buffer, 2), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,), offset = struct.unpack_from("!Q", buffer, 2), 10
    key = bytes(buffer[offset : offset + 4]) if buffer[1] & 0x80 else None
    start = offset + (4 if key is not None else 0)
    if len(buffer) < start + length:
        return None
    payload = bytes(buffer[start : start + length])
    if key is not None:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    result = Frame(bool(buffer[0] & 0x80), bool(buffer[0] & 0x40), buffer[0] & 0x0F, key, payload)
    del buffer[: start + length]
    return result


REQUEST = (
    "GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


class Peer:
    """A hand-written WebSocket peer over TCP: it reads frames as they are on the wire."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> Peer:
        sock = trio.socket.socket()
        if rcvbuf is not None:  # before connect(): the window scale is chosen then
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.connect((HOST, port))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    @property
    def fileno(self) -> int:
        return self.stream.socket.fileno()

    @property
    def local_port(self) -> int:
        port: int = self.stream.socket.getsockname()[1]
        return port

    async def handshake(self, extensions: str | None = None, path: str = "") -> bytes:
        extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
        await self.stream.send_all(REQUEST.format(path=path, extra=extra).encode())
        while b"\r\n\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            assert data, "EOF during the handshake"
            self.buffer += data
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = bytearray(rest)
        return head

    async def frame(self) -> Frame:
        while True:
            got = take_frame(self.buffer)
            if got is not None:
                return got
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("EOF while waiting for a frame")
            self.buffer += data

    async def frames_until_eof(self) -> list[Frame]:
        """Every frame until the server closes TCP (answering its Close)."""
        frames: list[Frame] = []
        while True:
            try:
                got = await self.frame()
            except (EOFError, trio.BrokenResourceError):
                return frames
            frames.append(got)
            if got.opcode == CLOSE:
                try:
                    await self.stream.send_all(frame(CLOSE, got.payload[:2]))
                except trio.BrokenResourceError:
                    pass

    async def aclose(self) -> None:
        await self.stream.aclose()


class Watch:
    """A server handler that accepts, keeps each connection (in order) and waits for its end."""

    def __init__(self) -> None:
        self.connections: list[WebSocketConnection] = []
        self.changed = trio.Event()
        self.requests: list[WebSocketRequest] = []

    async def __call__(self, request: WebSocketRequest) -> None:
        self.requests.append(request)
        ws = await request.accept()
        self.connections.append(ws)
        self.changed.set()
        self.changed = trio.Event()
        await ws.wait_closed()

    async def wait_for(self, count: int) -> list[WebSocketConnection]:
        while len(self.connections) < count:
            await self.changed.wait()
        return self.connections[:count]


async def start(
    nursery: trio.Nursery, handler: Any = None, *, sndbuf: int | None = None, **options: Any
) -> WebSocketServer:
    """A WebSocketServer on a free loopback port; ``sndbuf``: SO_SNDBUF of every accepted socket.
    (``disconnect_timeout`` 2 s unless given: peers that never read cannot answer a Close.)"""
    options.setdefault("disconnect_timeout", 2)
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    if sndbuf is not None:
        for listener in listeners:
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    server: WebSocketServer = await nursery.start(WebSocketServer(handler or Watch(), listeners, **options).run)
    return server


def _queue(fd: int, request: int) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]
    return value


def server_send_queue(server_port: int, peer_port: int) -> int:
    """The bytes in the kernel's send queue of the server's socket to ``peer_port`` (/proc/net/tcp)."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{peer_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[4].split(":")[0], 16)
    raise AssertionError(f"no socket {local} -> {remote}")


def held_in_user_space(accepted: int, server_port: int, peer: Peer) -> int:
    """Of ``accepted`` bytes the server took for ``peer`` (after the handshake), how many
    it still holds itself: neither in its socket's send queue nor in the peer's receive queue."""
    in_kernel = server_send_queue(server_port, peer.local_port) + _queue(peer.fileno, termios.FIONREAD)
    return accepted - in_kernel - len(peer.buffer)


def wire_size(payload_size: int, masked: bool = False) -> int:
    header = 2 if payload_size < 126 else 4 if payload_size < 2**16 else 10
    return header + (4 if masked else 0) + payload_size


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[object]:
    """Patch ``owner.name`` to record each call's first argument (``self`` for a method)."""
    original = getattr(owner, name)
    calls: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def tasks_named(*fragments: str) -> list[str]:
    """The names of the living trio tasks whose name contains one of ``fragments``."""
    found = []
    root = trio.lowlevel.current_root_task()
    assert root is not None
    pending = [root]
    while pending:
        task = pending.pop()
        if any(fragment in task.name for fragment in fragments):
            found.append(task.name)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


async def fill(connections: list[WebSocketConnection], payload: bytes, rounds: int) -> int:
    """Broadcast ``payload`` ``rounds`` times, a checkpoint between; how many were queued."""
    sent = 0
    for _ in range(rounds):
        sent += broadcast(connections, payload).sent
        await trio.lowlevel.checkpoint()
    return sent


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    """This module's nursery (servers run in it), cancelled at teardown, after ``peers``.

    pytest-trio's own ``nursery`` is cancelled as soon as the test returns, while the
    peers are still open: its servers would then close each connection with 1001 and
    wait disconnect_timeout for an answer that peers which never read cannot give.
    """
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


@pytest.fixture
async def peers(nursery: trio.Nursery) -> AsyncIterator[list[Peer]]:
    """Peers the test opens; closed at its end, before ``nursery`` (and the servers in it)
    is cancelled: pytest-trio tears a fixture down before those it depends on."""
    opened: list[Peer] = []
    try:
        yield opened
    finally:
        for peer in opened:
            await peer.aclose()


# --- the basics -------------------------------------------------------------------------


def test_broadcast_is_a_plain_function() -> None:
    """No coroutine: it cannot wait on anybody, and it is no checkpoint."""
    assert not inspect.iscoroutinefunction(broadcast)
    assert broadcast([], "nobody") == BroadcastResult(sent=0, skipped=0, closed=0)
    assert trio_ws.broadcast is broadcast
    assert trio_ws.WebSocketServer.connections.__doc__


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="on_slow"):
        broadcast([], "x", on_slow="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="message must be"):
        broadcast([], 42)  # type: ignore[arg-type]


async def test_to_server_connections_one_frame_for_all(
    nursery: trio.Nursery, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server connections without compression all get the same frame, built once: unmasked,
    FIN, RSV1 clear; trio_ws clients and raw peers alike receive text and binary."""
    watch = Watch()
    server = await start(nursery, watch)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_websocket(HOST, server.port, "/", use_ssl=False)) for _ in range(3)
        ]
        for _ in range(2):
            peer = await Peer.connect(server.port)
            peers.append(peer)
            await peer.handshake()
        await watch.wait_for(5)
        built = count_calls(monkeypatch, trio_ws._protocol, "frame")
        assert broadcast(server.connections, "h\u00e9llo") == BroadcastResult(5, 0, 0)
        assert len(built) == 1  # one frame for five connections
        assert broadcast(server.connections, b"\x00\xff" * 100) == BroadcastResult(5, 0, 0)
        assert len(built) == 2
        for client in clients:
            assert await client.get_message() == "h\u00e9llo"
            assert await client.get_message() == b"\x00\xff" * 100
        for peer in peers:
            first, second = await peer.frame(), await peer.frame()
            assert (first.fin, first.rsv1, first.opcode, first.key) == (True, False, TEXT, None)
            assert first.payload == "h\u00e9llo".encode()
            assert (second.fin, second.rsv1, second.opcode, second.key) == (True, False, BINARY, None)
            assert second.payload == b"\x00\xff" * 100


async def test_over_memory_streams() -> None:
    """Any stream: over memory streams every write goes through the connection's writer task."""
    async with websocket_pair() as (client, server):
        assert broadcast([server], "one") == BroadcastResult(1, 0, 0)
        assert broadcast([client], b"two") == BroadcastResult(1, 0, 0)
        assert await client.get_message() == "one"
        assert await server.get_message() == b"two"


async def test_over_tls(
    nursery: trio.Nursery, server_context: Any, client_context: Any
) -> None:  # ssl.SSLContext fixtures
    """TLS streams take no direct write: the writer task sends it all, through TLS."""
    watch = Watch()
    server = await nursery.start(partial(serve_websocket, watch, HOST, 0, server_context))
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_websocket(HOST, server.port, "/", use_ssl=client_context))
            for _ in range(3)
        ]
        await watch.wait_for(3)
        assert broadcast(server.connections, "secret " * 1000).sent == 3
        for client in clients:
            assert await client.get_message() == "secret " * 1000


async def test_client_connections_mask_each_frame_with_its_own_key(nursery: trio.Nursery) -> None:
    """A broadcast from client connections: every frame masked, each with its own key."""
    received: list[list[Frame]] = []
    done = trio.Event()
    count = 4

    async def script(peer: Any) -> None:
        await peer.accept()
        frames: list[Frame] = []
        buffer = bytearray(peer.buffer)
        while len(frames) < 2:
            got = take_frame(buffer)
            if got is None:
                buffer += await peer.stream.receive_some(65536)
            else:
                frames.append(got)
        received.append(frames)
        if len(received) == count:
            done.set()
        await trio.sleep_forever()

    port = await start_raw_server(nursery, script)
    async with trio.open_nursery() as clients_nursery:
        clients = [
            await connect_websocket(clients_nursery, HOST, port, "/", use_ssl=False, disconnect_timeout=0.5)
            for _ in range(count)
        ]
        assert broadcast(clients, "to every server") == BroadcastResult(count, 0, 0)
        assert broadcast(clients, bytes(range(256)) * 10) == BroadcastResult(count, 0, 0)
        with trio.fail_after(5):
            await done.wait()
        clients_nursery.cancel_scope.cancel()
    keys: set[bytes] = set()
    for text, binary in received:
        assert (text.opcode, text.fin, text.rsv1, text.payload) == (TEXT, True, False, b"to every server")
        assert (binary.opcode, binary.fin, binary.rsv1, binary.payload) == (BINARY, True, False, bytes(range(256)) * 10)
        assert text.key is not None
        assert binary.key is not None
        keys.update((text.key, binary.key))
    assert len(keys) == 2 * count  # a fresh key for every frame


# --- compression ------------------------------------------------------------------------

_RANDOM = random.Random(7)
_WORDS = " ".join(f"{_RANDOM.getrandbits(32):08x}" for _ in range(300))  # compresses to about half
# The second message is the first and a little more: with the first as context, it is tiny.
MESSAGES: list[str | bytes] = [_WORDS, _WORDS + " and a little more", b"\x00" * 5000]


def as_bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


async def test_context_takeover_each_connection_compresses(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With context takeover (the default, and browsers'), each connection compresses the
    message itself; every client decodes every message, the later ones compressed against
    the earlier.  A client without compression gets the plain frame."""
    watch = Watch()
    server = await start(nursery, watch, compression="deflate")
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                open_websocket(HOST, server.port, "/", use_ssl=False, compression="deflate", message_queue_size=10)
            )
            for _ in range(3)
        ]
        plain = await stack.enter_async_context(
            open_websocket(HOST, server.port, "/", use_ssl=False, message_queue_size=10)
        )
        await watch.wait_for(4)
        deflated = count_calls(monkeypatch, PerMessageDeflate, "deflate")
        for message in MESSAGES:
            assert broadcast(server.connections, message).sent == 4
        assert len(deflated) == 3 * len(MESSAGES)
        assert len({id(each) for each in deflated}) == 3  # each connection's own compressor
        for client in [*clients, plain]:
            for message in MESSAGES:
                assert await client.get_message() == message
        wire = [client.statistics().bytes_received for client in clients]
        assert max(wire) < plain.statistics().bytes_received // 4  # compressed indeed


async def test_context_takeover_on_the_wire(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """A raw peer inflates the messages in order with one decompressor: each server
    connection's own compressor kept its context from message to message."""
    watch = Watch()
    server = await start(nursery, watch, compression="deflate")
    for _ in range(2):
        peer = await Peer.connect(server.port)
        peers.append(peer)
        head = await peer.handshake("permessage-deflate")
        assert b"permessage-deflate" in head.lower()
    await watch.wait_for(2)
    for message in MESSAGES:
        broadcast(server.connections, message)
    alone = zlib.compressobj(wbits=-15)
    second_alone = len(alone.compress(as_bytes(MESSAGES[1])) + alone.flush(zlib.Z_SYNC_FLUSH))
    for peer in peers:
        inflater = zlib.decompressobj(-15)
        sizes = []
        for message in MESSAGES:
            got = await peer.frame()
            assert got.rsv1
            assert got.fin
            assert got.key is None
            assert inflater.decompress(got.payload + TAIL) == as_bytes(message)
            sizes.append(len(got.payload))
        assert sizes[1] < second_alone // 10  # compressed against the first message


async def test_no_context_takeover_shares_one_compressed_frame(
    nursery: trio.Nursery, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peers that offered server_no_context_takeover share one compressed frame (one deflate
    call for all with the same parameters); others with context takeover compress each for
    themselves; another window size is another frame; peers without the extension share
    the plain frame."""
    watch = Watch()
    server = await start(nursery, watch, compression="deflate")
    offers = [
        *["permessage-deflate; server_no_context_takeover"] * 4,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        *["permessage-deflate"] * 2,
        None,
        None,
    ]
    for offer in offers:
        peer = await Peer.connect(server.port)
        peers.append(peer)
        await peer.handshake(offer)
    await watch.wait_for(len(offers))
    deflated = count_calls(monkeypatch, PerMessageDeflate, "deflate")
    built = count_calls(monkeypatch, trio_ws._protocol, "frame")
    for message in MESSAGES:
        assert broadcast(server.connections, message).sent == len(offers)
    # Per message: 1 shared (4 peers) + 1 (window 10) + 2 (context takeover) deflate calls,
    # and as many compressed frames, plus 1 plain frame for the 2 peers without it.
    assert len(deflated) == 4 * len(MESSAGES)
    assert len(built) == 5 * len(MESSAGES)
    wire: dict[str | None, list[list[bytes]]] = {}
    for offer, peer in zip(offers, peers, strict=True):
        inflater = zlib.decompressobj(-15)
        frames: list[bytes] = []
        for message in MESSAGES:
            got = await peer.frame()
            frames.append(got.payload)
            expected = message.encode() if isinstance(message, str) else message
            if offer is None:
                assert not got.rsv1
                assert got.payload == expected
                continue
            assert got.rsv1
            if "no_context_takeover" in offer:
                inflater = zlib.decompressobj(-15)  # each message stands alone
            assert inflater.decompress(got.payload + TAIL) == expected
        wire.setdefault(offer, []).append(frames)
    shared = wire["permessage-deflate; server_no_context_takeover"]
    assert all(frames == shared[0] for frames in shared)  # the same bytes for all four


async def test_compress_false_sends_the_plain_frame(
    nursery: trio.Nursery, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """compress=False: no deflate call; every connection (with the extension or not) gets
    the one plain frame, RSV1 clear; trio_ws clients with compression read it."""
    watch = Watch()
    server = await start(nursery, watch, compression="deflate")
    async with open_websocket(HOST, server.port, "/", use_ssl=False, compression="deflate") as client:
        for offer in ("permessage-deflate", "permessage-deflate; server_no_context_takeover", None):
            peer = await Peer.connect(server.port)
            peers.append(peer)
            await peer.handshake(offer)
        await watch.wait_for(4)
        deflated = count_calls(monkeypatch, PerMessageDeflate, "deflate")
        built = count_calls(monkeypatch, trio_ws._protocol, "frame")
        assert broadcast(server.connections, MESSAGES[0], compress=False).sent == 4
        assert deflated == []
        assert len(built) == 1
        assert await client.get_message() == MESSAGES[0]
        for peer in peers:
            got = await peer.frame()
            assert not got.rsv1
            assert got.payload == as_bytes(MESSAGES[0])
        # and the next compressed message still decodes (the contexts were not touched)
        broadcast(server.connections, MESSAGES[1])
        assert await client.get_message() == MESSAGES[1]
        got = await peers[0].frame()
        assert zlib.decompressobj(-15).decompress(got.payload + TAIL) == as_bytes(MESSAGES[1])


async def test_client_side_compression_each_compresses_and_masks(nursery: trio.Nursery) -> None:
    """Client connections with permessage-deflate: each compresses for itself (its context)
    and masks with its own key; a server inflates each stream in order."""
    count = 3
    inflated: list[list[bytes]] = [[] for _ in range(count)]
    keys: list[bytes] = []
    accepted: list[int] = []
    done = trio.Event()
    arrived = 0

    async def script(peer: Any) -> None:
        nonlocal arrived
        index = len(accepted)
        accepted.append(index)
        await peer.accept(b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        inflater = zlib.decompressobj(-15)
        buffer = bytearray(peer.buffer)
        while len(inflated[index]) < len(MESSAGES):
            got = take_frame(buffer)
            if got is None:
                buffer += await peer.stream.receive_some(65536)
                continue
            assert got.rsv1
            assert got.key is not None
            keys.append(got.key)
            inflated[index].append(inflater.decompress(got.payload + TAIL))
        arrived += 1
        if arrived == count:
            done.set()
        await trio.sleep_forever()

    port = await start_raw_server(nursery, script)
    async with trio.open_nursery() as clients_nursery:
        clients = []
        for _ in range(count):
            clients.append(
                await connect_websocket(
                    clients_nursery, HOST, port, "/", use_ssl=False, compression="deflate", disconnect_timeout=0.5
                )
            )
        for message in MESSAGES:
            assert broadcast(clients, message).sent == count
        with trio.fail_after(5):
            await done.wait()
        clients_nursery.cancel_scope.cancel()
    expected = [m.encode() if isinstance(m, str) else m for m in MESSAGES]
    assert all(got == expected for got in inflated)
    assert len(set(keys)) == count * len(MESSAGES)


# --- who is skipped -------------------------------------------------------------------


async def test_connections_not_open_are_skipped(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """CONNECTING (both roles), CLOSING and CLOSED connections are skipped, and nothing of
    the message reaches the wire after a Close."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    connecting_server = WebSocketConnection(server_stream, ConnectionType.SERVER)
    connecting_client = WebSocketConnection(client_stream, ConnectionType.CLIENT, host="x", path="/")
    assert connecting_server.state is connecting_client.state is ConnectionState.CONNECTING

    watch = Watch()
    server = await start(nursery, watch, disconnect_timeout=2)
    closing_peer, open_peer = await Peer.connect(server.port), await Peer.connect(server.port)
    peers.extend((closing_peer, open_peer))
    await closing_peer.handshake()
    await open_peer.handshake()
    closing, open_ = await watch.wait_for(2)
    async with open_websocket(HOST, server.port, "/", use_ssl=False) as gone:
        pass  # closed: its server side too, once the handshake completes
    await watch.wait_for(3)
    closed = watch.connections[2]
    with trio.fail_after(5):
        await closed.wait_closed()
    nursery.start_soon(closing.aclose, 4000, "bye")  # the raw peer does not answer (yet)
    while closing.state is ConnectionState.OPEN:  # noqa: ASYNC110 - no event for "closing began"
        await trio.sleep(0.001)
    assert closing.state is ConnectionState.CLOSING
    assert gone.state is ConnectionState.CLOSED

    everyone = [connecting_server, connecting_client, closing, closed, gone, open_]
    assert broadcast(everyone, "only for the open one") == BroadcastResult(sent=1, skipped=5, closed=0)
    assert broadcast(everyone, "again", on_slow="close") == BroadcastResult(sent=1, skipped=5, closed=0)
    assert (await open_peer.frame()).payload == b"only for the open one"
    frames = await closing_peer.frames_until_eof()
    assert [(f.opcode, f.payload) for f in frames] == [(CLOSE, close_payload(4000, "bye"))]
    assert closing.closed is not None
    assert closing.closed.code == 4000
    assert list(server.connections) == [open_]
    await connecting_server._release("test over")  # the constructed ones never opened
    await connecting_client._release("test over")


async def test_a_message_in_pieces_is_never_interleaved(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """While a message goes out in pieces, broadcast() skips the connection; before its
    first piece and after its last, the broadcast message goes out whole, around it."""
    watch = Watch()
    server = await start(nursery, watch)
    peer = await Peer.connect(server.port)
    peers.append(peer)
    await peer.handshake()
    (ws,) = await watch.wait_for(1)
    step = trio.Semaphore(0)
    results: list[BroadcastResult] = []

    async def pieces() -> AsyncIterator[str]:
        for piece in ("one ", "two ", "three"):
            await step.acquire()
            yield piece

    async def send() -> None:
        await ws.send_message(pieces())

    nursery.start_soon(send)
    await trio.testing.wait_all_tasks_blocked()
    results.append(broadcast([ws], "before"))  # the message in pieces has no frame out yet
    for _ in range(3):
        step.release()
        await trio.testing.wait_all_tasks_blocked()
        results.append(broadcast([ws], "during"))  # a piece is out: skipped
    await trio.testing.wait_all_tasks_blocked()
    results.append(broadcast([ws], "after"))
    # While pieces are out the connection is skipped; the last piece ends the message
    # (an empty final frame follows it), and the next broadcast goes out after it.
    assert [r.sent for r in results] == [1, 0, 0, 1, 1]
    assert [r.skipped for r in results] == [0, 1, 1, 0, 0]
    frames = [await peer.frame() for _ in range(7)]
    assert [(f.opcode, f.fin, f.payload) for f in frames] == [
        (TEXT, True, b"before"),
        (TEXT, False, b"one "),
        (CONTINUATION, False, b"two "),
        (CONTINUATION, False, b"three"),
        (CONTINUATION, True, b""),
        (TEXT, True, b"during"),
        (TEXT, True, b"after"),
    ]


async def test_a_send_blocked_part_way_keeps_its_frame_whole(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """A send_message() blocked part way through a large frame (the peer does not read):
    a broadcast meanwhile is queued, and goes out after that frame, never inside it.  (The
    frame counts toward write_limit: with the default, 64 KiB, the broadcast would skip it.)"""
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=2**22)
    peer = await Peer.connect(server.port, rcvbuf=4096)
    peers.append(peer)
    await peer.handshake()
    (ws,) = await watch.wait_for(1)
    big = os.urandom(2**20)
    sent = trio.Event()

    async def send() -> None:
        await ws.send_message(big)
        sent.set()

    nursery.start_soon(send)
    await trio.sleep(0.05)
    assert not sent.is_set()  # blocked part way
    assert broadcast([ws], "behind it") == BroadcastResult(1, 0, 0)
    assert ws.buffered_amount >= len(big)
    first, second = await peer.frame(), await peer.frame()
    assert (first.opcode, first.payload == big) == (BINARY, True)
    assert (second.opcode, second.payload) == (TEXT, b"behind it")
    with trio.fail_after(5):
        await sent.wait()


# --- slow peers -----------------------------------------------------------------------


async def test_over_write_limit_skip_then_resume(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """A peer that does not read is skipped once its queue is over write_limit, while the
    others get everything; once it reads, it gets what was queued, whole and in order, and
    then new messages again."""
    limit = 16384
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=limit, disconnect_timeout=1)
    slow, fast = await Peer.connect(server.port, rcvbuf=4096), await Peer.connect(server.port)
    peers.extend((slow, fast))
    await slow.handshake()
    await fast.handshake()
    slow_ws, fast_ws = await watch.wait_for(2)
    results = []
    for index in range(40):
        results.append(broadcast([slow_ws, fast_ws], struct.pack("!I", index) + bytes(4092)))
        got = await fast.frame()  # the fast one reads as it comes: it gets every message
        assert struct.unpack_from("!I", got.payload)[0] == index
        assert slow_ws.buffered_amount <= limit + wire_size(4096)
    assert all(r.sent + r.skipped == 2 and r.closed == 0 for r in results)
    skipped = sum(r.skipped for r in results)
    assert skipped > 0
    # The slow one got the first 40 - skipped messages, in order, then nothing.
    queued = 40 - skipped
    assert [r.skipped for r in results] == [0] * queued + [1] * skipped
    for index in range(queued):
        got = await slow.frame()
        assert (got.opcode, got.fin, len(got.payload)) == (BINARY, True, 4096)
        assert struct.unpack_from("!I", got.payload)[0] == index
    with trio.fail_after(5):
        while slow_ws.buffered_amount:  # noqa: ASYNC110 - no event for "all written"
            await trio.sleep(0.01)
    assert broadcast([slow_ws, fast_ws], "caught up") == BroadcastResult(2, 0, 0)
    assert (await slow.frame()).payload == b"caught up"


async def test_on_slow_close_closes_with_1013(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """on_slow="close": a connection over write_limit is closed with 1013 (Try Again Later)
    and counted as closed; the peer, once it reads, gets the queued messages whole, then
    the Close."""
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=8192, disconnect_timeout=5)
    slow, fast = await Peer.connect(server.port, rcvbuf=4096), await Peer.connect(server.port)
    peers.extend((slow, fast))
    await slow.handshake()
    await fast.handshake()
    slow_ws, fast_ws = await watch.wait_for(2)
    payload = bytes(4096)
    closed_at = None
    for index in range(60):
        result = broadcast(server.connections, payload, on_slow="close")
        assert result.sent >= 1
        if result.closed:
            assert result == BroadcastResult(sent=1, skipped=0, closed=1)
            closed_at = index
            break
        await trio.lowlevel.checkpoint()
    assert closed_at is not None
    frames = await slow.frames_until_eof()
    assert [f.opcode for f in frames] == [BINARY] * closed_at + [CLOSE]
    assert all(f.payload == payload for f in frames[:-1])
    assert frames[-1].payload[:2] == struct.pack("!H", 1013)
    with trio.fail_after(5):
        reason = await slow_ws.wait_closed()
    assert reason.code == 1013
    assert fast_ws.state is ConnectionState.OPEN
    assert list(server.connections) == [fast_ws]


async def test_write_limit_zero_queues_only_into_an_empty_queue() -> None:
    """write_limit=0: a message is queued only when nothing else waits."""
    async with websocket_pair(write_limit=0) as (client, server):
        assert broadcast([server], "first") == BroadcastResult(1, 0, 0)
        assert broadcast([server], "second") == BroadcastResult(0, 1, 0)  # "first" still queued
        assert await client.get_message() == "first"
        assert broadcast([server], "third") == BroadcastResult(1, 0, 0)
        assert await client.get_message() == "third"


async def test_buffered_amount_counts_queued_broadcast_bytes() -> None:
    """buffered_amount (and statistics()) count the frames a broadcast queued until written."""
    async with websocket_pair() as (client, server):
        assert server.buffered_amount == 0
        broadcast([server], "x" * 1000)
        broadcast([server], b"y" * 200)
        queued = wire_size(1000) + wire_size(200)
        assert server.buffered_amount == queued  # no checkpoint yet: nothing written
        assert server.statistics().buffered_amount == queued
        assert await client.get_message() == "x" * 1000
        assert await client.get_message() == b"y" * 200
        await trio.testing.wait_all_tasks_blocked()
        assert server.buffered_amount == 0


async def test_thousand_connections_some_never_read(
    nursery: trio.Nursery, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 loopback connections, 20 of which never read: every broadcast returns at once,
    the 980 others get every message in order, and what the server holds for each slow one
    stays within write_limit and the frame under way."""
    total, slow_count, rounds, size, limit = 1000, 20, 12, 8192, 16384
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=limit, disconnect_timeout=1)
    fast_count = total - slow_count
    received = [0] * fast_count
    round_done = trio.Event()
    expected = caught_up = 0
    errors: list[str] = []

    async def read(index: int, ws: WebSocketConnection) -> None:
        nonlocal caught_up
        try:
            while True:
                message = await ws.get_message()
                assert isinstance(message, bytes)
                if struct.unpack_from("!I", message)[0] != received[index] or len(message) != size:
                    errors.append(f"client {index}: message {received[index]} wrong")
                received[index] += 1
                if received[index] == expected:
                    caught_up += 1
                    if caught_up == fast_count:
                        round_done.set()
        except ConnectionClosed:
            pass

    async def connect(index: int, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            ws = await connect_websocket(clients, HOST, server.port, "/", use_ssl=False, disconnect_timeout=1)
        await read(index, ws)

    async with trio.open_nursery() as clients:
        limiter = trio.CapacityLimiter(50)
        for index in range(fast_count):
            clients.start_soon(connect, index, limiter)
        for _ in range(slow_count):
            peer = await Peer.connect(server.port, rcvbuf=4096)
            peers.append(peer)
            await peer.handshake()
        everyone = await watch.wait_for(total)
        assert len(server.connections) == total
        by_port = {ws.remote.port: ws for ws in everyone}  # type: ignore[union-attr]
        slow_ws = [by_port[peer.local_port] for peer in peers]
        longest = 0.0
        for number in range(rounds):
            message = struct.pack("!I", number) + bytes(size - 4)
            expected, caught_up = number + 1, 0
            round_done = trio.Event()
            started = time.perf_counter()
            result = broadcast(server.connections, message)
            longest = max(longest, time.perf_counter() - started)
            assert result.sent + result.skipped == total
            assert result.closed == 0
            assert result.sent >= total - slow_count  # only slow ones are ever skipped
            with trio.fail_after(5):
                await round_done.wait()  # the fast ones all have it: nothing waited on the slow
            for ws in slow_ws:
                assert ws.buffered_amount <= limit + wire_size(size)
        assert not errors
        assert min(received) == max(received) == rounds
        assert longest < 0.5, f"a broadcast to {total} connections took {longest:.3f} s"
        # By now every slow one is over its limit: skipped.
        assert broadcast(server.connections, b"last").skipped == slow_count
        for ws, peer in zip(slow_ws, peers, strict=True):
            accepted = ws.statistics().messages_sent * wire_size(size)
            held = held_in_user_space(accepted, server.port, peer)
            # the queue (at most write_limit and one frame) and the rest of the frame under way
            assert 0 <= held <= limit + 2 * wire_size(size), held
        clients.cancel_scope.cancel()


# --- races ------------------------------------------------------------------------------


async def test_broadcast_racing_closes(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """Connections closing every way while frames are queued for them (peers resetting, the
    server closing, closing for slowness), with broadcasts going on meanwhile: no error, no
    exception from broadcast(), and no task left behind."""
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=8192, disconnect_timeout=0.5)
    count = 30
    for _ in range(count):
        peer = await Peer.connect(server.port, rcvbuf=4096)
        peers.append(peer)
        await peer.handshake()
    everyone = await watch.wait_for(count)
    await fill(everyone, bytes(4096), 20)  # every queue full, every writer task blocked
    assert tasks_named("_write_behind")
    async with trio.open_nursery() as closers:
        for peer in peers[:10]:
            await peer.aclose()  # unread data: the kernel sends a reset
        for ws in everyone[10:20]:
            closers.start_soon(ws.aclose, 1001)
        for _ in range(30):
            broadcast(everyone, bytes(4096))
            broadcast(everyone, "slow?", on_slow="close")
            await trio.sleep(0.02)
    for peer in peers[10:]:
        await peer.aclose()
    with trio.fail_after(5):
        for ws in everyone:
            await ws.wait_closed()
    assert len(server.connections) == 0
    assert broadcast(everyone, "after") == BroadcastResult(0, count, 0)
    await trio.testing.wait_all_tasks_blocked()
    assert tasks_named("_write_behind", "_close_within", "_close_slow") == []


async def test_server_shutdown_with_frames_queued(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """Cancelling a server while its connections have frames queued ends it promptly, no error."""
    watch = Watch()
    async with trio.open_nursery() as inner:
        server = await start(inner, watch, sndbuf=8192, disconnect_timeout=0.5)
        for _ in range(10):
            peer = await Peer.connect(server.port, rcvbuf=4096)
            peers.append(peer)
            await peer.handshake()
        everyone = await watch.wait_for(10)
        await fill(everyone, bytes(4096), 40)
        started = time.perf_counter()
        inner.cancel_scope.cancel()
    assert time.perf_counter() - started < 3
    assert all(ws.state is ConnectionState.CLOSED for ws in everyone)
    assert tasks_named("_write_behind") == []


async def test_broadcast_then_close_in_the_same_tick(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """A message queued just before aclose() goes out before the Close frame; none after."""
    watch = Watch()
    server = await start(nursery, watch)
    peer = await Peer.connect(server.port)
    peers.append(peer)
    await peer.handshake()
    (ws,) = await watch.wait_for(1)
    assert broadcast([ws], "last words").sent == 1
    nursery.start_soon(ws.aclose, 1000, None)
    while ws.state is ConnectionState.OPEN:
        await trio.lowlevel.checkpoint()
    assert broadcast([ws], "too late") == BroadcastResult(0, 1, 0)
    frames = await peer.frames_until_eof()
    assert [(f.opcode, f.payload) for f in frames] == [(TEXT, b"last words"), (CLOSE, close_payload(1000))]


# --- server.connections ---------------------------------------------------------------


async def test_server_connections_is_a_live_read_only_view(nursery: trio.Nursery, peers: list[Peer]) -> None:
    watch = Watch()
    server = await start(nursery, watch)
    view = server.connections
    assert isinstance(view, OpenConnections)
    assert len(view) == 0
    assert list(view) == []
    assert not view
    assert not hasattr(view, "add")
    assert not hasattr(view, "discard")
    assert not hasattr(view, "clear")
    # A connection in its opening handshake is not in it.
    pending = await Peer.connect(server.port)
    peers.append(pending)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_websocket(HOST, server.port, "/", use_ssl=False))
        second = await stack.enter_async_context(open_websocket(HOST, server.port, "/", use_ssl=False))
        one, two = await watch.wait_for(2)
        assert len(view) == 2  # the same view object follows the server
        assert set(view) == {one, two}
        assert one in view
        assert two in view
        assert first not in view  # a client connection is not the server's
        assert cast(object, "not a connection") not in view
        await pending.handshake()
        three = (await watch.wait_for(3))[2]
        assert len(view) == 3
        assert three in view
        # Iterating while connections come and go is safe.
        for ws in view:
            if ws is one:
                await ws.aclose()
        assert len(view) == 2
        await second.aclose()
        with trio.fail_after(5):
            await two.wait_closed()
        assert two not in view
        assert one not in view
        assert set(view) == {three}
        assert broadcast(view, "to the one left") == BroadcastResult(1, 0, 0)
        assert (await pending.frame()).payload == b"to the one left"
    assert repr(view) == "<OpenConnections: 1>"


async def test_server_connections_excludes_closing(nursery: trio.Nursery, peers: list[Peer]) -> None:
    """A connection whose closing handshake has begun leaves the view at once."""
    watch = Watch()
    server = await start(nursery, watch, disconnect_timeout=2)
    peer = await Peer.connect(server.port)
    peers.append(peer)
    await peer.handshake()
    (ws,) = await watch.wait_for(1)
    assert ws in server.connections
    nursery.start_soon(ws.aclose)
    await trio.testing.wait_all_tasks_blocked()
    assert ws.state is ConnectionState.CLOSING
    assert ws not in server.connections
    assert len(server.connections) == 0


# --- write_limit on every entry point -------------------------------------------------


def test_write_limit_default() -> None:
    assert WRITE_LIMIT == 2**16
    for entry in (
        serve_websocket,
        WebSocketServer,
        open_websocket,
        open_websocket_url,
        connect_websocket,
        connect_websocket_url,
        wrap_client_stream,
        wrap_server_stream,
        websocket_pair,
        WebSocketConnection,
    ):
        parameter = inspect.signature(entry).parameters["write_limit"]
        assert parameter.default == WRITE_LIMIT, entry
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, entry


BAD_LIMITS = [-1, 1.5, True, "64k", None]


def _entry_calls() -> Iterator[tuple[str, Callable[[Any], Awaitable[object]]]]:
    async def nothing(request: WebSocketRequest) -> None:
        await trio.lowlevel.checkpoint()

    async def serve(limit: Any) -> object:
        await serve_websocket(nothing, HOST, 0, None, write_limit=limit)
        return None

    async def server(limit: Any) -> object:
        return WebSocketServer(nothing, [MemoryListener()], write_limit=limit)

    async def open_(limit: Any) -> object:
        async with open_websocket(HOST, 1, "/", use_ssl=False, write_limit=limit):
            pass
        return None

    async def open_url(limit: Any) -> object:
        async with open_websocket_url("ws://127.0.0.1:1/", write_limit=limit):
            pass
        return None

    async def connect(limit: Any) -> object:
        async with trio.open_nursery() as nursery:
            return await connect_websocket(nursery, HOST, 1, "/", use_ssl=False, write_limit=limit)

    async def connect_url(limit: Any) -> object:
        async with trio.open_nursery() as nursery:
            return await connect_websocket_url(nursery, "ws://127.0.0.1:1/", write_limit=limit)

    async def wrap_client(limit: Any) -> object:
        async with trio.open_nursery() as nursery:
            stream, _ = trio.testing.memory_stream_pair()
            return await wrap_client_stream(nursery, stream, HOST, "/", write_limit=limit)

    async def wrap_server(limit: Any) -> object:
        async with trio.open_nursery() as nursery:
            stream, _ = trio.testing.memory_stream_pair()
            return await wrap_server_stream(nursery, stream, write_limit=limit)

    async def pair(limit: Any) -> object:
        async with websocket_pair(write_limit=limit):
            pass
        return None

    async def constructor(limit: Any) -> object:
        stream, _ = trio.testing.memory_stream_pair()
        return WebSocketConnection(stream, ConnectionType.SERVER, write_limit=limit)

    yield from {
        "serve_websocket": serve,
        "WebSocketServer": server,
        "open_websocket": open_,
        "open_websocket_url": open_url,
        "connect_websocket": connect,
        "connect_websocket_url": connect_url,
        "wrap_client_stream": wrap_client,
        "wrap_server_stream": wrap_server,
        "websocket_pair": pair,
        "WebSocketConnection": constructor,
    }.items()


@pytest.mark.parametrize(("name", "call"), list(_entry_calls()), ids=[name for name, _ in _entry_calls()])
async def test_write_limit_is_validated_everywhere(name: str, call: Callable[[Any], Awaitable[object]]) -> None:
    """A negative (or non-int) write_limit fails with ValueError before any socket opens
    (out of the test's own nursery, for the calls that need one, in an exception group)."""
    for bad in BAD_LIMITS:
        with pytest.raises((ValueError, BaseExceptionGroup)) as info:
            await call(bad)
        error: BaseException = info.value
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        assert isinstance(error, ValueError), repr(error)
        assert "write_limit" in str(error)


# --- found by these tests, fixed: each failed before its fix ---------------------------


async def _slowly_reading_peer(nursery: trio.Nursery, peers: list[Peer]) -> tuple[int, int, int]:
    """A peer that reads a little now and then while broadcasts go on: the worst bytes the
    server held for it, what buffered_amount said then, and the write_limit."""
    limit = 65536
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=limit, disconnect_timeout=1)
    peer = await Peer.connect(server.port, rcvbuf=4096)
    peers.append(peer)
    await peer.handshake()
    (ws,) = await watch.wait_for(1)
    payload = bytes(4096)
    accepted = worst = reported = read = 0
    for _ in range(12):
        for _ in range(100):  # broadcast until the connection is over write_limit
            if not broadcast([ws], payload).sent:
                break
            accepted += wire_size(len(payload))
            await trio.lowlevel.checkpoint()
        await trio.sleep(0.005)
        held = held_in_user_space(accepted - read, server.port, peer)
        if held > worst:
            worst, reported = held, ws.buffered_amount
        read += len(await peer.stream.receive_some(8192))  # the peer reads a little
        await trio.sleep(0.005)
    return worst, reported, limit


async def test_held_bytes_stay_within_write_limit_for_a_peer_that_reads_slowly(
    nursery: trio.Nursery, peers: list[Peer]
) -> None:
    worst, _, limit = await _slowly_reading_peer(nursery, peers)
    assert worst <= limit + 2 * wire_size(4096), f"held {worst} bytes with write_limit={limit}"


async def test_buffered_amount_counts_bytes_under_way(nursery: trio.Nursery, peers: list[Peer]) -> None:
    worst, reported, _ = await _slowly_reading_peer(nursery, peers)
    assert reported >= worst - wire_size(4096), f"held {worst} bytes, buffered_amount said {reported}"


async def test_a_connection_closed_for_slowness_is_closed_once(nursery: trio.Nursery, peers: list[Peer]) -> None:
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=8192, disconnect_timeout=1)
    peer = await Peer.connect(server.port, rcvbuf=4096)  # never reads
    peers.append(peer)
    await peer.handshake()
    (ws,) = await watch.wait_for(1)
    results = []
    for _ in range(60):
        results.append(broadcast([ws], bytes(4096), on_slow="close"))
        await trio.lowlevel.checkpoint()
    closes = sum(r.closed for r in results)
    state = ws.state
    with trio.fail_after(5):
        reason = await ws.wait_closed()
    assert closes == 1, f"counted as closed {closes} times"
    assert state is not ConnectionState.OPEN
    assert reason.code == 1013


async def test_queued_broadcasts_do_not_stop_the_reader(nursery: trio.Nursery) -> None:
    """Both ends broadcast to each other and both applications read everything: every
    message queued arrives (send_message() in a loop would not deadlock either, since
    each connection's reader goes on reading while a send waits)."""
    server_side: list[WebSocketConnection] = []
    ready = trio.Event()
    got = {"server": 0, "client": 0}

    async def read_all(ws: WebSocketConnection, who: str) -> None:
        try:
            while True:
                await ws.get_message()
                got[who] += 1
        except ConnectionClosed:
            pass

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        server_side.append(ws)
        ready.set()
        await read_all(ws, "server")

    server = await start(nursery, handler, write_limit=2**20, disconnect_timeout=0.5)
    async with open_websocket(HOST, server.port, "/", use_ssl=False, write_limit=2**20, disconnect_timeout=0.5) as ws:
        await ready.wait()
        nursery.start_soon(read_all, ws, "client")
        sent = {"server": 0, "client": 0}
        message = bytes(65536)
        for _ in range(200):
            sent["client"] += broadcast(server_side, message).sent  # the client receives these
            sent["server"] += broadcast([ws], message).sent
            await trio.lowlevel.checkpoint()
        with trio.move_on_after(2):
            while got != sent:  # noqa: ASYNC110 - counts, polled
                await trio.sleep(0.05)
        assert got == sent, f"received {got} of {sent}"


async def test_pongs_owed_to_a_peer_that_pings_without_reading_stay_bounded(
    nursery: trio.Nursery, peers: list[Peer]
) -> None:
    """While a broadcast's writer waits for a peer that does not read, the reader goes on
    reading and leaves its Pongs to that writer, but only up to a backlog: then it waits,
    and stops reading.  A peer that floods pings and reads nothing holds the server's
    memory to write_limit, one message and that backlog."""
    limit = 16384
    watch = Watch()
    server = await start(nursery, watch, sndbuf=8192, write_limit=limit, disconnect_timeout=1)
    peer = await Peer.connect(server.port, rcvbuf=4096)
    peers.append(peer)
    await peer.handshake()
    (ws,) = await watch.wait_for(1)
    while broadcast([ws], bytes(4096)).sent:  # until the writer waits, and the queue is full
        await trio.testing.wait_all_tasks_blocked()
    ping = frame(0x9, bytes(125))
    with trio.move_on_after(1):  # the server stops reading, and then so may this send
        await peer.stream.send_all(ping * 4000)  # 508 KB of Pongs owed
    await trio.testing.wait_all_tasks_blocked(0.05)
    pong = wire_size(125)
    bound = limit + wire_size(4096) + trio_ws._engine._REPLY_BACKLOG + pong
    assert limit < ws.buffered_amount <= bound
    assert ws.state is ConnectionState.OPEN


async def test_every_connection_in_server_connections_gets_the_broadcast(nursery: trio.Nursery) -> None:
    watch = Watch()
    server = await start(nursery, watch)
    async with (
        open_websocket(HOST, server.port, "/", use_ssl=False) as alice,
        open_websocket(HOST, server.port, "/", use_ssl=False) as bob,
    ):
        everyone = list(server.connections)
        assert len(everyone) == 2  # both clients are connected, and the server says so
        assert broadcast(everyone, "hello") == BroadcastResult(2, 0, 0)
        with trio.fail_after(2):
            assert await alice.get_message() == "hello"
            assert await bob.get_message() == "hello"


# --- the examples of docs/broadcast.md, as written ------------------------------------------


@pytest.mark.parametrize(("code", "expected"), doc_examples("broadcast.md"))
def test_broadcast_doc_examples(monkeypatch: pytest.MonkeyPatch, code: str, expected: str | None) -> None:
    run_doc_example(monkeypatch, "broadcast.md", code, expected)
