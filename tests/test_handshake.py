"""The opening handshake's fast path against h11, Sans-I/O.

``ServerHandshake`` and ``ClientHandshake`` parse a simple head (a request, or
a 101 response, with clean header lines and no body) themselves and hand
anything else to h11 (see ``_SimpleHead`` in ``trio_ws/_handshake.py``).
These tests feed the same bytes, cut into the same pieces, to a handshake
with its fast path and to one that goes through h11 from the first byte, and
require the same outcome after every piece: the same request or response,
the same trailing bytes, or the same ``HandshakeFailure`` (status and text).
The inputs are generated (hypothesis): browser-like requests and 101s, heads
with what the fast path must leave to h11 (folded lines, bare LFs, control
bytes, bodies, odd methods and versions, missing or doubled Host), and byte
mutations of all of them.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from trio_ws._handshake import (
    MAX_HEAD_SIZE,
    Accepted,
    ClientHandshake,
    HandshakeFailure,
    Rejected,
    ServerHandshake,
    UpgradeRequest,
    accept_token,
)

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,  # the same examples on every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

# Header lines a valid handshake may carry besides its own, and lines the
# fast path must give to h11 (or must read exactly as h11 does).
BENIGN_LINES = [
    b"Sec-WebSocket-Protocol: chat, superchat",
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    b"Origin: http://example.com",
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
    b"X-Empty:",
    b"X-Spaces:   padded value \t ",
    b"X-Tab:\tvalue",
    b"X-Obs-Text: caf\xc3\xa9",
    b"connection: keep-alive",
    b"Sec-WebSocket-Version: 8",
]
ODD_LINES = [
    b"X-Control: a\x01b",  # h11 admits control bytes in values; the fast path does not
    b" folded continuation",  # obs-fold
    b"\tfolded with a tab",
    b"Content-Length: 0",
    b"Content-Length: 5",
    b"Transfer-Encoding: chunked",
    b"Bad Name: x",
    b"NoColon",
    b":empty-name",
    b"X-LF: a\nb",
    b"Host: other.example",
]


@st.composite
def head_lines(draw: st.DrawFn, own: list[bytes]) -> list[bytes]:
    """A handshake's own lines, some dropped now and then, with others mixed in."""
    lines = [line for line in own if draw(st.integers(0, 9)) > 0]
    lines += draw(st.lists(st.sampled_from(BENIGN_LINES), max_size=4))
    if draw(st.integers(0, 3)) == 0:
        lines += draw(st.lists(st.sampled_from(ODD_LINES), min_size=1, max_size=2))
    return draw(st.permutations(lines))


@st.composite
def heads(draw: st.DrawFn, start: bytes, own: list[bytes]) -> bytes:
    lines = [start, *draw(head_lines(own))]
    eol = b"\n" if draw(st.integers(0, 7)) == 0 else b"\r\n"
    body = draw(st.sampled_from([b"", b"", b"hello", b"\x81\x85" + b"\x00" * 9]))
    return eol.join(lines) + eol + eol + body


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    start = b"GET /chat HTTP/1.1"
    if draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"get", b"G\x00T"]))
        target = draw(st.sampled_from([b"/", b"/chat?room=1", b"*", b"/a b", b"/caf\xc3\xa9", b"http://h/x"]))
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 "]))
        start = b"%s %s %s" % (method, target, version)
    own = [
        b"Host: 127.0.0.1:8765",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: " + draw(st.sampled_from([KEY, KEY, b"short"])),
    ]
    return draw(heads(start, own))


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    start = b"HTTP/1.1 101 Switching Protocols"
    if draw(st.integers(0, 2)) == 0:
        start = draw(
            st.sampled_from(
                [
                    b"HTTP/1.1 101",
                    b"HTTP/1.1 101 ",
                    b"HTTP/1.1 101 caf\xc3\xa9",
                    b"HTTP/1.0 101 Switching Protocols",
                    b"HTTP/1.1 100 Continue",
                    b"HTTP/1.1 200 OK",
                    b"HTTP/1.1 403 Forbidden",
                    b"HTTP/1.1 1010 Bad",
                ]
            )
        )
    own = [
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + draw(st.sampled_from([accept_token(KEY), accept_token(KEY), b"wrong"])),
        b"Sec-WebSocket-Protocol: chat",
    ]
    return draw(heads(start, own))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([0x00, 0x09, 0x0A, 0x0D, 0x20, 0x3A, 0x7F, 0x80, 0xFF, ord("x")]))
        if action == "replace":
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


