"""RFC 6455 sections 4-7 as trio_ws implements them: the Sans-I/O protocol, bytes in, events and bytes out.

Every test here is synchronous and drives ``ServerProtocol`` and
``ClientProtocol`` directly: ``receive_data()`` and ``next_event()`` for what
the peer sends, ``send_data()``, ``ping()``, ``pong()``, ``close()``,
``fail()``, ``abort()``, ``connection_lost()`` for what the application does,
``data_to_send()`` / ``outgoing`` for the bytes the protocol decided on by
itself, ``state``, ``ending`` and ``close_reason`` for where it stands.

A protocol gets to OPEN through a real opening handshake with the other
role's protocol (``open_pair``); frames the test wants to be exact or invalid
are built by hand (``tests.test_frames.raw_frame``), masked when a client
sends them.  The sections follow the RFC; the last one checks the state
table (``_protocol._NEXT``) itself: every transition it lists happens, and no
other does.
"""

# mypy: disable-error-code="comparison-overlap"
# (mypy narrows ``protocol.state`` after one check and does not see that the next call changes it.)

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from trio_ws._errors import ConnectionClosed, ConnectionRejected, HandshakeError
from trio_ws._frames import CONTINUATION, OP_CLOSE, OP_PING, OP_PONG, FrameReader
from trio_ws._handshake import HTTPRequest, UpgradeRequest
from trio_ws._protocol import (
    _FRAMES_PER_STEP,
    _NEXT,
    BINARY,
    CLOSE,
    MESSAGE,
    PING,
    PONG,
    TEXT,
    VIOLATION,
    YIELD,
    ClientProtocol,
    Ending,
    Protocol,
    ServerProtocol,
    State,
    _Input,
)

from .test_frames import RSV1, RSV2, join_messages, raw_frame, read_all

Event = tuple[int, object]
Role = Literal["server", "client"]
ROLES: list[Role] = ["server", "client"]
BIG = 2**20  # the default max_message_size


# --- helpers -----------------------------------------------------------------------------------


def make_client(
    *, compression: str | None = None, max_message_size: int = BIG, subprotocols: list[str] | None = None
) -> ClientProtocol:
    return ClientProtocol(
        host="example.com",
        target="/chat?room=1",
        subprotocols=subprotocols or [],
        extra_headers=[],
        max_message_size=max_message_size,
        compression=compression,
    )


def make_server(*, compression: str | None = None, max_message_size: int = BIG) -> ServerProtocol:
    return ServerProtocol(max_message_size=max_message_size, compression=compression)


def events(protocol: Protocol, *, yields: bool = False) -> list[Event]:
    """Every event the bytes received so far make (YIELD left out unless ``yields``)."""
    out: list[Event] = []
    while (event := protocol.next_event()) is not None:
        if yields or event[0] != YIELD:
            out.append(event)
    return out


def feed(protocol: Protocol, data: bytes) -> list[Event]:
    protocol.receive_data(data)
    return events(protocol)


def deliver(sender: Protocol, receiver: Protocol) -> list[Event]:
    """What ``sender`` queued goes to ``receiver``; the events it makes there."""
    return feed(receiver, sender.data_to_send())


def open_pair(
    *,
    client_compression: str | None = None,
    server_compression: str | None = None,
    max_message_size: int = BIG,
) -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a server, OPEN through a real opening handshake between them."""
    client = make_client(compression=client_compression, max_message_size=max_message_size)
    server = make_server(compression=server_compression, max_message_size=max_message_size)
    assert deliver(client, server) == []
    assert server.state is State.REQUESTED
    server.accept(None, None)
    assert deliver(server, client) == []
    assert (client.state, server.state) == (State.OPEN, State.OPEN)
    return client, server


def open_role(role: Role, *, max_message_size: int = BIG, compression: str | None = None) -> tuple[Protocol, Protocol]:
    """``(protocol, peer)``: an OPEN protocol of ``role`` and the other side of its handshake."""
    client, server = open_pair(
        client_compression=compression, server_compression=compression, max_message_size=max_message_size
    )
    return (server, client) if role == "server" else (client, server)


def peer_frame(protocol: Protocol, opcode: int, payload: bytes = b"", **kwargs: object) -> bytes:
    """A frame as ``protocol``'s peer would send it: masked to a server, unmasked to a client."""
    return raw_frame(opcode, payload, mask=not protocol.client, **kwargs)  # type: ignore[arg-type]


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def written(protocol: Protocol, data: bytes) -> list[tuple[int, bytes]]:
    """The frames ``protocol`` wrote, read by the other role's reader (which checks the masking)."""
    reader = FrameReader(client=not protocol.client, compression=bool(protocol.extensions), max_whole=BIG)
    return join_messages(read_all(reader, data))


def first_bytes(protocol: Protocol, data: bytes) -> list[tuple[int, int]]:
    """``(first byte, second byte)`` of each frame in ``data`` (as written by ``protocol``)."""
    out: list[tuple[int, int]] = []
    position = 0
    while position < len(data):
        first, second = data[position], data[position + 1]
        length, head = second & 0x7F, 2
        if length == 126:
            length, head = struct.unpack_from("!H", data, position + 2)[0], 4
        elif length == 127:
            length, head = struct.unpack_from("!Q", data, position + 2)[0], 10
        head += 4 if second & 0x80 else 0
        out.append((first, second))
        position += head + length
    assert position == len(data)
    return out


