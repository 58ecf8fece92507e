"""Why a connection closed, and the exceptions that say so.

These classes keep trio-websocket 0.12's names, constructor signatures and
attributes, so that code catching them keeps working after the import changes.
"""

from __future__ import annotations

from typing import NoReturn

from wsproto.frame_protocol import CloseReason as _WsprotoCode

__all__ = [
    "CloseReason",
    "ConnectionClosed",
    "ConnectionRejected",
    "ConnectionTimeout",
    "DisconnectionTimeout",
    "HandshakeError",
]


def _code_name(code: int) -> str:
    """The symbolic name of a close code, as trio-websocket reports it."""
    try:
        return _WsprotoCode(code).name
    except ValueError:
        pass
    if 1000 <= code <= 2999:
        return "RFC_RESERVED"
    if 3000 <= code <= 3999:
        return "IANA_RESERVED"
    if 4000 <= code <= 4999:
        return "PRIVATE_RESERVED"
    return "INVALID_CODE"


class CloseReason:
    """Why a WebSocket connection was closed, or is being closed.

    ``code`` is the close code (RFC 6455, section 7.4), ``name`` its symbolic
    name and ``reason`` the text that came with it, or ``None``.

    ``was_clean`` mirrors the browser's ``CloseEvent.wasClean``: true when the
    closing handshake completed (a Close frame went each way) before the
    transport was closed.  While a connection is still closing it is false.
    """

    __slots__ = ("_code", "_name", "_reason", "_was_clean")

    def __init__(self, code: int, reason: str | None, *, was_clean: bool = False) -> None:
        self._code = code
        self._name = _code_name(code)
        self._reason = reason
        self._was_clean = was_clean

    @property
    def code(self) -> int:
        """(Read-only) The numeric close code."""
        return self._code

    @property
    def name(self) -> str:
        """(Read-only) The symbolic name of the close code."""
        return self._name

    @property
    def reason(self) -> str | None:
        """(Read-only) The reason text, or ``None``."""
        return self._reason

    @property
    def was_clean(self) -> bool:
        """(Read-only) Whether the closing handshake completed."""
        return self._was_clean

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}<code={self.code}, name={self.name}, reason={self.reason}>"


def set_was_clean(reason: CloseReason) -> None:
    """The closing handshake completed before the transport closed (for ``_protocol``)."""
    reason._was_clean = True


class HandshakeError(Exception):
    """The opening or closing handshake failed.

    Network errors while connecting, a TLS failure, a timeout
    (:exc:`ConnectionTimeout`, :exc:`DisconnectionTimeout`) or a rejection by
    the server (:exc:`ConnectionRejected`).  ``__cause__`` holds the underlying
    error where there is one (an :class:`OSError`, an :class:`ssl.SSLError`).
    """


class ConnectionTimeout(HandshakeError):
    """The opening handshake did not finish within ``connect_timeout``."""


class DisconnectionTimeout(HandshakeError):
    """The closing handshake did not finish within ``disconnect_timeout``."""


class ConnectionClosed(Exception):
    """The operation cannot complete because the connection is closed or closing.

    ``reason`` is the connection's :class:`CloseReason`.
    """

    def __init__(self, reason: CloseReason | None) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}<{self.reason}>"


class ConnectionRejected(HandshakeError):
    """The server answered the opening handshake with something other than 101.

    ``status_code`` is the HTTP status, ``headers`` the response headers as a
    tuple of ``(name, value)`` byte pairs, ``body`` the response body (``None``
    when the response could not have one).
    """

    def __init__(
        self,
        status_code: int,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes | None,
    ) -> None:
        super().__init__(status_code, headers, body)
        self.status_code = status_code
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}<status_code={self.status_code}>"


def reraise(error: BaseException) -> NoReturn:
    """Raise ``error`` (taken out of an ExceptionGroup, say) again, keeping its ``__context__``:
    a plain ``raise`` inside an ``except`` would replace it with the exception being handled."""
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
