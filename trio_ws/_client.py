"""The client side: URL or host -> TCP (+TLS) stream -> opening handshake -> connection."""

from __future__ import annotations

import base64
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import trio
from wsproto import ConnectionType

from ._connection import WebSocketConnection
from ._deflate import Deflate
from ._errors import ConnectionRejected, ConnectionTimeout, DisconnectionTimeout, HandshakeError, reraise
from ._handshake import caller_headers
from ._log import Logger
from ._options import CONN_TIMEOUT, MAX_MESSAGE_SIZE, MESSAGE_QUEUE_SIZE, RECEIVE_BYTES, WRITE_LIMIT, Options
from ._proxy import Proxy, ProxySetting, check_proxy_support, connect_through, resolve_proxy
from ._url import WebSocketURL, parse_url, resolve_redirect, url_credentials
from ._version import __version__

__all__ = [
    "DEFAULT_USER_AGENT",
    "connect_websocket",
    "connect_websocket_url",
    "open_websocket",
    "open_websocket_url",
    "wrap_client_stream",
]

#: What a client sends as ``User-Agent`` unless told otherwise (``user_agent=``).
DEFAULT_USER_AGENT = f"trio_ws/{__version__} Python/{sys.version_info.major}.{sys.version_info.minor}"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
# Request headers a redirect to another origin must not carry (RFC 9110 15.4).
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie"})


@dataclass(frozen=True)
class _Request:
    """What a client sends, and how it reaches the server, beyond the connection's Options."""

    subprotocols: tuple[str, ...] = ()
    extra_headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)  # may hold credentials
    origin: str | None = None
    user_agent: str | None = DEFAULT_USER_AGENT
    proxy: ProxySetting = field(default=None, repr=False)  # may hold credentials
    unix_socket: str | None = None
    follow_redirects: bool = False
    max_redirects: int = _MAX_REDIRECTS

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The headers to send besides the handshake's own."""
        headers = list(self.extra_headers)
        names = {_header_name(name) for name, _ in headers}
        if self.origin is not None:  # replaces any Origin among the extra headers
            headers = [(name, value) for name, value in headers if _header_name(name) != b"origin"]
            headers.append((b"Origin", self.origin.encode("latin-1")))
        if self.user_agent is not None and b"user-agent" not in names:
            headers.append((b"User-Agent", self.user_agent.encode("latin-1")))
        return headers

    def elsewhere(self) -> _Request:
        """For a redirect to another origin: no credentials go there."""
        kept = tuple(
            (name, value) for name, value in self.extra_headers if _header_name(name) not in _CREDENTIAL_HEADERS
        )
        return replace(self, extra_headers=kept)


def _header_name(name: object) -> bytes | None:
    if isinstance(name, str):
        return name.lower().encode("latin-1", "replace")
    if isinstance(name, (bytes, bytearray)):
        return bytes(name).lower()
    return None  # (the handshake refuses it, with a clear error)


def _request(
    subprotocols: Iterable[str] | None,
    extra_headers: Iterable[tuple[Any, Any]] | None,
    **settings: Any,
) -> _Request:
    redirects = settings.get("max_redirects", _MAX_REDIRECTS)
    if not isinstance(redirects, int) or isinstance(redirects, bool) or redirects < 0:
        raise ValueError(f"max_redirects must be an int >= 0, not {redirects!r}")
    if settings.get("user_agent") is not None and not isinstance(settings["user_agent"], str):
        raise TypeError(f"user_agent must be a str or None, not {type(settings['user_agent']).__name__}")
    # Checked (and made bytes) here, so that a bad header fails before anything is sent.
    headers = tuple(caller_headers(extra_headers, drop=frozenset()))
    return _Request(subprotocols=tuple(subprotocols or ()), extra_headers=headers, **settings)


def _with_url_credentials(
    url: str, extra_headers: list[tuple[bytes, bytes]] | None
) -> list[tuple[bytes, bytes]] | None:
    """``ws://user:password@host/``: an ``Authorization: Basic`` header (unless one was given)."""
    credentials = url_credentials(url)
    if credentials is None:
        return extra_headers
    headers = list(extra_headers or ())
    if any(_header_name(name) == b"authorization" for name, _ in headers):
        return headers
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
    return [*headers, (b"Authorization", f"Basic {token}".encode("ascii"))]


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


