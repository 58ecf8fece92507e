"""One direction of permessage-deflate: its zlib object, made when a message needs it,
dropped when the direction goes idle, and the bytes that let it be made again.

With context takeover (RFC 7692 7.2.3.4), a compressed message may refer back into the
messages before it, up to the window of the side that compresses.  zlib keeps that
window inside its objects, together with much more: a compressor with a window of 2**w
bytes and memory level m holds about 2**(w+2) + 2**(m+9) bytes plus 6 KiB of state, a
decompressor 2**w bytes plus 7 KiB.  What the other side depends on, though, is only the
last 2**w bytes of the messages themselves.  So each direction keeps those bytes (its
*history*), and makes its zlib object from them when a message needs one: a compressor
given the history as a preset dictionary (deflateSetDictionary) refers into exactly the
bytes that the peer's decompressor has in its window, and a decompressor given it
resolves the peer's references as the one it replaces would have.  An idle direction
holds its history, as many bytes as went through it and at most 2**w, instead of zlib's
objects; without context takeover, nothing at all.

Making a compressor again costs more than keeping one (its hash table is cleared, and
the history hashed into it: about 10 microseconds at a 4 KiB window, see
docs/compression.md), so a busy direction keeps its object.  After a message, the
object is dropped unless the previous message of that direction ended less than
``IDLE`` seconds before.  An object kept that way is dropped by a sweep once it was
unused for ``IDLE`` seconds (at most twice that): a direction that keeps its object is put
at the end of a list (one per thread, as connections never change threads), and whenever a
message ends anywhere, the front of the list is looked at: dropped if unused for ``IDLE``,
put at the end again if used since (so that a busy direction costs no list work for each
of its messages).  A process in which nothing at all happens does not sweep; its objects
are those of the connections that were busy last.

None of this is shared between connections: a history and an object belong to one
direction of one connection, as RFC 7692's contexts do.
"""

from __future__ import annotations

import threading
import time
import weakref
import zlib
from collections import OrderedDict

__all__ = ["IDLE", "Compressor", "Decompressor", "looks_incompressible"]

#: Seconds: a direction that ends a message within this long of its previous one keeps
#: its zlib object, and a kept object unused for this long is dropped (see above).
IDLE = 1.0

_TAIL = b"\x00\x00\xff\xff"  # what RFC 7692 7.2.1 strips from each compressed message
_SAMPLE = 32  # bytes looked at, at the start and in the middle of a message
# Distinct byte values in the two samples (64 bytes) above which a message is taken for
# incompressible: random bytes give 57 on average (standard deviation about 2), text
# and JSON 20 to 40, base64 about 41 (docs/compression.md, "Skipping").
_DISTINCT = 50


def looks_incompressible(data: bytes) -> bool:
    """A cheap guess (about two microseconds) that deflate would not make ``data`` smaller:
    its first bytes and some from its middle take almost as many distinct values as
    random bytes do.  Messages too short to sample, or all ASCII, are never guessed
    incompressible."""
    size = len(data)
    if size < 4 * _SAMPLE or data.isascii():
        # (ASCII, such as JSON: at most 7 bits a byte, which deflate gains on even when
        # they look random; and isascii() is far quicker than sampling)
        return False
    middle = size // 2
    return len(set(data[:_SAMPLE] + data[middle : middle + _SAMPLE])) > _DISTINCT


class _Sweep(threading.local):
    """The directions that kept their zlib object, in the order they were listed."""

    def __init__(self) -> None:
        self.kept: OrderedDict[int, weakref.ref[_Direction]] = OrderedDict()


_SWEEP = _Sweep()
_UNLISTED = -1.0  # a direction's ``_listed`` while it is not in the sweep's list


class _Direction:
    """What compressing and decompressing share: the history, the object's lifetime."""

    __slots__ = ("__weakref__", "_history", "_last", "_listed", "_open", "_reset", "_window", "_zobj")

    def __init__(self, bits: int, reset: bool) -> None:
        self._window = 1 << bits  # how many bytes back the compressing side may refer
        self._reset = reset  # no context takeover: nothing is kept between messages
        self._history: bytearray | None = None  # (None with ``reset``, or before any message)
        self._zobj: zlib._Compress | zlib._Decompress | None = None
        self._last = -IDLE  # when the previous message ended (time.monotonic())
        self._listed = _UNLISTED  # when it was put at the end of the sweep's list
        self._open = False  # a message is under way: the object must stay

    @property
    def live(self) -> bool:
        """The zlib object exists now."""
        return self._zobj is not None

    @property
    def history_size(self) -> int:
        """How many bytes of history are kept."""
        return len(self._history) if self._history is not None else 0

    def _remember(self, data: bytes) -> None:
        """``data`` went through this direction (a message, or a piece of one)."""
        if self._reset or not data:
            return
        history = self._history
        window = self._window
        if history is None:
            self._history = bytearray(data[-window:])
        else:
            history += data
            if len(history) > window:
                # Deleting from the front of a bytearray moves a pointer, not the bytes.
                del history[:-window]

    def _dictionary(self) -> bytes:
        return bytes(self._history) if self._history else b""

    def _ended(self) -> None:
        """A message ended: keep the object if this direction is busy, else drop it."""
        self._open = False
        now = time.monotonic()
        busy = now - self._last < IDLE and not self._reset
        self._last = now
        kept = _SWEEP.kept
        if busy and self._zobj is not None:
            # A busy direction is listed once, not moved on every message: the sweep moves
            # it when it reaches the front (the cost of a message stays a few comparisons).
            if self._listed == _UNLISTED:
                self._listed = now
                key = id(self)
                kept[key] = weakref.ref(self)  # (may replace the entry of a dead direction...
                kept.move_to_end(key)  # ... that had the same id)
        else:
            self.release()
        if kept:
            _sweep(kept, now)

    def release(self) -> None:
        """Drop the zlib object (unless a message is under way); the history stays."""
        if not self._open:
            self._zobj = None
            if self._listed != _UNLISTED:
                self._listed = _UNLISTED
                _SWEEP.kept.pop(id(self), None)


