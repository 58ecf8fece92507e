"""permessage-deflate's settings (trio_ws.Deflate), negotiation for each of them in both roles,
zlib objects made when needed and dropped when idle, and messages sent uncompressed when
deflate would not make them smaller."""

from __future__ import annotations

import os
import zlib
from functools import partial

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Request, TextMessage
from wsproto.extensions import PerMessageDeflate as WsprotoDeflate

import trio_ws._deflate_window as window
from trio_ws import ConnectionClosed, Deflate, WebSocketRequest, connect_websocket, serve_websocket
from trio_ws._deflate import PerMessageDeflate
from trio_ws._deflate_window import Compressor, looks_incompressible
from trio_ws._frames import frame
from trio_ws.testing import websocket_pair

from .conftest import HOST
from .test_router import doc_examples, run_doc_example

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"
JSON = b'{"type": "update", "user": {"name": "alice", "score": 12}, "items": [1, 2, 3]}' * 4


# --- the settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings_", "match"),
    [
        ({"send_window_bits": 8}, "send_window_bits must be an int from 9 to 15, not 8 .zlib cannot"),
        ({"receive_window_bits": 16}, "receive_window_bits must be an int from 9 to 15"),
        ({"send_window_bits": True}, "send_window_bits"),
        ({"level": 0}, "level must be an int from 1 to 9, not 0"),
        ({"mem_level": 10}, "mem_level must be an int from 1 to 9"),
        ({"mem_level": 5.0}, "mem_level"),
        ({"send_context_takeover": 1}, "send_context_takeover must be True or False"),
        ({"receive_context_takeover": None}, "receive_context_takeover must be True or False"),
    ],
)
def test_bad_settings_are_refused(settings_: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Deflate(**settings_)  # type: ignore[arg-type]


async def test_compression_takes_a_deflate_object() -> None:
    options = Deflate(send_window_bits=10, receive_window_bits=11, level=9, mem_level=4)
    async with websocket_pair(compression=options) as (client, server):
        assert client.extensions == "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11"
        assert server.extensions == client.extensions
        await client.send_message(JSON)
        assert await server.get_message() == JSON
        await server.send_message(JSON)
        assert await client.get_message() == JSON
    with pytest.raises(ValueError, match=r'compression must be None, "deflate" or a trio_ws\.Deflate'):
        async with websocket_pair(compression={"level": 1}):  # type: ignore[arg-type]
            pytest.fail("must not open")  # pragma: no cover


# --- negotiation, each setting, both roles ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "offer", "response", "send_bits", "receive_bits"),
    [
        (Deflate(), "permessage-deflate", "", 13, 15),  # no client_max_window_bits: cannot limit it
        (Deflate(), BROWSER_OFFER, "client_max_window_bits=13", 13, 13),
        (Deflate(receive_window_bits=15), BROWSER_OFFER, "", 13, 15),
        (
            Deflate(receive_window_bits=14),
            "permessage-deflate; client_max_window_bits=10",
            "client_max_window_bits=10",
            13,
            10,
        ),
        (
            Deflate(send_window_bits=10),
            "permessage-deflate; server_max_window_bits=12",
            "server_max_window_bits=10",
            10,
            15,
        ),
        (
            Deflate(send_window_bits=15),
            "permessage-deflate; server_max_window_bits=9",
            "server_max_window_bits=9",
            9,
            15,
        ),
        (Deflate(send_context_takeover=False), "permessage-deflate", "server_no_context_takeover", 13, 15),
        (Deflate(receive_context_takeover=False), "permessage-deflate", "client_no_context_takeover", 13, 15),
    ],
)
def test_server_negotiation(options: Deflate, offer: str, response: str, send_bits: int, receive_bits: int) -> None:
    extension = PerMessageDeflate(client=False, max_message_size=2**20, options=options)
    assert extension.accept(offer) == response
    assert extension.sender is not None
    assert extension.receiver is not None
    assert extension.sender._window == 2**send_bits
    assert extension.receiver._window == 2**receive_bits


@pytest.mark.parametrize(
    ("options", "offers"),
    [
        (
            Deflate(),
            [
                "permessage-deflate; server_max_window_bits=13; client_max_window_bits",
                "permessage-deflate; client_max_window_bits",
            ],
        ),
        (Deflate(receive_window_bits=15), ["permessage-deflate; client_max_window_bits"]),
        (
            Deflate(receive_window_bits=15, send_context_takeover=False, receive_context_takeover=False),
            ["permessage-deflate; client_max_window_bits; client_no_context_takeover; server_no_context_takeover"],
        ),
    ],
)
def test_client_offers(options: Deflate, offers: list[str]) -> None:
    assert PerMessageDeflate(client=True, max_message_size=2**20, options=options).offers() == offers


