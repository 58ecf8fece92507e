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

Two ways to run it, with the same rules:

- ``keepalive()``, a task next to the connection's reader: for a client, which
  has one connection.
- ``KeepaliveSweep``, one task for all of a server's connections.  A task of
  its own per connection (its frame, its cancel scopes and their deadlines,
  the ping's event) cost about 3.5 KiB of memory per connection and gave
  the garbage collector that many more objects to walk; the sweep keeps a
  place in two ordered tables per connection and writes each Ping without
  waiting, the way a broadcast writes (``Engine._ping_now``).  The pings
  spread over the interval as the connections' opening times do.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import TYPE_CHECKING

import trio

from ._errors import ConnectionClosed

if TYPE_CHECKING:
    from ._connection import WebSocketConnection
    from ._engine import Engine

__all__ = ["SWEEP_PAYLOAD", "KeepaliveSweep", "keepalive"]

SWEEP_PAYLOAD = b"trio_ws keepalive"  # the sweep's Ping payload (its pongs give the latency)
_PINGS_PER_STEP = 64  # pings the sweep writes before it lets other tasks run


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


class _Task(enum.Enum):
    """Where the sweep's task is."""

    NONE = enum.auto()  # not started, or returned
    RUNNING = enum.auto()
    STOPPING = enum.auto()  # the server stopped serving: return once no connection is left


class KeepaliveSweep:
    """Keepalive for many connections from one task (a server's; see the module's docstring).

    ``add()`` when a connection opens, ``discard()`` when it leaves OPEN,
    ``answered()`` for each pong it receives; ``run()`` is the task, started where the
    server's connections live (its handler nursery, which may be the caller's) when
    ``start()`` says so, and ``stop()`` when the server stops serving: the task then
    returns once its last connection has left, so that connections that outlive the
    server (in a caller's handler nursery) are still pinged, and no nursery waits for it
    longer than for them.
    """

    __slots__ = ("_close_timeout", "_due", "_interval", "_sleep", "_task", "_timeout", "_waiting")

    def __init__(self, interval: float, timeout: float, close_timeout: float) -> None:
        self._interval = interval
        self._timeout = timeout
        self._close_timeout = close_timeout
        # When each connection's next ping is due, in that order: a connection goes
        # in at the end with now + interval, and now only grows.
        self._due: OrderedDict[Engine, float] = OrderedDict()
        # Pings written and not answered: when each ping was sent, in that order.
        self._waiting: OrderedDict[Engine, float] = OrderedDict()
        self._sleep = trio.CancelScope()  # run()'s wait; add() brings its deadline forward
        self._task = _Task.NONE

    def __len__(self) -> int:
        return len(self._due) + len(self._waiting)

    def add(self, connection: Engine) -> None:
        """Ping ``connection`` from ``interval`` seconds from now on."""
        self._ping_at(connection, trio.current_time() + self._interval)

    def _ping_at(self, connection: Engine, due: float) -> None:
        # Always at the end (``due`` only grows), and run() wakes in time for it: it may
        # be asleep until a pong's deadline, later than ``due`` when ping_timeout is longer
        # than ping_interval.
        self._due[connection] = due
        if due < self._sleep.deadline:
            self._sleep.deadline = due

    def discard(self, connection: Engine) -> None:
        """``connection`` left OPEN: no more pings, and no reference kept."""
        self._due.pop(connection, None)
        self._waiting.pop(connection, None)
        if self._task is _Task.STOPPING and not self:
            self._sleep.deadline = -float("inf")  # the last one: run() returns now

    def start(self) -> bool:
        """The server begins to serve: whether ``run()`` must be started (it is not
        running already, as after an earlier ``stop()`` with connections left)."""
        was = self._task
        self._task = _Task.RUNNING
        return was is _Task.NONE

    def stop(self) -> None:
        """The server stopped serving: ``run()`` returns once no connection is left."""
        if self._task is _Task.RUNNING:
            self._task = _Task.STOPPING
            if not self:
                self._sleep.deadline = -float("inf")

    def answered(self, connection: Engine, payload: bytes) -> None:
        """A pong came: any pong after our ping shows the peer alive (it may answer only
        the latest of several pings, RFC 6455 5.5.3); ours gives the latency too."""
        sent = self._waiting.pop(connection, None)
        if sent is None:
            return
        now = trio.current_time()
        if payload == SWEEP_PAYLOAD:
            connection._record_latency(now - sent)
        self._ping_at(connection, now + self._interval)

    async def run(self) -> None:
        """Ping what is due and close what did not answer, then sleep until the next of them."""
        try:
            await self._sweep()
        finally:
            self._task = _Task.NONE

    async def _sweep(self) -> None:
        due, waiting = self._due, self._waiting
        while True:
            if self._task is _Task.STOPPING and not self:
                return
            now = trio.current_time()
            written = 0
            while waiting:
                connection, sent = next(iter(waiting.items()))
                if sent + self._timeout > now:
                    break
                del waiting[connection]
                if connection._reader_paused():
                    due[connection] = now + self._interval  # the application's fault, not the peer's
                else:
                    reason = f"keepalive: no pong within {self._timeout:g} s"
                    connection._close_silent(reason, min(self._timeout, self._close_timeout))
            while due:
                connection, at = next(iter(due.items()))
                if at > now:
                    break
                del due[connection]
                if connection._reader_paused():
                    due[connection] = now + self._interval
                elif connection._ping_now(SWEEP_PAYLOAD):
                    waiting[connection] = now
                    written += 1
                    if written % _PINGS_PER_STEP == 0:
                        await trio.lowlevel.checkpoint()
                        now = trio.current_time()
            wake = min(
                next(iter(due.values())) if due else float("inf"),
                next(iter(waiting.values())) + self._timeout if waiting else float("inf"),
            )
            with trio.CancelScope(deadline=wake) as self._sleep:
                await trio.sleep_forever()
