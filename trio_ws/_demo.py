"""The demo behind ``python -m trio_ws serve``: a page and its WebSockets on one port.

This module uses only trio_ws's public API and is meant to be read as the
reference for a browser application (``examples/browser_demo.py`` is this
file).  On one port it serves:

- ``GET /``: the page (``demo_page.html``), which shows its WebSocket's
  ``readyState``, ``protocol``, ``extensions``, ``bufferedAmount`` and close
  events live;
- WebSocket ``/chat``: every message from a page is broadcast to all open
  pages with :func:`trio_ws.broadcast`, and the server speaks first: a
  ``tick`` on joining, then one every second to everybody;
- WebSocket ``/upload``: each message (the page's "Stream 64 MiB" button
  sends one of 64 MiB) is taken piece by piece as it arrives, with
  ``receive_fragments()``, never joined: the server counts its bytes, hashes
  them (SHA-256) and answers with JSON ``{"type": "upload", "bytes": N,
  "sha256": "<hex>", "pieces": P, "largest": L}``, for the page to compare
  with its own SHA-256 of what it sent;
- WebSocket on any other path: an echo server (what ``python -m trio_ws URL``
  and the Autobahn suite talk to).

The chat needs no task or queue of its own per page: ``broadcast()`` hands
each message to every page's connection and returns without waiting on any
of them.  A page that reads too slowly cannot hold up the others: once more
than ``write_limit`` bytes (64 KiB by default) wait for it, the next
broadcast closes it with 1013 (Try Again Later) instead of queueing more
(``on_slow="close"``; see docs/broadcast.md).

Across worker processes (``serve --workers N --pubsub redis://...``) each
worker has its own pages; what a page says is published on the bus instead,
and each worker's relay broadcasts what the bus brings to its own pages, so
every page hears every page, whichever worker serves it.  Each message says
which worker its sender is on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import trio

from trio_ws import (
    BroadcastResult,
    ConnectionClosed,
    HTTPRequest,
    HTTPResponse,
    PubSub,
    PubSubError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    broadcast,
    open_pubsub,
    serve_websocket,
)

# Which worker process serves (``python -m trio_ws serve --workers N`` sets it), for the page to show.
WORKER = os.environ.get("TRIO_WS_WORKER")

__all__ = ["ChatRoom", "page", "run_demo"]

SUBPROTOCOLS = ("chat.v1",)
TICK_SECONDS = 1.0
CHAT_TOPIC = "trio_ws.demo:chat"  # on the bus, when the demo runs with one
LOGGER = logging.getLogger("trio_ws.demo")
ON_SLOW: Literal["skip", "close"] = "close"  # a page over write_limit: closed with 1013
MAX_MESSAGE_SIZE = 16 * 2**20  # for a message received whole (chat, echo)
UPLOAD_MAX_SIZE = 64 * 2**20  # for a message received in pieces (upload): a larger one is closed with 1009


def _page_bytes() -> bytes:
    return resources.files("trio_ws").joinpath("demo_page.html").read_bytes()


async def page(request: HTTPRequest) -> HTTPResponse | None:
    """The plain-HTTP side of the port: the page at ``/``, 404 elsewhere."""
    if request.method in ("GET", "HEAD") and request.path in ("/", "/index.html"):
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
        if WORKER is not None:
            headers.append((b"x-worker", WORKER.encode()))
        return HTTPResponse(200, headers, _page_bytes())
    return None


@dataclass
class ChatRoom:
    """Everybody connected to ``/chat`` in this process: each page's connection and its name.

    With a ``bus``, what the pages say (and their comings and goings) goes through it, to the
    rooms of every process; :meth:`relay` brings it back to this room's pages.
    """

    members: dict[WebSocketConnection, str] = field(default_factory=dict)
    joined: int = 0
    bus: PubSub | None = None

    def broadcast(self, message: dict[str, object]) -> BroadcastResult:
        """Send ``message`` (as JSON text) to every member here, waiting on none."""
        return broadcast(self.members, json.dumps(message), on_slow=ON_SLOW)

    async def say(self, message: dict[str, object]) -> None:
        """``message`` to every page: through the bus if there is one, else to this room."""
        message["worker"] = WORKER
        if self.bus is None:
            self.broadcast(message)
            return
        try:
            await self.bus.publish(CHAT_TOPIC, json.dumps(message))
        except PubSubError as exc:  # the bus is down: the pages of this process still hear it
            LOGGER.warning("the chat's bus is down (%s): this message stays in worker %s", exc, WORKER)
            self.broadcast(message)

    async def relay(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """What the bus brings, to this room's pages, until cancelled."""
        assert self.bus is not None
        async with self.bus.subscribe(CHAT_TOPIC) as messages:
            task_status.started()
            async for text in messages:
                broadcast(self.members, text, on_slow=ON_SLOW)

    async def serve(self, request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol="chat.v1" if "chat.v1" in request.proposed_subprotocols else None)
        self.joined += 1
        # Names are per process: with workers, the worker's id keeps them apart.
        name = self.members[ws] = f"guest-{self.joined}" if WORKER is None else f"guest-{WORKER}.{self.joined}"
        broadcast([ws], json.dumps(self._tick()))  # the server speaks first
        await self.say({"type": "join", "name": name, "online": len(self.members)})
        try:
            while True:
                text = await ws.get_message()
                if isinstance(text, bytes):
                    text = f"[{len(text)} bytes of binary]"
                await self.say({"type": "chat", "name": name, "text": text[:2000]})
        except ConnectionClosed:
            pass
        finally:
            del self.members[ws]
            with trio.CancelScope(shield=True):  # a server shutting down still says goodbye
                with trio.move_on_after(1):
                    await self.say({"type": "leave", "name": name, "online": len(self.members)})

    async def tick(self) -> None:
        """A tick to everybody here every second, for as long as the demo runs."""
        while True:
            await trio.sleep(TICK_SECONDS)
            if self.members:
                self.broadcast(self._tick())

    def _tick(self) -> dict[str, object]:
        return {"type": "tick", "time": time.time(), "online": len(self.members), "worker": WORKER}


