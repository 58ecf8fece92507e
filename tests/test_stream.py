"""The message stream: the connection as a trio Channel, messages in pieces both ways,
``wait_closed()``, ``statistics()``, ``compress=`` and ``decode=``.

The sections follow the points of the feature:

1. ``WebSocketConnection`` is a ``trio.abc.Channel``: ``receive()`` ends the
   channel (``EndOfChannel``) after a normal close only; tested as Trio code
   uses channels, with a pump that knows nothing of WebSockets.
2. Streaming: ``receive_fragments()`` gives a message piece by piece, and
   ``send_message()`` sends one from an iterable or an async iterable, piece
   by piece (the frames checked on the wire by a hand-made peer).
3. ``wait_closed()``.
4. ``statistics()``.
5. ``compress=False`` and ``decode=False``.

Then the properties (hypothesis: random messages cut into random pieces,
through ``websocket_pair()`` and over loopback sockets) and the push-back of
a slow consumer.  The cancellation of each new operation at each of its
checkpoints is in test_cancel_points.py.

Every rule is tested in both roles: ``role`` is that of the connection under
test (``"client"`` or ``"server"``), its peer being trio_ws's other side
(``websocket_pair()``) or a hand-made peer that shows every bit of every
frame (``raw_peer()``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionState,
    ConnectionStatistics,
    MessageFragments,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
    wrap_client_stream,
    wrap_server_stream,
)
from trio_ws.testing import websocket_pair

from .conftest import HOST, UPGRADE_REQUEST, RawClient, RawServerPeer, close_payload

T = TypeVar("T")
ROLES = ["client", "server"]
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
RSV1 = 0b100  # Frame.rsv of a frame with RSV1 set
TAIL = b"\x00\x00\xff\xff"  # what permessage-deflate strips from each message (RFC 7692 7.2.1)
PIECES_FAILED = "a message sent in pieces could not be finished"


# --- a hand-made peer, to see every bit of every frame -------------------------------------


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR ``key`` repeated (fast enough for megabytes, and none of trio_ws's code)."""
    n = len(payload)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def make_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, bit | n)
    elif n < 2**16:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not masked:
        return head + payload
    key = b"\x37\xfa\x21\x3d"
    return head + key + mask(payload, key)


@dataclasses.dataclass(frozen=True)
class Frame:
    fin: bool
    rsv: int  # RSV1..RSV3 as 3 bits: 0b100 is RSV1
    opcode: int
    payload: bytes
    masked: bool


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes that go each way (the peer's view of the wire)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.sent = 0
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


class Peer:
    """The other end of the connection under test, speaking WebSocket by hand.

    ``client`` is the peer's role: a client masks what it sends, and a
    server's frames to it must not be masked.
    """

    def __init__(self, raw: RawClient, stream: CountingStream, *, client: bool) -> None:
        self.raw = raw
        self.stream = stream
        self.client = client
        self.inflater = zlib.decompressobj(-15)  # for compressed messages, context kept across them

    async def send(self, opcode: int, payload: bytes | str = b"", *, fin: bool = True, rsv: int = 0) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        await self.stream.send_all(make_frame(opcode, data, fin=fin, rsv=rsv, masked=self.client))

    async def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        await self.send(CLOSE, b"" if code is None else close_payload(code, reason))

    async def frame(self) -> Frame:
        """The next frame from the connection under test (its mask checked and removed)."""
        raw = self.raw
        while True:
            buffer = raw.buffer
            if len(buffer) >= 2:
                n, offset = buffer[1] & 0x7F, 2
                if n == 126 and len(buffer) >= 4:
                    (n,) = struct.unpack("!H", buffer[2:4])
                    offset = 4
                elif n == 127 and len(buffer) >= 10:
                    (n,) = struct.unpack("!Q", buffer[2:10])
                    offset = 10
                masked = bool(buffer[1] & 0x80)
                end = offset + (4 if masked else 0) + n
                if (n < 126 or offset > 2) and len(buffer) >= end:  # (the length known, the frame here)
                    payload = buffer[end - n : end]
                    if masked:
                        payload = mask(payload, buffer[offset : offset + 4])
                    raw.buffer = buffer[end:]
                    assert masked == (not self.client), "a client masks its frames, a server does not"
                    return Frame(bool(buffer[0] & 0x80), (buffer[0] >> 4) & 7, buffer[0] & 0x0F, payload, masked)
            data = await self.stream.receive_some(2**20)
            if not data:
                raise EOFError(f"EOF while waiting for a frame (buffered: {raw.buffer[:50]!r})")
            raw.buffer += data

    async def frames(self, count: int) -> list[Frame]:
        return [await self.frame() for _ in range(count)]

    async def nothing_more(self, seconds: float = 1.0) -> None:
        """No frame comes within ``seconds`` (use with autojump_clock: costs no time)."""
        with trio.move_on_after(seconds):
            got = await self.frame()
            raise AssertionError(f"a frame came: {got}")

    def inflate(self, payload: bytes) -> bytes:
        return self.inflater.decompress(payload + TAIL)


DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"


@asynccontextmanager
async def raw_peer(
    role: str, *, deflate: bool = False, lockstep: bool = False, **options: Any
) -> AsyncIterator[tuple[WebSocketConnection, Peer]]:
    """The connection under test, in ``role`` (opened with wrap_client_stream or
    wrap_server_stream and ``options``), and a hand-made peer, over memory streams
    (``lockstep``: ``trio.testing.lockstep_stream_pair``, where a write waits for the
    read).  On exit the peer drops the connection, which ends it (1006, unless it ended
    before)."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    ws_stream, peer_side = pair()
    peer_stream = CountingStream(peer_side)
    raw = RawClient(peer_stream) if role == "server" else RawServerPeer(peer_stream)
    compression = "deflate" if deflate else None
    async with trio.open_nursery() as nursery:
        if role == "server":
            request = UPGRADE_REQUEST
            if deflate:
                request = request[:-2] + DEFLATE_OFFER + b"\r\n"
            nursery.start_soon(raw.stream.send_all, request)
            accepted = await wrap_server_stream(nursery, ws_stream, compression=compression, **options)
            send_ws, receive_ws = trio.open_memory_channel[WebSocketConnection](1)

            async def accept() -> None:
                await send_ws.send(await accepted.accept())

            nursery.start_soon(accept)
            response = await raw.receive_until(b"\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 101 ")
            assert (b"permessage-deflate" in response) == deflate
            ws = await receive_ws.receive()
        else:
            assert isinstance(raw, RawServerPeer)
            nursery.start_soon(raw.accept, DEFLATE_OFFER if deflate else b"")
            ws = await wrap_client_stream(nursery, ws_stream, HOST, "/", compression=compression, **options)
        assert ws.extensions.startswith("permessage-deflate") == deflate
        try:
            yield ws, Peer(raw, peer_stream, client=role == "server")
        finally:
            await trio.aclose_forcefully(peer_stream)
            nursery.cancel_scope.cancel()  # the reader, if it still runs: the connection aborts


@asynccontextmanager
async def pair(role: str, **options: Any) -> AsyncIterator[tuple[WebSocketConnection, WebSocketConnection]]:
    """``websocket_pair()``, as (the connection in ``role``, its peer)."""
    async with websocket_pair(**options) as (client, server):
        yield (client, server) if role == "client" else (server, client)


async def pump(source: trio.abc.ReceiveChannel[T], sink: trio.abc.SendChannel[T]) -> int:
    """Send into ``sink`` everything ``source`` gives, until it ends; return how many.

    Any channels: this knows nothing of WebSockets.
    """
    count = 0
    async for item in source:
        await sink.send(item)
        count += 1
    return count


# === 1. The connection is a trio Channel ===================================================


async def test_a_connection_is_a_trio_channel() -> None:
    async with websocket_pair() as (client, server):
        for ws in (client, server):
            assert isinstance(ws, trio.abc.Channel)
            assert isinstance(ws, trio.abc.ReceiveChannel)
            assert isinstance(ws, trio.abc.SendChannel)


# What the peer does after sending two messages, and how the connection under test ends.
NORMAL_ENDINGS = {
    "close 1000": (1000, "done"),
    "close 1001": (1001, "going away"),
    "close without a code": (None, ""),
}


@pytest.mark.parametrize("ending", list(NORMAL_ENDINGS))
@pytest.mark.parametrize("role", ROLES)
async def test_receive_ends_the_channel_after_the_peer_closes_normally(role: str, ending: str) -> None:
    """Every message before the peer's Close is received, then EndOfChannel (again and again),
    by receive() and by ``async for``; get_message() keeps raising ConnectionClosed, with the code."""
    code, reason = NORMAL_ENDINGS[ending]
    for consumer in ("receive", "async for"):
        async with raw_peer(role) as (ws, peer):
            await peer.send(TEXT, "one")
            await peer.send(BINARY, b"two")
            await peer.send_close(code, reason)
            got: list[str | bytes] = []
            if consumer == "receive":
                got.append(await ws.receive())
                got.append(await ws.receive())
                with pytest.raises(trio.EndOfChannel):
                    await ws.receive()
            else:
                async for message in ws:
                    got.append(message)
            assert got == ["one", b"two"]
            with pytest.raises(trio.EndOfChannel):
                await ws.receive()  # and again
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == (1005 if code is None else code)
            # The connection answered the Close with the same code (none for none).
            answer = await peer.frame()
            assert (answer.opcode, answer.payload) == (CLOSE, b"" if code is None else close_payload(code, reason))


@pytest.mark.parametrize("code", [1000, 1001])
@pytest.mark.parametrize("role", ROLES)
async def test_receive_ends_the_channel_after_we_close_normally(role: str, code: int) -> None:
    """Either side may start a normal close: a receive() waiting meanwhile, and every later
    one, get EndOfChannel; the peer's ``async for`` gets what was sent before and ends quietly."""
    async with pair(role) as (ws, peer), trio.open_nursery() as nursery:
        outcomes: list[BaseException] = []

        async def waiting_receive() -> None:
            with pytest.raises(trio.EndOfChannel) as ended:
                await ws.receive()
            outcomes.append(ended.value)

        nursery.start_soon(waiting_receive)
        peer_got: list[str | bytes] = []

        async def peer_loop() -> None:
            async for message in peer:
                peer_got.append(message)

        nursery.start_soon(peer_loop)
        await ws.send("before")
        await ws.send(b"the close")
        await trio.testing.wait_all_tasks_blocked()
        await ws.aclose(code)
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcomes) == 1
        with pytest.raises(trio.EndOfChannel):
            await ws.receive()
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        assert peer_got == ["before", b"the close"]
        assert nursery.child_tasks == frozenset()  # the peer's loop ended quietly


