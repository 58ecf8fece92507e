"""broadcast(): one message to many connections, waiting on none of them.

A loop of ``await ws.send_message(m)`` over a server's connections goes as
fast as the slowest peer: each send waits until its socket takes the frame.
``broadcast()`` instead hands the frame to each connection's outgoing queue
and returns: the socket takes what it can at once, and a task of the
connection's own writes the rest.  A peer that does not read lets its queue
grow only to ``write_limit`` bytes; past that, the message is not queued for
it (``on_slow="skip"``), or the connection is closed (``on_slow="close"``,
code 1013, try again later).

Each distinct frame is built once: unmasked and uncompressed for every
server connection without permessage-deflate (or with ``compress=False``),
compressed once for all connections whose deflate has no context takeover
and the same parameters.  A connection whose deflate keeps its context
(the usual case, and what browsers ask for) compresses for itself, and a
client connection masks each frame with its own key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._protocol import BINARY, TEXT

if TYPE_CHECKING:
    from ._connection import WebSocketConnection

__all__ = ["BroadcastResult", "broadcast"]

_SLOW_CODE = 1013  # Try Again Later: the peer may come back, and read faster


@dataclass(frozen=True)
class BroadcastResult:
    """What :func:`broadcast` did: how many connections the message was queued for, how many
    were skipped (not OPEN, sending a message in pieces, or over ``write_limit`` with
    ``on_slow="skip"``), and how many were closed for being too slow."""

    sent: int
    skipped: int
    closed: int


def broadcast(
    connections: Iterable[WebSocketConnection],
    message: str | bytes | bytearray | memoryview,
    *,
    compress: bool = True,
    on_slow: Literal["skip", "close"] = "skip",
) -> BroadcastResult:
    """Send ``message`` to every connection in ``connections``, without waiting on any.

    Returns once the message is handed to each connection's outgoing queue (or
    skipped).  The socket takes what it can at once; the rest goes out from a
    task of the connection's, in the nursery its reader runs in.  Connections
    that are not OPEN are skipped, and so are those sending a message in pieces
    (its frames may not be interleaved with another message's).  One whose queue
    holds more than its ``write_limit`` bytes is skipped with ``on_slow="skip"``,
    the default, or closed with 1013 (Try Again Later) with ``on_slow="close"``.

    This is a plain function, not a coroutine: it is no checkpoint, and needs
    no task per connection.  ``server.connections`` is the usual
    ``connections``; any iterable of connections will do.

    :param compress: ``False`` sends the message uncompressed to connections that
        agreed on permessage-deflate.
    :raises ValueError: ``message`` is not str or bytes-like, or ``on_slow`` is unknown.
    """
    if isinstance(message, str):
        opcode, payload = TEXT, message.encode("utf-8")
    elif isinstance(message, (bytes, bytearray, memoryview)):
        opcode, payload = BINARY, bytes(message)
    else:
        raise ValueError(f"message must be str, bytes, bytearray or memoryview, not {type(message).__name__}")
    if on_slow not in ("skip", "close"):
        raise ValueError(f'on_slow must be "skip" or "close", not {on_slow!r}')
    frames: dict[object, bytes] = {}
    sent = skipped = closed = 0
    for connection in connections:
        outcome = connection._broadcast(opcode, payload, compress, frames)
        if outcome:
            sent += 1
        elif outcome is None and on_slow == "close":
            connection._close_slow(_SLOW_CODE, "too slow to take broadcast messages")
            closed += 1
        else:
            skipped += 1
    return BroadcastResult(sent, skipped, closed)