# trio_ws's own keywords and their defaults (see _extras).
_NEW_DEFAULTS: dict[str, Any] = {
    "compression": None,
    "ping_interval": None,
    "ping_timeout": None,
    "origin": None,
    "write_limit": WRITE_LIMIT,
    "logger": None,
    "proxy": None,
    "unix_socket": None,
    "follow_redirects": False,
    "max_redirects": _MAX_REDIRECTS,
    "user_agent": DEFAULT_USER_AGENT,
}


def _extras(**given: Any) -> dict[str, Any]:
    """trio_ws's own keywords, only those not at their default: a ``*_url`` call then passes
    on exactly what trio-websocket's would, so that tests that mock the inner call still pass."""
    return {name: value for name, value in given.items() if value != _NEW_DEFAULTS[name]}


async def _handshake(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    options: Options,
    request: _Request,
    *,
    shield_reader: bool = False,
) -> WebSocketConnection:
    """Run the client's opening handshake on ``stream``; close it on any failure."""
    try:
        connection = WebSocketConnection(
            stream,
            ConnectionType.CLIENT,
            host=host,
            path=resource,
            client_subprotocols=request.subprotocols,
            client_extra_headers=request.headers(),
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


async def _open_stream(target: WebSocketURL, ssl_context: ssl.SSLContext | None, request: _Request) -> trio.abc.Stream:
    """TCP (or a Unix socket), through a proxy if asked, then TLS for ``wss://``."""
    stream: trio.abc.Stream
    if request.unix_socket is not None:
        stream = await trio.open_unix_socket(request.unix_socket)
    else:
        proxy = _proxy_for(target, request.proxy)
        if proxy is not None:
            stream = await connect_through(proxy, target.host, target.port)
        else:
            stream = await _open_tcp_stream(target.host, target.port)
    if ssl_context is not None:
        try:
            # SNI and the certificate check are for the server's name, through a proxy too.
            stream = trio.SSLStream(stream, ssl_context, server_hostname=target.host, https_compatible=True)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    return stream


def _proxy_for(target: WebSocketURL, proxy: ProxySetting) -> Proxy | None:
    """The proxy to go through for ``target``: ``proxy=`` given, or from the environment."""
    resolved = resolve_proxy(proxy, "wss" if target.secure else "ws", target.host, target.port)
    if resolved is not None:
        check_proxy_support(resolved)  # a missing extra is an error before anything is opened
    return resolved


async def _open_tcp_stream(host: str, port: int) -> trio.abc.Stream:
    try:
        return await trio.open_tcp_stream(host, port)
    except BaseExceptionGroup as group:
        # trio tries addresses concurrently ("happy eyeballs"): cancelled
        # meanwhile, it raises a group of Cancelled.  A caller expects one.
        if group.split(trio.Cancelled)[1] is None:  # nothing but cancellations
            reraise(_leaves(group)[0])
        raise


async def _connect(
    nursery: trio.Nursery,
    target: WebSocketURL,
    ssl_context: ssl.SSLContext | None,
    options: Options,
    request: _Request,
    *,
    shield_reader: bool = False,
) -> WebSocketConnection:
    """Open a connection to ``target``, following redirects if asked."""
    redirects = 0
    while True:
        stream = await _open_stream(target, ssl_context, request)
        try:
            return await _handshake(
                nursery, stream, target.host_header, target.resource, options, request, shield_reader=shield_reader
            )
        except ConnectionRejected as exc:
            location = _location(exc) if request.follow_redirects else None
            if location is None:
                raise
            redirects += 1
            if redirects > request.max_redirects:
                raise HandshakeError(f"more than {request.max_redirects} redirects") from exc
            try:
                new = resolve_redirect(target, location)
            except ValueError as bad:
                raise HandshakeError(f"a redirect to {location!r}, which is no WebSocket URL") from bad
            if target.secure and not new.secure:
                raise HandshakeError(f"refusing a redirect from wss:// to ws:// ({location!r})") from exc
            if (new.secure, new.host, new.port) != (target.secure, target.host, target.port):
                request = request.elsewhere()
            if new.secure and ssl_context is None:
                ssl_context = ssl.create_default_context()
            target = new


def _location(rejection: ConnectionRejected) -> str | None:
    """A redirect's ``Location``, if the rejection is one."""
    if rejection.status_code not in _REDIRECTS:
        return None
    for name, value in rejection.headers:
        if name.lower() == b"location":
            return value.decode("latin-1")
    return None


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
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
    proxy: ProxySetting = None,
    unix_socket: str | None = None,
    follow_redirects: bool = False,
    max_redirects: int = _MAX_REDIRECTS,
    user_agent: str | None = DEFAULT_USER_AGENT,
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
    :param write_limit: (new in trio_ws) the most bytes :func:`broadcast` queues for this
        connection while its peer does not take them.
    :param logger: (new in trio_ws) where this connection's records go (default
        ``trio_ws.client``).
    :param proxy: (new in trio_ws) a proxy URL (``http://``, ``https://``, ``socks5://``,
        ``socks5h://``, ``socks4://``, ``socks4a://``, with ``user:password@`` if it wants
        them), ``True`` to take one from the environment (``wss_proxy``/``ws_proxy``, then
        ``https_proxy``/``http_proxy``/``all_proxy``, honouring ``no_proxy``), or ``None``,
        the default: no proxy.  See docs/proxies.md.
    :param unix_socket: (new in trio_ws) connect to this Unix socket path instead of TCP;
        the host and resource still make the request.
    :param follow_redirects: (new in trio_ws) follow 301, 302, 303, 307 and 308 answers (at
        most ``max_redirects``), never from ``wss://`` to ``ws://``, and without
        ``Authorization`` or ``Cookie`` to another origin.  ``False``, the default: a
        redirect raises :exc:`ConnectionRejected`, as with trio-websocket.
    :param user_agent: (new in trio_ws) the ``User-Agent`` header; ``None`` sends none.
    :raises OSError: the TCP connection failed.
    :raises HandshakeError: the TLS or WebSocket handshake failed
        (:exc:`ConnectionRejected` if the server answered with an HTTP error,
        :exc:`ProxyError` if a proxy refused).
    """
    ssl_context = _ssl_context(use_ssl)  # a bad use_ssl is an error before anything happens
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
    request = _request(
        subprotocols,
        extra_headers,
        origin=origin,
        user_agent=user_agent,
        proxy=proxy,
        unix_socket=unix_socket,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
    )
    target = WebSocketURL(ssl_context is not None, host, port, resource)
    return await _connect(nursery, target, ssl_context, options, request)


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
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
    proxy: ProxySetting = None,
    unix_socket: str | None = None,
    follow_redirects: bool = False,
    max_redirects: int = _MAX_REDIRECTS,
    user_agent: str | None = DEFAULT_USER_AGENT,
) -> WebSocketConnection:
    """Like :func:`connect_websocket`, for a ``ws://`` or ``wss://`` URL.

    ``ssl_context`` is used for ``wss:`` (a default context when ``None``).  A
    ``user:password@`` in the URL (new in trio_ws) is sent as ``Authorization: Basic``.

    Cancellation, and the other exceptions: as :func:`connect_websocket`.

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
        extra_headers=_with_url_credentials(url, extra_headers),
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        disconnect_timeout=disconnect_timeout,
        **_extras(
            compression=compression,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            origin=origin,
            write_limit=write_limit,
            logger=logger,
            proxy=proxy,
            unix_socket=unix_socket,
            follow_redirects=follow_redirects,
            max_redirects=max_redirects,
            user_agent=user_agent,
        ),
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
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
    user_agent: str | None = DEFAULT_USER_AGENT,
) -> WebSocketConnection:
    """Run a client handshake over a stream you opened yourself.

    ``host`` is sent as the ``Host`` header, ``resource`` as the request
    target.  An :class:`trio.SSLStream` gets its TLS handshake first.  The
    reader task runs in ``nursery``, as with :func:`connect_websocket`.

    Cancellation: during the handshake, the call raises ``Cancelled`` and
    ``stream`` is closed.  Afterwards, cancelling ``nursery`` aborts the
    connection (1006, no Close frame); ``aclose()`` or ``async with conn:``
    closes it with a closing handshake.

    :raises HandshakeError: the server's answer is not a valid handshake
        (:exc:`ConnectionRejected` when it refused with an HTTP status).
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
    request = _request(subprotocols, extra_headers, origin=origin, user_agent=user_agent)
    return await _handshake(nursery, stream, host, resource, options, request)


class _CloseResult:
    timed_out = False


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
            reraise(error)
        if len(internal) == 1:
            reraise(internal[0])
        if not internal:
            # Only cancellations (a task of ours was cancelled with the body):
            # one Cancelled, the body's own if it has one, is what goes up.
            reraise(error or _leaves(group)[0])
        raise
    if error is not None:
        reraise(error)


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
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
    proxy: ProxySetting = None,
    unix_socket: str | None = None,
    follow_redirects: bool = False,
    max_redirects: int = _MAX_REDIRECTS,
    user_agent: str | None = DEFAULT_USER_AGENT,
) -> AsyncIterator[WebSocketConnection]:
    """Open a client connection for the body of an ``async with`` block.

    Connecting (TCP or a Unix socket, a proxy, TLS, the handshake and its
    redirects) is bounded by ``connect_timeout``.  On leaving the block, by any
    path, the connection is closed with 1000 and a closing handshake bounded by
    ``disconnect_timeout``, shielded from cancellation.  An exception from the
    body reaches the caller as itself (never inside an ExceptionGroup), as does
    a cancellation.

    The other parameters are those of :func:`connect_websocket`.

    :raises HandshakeError: the connection could not be opened: a network
        error (``__cause__`` holds the :class:`OSError` or :class:`ssl.SSLError`),
        :exc:`ConnectionTimeout`, :exc:`ConnectionRejected` or :exc:`ProxyError`.
    :raises DisconnectionTimeout: the body finished but the closing handshake
        did not within ``disconnect_timeout``.
    """
    ssl_context = _ssl_context(use_ssl)  # bad arguments are errors before anything happens
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
    request = _request(
        subprotocols,
        extra_headers,
        origin=origin,
        user_agent=user_agent,
        proxy=proxy,
        unix_socket=unix_socket,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
    )
    target = WebSocketURL(ssl_context is not None, host, port, resource)

    async def connect(nursery: trio.Nursery) -> WebSocketConnection:
        try:
            with trio.fail_after(connect_timeout):
                return await _connect(nursery, target, ssl_context, options, request, shield_reader=True)
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
    compression: str | Deflate | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    logger: Logger | None = None,
    origin: str | None = None,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    proxy: ProxySetting = None,
    unix_socket: str | None = None,
    follow_redirects: bool = False,
    max_redirects: int = _MAX_REDIRECTS,
    user_agent: str | None = DEFAULT_USER_AGENT,
) -> AbstractAsyncContextManager[WebSocketConnection]:
    """:func:`open_websocket` for a ``ws://`` or ``wss://`` URL.

    ``wss:`` uses ``ssl_context``, or a default client context when ``None``;
    the port defaults to 80 (``ws:``) or 443 (``wss:``).  A ``user:password@``
    in the URL (new in trio_ws) is sent as ``Authorization: Basic``.

    Cancellation, and the other exceptions: as :func:`open_websocket`.

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
        extra_headers=_with_url_credentials(url, extra_headers),
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        connect_timeout=connect_timeout,
        disconnect_timeout=disconnect_timeout,
        **_extras(
            compression=compression,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            origin=origin,
            write_limit=write_limit,
            logger=logger,
            proxy=proxy,
            unix_socket=unix_socket,
            follow_redirects=follow_redirects,
            max_redirects=max_redirects,
            user_agent=user_agent,
        ),
    )
