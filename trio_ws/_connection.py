"""WebSocketConnection: one WebSocket over one trio stream, client or server alike.

The frame parser (``_frames``) turns bytes into events; this module does the
I/O around it.  One reader task per connection reads the stream, feeds the
parser and acts on each event: complete messages go into a bounded inbox
(when it is full the reader stops reading, so TCP pushes back on the peer,
and get_message() parses on by itself), pings are answered, a Close is
answered and ends the connection.
Writers (``send_message``, ``ping``, the reader's own pongs) take a FIFO lock,
so frames never interleave and nothing is sent after our Close frame.

The connection's life, as the browser's ``readyState`` names it::

    CONNECTING --accept--> OPEN --Close sent or received--> CLOSING --> CLOSED
         |                   |                                            ^
         +--reject/fail------+------------transport lost------------------+

Every path that leaves the reader task closes the transport, so a connection
never outlives its reader, and its reader never outlives the nursery it runs in.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import sys
from collections.abc import Iterable
from http import HTTPStatus
from typing import cast

import trio
from wsproto import ConnectionType, WSConnection

from ._deflate import PerMessageDeflate
from ._endpoint import Endpoint, TakenAddress, stream_endpoint
from ._errors import CloseReason, ConnectionClosed, ConnectionRejected, HandshakeError
from ._frames import BINARY, CLOSE, MESSAGE, OP_PING, OP_PONG, PING, PONG, TEXT, FrameError, Parser, close_frame, frame
from ._handshake import (
    PROTOCOL_HEADERS,
    Accepted,
    ClientHandshake,
    HandshakeFailure,
    Headers,
    HTTPRequest,
    Rejected,
    ServerHandshake,
    UpgradeRequest,
    caller_headers,
    check_reject_status,
    http_response,
)
from ._keepalive import check_keepalive_args, keepalive

__all__ = [
    "CONN_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BYTES",
    "ConnectionState",
    "WebSocketConnection",
]

logger = logging.getLogger("trio_ws")

# trio-websocket 0.12's defaults, kept for drop-in compatibility.
CONN_TIMEOUT = 60
MESSAGE_QUEUE_SIZE = 1
MAX_MESSAGE_SIZE = 2**20
RECEIVE_BYTES = 4 * 2**10

# Close codes an endpoint may put in a Close frame: RFC 6455 7.4.1, plus 1012
# (service restart) and 1013 (try again later) from the IANA registry.  1004-1006
# and 1015 are for reporting only; 1014 is registered too, but wsproto (and so
# trio-websocket) fails a connection that receives it, so we do not send it.
_SENDABLE_RFC_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})
_MAX_CLOSE_REASON_BYTES = 123  # 125-byte control frame payload minus the 2-byte code
_MAX_REJECT_BODY = 2**16  # how much of a rejection's body a client keeps
_CLIENT_CLOSE_GRACE = 1.0  # seconds a closing client waits for the server to close TCP
_FAIL_GRACE = 1.0  # seconds a protocol error waits for the application to take earlier messages
_MAX_READ = 2**20  # the largest single read, inside a large frame
_MORE_WAITING_READ = 2**16  # the read size after a read that filled receive_buffer_size
_DEFAULT_READ = 2**16  # the read size when receive_buffer_size is None (trio's default)
_YIELD_EVERY = 8  # direct reads in a row that found data before the reader yields anyway
_OWN_RESPONSE_HEADERS = frozenset({b"content-length", b"connection"})
_OWN_REJECTION_HEADERS = PROTOCOL_HEADERS | _OWN_RESPONSE_HEADERS


class ConnectionState(enum.IntEnum):
    """The state of a connection, with the browser's ``readyState`` names and values."""

    CONNECTING = 0  #: the opening handshake is in progress
    OPEN = 1  #: messages can be sent and received
    CLOSING = 2  #: a Close frame has been sent or received; the transport is still open
    CLOSED = 3  #: the transport is closed (or the handshake failed)


def check_compression(compression: str | None) -> None:
    """``compression`` is ``None`` (off) or ``"deflate"`` (permessage-deflate, RFC 7692)."""
    if compression not in (None, "deflate"):
        raise ValueError(f'compression must be None or "deflate", not {compression!r}')


def check_close_args(code: int, reason: str | None) -> None:
    """Raise :exc:`ValueError` unless ``code`` and ``reason`` can go in a Close frame."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"close code must be an int, not {type(code).__name__}")
    if code not in _SENDABLE_RFC_CODES and not 3000 <= code <= 4999:
        raise ValueError(
            f"close code {code} may not be sent: use 1000, 3000-4999, or an RFC 6455 code an endpoint may send"
        )
    if reason is not None:
        if not isinstance(reason, str):
            raise TypeError(f"close reason must be a str, not {type(reason).__name__}")
        size = len(reason.encode("utf-8"))  # a lone surrogate raises UnicodeEncodeError, a ValueError
        if size > _MAX_CLOSE_REASON_BYTES:
            raise ValueError(
                f"close reason is {size} bytes of UTF-8; at most {_MAX_CLOSE_REASON_BYTES} fit in a Close frame"
            )


def _describe(exc: BaseException) -> str:
    """A short text for why a transport failed: the OS or TLS error behind trio's wrapper."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _direct_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under a plain ``trio.SocketStream``, to read, write and close directly.

    ``SocketStream.receive_some()`` makes every read that finds data a
    schedule point, and tries a read before it waits even when the last
    read emptied the socket.  On the hot path of a small message that is one
    more trip through trio's run loop, and one more system call, between
    the bytes' arrival and the application's answer.  The reader instead
    reads the file descriptor itself (``os.read`` on a socket is ``recv``)
    and waits with ``trio.lowlevel.wait_readable``, which still makes it
    cancellable and, at least every few reads, a schedule point.  Writes
    and the final close skip the stream's layers (a context manager per
    call, a cancel scope per close) the same way; a write still ends with
    the schedule point ``send_all()`` has.  Only for the exact class (a
    subclass may override its methods) and not on Windows (a socket there
    is not a file descriptor).
    """
    if type(stream) is trio.SocketStream and sys.platform != "win32":
        return stream.socket
    return None


async def _send_all(sock: trio.socket.SocketType, data: bytes | bytearray) -> None:
    """``SocketStream.send_all()`` on the socket's descriptor (see _direct_socket)."""
    view = memoryview(data)
    sent = 0
    while True:
        fd = sock.fileno()  # fresh each time, as in the reader
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            sent += os.write(fd, view[sent:])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError from exc
        if sent >= len(view):
            break
    await trio.lowlevel.cancel_shielded_checkpoint()


