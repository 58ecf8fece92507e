"""The engine of a connection: its reader task, its writes, and the end of its transport.

``WebSocketConnection`` (``_connection``) is the object users see; this is
its base class, the part that does the I/O between four pieces:

- the protocol (``_protocol``), which decides everything about bytes and
  states and never waits;
- the transport (``_transport``), the only code that touches the stream;
- the inbox (``_inbox``), where received messages wait for the application
  and where backpressure comes from;
- one reader task, started once the connection is OPEN, in a nursery its
  owner can see: it reads, hands the protocol's events on (messages to the
  inbox, pongs to ``ping()``), writes what the protocol queued (a Pong, the
  reply to a Close) and ends the transport when the protocol says so.

Writers (``send_message``, ``ping``, the reader's replies, the handshake's
answers) take one FIFO lock, so frames never interleave, and the protocol
refuses data after a Close.  Every path out of the reader task closes the
transport, so a connection never outlives its reader, and its reader never
outlives the nursery it runs in.

The rest of the package (``_client``, ``_server``, ``_keepalive``,
``testing``) uses a connection's public attributes and the methods listed
under "The package's interface" below, and nothing else; no module but
this one and ``_connection`` touches a connection's private attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import trio

from ._errors import ConnectionClosed, HandshakeError
from ._handshake import Headers, HTTPRequest, UpgradeRequest
from ._inbox import Inbox
from ._keepalive import KeepaliveSweep, keepalive
from ._log import CLIENT_LOGGER, SERVER_LOGGER, describe_event, describe_frames, log
from ._options import Options
from ._protocol import (
    BINARY,
    CLOSE,
    FRAGMENT,
    MESSAGE,
    PING,
    PONG,
    TEXT,
    VIOLATION,
    YIELD,
    Ending,
    Protocol,
    ServerProtocol,
    State,
)
from ._sync import Flag, SendLock
from ._transport import Transport, describe

if TYPE_CHECKING:
    from ._connection import WebSocketConnection

__all__ = ["Engine", "PendingPing"]


_GRACE = 1.0  # seconds for a lingering close, and for the application to answer before a failure
_NEED_DATA = 0  # what _deliver() returns when the protocol needs more bytes
# Pongs the reader lets another writer send for it before it waits for them (see _reader_task).
_REPLY_BACKLOG = 2**16
_EVENT_NAMES = {
    MESSAGE: "MESSAGE",
    FRAGMENT: "PIECE",
    PING: "PING",
    PONG: "PONG",
    CLOSE: "CLOSE",
    VIOLATION: "VIOLATION",
}
# The names trio would give these tasks, given once: trio makes a new string for each task
# it names itself, and a server holds thousands of readers (about 60 bytes each).
_READER_TASK = "trio_ws._engine.Engine._reader_task"
_WRITER_TASK = "trio_ws._engine.Engine._write_behind"
_KEEPALIVE_TASK = "trio_ws._keepalive.keepalive"
_HANDSHAKE_READ = 2**16  # a handshake read when receive_buffer_size is None (trio's default)


async def _close_iterator(iterator: object) -> None:
    """Close a generator (or async generator) we stopped taking pieces from, so that its
    ``finally`` runs now and not at garbage collection."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()
    else:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _piece_payload(piece: object, opcode: int) -> tuple[int, bytes]:
    if isinstance(piece, str):
        kind, data = TEXT, piece.encode("utf-8")
    elif isinstance(piece, (bytes, bytearray, memoryview)):
        kind, data = BINARY, bytes(piece)
    else:
        raise TypeError(f"a message's pieces must be str or bytes-like, not {type(piece).__name__}")
    if opcode and kind != opcode:
        raise TypeError("the pieces of one message must all be str (text) or all bytes-like (binary)")
    return kind, data


class _Closed(Flag):
    """The transport is closed; ``timed_out``: because the closing handshake ran out of time;
    ``bound``: the time the reader was given to finish it, in seconds (for the log)."""

    __slots__ = ("bound", "timed_out")

    def __init__(self) -> None:
        super().__init__()
        self.timed_out = False
        self.bound = 0.0


