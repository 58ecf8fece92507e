"""The opening handshake (RFC 6455 section 4), both roles: HTTP/1.1 through h11, Sans-I/O.

Bytes go in, an outcome comes out; responses come back as bytes to send.
wsproto has a handshake layer too, but doing it here lets us

- answer plain HTTP requests on a WebSocket port (426, or the
  application's own response) instead of failing them;
- parse a request once, within a size limit, and answer each RFC 6455
  violation with the right status (400, 426 with our version, 431);
- keep the frames a peer sent right behind its handshake;
- negotiate extensions through our own permessage-deflate, offer by offer.

After the handshake, frames go through our parser (``_frames``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus

import h11

__all__ = [
    "Accepted",
    "ClientHandshake",
    "HTTPRequest",
    "HTTPResponse",
    "HandshakeFailure",
    "Headers",
    "Rejected",
    "ServerHandshake",
    "UpgradeRequest",
    "caller_headers",
    "check_reject_status",
    "http_response",
]

Headers = list[tuple[bytes, bytes]]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD_SIZE = 16 * 1024  # request or response line plus headers
MAX_BODY_SIZE = 64 * 1024  # a plain HTTP request's body; a rejection's body kept by a client

# RFC 9110: a field name is a token; a field value is visible characters
# separated by spaces or tabs, with no white space at either end.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?\Z")

# Headers that the WebSocket handshake itself sets.  A caller's copy would be
# sent twice or contradict ours, so it is dropped (trio-websocket documents
# that such headers "will be overwritten").
PROTOCOL_HEADERS = frozenset(
    {
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
    }
)


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _tokens(value: bytes) -> list[str]:
    """The comma-separated items of a header value, lower-cased, without white space."""
    return [item.strip().lower() for item in value.decode("latin-1").split(",") if item.strip()]


# --- the usual head, without h11 ----------------------------------------------------------
#
# h11 parses any HTTP/1.1 message, and costs 60-100 us per handshake doing it:
# a large share of what a handshake costs us beyond the protocol's own round
# trips.  Nearly every handshake is the same simple message: a GET request, or
# a 101 response, with a few clean header lines and no body.  _SimpleHead
# parses exactly such a head and nothing else.  Whatever it does not recognise
# (a bare LF, a folded header line, a byte outside the visible range, a body,
# a head over the size limit) goes to h11 whole, so h11 stays the judge of
# every unusual message and words every error; the fast path accepts only
# what h11 accepts, and reads it the same way (tests/test_handshake.py checks
# the two against each other).

_FIELD_BYTE = rb"[\x21-\x7e\x80-\xff]"  # stricter than h11, which admits control bytes too
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:" + _FIELD_BYTE + rb"+(?:[ \t]+" + _FIELD_BYTE + rb"+)*)?)[ \t]*"
)
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.1")
_STATUS_LINE_101 = re.compile(rb"HTTP/1\.1 101(?: [ \t\x21-\x7e\x80-\xff]*)?")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_FRAMING = (b"content-length", b"transfer-encoding")  # a body, or h11's checks on them: h11's case


class _SimpleHead:
    """Bytes received until they hold a simple head (see above), or prove not to."""

    __slots__ = ("_buffer", "_first", "_max_size", "_searched")

    def __init__(self, first: bytes, max_size: int) -> None:
        self._buffer = bytearray()
        self._first = first  # the byte every head of this kind starts with
        self._max_size = max_size
        self._searched = 0

    def take_all(self) -> bytes:
        """What was received, for h11 (the fast path gives up)."""
        data = bytes(self._buffer)
        self._buffer = bytearray()
        return data

    def feed(self, data: bytes, start_line: re.Pattern[bytes]) -> tuple[re.Match[bytes], Headers, bytes] | bool:
        """``(start line match, headers with names in lower case, trailing bytes)``;
        ``True``: no complete head yet, and it may still be simple; ``False``: not simple."""
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n", max(0, self._searched - 3))
        if end < 0:
            self._searched = len(buffer)
            # Wait for more only while h11 would wait too: it stops at a blank
            # line made with a bare LF, at a first byte no start line has, and
            # at the size limit.
            return (
                len(buffer) <= self._max_size
                and buffer[:1] == self._first
                and buffer.count(b"\n") == buffer.count(b"\r\n")
            )
        if end + 4 > self._max_size:
            return False
        lines = bytes(buffer[:end]).split(b"\r\n")
        first = start_line.fullmatch(lines[0])
        if first is None:
            return False
        headers: Headers = []
        for line in lines[1:]:
            match = _HEADER_LINE.fullmatch(line)
            if match is None:
                return False
            name = match[1].lower()
            if name in _FRAMING:
                return False
            headers.append((name, match[2]))
        return first, headers, bytes(buffer[end + 4 :])


def _items(values: Iterable[bytes]) -> list[str]:
    """Comma-separated items across repeated headers, case kept (subprotocols, extensions)."""
    return [item.strip() for value in values for item in value.decode("latin-1").split(",") if item.strip()]


# --- what callers hand us ---------------------------------------------------------------


def _as_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {what} {value!r} is not latin-1 text") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"header {what} must be bytes or str, not {type(value).__name__}")


def caller_headers(
    headers: Iterable[tuple[bytes | str, bytes | str]] | None,
    drop: frozenset[bytes] = PROTOCOL_HEADERS,
) -> Headers:
    """Validate ``(name, value)`` pairs from the caller; drop the ones in ``drop``.

    Raises :exc:`ValueError` for a name that is not an HTTP token or a value
    with control characters (which could split the message).
    """
    result: Headers = []
    for pair in headers or ():
        try:
            raw_name, raw_value = pair
        except (TypeError, ValueError):
            raise ValueError(f"a header must be a (name, value) pair, not {pair!r}") from None
        name = _as_bytes(raw_name, "name")
        value = _as_bytes(raw_value, "value")
        if not _TOKEN.match(name):
            raise ValueError(f"invalid HTTP header name {name!r}")
        if not _VALUE.match(value):
            raise ValueError(f"invalid HTTP header value {value!r} for {name!r}")
        if name.lower() in drop:
            continue
        result.append((name, value))
    return result


def check_reject_status(status_code: int) -> None:
    """A rejection is a final HTTP response: 200 to 599, and never 101."""
    if not isinstance(status_code, int) or isinstance(status_code, bool):
        raise TypeError(f"status_code must be an int, not {type(status_code).__name__}")
    if not 200 <= status_code <= 599:
        raise ValueError(f"cannot reject a handshake with HTTP status {status_code}: use 200-599 (usually 4xx)")


_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}".encode("latin-1") for status in HTTPStatus}


def http_response(status: int, headers: Headers, body: bytes = b"", *, head: bool = False) -> bytes:
    """A complete HTTP/1.1 response: every answer a server sends is made here.

    ``101`` (the opening handshake's success) keeps the connection; any
    other status ends it (we close after it), so it gets ``Content-Length``
    and ``Connection: close``.  ``head``: the answer to a HEAD request (no body).
    """
    try:
        lines = [_STATUS_LINES[status]]
    except KeyError:  # a status without a registered phrase
        lines = [f"HTTP/1.1 {status} ".encode("latin-1")]
    lines.extend(name + b": " + value for name, value in headers)
    if status == 101:
        return b"\r\n".join(lines) + b"\r\n\r\n"
    lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


# --- the server side ----------------------------------------------------------------------


@dataclass(slots=True)  # kept for a connection's life: no instance dict
class UpgradeRequest:
    """A valid WebSocket upgrade request."""

    target: str
    host: str
    # All headers but Host, Sec-WebSocket-Protocol and -Extensions, names in
    # lower case (what trio-websocket's ``request.headers`` held), packed into
    # one bytes object: a server keeps its requests for as long as their
    # connections live, and a list of (name, value) tuples costs three objects
    # a header, about 1 KiB a request (see ``headers``).
    packed_headers: bytes
    subprotocols: list[str]
    extensions: list[str]  # the offers, one ``name; params`` item each
    key: bytes
    origin: str | None

    @property
    def headers(self) -> Headers:
        """The headers, made from ``packed_headers`` on each call: ``name:value`` lines,
        which cannot be ambiguous (a name is a token, without ``:``; a value has no line
        break, neither after our parser nor after h11's)."""
        if not self.packed_headers:
            return []
        return [_unpack_header(line) for line in self.packed_headers.split(b"\n")]


def _unpack_header(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name, value


def pack_headers(headers: Iterable[tuple[bytes, bytes]], skip: Container[bytes] = ()) -> bytes:
    """``headers`` but those named in ``skip``, as :attr:`UpgradeRequest.packed_headers` holds
    them.  (A list, not a generator, for ``join``: one call instead of one per header, on the
    path of every server handshake.)"""
    return b"\n".join([name + b":" + value for name, value in headers if name not in skip])


@dataclass
class HTTPRequest:
    """A plain HTTP request that arrived on a WebSocket port (no upgrade)."""

    method: str
    target: str
    headers: Headers  # names in lower case
    body: bytes = b""
    http_version: str = "1.1"

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]


@dataclass
class HTTPResponse:
    """The answer to a plain :class:`HTTPRequest`."""

    status_code: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


class HandshakeFailure(Exception):
    """The peer's half of the handshake is not acceptable.

    ``status`` is the HTTP status a server answers with (0 when the peer went
    away); ``headers`` go into that answer.
    """

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class ServerHandshake:
    """Reads one HTTP request: a WebSocket upgrade, or a plain request."""

    def __init__(self, max_head_size: int = MAX_HEAD_SIZE, max_body_size: int = MAX_BODY_SIZE) -> None:
        # The fast path first; h11 (made on the way) if the request is not
        # simple.  (No fast path at all, for tests, with _simple None.)
        self._simple: _SimpleHead | None = _SimpleHead(b"G", max_head_size)
        self._h11: h11.Connection | None = None
        self._max_head_size = max_head_size
        self._max_body_size = max_body_size
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._trailing = b""

    @property
    def trailing_data(self) -> bytes:
        """What the client sent after its request (frames, if it did not wait for our 101)."""
        return self._trailing if self._h11 is None else self._h11.trailing_data[0]

    def receive_data(self, data: bytes) -> UpgradeRequest | HTTPRequest | None:
        """Feed bytes (``b""`` at EOF); the request once complete, else ``None``.

        :raises HandshakeFailure: a malformed or refused request, or EOF first.
        """
        if self._h11 is None:
            simple = self._simple
            if simple is not None and data:
                outcome = simple.feed(data, _REQUEST_LINE)
                if outcome is True:
                    return None
                # h11 refuses an HTTP/1.1 request without exactly one Host.
                if outcome is not False and [name for name, _ in outcome[1]].count(b"host") == 1:
                    first, headers, self._trailing = outcome
                    return self._classify(first[1], first[2], b"1.1", headers)
            # Not simple, or EOF: h11 from here on, with all that came so far.
            self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head_size)
            received = simple.take_all() if simple is not None else data
            self._simple = None
            if received:
                self._h11.receive_data(received)
            if not data:
                self._h11.receive_data(b"")  # EOF
        else:
            self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HandshakeFailure(exc.error_status_hint, f"malformed HTTP request: {exc}") from exc
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body_size:
                    raise HandshakeFailure(413, f"request body larger than {self._max_body_size} bytes")
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                request = self._request
                assert request is not None
                return self._classify(request.method, request.target, request.http_version, list(request.headers))
            elif isinstance(event, h11.ConnectionClosed):
                raise HandshakeFailure(0, "the client closed the connection before its request was complete")

    def _classify(
        self, method: bytes, target: bytes, http_version: bytes, headers: Headers
    ) -> UpgradeRequest | HTTPRequest:
        """``headers``: names in lower case, as h11 gives them."""
        values: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            values.setdefault(name, []).append(value)
        upgrade = [token for value in values.get(b"upgrade", []) for token in _tokens(value)]
        if "websocket" not in upgrade:
            return HTTPRequest(
                method=method.decode("ascii"),
                target=target.decode("ascii"),
                headers=headers,
                body=bytes(self._body),
                http_version=http_version.decode("ascii"),
            )
        if method != b"GET":
            raise HandshakeFailure(400, "a WebSocket upgrade request must use GET")
        if http_version == b"1.0":
            raise HandshakeFailure(400, "a WebSocket upgrade request needs HTTP/1.1")
        if "upgrade" not in [token for value in values.get(b"connection", []) for token in _tokens(value)]:
            raise HandshakeFailure(400, "missing 'Connection: Upgrade'")
        versions = values.get(b"sec-websocket-version", [])
        if versions != [b"13"]:
            # RFC 6455 4.4: tell the client which version we speak.
            raise HandshakeFailure(
                426 if versions else 400,
                "unsupported Sec-WebSocket-Version" if versions else "missing Sec-WebSocket-Version",
                [(b"sec-websocket-version", b"13")],
            )
        keys = values.get(b"sec-websocket-key", [])
        try:
            valid_key = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            raise HandshakeFailure(400, "Sec-WebSocket-Key must be one base64-encoded 16-byte value")
        hosts = values.get(b"host", [])
        try:
            host = hosts[0].decode("ascii")
        except (IndexError, UnicodeDecodeError):
            raise HandshakeFailure(400, "missing or non-ASCII Host header") from None
        origins = values.get(b"origin", [])
        skip = (b"host", b"sec-websocket-protocol", b"sec-websocket-extensions")
        return UpgradeRequest(
            target=target.decode("ascii"),
            host=host,
            packed_headers=pack_headers(headers, skip),
            subprotocols=_items(values.get(b"sec-websocket-protocol", [])),
            extensions=_items(values.get(b"sec-websocket-extensions", [])),
            key=keys[0],
            origin=origins[0].decode("latin-1") if origins else None,
        )

    @staticmethod
    def accept(request: UpgradeRequest, subprotocol: str | None, extensions: str, extra_headers: Headers) -> bytes:
        """The 101 response that completes the handshake."""
        # Header names in their usual spelling: HTTP says case does not
        # matter, but a few simple clients compare them as written.
        headers = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", accept_token(request.key)),
        ]
        if subprotocol is not None:
            headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1")))
        if extensions:
            headers.append((b"Sec-WebSocket-Extensions", extensions.encode("latin-1")))
        return http_response(101, headers + extra_headers)


