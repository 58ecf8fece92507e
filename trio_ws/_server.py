"""The server side: listeners -> accepted streams -> opening handshake -> handler."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbcSet

import trio
from wsproto import ConnectionType

from ._connection import ConnectionState, WebSocketConnection
from ._deflate import Deflate
from ._endpoint import Endpoint, listener_endpoint
from ._errors import ConnectionClosed, HandshakeError
from ._handshake import HTTPRequest, HTTPResponse, UpgradeRequest, caller_headers, check_reject_status
from ._keepalive import KeepaliveSweep
from ._log import SERVER_LOGGER, Logger
from ._options import (
    CONN_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MESSAGE_QUEUE_SIZE,
    RECEIVE_BYTES,
    SERVER_HEADER,
    WRITE_LIMIT,
    Options,
)

__all__ = [
    "OpenConnections",
    "open_unix_listener",
    "HTTPHandler",
    "HTTPRequest",
    "HTTPResponse",
    "WebSocketRequest",
    "WebSocketServer",
    "serve_websocket",
    "wrap_server_stream",
]


Handler = Callable[["WebSocketRequest"], Awaitable[object]]
HTTPHandler = Callable[[HTTPRequest], Awaitable["HTTPResponse | None"]]

_UPGRADE_REQUIRED = HTTPResponse(
    426,
    [(b"upgrade", b"websocket"), (b"content-type", b"text/plain; charset=utf-8")],
    b"426 Upgrade Required: this is a WebSocket endpoint; connect with a WebSocket client (ws:// or wss://).\n",
)
_NOT_FOUND = HTTPResponse(404, [(b"content-type", b"text/plain; charset=utf-8")], b"404 Not Found\n")
_SERVER_ERROR = HTTPResponse(500, [(b"content-type", b"text/plain; charset=utf-8")], b"500 Internal Server Error\n")
_FORBIDDEN_ORIGIN = b"403 Forbidden: this origin may not open WebSockets here\n"
_HANDLER_TASK = "trio_ws._server.WebSocketServer._handle_connection"  # (see _engine._READER_TASK)
_SWEEP_TASK = "trio_ws._keepalive.KeepaliveSweep.run"  # (see _engine._READER_TASK)
# accept() errors that mean "not now" (out of descriptors or memory), not "never".
_TEMPORARY_ACCEPT_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class WebSocketRequest:
    """A client's opening handshake, waiting for the server's answer.

    The handler inspects it and calls :meth:`accept` (which returns the
    connection) or :meth:`reject` (which sends an HTTP response).
    """

    # __dict__: applications may add attributes
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_connection",
        "_event",
        "_reader_nursery",
        "_shield",
        "default_subprotocol",
    )

    def __init__(
        self, connection: WebSocketConnection, event: UpgradeRequest, reader_nursery: trio.Nursery, shield: bool
    ) -> None:
        self._connection = connection
        self._event = event
        # Where accept() starts the connection's reader, and whether it is
        # shielded (see WebSocketConnection._start_reader).
        self._reader_nursery = reader_nursery
        self._shield = shield
        #: (New in trio_ws) The subprotocol :meth:`accept` picks when not given one
        #: (``None``: none, as trio-websocket); a :class:`Router` route sets it.
        self.default_subprotocol: str | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The request headers as ``(name, value)`` pairs, names in lower case.

        As in trio-websocket, ``Host``, ``Sec-WebSocket-Protocol`` and
        ``Sec-WebSocket-Extensions`` are not in this list: see :attr:`host`,
        :attr:`proposed_subprotocols`.
        """
        return self._event.headers

    @property
    def path(self) -> str:
        """The request target: path and query string."""
        return self._event.target

    @property
    def host(self) -> str:
        """The ``Host`` header's value."""
        return self._event.host

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header (browsers always send it), or ``None``.

        A WebSocket has no same-origin policy: any page may connect.  Check
        this (or pass ``origins=`` to the server) to refuse foreign pages.
        """
        return self._event.origin

    @property
    def proposed_subprotocols(self) -> tuple[str, ...]:
        """The subprotocols the client offered, most preferred first."""
        return tuple(self._event.subprotocols)

    @property
    def local(self) -> Endpoint | str:
        """The connection's local endpoint."""
        return self._connection.local

    @property
    def remote(self) -> Endpoint | str:
        """The connection's remote endpoint."""
        return self._connection.remote

    async def accept(
        self,
        *,
        subprotocol: str | None = None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> WebSocketConnection:
        """Complete the handshake (101 Switching Protocols) and return the connection.

        Cancellation: before the 101 response is written, nothing is sent and
        the connection is then closed without a response (the client sees
        :exc:`HandshakeError`); while it is being written, the connection is
        aborted.  Once it is written, the request counts as answered.

        :param subprotocol: the subprotocol chosen, one of
            :attr:`proposed_subprotocols`; ``None`` (trio-websocket's default):
            :attr:`default_subprotocol`, which is ``None`` (no subprotocol) unless a
            router chose one (a handler that wants none then sets it to ``None`` first).
        :param extra_headers: more ``(name, value)`` response headers.
        :raises ValueError: the subprotocol was not proposed, or a header is invalid.
        :raises RuntimeError: the request was already accepted or rejected.
        :raises ConnectionClosed: the client has gone.
        """
        chosen = self.default_subprotocol if subprotocol is None else subprotocol
        await self._connection._accept(chosen, extra_headers, self._reader_nursery, self._shield)
        return self._connection

    def _log(self, level: int, message: str, *args: object) -> None:
        """A record about this request's connection, to its logger (for the router)."""
        self._connection._log(level, message, *args)

    async def reject(
        self,
        status_code: int,
        *,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Refuse the handshake with an HTTP response, then close the connection.

        After the response, a plain TCP connection lingers (FIN, then at most
        1 s for the client to close), so ``reject()`` may take up to a second.
        Cancellation: while the response is being written, the connection is
        aborted; while lingering, the response is already out and the
        connection is closed without waiting further.

        :param status_code: 200-599 (not 101), usually a 4xx code.
        :param extra_headers: more ``(name, value)`` response headers.
        :param body: the response body, if any.
        :raises ValueError: the status code or a header is invalid.
        :raises RuntimeError: the request was already accepted or rejected.
        """
        await self._connection._respond(status_code, extra_headers, body or b"")


async def wrap_server_stream(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    *,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    server_header: str | None = SERVER_HEADER,
) -> WebSocketRequest:
    """Read a client's opening handshake from a stream you accepted yourself.

    The request is read in the calling task; once accepted, the connection's
    reader task runs in ``nursery``.  Answer the returned request with
    :meth:`~WebSocketRequest.accept` or :meth:`~WebSocketRequest.reject`;
    close the connection when done.

    Cancellation: while the request is being read, the call raises
    ``Cancelled`` and ``stream`` is closed.  Once accepted, cancelling
    ``nursery`` aborts the connection (1006, no Close frame); close it
    yourself (``async with conn:``) for a closing handshake.

    :raises HandshakeError: the client sent no valid handshake (it got a 4xx
        response: 400, 426, 431...) or went away first.
    """
    options = Options(
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        disconnect_timeout=disconnect_timeout,
        compression=compression,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_limit=write_limit,
        logger=logger,
        server_header=server_header,
    )
    connection = WebSocketConnection(stream, ConnectionType.SERVER, _options=options)
    try:
        event = await connection._read_request()
        if isinstance(event, HTTPRequest):
            await _answer_http(connection, event, None)
            raise HandshakeError(f"not a WebSocket request: {event.method} {event.target} (answered 426)")
    except BaseException:
        await connection._abort("the opening handshake did not complete")
        raise
    if event is None:
        error = connection._handshake_error()
        raise error or HandshakeError("the client closed the connection before its handshake")
    return WebSocketRequest(connection, event, nursery, False)


async def _answer_http(connection: WebSocketConnection, request: HTTPRequest, handler: HTTPHandler | None) -> None:
    """Answer a plain HTTP request: the application's response, or 426 Upgrade Required.

    Whatever the handler does (raise, return something that is not a valid
    response), the client gets an answer and the server goes on.
    """
    response: object = _UPGRADE_REQUIRED
    if handler is not None:
        try:
            response = await handler(request) or _NOT_FOUND
        except Exception:
            connection._log(
                logging.ERROR, "HTTP handler %r failed on %s %s", handler, request.method, request.target, exc_info=True
            )
            response = _SERVER_ERROR
    try:
        if not isinstance(response, HTTPResponse):
            raise TypeError(f"an HTTP handler must return an HTTPResponse or None, not {type(response).__name__}")
        check_reject_status(response.status_code)
        if not isinstance(response.body, (bytes, bytearray, memoryview)):
            raise TypeError(f"an HTTPResponse body must be bytes, not {type(response.body).__name__}")
        status, body = response.status_code, bytes(response.body)
        headers = caller_headers(response.headers, drop=frozenset())
    except (TypeError, ValueError):
        connection._log(
            logging.ERROR,
            "HTTP handler %r: invalid response to %s %s",
            handler,
            request.method,
            request.target,
            exc_info=True,
        )
        status, headers, body = _SERVER_ERROR.status_code, _SERVER_ERROR.headers, _SERVER_ERROR.body
    try:
        await connection._respond(status, headers, body)
    except ConnectionClosed:
        pass  # the client left


def _check_max_connections(max_connections: int | None) -> int | None:
    if max_connections is not None and (not isinstance(max_connections, int) or max_connections < 1):
        raise ValueError(f"max_connections must be a positive int or None, not {max_connections!r}")
    return max_connections


def _origin_set(origins: Iterable[str | None] | None) -> frozenset[str | None] | None:
    if origins is None:
        return None
    if isinstance(origins, str):
        raise TypeError("origins must be a collection of origins, not one string")
    return frozenset(origin.lower() if origin is not None else None for origin in origins)


def _origin_allowed(origin: str | None, allowed: frozenset[str | None] | None) -> bool:
    if allowed is None:
        return True
    return (origin.lower() if origin is not None else None) in allowed


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _is_own_connection_closed(exc: BaseException, connection: WebSocketConnection) -> bool:
    """A ConnectionClosed about the handler's own connection (which is indeed closed)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_own_connection_closed(inner, connection) for inner in exc.exceptions)
    return (
        isinstance(exc, ConnectionClosed)
        and connection.state is not ConnectionState.OPEN
        and exc.reason is connection.closed
    )


def _is_fatal(exc: BaseException) -> bool:
    """KeyboardInterrupt, SystemExit and the like: never swallowed."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_fatal(inner) for inner in exc.exceptions)
    return not isinstance(exc, (Exception, trio.Cancelled))


class OpenConnections(AbcSet["WebSocketConnection"]):
    """The server's OPEN connections: a live, read-only view (``len``, iteration, ``in``).

    Live: it follows the server as connections open and close, without copying.
    Iterating it while connections come and go is safe (it iterates a snapshot);
    ``len()`` counts them.
    """

    __slots__ = ("_all",)

    def __init__(self, connections: set[WebSocketConnection]) -> None:
        self._all = connections

    def __contains__(self, connection: object) -> bool:
        return connection in self._all and connection.state is ConnectionState.OPEN

    def __iter__(self) -> Iterator[WebSocketConnection]:
        open_ = ConnectionState.OPEN
        return (connection for connection in list(self._all) if connection.state is open_)

    def __len__(self) -> int:
        open_ = ConnectionState.OPEN
        return sum(1 for connection in self._all if connection.state is open_)

    def __repr__(self) -> str:
        return f"<OpenConnections: {len(self)}>"


class WebSocketServer:
    """Serves WebSocket connections on one or more listeners.

    For each connection, the opening handshake is read (within
    ``connect_timeout``) and ``handler`` is called with the
    :class:`WebSocketRequest`.  When the handler returns, the connection is
    closed with 1000; when it raises, the error is logged with its traceback
    and the connection closed with 1011 (the server goes on); when the server
    is cancelled, open connections are closed with 1001 (Going Away).  Each
    closing handshake is bounded by ``disconnect_timeout``.  A handler that
    returns without accepting or rejecting refuses the client with 403.

    New in trio_ws (keyword arguments):

    - ``compression="deflate"`` accepts permessage-deflate from clients
      that offer it.
    - ``ping_interval``, ``ping_timeout``: keepalive for each connection
      (see :func:`connect_websocket`); off by default.
    - ``origins``: the ``Origin`` values allowed to connect (compared without
      regard to case, e.g. ``{"https://example.com"}``; ``None`` in the
      collection admits requests with no ``Origin`` header, as non-browser
      clients send).  Any other request gets 403 before the handler runs.
      ``origins=None``, the default, admits every request.
    - ``max_connections``: serve at most this many connections at once;
      one more gets ``503 Service Unavailable`` (with ``Retry-After``) at
      once, without its request being read.  ``None``, the default: no limit.
    - ``http_handler``: an async function called with an :class:`HTTPRequest`
      for a request that is not a WebSocket upgrade (a health check, a
      page); it returns the :class:`HTTPResponse` to send (``None``: 404).
      Without it such requests get ``426 Upgrade Required``.
    """

    def __init__(
        self,
        handler: Handler,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        handler_nursery: trio.Nursery | None = None,
        message_queue_size: int = MESSAGE_QUEUE_SIZE,
        max_message_size: int = MAX_MESSAGE_SIZE,
        receive_buffer_size: int | None = RECEIVE_BYTES,
        connect_timeout: float = CONN_TIMEOUT,
        disconnect_timeout: float = CONN_TIMEOUT,
        compression: str | Deflate | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        write_limit: int = WRITE_LIMIT,
        logger: Logger | None = None,
        server_header: str | None = SERVER_HEADER,
        origins: Iterable[str | None] | None = None,
        http_handler: HTTPHandler | None = None,
        max_connections: int | None = None,
        _options: Options | None = None,
    ) -> None:
        if len(listeners) == 0:
            raise ValueError("Listeners must contain at least one item.")
        self._handler = handler
        self._handler_nursery = handler_nursery
        self._listeners = list(listeners)
        # One frozen object that every connection of this server shares.
        self._options = _options or Options(
            message_queue_size=message_queue_size,
            max_message_size=max_message_size,
            receive_buffer_size=receive_buffer_size,
            connect_timeout=connect_timeout,
            disconnect_timeout=disconnect_timeout,
            compression=compression,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            write_limit=write_limit,
            logger=logger,
            server_header=server_header,
        )
        self._logger = self._options.logger or SERVER_LOGGER
        self._origins = _origin_set(origins)
        self._http_handler = http_handler
        self._max_connections = _check_max_connections(max_connections)
        self._accepting = trio.CancelScope()  # cancelled by aclose(): stop accepting
        self._connections: set[WebSocketConnection] = set()
        self._serving = 0  # connections being served (their handler tasks)
        self._idle = trio.Event()  # set (and replaced) whenever _serving drops to 0
        # What aclose() cancels when handlers outstay it: the handler nursery
        # of each run(), and with a caller's handler_nursery, the nursery of
        # each connection.  (No cancel scope per connection otherwise: each
        # costs about 600 bytes for as long as the connection lives.)
        self._scopes: set[trio.CancelScope] = set()
        # Keepalive for all the connections, from one task that run() starts.
        options = self._options
        self._keepalive = (
            None
            if options.ping_interval is None
            else KeepaliveSweep(options.ping_interval, options.keepalive_timeout, options.disconnect_timeout)
        )

    @property
    def port(self) -> int:
        """The port of the server's only listener (useful after binding port 0).

        :raises RuntimeError: there is more than one listener, or it has no port.
        """
        if len(self._listeners) > 1:
            raise RuntimeError("Cannot get port because this server has more than 1 listener.")
        endpoint = listener_endpoint(self._listeners[0])
        if not isinstance(endpoint, Endpoint):
            raise RuntimeError(f"This socket does not have a port: {endpoint}")
        return endpoint.port

    @property
    def connections(self) -> OpenConnections:
        """(New in trio_ws) The connections this server has accepted and that are OPEN: a
        live read-only view, for :func:`broadcast` or to count clients."""
        return OpenConnections(self._connections)

    @property
    def listeners(self) -> list[Endpoint | str]:
        """An :class:`Endpoint` per TCP listener; the ``repr()`` of any other listener."""
        return [listener_endpoint(listener) for listener in self._listeners]

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled, or until :meth:`aclose` has closed the server.

        Supports ``server = await nursery.start(server.run)``.
        """
        own_scope = trio.CancelScope()  # our handler nursery's, in effect
        self._scopes.add(own_scope)
        try:
            with own_scope:
                async with trio.open_nursery() as own_handlers:
                    handlers = self._handler_nursery or own_handlers
                    sweep = self._keepalive
                    try:
                        if sweep is not None and sweep.start():
                            # Where the connections live: it outlives run() with them.
                            handlers.start_soon(sweep.run, name=_SWEEP_TASK)
                        with self._accepting:
                            async with trio.open_nursery() as acceptors:
                                for listener in self._listeners:
                                    acceptors.start_soon(self._accept_loop, listener, handlers)
                                self._logger.debug(
                                    "Listening on %s", ", ".join(str(listener) for listener in self.listeners)
                                )
                                task_status.started(self)
                    finally:
                        if sweep is not None:
                            sweep.stop()
                    # aclose() stopped the accept loops; it ends the
                    # connections, and the handler nursery (ours) waits for
                    # their tasks.
        finally:
            self._scopes.discard(own_scope)

    async def aclose(self) -> None:
        """Shut the server down gracefully, and return once it is down.

        Stops accepting connections (the listeners are closed), closes every
        open connection with 1001 (Going Away), so that handlers see
        :exc:`ConnectionClosed`, and waits for the handlers to return, at most
        ``disconnect_timeout`` seconds; handlers still running then are
        cancelled.  Connections still in their opening handshake are dropped.
        Idempotent.  (Cancelling :meth:`run` or ``serve_websocket`` instead
        cancels the handlers, and closes their connections with 1001.)
        """
        self._accepting.cancel()
        with trio.CancelScope(shield=True) as scope:
            timeout = self._options.disconnect_timeout
            scope.deadline = trio.current_time() + timeout
            async with trio.open_nursery() as nursery:
                for connection in list(self._connections):
                    nursery.start_soon(connection._close_within, 1001, "server shutting down", timeout)
            while self._serving:
                await self._idle.wait()
        if self._serving:  # handlers that outlived the deadline
            for handler_scope in list(self._scopes):
                handler_scope.cancel()
            with trio.CancelScope(shield=True):
                while self._serving:
                    await self._idle.wait()

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream], handlers: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _TEMPORARY_ACCEPT_ERRORS:
                        raise
                    # Out of file descriptors or memory: wait for connections
                    # to end rather than spin.
                    self._logger.error("accept() on %r failed: %s; retrying in 100 ms", listener, exc)
                    await trio.sleep(0.1)
                    continue
                if self._max_connections is not None and self._serving >= self._max_connections:
                    handlers.start_soon(self._refuse_overload, stream)
                else:
                    # Readers join the handlers in our own nursery; a caller's
                    # nursery gets one task per connection, as trio-websocket's.
                    readers = handlers if self._handler_nursery is None else None
                    handlers.start_soon(self._handle_connection, stream, readers, name=_HANDLER_TASK)

    async def _refuse_overload(self, stream: trio.abc.Stream) -> None:
        """More connections than ``max_connections``: answer 503 at once, and close."""
        self._logger.warning("max_connections (%d) reached: answering 503", self._max_connections)
        connection = WebSocketConnection(stream, ConnectionType.SERVER, _options=self._options)
        await connection._refuse_within(503, self._options.connect_timeout, [(b"retry-after", b"1")])

    async def _handle_connection(self, stream: trio.abc.Stream, readers: trio.Nursery | None) -> None:
        # The connection's reader runs in ``readers``, the server's own
        # handler nursery, next to this task, and aclose() cancels that
        # nursery for handlers that outstay it: a nursery per connection
        # would cost about 1.3 KiB, a cancel scope 600 bytes.  The finally
        # clause below stops the reader, so it ends with this task.
        if readers is None:
            async with trio.open_nursery() as nursery:
                self._scopes.add(nursery.cancel_scope)
                try:
                    await self._handle_connection(stream, nursery)
                finally:
                    self._scopes.discard(nursery.cancel_scope)
            return
        connection = WebSocketConnection(stream, ConnectionType.SERVER, _options=self._options)
        connection._keepalive = self._keepalive
        self._serving += 1
        self._connections.add(connection)
        why = "the opening handshake did not complete within connect_timeout"
        try:
            event = None
            with trio.move_on_after(self._options.connect_timeout):
                event = await connection._read_request()
            if isinstance(event, HTTPRequest):
                why = "a plain HTTP request was answered"
                await _answer_http(connection, event, self._http_handler)
            elif event is not None and not _origin_allowed(event.origin, self._origins):
                why = "the request's origin is not allowed"
                connection._log(logging.INFO, "refused a WebSocket from origin %r", event.origin)
                await connection._respond(403, [(b"content-type", b"text/plain")], _FORBIDDEN_ORIGIN)
            elif event is not None:
                why = "the connection's handler ended"
                # The handler runs here, not in a method of its own: one
                # frame fewer kept for each connection while it lives.  Its
                # reader starts at accept(), in ``readers``, shielded: on
                # server shutdown it must live on for the 1001 closing
                # handshake; the finally clause below stops it.
                try:
                    await self._handler(WebSocketRequest(connection, event, readers, True))
                except BaseException as exc:
                    if _is_cancellation(exc):
                        await connection._conclude(1001, "server shutting down", 503, self._options.disconnect_timeout)
                        raise
                    if _is_fatal(exc):
                        await connection._conclude(1011, "internal error", 500, self._options.disconnect_timeout)
                        raise
                    if _is_own_connection_closed(exc, connection):
                        # The usual way for a handler to learn that its client left.
                        connection._log(logging.DEBUG, "handler ended by %r", exc)
                        await connection._conclude(1000, None, 403, self._options.disconnect_timeout)
                    else:
                        connection._log(logging.ERROR, "WebSocket handler %r failed", self._handler, exc_info=exc)
                        await connection._conclude(1011, "internal error", 500, self._options.disconnect_timeout)
                else:
                    await connection._conclude(1000, None, 403, self._options.disconnect_timeout)
        finally:
            # Normally closed already; this covers timeouts and cancellation.
            self._connections.discard(connection)
            await connection._release(why)
            self._serving -= 1
            if not self._serving:
                self._idle.set()
                self._idle = trio.Event()


async def open_unix_listener(path: str, *, mode: int | None = None, backlog: int | None = None) -> trio.SocketListener:
    """(New in trio_ws) A listener on a Unix socket, for :class:`WebSocketServer`.

    ``WebSocketServer(handler, [await open_unix_listener(path)]).run()`` serves
    WebSockets there, as on TCP (behind a reverse proxy on the same machine,
    say).  A socket file left at ``path`` by an earlier run is replaced (any
    other file there is an error); ``mode`` sets its permissions.

    Cancellation: a cancelled call leaves no listener open (the socket is
    closed); a stale socket file it already removed stays removed.

    :raises OSError: the socket could not be made.
    """
    where = trio.Path(path)
    if await where.exists():
        if not stat.S_ISSOCK((await where.stat()).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        await where.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        if mode is not None:
            await where.chmod(mode)
        sock.listen(backlog if backlog is not None else socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def serve_websocket(
    handler: Handler,
    host: str | bytes | None,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    handler_nursery: trio.Nursery | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    connect_timeout: float = CONN_TIMEOUT,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    server_header: str | None = SERVER_HEADER,
    origins: Iterable[str | None] | None = None,
    http_handler: HTTPHandler | None = None,
    max_connections: int | None = None,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSockets over TCP (TLS when ``ssl_context`` is given) until cancelled.

    Supports ``server = await nursery.start(serve_websocket, ...)``, which
    returns once the server is listening.  ``host`` ``None`` binds every
    interface (possibly several listeners, with different ports if ``port``
    is 0).  See :class:`WebSocketServer` for what happens to each connection.

    ``compression="deflate"`` (new in trio_ws) accepts permessage-deflate
    (RFC 7692) from clients that offer it (browsers do); ``None``, the
    default, accepts no extension, as trio-websocket.  ``origins`` and
    ``http_handler`` (new in trio_ws) are described under
    :class:`WebSocketServer`.
    """
    # Bad arguments fail here, before any socket is opened.
    options = Options(
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        connect_timeout=connect_timeout,
        disconnect_timeout=disconnect_timeout,
        compression=compression,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_limit=write_limit,
        logger=logger,
        server_header=server_header,
    )
    _origin_set(origins)
    _check_max_connections(max_connections)
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]
    if ssl_context is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
    server = WebSocketServer(
        handler,
        listeners,
        handler_nursery=handler_nursery,
        origins=origins,
        http_handler=http_handler,
        max_connections=max_connections,
        _options=options,
    )
    await server.run(task_status=task_status)