@asynccontextmanager
async def _chat_room(pubsub: str | None) -> AsyncIterator[ChatRoom]:
    """The chat room, with its bus and relay when ``pubsub`` names one (they end with the block)."""
    if pubsub is None:
        yield ChatRoom()
        return
    async with open_pubsub(pubsub) as bus, trio.open_nursery() as nursery:
        room = ChatRoom(bus=bus)
        await nursery.start(room.relay)
        yield room
        nursery.cancel_scope.cancel()


async def _upload(request: WebSocketRequest) -> None:
    """Count and hash each message as it arrives: memory stays at one piece, whatever its size."""
    ws = await request.accept()
    try:
        while True:
            size = pieces = largest = 0
            sha256 = hashlib.sha256()
            # decode=False: a text message comes as its UTF-8 bytes too.  The
            # bound is this call's: the connection's max_message_size is for
            # messages received whole.
            async for piece in ws.receive_fragments(max_size=UPLOAD_MAX_SIZE, decode=False):
                sha256.update(piece)
                size += len(piece)
                pieces += 1
                largest = max(largest, len(piece))
            ack = {"type": "upload", "bytes": size, "sha256": sha256.hexdigest(), "pieces": pieces, "largest": largest}
            await ws.send_message(json.dumps(ack))
    except ConnectionClosed:
        pass


async def _echo(request: WebSocketRequest) -> None:
    ws = await request.accept(subprotocol=next(iter(request.proposed_subprotocols), None))
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def run_demo(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    compression: str | None = None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
    pubsub: str | None = None,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the demo until cancelled.

    ``listeners``: serve on these instead of ``host``:``port`` (a worker of
    ``serve --workers N`` gives its own ``SO_REUSEPORT`` listener).
    ``pubsub``: a bus URL (``redis://...``, see :func:`trio_ws.open_pubsub`)
    that carries the chat to the pages of every process serving the demo.
    """
    async with _chat_room(pubsub) as room:
        await _serve_room(room, host, port, ssl_context, compression, listeners, task_status)


async def _serve_room(
    room: ChatRoom,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    compression: str | None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None,
    task_status: trio.TaskStatus[WebSocketServer],
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        path = request.path.partition("?")[0]
        if path == "/chat":
            await room.serve(request)
        elif path == "/upload":
            await _upload(request)
        else:
            await _echo(request)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(room.tick)
        if listeners is not None:
            server = WebSocketServer(
                handler, listeners, compression=compression, http_handler=page, max_message_size=MAX_MESSAGE_SIZE
            )
            await server.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # the server was closed (aclose): the ticks end too
            return
        await serve_websocket(
            handler,
            host,
            port,
            ssl_context,
            compression=compression,
            http_handler=page,
            max_message_size=MAX_MESSAGE_SIZE,
            task_status=task_status,
        )


if __name__ == "__main__":  # examples/browser_demo.py is this file: run it directly
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    print(f"open http://127.0.0.1:{port}/ in a browser (Ctrl-C to stop)", flush=True)
    try:
        trio.run(run_demo, "127.0.0.1", port)
    except KeyboardInterrupt:
        pass
