"""Helpers for testing code that uses trio_ws; importable without pytest.

- ``websocket_pair()``: a connected client and server over in-memory
  streams (:func:`trio.testing.memory_stream_pair`), opening handshake done,
  so that a handler or a client routine can be tested with trio's
  ``MockClock`` and without the network::

      async with trio_ws.testing.websocket_pair() as (client, server):
          await client.send_message("hi")
          assert await server.get_message() == "hi"

- ``start_server()`` and :class:`ServerFactory`: a real server on a free
  loopback port, in a nursery, as a :class:`LocalServer` (``.url``,
  ``.port``, ``.server``, ``.connect()``), which remembers what its handler
  raised so that a test can fail on it.
- ``make_ca()``, ``server_ssl_context()``, ``client_ssl_context()``: a
  throw-away certificate authority (trustme, the ``testing`` extra) for
  ``wss://`` servers and the clients that trust them.
- ``expect_close()`` and ``assert_closed_with()``: check the close code a
  connection ended with, with a message that says what happened instead.

The pytest fixtures built on these (``ws_server_factory``, ``ws_pair``,
``ws_ca``, ``wss_server_factory``, ...) are in :mod:`trio_ws._pytest_plugin`,
which pytest loads through the ``pytest11`` entry point; see docs/testing.md.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio
import trio.testing
from wsproto import ConnectionType

from ._client import _handshake, _owned_connection, _request, open_websocket_url
from ._connection import WebSocketConnection
from ._deflate import Deflate
from ._errors import CloseReason, ConnectionClosed, HandshakeError
from ._handshake import UpgradeRequest
from ._log import Logger
from ._options import CONN_TIMEOUT, MAX_MESSAGE_SIZE, MESSAGE_QUEUE_SIZE, WRITE_LIMIT, Options
from ._server import Handler, WebSocketRequest, WebSocketServer, serve_websocket

if TYPE_CHECKING:
    import trustme

__all__ = [
    "HOST",
    "ExpectedClose",
    "LocalServer",
    "ServerFactory",
    "assert_closed_with",
    "client_ssl_context",
    "expect_close",
    "make_ca",
    "server_ssl_context",
    "start_server",
    "websocket_pair",
]

HOST = "127.0.0.1"
"""Where test servers listen: the IPv4 loopback (a name would add a resolver lookup and maybe IPv6)."""

_TESTING_EXTRA_HINT = "pip install 'trio-ws[testing]'"


@asynccontextmanager
async def websocket_pair(
    *,
    path: str = "/",
    subprotocols: Iterable[str] | None = None,
    subprotocol: str | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
) -> AsyncIterator[tuple[WebSocketConnection, WebSocketConnection]]:
    """A connected ``(client, server)`` pair over memory streams, for one ``async with``.

    ``subprotocols`` is what the client offers and ``subprotocol`` what the
    server picks.  On exit, by any path (cancellation included), the client
    closes with 1000 and the closing handshake completes, bounded by
    ``disconnect_timeout``; exceptions from the body pass through as
    themselves, as with ``open_websocket``.
    """
    offered = list(subprotocols or ())
    if subprotocol is not None and subprotocol not in offered:
        raise ValueError(f"subprotocol {subprotocol!r} was not proposed by the client (it offers {offered!r})")
    options = Options(
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=None,
        disconnect_timeout=disconnect_timeout,
        compression=compression,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_limit=write_limit,
        logger=logger,
    )
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = WebSocketConnection(server_stream, ConnectionType.SERVER, _options=options)

    async def serve(nursery: trio.Nursery) -> None:
        try:
            event = await server._read_request()
            if not isinstance(event, UpgradeRequest):  # pragma: no cover - our client sends a valid request
                raise server._handshake_error() or HandshakeError("no upgrade request")
            # The server's reader is shielded, as the client's is in
            # open_websocket: a cancelled body still gets its closing
            # handshake.  It ends when the server closes its side after it.
            await WebSocketRequest(server, event, nursery, True).accept(subprotocol=subprotocol)
        except BaseException:
            await server._abort("websocket_pair: the server side could not accept")
            raise

    async def connect(nursery: trio.Nursery) -> WebSocketConnection:
        nursery.start_soon(serve, nursery)
        return await _handshake(
            nursery, client_stream, "testserver", path, options, _request(offered, None), shield_reader=True
        )

    async with _owned_connection(connect, disconnect_timeout) as (client, _):
        try:
            yield client, server
        finally:
            # Nobody reads the server side after the block: drop what is left,
            # so that a reader waiting on a full queue sees the client's Close,
            # and bound whatever else it has to do.
            server._abandon(disconnect_timeout)


# --- servers on loopback ------------------------------------------------------------------------


class LocalServer:
    """A running test server on the loopback interface (see :func:`start_server`).

    ``server`` is the :class:`WebSocketServer`, ``port`` its port, ``url`` its
    base URL without a trailing slash (``ws://127.0.0.1:PORT``, ``wss://`` with
    TLS): append a path, ``server.url + "/chat"``.  ``handler_errors`` holds,
    in order, each exception the handler raised other than
    :exc:`ConnectionClosed` (the usual way for a handler to learn that its
    client left); the server itself logs them and closes those connections
    with 1011, so without a look at this list a failed ``assert`` in a handler
    would fail no test.
    """

    def __init__(
        self, server: WebSocketServer, client_ssl_context: ssl.SSLContext | None, handler_errors: list[Exception]
    ) -> None:
        self.server = server
        self.client_ssl_context = client_ssl_context
        self.handler_errors = handler_errors  # the list the server's handler appends to

    @property
    def host(self) -> str:
        """The address the server listens on: ``127.0.0.1``."""
        return HOST

    @property
    def port(self) -> int:
        """The port the server listens on (chosen by the system)."""
        return self.server.port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT`` (``wss://`` for a TLS server), without a trailing slash."""
        scheme = "ws" if self.client_ssl_context is None else "wss"
        return f"{scheme}://{HOST}:{self.port}"

    def connect(self, path: str = "/", **options: Any) -> AbstractAsyncContextManager[WebSocketConnection]:
        """``open_websocket_url(self.url + path, ...)``: a client of this server, for ``async with``.

        ``options`` are :func:`open_websocket_url`'s keywords.  A TLS server's
        client trusts the test CA.  Leaving the block closes the connection as
        ``open_websocket_url`` does (the closing handshake is shielded from
        cancellation and bounded by ``disconnect_timeout``).
        """
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        return open_websocket_url(self.url + path, self.client_ssl_context, **options)

    def raise_handler_errors(self) -> None:
        """Raise what the handler raised, if anything: the exception itself if one, else an ExceptionGroup.

        The list is emptied, so that the errors are reported once.
        """
        errors = self._take_handler_errors()
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"the handler of the server at {self.url} raised {len(errors)} times", errors)

    def _take_handler_errors(self) -> list[Exception]:
        # Emptied in place: the server's handler goes on appending to this very list.
        errors = list(self.handler_errors)
        self.handler_errors.clear()
        return errors

    def __repr__(self) -> str:
        return f"<LocalServer {self.url}>"