def compress(data: bytes, compressor: zlib._Compress | None = None) -> bytes:
    """A message compressed as permessage-deflate does (RFC 7692 7.2.1), with an optional shared context."""
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def noise(size: int) -> bytes:
    """Deterministic bytes that do not compress."""
    blocks = (hashlib.sha256(index.to_bytes(4, "big")).digest() for index in range(size // 32 + 1))
    return b"".join(blocks)[:size]


# --- Section 4: the opening handshake ------------------------------------------------------------


def test_4_a_server_and_a_client_open_each_other() -> None:
    """RFC 6455 4.1, 4.2: the client's request, the server's 101; then both are OPEN."""
    client = make_client()
    server = make_server()
    assert client.state is State.CONNECTING
    assert server.state is State.CONNECTING
    request = client.data_to_send()
    assert request.startswith(b"GET /chat?room=1 HTTP/1.1\r\n")
    assert client.data_to_send() == b""  # handed over once
    server.receive_data(request)
    assert server.next_event() is None  # the request is no event: it waits for accept() or respond()
    assert server.state is State.REQUESTED
    assert isinstance(server.request, UpgradeRequest)
    assert server.request.target == "/chat?room=1"
    assert server.request.host == "example.com"
    assert server.ending is Ending.NOT_YET
    server.accept(None, [(b"X-Served-By", b"test")])
    assert server.state is State.OPEN
    response = server.data_to_send()
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"X-Served-By: test\r\n" in response
    assert feed(client, response) == []
    assert client.state is State.OPEN
    assert (b"x-served-by", b"test") in client.headers
    assert client.close_reason is None
    assert server.close_reason is None
    assert client.handshake_error is None
    assert server.handshake_error is None
    assert client.extensions == server.extensions == ""


def test_4_a_request_in_pieces() -> None:
    client, server = make_client(), make_server()
    request = client.data_to_send()
    for index in range(len(request) - 1):
        server.receive_data(request[index : index + 1])
        assert server.state is State.CONNECTING
    server.receive_data(request[-1:])
    assert server.state is State.REQUESTED


def test_4_subprotocol_negotiation() -> None:
    """RFC 6455 4.2.2: the server picks one of the client's subprotocols, or none."""
    client = make_client(subprotocols=["chat.v2", "chat.v1"])
    server = make_server()
    deliver(client, server)
    assert isinstance(server.request, UpgradeRequest)
    assert server.request.subprotocols == ["chat.v2", "chat.v1"]
    with pytest.raises(ValueError, match="not proposed"):
        server.accept("chat.v3", None)
    assert server.state is State.REQUESTED  # nothing happened
    server.accept("chat.v1", None)
    deliver(server, client)
    assert client.subprotocol == server.subprotocol == "chat.v1"


def test_4_frames_right_behind_the_request_are_read_after_accept() -> None:
    """A client that does not wait for the 101 (RFC 6455 4.1 says it must): its early frames are not lost."""
    client, server = make_client(), make_server()
    server.receive_data(client.data_to_send() + raw_frame(TEXT, b"early"))
    assert server.state is State.REQUESTED
    assert server.next_event() is None
    server.accept(None, None)
    assert events(server) == [(MESSAGE, "early")]


def test_4_frames_right_behind_the_101_are_read_by_the_client() -> None:
    client, server = make_client(), make_server()
    deliver(client, server)
    server.accept(None, None)
    data = server.data_to_send() + server.send_data(TEXT, b"welcome")
    assert feed(client, data) == [(MESSAGE, "welcome")]


def test_4_bytes_fed_to_a_server_in_requested_are_not_parsed() -> None:
    """REQUESTED does not read (``state.reading`` is false): the caller reads again after accept()."""
    client, server = make_client(), make_server()
    deliver(client, server)
    assert not State.REQUESTED.reading
    assert feed(server, raw_frame(OP_PING, b"p")) == []
    assert server.state is State.REQUESTED


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(UPGRADE + b"\r\n", 400, id="no version"),
        pytest.param(UPGRADE + b"Sec-WebSocket-Version: 8\r\n\r\n", 426, id="version 8"),
        pytest.param(UPGRADE.replace(b"GET", b"POST") + b"Sec-WebSocket-Version: 13\r\n\r\n", 400, id="POST"),
        pytest.param(
            UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive") + b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
            id="no Connection: Upgrade",
        ),
        pytest.param(
            UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short") + b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
            id="bad key",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000, 431, id="head too large"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n", 400, id="not HTTP (TLS)"),
    ],
)
def test_4_bad_requests_are_refused_with_an_http_answer(request_bytes: bytes, status: int) -> None:
    """RFC 6455 4.2.1, 4.4: a request that is not a valid upgrade gets an HTTP error; no WebSocket."""
    server = make_server()
    assert feed(server, request_bytes) == []
    assert server.state is State.REFUSED
    assert isinstance(server.handshake_error, HandshakeError)
    assert server.close_reason is not None
    assert server.close_reason.code == 1006
    assert server.outgoing  # queued, for the caller to write
    answer = server.data_to_send()
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close\r\n" in answer
    if status == 426:
        assert b"sec-websocket-version: 13\r\n" in answer  # the version we speak
    assert server.ending is Ending.LINGER  # send FIN, let the client read the answer
    with pytest.raises(ConnectionClosed):
        server.send_data(TEXT, b"no")


def test_4_respond_rejects_an_upgrade() -> None:
    """The application refuses a valid upgrade with an HTTP response of its own."""
    client, server = make_client(), make_server()
    deliver(client, server)
    server.respond(403, [(b"Sec-WebSocket-Accept", b"dropped"), (b"X-Why", b"banned")], b"go away")
    assert server.state is State.REFUSED
    assert server.handshake_error is None  # not a failure: a decision
    assert server.close_reason is not None
    assert server.close_reason.code == 1006
    answer = server.data_to_send()
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"Sec-WebSocket-Accept" not in answer  # a rejection carries no handshake header
    assert b"X-Why: banned\r\n" in answer
    assert answer.endswith(b"\r\n\r\ngo away")
    assert server.ending is Ending.LINGER
    with pytest.raises(ConnectionClosed):
        server.accept(None, None)
    with pytest.raises(ConnectionClosed):
        server.respond(404, None, b"")
    # The client: REFUSED, with the response as its error.
    assert feed(client, answer) == []
    assert client.state is State.REFUSED
    assert isinstance(client.handshake_error, ConnectionRejected)
    assert client.handshake_error.status_code == 403
    assert client.handshake_error.body == b"go away"
    assert (b"x-why", b"banned") in client.handshake_error.headers
    assert client.close_reason is not None
    assert client.close_reason.code == 1006
    assert client.ending is Ending.CLOSE


def test_4_respond_answers_plain_http() -> None:
    """A plain HTTP request on a WebSocket port: the application answers it (no upgrade)."""
    server = make_server()
    feed(server, b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert server.state is State.REQUESTED
    assert isinstance(server.request, HTTPRequest)
    assert (server.request.method, server.request.path, server.request.body) == ("POST", "/form", b"abc")
    with pytest.raises(RuntimeError, match="plain HTTP"):
        server.accept(None, None)
    server.respond(200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"999")], b"hi")
    answer = server.data_to_send()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 2\r\n" in answer  # ours, not the caller's
    assert b"999" not in answer
    assert answer.endswith(b"hi")
    assert server.state is State.REFUSED
    # HEAD: the same head, no body.
    server = make_server()
    feed(server, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    server.respond(200, None, b"body")
    assert server.data_to_send() == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"


def test_4_respond_before_the_request() -> None:
    """A server under load may answer 503 before reading the request."""
    server = make_server()
    server.respond(503, None, b"busy")
    assert server.state is State.REFUSED
    assert server.data_to_send().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


def test_4_accept_needs_a_request() -> None:
    server = make_server()
    with pytest.raises(RuntimeError):
        server.accept(None, None)
    _, server = open_pair()
    with pytest.raises(RuntimeError):
        server.accept(None, None)
    with pytest.raises(RuntimeError):
        server.respond(403, None, b"")


def _response_101(client: ClientProtocol) -> bytes:
    server = make_server()
    feed(server, client.data_to_send())
    server.accept(None, None)
    return server.data_to_send()


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        pytest.param(lambda r: r.replace(b"Sec-WebSocket-Accept: ", b"Sec-WebSocket-Accept: x"), "accept", id="accept"),
        pytest.param(lambda r: r.replace(b"Upgrade: websocket\r\n", b""), "Upgrade", id="no Upgrade"),
        pytest.param(lambda r: r.replace(b"Connection: Upgrade", b"Connection: close"), "Connection", id="Connection"),
        pytest.param(
            lambda r: r.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n"), "subprotocol", id="protocol"
        ),
        pytest.param(
            lambda r: r.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
            "extension",
            id="extension not offered",
        ),
        pytest.param(lambda r: b"HTTP/1.1 101 Switching\r\nbroken header\r\n\r\n", "malformed", id="malformed"),
    ],
)
def test_4_a_bad_101_refuses_the_client(edit: Callable[[bytes], bytes], words: str) -> None:
    """RFC 6455 4.1: a client fails the connection if the server's 101 does not check out."""
    client = make_client()
    response = edit(_response_101(client))
    assert feed(client, response) == []
    assert client.state is State.REFUSED
    assert isinstance(client.handshake_error, HandshakeError)
    assert not isinstance(client.handshake_error, ConnectionRejected)
    assert words.lower() in str(client.handshake_error).lower()
    assert client.close_reason is not None
    assert client.close_reason.code == 1006
    assert client.ending is Ending.CLOSE
    with pytest.raises(ConnectionClosed):
        client.send_data(TEXT, b"x")


def test_4_eof_during_the_opening_handshake() -> None:
    """The peer closes TCP before the handshake has an outcome: REFUSED (or ABORTED once requested)."""
    server = make_server()
    assert feed(server, b"") == []
    assert server.state is State.REFUSED
    assert isinstance(server.handshake_error, HandshakeError)
    assert server.data_to_send() == b""  # nobody to answer
    # A request cut short: h11 words what is missing.
    server = make_server()
    feed(server, b"GET / HTTP/1.1\r\nHost: x\r\n")
    feed(server, b"")
    assert server.state is State.REFUSED
    assert "closed" in str(server.handshake_error)
    # After the request, before the answer: the connection is given up.
    client, server = make_client(), make_server()
    deliver(client, server)
    feed(server, b"")
    assert server.state is State.ABORTED
    assert isinstance(server.handshake_error, HandshakeError)
    assert server.close_reason is not None
    assert server.close_reason.code == 1006
    with pytest.raises(ConnectionClosed):
        server.accept(None, None)
    # The client, before the response.
    client = make_client()
    client.data_to_send()
    feed(client, b"")
    assert client.state is State.REFUSED
    assert isinstance(client.handshake_error, HandshakeError)
    assert "closed the connection" in str(client.handshake_error)
    assert client.ending is Ending.CLOSE


