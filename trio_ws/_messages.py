"""Messages from pieces (RFC 6455 5.4 and 5.6, RFC 7692 section 6), Sans-I/O.

``MessageAssembler`` takes the pieces of data messages that
``_frames.FrameReader`` decodes, in order, and returns each message once it
is complete: ``str`` for text, ``bytes`` for binary.  It owns what a
message's *content* can break:

- ``max_message_size``, counted in the unit ``len()`` uses (bytes for
  binary, characters for text), also while inflating, so that a compressed
  message is refused at the same size as a plain one and never inflated
  much past it (1009);
- UTF-8, validated incrementally as text arrives (1007 at the first invalid
  piece: RFC 6455 8.1 asks to fail fast);
- permessage-deflate data that does not inflate (1007).

After a 1009 the rest of that message is dropped as it arrives, and the
assembler goes on with the next one: the connection closes, but the peer's
Close frame still has to be read.

**Streaming.**  ``stream()`` asks for the next message (or the one under
way) piece by piece instead of whole, with a size bound of its own (or
none): ``add()`` then returns each piece as it comes (``piece`` says 1, or
2 for the last), text decoded as UTF-8 across piece boundaries, or,
undecoded, the validated bytes.  A compressed piece inflates to at most
``STREAM_STEP`` bytes at a time, the rest coming from ``more_output()``
(while ``more`` is true): memory stays bounded however much the message
inflates to.
``drop_stream()`` discards the rest of a streamed message (its text is
still validated).
"""

from __future__ import annotations

import codecs
import enum
import io

from ._deflate import PerMessageDeflate
from ._frames import COMPRESSED, FIRST, LAST, TEXT, FrameError

__all__ = ["STREAM_STEP", "MessageAssembler"]

STREAM_STEP = 2**16  # the most a compressed piece of a streamed message inflates to at a time
_UNBOUNDED = 2**62


class _Stream(enum.Enum):
    OFF = "off"  # messages are assembled whole
    ARMED = "armed"  # the next message is streamed
    ON = "on"  # this message is streamed
    DROPPING = "dropping"  # this message was streamed, and its reader left: drop the rest


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(1007, f"invalid UTF-8 in a text message: {exc.reason} at byte {exc.start}") from None


