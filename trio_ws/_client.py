"""The client side: URL or host -> TCP (+TLS) stream -> opening handshake -> connection."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn, TypedDict

import trio
from wsproto import ConnectionType

from ._connection import WebSocketConnection
from ._errors import ConnectionTimeout, DisconnectionTimeout, HandshakeError
from ._log import Logger
from ._options import CONN_TIMEOUT, MAX_MESSAGE_SIZE, MESSAGE_QUEUE_SIZE, RECEIVE_BYTES, WRITE_LIMIT, Options
from ._url import WebSocketURL, parse_url

__all__ = [
    "connect_websocket",
    "connect_websocket_url",
    "open_websocket",
    "open_websocket_url",
    "wrap_client_stream",
]


def _ssl_context(use_ssl: bool | ssl.SSLContext) -> ssl.SSLContext | None:
    if use_ssl is True:
        return ssl.create_default_context()
    if use_ssl is False:
        return None
    if isinstance(use_ssl, ssl.SSLContext):
        return use_ssl
    raise TypeError("`use_ssl` argument must be bool or ssl.SSLContext")


def _split_url(url: str, ssl_context: ssl.SSLContext | None) -> tuple[WebSocketURL, bool | ssl.SSLContext]:
    parsed = parse_url(url)
    if ssl_context is None:
        return parsed, parsed.secure
    if not parsed.secure:
        raise ValueError("SSL context must be None for ws: URL scheme")
    return parsed, ssl_context


class _Extras(TypedDict, total=False):
    compression: str | None
    ping_interval: float | None
    ping_timeout: float | None
    origin: str | None
    write_limit: int
    logger: Logger


def _extras(
    compression: str | None,
    ping_interval: float | None,
    ping_timeout: float | None,
    origin: str | None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
) -> _Extras:
    """trio_ws's own options, only those given: a ``*_url`` call then passes on exactly
    what trio-websocket's would, so that tests that mock the inner call still pass."""
    extras: _Extras = {}
    if compression is not None:
        extras["compression"] = compression
    if ping_interval is not None:
        extras["ping_interval"] = ping_interval
    if ping_timeout is not None:
        extras["ping_timeout"] = ping_timeout
    if origin is not None:
        extras["origin"] = origin
    if write_limit != WRITE_LIMIT:
        extras["write_limit"] = write_limit
    if logger is not None:
        extras["logger"] = logger
    return extras