@pytest.mark.parametrize(
    ("options", "response", "send", "receive"),
    [
        (Deflate(), "permessage-deflate", (13, False), (15, False)),
        (Deflate(), "permessage-deflate; client_max_window_bits=10", (10, False), (15, False)),
        (Deflate(send_window_bits=9), "permessage-deflate; client_max_window_bits=10", (9, False), (15, False)),
        (Deflate(), "permessage-deflate; server_max_window_bits=9", (13, False), (9, False)),
        (Deflate(), "permessage-deflate; server_no_context_takeover", (13, False), (15, True)),
        (Deflate(), "permessage-deflate; client_no_context_takeover", (13, True), (15, False)),
        (Deflate(send_context_takeover=False), "permessage-deflate", (13, True), (15, False)),
    ],
)
def test_client_adopts_the_response(
    options: Deflate, response: str, send: tuple[int, bool], receive: tuple[int, bool]
) -> None:
    extension = PerMessageDeflate(client=True, max_message_size=2**20, options=options)
    extension.finalize(response)
    assert extension.sender is not None
    assert extension.receiver is not None
    assert (extension.sender._window, extension.sender._reset) == (2 ** send[0], send[1])
    assert (extension.receiver._window, extension.receiver._reset) == (2 ** receive[0], receive[1])


# --- against wsproto, a real peer ---------------------------------------------------------

# (keyword arguments: a wsproto extension keeps its connection's state, so each test makes its own)
WSPROTO_OFFERS: list[dict[str, object]] = [
    {},
    {"client_max_window_bits": 9, "server_max_window_bits": 10},
    {"client_no_context_takeover": True, "server_no_context_takeover": True},
]
OPTIONS = [
    Deflate(),
    Deflate(send_window_bits=15, receive_window_bits=15, mem_level=9, level=1),
    Deflate(send_window_bits=9, receive_window_bits=9, send_context_takeover=False, receive_context_takeover=False),
]
MIXED = [JSON, os.urandom(3000), JSON + b"!", b"", os.urandom(50), JSON * 30, "h\u00e9llo " * 100, JSON]


async def wsproto_echo_of(stream: trio.SocketStream, connection: WSConnection, message: object) -> object:
    """Send ``message`` through wsproto (which compresses every message); the echo."""
    await stream.send_all(connection.send(Message(data=message)))
    pieces: list[object] = []
    while True:
        for event in connection.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                pieces.append(event.data)
                if event.message_finished:
                    return type(pieces[0])().join(pieces)  # type: ignore[attr-defined]
        connection.receive_data(await stream.receive_some(65536))


@pytest.mark.parametrize("offer", WSPROTO_OFFERS, ids=["default", "windows", "no-context"])
@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "w15", "w9-no-context"])
async def test_our_server_with_a_wsproto_client(
    nursery: trio.Nursery, options: Deflate, offer: dict[str, object]
) -> None:
    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    server = await nursery.start(partial(serve_websocket, echo, HOST, 0, None, compression=options))
    stream = await trio.open_tcp_stream(HOST, server.port)
    async with stream:
        client = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="localhost", target="/", extensions=[WsprotoDeflate(**offer)])))
        accepted = None
        while accepted is None:
            client.receive_data(await stream.receive_some(65536))
            accepted = next((e for e in client.events() if isinstance(e, AcceptConnection)), None)
        assert accepted.extensions
        for message in MIXED:
            assert await wsproto_echo_of(stream, client, message) == message
        await stream.send_all(client.send(CloseConnection(code=1000)))


@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "w15", "w9-no-context"])
async def test_our_client_with_a_wsproto_server(nursery: trio.Nursery, options: Deflate) -> None:
    async def wsproto_echo(stream: trio.SocketStream) -> None:
        peer = WSConnection(ConnectionType.SERVER)
        pieces: list[object] = []
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            peer.receive_data(data)
            for event in peer.events():
                if isinstance(event, Request):
                    await stream.send_all(peer.send(AcceptConnection(extensions=[WsprotoDeflate()])))
                elif isinstance(event, (TextMessage, BytesMessage)):
                    pieces.append(event.data)
                    if event.message_finished:
                        whole = type(pieces[0])().join(pieces)  # type: ignore[arg-type]
                        pieces.clear()
                        await stream.send_all(peer.send(Message(data=whole)))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(peer.send(event.response()))
                    return

    listeners = await nursery.start(partial(trio.serve_tcp, wsproto_echo, 0, host=HOST))
    port = listeners[0].socket.getsockname()[1]
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False, compression=options)
    assert ws.extensions.startswith("permessage-deflate")
    for message in MIXED:
        await ws.send_message(message)
        assert await ws.get_message() == message
    await ws.aclose()


# --- zlib objects made when needed, dropped when idle ---------------------------------------