# --- the client side --------------------------------------------------------------------


@dataclass
class Accepted:
    """The server's 101 response, checked."""

    subprotocol: str | None
    extensions: list[str]  # the accepted extension items
    headers: tuple[tuple[bytes, bytes], ...]  # the other response headers
    trailing_data: bytes


@dataclass
class Rejected:
    """Any other response."""

    status_code: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None  # None for a 1xx response, which has no body


class ClientHandshake:
    """Writes the upgrade request and reads the server's response."""

    def __init__(
        self,
        host: str,
        target: str,
        subprotocols: list[str],
        extension_offers: list[str],
        extra_headers: Headers,
        max_head_size: int = MAX_HEAD_SIZE,
    ) -> None:
        self._h11: h11.Connection | None = None
        self._max_head_size = max_head_size
        self._key = base64.b64encode(os.urandom(16))
        self._subprotocols = subprotocols
        headers: Headers = [
            (b"host", host.encode("idna") if not host.isascii() else host.encode("ascii")),
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-key", self._key),
            (b"sec-websocket-version", b"13"),
        ]
        if subprotocols:
            headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("latin-1")))
        if extension_offers:
            headers.append((b"sec-websocket-extensions", ", ".join(extension_offers).encode("latin-1")))
        headers.extend(extra_headers)
        self._target = target.encode("ascii")
        self._headers_sent = headers
        if (
            _TARGET.match(self._target)
            and all(_TOKEN.match(name) and _VALUE.match(value) for name, value in headers)
            and not any(name.lower() == b"host" for name, _ in extra_headers)  # h11 refuses a second
        ):
            # What h11 would write, written here (see _SimpleHead); h11 is
            # made only if the response is not simple.
            self._request_bytes = b"".join(
                [b"GET ", self._target, b" HTTP/1.1\r\n", *(b"%s: %s\r\n" % pair for pair in headers), b"\r\n"]
            )
        else:
            self._request_bytes = b""
            self._made_h11()  # whose Request refuses what is wrong, as it always did
        self._simple: _SimpleHead | None = _SimpleHead(b"H", max_head_size)
        self._status = 0
        self._headers: tuple[tuple[bytes, bytes], ...] = ()
        self._body = bytearray()

    def _made_h11(self) -> h11.Connection:
        """h11, in the state of having sent our request; made on first need."""
        if self._h11 is None:
            self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_head_size)
            data = self._h11.send(h11.Request(method=b"GET", target=self._target, headers=self._headers_sent))
            assert data is not None
            if not self._request_bytes:
                self._request_bytes = data
        return self._h11

    def request_bytes(self) -> bytes:
        return self._request_bytes

    def receive_data(self, data: bytes) -> Accepted | Rejected | None:
        """Feed bytes (``b""`` at EOF); the outcome once known, else ``None``.

        :raises HandshakeFailure: a malformed response, a 101 that breaks RFC
            6455, or EOF before a response.
        """
        if not data and not self._status:
            raise HandshakeFailure(0, "the server closed the connection before its handshake response")
        if self._simple is not None:
            outcome = self._simple.feed(data, _STATUS_LINE_101)
            if outcome is True:
                return None
            if outcome is not False:
                _, headers, trailing = outcome
                return self._check_101(headers, trailing)
            data, self._simple = self._simple.take_all(), None
        connection = self._made_h11()
        connection.receive_data(data)
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise HandshakeFailure(0, f"malformed HTTP response: {exc}") from exc
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return self._check_101(list(event.headers), connection.trailing_data[0])
                # trio-websocket's rule: any other 1xx is a rejection, without a body.
                return Rejected(event.status_code, tuple(event.headers), None)
            if isinstance(event, h11.Response):
                self._status, self._headers = event.status_code, tuple(event.headers)
            elif isinstance(event, h11.Data):
                room = MAX_BODY_SIZE - len(self._body)
                self._body += event.data[:room]
                if len(event.data) > room:
                    return Rejected(self._status, self._headers, bytes(self._body))
            elif isinstance(event, h11.EndOfMessage):
                return Rejected(self._status, self._headers, bytes(self._body))
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                if self._status:  # a body cut short: what came is the body
                    return Rejected(self._status, self._headers, bytes(self._body))
                raise HandshakeFailure(0, "the server closed the connection before its handshake response")

    def _check_101(self, headers: Headers, trailing_data: bytes) -> Accepted:
        """``headers``: names in lower case, as h11 gives them."""
        values: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            values.setdefault(name, []).append(value)
        if [token for value in values.get(b"upgrade", []) for token in _tokens(value)] != ["websocket"]:
            raise HandshakeFailure(0, "the server's 101 response lacks 'Upgrade: websocket'")
        if "upgrade" not in [token for value in values.get(b"connection", []) for token in _tokens(value)]:
            raise HandshakeFailure(0, "the server's 101 response lacks 'Connection: Upgrade'")
        if values.get(b"sec-websocket-accept") != [accept_token(self._key)]:
            raise HandshakeFailure(0, "Bad accept token: the server's Sec-WebSocket-Accept does not match our key")
        protocols = _items(values.get(b"sec-websocket-protocol", []))
        if len(protocols) > 1 or (protocols and protocols[0] not in self._subprotocols):
            raise HandshakeFailure(0, f"the server chose a subprotocol we did not offer: {protocols!r}")
        skip = {b"connection", b"upgrade", b"sec-websocket-extensions", b"sec-websocket-accept"}
        skip.add(b"sec-websocket-protocol")
        return Accepted(
            subprotocol=protocols[0] if protocols else None,
            extensions=_items(values.get(b"sec-websocket-extensions", [])),
            headers=tuple((name, value) for name, value in headers if name not in skip),
            trailing_data=trailing_data,
        )