class PendingPing:
    """A ping in flight: set when its pong (or the end of the connection) comes."""

    __slots__ = ("event", "ponged")

    def __init__(self) -> None:
        self.event = Flag()
        self.ponged = False


class Engine:
    """The I/O of one connection (see the module's docstring); ``WebSocketConnection``'s base."""

    # Slots: about 2 KiB less per connection than an instance dict.
    __slots__ = (
        "_buffered_amount",
        "_closed",
        "_id",
        "_inbox",
        "_keepalive",
        "_latency",
        "_message_lock",
        "_nursery",
        "_options",
        "_pings",
        "_protocol",
        "_reader",
        "_send_lock",
        "_stream",
        "_trace",
        "_transport",
        "_unwritten",
    )

    def __init__(self, protocol: Protocol, stream: trio.abc.Stream, options: Options, connection_id: int) -> None:
        self._protocol = protocol
        self._id = connection_id
        self._options = options
        self._transport = Transport(stream, options.receive_buffer_size)
        self._inbox = Inbox(options.message_queue_size)
        self._send_lock = SendLock()
        self._pings: dict[bytes, PendingPing] = {}
        self._reader: trio.CancelScope | None = None
        self._closed = _Closed()  # the transport is closed
        self._trace = False  # frames are traced (at DEBUG): decided when the connection opens
        self._buffered_amount = 0  # message bytes handed to send_message() and not yet written
        self._unwritten = 0  # bytes taken from the protocol by _write() and not yet written
        self._latency: float | None = None  # the last keepalive round trip
        # A server's keepalive, which pings all its connections (set by the server
        # before the connection opens; a client's runs in a task of its own).
        self._keepalive: KeepaliveSweep | None = None
        # Made the first time a message is sent in pieces: held for the whole
        # message, so that no other message's frames go out between its own.
        self._message_lock: SendLock | None = None
        # The receive_fragments() iterator whose message is being received, if any.
        self._stream: object | None = None
        # Where the reader runs, and where a broadcast starts a task to write what the
        # socket did not take at once (see _kick).
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------
    # The package's interface: what _client, _server, _keepalive and
    # testing use, and nothing else does.

    async def _open(self) -> None:
        """Client: TLS handshake, the upgrade request, the server's answer, in the caller's task.

        :raises HandshakeError: the handshake failed (:exc:`ConnectionRejected`
            if the server answered with an HTTP response); the transport is closed.
        """
        transport = self._transport
        try:
            await transport.start_tls()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            raise HandshakeError(f"TLS handshake failed: {cause}") from cause
        try:
            await transport.send_all(self._protocol.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            raise HandshakeError(f"could not send the opening handshake: {cause}") from cause
        await self._read_handshake()
        if self._protocol.handshake_error is not None:
            raise self._protocol.handshake_error

    async def _read_request(self) -> UpgradeRequest | HTTPRequest | None:
        """Server: read the client's request in the caller's task (``None``: it failed, and
        was answered with an HTTP error if it could be)."""
        await self._read_handshake()
        protocol: ServerProtocol = self._protocol  # type: ignore[assignment]  # (no isinstance: a call)
        return protocol.request if protocol.state is State.REQUESTED else None

    def _handshake_error(self) -> BaseException | None:
        """What the opening handshake failed with, if it did."""
        return self._protocol.handshake_error

    async def _conclude(self, code: int, reason: str | None, status: int, timeout: float) -> None:
        """Server, after the handler: close with ``code``, or refuse with HTTP ``status`` if the
        handler never answered the handshake; shielded, at most ``timeout`` seconds."""
        state = self._protocol.state
        if state is State.REQUESTED or state is State.CONNECTING:
            await self._refuse_within(status, timeout)
        else:
            await self._close_within(code, reason, timeout)

    async def _release(self, why: str) -> None:
        """The owner is done with the connection: abort what is left of it (normally
        nothing) and stop its reader."""
        if not self._transport.closed:
            await self._abort(why)
        if self._reader is not None:
            self._reader.cancel()

    async def _accept(
        self, subprotocol: str | None, extra_headers: Headers | None, reader_nursery: trio.Nursery, shield: bool
    ) -> None:
        """Server: answer 101 Switching Protocols, and start the reader in ``reader_nursery``."""
        protocol: ServerProtocol = self._protocol  # type: ignore[assignment]  # (no isinstance: a call)
        async with self._send_lock:
            protocol.accept(subprotocol, extra_headers)  # checks its arguments first
            # OPEN from here, and so in server.connections: a broadcast may queue a frame
            # for it now, which goes out right after the 101 (_write drains the queue), or
            # from a task in the reader's nursery.
            self._nursery = reader_nursery
            await self._write(protocol.data_to_send())
        self._start_reader(reader_nursery, shield)

    async def _respond(self, status_code: int, extra_headers: Headers | None, body: bytes) -> None:
        """Server: answer with an HTTP response instead (a rejection, plain HTTP, an error), then close.

        The one path for every HTTP answer but the 101: the protocol writes
        the response, the transport lingers so that the client reads it.
        """
        protocol: ServerProtocol = self._protocol  # type: ignore[assignment]  # (no isinstance: a call)
        protocol.respond(status_code, extra_headers, body)
        await self._end_transport()

    async def _refuse_within(self, status_code: int, timeout: float, headers: Headers | None = None) -> None:
        """Server: refuse an undecided handshake with a plain-text response, shielded and bounded."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + timeout
            body = f"{status_code} {HTTPStatus(status_code).phrase}\n".encode("ascii")
            try:
                headers = [*(headers or ()), (b"content-type", b"text/plain; charset=utf-8")]
                await self._respond(status_code, headers, body)
            except (RuntimeError, ConnectionClosed):
                pass
        await self._abort("the handshake was refused")

    def _start_reader(self, nursery: trio.Nursery, shield: bool) -> None:
        """Run the reader in ``nursery``; ``shield`` if the owner closes the connection itself.

        Shielded (``open_websocket``, the server): the reader ignores the
        nursery's cancellation, because the owner closes the connection with a
        closing handshake, which needs the reader, and then stops it
        (:meth:`_stop_reader`).  Not shielded (``connect_websocket``): cancelling
        the nursery aborts the connection (1006).  Keepalive, when asked for,
        runs next to the reader and ends with the connection, or, for a
        server's connection, in the server's sweep (``self._keepalive``).
        """
        self._nursery = nursery
        self._trace = self._logger().isEnabledFor(logging.DEBUG)
        self._transport.go_direct()  # no other task has the stream yet
        nursery.start_soon(self._reader_task, shield, name=_READER_TASK)
        interval = self._options.ping_interval
        if self._keepalive is not None:
            self._keepalive.add(self)
        elif interval is not None:
            timeouts = (self._options.keepalive_timeout, self._options.disconnect_timeout)
            nursery.start_soon(keepalive, cast("WebSocketConnection", self), interval, *timeouts, name=_KEEPALIVE_TASK)

    def _log(self, level: int, message: str, *args: object, exc_info: Any = None) -> None:
        """A record about this connection, to its logger (see ``_log.py``)."""
        log(self._logger(), level, self, message, *args, exc_info=exc_info)

    def _logger(self) -> logging.Logger | logging.LoggerAdapter[Any]:
        """Where this connection's records go: the ``logger=`` given, else by role."""
        logger = self._options.logger
        if logger is not None:
            return logger
        return CLIENT_LOGGER if self._protocol.client else SERVER_LOGGER

    def _wait_closed(self) -> Awaitable[object]:
        """``await``: until the transport is closed."""
        return self._closed.wait()

    def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    def _abandon(self, timeout: float) -> None:
        """Nobody will read this connection again: drop unread messages (a paused reader
        then sees the peer's Close) and bound what the reader still does by ``timeout``."""
        self._inbox.drop()
        self._bound_reader(timeout)

    def _reader_paused(self) -> bool:
        """The reader waits for the application to take a message (keepalive asks)."""
        return self._inbox.reader_paused

    def _record_latency(self, seconds: float) -> None:
        self._latency = seconds

    async def _close_within(self, code: int, reason: str | None, timeout: float) -> bool:
        """Run the closing handshake, shielded, for at most ``timeout`` seconds.

        Returns ``False`` if it ran out of time (the transport is closed either way).
        """
        if self._transport.closed:
            return True  # nothing for this call to do, hence nothing to time out
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + timeout
            await self._close_handshake(code, reason)
        if not self._transport.closed:
            self._closed.timed_out = True
            await self._abort(f"the closing handshake did not finish within {timeout:g} s")
        return not self._closed.timed_out

    async def _abort(self, why: str) -> None:
        """The connection cannot go on (transport lost, timeout): close it now (1006, unless
        closing had already started with another code)."""
        if not self._transport.closed:
            log(self._logger(), logging.DEBUG, self, "aborted: %s", why)
            self._protocol.abort(why)
            await self._finish()

    # ------------------------------------------------------------------
    # Inside

    async def _close_handshake(self, code: int, reason: str | None) -> None:
        protocol = self._protocol
        state = protocol.state
        if state is State.CONNECTING or state is State.REQUESTED or state is State.REFUSED:
            # No Close frame can be sent before the opening handshake completes
            # (nor after it failed; an HTTP answer cut short ends here too).
            await self._abort("closed before the opening handshake completed")
            return
        if protocol.state.can_send:
            async with self._send_lock:
                # Under the lock: a frame that got it first still goes out
                # before our Close; nothing goes out after it.
                protocol.close(code, reason)
                self._closing()
                # A local close drops the messages nobody read (trio-websocket's
                # rule); it also wakes a reader paused on a full inbox, so that it
                # can see the peer's Close.
                self._inbox.drop()
                await self._write_queued()
        await self._closed.wait()  # the reader ends the transport, as the protocol says

    def _closing(self) -> None:
        """The protocol left OPEN: no message will come; pings fail; the reader gets a deadline."""
        self._end_open()
        self._bound_reader(self._options.disconnect_timeout)

    def _end_open(self) -> None:
        """What leaving OPEN ends, by a closing handshake or with the transport: keepalive
        for this connection, the inbox (no message will come) and the pings waiting."""
        if self._keepalive is not None:
            self._keepalive.discard(self)
        self._inbox.end()
        if self._pings:
            self._fail_pings()

    def _fail_pings(self) -> None:
        for pending in self._pings.values():
            pending.event.set()
        self._pings.clear()

    def _bound_reader(self, timeout: float) -> None:
        scope = self._reader
        if scope is not None and scope.deadline == float("inf"):
            scope.deadline = trio.current_time() + timeout
            self._closed.bound = timeout

    async def _finish(self) -> None:
        """The transport closes: CLOSED, and everybody who waits on this connection wakes."""
        if self._transport.closed:
            return
        self._protocol.connection_lost()
        self._end_open()
        self._closed.set()
        await self._transport.aclose()

    # --- messages in pieces ---------------------------------------------------------------

    def _begin_stream(self, stream: object, max_size: int | None, decode: bool) -> bool:
        """``stream`` receives the next message in pieces (see ``receive_fragments``).

        ``True`` if that message was under way and over ``max_size`` already: the
        connection is closing with 1009, and the first ``_next_piece()`` writes the Close
        (this is no async function: the reader, blocked in a read, cannot).
        """
        self._end_stream()
        self._stream = stream
        if len(self._inbox) == 0:  # (else the next message is whole already: one piece)
            event = self._protocol.stream_next(max_size, decode=decode)
            if event is not None:
                kind, payload = event
                if kind == FRAGMENT:
                    self._inbox.put(payload)  # type: ignore[arg-type]
                else:  # VIOLATION
                    self._closing()
                    return True
        return False

    def _end_stream(self, stream: object | None = None) -> None:
        """The streamed message's reader (``stream``, or whichever) is done with it, finished
        or not: drop the rest."""
        if self._stream is None or (stream is not None and stream is not self._stream):
            return
        self._stream = None
        if not self._inbox.drop_pieces():
            self._protocol.drop_stream()
        self._inbox.wake()  # a reader paused on pieces nobody will take

    async def _next_piece(
        self, stream: object, max_size: int | None, decode: bool, flush: bool
    ) -> tuple[str | bytes, bool, bool]:
        """The next piece of ``stream``'s message, whether it is the last, and whether the
        message is text.  A checkpoint; a cancelled call takes nothing.

        :raises ConnectionClosed: the connection closed first (or the message is over
            ``max_size``: then it closes with 1009).
        :raises RuntimeError: another receive call took the connection meanwhile.
        """
        if self._stream is not stream:
            raise RuntimeError("another receive call took over this connection")
        inbox = self._inbox
        if flush:  # see _begin_stream
            with trio.CancelScope(shield=True):
                await self._flush()
        item = await inbox.get()
        if item is None:
            self._stream = None
            raise ConnectionClosed(self._protocol.close_reason)
        if isinstance(item, tuple):
            piece, last, text = item
        else:  # a message that was whole before the stream began
            piece, last, text = item, True, isinstance(item, str)
            if max_size is not None and len(item) > max_size:
                self._stream = None
                await self._close_now(1009, f"message is larger than max_message_size ({max_size} bytes)")
                raise ConnectionClosed(self._protocol.close_reason)
            if not decode and text:
                piece = item.encode("utf-8")  # type: ignore[union-attr]
        if last:
            self._stream = None
        if inbox.reader_paused and self._deliver() != MESSAGE:
            inbox.wake()
        await trio.lowlevel.cancel_shielded_checkpoint()  # a schedule point, as every trio receive
        return piece, last, text

    async def _close_now(self, code: int, reason: str) -> None:
        """Start the closing handshake from the application's side, shielded, without
        waiting for the answer (the reader ends it)."""
        with trio.CancelScope(shield=True):
            async with self._send_lock:
                self._protocol.close(code, reason)
                self._closing()
                await self._write_queued()

    async def _send_pieces(self, source: object, compress: bool) -> None:
        """Send one message made of the pieces ``source`` yields (an iterable or async iterable
        of ``str``, or of bytes-like objects), one frame per piece as it comes, then an empty
        final frame.  No other message goes out meanwhile; control frames may.  The iterator
        is closed when the message ends, finished or not.

        :raises TypeError: a piece of another type; if frames were sent already, the
            message can never be finished and the connection is closed with 1011.
        """
        protocol = self._protocol
        if not protocol.state.can_send:
            raise ConnectionClosed(protocol.close_reason)
        if self._message_lock is None:
            self._message_lock = SendLock()
        started = False
        is_async = hasattr(source, "__aiter__")
        iterator = source.__aiter__() if is_async else iter(source)  # type: ignore[attr-defined,call-overload]
        async with self._message_lock:
            try:
                opcode = 0
                while True:
                    try:
                        piece = await iterator.__anext__() if is_async else next(iterator)
                    except (StopAsyncIteration, StopIteration):
                        break
                    opcode = await self._send_piece(piece, opcode, compress)
                    started = True
                await self._send_frame_of_pieces(opcode or BINARY, b"", True, compress)
            except BaseException:
                if started and protocol.state.can_send:
                    await self._close_now(1011, "a message sent in pieces could not be finished")
                raise
            finally:
                await _close_iterator(iterator)

    async def _send_piece(self, piece: object, opcode: int, compress: bool) -> int:
        """Send one piece as a frame of the message; its opcode (the message's)."""
        opcode, data = _piece_payload(piece, opcode)
        await self._send_frame_of_pieces(opcode, data, False, compress)
        return opcode

    async def _send_frame_of_pieces(self, opcode: int, data: bytes, last: bool, compress: bool) -> None:
        size = len(data)
        self._buffered_amount += size
        try:
            async with self._send_lock:
                wire = self._protocol.send_fragment(opcode, data, last=last, compress=compress)
                await self._write(wire, counted=True)
        finally:
            self._buffered_amount -= size

    # --- broadcast -------------------------------------------------------------------------

    def _broadcast(self, opcode: int, payload: bytes, compress: bool, frames: dict[object, bytes]) -> bool | None:
        """Hand a message to this connection without waiting (see ``broadcast()``).

        ``True``: queued (and written as far as the socket takes it); ``False``: skipped
        (not OPEN, a message in pieces under way, or nowhere to write from); ``None``:
        over ``write_limit``, the caller decides.
        """
        protocol = self._protocol
        if not protocol.state.delivering or protocol.sending_in_pieces or self._nursery is None:
            return False
        if self._buffered_amount + protocol.queued_bytes() + self._unwritten > self._options.write_limit:
            return None
        protocol.queue_data(opcode, payload, compress, frames)
        self._kick()
        return True

    def _kick(self) -> None:
        """Write what the protocol queued, without waiting: as much as the socket takes now,
        the rest from a task of its own, which holds the send lock until all is out.  If
        the lock is taken, its holder writes the queue before it lets go (see ``_write``)."""
        lock = self._send_lock
        if not lock.try_acquire():
            return
        protocol = self._protocol
        data = protocol.data_to_send()
        sent = self._transport.try_send(data)
        if sent == len(data):
            lock.release()
            return
        protocol.requeue(data[sent:])
        assert self._nursery is not None
        self._nursery.start_soon(self._write_behind, name=_WRITER_TASK)

    async def _write_behind(self) -> None:
        """Write what a broadcast queued and the socket did not take; ``_kick`` took the
        send lock for this task."""
        try:
            data = self._protocol.data_to_send()
            if data:
                await self._write(data)
        except ConnectionClosed:
            pass
        finally:
            self._send_lock.release()

    def _ping_now(self, payload: bytes) -> bool:
        """Write a Ping without waiting, as a broadcast writes (for ``KeepaliveSweep``);
        ``False`` where it cannot (not OPEN, or nowhere to write from)."""
        if not self._protocol.state.delivering or self._nursery is None:
            return False
        self._protocol.queue_ping(payload)
        self._kick()
        return True

    def _close_silent(self, reason: str, timeout: float) -> None:
        """Keepalive found the peer silent: close 1011 without waiting (for ``KeepaliveSweep``),
        giving the closing handshake at most ``timeout`` seconds."""
        self._bound_reader(timeout)
        self._close_slow(1011, reason)

    def _close_slow(self, code: int, reason: str) -> None:
        """Start the closing handshake of a connection too slow for a broadcast, now: the
        Close goes behind what is queued (and the frame being written, if any), the
        connection leaves OPEN at once, and its reader ends it when the peer answers, or
        when ``disconnect_timeout`` runs out."""
        self._protocol.close(code, reason)
        self._closing()
        self._inbox.drop()  # a local close drops what nobody read (see _close_handshake)
        self._kick()

    # --- writing ---------------------------------------------------------------------------

    async def _write(self, data: bytes, counted: bool = False) -> None:
        """Write bytes the protocol gave; the caller holds the send lock.  Transport errors abort.

        Bytes a broadcast queued meanwhile (``_kick`` found the lock taken) are written
        too, before the lock goes to anyone else.  What is being written counts in
        ``buffered_amount`` (and so toward ``write_limit``), as ``_unwritten``, unless
        ``counted``: ``data`` is a message whose payload the caller counts already.
        """
        transport, protocol = self._transport, self._protocol
        if self._trace:
            self._trace_out(data)
        try:
            self._unwritten = 0 if counted else len(data)
            await transport.send_all(data)
            while protocol.outgoing:
                data = protocol.data_to_send()
                if self._trace:
                    self._trace_out(data)
                self._unwritten = len(data)
                await transport.send_all(data)
            self._unwritten = 0
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._unwritten = 0
            if not self._transport.closed:
                await self._abort(f"the transport failed while sending ({describe(exc)})")
            raise ConnectionClosed(self._protocol.close_reason) from None
        except trio.Cancelled:
            self._unwritten = 0
            await self._abort("a send was cancelled part way through a frame; the stream cannot be resumed")
            raise

    async def _flush(self) -> None:
        """Write what the protocol queued (a Pong, a Close, an HTTP answer); a failure
        only ends the connection."""
        if self._protocol.outgoing:
            async with self._send_lock:
                await self._write_queued()

    async def _write_queued(self) -> None:
        """``_flush()``, for a caller that holds the send lock."""
        data = self._protocol.data_to_send()
        if data:  # (another writer may have taken it meanwhile)
            try:
                await self._write(data)
            except ConnectionClosed:
                pass

    async def _end_transport(self, ending: Ending | None = None) -> None:
        """Write what is queued, then end the transport the way the protocol says
        (``ending``, if the caller asked already), and finish."""
        await self._flush()
        ending = ending or self._protocol.ending
        if ending is Ending.LINGER:
            async with self._send_lock:
                half_closed = await self._transport.send_eof()
            if half_closed:
                await self._transport.drain(_GRACE)
        elif ending is Ending.DRAIN:
            await self._transport.drain(_GRACE)
        await self._finish()

    # --- reading ---------------------------------------------------------------------------

    async def _read_handshake(self) -> None:
        """Read until the opening handshake has an outcome (run by the task opening the connection).

        Client: OPEN, or a failure.  Server: the request is here for the
        handler to decide on, or it failed (then it was answered and closed).
        """
        protocol, transport = self._protocol, self._transport
        while protocol.state is State.CONNECTING:
            try:
                data = await transport.receive(exactly=self._options.receive_buffer_size or _HANDSHAKE_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._abort(f"the transport failed during the opening handshake ({describe(exc)})")
                return
            protocol.receive_data(data)
        if protocol.state.over:
            await self._end_transport()

    def _deliver(self) -> int:
        """Hand the protocol's events on until it needs the reader; never waits, never writes.

        Returns why it stopped: ``_NEED_DATA``, ``MESSAGE`` (the inbox is
        full), or the kind of the event the reader must act on.
        """
        protocol, inbox = self._protocol, self._inbox
        while True:
            event = protocol.next_event()
            if event is None:
                return _NEED_DATA
            kind, payload = event
            if self._trace:
                self._trace_in(kind, payload)
            if kind in (MESSAGE, FRAGMENT):
                if inbox.put(payload):  # type: ignore[arg-type]  # a message, or (piece, last)
                    return MESSAGE  # full
            elif kind == PONG:
                self._on_pong(payload)  # type: ignore[arg-type]  # bytes
            else:
                if kind == VIOLATION:  # the peer's fault: INFO, never ERROR
                    code, reason = cast("tuple[int, str]", payload)
                    log(self._logger(), logging.INFO, self, "the peer broke the protocol: %s %s", code, reason)
                if kind != PING and kind != YIELD:  # CLOSE or VIOLATION: the protocol left OPEN
                    self._closing()
                return kind

    def _trace_out(self, data: bytes) -> None:
        logger = self._logger()
        for line in describe_frames(data):
            log(logger, logging.DEBUG, self, "%s", line)

    def _trace_in(self, kind: int, payload: object) -> None:
        if kind != YIELD:
            log(self._logger(), logging.DEBUG, self, "%s", describe_event(_EVENT_NAMES[kind], payload))

    def _on_pong(self, payload: bytes) -> None:
        if self._keepalive is not None:
            self._keepalive.answered(self, payload)
        if payload not in self._pings:
            return  # unsolicited, or for a ping that was cancelled
        # A pong answers its ping and every ping sent before it.
        for key in list(self._pings):
            pending = self._pings.pop(key)
            pending.ponged = True
            pending.event.set()
            if key == payload:
                break

    async def _reader_task(self, shield: bool = False) -> None:
        """Read the stream until the connection ends; then close the transport.

        Cancelled in a caller's nursery (not shielded), the task returns
        instead of raising Cancelled: it has nothing left to do, and a quiet
        exit keeps nurseries that hold connections from collecting Cancelled
        exceptions into groups.  (The loop is in this one coroutine on
        purpose: an idle connection keeps its reader's frames for as long as
        it lives, and each frame is a few hundred bytes.)
        """
        scope = self._reader = trio.CancelScope(shield=shield)
        protocol, transport, inbox = self._protocol, self._transport, self._inbox
        if not protocol.state.delivering:
            # Closing began before this task first ran (an accept() followed
            # at once by a close): the bound _closing() puts on a running reader.
            self._bound_reader(self._options.disconnect_timeout)
        try:
            with scope:
                while True:
                    stop = self._deliver()
                    if stop == MESSAGE:
                        await inbox.pause()  # the application is behind: TCP makes the peer wait
                        continue
                    if stop == YIELD:
                        await trio.lowlevel.checkpoint()  # many frames in a row: let others run
                        continue
                    if not protocol.state.delivering or protocol.outgoing:
                        # Something to act on, found here or by get_message(): a
                        # Pong or a Close to write, a fault to fail on, the end.
                        if protocol.state is State.VIOLATED:
                            await self._fail()
                        ending = protocol.ending
                        if ending is not Ending.NOT_YET:
                            await self._end_transport(ending)
                            break
                        if not self._send_lock.locked() or protocol.replies_queued > _REPLY_BACKLOG:
                            await self._flush()
                        # Else another task is writing (a broadcast's queue, a message), and
                        # writes our Pongs too before it lets go (see _write): read on.  Waiting
                        # for it would stop our reads while our writes wait for the peer's; two
                        # peers that both do that wait forever.  A peer that pings without
                        # reading is still held back: by the backlog of Pongs it has not taken.
                    if stop != _NEED_DATA:
                        continue
                    wants, exactly = protocol.next_read()
                    try:
                        data = await transport.receive(wants, exactly=exactly)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        if not transport.closed:
                            await self._abort(f"the transport failed ({describe(exc)})")
                        break
                    if not data and protocol.outgoing:
                        # EOF ends the connection, and drops what is queued: first write the
                        # Pongs another writer was to write (nothing is left to read, so
                        # waiting for it cannot stop the peer).
                        await self._flush()
                    protocol.receive_data(data)
        except trio.Cancelled:
            await self._abort("the connection's reader task was cancelled")
            return
        except BaseException:
            await self._abort("internal error in the reader task")
            raise
        if not transport.closed:  # the reader was stopped, or its deadline passed
            await self._reader_stopped(scope)

    async def _reader_stopped(self, scope: trio.CancelScope) -> None:
        if not scope.cancelled_caught or self._protocol.state is State.CLOSED:
            await self._finish()  # (the wait for the peer's TCP close may have run out)
        elif trio.current_time() >= scope.deadline:
            self._closed.timed_out = True
            await self._abort(f"the closing handshake did not finish within {self._closed.bound:g} s")
        else:
            await self._abort("the connection's reader task was stopped")

    async def _fail(self) -> None:
        """The peer broke the protocol: let the application answer what came before, then Close.

        The messages before the fault are valid and are delivered; an
        application that answers them (an echo, a request and its response)
        expects the answers to leave before our Close frame, and RFC 6455
        test suites check exactly that.  So wait, briefly, until the
        application has taken every message, then yield once: the task that
        took the last one has started its reply and holds the send lock, so
        our Close queues behind it.
        """
        await self._inbox.wait_taken(_GRACE)
        await trio.lowlevel.checkpoint()
        async with self._send_lock:  # behind the reply that task is writing
            self._protocol.fail()
            await self._write_queued()