async def _handshake(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    options: Options,
    *,
    subprotocols: Iterable[str] | None,
    extra_headers: list[tuple[bytes, bytes]] | None,
    origin: str | None,
    shield_reader: bool = False,
) -> WebSocketConnection:
    """Run the client's opening handshake on ``stream``; close it on any failure."""
    if origin is not None:  # replaces any Origin among the extra headers
        kept = [(name, value) for name, value in extra_headers or () if name.lower() not in (b"origin", "origin")]
        extra_headers = [*kept, (b"Origin", origin.encode("latin-1"))]
    try:
        connection = WebSocketConnection(
            stream,
            ConnectionType.CLIENT,
            host=host,
            path=resource,
            client_subprotocols=subprotocols,
            client_extra_headers=extra_headers,
            _options=options,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        # The response is read in this task: no handoff to the reader and back.
        await connection._open()
        connection._start_reader(nursery, shield_reader)
    except BaseException:
        await connection._abort("the opening handshake did not complete")
        raise
    return connection


async def _connect(
    nursery: trio.Nursery,
    host: str,
    port: int,
    resource: str,
    use_ssl: bool | ssl.SSLContext,
    options: Options,
    **handshake_options: Any,
) -> WebSocketConnection:
    ssl_context = _ssl_context(use_ssl)
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    except BaseExceptionGroup as group:
        # trio tries addresses concurrently ("happy eyeballs"): cancelled
        # meanwhile, it raises a group of Cancelled.  A caller expects one.
        if group.split(trio.Cancelled)[1] is None:  # nothing but cancellations
            _reraise(_leaves(group)[0])
        raise
    if ssl_context is not None:
        try:
            stream = trio.SSLStream(stream, ssl_context, server_hostname=host, https_compatible=True)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    host_header = WebSocketURL(ssl_context is not None, host, port, resource).host_header
    return await _handshake(nursery, stream, host_header, resource, options, **handshake_options)


async def connect_websocket(
    nursery: trio.Nursery,
    host: str,
    port: int,
    resource: str,
    *,
    use_ssl: bool | ssl.SSLContext,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
) -> WebSocketConnection:
    """Connect to ``host``:``port``, request ``resource``, return the open connection.

    The connection's reader task runs in ``nursery``.  The caller closes the
    connection (``await conn.aclose()``); cancelling ``nursery`` instead aborts
    it without a closing handshake.  Most programs want :func:`open_websocket`.

    :param use_ssl: an :class:`ssl.SSLContext`, ``True`` for a default client
        context, ``False`` for plain TCP.
    :param subprotocols: the subprotocols to offer, most preferred first.
    :param extra_headers: more ``(name, value)`` request headers; the ones the
        handshake sets itself are dropped, a ``Host`` header replaces ours.
    :param message_queue_size: how many received messages may wait unread.
    :param max_message_size: a larger incoming message (measured by ``len()``)
        closes the connection with 1009.
    :param receive_buffer_size: bytes asked of the stream per read (``None``:
        trio's default).
    :param disconnect_timeout: (new in trio_ws) how long :meth:`aclose` waits
        for the closing handshake.
    :param compression: (new in trio_ws) ``"deflate"`` offers permessage-deflate
        (RFC 7692); ``None``, the default, offers no extension, as trio-websocket.
    :param origin: (new in trio_ws) an ``Origin`` header to send, as a browser
        does (e.g. ``"https://example.com"``), for servers that check it.
    :param ping_interval: (new in trio_ws) keepalive: ping the peer every so
        many seconds (``None``, the default: never), and close the
        connection with 1011 if no pong comes within ``ping_timeout``
        seconds (default: ``ping_interval``).  ``conn.latency`` reports the
        last round trip.  Keepalive pauses while the application leaves a
        full message queue unread, so a slow reader is never mistaken for a
        dead peer.
    :param ping_timeout: (new in trio_ws) see ``ping_interval``.
    :raises OSError: the TCP connection failed.
    :raises HandshakeError: the TLS or WebSocket handshake failed
        (:exc:`ConnectionRejected` if the server answered with an HTTP error).
    """
    _ssl_context(use_ssl)  # a bad use_ssl is an error before anything happens
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
    )
    return await _connect(
        nursery,
        host,
        port,
        resource,
        use_ssl,
        options,
        subprotocols=subprotocols,
        extra_headers=extra_headers,
        origin=origin,
    )


async def connect_websocket_url(
    nursery: trio.Nursery,
    url: str,
    ssl_context: ssl.SSLContext | None = None,
    *,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
) -> WebSocketConnection:
    """Like :func:`connect_websocket`, for a ``ws://`` or ``wss://`` URL.

    ``ssl_context`` is used for ``wss:`` (a default context when ``None``).

    :raises ValueError: the URL is not a valid WebSocket URL, or an
        ``ssl_context`` was given for a ``ws:`` URL.
    """
    parsed, use_ssl = _split_url(url, ssl_context)
    return await connect_websocket(
        nursery,
        parsed.host,
        parsed.port,
        parsed.resource,
        use_ssl=use_ssl,
        subprotocols=subprotocols,
        extra_headers=extra_headers,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        disconnect_timeout=disconnect_timeout,
        **_extras(compression, ping_interval, ping_timeout, origin, write_limit, logger),
    )


