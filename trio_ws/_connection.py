"""WebSocketConnection: one WebSocket over one trio stream, client or server alike.

The public object: its attributes (the browser's ``readyState``, ``url``,
``protocol``, ``extensions``, ``bufferedAmount`` among them), its messages
and its closing.  The I/O behind them is ``_engine.Engine``'s, its base class.
"""

from __future__ import annotations

import enum
import itertools
import os
import sys
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, overload

import trio
from wsproto import ConnectionType, WSConnection

from ._deflate import Deflate
from ._endpoint import Endpoint
from ._engine import Engine, PendingPing
from ._errors import CloseReason, ConnectionClosed
from ._handshake import UpgradeRequest, caller_headers
from ._log import Logger
from ._options import CONN_TIMEOUT, MAX_MESSAGE_SIZE, MESSAGE_QUEUE_SIZE, RECEIVE_BYTES, WRITE_LIMIT, Options
from ._protocol import (
    BINARY,
    MESSAGE,
    TEXT,
    ClientProtocol,
    Protocol,
    ServerProtocol,
    State,
    check_close_args,
    check_control_payload,
)

__all__ = [
    "CONN_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BYTES",
    "ConnectionState",
    "ConnectionStatistics",
    "MessageFragments",
    "WebSocketConnection",
]


_NORMAL_CLOSE = frozenset({1000, 1001, 1005})  # receive() ends the channel after these

# A message sent in pieces: an iterable or an async iterable of str or of bytes-like objects.
Pieces = Iterable[str] | Iterable[bytes | bytearray | memoryview] | AsyncIterable[str] | AsyncIterable[bytes]


class _Default(enum.Enum):
    """``max_size``'s default: the connection's max_message_size (None there means no limit)."""

    DEFAULT = "default"


_DEFAULT = _Default.DEFAULT


@dataclass(frozen=True)
class ConnectionStatistics:
    """What :meth:`WebSocketConnection.statistics` returns."""

    messages_sent: int  #: complete messages sent
    messages_received: int  #: complete messages received (a streamed one when its last piece came)
    bytes_sent: int  #: bytes written to the transport (frames, after compression)
    bytes_received: int  #: bytes read from the transport
    messages_waiting: int  #: messages (or pieces of a streamed one) received and not yet taken
    buffered_amount: int  #: message bytes handed to send_message() and not yet written
    state: ConnectionState  #: as :attr:`WebSocketConnection.state`
    latency: float | None  #: as :attr:`WebSocketConnection.latency`


class ConnectionState(enum.IntEnum):
    """The state of a connection, with the browser's ``readyState`` names and values."""

    CONNECTING = 0  #: the opening handshake is in progress
    OPEN = 1  #: messages can be sent and received
    CLOSING = 2  #: a Close frame has been sent or received; the transport is still open
    CLOSED = 3  #: the transport is closed (or the handshake failed)


# The protocol's states as the browser's readyState sees them (CLOSED: the
# transport is closed, whatever the protocol's state).
_PUBLIC_STATE = {
    State.CONNECTING: ConnectionState.CONNECTING,
    State.REQUESTED: ConnectionState.CONNECTING,
    State.OPEN: ConnectionState.OPEN,
    State.VIOLATED: ConnectionState.OPEN,
    State.CLOSE_SENT: ConnectionState.CLOSING,
    State.CLOSED: ConnectionState.CLOSING,
    State.FAILED: ConnectionState.CLOSING,
    State.REFUSED: ConnectionState.CONNECTING,  # as a browser: a failed handshake goes to CLOSED
    State.ABORTED: ConnectionState.CLOSING,
}


def _handling_exception() -> bool:
    return sys.exc_info()[1] is not None