OTHER_ENDINGS = ["close 1011", "close 4000", "close 1002", "protocol error", "invalid UTF-8", "too big", "EOF"]


async def end_connection(peer: Peer, ending: str) -> int:
    """Make the peer end the connection ``ending``'s way; the code the connection ends with."""
    if ending.startswith("close"):
        code = int(ending.split()[1])
        await peer.send_close(code, "bye")
        return code
    if ending == "protocol error":
        await peer.send(0x3, b"reserved opcode")
        return 1002
    if ending == "invalid UTF-8":
        await peer.send(TEXT, b"\xc3\x28")
        return 1007
    if ending == "too big":
        await peer.send(BINARY, b"x" * 101)  # the connection's max_message_size is 100
        return 1009
    assert ending == "EOF"
    await peer.stream.aclose()
    return 1006


@pytest.mark.parametrize("ending", OTHER_ENDINGS)
@pytest.mark.parametrize("role", ROLES)
async def test_other_endings_raise_connection_closed(role: str, ending: str) -> None:
    """The messages before the end are received, then ConnectionClosed with the reason, for
    receive(), ``async for`` and get_message() alike."""
    for consumer in ("receive", "async for", "get_message"):
        async with raw_peer(role, max_message_size=100) as (ws, peer):
            await peer.send(TEXT, "one")
            await peer.send(BINARY, b"two")
            code = await end_connection(peer, ending)
            got: list[str | bytes] = []
            with pytest.raises(ConnectionClosed) as closed:
                if consumer == "async for":
                    async for message in ws:
                        got.append(message)
                else:
                    receive = ws.receive if consumer == "receive" else ws.get_message
                    while True:
                        got.append(await receive())
            assert got == ["one", b"two"]
            assert closed.value.reason.code == code
            for receive in (ws.receive, ws.get_message):
                with pytest.raises(ConnectionClosed) as again:
                    await receive()
                assert again.value.reason.code == code
            if ending != "EOF":  # we told the peer why (a Close frame with the code)
                answer = await peer.frame()
                assert (answer.opcode, answer.payload[:2]) == (CLOSE, struct.pack("!H", code))


@pytest.mark.parametrize("code", [1011, 4000, 1008])
@pytest.mark.parametrize("role", ROLES)
async def test_we_close_with_another_code_and_both_channels_raise_connection_closed(role: str, code: int) -> None:
    async with pair(role) as (ws, peer):
        await ws.send("before")
        await ws.aclose(code, "why")
        with pytest.raises(ConnectionClosed) as ours:
            await ws.receive()
        assert ours.value.reason.code == code
        got: list[str | bytes] = []
        with pytest.raises(ConnectionClosed) as theirs:
            async for message in peer:
                got.append(message)
        assert got == ["before"]
        assert (theirs.value.reason.code, theirs.value.reason.reason) == (code, "why")


@pytest.mark.parametrize("role", ROLES)
async def test_send_is_send_message(role: str) -> None:
    async with pair(role) as (ws, peer):
        await ws.send("text")
        await ws.send(b"binary")
        assert await peer.get_message() == "text"
        assert await peer.get_message() == b"binary"
        assert ws.statistics().messages_sent == 2
        await peer.aclose()
        with pytest.raises(ConnectionClosed):
            await ws.send("after the close")


@pytest.mark.parametrize("role", ROLES)
async def test_send_is_a_checkpoint(role: str) -> None:
    """Even when the transport takes the frame at once."""
    async with pair(role) as (ws, peer):
        for message in ("text", b"binary", ["in ", "pieces"]):
            with trio.testing.assert_checkpoints():
                await ws.send(message)  # type: ignore[arg-type]
        assert [await peer.receive() for _ in range(3)] == ["text", b"binary", "in pieces"]


@pytest.mark.parametrize("role", ROLES)
async def test_receive_is_a_checkpoint_once_the_channel_has_ended(role: str) -> None:
    async with pair(role) as (ws, peer):
        await peer.aclose()
        for _ in range(2):
            with trio.testing.assert_checkpoints(), pytest.raises(trio.EndOfChannel):
                await ws.receive()


@pytest.mark.parametrize("role", ROLES)
async def test_receive_is_a_checkpoint_with_a_message_waiting(role: str) -> None:
    async with pair(role, message_queue_size=4) as (ws, peer):
        await peer.send("waiting")
        await trio.testing.wait_all_tasks_blocked()
        assert ws.statistics().messages_waiting == 1
        with trio.testing.assert_checkpoints():
            assert await ws.receive() == "waiting"


@pytest.mark.parametrize("role", ROLES)
async def test_a_cancelled_receive_loses_no_message(role: str, autojump_clock: trio.testing.MockClock) -> None:
    async with pair(role) as (ws, peer):
        # Cancelled while waiting; the message comes later.
        with trio.move_on_after(1) as waited:
            await ws.receive()
        assert waited.cancelled_caught
        await peer.send("first")
        await trio.testing.wait_all_tasks_blocked()
        # Cancelled with the message there already: it stays there.
        with trio.CancelScope() as scope:
            scope.cancel()
            await ws.receive()
        assert scope.cancelled_caught
        assert ws.statistics().messages_waiting == 1
        assert await ws.receive() == "first"


@pytest.mark.parametrize("role", ROLES)
async def test_a_pipeline_of_channels(role: str) -> None:
    """memory channel -> the connection -> its peer (echoing) -> the connection -> memory
    channel, every stage run by the same pump, as any Trio code would join channels."""
    messages: list[str | bytes] = [
        *(f"message {i}" for i in range(100)),
        b"",
        "",
        "\u00e9\U0001f600" * 5000,
        bytes(range(256)) * 1000,
        *(bytes([i]) * i for i in range(100)),
    ]
    async with pair(role, message_queue_size=2) as (near, far), trio.open_nursery() as nursery:
        counts: dict[str, int] = {}

        async def run(name: str, stage: Awaitable[int]) -> None:
            counts[name] = await stage

        send_in, receive_in = trio.open_memory_channel[str | bytes](0)
        send_out, receive_out = trio.open_memory_channel[str | bytes](0)

        async def out() -> None:
            async with send_out:
                await run("out", pump(near, send_out))

        nursery.start_soon(run, "echo", pump(far, far))
        nursery.start_soon(run, "in", pump(receive_in, near))
        nursery.start_soon(out)
        async with send_in:
            for message in messages:
                await send_in.send(message)
        got = [await receive_out.receive() for _ in messages]
        assert got == messages
        assert counts == {"in": len(messages)}
        # The end goes down the pipe: the near end closes normally, and every pump
        # ends quietly (EndOfChannel), the last one closing the output channel.
        await near.aclose()
        assert [message async for message in receive_out] == []
    assert counts == {"in": len(messages), "echo": len(messages), "out": len(messages)}


# === 2. Streaming: receive_fragments() ====================================================


async def next_piece(fragments: MessageFragments) -> str | bytes:
    return await fragments.__anext__()


