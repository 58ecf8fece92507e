"""Frames (RFC 6455 section 5.2): their layout and their order, Sans-I/O.

``FrameReader`` holds the bytes received and decodes frames from them; the
frames we send are built by :func:`frame` and :func:`close_frame`.  What a
message *contains* (UTF-8, size, compression) is ``_messages``' business;
what a frame *means* (a ping to answer, a Close) is ``_protocol``'s.

The reader checks everything a frame's header and its place in the
sequence of frames can break, and raises :exc:`FrameError` with the close
code for it: the masking direction, RSV bits, reserved opcodes, the
control-frame rules, lengths in their shortest form, and continuation
frames only inside a fragmented message, new messages only outside one.

For speed, it keeps one buffer and an offset instead of copying the unread
tail for every frame, and takes a frame that arrived whole in one step (the
common case).  A frame that arrives in pieces is handed on piece by piece,
so memory stays bounded and an error in its content (invalid UTF-8) is found
at the first bad piece, except a binary frame of up to 1 MiB, which is
cheaper to wait for and take whole (``wants`` tells the reader how much
more to read).  What arrives for such a frame is kept as it came and joined
once; and a client reads the header after a large frame alone, so that a
read that brings a whole payload is the message itself, uncopied.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from ._mask import apply_mask

__all__ = [
    "BINARY",
    "COMPRESSED",
    "CONTINUATION",
    "FIRST",
    "LAST",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "TEXT",
    "FrameError",
    "FrameReader",
    "Piece",
    "close_frame",
    "frame",
]

# Opcodes (RFC 6455 5.2).
CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

# Flags of a piece of a data message (see FrameReader.next_piece).
FIRST: Final = 1  # the message starts with this piece
LAST: Final = 2  # ... and ends with it
COMPRESSED: Final = 4  # the message is compressed (RSV1 on its first frame)

# (opcode, payload, flags): for a data piece the opcode is the *message's*
# (TEXT or BINARY, also for continuation frames); a control frame comes whole,
# with its own opcode and no flags.
Piece = tuple[int, bytes, int]

_SHORT = struct.Struct("!H")
_LONG = struct.Struct("!Q")
_HEAD2 = struct.Struct("!BB")
_HEAD4 = struct.Struct("!BBH")
_HEAD10 = struct.Struct("!BBQ")
_COMPACT_AT = 1 << 16  # drop consumed bytes from the buffer once this many have piled up
# A binary frame up to this size is taken in one piece once all of it has
# arrived, rather than in pieces copied again into a message.  Text frames go
# piece by piece so that invalid UTF-8 fails at the first bad piece (RFC 6455
# 8.1, "fail fast").
_WHOLE_FRAME = 1 << 20
# An awaited frame that misses at least this much keeps what comes for it in
# parts, joined once (see FrameReader._parts); less is appended to the buffer.
_JOIN_AT = 1 << 16


class FrameError(Exception):
    """The peer broke the protocol: close with ``code`` (1002, 1007 or 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameReader:
    """Decodes the peer's frames, in order, from the bytes fed to it."""

    __slots__ = (
        "_buf",
        "_expect_mask",
        "_frame_done",
        "_frame_fin",
        "_frame_flags",
        "_frame_key",
        "_frame_left",
        "_large_header",
        "_max_whole",
        "_msg_flags",
        "_msg_op",
        "_parts",
        "_pos",
        "_rsv1_ok",
        "read_limit",
        "wants",
    )

    def __init__(self, *, client: bool, compression: bool, max_whole: int) -> None:
        # A server's frames come unmasked to a client; a client's masked to a server.
        self._expect_mask = not client
        self._rsv1_ok = compression  # RSV1 marks a compressed message (RFC 7692)
        self._max_whole = min(max_whole, _WHOLE_FRAME)  # never wait for more than a message may hold
        self._buf = bytearray()
        self._pos = 0
        # While a whole frame is awaited (see next_piece): the bytes fed since,
        # kept as they came and joined once, into the payload, when all are here.
        # (Appended to the buffer instead, each would be copied into it, often
        # with the buffer moving as it grows, and then copied out again.)
        self._parts: list[bytes | bytearray] | None = None
        #: The most the next read should take (0: no limit).  After a large
        #: frame, when nothing is left in the buffer, a client reads the next
        #: frame's header alone (10 bytes: unmasked, with an 8-byte length, if
        #: it is large too): the rest of the frame is then read by itself, and
        #: when one read brings all of it, those bytes *are* the payload, not
        #: copied again.  A small frame after a large one costs one more read;
        #: a server's frames are masked, so unmasking copies them anyway.  (An
        #: attribute, set where a frame ends and cleared by feed(): the reader
        #: task asks for it before every read.)
        self.read_limit = 0
        self._large_header = 0 if self._expect_mask else 10
        #: How many more bytes the frame under way needs (0: unknown, a new
        #: frame), so that the transport can read that much at once.
        self.wants = 0
        # The frame whose payload is arriving in pieces (``_frame_left`` > 0).
        self._frame_fin = False
        self._frame_flags = 0  # of the next piece of that frame
        self._frame_left = 0
        self._frame_key = b""
        self._frame_done = 0  # payload bytes of this frame already taken (for the mask's offset)
        # The fragmented message under way: its opcode (0: none) and its flags.
        self._msg_op = 0
        self._msg_flags = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not decoded yet."""
        return len(self._buf) - self._pos + sum(len(part) for part in self._parts or ())

    def feed(self, data: bytes | bytearray) -> None:
        self.read_limit = 0
        if self._parts is not None:  # the rest of an awaited frame
            self._parts.append(data)
            self.wants = max(self.wants - len(data), 0)
            return
        if self._pos >= _COMPACT_AT or self._pos == len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_piece(self) -> Piece | None:
        """The next control frame or piece of a message; ``None`` when more bytes are needed.

        :raises FrameError: the frame breaks RFC 6455.
        """
        if self._frame_left:
            return self._continue_frame()
        if self.wants and self._parts is not None:
            return None  # an awaited frame is not all here yet
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 2:
            return None
        first = buf[pos]
        second = buf[pos + 1]
        length = second & 0x7F
        head = 2
        if length >= 126:
            head, length = self._extended_length(length, available)
            if not head:
                return None
        masked = second & 0x80
        if masked:
            head += 4
        if available < head:
            return None
        opcode = first & 0x0F
        if not ((first == 0x81 or first == 0x82) and not self._msg_op and bool(masked) == self._expect_mask):
            self._check_header(first, masked, opcode, length)  # (what the usual frame needs no call for)
        key = bytes(buf[pos + head - 4 : pos + head]) if masked else b""
        end = pos + head + length
        if opcode >= 0x8:
            if end > len(buf):
                return None
            payload = bytes(buf[pos + head : end])
            self._pos = end
            return (opcode, apply_mask(payload, key) if key else payload, 0)
        if opcode:  # TEXT or BINARY: a message begins
            message_op, flags = opcode, FIRST | (COMPRESSED if first & 0x40 else 0)
        else:
            message_op, flags = self._msg_op, self._msg_flags
        fin = first & 0x80
        if end <= len(buf) or self._parts is not None:  # (parts: the awaited frame, now complete)
            # The whole frame is here: the common case, in one step.
            self.wants = 0
            if fin:
                self._msg_op = 0
                flags |= LAST
            else:
                self._msg_op, self._msg_flags = message_op, flags & COMPRESSED
            if self._parts is not None:
                return (message_op, self._join(pos + head, end, key), flags)
            self._pos = end
            if length > _JOIN_AT and end == len(buf):
                self.read_limit = self._large_header
            return (message_op, _take(buf, pos + head, end, key), flags)
        if message_op == BINARY and not flags & COMPRESSED and length <= self._max_whole:
            # Wait for the rest, to take it in one piece.  Nothing is
            # consumed: the header is read (and checked) again then.
            self.wants = end - len(buf)
            if self.wants >= _JOIN_AT:
                self._parts = []
            return None
        # Only part of the payload is here: take what there is, wait for the rest.
        self._pos = pos + head
        self._msg_op, self._msg_flags = message_op, flags & COMPRESSED
        self._frame_flags, self._frame_fin, self._frame_left = flags, bool(fin), length
        self._frame_key, self._frame_done = key, 0
        return self._continue_frame()

    def _join(self, start: int, end: int, key: bytes) -> bytes:
        """The awaited frame's payload, ``buf[start:]`` and the parts up to ``end`` (counted
        as if they were in the buffer), in one copy; the bytes past it become the buffer."""
        buf, parts = self._buf, self._parts
        assert parts
        self._parts = None
        last = parts[-1]
        cut = len(last) - (len(buf) + sum(len(part) for part in parts) - end)  # the frame's bytes in it
        if start == len(buf) and cut == len(last) and len(parts) == 1 and not key and type(last) is bytes:
            # One read brought the whole payload: it is the message as it is.
            buf.clear()
            self._pos = 0
            self.read_limit = self._large_header
            return last
        first, end_part = memoryview(buf)[start:], memoryview(last)[:cut]
        payload = b"".join([first, *parts[:-1], end_part])
        first.release()  # (a view of the buffer would keep it from being resized below)
        end_part.release()
        buf[:] = last[cut:]
        self._pos = 0
        if not buf:
            self.read_limit = self._large_header
        return apply_mask(payload, key) if key else payload

    def _extended_length(self, length: int, available: int) -> tuple[int, int]:
        """``(header size without the mask, payload length)``; ``(0, 0)`` if not all here."""
        buf, pos = self._buf, self._pos
        if length == 126:
            if available < 4:
                return 0, 0
            (length,) = _SHORT.unpack_from(buf, pos + 2)
            if length < 126:
                raise FrameError(1002, "frame length not in its shortest form")
            return 4, length
        if available < 10:
            return 0, 0
        (length,) = _LONG.unpack_from(buf, pos + 2)
        if length < 65536 or length >> 63:
            raise FrameError(1002, "frame length not in its shortest form, or too large")
        return 10, length

    def _check_header(self, first: int, masked: int, opcode: int, length: int) -> None:
        if bool(masked) != self._expect_mask:
            what = "unmasked frame from a client" if self._expect_mask else "masked frame from a server"
            raise FrameError(1002, what)
        rsv = first & 0x70
        if rsv and not (rsv == 0x40 and self._rsv1_ok and opcode in (TEXT, BINARY)):
            raise FrameError(1002, "reserved bit set without an extension that defines it")
        if opcode >= 0x8:
            if opcode > OP_PONG:
                raise FrameError(1002, f"reserved control opcode {opcode:#x}")
            if not first & 0x80:
                raise FrameError(1002, "fragmented control frame")
            if length > 125:
                raise FrameError(1002, "control frame longer than 125 bytes")
        elif opcode == CONTINUATION:
            if not self._msg_op:
                raise FrameError(1002, "continuation frame without a message to continue")
        elif opcode > BINARY:
            raise FrameError(1002, f"reserved data opcode {opcode:#x}")
        elif self._msg_op:
            raise FrameError(1002, "new message before the previous one ended")

    def _continue_frame(self) -> Piece | None:
        buf, pos = self._buf, self._pos
        take = min(len(buf) - pos, self._frame_left)
        if take == 0:
            return None
        key = self._frame_key
        if key:
            offset = self._frame_done & 3
            key = key[offset:] + key[:offset]
        payload = _take(buf, pos, pos + take, key)
        self._pos = pos + take
        self._frame_done += take
        self._frame_left = self.wants = self._frame_left - take
        opcode, flags = self._msg_op, self._frame_flags
        self._frame_flags = flags & ~FIRST
        if self._frame_left == 0 and self._frame_fin:
            flags |= LAST
            self._msg_op = 0
        return (opcode, payload, flags)


def _take(buf: bytearray, start: int, end: int, key: bytes) -> bytes:
    """``buf[start:end]`` as bytes, unmasked with ``key`` if any: one copy, not two."""
    view = memoryview(buf)[start:end]
    try:
        return apply_mask(view, key) if key else view.tobytes()
    finally:
        view.release()


# --- writing ------------------------------------------------------------------------------


def frame(opcode: int, payload: bytes, *, mask: bool, rsv1: bool = False, fin: bool = True) -> bytes:
    """One frame, complete (``fin``) unless a fragment.  A client masks with a fresh random key."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode | (0x40 if rsv1 else 0)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head = _HEAD2.pack(first, mask_bit | length)
    elif length < 65536:
        head = _HEAD4.pack(first, mask_bit | 126, length)
    else:
        head = _HEAD10.pack(first, mask_bit | 127, length)
    if not mask:
        return head + payload
    key = _mask_key()
    return apply_mask(payload, key, head + key)


_keys = b""
_keys_used = 0


def _mask_key() -> bytes:
    """A fresh masking key from the OS's entropy source (RFC 6455 10.3), 4 bytes of
    a pool drawn 1024 keys at a time: one getrandom() call per 1024 frames."""
    global _keys, _keys_used
    if _keys_used >= len(_keys):
        _keys, _keys_used = os.urandom(4096), 0
    _keys_used += 4
    return _keys[_keys_used - 4 : _keys_used]


def close_frame(code: int, reason: str | None, *, mask: bool) -> bytes:
    """A Close frame; code 1005 means "no code" (an empty payload).  Long reasons are cut at 123 bytes."""
    if code == 1005:
        return frame(OP_CLOSE, b"", mask=mask)
    data = (reason or "").encode("utf-8")
    if len(data) > 123:
        data = data[:123].decode("utf-8", "ignore").encode("utf-8")
    return frame(OP_CLOSE, _SHORT.pack(code) + data, mask=mask)
