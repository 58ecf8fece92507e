"""permessage-deflate (RFC 7692): negotiation, round trips, limits, errors."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from functools import partial

import pytest
import trio

from trio_ws import (
    ConnectionClosed,
    HandshakeError,
    WebSocketRequest,
    WebSocketServer,
    connect_websocket,
    open_websocket,
    serve_websocket,
)
from trio_ws._deflate import PerMessageDeflate, _Declined, parse_parameters
from trio_ws.testing import websocket_pair

from .conftest import HOST, CloseWatcher, RawClient, RawServerPeer, echo_handler, frame, start_raw_server, start_server

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"


def compress(data: bytes, bits: int = 15) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# --- negotiation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "response"),
    [
        ("permessage-deflate", ""),
        (BROWSER_OFFER, "client_max_window_bits=13"),  # the default receive_window_bits
        ("permessage-deflate; client_max_window_bits=10", "client_max_window_bits=10"),
        ("permessage-deflate; server_no_context_takeover", "server_no_context_takeover"),
        ("permessage-deflate; client_no_context_takeover", "client_no_context_takeover"),
        ("permessage-deflate; server_max_window_bits=9", "server_max_window_bits=9"),
        ('permessage-deflate; server_max_window_bits="12"', "server_max_window_bits=12"),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15",
            "server_no_context_takeover; client_no_context_takeover; server_max_window_bits=13",
        ),
    ],
)
def test_server_accepts(offer: str, response: str) -> None:
    extension = PerMessageDeflate(client=False, max_message_size=2**20)
    assert extension.accept(offer) == response
    assert extension.enabled()
    assert extension.header == ("permessage-deflate; " + response if response else "permessage-deflate")


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot compress with 2**8
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; unknown_parameter",
        "x-webkit-deflate-frame",
    ],
)
def test_server_declines(offer: str) -> None:
    extension = PerMessageDeflate(client=False, max_message_size=2**20)
    assert extension.accept(offer) is None
    assert not extension.enabled()
    assert extension.header == ""


def test_server_takes_the_first_acceptable_offer_only() -> None:
    extension = PerMessageDeflate(client=False, max_message_size=2**20)
    assert extension.accept("permessage-deflate; server_max_window_bits=8") is None
    assert extension.accept("permessage-deflate; server_no_context_takeover") == "server_no_context_takeover"
    assert extension.accept("permessage-deflate") is None  # already agreed
    assert extension.header == "permessage-deflate; server_no_context_takeover"


def test_client_offer_and_responses() -> None:
    extension = PerMessageDeflate(client=True, max_message_size=2**20)
    assert extension.offers() == [
        "permessage-deflate; server_max_window_bits=13; client_max_window_bits",
        "permessage-deflate; client_max_window_bits",
    ]
    extension.finalize("permessage-deflate; client_max_window_bits=10; server_no_context_takeover")
    assert extension.enabled()
    assert extension.header == "permessage-deflate; client_max_window_bits=10; server_no_context_takeover"
    with pytest.raises(_Declined):
        extension.finalize("permessage-deflate")  # accepted twice


@pytest.mark.parametrize(
    "response",
    [
        "permessage-deflate; client_max_window_bits",  # a response must give the value
        "permessage-deflate; client_max_window_bits=8",
        "permessage-deflate; bogus",
    ],
)
def test_client_refuses_bad_responses(response: str) -> None:
    extension = PerMessageDeflate(client=True, max_message_size=2**20)
    with pytest.raises(_Declined):
        extension.finalize(response)


def test_parse_parameters() -> None:
    assert parse_parameters("Permessage-Deflate ;  Client_Max_Window_Bits ; server_max_window_bits = 10") == {
        "client_max_window_bits": None,
        "server_max_window_bits": "10",
    }


@pytest.mark.parametrize(
    ("client", "server", "agreed"), [(True, True, True), (True, False, False), (False, True, False)]
)
async def test_negotiation_over_the_network(nursery: trio.Nursery, client: bool, server: bool, agreed: bool) -> None:
    seen: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        seen.append(ws.extensions)
        await ws.send_message(await ws.get_message())

    listening: WebSocketServer = await nursery.start(
        partial(serve_websocket, handler, HOST, 0, None, compression="deflate" if server else None)
    )
    async with open_websocket(
        HOST, listening.port, "/", use_ssl=False, compression="deflate" if client else None
    ) as ws:
        await ws.send_message("x" * 1000)
        assert await ws.get_message() == "x" * 1000
        agreement = "permessage-deflate; server_max_window_bits=13; client_max_window_bits=13"
        assert ws.extensions == (agreement if agreed else "")
    assert seen == [ws.extensions]


async def test_compression_argument_is_checked() -> None:
    with pytest.raises(ValueError, match=r'compression must be None, "deflate" or a trio_ws\.Deflate'):
        async with websocket_pair(compression="gzip"):
            pytest.fail("must not open")  # pragma: no cover


async def test_compression_argument_is_checked_before_connecting(echo_server: WebSocketServer) -> None:
    with pytest.raises(ValueError, match="compression"):
        async with open_websocket(HOST, echo_server.port, "/", use_ssl=False, compression="br"):
            pytest.fail("must not connect")  # pragma: no cover
    with pytest.raises(ValueError, match="compression"):
        await serve_websocket(echo_handler, HOST, 0, None, compression="zstd")


# --- round trips ---------------------------------------------------------------------


MESSAGES = [
    "",
    b"",
    "short",
    "compressible " * 5000,
    "non-ASCII \u00e9\u4e2d\U0001f600 " * 300,
    bytes(range(256)) * 100,
    b"\x00" * 300_000,
]


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=9",
    ],
)
async def test_round_trips_with_each_agreement(nursery: trio.Nursery, offer: str) -> None:
    """Our server against a hand-written client that offers ``offer`` and inflates by itself."""
    server = await start_server(nursery, echo_handler, compression="deflate", max_message_size=2**20)
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    async with client.stream:
        request = UPGRADE.replace(b"\r\n\r\n", f"\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n".encode())
        response = await client.handshake(request)
        assert b"sec-websocket-extensions: permessage-deflate" in response.lower()
        inflater = zlib.decompressobj(-15)
        for message in (b"abc" * 1000, b"", b"abc" * 1000):
            deflated = compress(message)
            await client.stream.send_all(frame(0x2, deflated, rsv=4))
            opcode, payload = await client.receive_frame()
            if "server_no_context_takeover" in offer:
                inflater = zlib.decompressobj(-15)
            assert opcode == 0x2
            if not message:  # nothing is smaller than nothing: sent uncompressed
                assert (client.rsv, payload) == (0, b"")
                continue
            assert client.rsv == 0x40
            assert inflater.decompress(payload + b"\x00\x00\xff\xff") == message


async def test_pair_round_trips() -> None:
    async with websocket_pair(compression="deflate", max_message_size=2**20, message_queue_size=10) as (
        client,
        server,
    ):
        agreement = "permessage-deflate; server_max_window_bits=13; client_max_window_bits=13"
        assert client.extensions == server.extensions == agreement
        for message in MESSAGES:
            await client.send_message(message)
            assert await server.get_message() == message
            await server.send_message(message)
            assert await client.get_message() == message


async def test_client_against_a_server_with_no_context_takeover(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        request = await peer.accept(
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=9\r\n"
        )
        assert b"permessage-deflate; client_max_window_bits" in request
        for _ in range(2):
            await peer.stream.send_all(frame(0x1, compress(b"hello hello"), rsv=4, mask=False))
            opcode, payload = await peer.receive_frame()
            assert opcode == 0x1
            # The client compresses with at most 2**9, with context takeover.
            assert payload
        await peer.stream.send_all(frame(0x8, struct.pack("!H", 1000), mask=False))
        await peer.receive_frame()

    port = await start_raw_server(nursery, script)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False, compression="deflate")
    assert ws.extensions == "permessage-deflate; server_no_context_takeover; client_max_window_bits=9"
    for _ in range(2):
        message = await ws.get_message()
        assert message == "hello hello"
        await ws.send_message(message)
    with pytest.raises(ConnectionClosed):
        await ws.get_message()
    await ws.aclose()


async def test_client_refuses_a_server_response_it_cannot_honour(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.accept(b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8\r\n")
        await peer.receive_eof()

    port = await start_raw_server(nursery, script)
    with pytest.raises(HandshakeError, match="8-bit window"):
        await connect_websocket(nursery, HOST, port, "/", use_ssl=False, compression="deflate")


# --- limits and errors ----------------------------------------------------------------

UPGRADE = (
    b"GET /deflate HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def deflate_client(port: int) -> RawClient:
    client = RawClient(await trio.open_tcp_stream(HOST, port))
    request = UPGRADE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
    response = await client.handshake(request)
    assert b"permessage-deflate" in response
    return client


async def test_a_deflate_bomb_is_refused_at_the_limit(nursery: trio.Nursery) -> None:
    """256 MiB of zeros in a 256 KiB frame: 1009 after about max_message_size of output."""
    handler = CloseWatcher()
    closes = handler.closes

    server = await start_server(nursery, handler, compression="deflate", max_message_size=2**20)
    bomb = compress(b"\x00" * 2**28)
    assert len(bomb) < 2**19
    client = await deflate_client(server.port)
    async with client.stream:
        tracemalloc.start()
        try:
            await client.stream.send_all(frame(0x2, bomb, rsv=4))
            opcode, payload = await client.receive_frame()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1009)
    assert payload[2:] == b"message is larger than max_message_size (1048576 bytes)"
    assert closes[0] is not None
    assert closes[0].code == 1009
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing a 256 MiB bomb"


@pytest.mark.parametrize(("characters", "refused"), [(10, False), (11, True)])
async def test_compressed_text_limit_counts_characters(characters: int, refused: bool) -> None:
    async with websocket_pair(compression="deflate", max_message_size=10) as (client, server):
        await server.send_message("\u00e9" * characters)  # two bytes each
        if refused:
            with pytest.raises(ConnectionClosed) as info:
                await client.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1009
        else:
            assert await client.get_message() == "\u00e9" * characters


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (frame(0x1, b"not deflate data \xff\xff\xff\xff", rsv=4), 1007),
        (frame(0x1, compress(b"abc"), rsv=4, fin=False) + frame(0x0, compress(b"d"), rsv=4), 1002),
        (frame(0x9, b"ping", rsv=4), 1002),
        (frame(0x1, compress(b"\xff\xfe"), rsv=4), 1007),  # inflates to invalid UTF-8
        (frame(0x1, b"x", rsv=2), 1002),  # RSV2 is not ours
    ],
)
async def test_compressed_protocol_errors(nursery: trio.Nursery, frames: bytes, code: int) -> None:
    server = await start_server(nursery, echo_handler, compression="deflate")
    client = await deflate_client(server.port)
    async with client.stream:
        await client.stream.send_all(frames)
        opcode, payload = await client.receive_frame()
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, code)


async def test_uncompressed_frames_still_pass_when_negotiated(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo_handler, compression="deflate")
    client = await deflate_client(server.port)
    async with client.stream:
        await client.stream.send_all(frame(0x1, b"plain", rsv=0))
        opcode, payload = await client.receive_frame()
    # The echo goes uncompressed too: deflate would not make five bytes smaller.
    assert (opcode, client.rsv, payload) == (0x1, 0, b"plain")


async def test_a_ping_between_compressed_fragments(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo_handler, compression="deflate")
    client = await deflate_client(server.port)
    async with client.stream:
        deflated = compress(b"fragmented and compressed " * 4)
        await client.stream.send_all(
            frame(0x1, deflated[:5], rsv=4, fin=False) + frame(0x9, b"in between") + frame(0x0, deflated[5:])
        )
        assert await client.receive_frame() == (0xA, b"in between")
        opcode, payload = await client.receive_frame()
    assert (opcode, client.rsv) == (0x1, 0x40)
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == b"fragmented and compressed " * 4