async def wrap_client_stream(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    *,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
) -> WebSocketConnection:
    """Run a client handshake over a stream you opened yourself.

    ``host`` is sent as the ``Host`` header, ``resource`` as the request
    target.  An :class:`trio.SSLStream` gets its TLS handshake first.  The
    reader task runs in ``nursery``, as with :func:`connect_websocket`.
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
    )
    return await _handshake(
        nursery, stream, host, resource, options, subprotocols=subprotocols, extra_headers=extra_headers, origin=origin
    )


class _CloseResult:
    timed_out = False


def _reraise(error: BaseException) -> NoReturn:
    """Raise ``error`` again without replacing its ``__context__``."""
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


@asynccontextmanager
async def _owned_connection(
    connect: Callable[[trio.Nursery], Awaitable[WebSocketConnection]],
    disconnect_timeout: float,
) -> AsyncIterator[tuple[WebSocketConnection, _CloseResult]]:
    """Run a connection for the body of an ``async with``; close it on the way out.

    The connection's reader task needs a nursery around the body, and under
    trio's strict exception groups anything leaving a nursery comes out
    wrapped in an ExceptionGroup.  So nothing leaves this nursery: the
    outcome of connecting and of the body is caught inside, the connection
    is closed, the reader stopped, and the caught exception raised again
    outside, as itself.  Only a crash of the reader task itself (a bug, or
    KeyboardInterrupt delivered there) comes out of the nursery.
    """
    result = _CloseResult()
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                connection = await connect(nursery)
            except BaseException as exc:
                error = exc
            else:
                try:
                    yield connection, result
                except BaseException as exc:
                    error = exc
                try:
                    result.timed_out = not await connection._close_within(1000, None, disconnect_timeout)
                finally:
                    connection._stop_reader()
    except BaseExceptionGroup as group:
        # The reader task crashed: a bug, or KeyboardInterrupt delivered there.
        internal = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in internal):
            raise KeyboardInterrupt from group
        if error is not None and not isinstance(error, trio.Cancelled):
            # The body's own exception wins; the internal ones become its
            # context, next to the context it already had.
            if error.__context__ is not None and not error.__suppress_context__:
                internal.append(error.__context__)
            error.__context__ = BaseExceptionGroup("internal errors in trio_ws while the body ran", internal)
            error.__suppress_context__ = False
            _reraise(error)
        if len(internal) == 1:
            _reraise(internal[0])
        if not internal:
            # Only cancellations (a task of ours was cancelled with the body):
            # one Cancelled, the body's own if it has one, is what goes up.
            _reraise(error or _leaves(group)[0])
        raise
    if error is not None:
        _reraise(error)


@asynccontextmanager
async def open_websocket(
    host: str,
    port: int,
    resource: str,
    *,
    use_ssl: bool | ssl.SSLContext,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    connect_timeout: float = CONN_TIMEOUT,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """Open a client connection for the body of an ``async with`` block.

    Connecting (TCP, TLS, handshake) is bounded by ``connect_timeout``.  On
    leaving the block, by any path, the connection is closed with 1000 and a
    closing handshake bounded by ``disconnect_timeout``, shielded from
    cancellation.  An exception from the body reaches the caller as itself
    (never inside an ExceptionGroup), as does a cancellation.

    The other parameters are those of :func:`connect_websocket`.

    :raises HandshakeError: the connection could not be opened: a network
        error (``__cause__`` holds the :class:`OSError` or :class:`ssl.SSLError`),
        :exc:`ConnectionTimeout`, or :exc:`ConnectionRejected`.
    :raises DisconnectionTimeout: the body finished but the closing handshake
        did not within ``disconnect_timeout``.
    """

    _ssl_context(use_ssl)  # bad arguments are errors before anything happens
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
    )

    async def connect(nursery: trio.Nursery) -> WebSocketConnection:
        try:
            with trio.fail_after(connect_timeout):
                return await _connect(
                    nursery,
                    host,
                    port,
                    resource,
                    use_ssl,
                    options,
                    subprotocols=subprotocols,
                    extra_headers=extra_headers,
                    origin=origin,
                    shield_reader=True,
                )
        except trio.TooSlowError:
            raise ConnectionTimeout(f"the opening handshake did not finish within {connect_timeout:g} s") from None
        except OSError as exc:
            raise HandshakeError(f"could not connect to {host}:{port}: {exc}") from exc

    async with _owned_connection(connect, disconnect_timeout) as (connection, close_result):
        yield connection
    if close_result.timed_out:
        raise DisconnectionTimeout(f"the closing handshake did not finish within {disconnect_timeout:g} s")


def open_websocket_url(
    url: str,
    ssl_context: ssl.SSLContext | None = None,
    *,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    connect_timeout: float = CONN_TIMEOUT,
    disconnect_timeout: float = CONN_TIMEOUT,
    compression: str | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
    receive_buffer_size: int | None = RECEIVE_BYTES,
) -> AbstractAsyncContextManager[WebSocketConnection]:
    """:func:`open_websocket` for a ``ws://`` or ``wss://`` URL.

    ``wss:`` uses ``ssl_context``, or a default client context when ``None``;
    the port defaults to 80 (``ws:``) or 443 (``wss:``).

    :raises ValueError: the URL is not a valid WebSocket URL, or an
        ``ssl_context`` was given for a ``ws:`` URL.
    """
    parsed, use_ssl = _split_url(url, ssl_context)
    return open_websocket(
        parsed.host,
        parsed.port,
        parsed.resource,
        use_ssl=use_ssl,
        subprotocols=subprotocols,
        extra_headers=extra_headers,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        connect_timeout=connect_timeout,
        disconnect_timeout=disconnect_timeout,
        **_extras(compression, ping_interval, ping_timeout, origin, write_limit, logger),
    )
