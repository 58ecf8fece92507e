"""Helpers for testing code that uses trio_ws, without sockets.

``websocket_pair()`` gives a connected client and server over in-memory
streams (:func:`trio.testing.memory_stream_pair`), opening handshake done,
so that a handler or a client routine can be tested with trio's
``MockClock`` and without the network::

    async with trio_ws.testing.websocket_pair() as (client, server):
        await client.send_message("hi")
        assert await server.get_message() == "hi"
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio
import trio.testing
from wsproto import ConnectionType

from ._client import _handshake, _owned_connection, _request
from ._connection import WebSocketConnection
from ._deflate import Deflate
from ._errors import HandshakeError
from ._handshake import UpgradeRequest
from ._log import Logger
from ._options import CONN_TIMEOUT, MAX_MESSAGE_SIZE, MESSAGE_QUEUE_SIZE, WRITE_LIMIT, Options
from ._server import WebSocketRequest

__all__ = ["websocket_pair"]


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