class MessageAssembler:
    """Joins, decodes, inflates and bounds the peer's messages (or streams them)."""

    __slots__ = (
        "_bytes",
        "_decoder",
        "_deflate",
        "_discarding",
        "_inflating",
        "_max",
        "_more_flags",
        "_more_opcode",
        "_next_armed",
        "_raw",
        "_size",
        "_stream",
        "_stream_max",
        "_text",
        "more",
        "piece",
        "text",
    )

    def __init__(self, max_message_size: int, deflate: PerMessageDeflate | None) -> None:
        self._max = max_message_size
        self._deflate = deflate if deflate is not None and deflate.enabled() else None
        self._size = 0  # of the message so far, in len() units
        self._bytes: bytearray | None = None  # a binary message being joined
        self._text: io.StringIO | None = None  # a text message being joined...
        self._decoder: codecs.IncrementalDecoder | None = None  # ... and its UTF-8 decoder
        self._discarding = False  # the message passed max_message_size: drop the rest
        # False after a compressed message passed max_message_size: the part
        # of it that was dropped was never inflated, so the compression
        # context is out of step with the peer's, and every later compressed
        # message is dropped unread (the connection is closing anyway).
        self._inflating = True
        # Streaming (see the module's docstring).
        self._stream = _Stream.OFF
        self._next_armed = False  # DROPPING, and the message after it is to be streamed
        self._stream_max = _UNBOUNDED
        self._raw = False  # stream text as validated UTF-8 bytes, not str
        #: What add() (or more_output()) returned: 0 a whole message, 1 a piece of a
        #: streamed message, 2 its last piece.  (A plain attribute: read for every message.)
        self.piece = 0
        #: The streamed message is text (else binary).
        self.text = False
        #: more_output() has inflated output left of a compressed piece of a streamed message.
        self.more = False
        self._more_opcode = 0
        self._more_flags = 0

    def add(self, opcode: int, payload: bytes, flags: int) -> str | bytes | None:
        """A piece of a message (``flags``: FIRST, LAST, COMPRESSED); the message once complete,
        or, streaming, the piece (``None`` for an empty piece that does not end the message).

        :raises FrameError: 1007 (invalid UTF-8 or compressed data), 1009 (too large).
        """
        last = flags & LAST
        if flags & COMPRESSED and not self._inflating:
            return None  # dropped: see _inflating
        if self._stream is not _Stream.OFF:
            if flags & FIRST and self._stream is _Stream.ARMED:
                self._stream = _Stream.ON
            return self._stream_piece(opcode, payload, flags)
        self.piece = 0
        if flags & COMPRESSED:
            if flags & FIRST:
                assert self._deflate is not None  # the frame reader allows RSV1 only then
                self._deflate.start_inbound(text=opcode == TEXT)
            payload = self._inflate(payload, bool(last))
        if self._discarding:
            if last:
                self._end(flags)
            return None
        if last and flags & FIRST:
            # A whole message in one piece: the common case, no assembly.
            message: str | bytes = _utf8(payload) if opcode == TEXT else payload
            if flags & COMPRESSED:
                self._end(flags)
            if len(message) > self._max:
                self._too_big(flags)
            return message
        if opcode == TEXT:
            return self._add_text(payload, flags)
        self._size += len(payload)
        if self._size > self._max:
            self._too_big(flags)
        if self._bytes is None:
            self._bytes = bytearray(payload)
        else:
            self._bytes += payload
        if not last:
            return None
        message = bytes(self._bytes)
        self._end(flags)
        return message

    def _add_text(self, payload: bytes, flags: int) -> str | None:
        last = bool(flags & LAST)
        if self._decoder is None:
            self._decoder = codecs.getincrementaldecoder("utf-8")()
            self._text = io.StringIO()
        piece = self._decode(payload, last)
        self._size += len(piece)
        if self._size > self._max:
            self._too_big(flags)
        assert self._text is not None
        self._text.write(piece)
        if not last:
            return None
        message = self._text.getvalue()
        self._end(flags)
        return message

    def _decode(self, payload: bytes, last: bool) -> str:
        assert self._decoder is not None
        try:
            return self._decoder.decode(payload, last)
        except UnicodeDecodeError as exc:
            raise FrameError(1007, f"invalid UTF-8 in a text message: {exc.reason}") from None

    def _inflate(self, payload: bytes, last: bool) -> bytes:
        if self._discarding:
            return b""
        assert self._deflate is not None
        inflated = self._deflate.inflate(payload, self._max - self._size, last)
        if isinstance(inflated, int):  # a close code: bad data, or too big
            if inflated == 1009:
                self._too_big(COMPRESSED | (LAST if last else 0))
            raise FrameError(inflated, "invalid permessage-deflate data")
        return inflated

    def _too_big(self, flags: int) -> None:
        limit = self._max if self._stream is _Stream.OFF else self._stream_max
        if flags & COMPRESSED:
            self._inflating = False
        if flags & LAST:
            self._end(flags)
        else:
            self._discarding = True
            self._bytes = self._text = None
            self._decoder = None
            self._stream_off()
        raise FrameError(1009, f"message is larger than max_message_size ({limit} bytes)")

    def _end(self, flags: int) -> None:
        if flags & COMPRESSED and self._deflate is not None:
            self._deflate.end_inbound()
        self._size = 0
        self._bytes = self._text = None
        self._decoder = None
        self._discarding = False
        self._stream_off()

    # --- streaming ---------------------------------------------------------------------------

    def stream(self, max_size: int | None, *, decode: bool) -> str | bytes | None:
        """Stream the next message, or the one under way, bounded by ``max_size`` (``None``:
        no bound).  A message under way gives what came of it so far as its first piece,
        returned here (``piece`` is then 1); one already over the limit stays dropped."""
        self._stream_max = _UNBOUNDED if max_size is None else max_size
        self._raw = not decode
        if self._stream is _Stream.DROPPING:  # the rest of an abandoned message is still coming
            self._next_armed = True
            return None
        if self._bytes is None and self._text is None:
            if not self._discarding:  # (over the limit already: it ends with its 1009)
                self._stream = _Stream.ARMED
            return None
        # Part of a message was joined already: hand it over, stream the rest.
        self._stream = _Stream.ON
        self.piece = 1
        self.text = self._bytes is None
        if self._bytes is not None:
            piece: str | bytes = bytes(self._bytes)
            self._bytes = None
        else:
            assert self._text is not None
            assert self._decoder is not None
            text = self._text.getvalue()
            self._text = None
            # Undecoded: what came so far, with the bytes of a character cut in two
            # that the decoder holds (it still checks them with what follows).
            piece = text.encode("utf-8") + self._decoder.getstate()[0] if self._raw else text
        if self._size > self._stream_max:
            self._too_big(0)
        return piece

    def drop_stream(self) -> None:
        """The streamed message's reader left: drop the rest of it (or do not stream the next)."""
        if self._stream is _Stream.ARMED:
            self._stream_off()
        elif self._stream is _Stream.ON:
            self._stream = _Stream.DROPPING
        self._next_armed = False

    def more_output(self) -> str | bytes | None:
        """The next inflated part of a compressed piece of a streamed message (``more`` is true)."""
        deflate = self._deflate
        assert deflate is not None
        out = deflate.inflate_more(STREAM_STEP)
        if isinstance(out, int):
            raise FrameError(out, "invalid permessage-deflate data")
        self.more = deflate.has_more
        return self._stream_output(self._more_opcode, out, 0 if self.more else self._more_flags)

    def _stream_off(self) -> None:
        """The streamed message ended (or none is wanted any more): the next one is whole,
        unless it was asked for while the rest of an abandoned one was being dropped."""
        if self._next_armed:
            self._stream, self._next_armed = _Stream.ARMED, False
        elif self._stream is not _Stream.OFF:
            self._stream = _Stream.OFF
            self._stream_max = _UNBOUNDED

    def _stream_piece(self, opcode: int, payload: bytes, flags: int) -> str | bytes | None:
        if flags & FIRST:
            self._size = 0
        if flags & COMPRESSED:
            deflate = self._deflate
            assert deflate is not None
            if flags & FIRST:
                deflate.start_inbound(text=opcode == TEXT)
            out = deflate.inflate_some(payload, STREAM_STEP, bool(flags & LAST))
            if isinstance(out, int):
                raise FrameError(out, "invalid permessage-deflate data")
            self.more = deflate.has_more
            if self.more:  # the rest of this piece comes from more_output()
                self._more_opcode, self._more_flags = opcode, flags
                return self._stream_output(opcode, out, flags & ~LAST)
            payload = out
        return self._stream_output(opcode, payload, flags)

    def _stream_output(self, opcode: int, payload: bytes, flags: int) -> str | bytes | None:
        last = bool(flags & LAST)
        self.text = opcode == TEXT
        piece: str | bytes = payload
        if opcode == TEXT:
            if self._decoder is None:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
            text = self._decode(payload, last)  # validated across piece boundaries
            self._size += len(text)
            if not self._raw:
                piece = text
        else:
            self._size += len(payload)
        if self._stream is _Stream.DROPPING:
            if last:
                self._end(flags)
            return None
        if self._size > self._stream_max:
            self._too_big(flags)
        if last:
            self._end(flags)
            self.piece = 2
            return piece
        self.piece = 1
        return piece or None  # (an empty piece that does not end the message is no event)
