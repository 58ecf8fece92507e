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

from ._client import _owned_connection, wrap_client_stream
from ._connection import CONN_TIMEOUT, MAX_MESSAGE_SIZE, MESSAGE_QUEUE_SIZE, WebSocketConnection
from ._server import wrap_server_stream

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
) -> AsyncIterator[tuple[WebSocketConnection, WebSocketConnection]]:
    """A connected ``(client, server)`` pair over memory streams, for one ``async with``.

    ``subprotocols`` is what the client offers and ``subprotocol`` what the
    server picks.  On exit the client closes with 1000 and the closing
    handshake completes (bounded by ``disconnect_timeout``); exceptions from
    the body pass through as themselves, as with ``open_websocket``.
    """
    server_side: list[WebSocketConnection] = []
    accepted = trio.Event()

    async def connect(nursery: trio.Nursery) -> WebSocketConnection:
        client_stream, server_stream = trio.testing.memory_stream_pair()

        async def serve() -> None:
            request = await wrap_server_stream(
                nursery, server_stream, message_queue_size, max_message_size, disconnect_timeout=disconnect_timeout
            )
            server_side.append(await request.accept(subprotocol=subprotocol))
            accepted.set()

        nursery.start_soon(serve)
        client = await wrap_client_stream(
            nursery,
            client_stream,
            "testserver",
            path,
            subprotocols=subprotocols,
            message_queue_size=message_queue_size,
            max_message_size=max_message_size,
            disconnect_timeout=disconnect_timeout,
        )
        await accepted.wait()
        return client

    async with _owned_connection(connect, disconnect_timeout) as (client, _):
        yield client, server_side[0]