class _RecordingHandler:
    """``handler``, appending to ``errors`` what it raises besides ConnectionClosed (and cancellation).

    Its ``repr()`` is the handler's, which the server's log names when the handler fails.
    """

    def __init__(self, handler: Handler, errors: list[Exception]) -> None:
        self._handler = handler
        self._errors = errors

    async def __call__(self, request: WebSocketRequest) -> object:
        try:
            return await self._handler(request)
        except Exception as exc:
            closed_only = isinstance(exc, ExceptionGroup) and exc.split(ConnectionClosed)[1] is None
            if not isinstance(exc, ConnectionClosed) and not closed_only:
                self._errors.append(exc)
            raise

    def __repr__(self) -> str:
        return repr(self._handler)


async def start_server(
    nursery: trio.Nursery,
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> LocalServer:
    """Start ``serve_websocket(handler, "127.0.0.1", 0, ssl_context, **options)`` in ``nursery``.

    Returns once the server listens.  It serves until ``nursery`` is
    cancelled, which cancels its handlers and closes their connections with
    1001 (each closing handshake bounded by ``disconnect_timeout``).  With
    ``ssl_context`` (a server context) it serves ``wss://``, and
    ``client_ssl_context`` is what :meth:`LocalServer.connect` uses (required
    then).  ``options`` are :func:`serve_websocket`'s keywords; bad ones
    raise here, before anything listens.
    """
    if (ssl_context is None) != (client_ssl_context is None):
        raise ValueError("give both ssl_context and client_ssl_context (a TLS server, its clients' context), or none")
    errors: list[Exception] = []
    server: WebSocketServer = await nursery.start(
        partial(serve_websocket, _RecordingHandler(handler, errors), HOST, 0, ssl_context, **options)
    )
    return LocalServer(server, client_ssl_context, errors)


class ServerFactory:
    """Starts test servers in one nursery, and reports what their handlers raised.

    ``await factory(handler, **options)`` is :func:`start_server` in the
    factory's nursery (with its TLS contexts, if any); ``servers`` lists what
    it started.  The pytest fixtures ``ws_server_factory`` and
    ``wss_server_factory`` are ServerFactory objects.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._nursery = nursery
        self._ssl_context = ssl_context
        self._client_ssl_context = client_ssl_context
        self.servers: list[LocalServer] = []

    async def __call__(self, handler: Handler, **options: Any) -> LocalServer:
        """A new server running ``handler``; ``options`` are :func:`serve_websocket`'s keywords.

        Returns once it listens.  Cancelling the call cancels the start (nothing is left listening).
        """
        server = await start_server(
            self._nursery,
            handler,
            ssl_context=self._ssl_context,
            client_ssl_context=self._client_ssl_context,
            **options,
        )
        self.servers.append(server)
        return server

    def raise_handler_errors(self) -> None:
        """Raise what the handlers of these servers raised (see :meth:`LocalServer.raise_handler_errors`)."""
        errors = [error for server in self.servers for error in server._take_handler_errors()]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"WebSocket handlers raised {len(errors)} times", errors)


# --- TLS: a throw-away certificate authority ---------------------------------------------------


def make_ca() -> trustme.CA:
    """A new throw-away certificate authority (a ``trustme.CA``).

    :raises ImportError: trustme is not installed (the ``testing`` extra).
    """
    try:
        import trustme
    except ImportError as exc:
        raise ImportError(
            f"a test certificate authority needs trustme: {_TESTING_EXTRA_HINT} (or pip install trustme)",
            name="trustme",
        ) from exc
    return trustme.CA()


def server_ssl_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate from ``ca`` for ``127.0.0.1``, ``localhost`` and ``::1``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost", "::1").configure_cert(context)
    return context


def client_ssl_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` (and verifies host names, as a default context does)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# --- close codes ---------------------------------------------------------------------------------


def _describe(reason: CloseReason) -> str:
    text = f"{reason.code} ({reason.name})"
    return text if reason.reason is None else f"{text} with reason {reason.reason!r}"


def _expected(code: int, reason: str | None) -> str:
    text = f"{code} ({CloseReason(code, None).name})"
    return text if reason is None else f"{text} with reason {reason!r}"


def assert_closed_with(
    closed: WebSocketConnection | ConnectionClosed | CloseReason | None, code: int, reason: str | None = None
) -> CloseReason:
    """Check that a connection closed (or is closing) with ``code``, and ``reason`` unless it is ``None``.

    ``closed`` is the connection, the :exc:`ConnectionClosed` it raised, or
    its :class:`CloseReason`.  Returns the CloseReason.

    :raises AssertionError: it is still open, or ended with another code or reason.
    """
    if isinstance(closed, WebSocketConnection):
        closed = closed.closed
    elif isinstance(closed, ConnectionClosed):
        closed = closed.reason
    if closed is None:
        raise AssertionError(f"expected a close with {_expected(code, reason)}, but the connection is not closed")
    if closed.code != code or (reason is not None and closed.reason != reason):
        raise AssertionError(f"expected a close with {_expected(code, reason)}, got {_describe(closed)}")
    return closed


class ExpectedClose:
    """``with expect_close(code):`` or ``async with``: the block must end because the connection closed.

    ``reason`` is the :class:`CloseReason` found, once the block is left.
    """

    def __init__(self, code: int, reason: str | None, connection: WebSocketConnection | None) -> None:
        self.code = code
        self.expected_reason = reason
        self.connection = connection
        self.reason: CloseReason | None = None

    def __enter__(self) -> ExpectedClose:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        closed = _closed_by(exc)
        if closed is not None:
            self.reason = self._check(closed, exc)
            return True
        if exc is not None and not isinstance(exc, trio.EndOfChannel):
            if isinstance(exc, Exception):  # not on Cancelled, KeyboardInterrupt: they are not the block's doing
                exc.add_note(f"(in a block expecting the connection to close with {self._wanted()})")
            return False
        # The block ended (``async for`` over the connection ends on 1000 and
        # 1001): only the connection can say how it closed.
        if self.connection is None:
            ending = "raised EndOfChannel" if exc is not None else "ended"
            raise AssertionError(
                f"expected the connection to close with {self._wanted()}, but the block {ending} without "
                "ConnectionClosed (give expect_close the connection, connection=ws, to check how it closed)"
            ) from exc
        self.reason = self._check(self.connection.closed, exc)
        return True

    async def __aenter__(self) -> ExpectedClose:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        return self.__exit__(kind, exc, traceback)

    def _wanted(self) -> str:
        return _expected(self.code, self.expected_reason)

    def _check(self, closed: CloseReason | None, exc: BaseException | None) -> CloseReason:
        try:
            return assert_closed_with(closed, self.code, self.expected_reason)
        except AssertionError as failure:
            # Chained to the block's exception, whose traceback shows where the close was seen.
            raise AssertionError(str(failure)) from exc


def _closed_by(exc: BaseException | None) -> CloseReason | None:
    """The CloseReason if ``exc`` is a ConnectionClosed (or a group of nothing else: the first one's).

    (A ConnectionClosed without a reason never comes from trio_ws; it reads as 1006.)
    """
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(ConnectionClosed)
        if matched is None or rest is not None:
            return None
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        exc = first
    if isinstance(exc, ConnectionClosed):
        return exc.reason if exc.reason is not None else CloseReason(1006, None)
    if isinstance(exc, trio.EndOfChannel) and isinstance(exc.__cause__, ConnectionClosed):
        return exc.__cause__.reason
    return None


def expect_close(
    code: int, reason: str | None = None, *, connection: WebSocketConnection | None = None
) -> ExpectedClose:
    """A context manager (``with`` or ``async with``) for a block that must end in a close with ``code``.

    The block passes when it raises :exc:`ConnectionClosed` with ``code`` (and
    ``reason``, unless ``None``), or :exc:`trio.EndOfChannel` for such a close
    (what ``receive()`` raises for 1000 and 1001); the exception is then
    swallowed.  Another close code fails with an :exc:`AssertionError` that
    gives both codes; another exception (a timeout's ``Cancelled`` included)
    passes through, with a note.  If the block ends without an exception
    (``async for message in ws`` ends quietly on 1000 and 1001), the
    ``connection`` given is checked instead; without one, that fails too::

        async with trio_ws.testing.expect_close(1008) as closed:
            await ws.get_message()
        assert closed.reason.reason == "bad token"
    """
    return ExpectedClose(code, reason, connection)