async def test_an_isolated_message_leaves_no_zlib_object() -> None:
    async with websocket_pair(compression="deflate") as (client, server):
        sender = client._protocol._deflate.sender  # type: ignore[union-attr]
        receiver = server._protocol._deflate.receiver  # type: ignore[union-attr]
        assert sender is not None
        assert receiver is not None
        assert not sender.live
        assert not receiver.live
        await client.send_message(JSON)
        assert await server.get_message() == JSON
        # The first message of a direction is isolated: only its bytes are kept.
        assert not sender.live
        assert not receiver.live
        assert sender.history_size == receiver.history_size == len(JSON)


async def test_a_busy_direction_keeps_its_object_until_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window, "IDLE", 3600.0)
    async with websocket_pair(compression="deflate", message_queue_size=10) as (client, server):
        sender = client._protocol._deflate.sender  # type: ignore[union-attr]
        assert sender is not None
        for _ in range(3):
            await client.send_message(JSON)
        assert sender.live  # (the 2nd and 3rd came within IDLE of the one before)
        for _ in range(3):
            assert await server.get_message() == JSON
        monkeypatch.setattr(window, "IDLE", 0.0)
        # Any message's end sweeps the directions unused for IDLE.
        await server.send_message(JSON)
        assert not sender.live
        await client.send_message(JSON)  # made again from the history: the peer decodes it
        assert await server.get_message() == JSON
    assert client._protocol._deflate is not None
    assert client._protocol._deflate.sender is None  # closing dropped everything


async def test_no_context_takeover_keeps_nothing() -> None:
    options = Deflate(send_context_takeover=False, receive_context_takeover=False)
    async with websocket_pair(compression=options, message_queue_size=10) as (client, server):
        for _ in range(3):
            await client.send_message(JSON)
            assert await server.get_message() == JSON
        sender = client._protocol._deflate.sender  # type: ignore[union-attr]
        receiver = server._protocol._deflate.receiver  # type: ignore[union-attr]
        assert sender is not None
        assert receiver is not None
        assert (sender.live, sender.history_size, receiver.live, receiver.history_size) == (False, 0, False, 0)


def test_the_history_is_one_window() -> None:
    compressor = Compressor(9, False, 6, 8)
    for _ in range(4):
        assert compressor.message(JSON * 3) is not None
    assert compressor.history_size == 512


# --- skipping compression where it does not pay -----------------------------------------------