def _handling_exception() -> bool:
    return sys.exc_info()[1] is not None


class _WaitQueue:
    """Tasks waiting their turn, first in first out: a lighter ``trio.lowlevel.ParkingLot``.

    A ParkingLot is about 240 bytes, and a task parked in it adds an
    OrderedDict of about 670 more.  An idle connection keeps a task parked in
    get_message() for as long as it lives, so a plain list is worth it.
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] = []

    async def park(self) -> None:
        """Wait until unpark() or unpark_all() picks this task; a cancel point."""
        task = trio.lowlevel.current_task()
        tasks = self._tasks
        tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def unpark(self) -> bool:
        """Wake the task that waited longest, if any; ``True`` if there was one."""
        if not self._tasks:
            return False
        trio.lowlevel.reschedule(self._tasks.pop(0))
        return True

    def unpark_all(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            trio.lowlevel.reschedule(task)


class _Flag:
    """A one-shot event, as ``trio.Event``, whose wait queue is made only if a task waits.

    A connection holds several that are set once and mostly never waited
    on; with a ``trio.Event`` (and its lot) each cost about 400 bytes for
    every idle connection.
    """

    __slots__ = ("_is_set", "_lot")

    def __init__(self) -> None:
        self._is_set = False
        self._lot: _WaitQueue | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        if not self._is_set:
            self._is_set = True
            if self._lot is not None:
                self._lot.unpark_all()
                self._lot = None

    async def wait(self) -> None:
        if self._is_set:
            await trio.lowlevel.checkpoint()
            return
        if self._lot is None:
            self._lot = _WaitQueue()
        await self._lot.park()


class _SendLock:
    """A FIFO lock, as ``trio.StrictFIFOLock``, whose wait queue is made only on contention.

    Frames must go out whole and in order, so sends take this lock; most
    connections never contend for it.  No ownership checks: only this
    module takes it, always with try/finally or ``async with``.

    Taking a free lock is a cancel point but not a schedule point: whoever
    takes it goes on to write (``send_all()`` is the schedule point), so a
    frame costs one trip through trio's scheduler, not two.
    """

    __slots__ = ("_locked", "_lot")

    def __init__(self) -> None:
        self._locked = False
        self._lot: _WaitQueue | None = None

    async def acquire(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._locked:
            self._locked = True
            return
        if self._lot is None:
            self._lot = _WaitQueue()
        await self._lot.park()  # release() hands the lock over: still locked, now ours

    def release(self) -> None:
        assert self._locked
        if not (self._lot is not None and self._lot.unpark()):
            self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _PendingPing:
    __slots__ = ("event", "ponged")

    def __init__(self) -> None:
        self.event = _Flag()
        self.ponged = False


class WebSocketConnection(trio.abc.AsyncResource):
    """A WebSocket connection, client or server side.

    You get one from :func:`open_websocket` / :func:`connect_websocket` (client)
    or :meth:`WebSocketRequest.accept` (server); you rarely construct it.
    ``async with conn:`` closes it on exit, like :meth:`aclose`.
    """

    CONNECTION_ID = itertools.count()

    # Slots: about 2 KiB less per connection than an instance dict of this
    # size.  __dict__ stays, so that applications may still add attributes
    # (as they could to trio-websocket's connections), at no cost until they do.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_buffered_amount",
        "_close_handshake_done",
        "_close_reason",
        "_close_received",
        "_close_sent",
        "_close_timed_out",
        "_closed_event",
        "_decided",
        "_decision_made",
        "_deflate",
        "_delivered",
        "_discard_input",
        "_disconnect_timeout",
        "_drained",
        "_handshake",
        "_handshake_done",
        "_handshake_error",
        "_handshake_headers",
        "_host",
        "_http_request",
        "_id",
        "_inbox",
        "_inbox_dropped",
        "_inbox_limit",
        "_inbox_waiters",
        "_incoming_done",
        "_is_client",
        "_latency",
        "_local",
        "_max_message_size",
        "_parser",
        "_parsing",
        "_path",
        "_ping_interval",
        "_ping_timeout",
        "_pings",
        "_reader_blocked",
        "_reader_nursery",
        "_reader_scope",
        "_reader_shield",
        "_receive_buffer_size",
        "_remote",
        "_request",
        "_resume",
        "_send_lock",
        "_sock",
        "_stash",
        "_state",
        "_stop_reading",
        "_stream",
        "_subprotocol",
        "_taken",
        "_transport_closed",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws_connection: WSConnection | ConnectionType,
        *,
        host: str | None = None,
        path: str | None = None,
        client_subprotocols: Iterable[str] | None = None,
        client_extra_headers: list[tuple[bytes, bytes]] | None = None,
        message_queue_size: int = MESSAGE_QUEUE_SIZE,
        max_message_size: int = MAX_MESSAGE_SIZE,
        receive_buffer_size: int | None = RECEIVE_BYTES,
        disconnect_timeout: float = CONN_TIMEOUT,
        compression: str | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
    ) -> None:
        check_compression(compression)
        check_keepalive_args(ping_interval, ping_timeout)
        self._id = next(self.CONNECTION_ID)
        self._stream = stream
        self._sock = _direct_socket(stream)  # a plain TCP socket we read and write directly
        # trio-websocket took a wsproto WSConnection here; only its role matters now.
        if isinstance(ws_connection, ConnectionType):
            self._is_client = ws_connection is ConnectionType.CLIENT
        else:
            self._is_client = ws_connection.client
        # The frame layer, once the opening handshake is done.
        self._parser: Parser | None = None
        self._max_message_size = max_message_size
        self._receive_buffer_size = receive_buffer_size
        self._disconnect_timeout = disconnect_timeout
        # Keepalive (off unless ping_interval is given); see _keepalive.py.
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout if ping_timeout is not None else (ping_interval or 0)
        self._latency: float | None = None
        self._reader_blocked = False  # waiting for the application to take a message

        self._state = ConnectionState.CONNECTING
        self._close_reason: CloseReason | None = None
        self._close_sent = False
        self._close_received = False
        self._transport_closed = False
        self._close_timed_out = False  # the closing handshake ran out of time

        self._send_lock = _SendLock()
        self._buffered_amount = 0
        # Received messages waiting for get_message().  As with
        # trio-websocket's channel of message_queue_size plus the one message
        # its reader holds while it waits, the reader stops reading (TCP then
        # pushes back on the peer) once it holds more than message_queue_size;
        # get_message() then parses what is already buffered itself, so that
        # a small queue does not cost a task switch per message.
        self._inbox: list[str | bytes] = []  # a deque's first block alone is 600 bytes
        if message_queue_size < 0:  # as trio.open_memory_channel, which trio-websocket uses
            raise ValueError("message_queue_size must be >= 0")
        self._inbox_limit = message_queue_size
        self._inbox_waiters = _WaitQueue()
        self._incoming_done = False  # no message will be added (the peer closed, or the transport)
        self._inbox_dropped = False  # closed locally: unread messages were dropped
        self._resume: _Flag | None = None  # set to wake the reader, paused on a full inbox
        self._parsing = False  # a task is running the parser
        self._stash: tuple[int, object] | FrameError | None = None  # for the reader to handle
        self._pings: dict[bytes, _PendingPing] = {}
        self._drained: _Flag | None = None  # see _let_the_application_answer
        self._delivered = 0  # messages put in the inbox...
        self._taken = 0  # ... and returned by get_message()

        # Set when the opening handshake has an outcome: the client has its
        # response, the server has the client's request (or either failed).
        self._handshake_done = _Flag()
        self._handshake_error: BaseException | None = None
        # Server: set once the handler accepted or rejected; until then the
        # reader does not read past the request.
        self._decided = _Flag()
        self._decision_made = False
        # Set once the peer's Close frame has arrived or the transport is gone:
        # what a local close waits for.
        self._close_handshake_done = _Flag()
        self._closed_event = _Flag()
        self._reader_scope: trio.CancelScope | None = None
        # Where accept() starts the reader, when the server's own connection
        # task reads the request (see _get_request); None when the reader was
        # started before the handshake and reads it itself.
        self._reader_nursery: trio.Nursery | None = None
        self._reader_shield = False
        self._stop_reading = False  # the reader leaves its loop at the next turn
        self._discard_input = False  # read only to see EOF (client after a close)

        self._path = path
        self._host = host
        self._subprotocol: str | None = None
        # permessage-deflate, when asked for: offered (client) or accepted if
        # offered (server); ``extensions`` reports what was agreed.
        self._deflate = (
            PerMessageDeflate(client=self._is_client, max_message_size=max_message_size)
            if compression is not None
            else None
        )
        self._handshake_headers: tuple[tuple[bytes, bytes], ...] = ()
        self._request: UpgradeRequest | None = None  # server: the client's upgrade request
        self._http_request: HTTPRequest | None = None  # server: a plain HTTP request instead
        # Made when first asked for; taken (not yet made) when the socket closes.
        self._local: Endpoint | str | TakenAddress | None = None
        self._remote: Endpoint | str | TakenAddress | None = None

        # The HTTP side of the opening handshake; dropped once the connection
        # is open (its h11 state is about 2 KiB an idle connection need not keep).
        self._handshake: ClientHandshake | ServerHandshake | None
        if self._is_client:
            if host is None or path is None:
                raise TypeError("a client connection needs host and path")
            extra = caller_headers(client_extra_headers)
            for name, value in extra:
                if name.lower() == b"host":  # the caller's Host replaces ours
                    self._host = value.decode("latin-1")
            extra = [(name, value) for name, value in extra if name.lower() != b"host"]
            offers = [f"{self._deflate.name}; {self._deflate.offer()}"] if self._deflate is not None else []
            self._handshake = ClientHandshake(
                self._host or host, path, list(client_subprotocols or ()), offers, extra
            )
        else:
            self._handshake = ServerHandshake()

    # ------------------------------------------------------------------
    # Public attributes

    @property
    def closed(self) -> CloseReason | None:
        """(Read-only) Why the connection was or is being closed, else ``None``."""
        return self._close_reason

    @property
    def state(self) -> ConnectionState:
        """(Read-only) :class:`ConnectionState`, as the browser's ``readyState``."""
        return self._state

    @property
    def is_client(self) -> bool:
        """(Read-only) Is this the client side?"""
        return self._is_client

    @property
    def is_server(self) -> bool:
        """(Read-only) Is this the server side?"""
        return not self._is_client

    @property
    def local(self) -> Endpoint | str:
        """The local endpoint, or the stream's ``repr()`` for non-socket streams."""
        if self._local is None or isinstance(self._local, TakenAddress):
            self._local = stream_endpoint(self._stream, local=True, taken=self._local)
        return self._local

    @property
    def remote(self) -> Endpoint | str:
        """The remote endpoint, or the stream's ``repr()`` for non-socket streams."""
        if self._remote is None or isinstance(self._remote, TakenAddress):
            self._remote = stream_endpoint(self._stream, local=False, taken=self._remote)
        return self._remote

    @property
    def path(self) -> str | None:
        """The request target: the path and query (server: set once the request arrived)."""
        return self._path

    @property
    def url(self) -> str | None:
        """The absolute ``ws://`` or ``wss://`` URL of the connection.

        Client: the URL it opened.  Server: built from the scheme, the request's
        ``Host`` header and its path.  ``None`` before the request is known.
        """
        if self._host is None or self._path is None:
            return None
        secure = isinstance(self._stream, trio.SSLStream)
        return f"{'wss' if secure else 'ws'}://{self._host}{self._path}"

    @property
    def subprotocol(self) -> str | None:
        """(Read-only) The negotiated subprotocol, or ``None``."""
        return self._subprotocol

    @property
    def extensions(self) -> str:
        """(Read-only) The negotiated extensions, as the ``Sec-WebSocket-Extensions`` value.

        ``""`` when none (the browser's ``WebSocket.extensions``), e.g.
        ``"permessage-deflate; server_max_window_bits=12"``.
        """
        return self._deflate.header if self._deflate is not None else ""

    @property
    def handshake_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers the peer sent in the opening handshake (lower-case names).

        Client: the response's headers.  Server: the request's.
        """
        if self._request is not None:  # server: made on demand, to keep no second copy
            return tuple(self._request.headers)
        return self._handshake_headers

    @property
    def latency(self) -> float | None:
        """Seconds between the last keepalive ping and its pong; ``None`` before the first."""
        return self._latency

    @property
    def buffered_amount(self) -> int:
        """Bytes of message payload handed to ``send_message`` and not yet written."""
        return self._buffered_amount

    def __str__(self) -> str:
        return f"{'client' if self._is_client else 'server'}-{self._id}"

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self} {self._state.name} {self.url or ''}>"

    # ------------------------------------------------------------------
    # Messages

    async def get_message(self) -> str | bytes:
        """Wait for the next message and return it: ``str`` for text, ``bytes`` for binary.

        Messages that arrived before the peer closed are still returned; after
        them this raises :exc:`ConnectionClosed`.  If *you* close an open
        connection (:meth:`aclose`), unread messages are dropped and this
        raises at once.

        :raises ConnectionClosed: the connection is closed.
        """
        inbox = self._inbox
        while not inbox:
            if self._incoming_done or self._inbox_dropped:
                await trio.lowlevel.checkpoint()
                raise ConnectionClosed(self._close_reason)
            await self._inbox_waiters.park()
        # A message is here: a cancel point, not a schedule point (the caller
        # yields soon enough, in send_message or when the inbox runs dry).
        await trio.lowlevel.checkpoint_if_cancelled()
        message = inbox.pop(0)
        self._taken += 1
        if self._drained is not None and self._taken >= self._delivered:
            self._drained.set()
        resume = self._resume
        if resume is not None and not resume.is_set() and not self._parsing:
            # The reader is paused on a full inbox (and not already woken to
            # handle something _refill left it): parse on here.
            await self._refill()
        return message

    async def _refill(self) -> None:
        """Parse what the reader left buffered when the inbox was full, in the caller's task.

        Messages and pongs are handled here.  Whatever needs a write (a
        ping to answer, a Close), a protocol error, or the need for more bytes
        is left to the reader, woken for it: get_message() never writes, so a
        cancelled get_message() can never abort the connection half way
        through a frame.
        """
        parser = self._parser
        assert parser is not None
        self._parsing = True
        try:
            while len(self._inbox) <= self._inbox_limit:
                try:
                    event = parser.next_event()
                except FrameError as exc:
                    self._stash = exc
                    break
                if event is None:
                    break
                if event[0] == CLOSE or event[0] == PING:
                    self._stash = event
                    break
                await self._on_event(event)
            else:
                return  # full again: the reader stays paused
        finally:
            self._parsing = False
        if self._resume is not None:
            self._resume.set()

    async def send_message(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a message: ``str`` as text, ``bytes``/``bytearray``/``memoryview`` as binary.

        Returns once the frame is written to the transport.  If the call is
        cancelled while the transport is blocked part way through the frame,
        the frame cannot be completed and the connection is aborted (1006).

        :raises ConnectionClosed: the connection is closed or closing.
        :raises ValueError: ``message`` is of another type.
        """
        if isinstance(message, str):
            opcode, payload = TEXT, message.encode("utf-8")  # a lone surrogate: UnicodeEncodeError
        elif isinstance(message, bytes):
            opcode, payload = BINARY, message
        elif isinstance(message, (bytearray, memoryview)):
            opcode, payload = BINARY, bytes(message)
        else:
            raise ValueError(f"message must be str, bytes, bytearray or memoryview, not {type(message).__name__}")
        if self._state is not ConnectionState.OPEN:
            raise ConnectionClosed(self._close_reason)
        size = len(payload)
        self._buffered_amount += size
        try:
            await self._send_frame(opcode, payload)
        finally:
            self._buffered_amount -= size

    async def ping(self, payload: bytes | None = None) -> None:
        """Send a ping and wait for the matching pong.

        ``payload`` (at most 125 bytes) must not equal that of another ping in
        flight; ``None`` picks a random 4-byte payload.  A pong acknowledges its
        ping and every earlier one (RFC 6455 lets a peer answer only the last).

        :raises ConnectionClosed: the connection is closed, or closes before the pong.
        :raises ValueError: the payload is in flight already, or too long.
        """
        if self._state is not ConnectionState.OPEN:
            raise ConnectionClosed(self._close_reason)
        if payload is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        else:
            payload = bytes(payload)
            if len(payload) > 125:
                raise ValueError(f"ping payload is {len(payload)} bytes; a control frame holds at most 125")
            if payload in self._pings:
                raise ValueError(f"Payload value {payload!r} is already in flight.")
        pending = _PendingPing()
        self._pings[payload] = pending
        try:
            await self._send_frame(OP_PING, payload)
            await pending.event.wait()
        finally:
            if self._pings.get(payload) is pending:
                del self._pings[payload]
        if not pending.ponged:
            raise ConnectionClosed(self._close_reason)

    async def pong(self, payload: bytes | None = None) -> None:
        """Send an unsolicited pong (a one-way heartbeat).

        :raises ConnectionClosed: the connection is closed or closing.
        """
        data = bytes(payload or b"")
        if len(data) > 125:
            raise ValueError(f"pong payload is {len(data)} bytes; a control frame holds at most 125")
        if self._state is not ConnectionState.OPEN:
            raise ConnectionClosed(self._close_reason)
        await self._send_frame(OP_PONG, data)

    # ------------------------------------------------------------------
    # Closing

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection: send a Close frame, wait for the peer's, close the transport.

        Idempotent.  The closing handshake is shielded from cancellation and
        bounded by the connection's ``disconnect_timeout`` instead, so a
        cancelled caller still ends the connection cleanly and promptly; the
        cancellation is then raised as usual (unless another exception is
        already propagating, which is not replaced).  If the peer does not
        answer in time, the transport is closed anyway.  Afterwards
        ``get_message`` and ``send_message`` raise :exc:`ConnectionClosed`.

        :param code: 1000, 3000-4999, or an RFC 6455 code an endpoint may send.
        :param reason: at most 123 bytes of UTF-8.
        :raises ValueError: ``code`` or ``reason`` cannot be sent.
        """
        check_close_args(code, reason)
        await self._close_within(code, reason, self._disconnect_timeout)
        if not _handling_exception():
            await trio.lowlevel.checkpoint_if_cancelled()

    async def _close_within(self, code: int, reason: str | None, timeout: float) -> bool:
        """Run the closing handshake, shielded, for at most ``timeout`` seconds.

        Returns ``False`` if it ran out of time (the transport is closed either
        way).  The reader task may notice the timeout first (it has the same
        deadline), hence the flag rather than the state.
        """
        if self._state is ConnectionState.CLOSED:
            return True  # nothing for this call to do, hence nothing to time out
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + timeout
            await self._close_handshake(code, reason)
        if not self._closed_event.is_set():
            if self._close_handshake_done.is_set():
                # The handshake is done; the deadline only cut short a client's
                # wait for the server to close TCP.
                await self._finish()
            else:
                self._close_timed_out = True
                await self._abort(f"the closing handshake did not finish within {timeout:g} s")
        return not self._close_timed_out

    async def _close_handshake(self, code: int, reason: str | None) -> None:
        if self._state is ConnectionState.CONNECTING:
            # No Close frame can be sent before the opening handshake completes.
            await self._abort("closed before the opening handshake completed")
            return
        if self._state is ConnectionState.OPEN:
            self._begin_closing(CloseReason(code, reason))
            # A local close drops the messages nobody read (trio-websocket's
            # rule); it also unblocks a reader waiting on a full queue, so
            # that it can see the peer's Close.
            self._drop_inbox()
            await self._send_close(code, reason)
        await self._close_handshake_done.wait()
        if self._discard_input and not self._closed_event.is_set():
            # The reader waits for the peer to close TCP: a client because RFC
            # 6455 7.1.1 has the server close first (TIME_WAIT lands there), a
            # server that failed the connection because closing with unread
            # data would reset it.  Give the peer a moment, then close anyway.
            with trio.move_on_after(_CLIENT_CLOSE_GRACE):
                await self._closed_event.wait()
        await self._finish()

    def _begin_closing(self, reason: CloseReason) -> None:
        """OPEN -> CLOSING: no more messages go out or come in; pings fail."""
        if self._close_reason is None:
            self._close_reason = reason
        if self._state is ConnectionState.OPEN:
            self._state = ConnectionState.CLOSING
        self._end_incoming()
        self._fail_pings()
        # Bound whatever the reader still has to do (wait for the peer's Close,
        # or for the server to close TCP) by the disconnect timeout.
        scope = self._reader_scope
        if scope is not None and scope.deadline == float("inf"):
            scope.deadline = trio.current_time() + self._disconnect_timeout

    def _end_incoming(self) -> None:
        """No more messages will arrive: readers get those queued, then ConnectionClosed."""
        self._incoming_done = True
        self._inbox_waiters.unpark_all()
        if self._resume is not None:
            self._resume.set()

    def _drop_inbox(self) -> None:
        """A local close: unread messages are dropped; get_message() raises at once."""
        self._inbox_dropped = True
        self._inbox.clear()
        self._delivered = self._taken
        self._end_incoming()

    def _fail_pings(self) -> None:
        for pending in self._pings.values():
            pending.event.set()
        self._pings.clear()

    async def _finish(self) -> None:
        """Enter CLOSED: close the transport, wake everybody who waits on this connection."""
        if self._state is ConnectionState.CLOSED:
            await self._close_transport()
            return
        if self._state is ConnectionState.CONNECTING and self._handshake_error is None:
            why = self._close_reason.reason if self._close_reason else None
            self._handshake_error = HandshakeError(why or "the connection closed during the opening handshake")
        if self._close_reason is None:
            self._close_reason = CloseReason(1006, "the connection closed")
        self._close_reason._was_clean = self._close_sent and self._close_received
        self._state = ConnectionState.CLOSED
        self._end_incoming()
        self._fail_pings()
        self._handshake_done.set()
        self._decided.set()
        self._close_handshake_done.set()
        self._closed_event.set()
        await self._close_transport()

    async def _abort(self, why: str) -> None:
        """The connection cannot go on (transport lost, timeout): close it now.

        The close code is 1006 unless closing had already started with another.
        """
        if self._state is ConnectionState.CLOSED:
            await self._close_transport()
            return
        if self._close_reason is None:
            self._close_reason = CloseReason(1006, why)
        logger.debug("%s aborted: %s", self, why)
        await self._finish()

    async def _close_transport(self) -> None:
        # Shielded and forceful: this runs on cleanup paths, often cancelled
        # ones, and must neither block nor raise Cancelled.
        if self._transport_closed:
            return
        self._transport_closed = True
        # Keep the addresses: a closed socket no longer knows them.
        if self._local is None:
            self._local = TakenAddress(self._stream, local=True)
        if self._remote is None:
            self._remote = TakenAddress(self._stream, local=False)
        if self._sock is not None:
            self._sock.close()  # all that SocketStream.aclose() does, less its checkpoint
            return
        with trio.CancelScope(shield=True):
            try:
                await trio.aclose_forcefully(self._stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.debug("%s error while closing the transport: %r", self, exc)

    # ------------------------------------------------------------------
    # Writing

    async def _write(self, data: bytes | bytearray) -> None:
        """Write bytes; the caller holds the send lock.  Transport errors abort."""
        # A cancellation delivered here leaves the stream untouched.  One
        # delivered inside send_all may leave half a frame on the wire.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            if self._sock is None:
                await self._stream.send_all(data)
            else:
                await _send_all(self._sock, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if not self._transport_closed:
                await self._abort(f"the transport failed while sending ({_describe(exc)})")
            raise ConnectionClosed(self._close_reason) from None
        except trio.Cancelled:
            await self._abort("a send was cancelled part way through a frame; the stream cannot be resumed")
            raise

    def _may_send_data(self) -> bool:
        """No Close frame sent or received yet (data may not follow either)."""
        return self._parser is not None and not (self._close_sent or self._close_received or self._transport_closed)

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        """Send a message, ping or pong: only while no Close has gone either way.

        Callers check ``state`` first; under the lock only the Close frames
        count: a frame that got the lock before our Close frame was made may
        still go out before it (nothing goes out after it).
        """
        lock = self._send_lock
        await lock.acquire()  # free: no schedule point; send_all() below is this call's
        try:
            if not self._may_send_data():
                raise ConnectionClosed(self._close_reason)
            deflate = self._deflate
            if deflate is not None and opcode < 0x8 and deflate.enabled():
                data = frame(opcode, deflate.deflate(payload), mask=self._is_client, rsv1=True)
            else:
                data = frame(opcode, payload, mask=self._is_client)
            await self._write(data)
        finally:
            lock.release()

    async def _send_close(self, code: int, reason: str | None) -> None:
        """Send our Close frame, first or in reply; a lost transport just aborts."""
        async with self._send_lock:
            if self._parser is None or self._close_sent or self._transport_closed:
                return
            data = close_frame(code, reason, mask=self._is_client)
            self._close_sent = True
            try:
                await self._write(data)
            except ConnectionClosed:
                pass

    # ------------------------------------------------------------------
    # Opening handshake

    async def _receive_some(self, size: int) -> bytes | bytearray:
        """Read at most ``size`` bytes, directly from a plain TCP socket (see _direct_socket).

        For the opening handshake and its failures; the reader's loop inlines
        its own version of this, with its read sizes and fairness.
        """
        sock = self._sock
        if sock is None:
            return await self._stream.receive_some(size)
        while True:
            fd = sock.fileno()  # fresh each time: the owner may close the socket under us
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                return os.read(fd, size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
            except OSError as exc:
                raise trio.BrokenResourceError from exc

    async def _send_request(self) -> None:
        """Client: do the TLS handshake if any, then send the HTTP upgrade request.

        Runs in the caller's task, so that a TLS or network failure is raised
        to the caller at once as :exc:`HandshakeError`.
        """
        assert isinstance(self._handshake, ClientHandshake)
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                cause = exc.__cause__ or exc
                raise HandshakeError(f"TLS handshake failed: {cause}") from cause
        try:
            await stream.send_all(self._handshake.request_bytes())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            raise HandshakeError(f"could not send the opening handshake: {cause}") from cause

    async def _wait_open(self) -> None:
        """Client: wait for the server's answer; raise if it was not a 101."""
        await self._handshake_done.wait()
        if self._handshake_error is not None:
            raise self._handshake_error
        # The connection may be closing or closed already (the server sent a
        # Close right after its 101): that is for get_message() to report.

    async def _get_request(self) -> UpgradeRequest | HTTPRequest | None:
        """Server: the client's request (``None`` if the handshake failed).

        With a reader nursery set, this task reads the request itself and
        accept() starts the reader: a request then costs no handoff to the
        reader and back.  Otherwise the reader, started before, reads it.
        """
        if self._reader_nursery is not None:
            await self._read_handshake()
        else:
            await self._handshake_done.wait()
        return self._request or self._http_request

    async def _accept(self, subprotocol: str | None, extra_headers: Headers | None) -> None:
        """Server: answer the request with 101 Switching Protocols."""
        request = self._request
        self._check_undecided()
        assert request is not None
        if subprotocol is not None and subprotocol not in request.subprotocols:
            raise ValueError(
                f"subprotocol {subprotocol!r} was not proposed by the client (it offered {request.subprotocols!r})"
            )
        headers = caller_headers(extra_headers)
        agreed = ""
        if self._deflate is not None:
            for offer in request.extensions:
                if self._deflate.accept(offer) is not None:  # the first acceptable offer
                    agreed = self._deflate.header
                    break
        response = ServerHandshake.accept(request, subprotocol, agreed, headers)
        self._decision_made = True
        try:
            async with self._send_lock:
                await self._write(response)
            # OPEN only once the 101 is out: an accept cancelled before that
            # leaves the connection CONNECTING, and the reader then ends it.
            assert isinstance(self._handshake, ServerHandshake)
            # Frames a client sent with its request (it should have waited for
            # our 101) are not lost: they start the frame parser's input.
            self._parser = Parser(client=False, max_message_size=self._max_message_size, deflate=self._deflate)
            self._parser.feed(self._handshake.trailing_data)
            self._handshake = None
            self._subprotocol = subprotocol
            self._state = ConnectionState.OPEN
            if self._reader_nursery is not None:
                self._reader_nursery.start_soon(self._reader_task, self._reader_shield)
                self._reader_nursery = None
        finally:
            self._decided.set()

    async def _reject(self, status_code: int, extra_headers: Headers | None, body: bytes) -> None:
        """Server: answer the request with an HTTP error response, then close."""
        check_reject_status(status_code)
        await self._respond(status_code, extra_headers, body)

    async def _respond(self, status_code: int, extra_headers: Headers | None, body: bytes) -> None:
        """Server: answer the request (an upgrade, or plain HTTP) with an HTTP response, then close.

        We set Content-Length and Connection; a rejected upgrade also loses
        any WebSocket handshake header the caller gave.
        """
        drop = _OWN_RESPONSE_HEADERS if self._http_request is not None else _OWN_REJECTION_HEADERS
        headers = caller_headers(extra_headers, drop=drop)
        self._check_undecided()
        self._decision_made = True
        head = self._http_request is not None and self._http_request.method == "HEAD"
        # The reader stays parked until _finish(): waking it earlier would let
        # it close the transport before the response is written.
        await self._send_response(http_response(status_code, headers, body, head=head))
        await self._linger()
        self._close_reason = CloseReason(1006, "Rejected WebSocket handshake")
        await self._finish()

    async def _refuse_within(self, status_code: int, timeout: float) -> None:
        """Server: reject an undecided handshake with a plain-text response, shielded and bounded."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + timeout
            body = f"{status_code} {HTTPStatus(status_code).phrase}\n".encode("ascii")
            try:
                await self._respond(status_code, [(b"content-type", b"text/plain; charset=utf-8")], body)
            except (RuntimeError, ConnectionClosed):
                pass
        await self._abort("the handshake was refused")

    def _check_undecided(self) -> None:
        request = self._request or self._http_request
        if request is None or self._decision_made or self._state is not ConnectionState.CONNECTING:
            if self._state is ConnectionState.CLOSED:
                raise ConnectionClosed(self._close_reason)
            raise RuntimeError("this handshake was already accepted or rejected")

    async def _send_response(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._write(data)
            except ConnectionClosed:
                pass

    # ------------------------------------------------------------------
    # The reader task

    async def _reader_task(self, shield: bool = False) -> None:
        """Read the stream until the connection ends; then close the transport.

        ``shield``: the reader ignores cancellation of its nursery, because the
        code that owns the connection (``open_websocket``, the server) closes
        it with a closing handshake, which needs the reader, and then stops
        the reader itself (:meth:`_stop_reader`).  In a caller's nursery
        (``connect_websocket``) the reader is not shielded: cancelling that
        nursery aborts the connection (1006).  The task then returns instead
        of raising Cancelled: it has nothing left to do, and a quiet exit keeps
        nurseries that hold connections from collecting Cancelled exceptions
        into groups.
        """
        try:
            with trio.CancelScope(shield=shield) as self._reader_scope:
                if self._state is ConnectionState.CLOSING:
                    # Closing began before this task first ran (an accept()
                    # followed at once by a close): the bound _begin_closing
                    # puts on a running reader.
                    self._reader_scope.deadline = trio.current_time() + self._disconnect_timeout
                if self._ping_interval is None:
                    await self._read_loop()
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(keepalive, self, self._ping_interval, self._ping_timeout)
                        await self._read_loop()
                        nursery.cancel_scope.cancel()
        except trio.Cancelled:
            await self._abort("the connection's reader task was cancelled")
            return
        except BaseException:
            await self._abort("internal error in the reader task")
            raise
        if not self._reader_scope.cancelled_caught:
            await self._finish()
        elif self._close_handshake_done.is_set():
            await self._finish()  # the wait for the peer's TCP close ran out: close ours
        elif trio.current_time() >= self._reader_scope.deadline:
            self._close_timed_out = True
            await self._abort(f"the closing handshake did not finish within {self._disconnect_timeout:g} s")
        else:
            await self._abort("the connection's reader task was stopped")

    def _stop_reader(self) -> None:
        if self._reader_scope is not None:
            self._reader_scope.cancel()

    async def _read_loop(self) -> None:
        if self._parser is None:
            # A server's reader started before the opening handshake
            # (wrap_server_stream, websocket_pair): it reads the request.
            if not await self._read_handshake():
                return
            # Read nothing more until the handler has decided: a client must
            # wait for our 101 before sending frames.  Accepted: read on, even
            # if the handler is already closing (its closing handshake needs
            # the reader).  Else (rejected, or plain HTTP answered): stop; the
            # transport is closed after the answer.
            await self._decided.wait()
            if self._parser is None:
                return
        parser = self._parser
        assert parser is not None
        stream = self._stream
        size = self._receive_buffer_size
        inbox = self._inbox
        sock = self._sock
        short = False  # the last direct read got less than it asked for
        streak = 0  # direct reads since the last wait
        while True:
            while True:
                stash, self._stash = self._stash, None
                try:
                    if stash is None:
                        event = parser.next_event()
                    elif isinstance(stash, FrameError):
                        raise stash
                    else:
                        event = stash
                except FrameError as exc:
                    await self._on_frame_error(exc)
                    if self._stop_reading:
                        return
                    continue
                if event is None:
                    break
                await self._on_event(event)
                if self._stop_reading:
                    return
                if len(inbox) > self._inbox_limit and not self._incoming_done:
                    # The application is behind: stop reading, so that TCP
                    # makes the peer wait.  get_message() parses on.
                    self._resume = _Flag()
                    self._reader_blocked = True
                    try:
                        await self._resume.wait()
                    finally:
                        self._reader_blocked = False
                        self._resume = None
            if self._stop_reading or self._state is ConnectionState.CLOSED:
                return
            # Read more at once inside a large frame, and after a read that
            # filled the buffer (more is waiting): fewer trips through trio.
            # Memory stays bounded: by the frame (at most max_message_size)
            # and by a cap.
            read_size = size
            if size is not None and parser.wants > size:
                read_size = min(parser.wants, _MAX_READ)
            try:
                if sock is None:
                    data = await stream.receive_some(read_size)
                else:
                    # A plain TCP socket: read it directly (see _direct_socket).
                    # A short read emptied the socket: wait first, rather
                    # than try a read that would fail.  After several reads
                    # in a row that found data, wait anyway (it yields), so
                    # that a peer that keeps the socket full cannot starve trio.
                    wait = short or streak >= _YIELD_EVERY
                    while True:
                        # Fresh each time: whoever owns the stream may have
                        # closed it (and the number may be reused).
                        fd = sock.fileno()
                        if fd < 0:
                            raise trio.ClosedResourceError("the socket was closed")
                        if wait:
                            streak = 0
                            wait = False
                            await trio.lowlevel.wait_readable(fd)
                            continue
                        try:
                            data = os.read(fd, read_size or _DEFAULT_READ)
                            break
                        except BlockingIOError:
                            wait = True
                        except OSError as exc:
                            raise trio.BrokenResourceError from exc
                    streak += 1
                    short = len(data) < (read_size or _DEFAULT_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not self._transport_closed:
                    await self._abort(f"the transport failed ({_describe(exc)})")
                return
            if not data:
                await self._on_eof()
                return
            if not self._discard_input:
                parser.feed(data)
                if size is not None:
                    if len(data) == read_size and size < _MORE_WAITING_READ:
                        size = _MORE_WAITING_READ
                    elif size != self._receive_buffer_size and len(data) < size // 2:
                        size = self._receive_buffer_size

    async def _read_handshake(self) -> bool:
        """Read until the opening handshake has an outcome.

        ``True``: a client is OPEN, or a server has the client's request (an
        upgrade or plain HTTP) for its handler to decide on.  ``False``: the
        handshake failed, and the connection is closed.  Run by the reader,
        or (``_handshake``, ``_get_request``) by the task opening the connection.
        """
        handshake = self._handshake
        assert handshake is not None
        while True:
            try:
                data = await self._receive_some(self._receive_buffer_size or _DEFAULT_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not self._transport_closed:
                    await self._abort(f"the transport failed during the opening handshake ({_describe(exc)})")
                return False
            try:
                outcome = handshake.receive_data(bytes(data))
            except HandshakeFailure as exc:
                await self._handshake_failed(exc)
                return False
            if isinstance(outcome, UpgradeRequest):
                self._request = outcome
                self._path, self._host = outcome.target, outcome.host
                self._handshake_done.set()
                return True
            if isinstance(outcome, HTTPRequest):
                self._http_request = outcome
                self._path = outcome.target
                self._handshake_done.set()
                return True
            if isinstance(outcome, Accepted):
                try:
                    self._open_client(outcome)
                except HandshakeFailure as exc:
                    await self._handshake_failed(exc)
                    return False
                return True
            if isinstance(outcome, Rejected):
                error = ConnectionRejected(outcome.status_code, outcome.headers, outcome.body)
                await self._fail_handshake(error)
                return False

    def _open_client(self, accepted: Accepted) -> None:
        """Client: the server's 101 is valid; agree on extensions, start the frame parser."""
        for item in accepted.extensions:
            name = item.partition(";")[0].strip().lower()
            if self._deflate is None or name != self._deflate.name or self._deflate.enabled():
                raise HandshakeFailure(0, f"the server accepted an extension we did not offer: {item!r}")
            try:
                self._deflate.finalize(item)
            except Exception as exc:  # our permessage-deflate refuses the response
                raise HandshakeFailure(0, f"unacceptable {name} response {item!r}: {exc}") from exc
        self._parser = Parser(client=True, max_message_size=self._max_message_size, deflate=self._deflate)
        self._parser.feed(accepted.trailing_data)
        self._handshake = None
        self._subprotocol = accepted.subprotocol
        self._handshake_headers = accepted.headers
        self._state = ConnectionState.OPEN
        self._decided.set()
        self._handshake_done.set()

    async def _on_event(self, event: tuple[int, object]) -> None:
        kind, payload = event
        # Ordered by how often each event comes.
        if kind == MESSAGE:
            await self._on_message(payload)  # type: ignore[arg-type]  # str | bytes
        elif kind == PING:
            await self._on_ping(payload)  # type: ignore[arg-type]  # bytes
        elif kind == PONG:
            self._on_pong(payload)  # type: ignore[arg-type]  # bytes
        elif kind == CLOSE:
            code, reason = cast("tuple[int, str]", payload)
            await self._on_close_frame(code, reason)

    async def _on_message(self, message: str | bytes) -> None:
        if self._state is not ConnectionState.OPEN:
            return  # closing: data still arriving is dropped
        if self._inbox_dropped:
            return
        self._delivered += 1
        self._inbox.append(message)
        self._inbox_waiters.unpark()

    async def _on_ping(self, payload: bytes) -> None:
        async with self._send_lock:
            if self._may_send_data():
                try:
                    await self._write(frame(OP_PONG, payload, mask=self._is_client))
                except ConnectionClosed:
                    pass

    def _on_pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # unsolicited, or for a ping that was cancelled
        # A pong answers its ping and every ping sent before it.
        for key in list(self._pings):
            pending = self._pings.pop(key)
            pending.ponged = True
            pending.event.set()
            if key == payload:
                break

    async def _on_frame_error(self, error: FrameError) -> None:
        """The peer broke the protocol (or sent too big a message): close with the RFC's code."""
        if not error.fatal:
            # 1009: close, and keep reading (and dropping) until the peer's
            # Close, so that the peer sees our Close frame.  Memory stays at
            # one receive buffer however much more the peer sends.
            if self._state is ConnectionState.OPEN:
                self._begin_closing(CloseReason(error.code, error.reason))
                await self._send_close(error.code, error.reason)
            return
        if self._close_sent:
            # Garbage after our Close: nothing more to say; wait for the
            # transport to end (bounded by the closing deadline).
            self._discard_input = True
            return
        # Nothing after the fault is parsed (the parser has stopped).  Fail
        # the connection with that code (1002, 1007...).
        await self._let_the_application_answer()
        self._begin_closing(CloseReason(error.code, error.reason))
        await self._send_close(error.code, error.reason)
        self._close_handshake_done.set()
        # Nothing more will be parsed, but closing TCP with unread data
        # would send a reset, and the peer could lose our Close frame.  So
        # end our side (FIN) and drop what comes until the peer closes,
        # briefly.
        self._discard_input = True
        await self._half_close()
        self._shorten_reader_deadline(_FAIL_GRACE)

    async def _on_close_frame(self, code: int, reason: str) -> None:
        self._close_received = True
        if not self._close_sent:
            # The peer starts the closing handshake: answer with the same code.
            self._begin_closing(CloseReason(code, reason or None))
            await self._send_close(code, reason)
        # Else it is the peer's answer to our Close.
        self._close_handshake_done.set()
        # RFC 6455 7.1.1: the server closes TCP first; a client reads on (and
        # drops what comes) until it does, for a bounded time: at most
        # _CLIENT_CLOSE_GRACE when aclose() waits, else the reader's closing
        # deadline (see _begin_closing).
        if self._is_client:
            self._discard_input = True
        else:
            self._stop_reading = True

    async def _half_close(self) -> None:
        """Server: send FIN after our Close frame, where the transport can (plain TCP)."""
        stream = self._stream
        if self._is_client or not isinstance(stream, trio.abc.HalfCloseableStream):
            return
        async with self._send_lock:
            if self._transport_closed:
                return
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _linger(self) -> None:
        """Server, after an HTTP response: FIN, then drop what the client still sends, briefly.

        Closing a socket with unread input makes the kernel send a reset, and
        a reset can destroy the response before the client reads it (a
        request larger than we read, say).  Only the task that reads may call
        this (the reader, or a handler while the reader is parked).
        """
        if not isinstance(self._stream, trio.abc.HalfCloseableStream):
            return
        await self._half_close()
        with trio.move_on_after(_FAIL_GRACE):
            try:
                while await self._stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _shorten_reader_deadline(self, seconds: float) -> None:
        scope = self._reader_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + seconds)

    async def _let_the_application_answer(self) -> None:
        """Before failing the connection, let the application answer what came before the fault.

        The messages that arrived before a protocol error are valid and are
        delivered; an application that answers them (an echo, a request and
        its response) expects the answers to leave before our Close frame, and
        RFC 6455 test suites check exactly that.  So wait, briefly, until the
        application has taken every message (counted when get_message()
        returns, not when it enters the inbox: the receiving task may
        not have run yet), then yield once: the task that took the last
        message has started its reply and holds the send lock, so our Close
        queues behind it.
        """
        if self._taken < self._delivered:
            self._drained = _Flag()
            with trio.move_on_after(_FAIL_GRACE):
                await self._drained.wait()
            self._drained = None
        # get_message() set _drained and its caller ran on, without a
        # checkpoint, to its next send_message(), which took the lock.
        await trio.lowlevel.checkpoint()

    async def _on_eof(self) -> None:
        if self._close_handshake_done.is_set():
            await self._finish()
        else:
            await self._abort("the peer closed the TCP connection without a Close frame")

    async def _fail_handshake(self, error: BaseException) -> None:
        self._handshake_error = error
        self._close_reason = CloseReason(1006, f"opening handshake failed: {error!r}")
        await self._finish()

    async def _handshake_failed(self, exc: HandshakeFailure) -> None:
        """The peer's half of the handshake was refused: say so (server: with an HTTP error), close."""
        side = "the server's response" if self._is_client else "the client's request"
        error = HandshakeError(f"invalid opening handshake ({side}): {exc}")
        error.__cause__ = exc.__cause__ or exc
        if not self._is_client and exc.status:
            logger.debug("%s invalid opening handshake: %s", self, exc)
            body = f"Invalid WebSocket handshake: {exc}\n".encode("utf-8", "replace")
            headers = [*exc.headers, (b"content-type", b"text/plain; charset=utf-8")]
            await self._send_response(http_response(exc.status, headers, body))
            await self._linger()
        await self._fail_handshake(error)
