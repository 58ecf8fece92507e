"""The inbox: received messages waiting for the application, and the backpressure.

The reader task puts complete messages in; ``get_message()`` takes them out,
in order.  This is where a slow application pushes back on the peer: once
more than ``message_queue_size`` messages wait (trio-websocket's channel
plus the one message its reader held while blocked), the reader *pauses*:
it stops reading the socket, TCP's flow control makes the peer wait, and
memory stays bounded.  When the application takes a message from a paused
reader's inbox, the connection parses on in the application's task (bytes
already read, no write ever: see ``WebSocketConnection.get_message``) and
wakes the reader only when the parsing needs it: more bytes, or a reply to
write.

Nothing is handed between tasks here but messages: every other outcome of
parsing (a Ping's Pong, the peer's Close, a protocol error) is the
protocol's state, which the reader reads when it wakes.

The end, in two ways: ``end()`` when no message will come any more (the
peer closed, or the connection failed): messages already here are still
taken, then ``get()`` returns ``None``; ``drop()`` when *we* closed: unread
messages are dropped and ``get()`` returns ``None`` at once (trio-websocket's
rule).
"""

from __future__ import annotations

import enum

import trio

from ._sync import Flag, WaitQueue

__all__ = ["Inbox", "Item"]


class _Intake(enum.Enum):
    OPEN = "open"  # messages may still arrive
    ENDED = "ended"  # no more will arrive; those here are still delivered
    DROPPED = "dropped"  # closed locally: nothing more is delivered


# A message, or a piece of a streamed message: (piece, last, text).
Item = str | bytes | tuple[str | bytes, bool, bool]
_OPEN = _Intake.OPEN  # a class attribute of an Enum is slow to look up: this is a global


class Inbox:
    """Messages in arrival order, bounded by pausing the one task that puts them in."""

    __slots__ = (
        "_delivered",
        "_drained",
        "_intake",
        "_limit",
        "_messages",
        "_resume",
        "_taken",
        "_waiters",
        "reader_paused",
    )

    def __init__(self, limit: int) -> None:
        # Messages, and pieces of a streamed message (tuples): a piece
        # counts as a message for the bound.  (A deque's first block alone is
        # 600 bytes.)
        self._messages: list[Item] = []
        self._limit = limit
        self._intake = _Intake.OPEN
        self._waiters = WaitQueue()  # tasks in get(), waiting for a message
        self._resume: Flag | None = None  # set to wake the reader, paused on a full inbox
        #: The reader is paused and nobody has woken it yet (a plain attribute:
        #: get_message() reads it for every message).
        self.reader_paused = False
        # Messages put in, and taken out: what wait_taken() compares.
        self._delivered = 0
        self._taken = 0
        self._drained: Flag | None = None

    # --- the reader's side -------------------------------------------------------------------

    def put(self, message: Item) -> bool:
        """Add a message; ``True`` if the inbox is now full and the reader should pause
        (more than ``message_queue_size`` messages wait)."""
        if self._intake is not _OPEN:
            return False
        messages = self._messages
        messages.append(message)
        self._delivered += 1
        self._waiters.unpark()
        return len(messages) > self._limit

    async def pause(self) -> None:
        """The reader waits here until a message is taken (or the inbox ends)."""
        self._resume = resume = Flag()
        self.reader_paused = True
        try:
            await resume.wait()
        finally:
            self._resume = None
            self.reader_paused = False

    def wake(self) -> None:
        if self._resume is not None:
            self._resume.set()
            self.reader_paused = False

    async def wait_taken(self, grace: float) -> None:
        """Wait until every message put in so far was taken, at most ``grace`` seconds.

        Counted when ``get()`` returns, not when a message enters the inbox:
        the receiving task may not have run yet.
        """
        if self._taken < self._delivered and self._intake is not _Intake.DROPPED:
            self._drained = Flag()
            with trio.move_on_after(grace):
                await self._drained.wait()
            self._drained = None

    # --- the application's side --------------------------------------------------------------

    async def get(self) -> Item | None:
        """The next message, waiting for it; ``None`` once the inbox has ended.

        A cancel point; a schedule point only if it waits.  A cancelled call
        takes nothing.
        """
        messages = self._messages
        while not messages:
            if self._intake is not _OPEN:
                await trio.lowlevel.checkpoint()
                return None
            await self._waiters.park()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except trio.Cancelled:
            self._waiters.unpark()  # the message we were woken for is another task's now
            raise
        message = messages.pop(0)
        self._taken += 1
        if self._drained is not None and self._taken >= self._delivered:
            self._drained.set()
        return message

    def __len__(self) -> int:
        return len(self._messages)

    def drop_pieces(self) -> bool:
        """Drop the pieces of a streamed message from the front; ``True`` if its last was
        among them (else the rest is still to come)."""
        messages = self._messages
        while messages and isinstance(messages[0], tuple):
            item = messages.pop(0)
            self._taken += 1
            if item[1]:  # (piece, last, text)
                return True
        return False

    # --- the end -----------------------------------------------------------------------------

    def end(self) -> None:
        """No more messages will arrive; those here are still delivered."""
        if self._intake is _OPEN:
            self._intake = _Intake.ENDED
        self._waiters.unpark_all()
        if self._resume is not None:
            self.wake()

    def drop(self) -> None:
        """A local close: unread messages are dropped, ``get()`` returns ``None`` at once."""
        self._intake = _Intake.DROPPED
        self._messages.clear()
        self._delivered = self._taken
        self._waiters.unpark_all()
        self.wake()