def join(pieces: Iterable[str | bytes]) -> str | bytes:
    """The message the pieces make (all str, or all bytes)."""
    pieces = list(pieces)
    if all(isinstance(piece, str) for piece in pieces):
        return "".join(pieces)  # type: ignore[arg-type]
    assert all(isinstance(piece, bytes) for piece in pieces), pieces
    return b"".join(pieces)  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ROLES)
async def test_fragments_of_a_text_message_as_they_arrive(role: str) -> None:
    """str pieces, decoded across piece boundaries (a character cut in two comes whole in
    the next piece); ``text`` says so from the first piece on."""
    async with raw_peer(role) as (ws, peer):
        fragments = ws.receive_fragments()
        assert fragments.text is None
        await peer.send(TEXT, b"h\xc3", fin=False)  # "h" and half of "\u00e9"
        assert await next_piece(fragments) == "h"
        assert fragments.text is True
        await peer.send(CONTINUATION, b"\xa9llo \xe2\x82", fin=False)
        assert await next_piece(fragments) == "\u00e9llo "
        await peer.send(CONTINUATION, b"\xac", fin=False)
        assert await next_piece(fragments) == "\u20ac"
        await peer.send(CONTINUATION, "w\u00f6rld")
        assert await next_piece(fragments) == "w\u00f6rld"
        assert [piece async for piece in fragments] == []
        # The connection goes on, whole messages and all.
        await peer.send(TEXT, "next")
        assert await ws.get_message() == "next"
        assert ws.statistics().messages_received == 2