# --- Section 5.1 and 5.3: masking -----------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_5_1_a_client_masks_every_frame_and_a_server_none(role: Role) -> None:
    """RFC 6455 5.1: a client masks every frame it sends (5.3: with a fresh key); a server masks none."""
    protocol, peer = open_role(role)
    masked = 0x80 if protocol.client else 0
    data = protocol.send_data(TEXT, b"text") + protocol.send_data(BINARY, b"\x00" * 200)
    data += protocol.ping(b"ping") + protocol.pong(b"pong")
    feed(protocol, peer_frame(protocol, OP_PING, b"auto"))  # the Pong it queues by itself
    data += protocol.data_to_send()
    protocol.close(1000, "bye")
    data += protocol.data_to_send()
    assert [second & 0x80 for _, second in first_bytes(protocol, data)] == [masked] * 6
    assert written(protocol, data) == [
        (TEXT, b"text"),
        (BINARY, b"\x00" * 200),
        (OP_PING, b"ping"),
        (OP_PONG, b"pong"),
        (OP_PONG, b"auto"),
        (OP_CLOSE, b"\x03\xe8bye"),
    ]
    # The peer's protocol reads them all (its reader would fail on the wrong masking).
    assert feed(peer, data) == [
        (MESSAGE, "text"),
        (MESSAGE, b"\x00" * 200),
        (PING, b"ping"),
        (PONG, b"pong"),
        (PONG, b"auto"),
        (CLOSE, (1000, "bye")),
    ]


def test_5_3_the_answers_a_client_queues_are_masked_too() -> None:
    client, _ = open_pair()
    feed(client, raw_frame(OP_CLOSE, close_payload(1001), mask=False))
    assert [second & 0x80 for _, second in first_bytes(client, client.data_to_send())] == [0x80]


