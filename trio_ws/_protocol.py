"""The WebSocket protocol as a state machine, without I/O and without trio.

Bytes in, events out; calls in, bytes out.  ``ServerProtocol`` and
``ClientProtocol`` take a connection through its whole life: the opening
handshake (its HTTP is ``_handshake``'s), messages both ways (frames are
``_frames``', their content ``_messages``'), and the closing handshake.  The
caller (``_connection``) moves bytes between a protocol and a stream, and
decides only *when*: nothing here waits, reads a clock, or writes.

- ``receive_data(data)`` takes bytes from the peer (``b""`` for EOF), and
  ``next_event()`` returns what they meant, one event at a time, or
  ``None`` when more bytes are needed.
- ``send_data()``, ``ping()`` and ``pong()`` return the bytes to write
  now; ``close()``, ``fail()`` and the server's answers to the handshake
  (``accept()``, ``respond()``) queue theirs.
- Replies the protocol decides on its own (the Pong to a Ping, the Close
  that answers the peer's, the Close with the right code when the peer
  breaks a rule, the HTTP error for a bad request) are queued, and
  ``data_to_send()`` hands them over; every call that returns bytes also
  returns what was queued before it, so that bytes leave in the order the
  protocol decided on them.
- ``ending`` says what should now happen to the transport.

The states, and what moves a protocol from one to the next (``_NEXT``)::

    CONNECTING -(server: REQUESTED)-accept/101-> OPEN -close()-> CLOSE_SENT -peer's Close-> CLOSED
        |                     |  \\--peer's Close (answered)-------------^
        |                     |  \\--too big (Close 1009 queued)-> CLOSE_SENT
        |                     \\--broken rule-> VIOLATED -fail()/close()-> FAILED
        \\--HTTP answer, rejection, bad handshake-> REFUSED
    any state but the last four --EOF or abort()--> ABORTED

In VIOLATED the peer broke the protocol: nothing more is read, but we may
still send, so that the answers to the messages before the fault leave
before our Close (the connection gives the application a moment for that,
then calls ``fail()``).  After our Close, data from the peer is still parsed,
to find its Close frame, and dropped.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from ._deflate import Deflate, PerMessageDeflate, to_deflate
from ._errors import CloseReason, ConnectionClosed, ConnectionRejected, HandshakeError, set_was_clean
from ._frames import (
    BINARY,
    CONTINUATION,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    frame,
)
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
from ._messages import MessageAssembler

__all__ = [
    "CLOSE",
    "FRAGMENT",
    "MESSAGE",
    "PING",
    "PONG",
    "VIOLATION",
    "YIELD",
    "BINARY",
    "TEXT",
    "ClientProtocol",
    "Ending",
    "Protocol",
    "ServerProtocol",
    "State",
    "check_close_args",
    "check_control_payload",
]

# Events: (kind, payload).
MESSAGE: Final = 1  # str | bytes: a complete message
PING: Final = 2  # bytes: the peer's ping (its Pong is queued)
PONG: Final = 3  # bytes: a pong
CLOSE: Final = 4  # (code, reason): the peer's Close (1005 and "" when it had no code)
VIOLATION: Final = 5  # (code, reason): the peer broke the protocol (see ``state``)
YIELD: Final = 6  # None: many frames were parsed in a row; let other tasks run
FRAGMENT: Final = 7  # (piece, last, text): a piece of a streamed message (see stream_next())
Event = tuple[int, object]

_FRAMES_PER_STEP: Final = 256  # at most this many frames (about 1 ms of tiny ones), then YIELD
_YIELD_EVENT: Final[Event] = (YIELD, None)
_SENDING: Final = 1  # Protocol._sending: a fragmented message is under way ...
_SENDING_COMPRESSED: Final = 2  # ... and it is compressed

# Close codes an endpoint may put in a Close frame: RFC 6455 7.4.1, plus 1012
# (service restart) and 1013 (try again later) from the IANA registry.  1004-1006
# and 1015 are for reporting only; 1014 is registered too, but wsproto (and so
# trio-websocket) fails a connection that receives it, so we do not send it.
SENDABLE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})
# Close codes a peer may send: the above and 1014, and 3000-4999.
_RECEIVABLE_CODES: Final = SENDABLE_CODES | {1014}
_MAX_CLOSE_REASON_BYTES: Final = 123  # 125-byte control frame payload minus the 2-byte code
_OWN_RESPONSE_HEADERS: Final = frozenset({b"content-length", b"connection"})


def check_close_args(code: int, reason: str | None) -> None:
    """Raise :exc:`ValueError` (or :exc:`TypeError`) unless ``code`` and ``reason`` fit a Close frame."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"close code must be an int, not {type(code).__name__}")
    if code not in SENDABLE_CODES and not 3000 <= code <= 4999:
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


