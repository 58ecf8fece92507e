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
"""

from __future__ import annotations

import codecs
import io

from ._deflate import PerMessageDeflate
from ._frames import COMPRESSED, FIRST, LAST, TEXT, FrameError

__all__ = ["MessageAssembler"]


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(1007, f"invalid UTF-8 in a text message: {exc.reason} at byte {exc.start}") from None


class MessageAssembler:
    """Joins, decodes, inflates and bounds the peer's messages."""

    __slots__ = ("_bytes", "_decoder", "_deflate", "_discarding", "_inflating", "_max", "_size", "_text")

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

    def add(self, opcode: int, payload: bytes, flags: int) -> str | bytes | None:
        """A piece of a message (``flags``: FIRST, LAST, COMPRESSED); the message once complete.

        :raises FrameError: 1007 (invalid UTF-8 or compressed data), 1009 (too large).
        """
        last = flags & LAST
        if flags & COMPRESSED and not self._inflating:
            return None  # dropped: see _inflating
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
        try:
            piece = self._decoder.decode(payload, last)
        except UnicodeDecodeError as exc:
            raise FrameError(1007, f"invalid UTF-8 in a text message: {exc.reason}") from None
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
        limit = self._max
        if flags & COMPRESSED:
            self._inflating = False
        if flags & LAST:
            self._end(flags)
        else:
            self._discarding = True
            self._bytes = self._text = None
            self._decoder = None
        raise FrameError(1009, f"message is larger than max_message_size ({limit} bytes)")

    def _end(self, flags: int) -> None:
        if flags & COMPRESSED and self._deflate is not None:
            self._deflate.end_inbound()
        self._size = 0
        self._bytes = self._text = None
        self._decoder = None
        self._discarding = False