# --- Section 5.2, 5.4, 5.6: data ------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_5_6_text_and_binary_messages_both_ways(role: Role) -> None:
    """RFC 6455 5.6: text (UTF-8) and binary messages, at each length encoding's bounds."""
    protocol, peer = open_role(role)
    for size in (0, 1, 125, 126, 65535, 65536, 300_000):
        text = "\u00e9" * (size // 2) + "x" * (size % 2)  # ``size`` bytes of UTF-8
        binary = bytes(range(256)) * (size // 256) + bytes(size % 256)
        data = protocol.send_data(TEXT, text.encode()) + protocol.send_data(BINARY, binary)
        assert feed(peer, data) == [(MESSAGE, text), (MESSAGE, binary)]
        data = peer.send_data(BINARY, binary) + peer.send_data(TEXT, text.encode())
        for index in range(0, len(data), 65_000):  # in pieces, as a transport delivers them
            protocol.receive_data(data[index : index + 65_000])
        assert events(protocol) == [(MESSAGE, binary), (MESSAGE, text)]


@pytest.mark.parametrize("role", ROLES)
def test_5_4_a_fragmented_message_with_control_frames_between(role: Role) -> None:
    """RFC 6455 5.4: fragments in order; control frames may come between them."""
    protocol, _ = open_role(role)
    text = "fr\u00e4gmented \U0001f600".encode()
    data = (
        peer_frame(protocol, TEXT, text[:3], fin=False)
        + peer_frame(protocol, OP_PING, b"1")
        + peer_frame(protocol, CONTINUATION, text[3:13], fin=False)
        + peer_frame(protocol, OP_PONG, b"2")
        + peer_frame(protocol, CONTINUATION, b"", fin=False)
        + peer_frame(protocol, CONTINUATION, text[13:])
        + peer_frame(protocol, BINARY, b"\x01", fin=False)
        + peer_frame(protocol, CONTINUATION, b"\x02")
    )
    expected: list[Event] = [(PING, b"1"), (PONG, b"2"), (MESSAGE, text.decode()), (MESSAGE, b"\x01\x02")]
    assert feed(protocol, data) == expected
    # Byte by byte: the same events.
    protocol, _ = open_role(role)
    got: list[Event] = []
    for index in range(len(data)):
        got += feed(protocol, data[index : index + 1])
    assert got == expected


# --- Section 5.5.2, 5.5.3: Ping and Pong ----------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_5_5_2_a_ping_is_answered_with_a_pong(role: Role) -> None:
    """RFC 6455 5.5.2: a Pong with the Ping's payload, queued by the protocol itself."""
    protocol, peer = open_role(role)
    assert feed(protocol, peer_frame(protocol, OP_PING, b"are you there?")) == [(PING, b"are you there?")]
    assert len(protocol.outgoing) == 1  # queued, not written: the caller writes it
    answer = protocol.data_to_send()
    assert written(protocol, answer) == [(OP_PONG, b"are you there?")]
    assert protocol.outgoing == []
    assert feed(peer, answer) == [(PONG, b"are you there?")]
    # An empty ping, and a full one (125 bytes).
    feed(protocol, peer_frame(protocol, OP_PING) + peer_frame(protocol, OP_PING, b"x" * 125))
    assert written(protocol, protocol.data_to_send()) == [(OP_PONG, b""), (OP_PONG, b"x" * 125)]


@pytest.mark.parametrize("role", ROLES)
def test_5_5_ping_and_pong_calls(role: Role) -> None:
    protocol, peer = open_role(role)
    assert feed(peer, protocol.ping(b"p")) == [(PING, b"p")]
    assert written(peer, peer.data_to_send()) == [(OP_PONG, b"p")]
    assert feed(peer, protocol.pong(b"unsolicited")) == [(PONG, b"unsolicited")]  # RFC 6455 5.5.3
    assert peer.data_to_send() == b""  # a Pong is not answered


@pytest.mark.parametrize("role", ROLES)
def test_5_5_2_queued_bytes_leave_first(role: Role) -> None:
    """Bytes the protocol queued go out before what a later call returns: the Pong before the message."""
    protocol, _ = open_role(role)
    feed(protocol, peer_frame(protocol, OP_PING, b"1"))
    data = protocol.send_data(TEXT, b"after the pong")
    assert protocol.outgoing == []
    assert written(protocol, data) == [(OP_PONG, b"1"), (TEXT, b"after the pong")]
    feed(protocol, peer_frame(protocol, OP_PING, b"2"))
    assert written(protocol, protocol.ping(b"3")) == [(OP_PONG, b"2"), (OP_PING, b"3")]


# --- Section 5 and 8.1: violations (1002, 1007) -----------------------------------------------------

# (id, frames as the peer sends them (mask: does the peer mask?), close code)
VIOLATIONS: list[tuple[str, Callable[[bool], bytes], int]] = [
    ("reserved data opcode", lambda m: raw_frame(0x3, b"x", mask=m), 1002),
    ("reserved control opcode", lambda m: raw_frame(0xB, b"", mask=m), 1002),
    ("RSV1 without an extension", lambda m: raw_frame(TEXT, b"x", rsv=RSV1, mask=m), 1002),
    ("RSV2", lambda m: raw_frame(BINARY, b"x", rsv=RSV2, mask=m), 1002),
    ("wrong masking", lambda m: raw_frame(TEXT, b"x", mask=not m), 1002),
    ("fragmented ping", lambda m: raw_frame(OP_PING, b"x", fin=False, mask=m), 1002),
    ("ping of 126 bytes", lambda m: raw_frame(OP_PING, b"x" * 126, mask=m), 1002),
    ("continuation without a message", lambda m: raw_frame(CONTINUATION, b"x", mask=m), 1002),
    (
        "new message inside a fragmented one",
        lambda m: raw_frame(TEXT, b"a", fin=False, mask=m) + raw_frame(BINARY, b"b", mask=m),
        1002,
    ),
    ("16-bit length for 5 bytes", lambda m: raw_frame(BINARY, b"x" * 5, width=2, mask=m), 1002),
    ("64-bit length for 200 bytes", lambda m: raw_frame(TEXT, b"x" * 200, width=8, mask=m), 1002),
    ("64-bit length with the top bit set", lambda m: raw_frame(BINARY, b"", length=1 << 63, mask=m), 1002),
    ("Close with a 1-byte payload", lambda m: raw_frame(OP_CLOSE, b"\x03", mask=m), 1002),
    ("Close with code 1005", lambda m: raw_frame(OP_CLOSE, close_payload(1005), mask=m), 1002),
    ("invalid UTF-8", lambda m: raw_frame(TEXT, b"caf\xe9", mask=m), 1007),
    (
        "invalid UTF-8 in a fragment",
        lambda m: raw_frame(TEXT, b"ok", fin=False, mask=m) + raw_frame(CONTINUATION, b"\xed\xa0\x80", mask=m),
        1007,
    ),
    ("text ends inside a character", lambda m: raw_frame(TEXT, "\u20ac".encode()[:2], mask=m), 1007),
    ("Close reason not UTF-8", lambda m: raw_frame(OP_CLOSE, close_payload(1000, b"\xff"), mask=m), 1007),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("frames", "code"), [pytest.param(f, c, id=name) for name, f, c in VIOLATIONS])
def test_5_violations(role: Role, frames: Callable[[bool], bytes], code: int) -> None:
    """RFC 6455 7.1.7: _Fail the WebSocket Connection_ with 1002 (protocol) or 1007 (data, 8.1).

    The protocol reports the violation, reads nothing more, still lets the
    application send (answers to what came before), then ``fail()`` queues
    the Close with the violation's code.
    """
    protocol, _ = open_role(role)
    before = peer_frame(protocol, TEXT, b"before")
    after = peer_frame(protocol, TEXT, b"after") + peer_frame(protocol, OP_PING, b"p")
    got = feed(protocol, before + frames(not protocol.client) + after)
    assert got[:1] == [(MESSAGE, "before")]
    assert len(got) == 2
    kind, payload = got[1]
    assert isinstance(payload, tuple)
    got_code, reason = payload
    assert (kind, got_code) == (VIOLATION, code)
    assert reason
    assert protocol.state is State.VIOLATED
    assert protocol.close_reason is not None
    assert (protocol.close_reason.code, protocol.close_reason.reason) == (code, reason)
    assert protocol.outgoing == []  # nothing decided yet: the caller calls fail() when ready
    assert protocol.ending is Ending.NOT_YET
    # Nothing more is parsed, now or later.
    assert feed(protocol, peer_frame(protocol, TEXT, b"later")) == []
    # The application may still answer what came before the fault.
    reply = protocol.send_data(TEXT, b"reply") + protocol.ping(b"still")
    protocol.fail()
    assert protocol.state is State.FAILED
    closing = protocol.data_to_send()
    assert written(protocol, reply + closing) == [
        (TEXT, b"reply"),
        (OP_PING, b"still"),
        (OP_CLOSE, close_payload(code, reason.encode()[:123])),
    ]
    assert protocol.ending is (Ending.DRAIN if protocol.client else Ending.LINGER)
    with pytest.raises(ConnectionClosed) as info:
        protocol.send_data(TEXT, b"too late")
    assert info.value.reason is protocol.close_reason
    protocol.fail()  # twice: nothing more
    assert protocol.data_to_send() == b""
    protocol.connection_lost()
    assert protocol.state is State.FAILED
    assert not protocol.close_reason.was_clean


@pytest.mark.parametrize("role", ROLES)
def test_8_1_invalid_utf8_fails_before_the_frame_ends(role: Role) -> None:
    """RFC 6455 8.1: invalid UTF-8 fails the connection as soon as it is seen, not at the end of the frame."""
    protocol, _ = open_role(role)
    frame = peer_frame(protocol, TEXT, b"valid " + b"\xc0" + b"x" * 993)  # 1000 bytes of text
    header = 8 if not protocol.client else 4
    assert feed(protocol, frame[: header + 3]) == []  # "val": nothing yet
    got = feed(protocol, frame[header + 3 : header + 7])  # "id \xc0"
    assert [event[0] for event in got] == [VIOLATION]
    assert protocol.close_reason is not None
    assert protocol.close_reason.code == 1007


@pytest.mark.parametrize("role", ROLES)
def test_5_2_wants_says_how_much_of_a_binary_frame_is_missing(role: Role) -> None:
    """A binary frame (up to 1 MiB) is taken whole: ``next_read()``'s ``wants`` tells the
    caller how much more to read."""
    protocol, _ = open_role(role)
    assert protocol.next_read()[0] == 0
    frame = peer_frame(protocol, BINARY, b"b" * 5000)
    assert feed(protocol, frame[:1000]) == []
    assert protocol.next_read()[0] == len(frame) - 1000
    assert feed(protocol, frame[1000:]) == [(MESSAGE, b"b" * 5000)]
    assert protocol.next_read()[0] == 0


@pytest.mark.parametrize("role", ROLES)
def test_5_close_after_a_violation_sends_the_violations_code(role: Role) -> None:
    protocol, _ = open_role(role)
    feed(protocol, peer_frame(protocol, 0x4))
    protocol.close(1000, "application says bye")
    assert protocol.state is State.FAILED
    assert written(protocol, protocol.data_to_send())[0][1][:2] == close_payload(1002)
    assert protocol.close_reason is not None
    assert protocol.close_reason.code == 1002


@pytest.mark.parametrize("role", ROLES)
def test_5_a_violation_after_our_close_fails_at_once(role: Role) -> None:
    """Our Close is out, the peer breaks a rule: FAILED, nothing more read, nothing more queued."""
    protocol, _ = open_role(role)
    protocol.close(1000, None)
    protocol.data_to_send()
    got = feed(protocol, peer_frame(protocol, 0x3) + peer_frame(protocol, OP_CLOSE, close_payload(1000)))
    assert got == [(VIOLATION, (1002, "reserved data opcode 0x3"))]
    assert protocol.state is State.FAILED
    assert protocol.outgoing == []
    assert protocol.close_reason is not None
    assert protocol.close_reason.code == 1000  # the first reason wins
    assert protocol.ending is (Ending.DRAIN if protocol.client else Ending.LINGER)


# --- Section 10.4 and 7.4.1: 1009, a message too big --------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_1009_closes_at_once_and_reads_on_for_the_peers_close(role: Role) -> None:
    """A message over max_message_size: Close(1009) queued at once; later data dropped; the peer's Close completes."""
    protocol, _ = open_role(role, max_message_size=10)
    got = feed(protocol, peer_frame(protocol, BINARY, b"x" * 11))
    assert got == [(VIOLATION, (1009, "message is larger than max_message_size (10 bytes)"))]
    assert protocol.state is State.CLOSE_SENT
    assert written(protocol, protocol.data_to_send()) == [
        (OP_CLOSE, close_payload(1009, b"message is larger than max_message_size (10 bytes)"))
    ]
    assert protocol.close_reason is not None
    assert protocol.close_reason.code == 1009
    with pytest.raises(ConnectionClosed):
        protocol.send_data(TEXT, b"x")
    # Data after our Close is parsed (to find the peer's Close) and dropped; a Ping is seen, not answered.
    later = (
        peer_frame(protocol, TEXT, b"dropped")
        + peer_frame(protocol, OP_PING, b"p")
        + peer_frame(protocol, BINARY, b"a", fin=False)
        + peer_frame(protocol, CONTINUATION, b"b")
    )
    assert feed(protocol, later) == [(PING, b"p")]
    assert protocol.outgoing == []
    assert feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(1009))) == [(CLOSE, (1009, ""))]
    assert protocol.state is State.CLOSED
    assert protocol.outgoing == []  # our Close went already
    assert protocol.ending is (Ending.DRAIN if protocol.client else Ending.CLOSE)
    protocol.connection_lost()
    assert protocol.close_reason.code == 1009
    assert protocol.close_reason.was_clean


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_1009_fails_a_fragmented_message_at_the_frame_that_passes_the_limit(role: Role, opcode: int) -> None:
    protocol, _ = open_role(role, max_message_size=10)
    got = feed(protocol, peer_frame(protocol, opcode, b"x" * 6, fin=False))
    assert got == []
    got = feed(protocol, peer_frame(protocol, CONTINUATION, b"x" * 5, fin=False))
    assert [event[0] for event in got] == [VIOLATION]
    assert protocol.state is State.CLOSE_SENT
    assert protocol.outgoing  # the Close, before the message ends
    # The rest of the message, however long, is dropped; the next one too.
    rest = peer_frame(protocol, CONTINUATION, b"\xff" * 1000) + peer_frame(protocol, TEXT, b"next")
    assert feed(protocol, rest) == []
    assert feed(protocol, peer_frame(protocol, OP_CLOSE)) == [(CLOSE, (1005, ""))]
    assert protocol.state is State.CLOSED