def check_control_payload(payload: bytes, what: str) -> bytes:
    data = bytes(payload)
    if len(data) > 125:
        raise ValueError(f"{what} payload is {len(data)} bytes; a control frame holds at most 125")
    return data


class State(enum.Enum):
    """A protocol's state; each carries what it allows (read as plain attributes: fast)."""

    # name = (what it means, bytes are parsed, data may be sent, messages are delivered, over)
    CONNECTING = ("the opening handshake is under way", True, False, False, False)
    REQUESTED = ("server: the client's request is read; the application decides", False, False, False, False)
    OPEN = ("messages go both ways", True, True, True, False)
    VIOLATED = ("the peer broke the protocol; we may still send, then fail()", False, True, False, False)
    CLOSE_SENT = ("our Close is queued; the peer's has not come", True, False, False, False)
    CLOSED = ("a Close went each way: the closing handshake is complete", False, False, False, True)
    FAILED = ("our Close after a violation, or a violation after our Close", False, False, False, True)
    REFUSED = ("the opening handshake ended without a WebSocket", False, False, False, True)
    ABORTED = ("the transport ended, or was given up, before the closing handshake", False, False, False, True)

    # Identity is equality for these: hash in C, not through Enum's Python __hash__
    # (the transition table is looked up on every change of state). Type checkers see
    # a method's signature: an assigned attribute's type is ambiguous to them.
    if TYPE_CHECKING:

        def __hash__(self) -> int: ...

    else:
        __hash__ = object.__hash__

    def __init__(self, meaning: str, reading: bool, can_send: bool, delivering: bool, over: bool) -> None:
        self.meaning = meaning
        self.reading = reading
        self.can_send = can_send
        self.delivering = delivering
        self.over = over  # nothing more will be read or sent: only the transport's end is left


class _Input(enum.Enum):
    __hash__ = object.__hash__  # see State
    REQUEST = enum.auto()  # a server read the client's request
    OPENED = enum.auto()
    REFUSED = enum.auto()
    CLOSE_SENT = enum.auto()
    CLOSE_RECEIVED = enum.auto()
    VIOLATION = enum.auto()
    ENDED = enum.auto()  # EOF, or abort()


_S, _I = State, _Input
# The transitions; any pair not here is a bug in the caller (or here).
_NEXT: Final[dict[tuple[State, _Input], State]] = {
    (_S.CONNECTING, _I.REQUEST): _S.REQUESTED,
    (_S.CONNECTING, _I.OPENED): _S.OPEN,  # a client
    (_S.CONNECTING, _I.REFUSED): _S.REFUSED,
    (_S.REQUESTED, _I.OPENED): _S.OPEN,
    (_S.REQUESTED, _I.REFUSED): _S.REFUSED,
    (_S.OPEN, _I.CLOSE_SENT): _S.CLOSE_SENT,
    (_S.OPEN, _I.CLOSE_RECEIVED): _S.CLOSED,
    (_S.OPEN, _I.VIOLATION): _S.VIOLATED,
    (_S.VIOLATED, _I.CLOSE_SENT): _S.FAILED,
    (_S.CLOSE_SENT, _I.CLOSE_SENT): _S.CLOSE_SENT,  # a 1009 while our Close is out already
    (_S.CLOSE_SENT, _I.CLOSE_RECEIVED): _S.CLOSED,
    (_S.CLOSE_SENT, _I.VIOLATION): _S.FAILED,
}
for _state in (_S.CONNECTING, _S.REQUESTED, _S.OPEN, _S.VIOLATED, _S.CLOSE_SENT):
    _NEXT[_state, _I.ENDED] = _S.ABORTED