def test_the_guess() -> None:
    assert looks_incompressible(os.urandom(1024))
    assert not looks_incompressible(JSON * 3)
    assert not looks_incompressible(os.urandom(100))  # too short to guess: compressed, then compared
    # ASCII is never guessed incompressible (7 bits a byte at most: deflate gains on it).
    # Here the two samples are the printable characters 32-63 and 64-95, 64 distinct values,
    # which sampling alone would take for random bytes; yet deflate shrinks it to almost nothing.
    printable = bytes(range(32, 127))
    size = 2 * (10 * len(printable) + 32)  # (so that the middle sample starts at character 64)
    ascii_text = (printable * 21)[:size]
    assert len(set(ascii_text[:32] + ascii_text[size // 2 : size // 2 + 32])) == 64
    assert not looks_incompressible(ascii_text)
    compressed = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert len(compressed.compress(ascii_text) + compressed.flush()) < len(ascii_text) // 10
    printable_noise = bytes(printable[b % len(printable)] for b in os.urandom(4096))
    assert not looks_incompressible(printable_noise)
    compressed = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert len(compressed.compress(printable_noise) + compressed.flush()) < len(printable_noise)
    assert looks_incompressible(b"{" + os.urandom(1023))  # (one byte above 127 is enough to sample)


class _Clock:
    """time.monotonic() for _deflate_window, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """A hand-moved clock for the idle sweep, and a sweep list of the test's own."""
    clock = _Clock()
    monkeypatch.setattr(window, "time", clock)
    monkeypatch.setattr(window._SWEEP, "kept", type(window._SWEEP.kept)())
    return clock


def test_a_busy_direction_is_listed_once_and_dropped_within_twice_idle(clock: _Clock) -> None:
    kept = window._SWEEP.kept
    first, second = Compressor(13, False, 6, 5), Compressor(13, False, 6, 5)
    peer_of_first = zlib.decompressobj(-13)

    def send(compressor: Compressor, at: float) -> None:
        clock.now = 100.0 + at
        out = compressor.message(JSON)
        assert out is not None
        if compressor is first:
            assert peer_of_first.decompress(out + b"\x00\x00\xff\xff") == JSON

    send(first, 0.0)
    assert not first.live  # an isolated message: nothing kept
    send(first, 0.1)
    send(second, 0.2)
    send(second, 0.3)
    assert (first.live, second.live) == (True, True)
    assert list(kept) == [id(first), id(second)]
    send(first, 0.9)
    assert list(kept) == [id(first), id(second)]  # a message of a listed direction moves nothing
    # first reaches the front unused for 0.25 s: it goes to the end, not away.
    send(second, 1.15)
    assert first.live
    assert list(kept) == [id(second), id(first)]
    send(second, 2.0)  # second goes to the end too; first, listed at 1.15, stays (unused 1.1 s)
    assert first.live
    assert list(kept) == [id(first), id(second)]
    send(second, 2.2)  # first, unused for 1.3 s, is dropped: between IDLE and twice IDLE
    assert (first.live, second.live) == (False, True)
    assert list(kept) == [id(second)]
    send(first, 2.3)  # made again from its history: the peer's context decodes it


def test_a_listed_direction_that_is_gone_leaves_the_sweep(clock: _Clock) -> None:
    kept = window._SWEEP.kept
    gone, other = Compressor(13, False, 6, 5), Compressor(13, False, 6, 5)
    for at, compressor in ((0.0, gone), (0.1, gone), (0.2, other), (0.3, other)):
        clock.now = 100.0 + at
        assert compressor.message(JSON) is not None
    assert len(kept) == 2
    del gone, compressor  # the connection went, without release(): the weak reference dies
    clock.now = 101.2  # (other is still busy: it stays listed)
    assert other.message(JSON) is not None
    assert list(kept) == [id(other)]


@pytest.mark.parametrize("compressed", [JSON, b"a" * 10_000])
@pytest.mark.parametrize("sent_plain", [os.urandom(4096), os.urandom(60), b""])
def test_a_message_sent_plain_never_enters_the_context(compressed: bytes, sent_plain: bytes) -> None:
    compressor = Compressor(15, False, 6, 8)
    inflater = zlib.decompressobj(-15)
    first = compressor.message(compressed)
    assert first is not None
    assert inflater.decompress(first + b"\x00\x00\xff\xff") == compressed
    assert compressor.message(sent_plain) is None  # the peer sees it uncompressed
    again = compressor.message(compressed)
    assert again is not None
    assert len(again) < len(first)
    assert inflater.decompress(again + b"\x00\x00\xff\xff") == compressed


ROUND_TRIP = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MESSAGES = st.lists(
    st.one_of(
        st.binary(max_size=600),  # random: mostly sent plain
        st.builds(lambda n, b: JSON[:n] * b, st.integers(0, len(JSON)), st.integers(1, 40)),
        st.text(max_size=300),
    ),
    min_size=1,
    max_size=25,
)


@ROUND_TRIP
@given(messages=MESSAGES, options=st.sampled_from(OPTIONS), idle=st.sampled_from([0.0, 3600.0]))
def test_round_trips_mixing_compressible_and_not(messages: list[bytes | str], options: Deflate, idle: float) -> None:
    async def main() -> None:
        async with websocket_pair(compression=options, message_queue_size=len(messages)) as (client, server):
            for message in messages:
                await client.send_message(message)
            for message in messages:
                assert await server.get_message() == message

    original = window.IDLE
    window.IDLE = idle  # 0: a zlib object made again for every message; 3600: kept throughout
    try:
        trio.run(main)
    finally:
        window.IDLE = original


@ROUND_TRIP
@given(messages=MESSAGES, bits=st.integers(9, 15))
def test_wsproto_decodes_what_we_send(messages: list[bytes | str], bits: int) -> None:
    """Our compressor's frames, fed to a wsproto server connection that agreed on permessage-deflate."""
    ours = PerMessageDeflate(client=True, max_message_size=2**24, options=Deflate(send_window_bits=bits))
    ours.finalize("permessage-deflate")
    theirs = WsprotoDeflate()
    assert theirs.accept("permessage-deflate") is not None
    peer = Connection(ConnectionType.SERVER, extensions=[theirs])
    for message in messages:
        data = message.encode() if isinstance(message, str) else message
        compressed = ours.deflate(data)
        opcode = 0x1 if isinstance(message, str) else 0x2
        if compressed is None:
            peer.receive_data(frame(opcode, data, mask=True))
        else:
            peer.receive_data(frame(opcode, compressed, mask=True, rsv1=True))
        events = list(peer.events())
        assert [type(event) for event in events] == [TextMessage if isinstance(message, str) else BytesMessage]
        assert events[0].data == message


# --- the examples of docs/compression.md, as written ------------------------------------------


@pytest.mark.parametrize(("code", "expected"), doc_examples("compression.md"))
def test_the_examples_of_compression_md(monkeypatch: pytest.MonkeyPatch, code: str, expected: str | None) -> None:
    run_doc_example(monkeypatch, "compression.md", code, expected)