@pytest.mark.parametrize("role", ROLES)
def test_1009_counts_characters_for_text(role: Role) -> None:
    """max_message_size counts what ``len()`` counts: 10 two-byte characters fit a limit of 10."""
    protocol, _ = open_role(role, max_message_size=10)
    assert feed(protocol, peer_frame(protocol, TEXT, ("\u00e9" * 10).encode())) == [(MESSAGE, "\u00e9" * 10)]
    assert feed(protocol, peer_frame(protocol, BINARY, b"b" * 10)) == [(MESSAGE, b"b" * 10)]
    assert [kind for kind, _ in feed(protocol, peer_frame(protocol, TEXT, ("\u00e9" * 11).encode()))] == [VIOLATION]


@pytest.mark.parametrize("role", ROLES)
def test_1009_after_our_close_sends_nothing_more(role: Role) -> None:
    protocol, _ = open_role(role, max_message_size=10)
    protocol.close(1001, "going away")
    protocol.data_to_send()
    assert [kind for kind, _ in feed(protocol, peer_frame(protocol, BINARY, b"x" * 11))] == [VIOLATION]
    assert protocol.state is State.CLOSE_SENT
    assert protocol.outgoing == []  # one Close only
    assert protocol.close_reason is not None
    assert protocol.close_reason.code == 1001
    assert feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(1001))) == [(CLOSE, (1001, ""))]
    assert protocol.state is State.CLOSED


# --- Section 7: the closing handshake -----------------------------------------------------------------


@pytest.mark.parametrize("initiator", ROLES)
def test_7_the_closing_handshake_started_by_either_side(initiator: Role) -> None:
    """RFC 6455 7.1.2, 5.5.1: a Close each way; the answer echoes the code; 7.1.1: the server closes TCP first."""
    first, second = open_role(initiator)
    first.close(1000, "bye")
    assert first.state is State.CLOSE_SENT
    assert first.ending is Ending.NOT_YET
    assert first.close_reason is not None
    assert (first.close_reason.code, first.close_reason.reason) == (1000, "bye")
    with pytest.raises(ConnectionClosed):
        first.send_data(TEXT, b"no more")
    assert deliver(first, second) == [(CLOSE, (1000, "bye"))]
    assert second.state is State.CLOSED
    assert second.close_reason is not None
    assert (second.close_reason.code, second.close_reason.reason) == (1000, "bye")
    answer = second.data_to_send()
    assert written(second, answer) == [(OP_CLOSE, close_payload(1000, b"bye"))]
    assert second.ending is (Ending.DRAIN if second.client else Ending.CLOSE)
    assert feed(first, answer) == [(CLOSE, (1000, "bye"))]
    assert first.state is State.CLOSED
    assert first.outgoing == []
    assert first.ending is (Ending.DRAIN if first.client else Ending.CLOSE)
    for protocol in (first, second):
        assert not protocol.close_reason.was_clean  # settled when the transport closes
        protocol.connection_lost()
        assert protocol.state is State.CLOSED
        assert protocol.close_reason.was_clean


@pytest.mark.parametrize("role", ROLES)
def test_7_an_empty_close_is_1005_and_answered_with_an_empty_close(role: Role) -> None:
    """RFC 6455 7.1.5: no code in the Close: _The WebSocket Connection Close Code_ is 1005."""
    protocol, _ = open_role(role)
    assert feed(protocol, peer_frame(protocol, OP_CLOSE)) == [(CLOSE, (1005, ""))]
    assert written(protocol, protocol.data_to_send()) == [(OP_CLOSE, b"")]
    assert protocol.close_reason is not None
    assert (protocol.close_reason.code, protocol.close_reason.reason) == (1005, None)


@pytest.mark.parametrize("role", ROLES)
def test_7_nothing_after_the_peers_close_is_read(role: Role) -> None:
    """RFC 6455 5.5.1: the Close is the last frame an endpoint sends."""
    protocol, _ = open_role(role)
    data = peer_frame(protocol, OP_CLOSE, close_payload(1000)) + peer_frame(protocol, TEXT, b"after")
    assert feed(protocol, data + peer_frame(protocol, 0x3)) == [(CLOSE, (1000, ""))]
    assert feed(protocol, peer_frame(protocol, OP_PING)) == []
    assert protocol.state is State.CLOSED


@pytest.mark.parametrize("role", ROLES)
def test_7_close_reason_first_wins(role: Role) -> None:
    # Our Close first: the peer's answer does not replace our reason.
    protocol, _ = open_role(role)
    protocol.close(3000, "ours")
    feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(1001, b"theirs")))
    assert protocol.close_reason is not None
    assert (protocol.close_reason.code, protocol.close_reason.reason) == (3000, "ours")
    # The peer's Close first: close() afterwards changes nothing.
    protocol, _ = open_role(role)
    feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(1001, b"theirs")))
    protocol.data_to_send()
    protocol.close(3000, "ours")
    assert protocol.close_reason is not None
    assert (protocol.close_reason.code, protocol.close_reason.reason) == (1001, "theirs")
    assert protocol.data_to_send() == b""
    # A violation first: EOF and abort() keep its reason.
    protocol, _ = open_role(role)
    feed(protocol, peer_frame(protocol, 0x3))
    protocol.receive_data(b"")
    protocol.abort("later")
    assert protocol.close_reason is not None
    assert protocol.close_reason.code == 1002


@pytest.mark.parametrize("role", ROLES)
def test_7_sending_after_close_raises(role: Role) -> None:
    for how in ("close", "received", "abort", "lost"):
        protocol, _ = open_role(role)
        if how == "close":
            protocol.close(1000, None)
        elif how == "received":
            feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(1000)))
        elif how == "abort":
            protocol.abort("gone")
        else:
            protocol.connection_lost()
        calls: list[tuple[Callable[..., bytes], tuple[object, ...]]] = [
            (protocol.send_data, (TEXT, b"x")),
            (protocol.send_data, (BINARY, b"x")),
            (protocol.ping, (b"",)),
            (protocol.pong, (b"",)),
        ]
        for call, args in calls:
            with pytest.raises(ConnectionClosed) as info:
                call(*args)
            assert info.value.reason is protocol.close_reason
    # And before the handshake completes.
    with pytest.raises(ConnectionClosed):
        make_client().send_data(TEXT, b"x")


@pytest.mark.parametrize("role", ROLES)
def test_7_close_does_nothing_unless_open(role: Role) -> None:
    protocol, _ = open_role(role)
    protocol.close(1000, None)
    protocol.data_to_send()
    protocol.close(1001, None)  # CLOSE_SENT
    assert protocol.data_to_send() == b""
    feed(protocol, peer_frame(protocol, OP_CLOSE))
    protocol.close(1001, None)  # CLOSED
    assert protocol.data_to_send() == b""
    assert protocol.state is State.CLOSED


VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("role", ROLES)
def test_7_4_valid_close_codes_received(role: Role) -> None:
    """RFC 6455 7.4.1, 7.4.2 and the IANA registry (1012-1014): codes a peer may send; the answer echoes them."""
    reason = "r\u00e9ason".encode()
    for code in VALID_CLOSE_CODES:
        protocol, _ = open_role(role)
        assert feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(code, reason))) == [
            (CLOSE, (code, "r\u00e9ason"))
        ]
        assert written(protocol, protocol.data_to_send()) == [(OP_CLOSE, close_payload(code, reason))]


@pytest.mark.parametrize("role", ROLES)
def test_7_4_invalid_close_codes_received(role: Role) -> None:
    """RFC 6455 7.4.1: 1004-1006 and 1015 are never sent; below 1000, unassigned 1xxx-2xxx, above 4999: invalid."""
    for code in INVALID_CLOSE_CODES:
        protocol, _ = open_role(role)
        assert feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(code))) == [
            (VIOLATION, (1002, f"Close frame with an invalid code {code}"))
        ]
        assert protocol.state is State.VIOLATED
        protocol.fail()
        assert written(protocol, protocol.data_to_send())[0][1][:2] == close_payload(1002)


@pytest.mark.parametrize("role", ROLES)
def test_7_4_a_close_reason_of_123_bytes(role: Role) -> None:
    protocol, _ = open_role(role)
    reason = "\u00e9" * 61 + "x"
    assert feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(4000, reason.encode()))) == [
        (CLOSE, (4000, reason))
    ]


# --- Section 7.1.5, 7.1.7: the end of the transport ------------------------------------------------


def _in_state(role: Role, state: State) -> Protocol:
    """An OPEN protocol brought to ``state`` (one of the states reached after OPEN)."""
    protocol, _ = open_role(role)
    if state is State.VIOLATED or state is State.FAILED:
        feed(protocol, peer_frame(protocol, 0x3))
        if state is State.FAILED:
            protocol.fail()
    elif state is State.CLOSE_SENT:
        protocol.close(1000, "ours")
    elif state is State.CLOSED:
        feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(1000)))
    protocol.data_to_send()
    assert protocol.state is state
    return protocol


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("state", "code", "reason"),
    [
        (State.OPEN, 1006, "the peer closed the TCP connection without a Close frame"),
        (State.VIOLATED, 1002, "reserved data opcode 0x3"),  # the first reason wins
        (State.CLOSE_SENT, 1000, "ours"),
    ],
)
def test_7_1_5_eof_before_the_closing_handshake_completes(role: Role, state: State, code: int, reason: str) -> None:
    """RFC 6455 7.1.5: the TCP connection closed without a Close: 1006 (unless a reason was set already)."""
    protocol = _in_state(role, state)
    if state is State.OPEN:
        feed(protocol, peer_frame(protocol, OP_PING))  # a Pong is queued; EOF drops it
    assert feed(protocol, b"") == []
    assert protocol.state is State.ABORTED
    assert protocol.outgoing == []
    assert protocol.close_reason is not None
    assert (protocol.close_reason.code, protocol.close_reason.reason) == (code, reason)
    assert protocol.ending is Ending.CLOSE
    protocol.connection_lost()
    assert not protocol.close_reason.was_clean
    with pytest.raises(ConnectionClosed):
        protocol.send_data(TEXT, b"x")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("state", [State.CLOSED, State.FAILED])
def test_7_1_5_eof_after_the_end_changes_nothing(role: Role, state: State) -> None:
    protocol = _in_state(role, state)
    before = protocol.close_reason
    feed(protocol, b"")
    assert protocol.state is state
    assert protocol.close_reason is before
    protocol.connection_lost()
    assert protocol.state is state
    assert before is not None
    assert before.was_clean == (state is State.CLOSED)


@pytest.mark.parametrize("role", ROLES)
def test_7_abort_gives_the_connection_up(role: Role) -> None:
    protocol, _ = open_role(role)
    feed(protocol, peer_frame(protocol, OP_PING))
    assert protocol.outgoing
    protocol.abort("the write timed out")
    assert protocol.state is State.ABORTED
    assert protocol.outgoing == []  # nothing more can be written
    assert protocol.close_reason is not None
    assert (protocol.close_reason.code, protocol.close_reason.reason) == (1006, "the write timed out")
    assert protocol.ending is Ending.CLOSE
    protocol.abort("again")
    assert protocol.close_reason.reason == "the write timed out"


@pytest.mark.parametrize("role", ROLES)
def test_7_connection_lost_while_open(role: Role) -> None:
    protocol, _ = open_role(role)
    protocol.connection_lost()
    assert protocol.state is State.ABORTED
    assert protocol.close_reason is not None
    assert (protocol.close_reason.code, protocol.close_reason.reason) == (1006, "the connection closed")
    assert not protocol.close_reason.was_clean


# --- Many frames in a row: YIELD --------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_a_flood_of_tiny_fragments_yields_every_few_hundred_frames(role: Role) -> None:
    """3000 one-byte continuation frames make no event; YIELD lets the caller's other tasks run meanwhile."""
    protocol, _ = open_role(role)
    flood = (
        peer_frame(protocol, TEXT, b"<", fin=False)
        + peer_frame(protocol, CONTINUATION, b".", fin=False) * 3000
        + peer_frame(protocol, CONTINUATION, b">")
    )
    protocol.receive_data(flood)
    got = events(protocol, yields=True)
    # 3002 frames: a YIELD after each _FRAMES_PER_STEP, and next_event() goes on where it stopped.
    assert _FRAMES_PER_STEP <= 256  # about 1 ms of tiny frames here: no peer holds trio longer
    assert got == [(YIELD, None)] * (3002 // _FRAMES_PER_STEP) + [(MESSAGE, "<" + "." * 3000 + ">")]


# --- RFC 7692: permessage-deflate -------------------------------------------------------------------


def test_7692_deflate_negotiated_and_used_both_ways() -> None:
    client, server = make_client(compression="deflate"), make_server(compression="deflate")
    request = client.data_to_send()
    assert (
        b"sec-websocket-extensions: permessage-deflate; server_max_window_bits=13; client_max_window_bits, "
        b"permessage-deflate; client_max_window_bits\r\n"
    ) in request
    feed(server, request)
    server.accept(None, None)
    response = server.data_to_send()
    agreed = "permessage-deflate; server_max_window_bits=13; client_max_window_bits=13"
    assert f"Sec-WebSocket-Extensions: {agreed}\r\n".encode() in response
    feed(client, response)
    assert client.extensions == server.extensions == agreed
    text = "compress me, compress me, compress me \u00e9" * 20
    for sender, receiver in ((client, server), (server, client)):
        for message in (text, text.encode(), "", b"", "again " + text):
            payload = message.encode() if isinstance(message, str) else message
            data = sender.send_data(TEXT if isinstance(message, str) else BINARY, payload)
            # RSV1: compressed (an empty message goes as it is: nothing is smaller)
            assert bool(data[0] & 0x40) == bool(payload)
            if len(payload) > 100:
                assert len(data) < len(payload) // 2
            assert feed(receiver, data) == [(MESSAGE, message)]


@pytest.mark.parametrize(("client_wants", "server_wants"), [("deflate", None), (None, "deflate")])
def test_7692_deflate_only_when_both_want_it(client_wants: str | None, server_wants: str | None) -> None:
    client, server = open_pair(client_compression=client_wants, server_compression=server_wants)
    assert client.extensions == server.extensions == ""
    data = client.send_data(TEXT, b"plain" * 50)
    assert not data[0] & 0x40
    assert feed(server, data) == [(MESSAGE, "plain" * 50)]
    # RSV1 is then a violation.
    got = feed(server, raw_frame(TEXT, compress(b"x"), rsv=RSV1))
    assert [event[0] for event in got] == [VIOLATION]


@pytest.mark.parametrize("role", ROLES)
def test_7692_a_compressed_message_in_fragments(role: Role) -> None:
    """RFC 7692 6.1: RSV1 on the first frame only; the fragments' payloads joined make the compressed data."""
    protocol, _ = open_role(role, compression="deflate")
    data = compress(b"fragmented and compressed " * 10)
    frames = (
        peer_frame(protocol, BINARY, data[:5], rsv=RSV1, fin=False)
        + peer_frame(protocol, OP_PING, b"between")
        + peer_frame(protocol, CONTINUATION, data[5:9], fin=False)
        + peer_frame(protocol, CONTINUATION, data[9:])
    )
    assert feed(protocol, frames) == [(PING, b"between"), (MESSAGE, b"fragmented and compressed " * 10)]
    # And an uncompressed message on the same connection.
    assert feed(protocol, peer_frame(protocol, TEXT, b"plain")) == [(MESSAGE, "plain")]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(lambda p: peer_frame(p, OP_PING, b"", rsv=RSV1), id="RSV1 on a ping"),
        pytest.param(
            lambda p: peer_frame(p, TEXT, b"", fin=False) + peer_frame(p, CONTINUATION, b"", rsv=RSV1),
            id="RSV1 on a continuation",
        ),
        pytest.param(lambda p: peer_frame(p, TEXT, b"", rsv=RSV2), id="RSV2"),
    ],
)
def test_7692_rsv_bits_deflate_does_not_define(role: Role, frames: Callable[[Protocol], bytes]) -> None:
    protocol, _ = open_role(role, compression="deflate")
    got = feed(protocol, frames(protocol))
    assert [(kind, payload[0]) for kind, payload in got if isinstance(payload, tuple)] == [(VIOLATION, 1002)]
    assert len(got) == 1