def _sweep(kept: OrderedDict[int, weakref.ref[_Direction]], now: float) -> None:
    """Drop the objects unused for ``IDLE`` seconds.  The list is in the order directions
    were put at its end (``_listed``), and each was last used at or after that: so once the
    front was listed less than ``IDLE`` ago, no direction in the list is idle that long.  A
    front direction used since it was listed goes to the end again.  So an object goes
    between ``IDLE`` and twice ``IDLE`` after its last use."""
    while kept:
        key, ref = next(iter(kept.items()))
        direction = ref()
        if direction is None:  # (gone with its connection)
            del kept[key]
        elif now - direction._listed < IDLE:
            return
        elif now - direction._last >= IDLE and not direction._open:
            direction.release()
        else:  # used since it was listed, or in the middle of a message
            direction._listed = now
            kept.move_to_end(key)


class Compressor(_Direction):
    """The sending direction: whole messages, or the pieces of a message sent in fragments."""

    __slots__ = ("_bits", "_level", "_mem_level")

    def __init__(self, bits: int, reset: bool, level: int, mem_level: int) -> None:
        super().__init__(bits, reset)
        self._bits = bits
        self._level = level
        self._mem_level = mem_level

    def _compressor(self) -> zlib._Compress:
        zobj = self._zobj
        if zobj is None:
            dictionary = self._dictionary()
            if dictionary:
                zobj = zlib.compressobj(
                    self._level, zlib.DEFLATED, -self._bits, self._mem_level, zlib.Z_DEFAULT_STRATEGY, dictionary
                )
            else:
                zobj = zlib.compressobj(self._level, zlib.DEFLATED, -self._bits, self._mem_level)
            self._zobj = zobj
        return zobj  # type: ignore[return-value]

    def message(self, data: bytes) -> bytes | None:
        """The compressed payload of a whole message, or ``None``: send it uncompressed,
        as it would not get smaller (RFC 7692 6: each message chooses).

        A message sent uncompressed never reaches the peer's decompressor, so it must not
        be in our context either.  A guess before compressing leaves the compressor
        untouched.  When the guess was wrong (the output is not smaller), the compressor
        has taken the message in: it is dropped, and the next message makes a new one from
        the history, which the message never entered.
        """
        if not data or looks_incompressible(data):
            return None  # (empty: no bytes beat the one byte of an empty compressed message)
        self._open = True
        zobj = self._compressor()
        out = zobj.compress(data) + zobj.flush(zlib.Z_SYNC_FLUSH)
        if out.endswith(_TAIL):
            out = out[:-4]
        if len(out) >= len(data):
            self._open = False
            self.release()
            return None
        self._remember(data)
        self._ended()
        return out

    def piece(self, data: bytes, last: bool) -> bytes:
        """The compressed payload of one piece of a message sent in fragments: every piece is
        flushed, so that it reaches the peer at once (a stream is only useful if it flows);
        the last drops its flush's tail (RFC 7692 7.2.1).  Such a message is compressed
        whatever it holds: its first frame said so before the rest was known."""
        self._open = True
        zobj = self._compressor()
        out = zobj.compress(data) + zobj.flush(zlib.Z_SYNC_FLUSH)
        self._remember(data)
        if last:
            if out.endswith(_TAIL):
                out = out[:-4]
            self._ended()
        return out


class Decompressor(_Direction):
    """The receiving direction.  ``PerMessageDeflate`` inflates with ``start()``'s object
    (bounding the output itself), reports what came out, and ends each message."""

    __slots__ = ()

    def start(self) -> zlib._Decompress:
        """The object to inflate the message under way with (made if there is none)."""
        self._open = True
        zobj = self._zobj
        if zobj is None:
            # The window is the peer's: it may refer as far back as it was allowed to.
            bits = self._window.bit_length() - 1
            dictionary = self._dictionary()
            zobj = zlib.decompressobj(-bits, dictionary) if dictionary else zlib.decompressobj(-bits)
            self._zobj = zobj
        return zobj  # type: ignore[return-value]

    def output(self, data: bytes) -> None:
        """Bytes inflated from the message under way (they enter the history)."""
        self._remember(data)

    def end(self) -> None:
        """The message ended (completely, or dropped after an error)."""
        if self._open:
            self._ended()