@st.composite
def pieces(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at a few random places (one piece, often)."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4))))
    bounds = [0, *[cut for cut in cuts if cut < len(data)], len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


def outcome(handshake: ServerHandshake | ClientHandshake, data: bytes) -> object:
    try:
        return handshake.receive_data(data)
    except HandshakeFailure as exc:
        return ("failure", exc.status, str(exc), exc.headers)


def through_h11(handshake: ServerHandshake | ClientHandshake) -> ServerHandshake | ClientHandshake:
    handshake._simple = None  # every byte through h11, as before the fast path
    return handshake


def client_handshake() -> ClientHandshake:
    handshake = ClientHandshake("127.0.0.1", "/chat", ["chat"], [], [])
    handshake._key = KEY  # so that generated responses can carry the right accept token
    return handshake


def run_both(make: Callable[[], ServerHandshake | ClientHandshake], chunks: list[bytes], eof: bool) -> None:
    """Feed both handshakes the same pieces; require the same outcome after each."""
    fast = make()
    slow = through_h11(make())
    results = []
    for chunk in [*chunks, *([b""] if eof else [])]:
        got, want = outcome(fast, chunk), outcome(slow, chunk)
        assert got == want, (chunks, got, want)
        results.append(got)
        if got is not None:
            if isinstance(got, UpgradeRequest):
                assert fast.trailing_data == slow.trailing_data  # type: ignore[union-attr]
            break
    last = type(results[-1]).__name__ if results[-1] is not None else "waiting"
    event(f"{last}, {'h11' if fast._h11 is not None else 'fast path'}")


ROLES: dict[str, tuple[Callable[[], st.SearchStrategy[bytes]], Callable[[], ServerHandshake | ClientHandshake]]] = {
    "server": (requests, ServerHandshake),
    "client": (responses, client_handshake),  # Accepted compares its trailing bytes too
}


@pytest.mark.parametrize("role", ROLES)
@SETTINGS
@given(data=st.data())
def test_fast_path_agrees_with_h11(role: str, data: st.DataObject) -> None:
    heads, make = ROLES[role]
    raw = data.draw(st.one_of(heads(), heads(), mutated(heads())))
    run_both(make, data.draw(pieces(raw)), data.draw(st.booleans()))


def test_a_browser_request_takes_the_fast_path() -> None:
    request = (
        b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nConnection: Upgrade\r\nPragma: no-cache\r\n"
        b"Upgrade: websocket\r\nOrigin: http://127.0.0.1:8765\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    handshake = ServerHandshake()
    assert handshake.receive_data(request[:40]) is None
    result = handshake.receive_data(request[40:] + b"\x81\x80frame")
    assert isinstance(result, UpgradeRequest)
    assert handshake._h11 is None  # h11 was never needed
    assert (result.target, result.host, result.key, result.origin) == ("/chat", "127.0.0.1:8765", KEY, "http://127.0.0.1:8765")
    assert result.extensions == ["permessage-deflate; client_max_window_bits"]
    assert (b"pragma", b"no-cache") in result.headers
    assert handshake.trailing_data == b"\x81\x80frame"



@pytest.mark.parametrize("path", ["fast", "h11"])
def test_the_request_headers_come_back_as_they_were_sent(path: str) -> None:
    """A request's headers are kept packed (one bytes object); what ``headers`` gives back is
    every header but Host and the two negotiated ones, in order, names in lower case, values
    with colons, empty values and repeated names intact."""
    request = (
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\nOrigin: http://o.test:8000\r\n"
        b"X-Empty:\r\nX-Twice: 1\r\nX-Twice: a:b:c\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    )
    handshake = ServerHandshake() if path == "fast" else through_h11(ServerHandshake())
    result = handshake.receive_data(request)
    assert isinstance(result, UpgradeRequest)
    assert result.headers == [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
        (b"origin", b"http://o.test:8000"),
        (b"x-empty", b""),
        (b"x-twice", b"1"),
        (b"x-twice", b"a:b:c"),
    ]
    assert isinstance(result.packed_headers, bytes)

def test_a_request_over_the_head_limit_is_refused_with_431() -> None:
    handshake = ServerHandshake()
    with pytest.raises(HandshakeFailure) as caught:
        handshake.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_SIZE)
    assert caught.value.status == 431


def test_the_request_we_send_is_what_h11_would_write() -> None:
    extra = [(b"Origin", b"http://example.com"), (b"X-Custom", b"v  1")]
    ours = ClientHandshake("example.com:8080", "/chat?x=1", ["a", "b"], ["permessage-deflate"], extra)
    request = ours.request_bytes()
    assert ours._h11 is None
    h11_request = h11.Request(method=b"GET", target=b"/chat?x=1", headers=ours._headers_sent)
    theirs = h11.Connection(h11.CLIENT).send(h11_request)
    assert request == theirs
    assert request.startswith(b"GET /chat?x=1 HTTP/1.1\r\nhost: example.com:8080\r\n")
    assert b"sec-websocket-key: " + ours._key + b"\r\n" in request


def test_a_request_only_h11_accepts_is_written_by_h11() -> None:
    """Our check is stricter than h11's (it admits control bytes in values): h11 decides."""
    handshake = ClientHandshake("ex\x01ample", "/", [], [], [])
    assert handshake._h11 is not None
    assert handshake.request_bytes().startswith(b"GET / HTTP/1.1\r\nhost: ex\x01ample\r\n")


def test_a_request_h11_refuses_is_still_refused_by_h11() -> None:
    with pytest.raises(h11.LocalProtocolError):
        ClientHandshake("example.com", "/a b", [], [], [])
    with pytest.raises(h11.LocalProtocolError):
        ClientHandshake("example.com", "/", ["bad\r\nprotocol"], [], [])
    with pytest.raises(h11.LocalProtocolError, match="multiple Host"):
        ClientHandshake("example.com", "/", [], [], [(b"Host", b"other.example")])


def test_a_101_response_takes_the_fast_path() -> None:
    handshake = client_handshake()
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_token(KEY) + b"\r\n"
        b"Sec-WebSocket-Protocol: chat\r\nServer: x\r\n\r\n\x81\x02hi"
    )
    result = handshake.receive_data(response)
    assert isinstance(result, Accepted)
    assert handshake._h11 is None
    assert (result.subprotocol, result.trailing_data, result.headers) == ("chat", b"\x81\x02hi", ((b"server", b"x"),))


def test_a_rejection_goes_through_h11_with_its_body() -> None:
    handshake = client_handshake()
    result = handshake.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
    assert result == Rejected(403, ((b"content-length", b"4"),), b"nope")


def test_eof_before_a_response() -> None:
    handshake = client_handshake()
    assert handshake.receive_data(b"HTTP/1.1 101 Swi") is None
    with pytest.raises(HandshakeFailure, match="closed the connection before"):
        handshake.receive_data(b"")
    assert base64.b64decode(KEY)  # the key the generated responses answer is valid base64