@pytest.mark.parametrize("role", ROLES)
def test_7692_compressed_data_that_does_not_inflate(role: Role) -> None:
    protocol, _ = open_role(role, compression="deflate")
    got = feed(protocol, peer_frame(protocol, BINARY, b"\xff\xff\xff\xff", rsv=RSV1))
    assert got == [(VIOLATION, (1007, "invalid permessage-deflate data"))]
    assert protocol.state is State.VIOLATED


@dataclass
class _CountingInflater:
    """A zlib decompressor that counts what it produces."""

    real: zlib._Decompress
    produced: list[int]

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        out = self.real.decompress(data, max_length)
        self.produced.append(len(out))
        return out

    @property
    def unconsumed_tail(self) -> bytes:
        return self.real.unconsumed_tail


@pytest.fixture
def inflated(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of every piece permessage-deflate inflates during the test."""
    produced: list[int] = []
    real = zlib.decompressobj

    def counting(wbits: int = zlib.MAX_WBITS) -> _CountingInflater:
        return _CountingInflater(real(wbits), produced)

    monkeypatch.setattr(zlib, "decompressobj", counting)  # (the module _deflate calls it through)
    return produced


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
@pytest.mark.parametrize("fragments", [1, 50])
def test_7692_an_inflation_bomb_is_stopped_at_the_limit(
    role: Role, opcode: int, fragments: int, inflated: list[int]
) -> None:
    """10 MB of zeros compress to about 10 kB: refused with 1009 after inflating little more than the limit."""
    limit = 1000
    protocol, _ = open_role(role, compression="deflate", max_message_size=limit)
    bomb = compress(b"0" * 10_000_000)
    assert len(bomb) < 20_000
    size = len(bomb) // fragments + 1
    chunks = [bomb[index : index + size] for index in range(0, len(bomb), size)]
    frames = b"".join(
        peer_frame(
            protocol,
            (opcode if index == 0 else CONTINUATION),
            chunk,
            rsv=RSV1 if index == 0 else 0,
            fin=index == len(chunks) - 1,
        )
        for index, chunk in enumerate(chunks)
    )
    got = feed(protocol, frames)
    assert got == [(VIOLATION, (1009, f"message is larger than max_message_size ({limit} bytes)"))]
    assert protocol.state is State.CLOSE_SENT
    assert sum(inflated) <= limit + 1  # one byte past the limit is enough to know
    assert feed(protocol, peer_frame(protocol, OP_CLOSE, close_payload(1000))) == [(CLOSE, (1000, ""))]
    assert protocol.state is State.CLOSED


@pytest.mark.parametrize("role", ROLES)
def test_7692_a_compressed_message_after_a_1009_does_not_break_the_closing_handshake(role: Role) -> None:
    """After a 1009 on a compressed message, the compression context is out of step (its dropped rest
    was never inflated): later compressed messages are dropped unread, and the peer's Close still
    completes the closing handshake."""
    protocol, _ = open_role(role, compression="deflate", max_message_size=100)
    context = zlib.compressobj(6, zlib.DEFLATED, -15)  # the peer's, shared by its messages
    big = compress(noise(300), context)
    frames = (
        peer_frame(protocol, BINARY, big[:150], rsv=RSV1, fin=False)
        + peer_frame(protocol, CONTINUATION, big[150:])
        + peer_frame(protocol, TEXT, compress(b"ok", context), rsv=RSV1)
        + peer_frame(protocol, OP_CLOSE, close_payload(1000))
    )
    got = feed(protocol, frames)
    assert got == [
        (VIOLATION, (1009, "message is larger than max_message_size (100 bytes)")),
        (CLOSE, (1000, "")),
    ]
    assert protocol.state is State.CLOSED


@pytest.mark.parametrize("role", ROLES)
def test_7692_one_1009_for_one_compressed_message_too_big(role: Role) -> None:
    protocol, peer = open_role(role, compression="deflate", max_message_size=100)
    data = peer.send_data(TEXT, ("\u00e9" * 101).encode()) + peer.send_data(TEXT, b"ok")
    peer.close(1000, None)
    data += peer.data_to_send()
    assert [event[0] for event in feed(protocol, data)] == [VIOLATION, CLOSE]


# --- The state table: every transition listed happens, and no other ----------------------------------


class _Recording:
    """Records every assignment to ``state`` (a property over the protocol's slot)."""

    transitions: list[tuple[State, State]]
    _recorded: State | None = None

    @property
    def state(self) -> State:
        assert self._recorded is not None
        return self._recorded

    @state.setter
    def state(self, new: State) -> None:
        if self._recorded is not None:
            self.transitions.append((self._recorded, new))
        self._recorded = new


class _RecordingServer(_Recording, ServerProtocol):
    pass


class _RecordingClient(_Recording, ClientProtocol):
    pass


TABLE_LIMIT = 10  # max_message_size of the protocols in the table test: "too-big" sends 11 bytes


@dataclass
class _Subject:
    protocol: _RecordingServer | _RecordingClient
    # Handshake bytes for the client's stimuli: a valid 101 for its key, and a 403.
    response_101: bytes = b""
    response_403: bytes = b""
    request: bytes = b""  # a client's request, for the server's "request" stimulus


def _subject(role: Role, state: State) -> _Subject:
    """A fresh (recording) protocol of ``role`` brought to ``state``, its transitions so far forgotten."""
    if role == "server":
        server = _RecordingServer(max_message_size=TABLE_LIMIT, compression=None)
        server.transitions = []
        subject = _Subject(server, request=make_client().data_to_send())
        if state is not State.CONNECTING:
            server.receive_data(subject.request)
        if state is State.REFUSED:
            server.respond(403, None, b"")
        elif state not in (State.CONNECTING, State.REQUESTED):
            server.accept(None, None)
    else:
        client = _RecordingClient(
            host="h",
            target="/",
            subprotocols=[],
            extra_headers=[],
            max_message_size=TABLE_LIMIT,
            compression=None,
        )
        client.transitions = []
        subject = _Subject(client, request=client.data_to_send())
        peer = make_server()
        feed(peer, subject.request)
        peer.accept(None, None)
        subject.response_101 = peer.data_to_send()
        subject.response_403 = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
        if state is State.REFUSED:
            client.receive_data(subject.response_403)
        elif state is not State.CONNECTING:
            client.receive_data(subject.response_101)
    protocol = subject.protocol
    mask = not protocol.client
    if state is State.VIOLATED or state is State.FAILED:
        protocol.receive_data(raw_frame(0x3, mask=mask))
        events(protocol)
        if state is State.FAILED:
            protocol.fail()
    elif state is State.CLOSE_SENT:
        protocol.close(1000, None)
    elif state is State.CLOSED:
        protocol.receive_data(raw_frame(OP_CLOSE, mask=mask))
        events(protocol)
    elif state is State.ABORTED:
        protocol.abort("given up")
    assert protocol.state is state
    protocol.transitions.clear()
    return subject


STIMULI = (
    "request",
    "accept",
    "reject",
    "close",
    "fail",
    "peer-close",
    "violation",
    "too-big",
    "eof",
    "abort",
    "lost",
)
BYTE_STIMULI = frozenset({"request", "peer-close", "violation", "too-big"})  # + "accept"/"reject" for a client


def _apply(subject: _Subject, stimulus: str) -> None:
    protocol = subject.protocol
    mask = not protocol.client
    if stimulus == "request":
        protocol.receive_data(subject.request)
    elif stimulus in ("accept", "reject") and isinstance(protocol, ClientProtocol):
        protocol.receive_data(subject.response_101 if stimulus == "accept" else subject.response_403)
    elif stimulus == "accept":
        assert isinstance(protocol, ServerProtocol)
        try:
            protocol.accept(None, None)
        except (RuntimeError, ConnectionClosed):
            pass
    elif stimulus == "reject":
        assert isinstance(protocol, ServerProtocol)
        try:
            protocol.respond(403, None, b"")
        except (RuntimeError, ConnectionClosed):
            pass
    elif stimulus == "close":
        protocol.close(1000, None)
    elif stimulus == "fail":
        protocol.fail()
    elif stimulus == "peer-close":
        protocol.receive_data(raw_frame(OP_CLOSE, close_payload(1000), mask=mask))
    elif stimulus == "violation":
        protocol.receive_data(raw_frame(0x3, mask=mask))
    elif stimulus == "too-big":
        protocol.receive_data(raw_frame(BINARY, b"x" * (TABLE_LIMIT + 1), mask=mask))
    elif stimulus == "eof":
        protocol.receive_data(b"")
    elif stimulus == "abort":
        protocol.abort("given up")
    else:
        assert stimulus == "lost"
        protocol.connection_lost()
    events(protocol)


def _expected_input(role: Role, state: State, stimulus: str) -> _Input | None:
    """What ``stimulus`` means to a protocol of ``role`` in ``state`` (None: nothing, the state stays)."""
    client = role == "client"
    if stimulus == "abort":
        return _Input.ENDED
    if stimulus == "lost":
        return None if state.over else _Input.ENDED
    if state is State.CONNECTING:  # the bytes are HTTP
        if stimulus == "eof":
            return _Input.REFUSED  # no request / no response: the handshake failed
        if client:
            return {"accept": _Input.OPENED, "reject": _Input.REFUSED}.get(stimulus)
        return {"request": _Input.REQUEST, "reject": _Input.REFUSED}.get(stimulus)  # respond() may come first
    if stimulus == "eof":
        return _Input.ENDED
    if state is State.REQUESTED:  # nothing is read; the application decides
        return {"accept": _Input.OPENED, "reject": _Input.REFUSED}.get(stimulus)
    if stimulus == "close":
        return _Input.CLOSE_SENT if state in (State.OPEN, State.VIOLATED) else None
    if stimulus == "fail":
        return _Input.CLOSE_SENT if state is State.VIOLATED else None
    is_bytes = stimulus in BYTE_STIMULI or (client and stimulus in ("accept", "reject"))
    if not is_bytes or not state.reading:
        return None  # a server's accept()/respond() raise; bytes are not read
    if stimulus == "peer-close":
        return _Input.CLOSE_RECEIVED
    if stimulus == "too-big":
        return _Input.CLOSE_SENT  # 1009: our Close at once
    return _Input.VIOLATION  # a reserved opcode; or HTTP where frames belong


def _table_cases() -> Iterator[tuple[Role, State, str]]:
    for role in ROLES:
        for state in State:
            if role == "client" and state is State.REQUESTED:
                continue  # a server's state only
            for stimulus in STIMULI:
                if state is State.CONNECTING and stimulus in BYTE_STIMULI - {"request"}:
                    continue  # frames before the handshake are malformed HTTP: see the section 4 tests
                if role == "client" and stimulus == "request":
                    continue
                yield role, state, stimulus


TABLE_CASES = list(_table_cases())


@pytest.mark.parametrize(
    ("role", "state"), sorted({(role, state) for role, state, _ in TABLE_CASES}, key=lambda pair: str(pair))
)
def test_the_state_table(role: Role, state: State) -> None:
    """Each stimulus in each state makes exactly the transition ``_NEXT`` lists for it, or none."""
    listed = set(_NEXT.items())
    for case_role, case_state, stimulus in TABLE_CASES:
        if (case_role, case_state) != (role, state):
            continue
        subject = _subject(role, state)
        _apply(subject, stimulus)
        expected_input = _expected_input(role, state, stimulus)
        transitions = subject.protocol.transitions
        if expected_input is None:
            assert transitions == [], stimulus
            assert subject.protocol.state is state, stimulus
        else:
            assert (state, expected_input) in _NEXT, stimulus
            assert transitions == [(state, _NEXT[state, expected_input])], stimulus
        for old, new in transitions:  # (implied by the above; said for the reader)
            assert any(key[0] is old and after is new for key, after in listed), (stimulus, old, new)


def test_every_transition_in_the_table_is_reached() -> None:
    reached = {
        (state, expected)
        for role, state, stimulus in TABLE_CASES
        if (expected := _expected_input(role, state, stimulus)) is not None
    }
    assert reached == set(_NEXT)


def test_every_state_but_the_last_four_can_end() -> None:
    """Every state has a way out (EOF or abort()), and the final states keep themselves."""
    for state in State:
        assert (state, _Input.ENDED) in _NEXT
        if state.over:
            assert _NEXT[state, _Input.ENDED] is state
        else:
            assert _NEXT[state, _Input.ENDED] is State.ABORTED


def test_what_each_state_allows() -> None:
    """The flags of each state, as the protocol reads them (``reading``, ``can_send``, ``delivering``, ``over``)."""
    flags = {state: (state.reading, state.can_send, state.delivering, state.over) for state in State}
    assert flags == {
        State.CONNECTING: (True, False, False, False),
        State.REQUESTED: (False, False, False, False),
        State.OPEN: (True, True, True, False),
        State.VIOLATED: (False, True, False, False),
        State.CLOSE_SENT: (True, False, False, False),
        State.CLOSED: (False, False, False, True),
        State.FAILED: (False, False, False, True),
        State.REFUSED: (False, False, False, True),
        State.ABORTED: (False, False, False, True),
    }


def test_ending_per_state_and_role() -> None:
    """What the caller does with the transport: RFC 6455 7.1.1, the server closes TCP first."""
    expected = {
        ("server", State.CLOSED): Ending.CLOSE,
        ("client", State.CLOSED): Ending.DRAIN,
        ("server", State.FAILED): Ending.LINGER,
        ("client", State.FAILED): Ending.DRAIN,
        ("server", State.REFUSED): Ending.LINGER,
        ("client", State.REFUSED): Ending.CLOSE,
        ("server", State.ABORTED): Ending.CLOSE,
        ("client", State.ABORTED): Ending.CLOSE,
    }
    for role in ROLES:
        for state in State:
            if role == "client" and state is State.REQUESTED:
                continue
            protocol = _subject(role, state).protocol
            assert protocol.ending is expected.get((role, state), Ending.NOT_YET), (role, state)