class WebSocketConnection(Engine, trio.abc.Channel["str | bytes"]):
    """A WebSocket connection, client or server side.

    You get one from :func:`open_websocket` / :func:`connect_websocket` (client)
    or :meth:`WebSocketRequest.accept` (server); you rarely construct it.
    ``async with conn:`` closes it on exit, like :meth:`aclose`.
    """

    CONNECTION_ID = itertools.count()

    # __dict__ stays, so that applications may still add attributes (as they
    # could to trio-websocket's connections), at no cost until they do.
    __slots__ = ("__dict__", "__weakref__")

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
        compression: str | Deflate | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        write_limit: int = WRITE_LIMIT,
        logger: Logger | None = None,
        _options: Options | None = None,
    ) -> None:
        # trio-websocket took a wsproto WSConnection here; only its role matters now.
        if isinstance(ws_connection, ConnectionType):
            client = ws_connection is ConnectionType.CLIENT
        else:
            client = ws_connection.client
        options = _options or Options(
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
        protocol: Protocol
        if client:
            if host is None or path is None:
                raise TypeError("a client connection needs host and path")
            extra = caller_headers(client_extra_headers)
            for name, value in extra:
                if name.lower() == b"host":  # the caller's Host replaces ours
                    host = value.decode("latin-1")
            protocol = ClientProtocol(
                host=host,
                target=path,
                subprotocols=list(client_subprotocols or ()),
                extra_headers=[(name, value) for name, value in extra if name.lower() != b"host"],
                max_message_size=options.max_message_size,
                compression=options.compression,
            )
        else:
            protocol = ServerProtocol(
                max_message_size=options.max_message_size,
                compression=options.compression,
                server_header=options.server_header,
            )
        super().__init__(protocol, stream, options, next(self.CONNECTION_ID))

    # ------------------------------------------------------------------
    # Public attributes

    @property
    def closed(self) -> CloseReason | None:
        """(Read-only) Why the connection was or is being closed, else ``None``."""
        return self._protocol.close_reason

    @property
    def state(self) -> ConnectionState:
        """(Read-only) :class:`ConnectionState`, as the browser's ``readyState``."""
        if self._transport.closed:
            return ConnectionState.CLOSED
        return _PUBLIC_STATE[self._protocol.state]

    @property
    def is_client(self) -> bool:
        """(Read-only) Is this the client side?"""
        return self._protocol.client

    @property
    def is_server(self) -> bool:
        """(Read-only) Is this the server side?"""
        return not self._protocol.client

    @property
    def local(self) -> Endpoint | str:
        """The local endpoint, or the stream's ``repr()`` for non-socket streams."""
        return self._transport.endpoint(local=True)

    @property
    def remote(self) -> Endpoint | str:
        """The remote endpoint, or the stream's ``repr()`` for non-socket streams."""
        return self._transport.endpoint(local=False)

    @property
    def path(self) -> str | None:
        """The request target: the path and query (server: set once the request arrived)."""
        protocol = self._protocol
        if isinstance(protocol, ClientProtocol):
            return protocol.path
        assert isinstance(protocol, ServerProtocol)
        return protocol.request.target if protocol.request is not None else None

    @property
    def url(self) -> str | None:
        """The absolute ``ws://`` or ``wss://`` URL of the connection.

        Client: the URL it opened.  Server: built from the scheme, the request's
        ``Host`` header and its path.  ``None`` before the request is known.
        """
        protocol = self._protocol
        if isinstance(protocol, ClientProtocol):
            host: str | None = protocol.host
        else:
            assert isinstance(protocol, ServerProtocol)
            request = protocol.request
            host = request.host if isinstance(request, UpgradeRequest) else None
        path = self.path
        if host is None or path is None:
            return None
        return f"{'wss' if self._transport.secure else 'ws'}://{host}{path}"

    @property
    def subprotocol(self) -> str | None:
        """(Read-only) The negotiated subprotocol, or ``None``."""
        protocol = self._protocol
        assert isinstance(protocol, (ClientProtocol, ServerProtocol))
        return protocol.subprotocol

    @property
    def extensions(self) -> str:
        """(Read-only) The negotiated extensions, as the ``Sec-WebSocket-Extensions`` value.

        ``""`` when none (the browser's ``WebSocket.extensions``), e.g.
        ``"permessage-deflate; server_max_window_bits=12"``.
        """
        return self._protocol.extensions

    @property
    def handshake_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers the peer sent in the opening handshake (lower-case names).

        Client: the response's headers.  Server: the request's.
        """
        protocol = self._protocol
        if isinstance(protocol, ClientProtocol):
            return protocol.headers
        assert isinstance(protocol, ServerProtocol)
        return tuple(protocol.request.headers) if protocol.request is not None else ()

    @property
    def latency(self) -> float | None:
        """Seconds between the last keepalive ping and its pong; ``None`` before the first."""
        return self._latency

    @property
    def buffered_amount(self) -> int:
        """Bytes handed to ``send_message`` (message payload) or queued by ``broadcast()``
        (frames) and not yet written: the browser's ``bufferedAmount``."""
        return self._buffered_amount + self._protocol.queued_bytes() + self._unwritten

    def __str__(self) -> str:
        return f"{'client' if self.is_client else 'server'}-{self._id}"

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self} {self.state.name} {self.url or ''}>"

    # ------------------------------------------------------------------
    # Messages

    @overload
    async def get_message(self, *, decode: Literal[True] = ...) -> str | bytes: ...
    @overload
    async def get_message(self, *, decode: Literal[False]) -> bytes: ...
    @overload
    async def get_message(self, *, decode: bool) -> str | bytes: ...

    async def get_message(self, *, decode: bool = True) -> str | bytes:
        """Wait for the next message and return it: ``str`` for text, ``bytes`` for binary.

        Messages that arrived before the peer closed are still returned; after
        them this raises :exc:`ConnectionClosed`, however the connection
        ended.  If *you* close an open connection (:meth:`aclose`), unread
        messages are dropped and this raises at once.  Cancelling it loses no
        message.  The rest of a message left unfinished by
        :meth:`receive_fragments` is dropped first.

        :param decode: (new in trio_ws) ``False`` returns a text message as its UTF-8
            ``bytes`` (validated, not decoded), for code that passes text on.
        :raises ConnectionClosed: the connection is closed.
        """
        if self._stream is not None:
            self._end_stream()
        inbox = self._inbox
        message = await inbox.get()
        if message is None:
            raise ConnectionClosed(self._protocol.close_reason)
        if inbox.reader_paused and self._deliver() != MESSAGE:
            # The reader paused on a full inbox; parsing on here (no write,
            # so a cancelled get_message() never breaks a frame) either
            # filled it again, or needs the reader: more bytes, or a reply.
            inbox.wake()
        if not decode and isinstance(message, str):
            return message.encode("utf-8")
        return message  # type: ignore[return-value]  # (never a piece: no stream is under way)

    async def receive(self) -> str | bytes:
        """The next message, as :meth:`get_message`; at the end of a normal close,
        :exc:`trio.EndOfChannel` (this is :class:`trio.abc.ReceiveChannel`'s method).

        A normal close is a closing handshake with code 1000 or 1001, or a Close
        without a code (1005), whoever started it: once every message that came
        before it has been received, this raises ``EndOfChannel``, and
        ``async for message in ws`` ends.  Any other ending (1002, 1006, 1007,
        1009, 1011, an application's code...) raises :exc:`ConnectionClosed`.

        Cancellation: as :meth:`get_message`, no message is lost; a
        cancelled ``receive()`` took nothing, and the connection is unchanged.

        :raises trio.EndOfChannel: the connection closed normally.
        :raises ConnectionClosed: it ended another way.
        """
        try:
            message = await self.get_message()
        except ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code in _NORMAL_CLOSE:
                raise trio.EndOfChannel from exc
            raise
        # A schedule point, as every trio channel's receive (get_message() has none
        # when a message is waiting: trio_ws's own call, measured for speed).
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    @overload
    def receive_fragments(
        self, *, max_size: int | _Default | None = ..., decode: Literal[True] = ...
    ) -> MessageFragments[str | bytes]: ...
    @overload
    def receive_fragments(
        self, *, max_size: int | _Default | None = ..., decode: Literal[False]
    ) -> MessageFragments[bytes]: ...
    @overload
    def receive_fragments(
        self, *, max_size: int | _Default | None = ..., decode: bool
    ) -> MessageFragments[str | bytes]: ...

    def receive_fragments(
        self, *, max_size: int | _Default | None = _DEFAULT, decode: bool = True
    ) -> MessageFragments[str | bytes] | MessageFragments[bytes]:
        """The next message, piece by piece as it arrives: ``async for piece in ws.receive_fragments()``.

        Text comes as ``str`` pieces (UTF-8 decoded across piece boundaries;
        invalid UTF-8 still fails the connection with 1007), binary as
        ``bytes``; each piece is at most one read or one frame long, so memory
        stays bounded however large the message.  A message that had begun
        arriving before this call gives what came of it as its first piece; one
        that had arrived whole comes as one piece.

        Leaving the loop before the last piece drops the rest of that message
        (when the next receive call is made, or at once with ``aclose()`` on the
        iterator); the connection goes on.

        :param max_size: a bound on the whole message, in ``len()`` units
            (default: the connection's ``max_message_size``; ``None``: no bound).
            A larger message closes the connection with 1009.
        :param decode: ``False`` gives a text message's pieces as validated UTF-8 bytes.
        :raises ConnectionClosed: (from the iteration) the connection closed first.
        """
        size = self._options.max_message_size if isinstance(max_size, _Default) else max_size
        return MessageFragments(self, size, decode)

    async def send_message(
        self, message: str | bytes | bytearray | memoryview | Pieces, *, compress: bool = True
    ) -> None:
        """Send a message: ``str`` as text, ``bytes``/``bytearray``/``memoryview`` as binary.

        Returns once the frame is written to the transport.  If the call is
        cancelled while the transport is blocked part way through the frame,
        the frame cannot be completed and the connection is aborted (1006).

        New in trio_ws: ``message`` may also be an iterable or an async iterable
        of ``str`` (one text message) or of bytes-like objects (one binary
        message), sent as one message in fragments, each piece as it comes,
        for messages too large to hold.  Pings, pongs and a Close may go out
        between its frames; other messages wait until it is finished.  A piece
        of the other type raises :exc:`TypeError`, and if frames of the message
        were sent already (as when the iterable raises, or the call is
        cancelled between pieces) the connection is closed with 1011, since
        that message can never be finished.  An empty iterable sends an empty
        binary message.

        :param compress: (new in trio_ws) ``False`` sends this message uncompressed on a
            connection that agreed on permessage-deflate.
        :raises ConnectionClosed: the connection is closed or closing.
        :raises ValueError: ``message`` is of another type.
        """
        if isinstance(message, str):
            opcode, payload = TEXT, message.encode("utf-8")  # a lone surrogate: UnicodeEncodeError
        elif isinstance(message, bytes):
            opcode, payload = BINARY, message
        elif isinstance(message, (bytearray, memoryview)):
            opcode, payload = BINARY, bytes(message)
        elif hasattr(message, "__iter__") or hasattr(message, "__aiter__"):
            await self._send_pieces(message, compress)
            return
        else:
            raise ValueError(
                "message must be str, bytes, bytearray, memoryview or an iterable of them, "
                f"not {type(message).__name__}"
            )
        protocol = self._protocol
        if not protocol.state.can_send:
            raise ConnectionClosed(protocol.close_reason)
        size = len(payload)
        self._buffered_amount += size
        pieces = self._message_lock  # None until a message was sent in pieces
        try:
            if pieces is not None:
                await pieces.acquire()  # wait for a message in pieces under way
            lock = self._send_lock
            await lock.acquire()  # free: no schedule point; the write below is this call's
            try:
                await self._write(protocol.send_data(opcode, payload, compress), counted=True)
            finally:
                lock.release()
                if pieces is not None:
                    pieces.release()
        finally:
            self._buffered_amount -= size

    async def send(self, value: str | bytes) -> None:
        """:meth:`send_message` (this is :class:`trio.abc.SendChannel`'s method).

        Cancellation, and what it raises: as :meth:`send_message`.
        """
        await self.send_message(value)

    async def wait_closed(self) -> CloseReason:
        """Wait until the connection is CLOSED (its transport closed); return why it closed.

        It only waits: cancelling it changes nothing on the connection.
        """
        await self._wait_closed()
        reason = self._protocol.close_reason
        assert reason is not None
        return reason

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the connection's counters and state (trio's convention)."""
        protocol = self._protocol
        return ConnectionStatistics(
            messages_sent=protocol.messages_sent,
            messages_received=protocol.messages_received,
            bytes_sent=self._transport.bytes_sent,
            bytes_received=self._transport.bytes_received,
            messages_waiting=len(self._inbox),
            buffered_amount=self.buffered_amount,
            state=self.state,
            latency=self._latency,
        )

    async def ping(self, payload: bytes | None = None) -> None:
        """Send a ping and wait for the matching pong.

        ``payload`` (at most 125 bytes) must not equal that of another ping in
        flight; ``None`` picks a random 4-byte payload.  A pong acknowledges its
        ping and every earlier one (RFC 6455 lets a peer answer only the last).

        Cancellation: while the Ping frame is being written, as
        :meth:`send_message` (a frame cut in the middle aborts the connection,
        1006); while waiting for the pong, the ping is forgotten and the
        connection is unchanged (a late pong is ignored).

        :raises ConnectionClosed: the connection is closed, or closes before the pong.
        :raises ValueError: the payload is in flight already, or too long.
        """
        protocol = self._protocol
        if not protocol.state.can_send:
            raise ConnectionClosed(protocol.close_reason)
        if payload is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        else:
            payload = check_control_payload(payload, "ping")
            if payload in self._pings:
                raise ValueError(f"Payload value {payload!r} is already in flight.")
        pending = PendingPing()
        self._pings[payload] = pending
        try:
            async with self._send_lock:
                await self._write(protocol.ping(payload))
            await pending.event.wait()
        finally:
            if self._pings.get(payload) is pending:
                del self._pings[payload]
        if not pending.ponged:
            raise ConnectionClosed(protocol.close_reason)

    async def pong(self, payload: bytes | None = None) -> None:
        """Send an unsolicited pong (a one-way heartbeat).

        Cancellation: as :meth:`send_message`: before the frame is written,
        nothing is sent; in the middle of writing it, the connection is
        aborted (1006).

        :raises ConnectionClosed: the connection is closed or closing.
        """
        data = check_control_payload(payload or b"", "pong")
        protocol = self._protocol
        if not protocol.state.can_send:
            raise ConnectionClosed(protocol.close_reason)
        async with self._send_lock:
            await self._write(protocol.pong(data))

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
        await self._close_within(code, reason, self._options.disconnect_timeout)
        if not _handling_exception():
            await trio.lowlevel.checkpoint_if_cancelled()


_Piece = TypeVar("_Piece", bound="str | bytes")


class MessageFragments(Generic[_Piece]):
    """The pieces of one message as they arrive: what :meth:`WebSocketConnection.receive_fragments`
    returns.  ``async for piece in fragments``; ``text`` says, once the first piece came,
    whether the message is text; ``await fragments.aclose()`` drops the rest of it at once."""

    __slots__ = ("_connection", "_decode", "_done", "_flush", "_max_size", "text")

    def __init__(self, connection: WebSocketConnection, max_size: int | None, decode: bool) -> None:
        self._connection = connection
        self._max_size = max_size
        self._decode = decode
        self._done = False
        #: ``True`` for a text message, ``False`` for binary; ``None`` before the first piece.
        self.text: bool | None = None
        self._flush = connection._begin_stream(self, max_size, decode)

    def __aiter__(self) -> MessageFragments[_Piece]:
        return self

    async def __anext__(self) -> _Piece:
        if self._done:
            raise StopAsyncIteration
        flush, self._flush = self._flush, False
        piece, last, self.text = await self._connection._next_piece(self, self._max_size, self._decode, flush)
        if last:
            self._done = True
        return piece  # type: ignore[return-value]  # (bytes whenever decode is False)

    async def aclose(self) -> None:
        """Drop the rest of the message now (leaving ``async for`` early drops it at the next receive).

        The message is dropped before the checkpoint, so a cancelled ``aclose()``
        has still dropped it.
        """
        if not self._done:
            self._done = True
            self._connection._end_stream(self)
        await trio.lowlevel.checkpoint()
