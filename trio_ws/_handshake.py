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
from collections.abc import Iterable
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


def http_response(status: int, headers: Headers, body: bytes, *, head: bool = False) -> bytes:
    """A complete HTTP/1.1 response that ends the connection (we close after it)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {status} {phrase}".encode("latin-1")]
    lines.extend(name + b": " + value for name, value in headers)
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
    # lower case: what trio-websocket's ``request.headers`` held.
    headers: Headers
    subprotocols: list[str]
    extensions: list[str]  # the offers, one ``name; params`` item each
    key: bytes
    origin: str | None


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
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_size)
        self._max_body_size = max_body_size
        self._request: h11.Request | None = None
        self._body = bytearray()

    @property
    def trailing_data(self) -> bytes:
        """What the client sent after its request (frames, if it did not wait for our 101)."""
        return self._h11.trailing_data[0]

    def receive_data(self, data: bytes) -> UpgradeRequest | HTTPRequest | None:
        """Feed bytes (``b""`` at EOF); the request once complete, else ``None``.

        :raises HandshakeFailure: a malformed or refused request, or EOF first.
        """
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
                assert self._request is not None
                return self._classify(self._request)
            elif isinstance(event, h11.ConnectionClosed):
                raise HandshakeFailure(0, "the client closed the connection before its request was complete")

    def _classify(self, request: h11.Request) -> UpgradeRequest | HTTPRequest:
        values: dict[bytes, list[bytes]] = {}
        for name, value in request.headers:
            values.setdefault(name, []).append(value)
        upgrade = [token for value in values.get(b"upgrade", []) for token in _tokens(value)]
        if "websocket" not in upgrade:
            return HTTPRequest(
                method=request.method.decode("ascii"),
                target=request.target.decode("ascii"),
                headers=list(request.headers),
                body=bytes(self._body),
                http_version=request.http_version.decode("ascii"),
            )
        if request.method != b"GET":
            raise HandshakeFailure(400, "a WebSocket upgrade request must use GET")
        if request.http_version == b"1.0":
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
            target=request.target.decode("ascii"),
            host=host,
            headers=[(name, value) for name, value in request.headers if name not in skip],
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
        lines = [
            b"HTTP/1.1 101 Switching Protocols",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Accept: " + accept_token(request.key),
        ]
        if subprotocol is not None:
            lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
        if extensions:
            lines.append(b"Sec-WebSocket-Extensions: " + extensions.encode("latin-1"))
        lines.extend(name + b": " + value for name, value in extra_headers)
        return b"\r\n".join(lines) + b"\r\n\r\n"


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
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
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
        self._request = h11.Request(method=b"GET", target=target.encode("ascii"), headers=headers)
        self._status = 0
        self._headers: tuple[tuple[bytes, bytes], ...] = ()
        self._body = bytearray()

    def request_bytes(self) -> bytes:
        data = self._h11.send(self._request)
        assert data is not None
        return data

    def receive_data(self, data: bytes) -> Accepted | Rejected | None:
        """Feed bytes (``b""`` at EOF); the outcome once known, else ``None``.

        :raises HandshakeFailure: a malformed response, a 101 that breaks RFC
            6455, or EOF before a response.
        """
        if not data and not self._status:
            raise HandshakeFailure(0, "the server closed the connection before its handshake response")
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HandshakeFailure(0, f"malformed HTTP response: {exc}") from exc
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return self._check_101(event)
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

    def _check_101(self, response: h11.InformationalResponse) -> Accepted:
        values: dict[bytes, list[bytes]] = {}
        for name, value in response.headers:
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
            headers=tuple((name, value) for name, value in response.headers if name not in skip),
            trailing_data=self._h11.trailing_data[0],
        )
