"""Keepalive: ping the peer every ``ping_interval`` seconds; close 1011 if no pong in ``ping_timeout``.

A connection whose peer vanished (a laptop closed, a NAT entry dropped) gives
no sign: no FIN, no reset, just silence.  Pings find out.

What keepalive means for an application that stopped reading: while a
received message waits for ``get_message()`` and the queue is full, the
reader task does not read the socket (that is how a slow reader pushes back
on the peer), so a pong could not be seen either.  Keepalive therefore
pauses while the reader is paused that way: it never closes a connection
because the *application* was slow.  It resumes, and checks the peer, as
soon as the application reads again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ._errors import ConnectionClosed

if TYPE_CHECKING:
    from ._connection import WebSocketConnection

__all__ = ["keepalive"]


async def keepalive(connection: WebSocketConnection, interval: float, timeout: float, close_timeout: float) -> None:
    """Run for the connection's life, next to its reader (both start once it is OPEN)."""
    open_ = connection.state.OPEN
    while connection.state is open_:
        with trio.move_on_after(interval):
            await connection._wait_closed()  # so that keepalive ends with the connection
        if connection.state is not open_:
            return
        if connection._reader_paused():
            continue  # the application is not reading: not the peer's fault
        started = trio.current_time()
        try:
            with trio.move_on_after(timeout) as waiting:
                await connection.ping()
        except ConnectionClosed:
            return
        if not waiting.cancelled_caught:
            connection._record_latency(trio.current_time() - started)
        elif not connection._reader_paused():
            reason = f"keepalive: no pong within {timeout:g} s"
            await connection._close_within(1011, reason, min(timeout, close_timeout))
            return