for _state in (_S.CLOSED, _S.FAILED, _S.REFUSED, _S.ABORTED):
    _NEXT[_state, _I.ENDED] = _state  # the end after the end: nothing changes
del _state


class Ending(enum.Enum):
    """What should happen to the transport now (``Protocol.ending``)."""

    NOT_YET = "not yet"  # keep reading
    CLOSE = "close"  # close it now
    LINGER = "linger"  # send FIN, drop input until the peer closes (briefly), close
    DRAIN = "drain"  # drop input until the peer closes (briefly), close


class Protocol:
    """What both roles share: frames, messages, and closing."""

    __slots__ = (
        "_assembler",
        "_budget",
        "_client",
        "_deflate",
        "_max_message_size",
        "_reader",
        "_sending",
        "_violation",
        "close_reason",
        "handshake_error",
        "messages_received",
        "messages_sent",
        "outgoing",
        "replies_queued",
        "state",
    )

    def __init__(self, *, client: bool, max_message_size: int, compression: str | Deflate | None) -> None:
        self._client = client
        self._max_message_size = max_message_size
        # permessage-deflate, when asked for: offered (client) or accepted if
        # offered (server); enabled() once agreed.
        options = to_deflate(compression)
        self._deflate = (
            PerMessageDeflate(client=client, max_message_size=max_message_size, options=options)
            if options is not None
            else None
        )
        self.state: State = State.CONNECTING
        #: Why the connection is closing or closed: the first reason wins.
        self.close_reason: CloseReason | None = None
        #: What the opening handshake failed with (for the caller to raise), else None.
        self.handshake_error: BaseException | None = None
        #: Bytes decided on, not yet taken by data_to_send() (read-only: a list,
        #: so that "anything to write?" costs no call on the hot path).
        self.outgoing: list[bytes] = []
        #: Bytes of automatic Pongs in ``outgoing`` (zero once data_to_send() takes them):
        #: a reader that lets another task write them can bound what it owes.
        self.replies_queued: int = 0
        # From the 101 on: the frame reader and the message assembler.
        self._reader: FrameReader | None = None
        self._assembler: MessageAssembler | None = None
        self._violation: FrameError | None = None  # in VIOLATED: what fail() sends
        # A message we send in fragments: 0 none, else the flags of its frames
        # (_SENDING, and _SENDING_COMPRESSED when it is compressed).
        self._sending = 0
        #: Complete messages sent and received (statistics).
        self.messages_sent: int = 0
        self.messages_received: int = 0
        self._budget = _FRAMES_PER_STEP

    # --- what the caller reads -------------------------------------------------------------

    @property
    def client(self) -> bool:
        return self._client

    @property
    def extensions(self) -> str:
        """The agreed ``Sec-WebSocket-Extensions`` value, ``""`` for none."""
        return self._deflate.header if self._deflate is not None else ""

    def next_read(self) -> tuple[int, int | None]:
        """What the reader's next read should be: ``(wants, exactly)``, how many bytes the
        frame under way still needs (0: no idea) and the most to take (``None``: no
        limit; see ``FrameReader.read_limit``).  One call before every read, on the
        reader's hot path, for both."""
        reader = self._reader
        if reader is None:
            return 0, None
        return reader.wants, reader.read_limit or None

    @property
    def ending(self) -> Ending:
        """What to do with the transport now, after writing ``data_to_send()``."""
        state = self.state
        if not state.over:
            return Ending.NOT_YET
        if state is State.ABORTED:
            return Ending.CLOSE
        if self._client:
            # RFC 6455 7.1.1: the server closes TCP first (TIME_WAIT lands on
            # its side); a client waits for that, briefly.
            return Ending.CLOSE if state is State.REFUSED else Ending.DRAIN
        if state is State.CLOSED:
            return Ending.CLOSE
        # An HTTP answer or our Close after a fault: closing with unread input
        # would reset the connection, and the peer could lose what we sent.
        return Ending.LINGER

    def queued_bytes(self) -> int:
        """How many bytes wait in ``outgoing``."""
        return sum(map(len, self.outgoing)) if self.outgoing else 0

    def requeue(self, data: bytes) -> None:
        """Bytes taken by ``data_to_send()`` that could not be written yet: they go first."""
        if data:
            self.outgoing.insert(0, data)

    @property
    def sending_in_pieces(self) -> bool:
        """A message sent in fragments is under way (no other message may start)."""
        return self._sending != 0

    def queue_data(self, opcode: int, payload: bytes, compress: bool, frames: dict[object, bytes]) -> None:
        """Queue a whole data message (as ``send_data``, but into ``outgoing``), for a broadcast:
        ``frames`` keeps the frames already built for other connections, by framing, so that
        each distinct frame is built once (unmasked and uncompressed, or compressed without
        context takeover with the same parameters); a client's frames are masked each with
        its own key, and a compressor with context takeover compresses for itself.

        :raises ConnectionClosed: a Close was sent or received, or the connection ended.
        """
        if not self.state.can_send or self._sending:
            raise ConnectionClosed(self.close_reason)
        deflate = self._deflate
        if deflate is None or not compress or not deflate.enabled():
            key: object = None
        else:
            key = deflate.shareable_key()
            if key is None:  # context takeover (or a client): this connection's own compressor
                compressed = deflate.deflate(payload)
                if compressed is not None:
                    data = frame(opcode, compressed, mask=self._client, rsv1=True)
                    self.outgoing.append(data)
                    self.messages_sent += 1
                    return
                # (sent uncompressed: it would not get smaller)
        if self._client:
            data = frame(opcode, payload, mask=True)
        else:
            data = frames.get(key) or frames.setdefault(key, self._shared_frame(key, opcode, payload, frames))
        self.outgoing.append(data)
        self.messages_sent += 1

    def _shared_frame(self, key: object, opcode: int, payload: bytes, frames: dict[object, bytes]) -> bytes:
        """The frame every server connection under ``key`` sends (``None``: uncompressed)."""
        deflate = self._deflate
        compressed = deflate.deflate(payload) if key is not None and deflate is not None else None
        if compressed is None:  # the same for every connection under ``key``: it depends on the bytes only
            return frames.get(None) or frames.setdefault(None, frame(opcode, payload, mask=False))
        return frame(opcode, compressed, mask=False, rsv1=True)

    def data_to_send(self) -> bytes:
        """The bytes queued so far (automatic replies, handshake answers); they are now the caller's."""
        out = self.outgoing
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        del out[:]
        self.replies_queued = 0
        return data

    # --- bytes in, events out ----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the peer; ``b""`` when the peer closed its side (EOF)."""
        reader = self._reader
        if data and reader is not None and self.state.reading:
            reader.feed(data)
        else:
            self._receive_other(data)

    def _receive_other(self, data: bytes | bytearray) -> None:
        """Bytes outside the frame stage (the handshake's, or input to drop), or EOF."""
        if not data:
            self._ended("the peer closed the TCP connection without a Close frame")

    def next_event(self) -> Event | None:
        """The next event, or ``None`` until more bytes arrive."""
        reader = self._reader
        if reader is None or not self.state.reading:
            return None
        assembler = self._assembler
        assert assembler is not None
        try:
            while True:
                if assembler.more:  # a compressed piece of a streamed message inflates on
                    message = assembler.more_output()
                else:
                    piece = reader.next_piece()
                    if piece is None:
                        return None
                    self._budget -= 1
                    opcode, payload, flags = piece
                    if opcode >= OP_CLOSE:
                        return self._control(opcode, payload)
                    message = assembler.add(opcode, payload, flags)
                if message is not None and self.state.delivering:  # after our Close: dropped
                    if assembler.piece:
                        return self._fragment(message, assembler.piece == 2)
                    self.messages_received += 1
                    return (MESSAGE, message)
                if self._budget <= 0:  # this many frames, and an event is not always among them
                    self._budget = _FRAMES_PER_STEP
                    return _YIELD_EVENT
        except FrameError as exc:
            return self._on_violation(exc)

    def _fragment(self, piece: str | bytes, last: bool) -> Event:
        if last:
            self.messages_received += 1
        assert self._assembler is not None
        return (FRAGMENT, (piece, last, self._assembler.text))

    def stream_next(self, max_size: int | None, *, decode: bool = True) -> Event | None:
        """Deliver the next message (or the one under way) as FRAGMENT events, bounded by
        ``max_size`` (``None``: no bound), text as ``str`` pieces, or as validated UTF-8
        ``bytes`` if not ``decode``.  What came of a message under way is the first piece,
        returned here."""
        assembler = self._assembler
        if assembler is None or not self.state.delivering:
            return None
        try:
            piece = assembler.stream(max_size, decode=decode)
        except FrameError as exc:
            return self._on_violation(exc)
        return None if piece is None else self._fragment(piece, False)

    def drop_stream(self) -> None:
        """The streamed message's reader left: the rest of that message is dropped as it comes."""
        if self._assembler is not None:
            self._assembler.drop_stream()

    def _control(self, opcode: int, payload: bytes) -> Event:
        if opcode == OP_PING:
            if self.state.can_send:
                pong = frame(OP_PONG, payload, mask=self._client)
                self.outgoing.append(pong)
                self.replies_queued += len(pong)
            return (PING, payload)
        if opcode == OP_PONG:
            return (PONG, payload)
        code, reason = _close_payload(payload)
        if self.state is State.OPEN:
            # The peer starts the closing handshake: answer with the same code.
            self.close_reason = CloseReason(code, reason or None)
            self.outgoing.append(close_frame(code, reason, mask=self._client))
        self.state = _NEXT[self.state, _Input.CLOSE_RECEIVED]
        return (CLOSE, (code, reason))

    def _on_violation(self, error: FrameError) -> Event:
        if self.close_reason is None:
            self.close_reason = CloseReason(error.code, error.reason)
        if error.code == 1009 and self.state in (State.OPEN, State.CLOSE_SENT):
            # Close at once, and read on (dropping the rest of the message)
            # until the peer's Close, so that the peer sees ours.
            if self.state is State.OPEN:
                self.outgoing.append(close_frame(1009, error.reason, mask=self._client))
            self.state = _NEXT[self.state, _Input.CLOSE_SENT]
        else:
            self._violation = error
            self.state = _NEXT[self.state, _Input.VIOLATION]
        return (VIOLATION, (error.code, error.reason))

    # --- calls in, bytes out -----------------------------------------------------------------

    def send_data(self, opcode: int, payload: bytes, compress: bool = True) -> bytes:
        """A data message (TEXT or BINARY, in one frame) to write now; compressed if
        permessage-deflate was agreed, unless not ``compress`` (RFC 7692 lets each message choose).

        :raises ConnectionClosed: a Close was sent or received, or the connection ended.
        """
        if not self.state.can_send:
            raise ConnectionClosed(self.close_reason)
        deflate = self._deflate
        compressed = deflate.deflate(payload) if deflate is not None and compress and deflate.enabled() else None
        if compressed is not None:
            data = frame(opcode, compressed, mask=self._client, rsv1=True)
        else:  # (no deflate, not wanted, or the message would not get smaller)
            data = frame(opcode, payload, mask=self._client)
        self.messages_sent += 1
        if self.outgoing:
            self.outgoing.append(data)
            return self.data_to_send()
        return data

    def send_fragment(self, opcode: int, payload: bytes, *, last: bool, compress: bool = True) -> bytes:
        """One frame of a message sent in pieces, to write now: the first carries ``opcode``
        (TEXT or BINARY), the others are continuations; ``last`` ends the message.  Control
        frames may go out between them; the caller keeps other messages out until the last.

        :raises ConnectionClosed: a Close was sent or received, or the connection ended.
        """
        if not self.state.can_send:
            raise ConnectionClosed(self.close_reason)
        deflate = self._deflate
        first = not self._sending
        if first:
            compressed = deflate is not None and compress and deflate.enabled()
            self._sending = _SENDING | (_SENDING_COMPRESSED if compressed else 0)
        else:
            opcode = CONTINUATION
        if self._sending & _SENDING_COMPRESSED:
            assert deflate is not None
            payload = deflate.deflate_piece(payload, last)
        data = frame(
            opcode, payload, mask=self._client, rsv1=first and self._sending & _SENDING_COMPRESSED != 0, fin=last
        )
        if last:
            self._sending = 0
            self.messages_sent += 1
        self.outgoing.append(data)
        return self.data_to_send()

    def ping(self, payload: bytes) -> bytes:
        """A Ping to write now (``payload``: at most 125 bytes).  :raises ConnectionClosed:"""
        return self._send_control(OP_PING, payload)

    def queue_ping(self, payload: bytes) -> None:
        """Queue a Ping in ``outgoing`` (for a keepalive that writes without waiting).
        :raises ConnectionClosed:"""
        self._queue_control(OP_PING, payload)

    def pong(self, payload: bytes) -> bytes:
        """An unsolicited Pong to write now.  :raises ConnectionClosed:"""
        return self._send_control(OP_PONG, payload)

    def _send_control(self, opcode: int, payload: bytes) -> bytes:
        self._queue_control(opcode, payload)
        return self.data_to_send()

    def _queue_control(self, opcode: int, payload: bytes) -> None:
        if not self.state.can_send:
            raise ConnectionClosed(self.close_reason)
        self.outgoing.append(frame(opcode, payload, mask=self._client))

    def close(self, code: int, reason: str | None) -> None:
        """Start the closing handshake: our Close frame is queued.

        After a violation, the Close carries the violation's code instead.
        In any state but OPEN and VIOLATED there is nothing to send.
        """
        if self.state is State.VIOLATED:
            self.fail()
        elif self.state is State.OPEN:
            self.close_reason = self.close_reason or CloseReason(code, reason)
            self.outgoing.append(close_frame(code, reason, mask=self._client))
            self.state = _NEXT[self.state, _Input.CLOSE_SENT]

    def fail(self) -> None:
        """VIOLATED: the Close frame with the violation's code is queued."""
        error = self._violation
        if self.state is State.VIOLATED and error is not None:
            self.outgoing.append(close_frame(error.code, error.reason, mask=self._client))
            self.state = _NEXT[self.state, _Input.CLOSE_SENT]

    def abort(self, why: str) -> None:
        """The connection is given up (transport lost, a timeout, a cancelled write): code 1006."""
        self._ended(why)

    def connection_lost(self) -> None:
        """The transport is closed: the end, whatever the state.  ``was_clean`` is settled here."""
        if not self.state.over:
            self._ended("the connection closed")
        if self._deflate is not None:
            self._deflate.close()  # its zlib objects and histories go now, not with the connection
        assert self.close_reason is not None
        if self.state is State.CLOSED:
            set_was_clean(self.close_reason)

    # --- the state machine -------------------------------------------------------------------

    def _ended(self, why: str) -> None:
        if (self.state is State.CONNECTING or self.state is State.REQUESTED) and self.handshake_error is None:
            self.handshake_error = HandshakeError(why)
        if self.close_reason is None:
            self.close_reason = CloseReason(1006, why)
        self.state = _NEXT[self.state, _Input.ENDED]
        self.outgoing.clear()  # nothing more can be written
        self.replies_queued = 0

    def _opened(self, deflate_agreed: bool, trailing_data: bytes) -> None:
        """The opening handshake succeeded: frames from here on."""
        if not deflate_agreed:
            self._deflate = None
        self._reader = FrameReader(client=self._client, compression=deflate_agreed, max_whole=self._max_message_size)
        self._assembler = MessageAssembler(self._max_message_size, self._deflate)
        self._reader.feed(trailing_data)
        self.state = _NEXT[self.state, _Input.OPENED]

    def _refused(self, reason: str, error: BaseException | None) -> None:
        self.handshake_error = error
        self.close_reason = CloseReason(1006, reason)
        self.state = _NEXT[self.state, _Input.REFUSED]