@pytest.mark.parametrize("role", ROLES)
async def test_fragments_of_a_binary_message_as_they_arrive(role: str) -> None:
    async with raw_peer(role) as (ws, peer):
        fragments = ws.receive_fragments()
        await peer.send(BINARY, b"ab", fin=False)
        assert await next_piece(fragments) == b"ab"
        assert fragments.text is False
        await peer.send(CONTINUATION, b"\xff\x00", fin=False)
        assert await next_piece(fragments) == b"\xff\x00"
        await peer.send(CONTINUATION, b"")
        assert await next_piece(fragments) == b""
        with pytest.raises(StopAsyncIteration):
            await next_piece(fragments)


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("role", ROLES)
async def test_a_frame_that_arrives_in_parts_comes_in_parts(role: str, kind: str) -> None:
    """Each piece is at most one read: one frame of 3 MiB, written 512 KiB at a time, comes
    in pieces of at most 512 KiB (max_size=None: more than max_message_size)."""
    part = 2**19
    payload = bytes(range(97, 123)) * (6 * part // 26) + b"abcd"
    opcode = TEXT if kind == "text" else BINARY
    data = make_frame(opcode, payload, masked=role == "server")
    async with raw_peer(role) as (ws, peer):
        fragments = ws.receive_fragments(max_size=None)
        pieces: list[str | bytes] = []
        sent = 0
        while sent < len(data):
            await peer.stream.send_all(data[sent : sent + part])
            sent += part
            await trio.testing.wait_all_tasks_blocked()  # the reader has taken all there is
            while ws.statistics().messages_waiting:
                pieces.append(await next_piece(fragments))
                await trio.testing.wait_all_tasks_blocked()
        assert [piece async for piece in fragments] == []
        assert max(len(piece) for piece in pieces) <= part
        assert len(pieces) >= len(payload) // part
        expected = payload.decode() if kind == "text" else payload
        assert all(isinstance(piece, type(expected)) for piece in pieces)
        assert join(pieces) == expected


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("role", ROLES)
async def test_compressed_pieces_inflate_in_steps_of_64_kib(role: str, kind: str) -> None:
    """4 MiB that deflate to one small frame come in pieces of at most 64 KiB."""
    message: str | bytes = "z" * 2**22 if kind == "text" else bytes(2**22)
    async with pair(role, compression="deflate") as (ws, peer), trio.open_nursery() as nursery:
        nursery.start_soon(peer.send_message, message)
        fragments = ws.receive_fragments(max_size=None)
        pieces = [piece async for piece in fragments]
        assert fragments.text is (kind == "text")
        assert max(len(piece) for piece in pieces) <= 2**16
        assert len(pieces) >= 2**22 // 2**16
        assert join(pieces) == message
        assert peer.statistics().bytes_sent < 2**16  # it did go compressed


@pytest.mark.deadline(60)
async def test_a_huge_message_streams_in_bounded_memory(nursery: trio.Nursery) -> None:
    """64 MiB over loopback, sent from a generator and received piece by piece, with
    max_message_size at 1 MiB (max_size=None): the Python heap never holds more than a few MiB."""
    size, piece_size = 2**26, 2**18

    def generate() -> Iterable[bytes]:
        for i in range(size // piece_size):
            yield bytes([i % 256]) * piece_size

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(generate())
        await ws.wait_closed()

    server = await nursery.start(partial(serve_websocket, handler, HOST, 0, None))
    tracemalloc.start()
    try:
        async with open_websocket_url(f"ws://{HOST}:{server.port}/") as ws:
            total = largest = count = 0
            async for piece in ws.receive_fragments(max_size=None):
                assert isinstance(piece, bytes)
                if piece:  # (the last is empty: the message's empty final frame)
                    assert piece[0] == (total // piece_size) % 256  # in order, nothing lost
                    assert piece[-1] == ((total + len(piece) - 1) // piece_size) % 256
                total += len(piece)
                largest = max(largest, len(piece))
                count += 1
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert count >= size // 2**20
    assert largest <= 2**20  # one read at most
    print(f"peak: {peak / 2**20:.1f} MiB in {count} pieces")
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB of Python heap for a 64 MiB message"


async def assert_closed_with(ws: WebSocketConnection, peer: Peer, code: int) -> None:
    """The connection sent a Close with ``code``, and ends with it once the peer answers."""
    answer = await peer.frame()
    assert (answer.opcode, answer.payload[:2]) == (CLOSE, struct.pack("!H", code)), answer
    await peer.send_close(code)
    if peer.client:
        assert await peer.raw.receive_eof() == b""  # the server's end of TCP
    await peer.stream.aclose()  # (a server closes TCP first; a client after the server)
    reason = await ws.wait_closed()
    assert reason.code == code


@pytest.mark.parametrize("bound", ["max_size", "max_message_size"])
@pytest.mark.parametrize("role", ROLES)
async def test_max_size_bounds_the_whole_message(role: str, bound: str) -> None:
    """Pieces come until the message passes the bound (max_size, or by default the
    connection's max_message_size; text in characters); then 1009, and the iteration
    raises ConnectionClosed."""
    options = {"max_message_size": 10} if bound == "max_message_size" else {}
    async with raw_peer(role, **options) as (ws, peer):
        fragments = ws.receive_fragments(max_size=10) if bound == "max_size" else ws.receive_fragments()
        await peer.send(TEXT, "\u00e9" * 6, fin=False)  # 6 characters, 12 bytes
        assert await next_piece(fragments) == "\u00e9" * 6
        await peer.send(CONTINUATION, "1234", fin=False)  # 10 characters: not too big
        assert await next_piece(fragments) == "1234"
        await peer.send(CONTINUATION, "5", fin=False)
        with pytest.raises(ConnectionClosed) as closed:
            await next_piece(fragments)
        assert closed.value.reason.code == 1009
        await assert_closed_with(ws, peer, 1009)


@pytest.mark.parametrize("role", ROLES)
async def test_max_size_none_lifts_the_bound(role: str) -> None:
    async with raw_peer(role, max_message_size=10) as (ws, peer):
        fragments = ws.receive_fragments(max_size=None)  # (before the message begins to arrive)
        for i in range(10):
            await peer.send(CONTINUATION if i else BINARY, b"x" * 10, fin=i == 9)
        assert join([piece async for piece in fragments]) == b"x" * 100
        # A bound of its own, above the connection's.
        fragments = ws.receive_fragments(max_size=50)
        await peer.send(TEXT, "y" * 50)
        assert join([piece async for piece in fragments]) == "y" * 50
        # The connection's own bound still holds for whole messages.
        await peer.send(BINARY, b"z" * 11)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1009


@pytest.mark.parametrize("role", ROLES)
async def test_max_size_bounds_a_message_that_had_begun_arriving(role: str) -> None:
    async with raw_peer(role) as (ws, peer):
        await peer.send(BINARY, b"x" * 30, fin=False)
        await peer.send(CONTINUATION, b"x" * 30, fin=False)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ConnectionClosed) as closed:
            async for _ in ws.receive_fragments(max_size=50):
                pytest.fail("a piece of a message over the bound")
        assert closed.value.reason.code == 1009
        assert ws.closed is not None
        assert ws.closed.code == 1009


@pytest.mark.parametrize("role", ROLES)
async def test_max_size_over_a_message_that_had_begun_arriving_sends_the_close(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_peer(role) as (ws, peer):
        await peer.send(BINARY, b"x" * 30, fin=False)
        await peer.send(CONTINUATION, b"x" * 30, fin=False)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ConnectionClosed):
            await next_piece(ws.receive_fragments(max_size=50))
        with trio.fail_after(1):
            await assert_closed_with(ws, peer, 1009)
        assert ws.closed is not None
        assert ws.closed.was_clean


@pytest.mark.parametrize("role", ROLES)
async def test_max_size_bounds_a_message_already_complete_in_the_inbox(role: str) -> None:
    async with pair(role) as (ws, peer):
        await peer.send_message("x" * 100)
        await trio.testing.wait_all_tasks_blocked()
        assert ws.statistics().messages_waiting == 1
        with pytest.raises(ConnectionClosed) as closed:
            async for piece in ws.receive_fragments(max_size=10):
                pytest.fail(f"a piece of {len(piece)} characters, max_size=10")
        assert closed.value.reason.code == 1009


@pytest.mark.parametrize("role", ROLES)
async def test_leaving_the_loop_early_drops_the_rest_at_the_next_receive(role: str) -> None:
    """The next get_message(), receive() or ``async for`` starts with the next message, and
    the connection goes on."""
    for then in ("get_message", "receive", "async for"):
        async with raw_peer(role) as (ws, peer):
            await peer.send(TEXT, "first ", fin=False)
            async for piece in ws.receive_fragments():
                assert piece == "first "
                break
            for i in range(5):
                await peer.send(CONTINUATION, f"dropped {i} ", fin=False)
            await peer.send(CONTINUATION, "dropped end")
            await peer.send(BINARY, b"next")
            if then == "async for":
                await peer.send_close(1000)
                assert [message async for message in ws] == [b"next"]
            else:
                receive = ws.get_message if then == "get_message" else ws.receive
                assert await receive() == b"next"
                await peer.send(TEXT, "and on")
                assert await receive() == "and on"
                assert ws.state is ConnectionState.OPEN


@pytest.mark.parametrize("leave", ["break", "aclose"])
@pytest.mark.parametrize("role", ROLES)
async def test_a_new_receive_fragments_after_leaving_early_starts_at_the_next_message(role: str, leave: str) -> None:
    async with raw_peer(role) as (ws, peer):
        await peer.send(TEXT, "first ", fin=False)
        fragments = ws.receive_fragments()
        assert await next_piece(fragments) == "first "
        if leave == "aclose":
            await fragments.aclose()
        fragments = ws.receive_fragments()  # the next message, in pieces
        await peer.send(CONTINUATION, "dropped ", fin=False)
        await peer.send(CONTINUATION, "dropped end")
        await peer.send(BINARY, b"next")
        assert [piece async for piece in fragments] == [b"next"]


@pytest.mark.parametrize("role", ROLES)
async def test_aclose_on_the_fragments_drops_the_rest_at_once(role: str) -> None:
    """Left with ``aclose()``, the rest of the message is dropped as it arrives, without
    waiting for a receive call: it does not fill the inbox (``break`` alone lets the pieces
    wait, message_queue_size + 1 of them, and the reader pause)."""
    async with raw_peer(role, message_queue_size=1) as (ws, peer):
        for leave in ("break", "aclose"):
            await peer.send(BINARY, b"first", fin=False)
            fragments = ws.receive_fragments()
            assert await next_piece(fragments) == b"first"
            if leave == "aclose":
                await fragments.aclose()
            for i in range(10):
                await peer.send(CONTINUATION, b"%d" % i, fin=False)
            await peer.send(CONTINUATION, b"end")
            await peer.send(TEXT, "next")
            await trio.testing.wait_all_tasks_blocked()
            waiting = ws.statistics().messages_waiting
            if leave == "aclose":
                assert waiting == 1  # "next" only
                assert [piece async for piece in fragments] == []  # the iterator has ended
            else:
                assert waiting == 2  # pieces of the abandoned message; the reader paused
            assert await ws.get_message() == "next"


@pytest.mark.parametrize("role", ROLES)
async def test_a_message_that_had_begun_arriving_gives_what_came_as_its_first_piece(role: str) -> None:
    for kind, decode in [("text", True), ("text", False), ("binary", True), ("binary", False)]:
        opcode = TEXT if kind == "text" else BINARY

        def expect(text: str, kind: str = kind, decode: bool = decode) -> str | bytes:
            return text if kind == "text" and decode else text.encode()

        async with raw_peer(role) as (ws, peer):
            await peer.send(opcode, "ab", fin=False)
            await peer.send(CONTINUATION, "c\u00e9", fin=False)
            await trio.testing.wait_all_tasks_blocked()
            assert ws.statistics().messages_waiting == 0  # nothing to take yet: under way
            fragments = ws.receive_fragments(decode=decode)
            assert await next_piece(fragments) == expect("abc\u00e9")
            assert fragments.text is (kind == "text")
            await peer.send(CONTINUATION, "de", fin=False)
            assert await next_piece(fragments) == expect("de")
            await peer.send(CONTINUATION, "f")
            assert [piece async for piece in fragments] == [expect("f")]


@pytest.mark.parametrize("role", ROLES)
async def test_undecoded_pieces_of_a_message_begun_inside_a_character_lose_no_byte(role: str) -> None:
    async with raw_peer(role) as (ws, peer):
        await peer.send(TEXT, b"ab\xc3", fin=False)  # "ab" and half of "\u00e9"
        await trio.testing.wait_all_tasks_blocked()
        fragments = ws.receive_fragments(decode=False)
        await peer.send(CONTINUATION, b"\xa9")
        assert join([piece async for piece in fragments]) == "ab\u00e9".encode()


@pytest.mark.parametrize("role", ROLES)
async def test_a_message_complete_in_the_inbox_comes_as_one_piece(role: str) -> None:
    for kind, decode in [("text", True), ("text", False), ("binary", True), ("binary", False)]:
        async with raw_peer(role) as (ws, peer):
            await peer.send(TEXT if kind == "text" else BINARY, "one ", fin=False)
            await peer.send(CONTINUATION, "t\u00e9o ", fin=False)
            await peer.send(CONTINUATION, "three")
            await trio.testing.wait_all_tasks_blocked()
            assert ws.statistics().messages_waiting == 1
            fragments = ws.receive_fragments(decode=decode)
            whole = "one t\u00e9o three"
            assert [piece async for piece in fragments] == [whole if kind == "text" and decode else whole.encode()]
            assert fragments.text is (kind == "text")


@pytest.mark.parametrize("role", ROLES)
async def test_invalid_utf8_across_pieces_fails_with_1007(role: str) -> None:
    """The piece with the invalid byte never reaches the application, nor anything after it."""
    for decode in (True, False):
        async with raw_peer(role) as (ws, peer):
            fragments = ws.receive_fragments(decode=decode)
            await peer.send(TEXT, b"ok \xe2\x82", fin=False)  # a valid start of "\u20ac" ...
            assert await next_piece(fragments) == ("ok " if decode else b"ok \xe2\x82")
            await peer.send(CONTINUATION, b"\x28 and more", fin=False)  # ... that does not go on
            with pytest.raises(ConnectionClosed) as closed:
                await next_piece(fragments)
            assert closed.value.reason.code == 1007
            await assert_closed_with(ws, peer, 1007)


# === 2. Streaming: send_message() from an iterable or an async iterable ======================


def sources(pieces: list[Any]) -> dict[str, Callable[[], Any]]:
    """The same pieces as a list, a generator and an async generator (with a checkpoint before each)."""

    async def agen() -> AsyncIterator[Any]:
        for piece in pieces:
            await trio.lowlevel.checkpoint()
            yield piece

    return {"list": lambda: list(pieces), "generator": lambda: iter(pieces), "async generator": agen}


def opcode_and_payload(frame: Frame) -> tuple[int, bytes]:
    return frame.opcode, frame.payload


def fragments_of(frames: list[Frame], *, opcode: int, client: bool, compressed: bool = False) -> list[bytes]:
    """The payloads of one fragmented message's frames: the first carries ``opcode``, the
    others are continuations, only the last has FIN, and it is empty (but for the end of
    the compressed data); masked iff sent by a client."""
    assert frames[0].opcode == opcode
    assert all(f.opcode == CONTINUATION for f in frames[1:])
    assert [f.fin for f in frames] == [False] * (len(frames) - 1) + [True]
    if not compressed:
        assert frames[-1].payload == b""
    assert all(f.masked == client for f in frames)
    return [f.payload for f in frames[:-1]]


TEXT_PIECES = ["ab", "", "c\u00e9\u20ac", "\U0001f600"]
BINARY_PIECES = [b"ab", bytearray(b""), memoryview(b"\x00\xff"), b"z" * 70_000]


@pytest.mark.parametrize("role", ROLES)
async def test_a_message_from_an_iterable_is_one_fragmented_message(role: str) -> None:
    """One frame per piece (none final), then an empty final frame; from a list, a generator
    or an async generator; str pieces make a text message, bytes-like ones a binary message."""
    async with raw_peer(role) as (ws, peer):
        sent = 0
        for pieces in (TEXT_PIECES, BINARY_PIECES):
            kind = TEXT if isinstance(pieces[0], str) else BINARY
            for make in sources(pieces).values():
                await ws.send_message(make())
                sent += 1
                frames = await peer.frames(len(pieces) + 1)
                payloads = fragments_of(frames, opcode=kind, client=role == "client")
                assert payloads == [piece.encode() if kind == TEXT else bytes(piece) for piece in pieces]
                assert all(f.rsv == 0 for f in frames)
                assert ws.statistics().messages_sent == sent
                await ws.send_message("after")  # the next message is a message of its own
                assert await peer.frame() == Frame(True, 0, TEXT, b"after", role == "client")
                sent += 1


@pytest.mark.parametrize("role", ROLES)
async def test_the_pieces_arrive_whole_through_trio_ws(role: str) -> None:
    async with pair(role) as (ws, peer):
        for pieces in (TEXT_PIECES, BINARY_PIECES):
            for make in sources(pieces).values():
                await ws.send_message(make())
                assert await peer.get_message() == join([p if isinstance(p, str) else bytes(p) for p in pieces])


@pytest.mark.parametrize("role", ROLES)
async def test_an_empty_iterable_sends_an_empty_binary_message(role: str) -> None:
    async with raw_peer(role) as (ws, peer):
        for make in sources([]).values():
            await ws.send_message(make())
            assert await peer.frame() == Frame(True, 0, BINARY, b"", role == "client")
        await ws.send_message("after")
        assert (await peer.frame()).payload == b"after"


class Gate:
    """An async iterator of pieces that waits, before each piece after the first, until let through.

    (Not an async generator: one left unfinished would be finalized by the garbage collector,
    with a ResourceWarning; see test_an_async_iterator_left_unfinished_is_closed.)
    """

    def __init__(self, pieces: list[Any]) -> None:
        self.pieces = pieces
        self.send, self.receive = trio.open_memory_channel[None](math.inf)
        self.given = 0

    def open(self) -> None:
        self.send.send_nowait(None)

    def __aiter__(self) -> Gate:
        return self

    async def __anext__(self) -> Any:
        if self.given == len(self.pieces):
            raise StopAsyncIteration
        if self.given:
            await self.receive.receive()
        self.given += 1
        return self.pieces[self.given - 1]


@pytest.mark.parametrize("role", ROLES)
async def test_pieces_go_out_as_they_come(role: str, autojump_clock: trio.testing.MockClock) -> None:
    async with raw_peer(role) as (ws, peer), trio.open_nursery() as nursery:
        gate = Gate(["one", "two", "three"])
        nursery.start_soon(ws.send_message, gate)
        assert await peer.frame() == Frame(False, 0, TEXT, b"one", role == "client")
        await peer.nothing_more()
        assert ws.statistics().messages_sent == 0
        for piece in (b"two", b"three"):
            gate.open()
            assert await peer.frame() == Frame(False, 0, CONTINUATION, piece, role == "client")
        assert await peer.frame() == Frame(True, 0, CONTINUATION, b"", role == "client")
        await trio.testing.wait_all_tasks_blocked()
        assert ws.statistics().messages_sent == 1


@pytest.mark.parametrize("role", ROLES)
async def test_control_frames_may_go_between_the_frames_of_a_message(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Our ping, and the Pong to the peer's Ping, go out while the message waits for its next piece."""
    async with raw_peer(role) as (ws, peer), trio.open_nursery() as nursery:
        gate = Gate([b"one", b"two"])
        nursery.start_soon(ws.send_message, gate)
        assert (await peer.frame()).payload == b"one"
        pinged = trio.Event()

        async def ping() -> None:
            await ws.ping(b"ours")
            pinged.set()

        nursery.start_soon(ping)
        assert opcode_and_payload(await peer.frame()) == (PING, b"ours")
        await peer.send(PONG, b"ours")
        await pinged.wait()
        await peer.send(PING, b"theirs")
        assert opcode_and_payload(await peer.frame()) == (PONG, b"theirs")
        gate.open()
        frames = await peer.frames(2)
        assert [(f.opcode, f.payload, f.fin) for f in frames] == [
            (CONTINUATION, b"two", False),
            (CONTINUATION, b"", True),
        ]


@pytest.mark.parametrize("role", ROLES)
async def test_other_messages_wait_until_a_message_in_pieces_is_finished(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_peer(role) as (ws, peer), trio.open_nursery() as nursery:
        gate = Gate(["one", "two"])
        nursery.start_soon(ws.send_message, gate)
        assert (await peer.frame()).payload == b"one"
        nursery.start_soon(ws.send_message, b"whole")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ws.send_message, ["other ", "pieces"])
        await peer.nothing_more()
        assert ws.statistics().buffered_amount == len(b"whole")  # handed over, not written
        gate.open()
        frames = await peer.frames(2 + 1 + 3)
        assert [(f.fin, f.opcode, f.payload) for f in frames] == [
            (False, CONTINUATION, b"two"),
            (True, CONTINUATION, b""),
            (True, BINARY, b"whole"),
            (False, TEXT, b"other "),
            (False, CONTINUATION, b"pieces"),
            (True, CONTINUATION, b""),
        ]
        await trio.testing.wait_all_tasks_blocked()
        assert ws.statistics().messages_sent == 3
        assert ws.statistics().buffered_amount == 0


@pytest.mark.parametrize("role", ROLES)
async def test_a_close_may_go_between_the_frames_of_a_message(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Ours, or our answer to the peer's.  The message is then never finished: its send
    raises ConnectionClosed (with the closing handshake's code, not 1011: the Close went out)."""
    for who in ("we", "the peer"):
        async with raw_peer(role) as (ws, peer), trio.open_nursery() as nursery:
            gate = Gate([b"one", b"two"])
            failed: list[ConnectionClosed] = []

            async def send(gate: Gate = gate, failed: list[ConnectionClosed] = failed) -> None:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.send_message(gate)
                failed.append(closed.value)

            nursery.start_soon(send)
            assert (await peer.frame()).payload == b"one"
            code = 1000 if who == "we" else 1001
            if who == "we":
                nursery.start_soon(ws.aclose)
            else:
                await peer.send_close(code)
            assert opcode_and_payload(await peer.frame()) == (CLOSE, close_payload(code))
            if who == "we":
                await peer.send_close(code)
            if role == "client":
                await peer.stream.aclose()  # a server closes TCP after the closing handshake
            assert (await ws.wait_closed()).code == code
            gate.open()
            await trio.testing.wait_all_tasks_blocked()
            assert failed[0].reason.code == code
            if role == "server":
                assert await peer.raw.receive_eof() == b""  # nothing after the Close, then the server's EOF


@pytest.mark.parametrize("role", ROLES)
async def test_a_piece_of_another_type_after_frames_were_sent_closes_with_1011(role: str) -> None:
    for pieces in (["a", b"b"], [b"a", "b"], [b"a", bytearray(b"b"), 3]):
        async with raw_peer(role) as (ws, peer):
            with pytest.raises(TypeError):
                await ws.send_message(pieces)
            sent = await peer.frames(len(pieces) - 1)
            assert [f.fin for f in sent] == [False] * len(sent)
            assert ws.closed is not None
            assert (ws.closed.code, ws.closed.reason) == (1011, PIECES_FAILED)
            await assert_closed_with(ws, peer, 1011)
            with pytest.raises(ConnectionClosed):
                await ws.send_message("after")


@pytest.mark.parametrize("role", ROLES)
async def test_a_first_piece_of_no_message_type_raises_type_error_and_sends_nothing(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_peer(role) as (ws, peer):
        for pieces in ([3], [None, "a"], [["a"]], [{"a": 1}]):
            sent = ws.statistics().bytes_sent
            with pytest.raises(TypeError):
                await ws.send_message(pieces)
            assert ws.state is ConnectionState.OPEN
            assert ws.statistics().bytes_sent == sent
            await peer.nothing_more()
        await ws.send_message(["still ", "open"])
        assert [f.payload for f in await peer.frames(3)] == [b"still ", b"open", b""]


class Oops(Exception):
    pass


@pytest.mark.parametrize("role", ROLES)
async def test_an_iterable_that_raises_after_frames_were_sent_closes_with_1011(role: str) -> None:
    def pieces() -> Iterable[str]:
        yield "one"
        raise Oops

    async def async_pieces() -> AsyncIterator[str]:
        yield "one"
        raise Oops

    for make in (pieces, async_pieces):
        async with raw_peer(role) as (ws, peer):
            with pytest.raises(Oops):
                await ws.send_message(make())
            assert (await peer.frame()).payload == b"one"
            assert ws.closed is not None
            assert (ws.closed.code, ws.closed.reason) == (1011, PIECES_FAILED)
            await assert_closed_with(ws, peer, 1011)


@pytest.mark.parametrize("role", ROLES)
async def test_an_iterable_that_raises_before_its_first_piece_sends_nothing(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    def pieces() -> Iterable[str]:
        raise Oops
        yield "never"

    async def async_pieces() -> AsyncIterator[str]:
        raise Oops
        yield "never"

    async with raw_peer(role) as (ws, peer):
        for make in (pieces, async_pieces):
            with pytest.raises(Oops):
                await ws.send_message(make())
            assert ws.state is ConnectionState.OPEN
            await peer.nothing_more()
        await ws.send_message("still open")
        assert (await peer.frame()).payload == b"still open"


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("role", ROLES)
async def test_a_message_in_pieces_with_permessage_deflate(role: str, compress: bool) -> None:
    """RSV1 on the first frame only (RFC 7692 6.1), and the frames inflate to the message;
    ``compress=False``: no RSV1 at all, the pieces as they are."""
    pieces = ["a" * 1000, "", "b\u00e9" * 500, "c"]
    async with raw_peer(role, deflate=True) as (ws, peer):
        await ws.send_message(iter(pieces), compress=compress)
        frames = await peer.frames(len(pieces) + 1)
        payloads = fragments_of(frames, opcode=TEXT, client=role == "client", compressed=compress)
        if compress:
            assert [f.rsv for f in frames] == [RSV1] + [0] * len(pieces)
            assert peer.inflate(b"".join(f.payload for f in frames)).decode() == "".join(pieces)
            assert sum(len(f.payload) for f in frames) < 100
        else:
            assert [f.rsv for f in frames] == [0] * (len(pieces) + 1)
            assert payloads == [piece.encode() for piece in pieces]
        # The compression context goes on, right, into the next message.
        await ws.send_message("a" * 1000)
        following = await peer.frame()
        assert (following.fin, following.rsv) == (True, RSV1)
        assert peer.inflate(following.payload) == b"a" * 1000


@pytest.mark.parametrize("role", ROLES)
async def test_compressed_pieces_reach_the_peer_as_they_come(role: str) -> None:
    async with raw_peer(role, deflate=True) as (ws, peer), trio.open_nursery() as nursery:
        gate = Gate(["first piece, " * 10, "second"])
        nursery.start_soon(ws.send_message, gate)
        first = await peer.frame()
        assert (first.fin, first.rsv) == (False, RSV1)
        assert peer.inflater.decompress(first.payload) == b"first piece, " * 10
        gate.open()


@pytest.mark.parametrize("role", ROLES)
async def test_an_async_iterator_left_unfinished_is_closed(role: str) -> None:
    class Pieces:
        def __init__(self) -> None:
            self.finished = False
            self.iterator: Any = None

        def __aiter__(self) -> AsyncIterator[Any]:
            self.iterator = self.generate()
            return self.iterator

        async def generate(self) -> AsyncIterator[Any]:
            try:
                yield "text"
                yield b"binary"
                yield "never taken"
            finally:
                self.finished = True

    pieces = Pieces()
    try:
        async with pair(role) as (ws, _):
            with pytest.raises(TypeError):
                await ws.send_message(pieces)
            assert pieces.finished
    finally:
        await pieces.iterator.aclose()  # (else the garbage collector does it, with a warning)


class Held:
    """An async iterator that waits forever before its piece number ``at`` (0: the first)."""

    def __init__(self, pieces: list[Any], at: int) -> None:
        self.pieces, self.at, self.given = pieces, at, 0

    def __aiter__(self) -> Held:
        return self

    async def __anext__(self) -> Any:
        if self.given == self.at:
            await trio.sleep_forever()
        if self.given == len(self.pieces):
            raise StopAsyncIteration
        self.given += 1
        return self.pieces[self.given - 1]


@pytest.mark.parametrize("role", ROLES)
async def test_a_send_in_pieces_cancelled_at_each_stage(role: str, autojump_clock: trio.testing.MockClock) -> None:
    """Before anything was sent: nothing happens.  Between pieces: the message can never be
    finished, so the connection closes with 1011.  In the middle of a frame's write: the
    stream cannot be resumed, the connection aborts (1006)."""
    # Before the first piece.
    async with raw_peer(role) as (ws, peer):
        with trio.move_on_after(1) as scope:
            await ws.send_message(Held(["never"], at=0))
        assert scope.cancelled_caught
        assert ws.state is ConnectionState.OPEN
        await peer.nothing_more()
        await ws.send_message(["still ", "open"])
        assert [f.payload for f in await peer.frames(3)] == [b"still ", b"open", b""]
    # Between pieces.
    async with raw_peer(role) as (ws, peer):
        with trio.move_on_after(1) as scope:
            await ws.send_message(Held([b"sent", b"never"], at=1))
        assert scope.cancelled_caught
        assert ws.closed is not None
        assert (ws.closed.code, ws.closed.reason) == (1011, PIECES_FAILED)
        assert await peer.frame() == Frame(False, 0, BINARY, b"sent", role == "client")
        await assert_closed_with(ws, peer, 1011)
        assert ws.closed.was_clean
    # In the middle of a frame: the peer does not read.
    async with raw_peer(role, lockstep=True) as (ws, peer):
        with trio.move_on_after(1) as scope:
            await ws.send_message([b"x" * 1000])
        assert scope.cancelled_caught
        assert ws.state is ConnectionState.CLOSED
        assert ws.closed is not None
        assert (ws.closed.code, ws.closed.was_clean) == (1006, False)
        assert "cancelled part way" in (ws.closed.reason or "")


@pytest.mark.parametrize("role", ROLES)
async def test_a_cancelled_iteration_loses_no_piece(role: str, autojump_clock: trio.testing.MockClock) -> None:
    async with raw_peer(role) as (ws, peer):
        fragments = ws.receive_fragments()
        await peer.send(TEXT, "one ", fin=False)
        assert await next_piece(fragments) == "one "
        with trio.move_on_after(1) as scope:
            await next_piece(fragments)
        assert scope.cancelled_caught
        await peer.send(CONTINUATION, "two ", fin=False)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:  # cancelled with the piece there: it stays there
            scope.cancel()
            await next_piece(fragments)
        assert scope.cancelled_caught
        await peer.send(CONTINUATION, "three")
        assert [piece async for piece in fragments] == ["two ", "three"]
        assert ws.state is ConnectionState.OPEN


# === 3. wait_closed() =====================================================================


@pytest.mark.parametrize("role", ROLES)
async def test_wait_closed_returns_the_close_reason_once_closed(role: str) -> None:
    async with pair(role) as (ws, peer), trio.open_nursery() as nursery:
        returned: list[tuple[CloseReason, ConnectionState]] = []

        async def wait() -> None:
            reason = await ws.wait_closed()
            returned.append((reason, ws.state))

        nursery.start_soon(wait)
        await ws.send("still open")
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []
        await peer.aclose(4001, "bye")
        await trio.testing.wait_all_tasks_blocked()
        [(reason, state)] = returned
        assert (reason.code, reason.reason, reason.was_clean) == (4001, "bye", True)
        assert state is ConnectionState.CLOSED
        with trio.testing.assert_checkpoints():
            assert await ws.wait_closed() is reason  # at once, the same reason, afterwards


@pytest.mark.parametrize("role", ROLES)
async def test_wait_closed_after_our_close_and_after_an_abort(role: str) -> None:
    async with pair(role) as (ws, _):
        await ws.aclose(1001)
        assert (await ws.wait_closed()).code == 1001
    async with raw_peer(role) as (ws, peer):
        await peer.stream.aclose()
        reason = await ws.wait_closed()
        assert (reason.code, reason.was_clean) == (1006, False)
        assert ws.state is ConnectionState.CLOSED


# === 4. statistics() =======================================================================


async def test_statistics_is_a_frozen_dataclass() -> None:
    names = [field.name for field in dataclasses.fields(ConnectionStatistics)]
    assert names == [
        "messages_sent",
        "messages_received",
        "bytes_sent",
        "bytes_received",
        "messages_waiting",
        "buffered_amount",
        "state",
        "latency",
    ]
    async with websocket_pair() as (client, _):
        statistics = client.statistics()
        assert isinstance(statistics, ConnectionStatistics)
        with pytest.raises(dataclasses.FrozenInstanceError):
            statistics.messages_sent = 5  # type: ignore[misc]
        assert statistics == ConnectionStatistics(
            0, 0, statistics.bytes_sent, statistics.bytes_received, 0, 0, ConnectionState.OPEN, None
        )
        assert statistics.bytes_sent > 0  # the opening handshake


@pytest.mark.parametrize("role", ROLES)
async def test_statistics_count_messages_and_wire_bytes(role: str) -> None:
    """Bytes as the peer counts them on the wire (the opening handshake included); a message
    in fragments counts once, whichever way it goes."""
    async with raw_peer(role, message_queue_size=8) as (ws, peer):
        await ws.send_message("whole")
        await ws.send_message([b"in ", b"pieces"])
        await peer.frames(1 + 3)
        await peer.send(TEXT, "one")
        await peer.send(BINARY, b"t", fin=False)
        await peer.send(CONTINUATION, b"wo")
        await peer.send(PING, b"not a message")
        assert opcode_and_payload(await peer.frame()) == (PONG, b"not a message")
        statistics = ws.statistics()
        assert (statistics.messages_sent, statistics.messages_received, statistics.messages_waiting) == (2, 2, 2)
        assert statistics.bytes_sent == peer.stream.received
        assert statistics.bytes_received == peer.stream.sent
        assert (statistics.state, statistics.buffered_amount, statistics.latency) == (ConnectionState.OPEN, 0, None)
        assert [await ws.receive(), await ws.receive()] == ["one", b"two"]
        assert ws.statistics().messages_waiting == 0
        assert ws.statistics().messages_received == 2


@pytest.mark.parametrize("role", ROLES)
async def test_statistics_buffered_amount(role: str, autojump_clock: trio.testing.MockClock) -> None:
    """Bytes handed over and not yet written: a message stuck behind a transport nobody reads."""
    async with raw_peer(role, lockstep=True) as (ws, peer), trio.open_nursery() as nursery:
        nursery.start_soon(ws.send_message, "\u00e9" * 10)  # 20 bytes of UTF-8
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ws.send_message, [b"abc", b"de"])
        await trio.testing.wait_all_tasks_blocked()
        assert ws.statistics().buffered_amount == 20 + 3
        assert (await peer.frame()).payload == "\u00e9".encode() * 10
        assert [f.payload for f in await peer.frames(3)] == [b"abc", b"de", b""]
        await trio.testing.wait_all_tasks_blocked()
        assert ws.statistics().buffered_amount == 0


@pytest.mark.parametrize("role", ROLES)
async def test_statistics_state_and_latency(role: str, autojump_clock: trio.testing.MockClock) -> None:
    async with pair(role, ping_interval=5) as (ws, peer):
        assert ws.statistics().latency is None
        await trio.sleep(6)  # a keepalive ping went and its pong came
        latency = ws.statistics().latency
        assert latency is not None
        assert latency == ws.latency >= 0
        assert ws.statistics().state is ConnectionState.OPEN
        await peer.aclose()
        await ws.wait_closed()
        assert ws.statistics().state is ConnectionState.CLOSED


# === 5. compress=False, decode=False =========================================================


@pytest.mark.parametrize("role", ROLES)
async def test_compress_false_sends_that_message_uncompressed(role: str) -> None:
    async with raw_peer(role, deflate=True) as (ws, peer):
        message = "compressible " * 100
        await ws.send_message(message, compress=False)
        plain = await peer.frame()
        assert (plain.rsv, plain.payload) == (0, message.encode())
        await ws.send_message(message)
        compressed = await peer.frame()
        assert compressed.rsv == RSV1
        assert peer.inflate(compressed.payload) == message.encode()
        assert len(compressed.payload) < 100
        await ws.send_message(message.encode(), compress=False)
        assert opcode_and_payload(await peer.frame()) == (BINARY, message.encode())
    async with raw_peer(role) as (ws, peer):  # without permessage-deflate: no change
        await ws.send_message("plain", compress=False)
        assert (await peer.frame()).payload == b"plain"


@pytest.mark.parametrize("role", ROLES)
async def test_get_message_decode_false_gives_validated_utf8_bytes(role: str) -> None:
    async with raw_peer(role, message_queue_size=8) as (ws, peer):
        await peer.send(TEXT, "caf\u00e9")
        await peer.send(TEXT, "in ", fin=False)
        await peer.send(CONTINUATION, "pi\u00e8ces")
        await peer.send(BINARY, b"\xff binary")
        assert await ws.get_message(decode=False) == "caf\u00e9".encode()
        assert await ws.get_message(decode=False) == "in pi\u00e8ces".encode()
        assert await ws.get_message(decode=False) == b"\xff binary"
        await peer.send(TEXT, b"caf\xc3")  # invalid: not validated away
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message(decode=False)
        assert closed.value.reason.code == 1007
        await assert_closed_with(ws, peer, 1007)


# === Properties: random messages cut into random pieces =======================================

PROPERTIES = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
EXAMPLE_LIMIT = 10.0  # seconds for one example


def run_example(scenario: Callable[..., Awaitable[None]], *args: Any) -> None:
    """One example in its own trio.run, bounded in time."""

    async def bounded() -> None:
        with trio.fail_after(EXAMPLE_LIMIT):
            await scenario(*args)

    trio.run(bounded)


@dataclasses.dataclass(frozen=True)
class Message:
    """A message to send: its pieces (all str or all bytes), how to send and how to receive it."""

    text: bool
    pieces: tuple[Any, ...]
    send: str  # "whole", "iterable", "async iterable"
    compress: bool
    receive: str  # "get_message", "receive", "fragments"
    decode: bool

    @property
    def sent(self) -> Any:
        if self.send == "whole":
            return "".join(self.pieces) if self.text else b"".join(self.pieces)
        if self.send == "iterable":
            return iter(self.pieces)
        return AsyncPieces(self.pieces)

    @property
    def is_text(self) -> bool:
        """It goes as a text message (an empty iterable makes a binary one)."""
        return self.text and (bool(self.pieces) or self.send == "whole")

    @property
    def expected(self) -> str | bytes:
        if not self.pieces and self.send != "whole":
            return b""  # an empty iterable is an empty binary message
        if self.text:
            text = "".join(self.pieces)
            return text if self.decode else text.encode()
        return b"".join(self.pieces)


class AsyncPieces:
    """An async iterator over pieces, with a checkpoint before each (not an async generator:
    see test_an_async_iterator_left_unfinished_is_closed)."""

    def __init__(self, pieces: Iterable[Any]) -> None:
        self.pieces = iter(pieces)

    def __aiter__(self) -> AsyncPieces:
        return self

    async def __anext__(self) -> Any:
        await trio.lowlevel.checkpoint()
        try:
            return next(self.pieces)
        except StopIteration:
            raise StopAsyncIteration from None


large_bytes = st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 150_000), st.integers(0, 255))
characters = st.characters(blacklist_categories=("Cs",))  # (a lone surrogate cannot be sent)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    text = draw(st.booleans())
    if text:
        piece = st.one_of(st.text(characters, max_size=40), st.builds(lambda n: "\u00e9" * n, st.integers(0, 70_000)))
    else:
        piece = st.one_of(st.binary(max_size=100), large_bytes)
    pieces = draw(st.lists(piece, max_size=5))
    return Message(
        text=text,
        pieces=tuple(pieces),
        send=draw(st.sampled_from(["whole", "iterable", "async iterable"])),
        compress=draw(st.booleans()),
        receive=draw(st.sampled_from(["get_message", "receive", "fragments"])),
        decode=draw(st.booleans()),
    )


async def send_all(ws: WebSocketConnection, batch: list[Message]) -> None:
    for message in batch:
        await ws.send_message(message.sent, compress=message.compress)


async def receive_one(ws: WebSocketConnection, message: Message) -> str | bytes:
    if message.receive == "get_message":
        return await ws.get_message(decode=message.decode)
    if message.receive == "receive":
        got = await ws.receive()
        return got.encode() if isinstance(got, str) and not message.decode else got
    fragments = ws.receive_fragments(decode=message.decode)
    pieces = [piece async for piece in fragments]
    assert pieces, "a message has at least one piece"
    assert fragments.text is message.is_text
    assert all(isinstance(piece, str) == (message.is_text and message.decode) for piece in pieces)
    return join(pieces)


async def through_a_pair(batch: list[Message], compression: str | None, direction: str, queue: int) -> None:
    async with websocket_pair(compression=compression, message_queue_size=queue) as (client, server):
        sender, receiver = (client, server) if direction == "client to server" else (server, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all, sender, batch)
            for message in batch:
                assert await receive_one(receiver, message) == message.expected
        assert sender.statistics().messages_sent == len(batch) == receiver.statistics().messages_received


@settings(PROPERTIES, max_examples=200)
@given(
    batch=st.lists(messages(), min_size=1, max_size=6),
    compression=st.sampled_from([None, "deflate"]),
    direction=st.sampled_from(["client to server", "server to client"]),
    queue=st.integers(0, 3),
)
def test_random_messages_in_random_pieces_through_websocket_pair(
    batch: list[Message], compression: str | None, direction: str, queue: int
) -> None:
    run_example(through_a_pair, batch, compression, direction, queue)


async def streaming_echo(request: WebSocketRequest) -> None:
    """Send each message back piece by piece, as its pieces arrive."""
    ws = await request.accept()

    async def pieces(fragments: MessageFragments) -> AsyncIterator[str | bytes]:
        async for piece in fragments:
            yield piece

    try:
        while True:
            generator = pieces(ws.receive_fragments(max_size=None))
            try:
                await ws.send_message(generator)
            finally:
                await generator.aclose()
    except ConnectionClosed:
        pass


async def over_loopback(batch: list[Message], compression: str | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_websocket, streaming_echo, HOST, 0, None, compression=compression))
        async with open_websocket_url(f"ws://{HOST}:{server.port}/", compression=compression) as ws:
            assert ws.extensions.startswith("permessage-deflate") == (compression is not None)
            async with trio.open_nursery() as senders:
                senders.start_soon(send_all, ws, batch)
                for message in batch:
                    assert await receive_one(ws, message) == message.expected
        nursery.cancel_scope.cancel()


@settings(PROPERTIES, max_examples=60)
@given(batch=st.lists(messages(), min_size=1, max_size=6), compression=st.sampled_from([None, "deflate"]))
def test_random_messages_in_random_pieces_over_loopback(batch: list[Message], compression: str | None) -> None:
    """A client sends them to a server that echoes each one piece by piece as it comes
    (receive_fragments into send_message), over real sockets."""
    run_example(over_loopback, batch, compression)


async def raw_cuts(role: str, message: bytes, text: bool, cuts: list[int], chunks: list[int], deflate: bool) -> None:
    """The peer sends ``message`` cut into frames at ``cuts`` (compressed first, if ``deflate``),
    the frames' bytes written in ``chunks``; the connection streams it back together."""
    async with raw_peer(role, deflate=deflate) as (ws, peer):
        data = message
        if deflate:
            deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            data = (deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
        bounds = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
        frames = b"".join(
            make_frame(
                (TEXT if text else BINARY) if i == 0 else CONTINUATION,
                data[start:end],
                fin=i == len(bounds) - 2,
                rsv=RSV1 if deflate and i == 0 else 0,
                masked=role == "server",
            )
            for i, (start, end) in enumerate(itertools.pairwise(bounds))
        )
        for decode in (True, False):
            fragments = ws.receive_fragments(max_size=None, decode=decode)

            async def write(frames: bytes = frames) -> None:
                offset = 0
                for size in [*chunks, len(frames)]:
                    await peer.stream.send_all(frames[offset : offset + size])
                    offset += size
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                pieces = [piece async for piece in fragments]
            assert fragments.text is text
            if text and decode:
                assert all(isinstance(piece, str) for piece in pieces)
                assert "".join(pieces) == message.decode()
            else:
                assert join(pieces) == message
            if deflate:
                assert all(len(piece) <= 2**16 for piece in pieces)


@settings(PROPERTIES, max_examples=150)
@given(
    role=st.sampled_from(ROLES),
    content=st.one_of(
        st.text(characters, max_size=300).map(lambda t: (t.encode(), True)),
        st.binary(max_size=300).map(lambda b: (b, False)),
    ),
    cuts=st.lists(st.integers(0, 2**16), max_size=8),
    chunks=st.lists(st.integers(1, 64), max_size=8),
    deflate=st.booleans(),
)
def test_random_cuts_of_a_message_into_frames_from_a_raw_peer(
    role: str, content: tuple[bytes, bool], cuts: list[int], chunks: list[int], deflate: bool
) -> None:
    """UTF-8 cut anywhere (inside characters too) and written in any chunks: the str pieces
    decode to the text, the undecoded ones join to its bytes."""
    message, text = content
    run_example(raw_cuts, role, message, text, cuts, chunks, deflate)


# === Push-back: a slow consumer slows the sender down =========================================


@asynccontextmanager
async def lockstep_pair(role: str, **options: Any) -> AsyncIterator[tuple[WebSocketConnection, WebSocketConnection]]:
    """Two trio_ws connections over ``lockstep_stream_pair()`` (a write waits until the other
    side reads it: no buffer anywhere but the connections' own), as (``role``, the other)."""
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        send_server, receive_server = trio.open_memory_channel[WebSocketConnection](1)

        async def serve() -> None:
            request = await wrap_server_stream(nursery, server_stream, **options)
            await send_server.send(await request.accept())

        nursery.start_soon(serve)
        client = await wrap_client_stream(nursery, client_stream, HOST, "/", **options)
        server = await receive_server.receive()
        yield (client, server) if role == "client" else (server, client)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("role", ROLES)
async def test_a_slow_async_for_consumer_pushes_back_on_the_sender(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    """message_queue_size=1 and a consumer that takes a message a second: the inbox never holds
    more than 2, and the sender's sends wait for the consumer (they are never more than a
    few messages ahead), until the sender closes and the loop ends quietly."""
    count = 20
    async with lockstep_pair(role, message_queue_size=1) as (consumer, sender), trio.open_nursery() as nursery:
        sent: list[float] = []

        async def send() -> None:
            for i in range(count):
                await sender.send(f"message {i}")
                sent.append(trio.current_time())
            await sender.aclose()

        nursery.start_soon(send)
        await trio.sleep(5)  # the consumer is late: the sender has run ahead as far as it can
        assert len(sent) <= 3
        assert consumer.statistics().messages_waiting == 2
        received: list[str | bytes] = []
        ahead: list[int] = []
        async for message in consumer:
            received.append(message)
            assert consumer.statistics().messages_waiting <= 2
            ahead.append(len(sent) - len(received))
            await trio.sleep(1)
        assert received == [f"message {i}" for i in range(count)]
        assert max(ahead) <= 3, ahead
        assert sent[-1] >= 5 + count - 4  # paced by the consumer, not by the sender


@pytest.mark.parametrize("role", ROLES)
async def test_a_slow_fragments_consumer_pushes_back_on_the_sender(
    role: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The pieces of one streamed message count against the inbox's bound as messages do."""
    count = 20
    async with lockstep_pair(role, message_queue_size=1) as (consumer, sender), trio.open_nursery() as nursery:
        given: list[int] = []

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(count):
                given.append(i)
                yield b"piece %d " % i

        async def send() -> None:
            generator = pieces()
            try:
                await sender.send_message(generator)
            finally:
                await generator.aclose()

        nursery.start_soon(send)
        fragments = consumer.receive_fragments()
        await trio.sleep(5)
        assert len(given) <= 4
        received: list[str | bytes] = []
        async for piece in fragments:
            received.append(piece)
            assert consumer.statistics().messages_waiting <= 2
            assert len(given) - len(received) <= 4
            await trio.sleep(1)
        assert join(received) == b"".join(b"piece %d " % i for i in range(count))


@pytest.mark.deadline(20)
async def test_a_slow_consumer_stops_reading_a_raw_peer_over_tcp(nursery: trio.Nursery) -> None:
    """Real sockets: a peer that writes as fast as it can to a server whose handler's
    ``async for`` waits: the server stops reading, and soon the peer's writes are no longer
    accepted (its send_all blocks); then the handler catches up, and every message arrives."""
    count, size = 400, 2**16
    go = trio.Event()
    done = trio.Event()
    seen: list[int] = []
    waiting: list[int] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await go.wait()
        async for message in ws:
            assert isinstance(message, bytes)
            waiting.append(ws.statistics().messages_waiting)
            seen.append(int.from_bytes(message[:4], "big"))
        done.set()

    server = await nursery.start(partial(serve_websocket, handler, HOST, 0, None, message_queue_size=1))
    stream = await trio.open_tcp_stream(HOST, server.port)
    async with stream:
        raw = RawClient(stream)
        await raw.handshake()
        written = 0

        async def write() -> None:
            nonlocal written
            for i in range(count):
                await stream.send_all(make_frame(BINARY, i.to_bytes(4, "big") + bytes(size - 4), masked=True))
                written += 1
            await stream.send_all(make_frame(CLOSE, close_payload(1000), masked=True))

        async with trio.open_nursery() as writers:
            writers.start_soon(write)
            # Wait until the writes stop being accepted (no progress for 0.3 s).
            last, still_since = -1, trio.current_time()
            with trio.fail_after(10):
                while trio.current_time() - still_since < 0.3:
                    await trio.sleep(0.05)
                    if written != last:
                        last, still_since = written, trio.current_time()
            assert written < count, "every write was accepted: nothing pushed back"
            go.set()
        assert await raw.receive_frame() == (CLOSE, close_payload(1000))
    # The server answers the Close as soon as its reader sees it; the messages before it
    # may still wait for the handler, which takes them all before its loop ends.
    with trio.fail_after(5):
        await done.wait()
    assert seen == list(range(count))
    assert max(waiting) <= 2