def _close_payload(payload: bytes) -> tuple[int, str]:
    """A Close frame's code and reason (1005 and "" for an empty one)."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(1002, "Close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in _RECEIVABLE_CODES and not 3000 <= code <= 4999:
        raise FrameError(1002, f"Close frame with an invalid code {code}")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "Close frame with a reason that is not UTF-8") from None


class ServerProtocol(Protocol):
    """The server's side: read the client's request, answer it (101 or an HTTP response)."""

    __slots__ = ("_handshake", "_server_header", "request", "subprotocol")

    def __init__(
        self, *, max_message_size: int, compression: str | Deflate | None, server_header: str | None = None
    ) -> None:
        super().__init__(client=False, max_message_size=max_message_size, compression=compression)
        self._handshake: ServerHandshake | None = ServerHandshake()
        self._server_header = server_header  # of every HTTP answer (None: none); shared, not copied
        #: The client's request once read: an upgrade, or a plain HTTP request.
        self.request: UpgradeRequest | HTTPRequest | None = None
        self.subprotocol: str | None = None

    def _receive_other(self, data: bytes | bytearray) -> None:
        if self.state is State.CONNECTING and self._handshake is not None:
            self._handshake_data(bytes(data))  # at EOF, h11 words what is missing
            if not data and self.state is State.CONNECTING:
                self._ended("the client closed the connection before its handshake")
        else:
            super()._receive_other(data)

    def _handshake_data(self, data: bytes) -> None:
        assert self._handshake is not None
        try:
            self.request = self._handshake.receive_data(data)
        except HandshakeFailure as exc:
            self._bad_request(exc)
        else:
            if self.request is not None:
                self.state = _NEXT[self.state, _Input.REQUEST]

    def _bad_request(self, exc: HandshakeFailure) -> None:
        error = HandshakeError(f"invalid opening handshake (the client's request): {exc}")
        error.__cause__ = exc.__cause__ or exc
        if exc.status:
            body = f"Invalid WebSocket handshake: {exc}\n".encode("utf-8", "replace")
            headers = self._with_server([*exc.headers, (b"content-type", b"text/plain; charset=utf-8")])
            self.outgoing.append(http_response(exc.status, headers, body))
        self._refused(f"opening handshake failed: {error!r}", error)

    def accept(self, subprotocol: str | None, extra_headers: Headers | None) -> None:
        """Answer the upgrade with 101 Switching Protocols (queued); OPEN from here on.

        :raises ValueError: ``subprotocol`` was not proposed, or a header is invalid.
        :raises RuntimeError: the request was answered already.
        """
        request = self._undecided()
        if not isinstance(request, UpgradeRequest):
            raise RuntimeError("a plain HTTP request cannot be accepted as a WebSocket")
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
        self.outgoing.append(ServerHandshake.accept(request, subprotocol, agreed, self._with_server(headers)))
        # Frames a client sent with its request (it should have waited for
        # our 101) are not lost: they start the frame reader's input.
        assert self._handshake is not None
        trailing = self._handshake.trailing_data
        self._handshake = None
        self.subprotocol = subprotocol
        self._opened(bool(agreed), trailing)

    def respond(self, status_code: int, extra_headers: Headers | None, body: bytes) -> None:
        """Answer the request with an HTTP response (queued) instead: a rejection, or plain HTTP.

        We set Content-Length and Connection; a rejected upgrade also loses
        any WebSocket handshake header the caller gave.

        :raises ValueError: the status or a header is invalid.
        :raises RuntimeError: the request was answered already.
        """
        if self.state is not State.CONNECTING:  # (may come before the request: a 503 under load)
            self._undecided()
        request = self.request
        check_reject_status(status_code)
        plain = isinstance(request, HTTPRequest)
        drop = _OWN_RESPONSE_HEADERS if plain else _OWN_RESPONSE_HEADERS | PROTOCOL_HEADERS
        headers = self._with_server(caller_headers(extra_headers, drop=drop))
        head_only = isinstance(request, HTTPRequest) and request.method == "HEAD"
        self.outgoing.append(http_response(status_code, headers, body, head=head_only))
        self._handshake = None
        self._refused("Rejected WebSocket handshake", None)

    def _with_server(self, headers: Headers) -> Headers:
        """``headers`` and our Server header, unless there is none or the caller gave one."""
        if self._server_header is None or any(name.lower() == b"server" for name, _ in headers):
            return headers
        return [(b"Server", self._server_header.encode("ascii")), *headers]

    def _undecided(self) -> UpgradeRequest | HTTPRequest:
        if self.state is not State.REQUESTED or self.request is None:
            if (self.state is State.ABORTED or self.state is State.REFUSED) and self.request is not None:
                raise ConnectionClosed(self.close_reason)
            raise RuntimeError("this handshake was already accepted or rejected")
        return self.request


class ClientProtocol(Protocol):
    """The client's side: the upgrade request, and the server's answer to it."""

    __slots__ = ("_handshake", "headers", "host", "path", "subprotocol")

    def __init__(
        self,
        *,
        host: str,
        target: str,
        subprotocols: list[str],
        extra_headers: Headers,
        max_message_size: int,
        compression: str | Deflate | None,
    ) -> None:
        super().__init__(client=True, max_message_size=max_message_size, compression=compression)
        offers = self._deflate.offers() if self._deflate is not None else []
        self._handshake: ClientHandshake | None = ClientHandshake(host, target, subprotocols, offers, extra_headers)
        self.outgoing.append(self._handshake.request_bytes())
        self.host = host  # what the Host header says
        self.path = target
        #: The response's headers (lower-case names), once it came.
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.subprotocol: str | None = None

    def _receive_other(self, data: bytes | bytearray) -> None:
        if self.state is State.CONNECTING and self._handshake is not None:
            self._response_data(bytes(data))
        else:
            super()._receive_other(data)

    def _response_data(self, data: bytes) -> None:
        assert self._handshake is not None
        try:
            outcome = self._handshake.receive_data(data)
            if isinstance(outcome, Accepted):
                self._accepted(outcome)
            elif isinstance(outcome, Rejected):
                error = ConnectionRejected(outcome.status_code, outcome.headers, outcome.body)
                self._refused(f"opening handshake failed: {error!r}", error)
        except HandshakeFailure as exc:
            error_ = HandshakeError(f"invalid opening handshake (the server's response): {exc}")
            error_.__cause__ = exc.__cause__ or exc
            self._refused(f"opening handshake failed: {error_!r}", error_)
        if self.state is not State.CONNECTING:
            self._handshake = None

    def _accepted(self, accepted: Accepted) -> None:
        """The server's 101 is valid: agree on extensions, start the frame stage."""
        deflate = self._deflate
        for item in accepted.extensions:
            name = item.partition(";")[0].strip().lower()
            if deflate is None or name != deflate.name or deflate.enabled():
                raise HandshakeFailure(0, f"the server accepted an extension we did not offer: {item!r}")
            try:
                deflate.finalize(item)
            except Exception as exc:  # our permessage-deflate refuses the response
                raise HandshakeFailure(0, f"unacceptable {name} response {item!r}: {exc}") from exc
        self.subprotocol = accepted.subprotocol
        self.headers = accepted.headers
        self._opened(deflate is not None and deflate.enabled(), accepted.trailing_data)
