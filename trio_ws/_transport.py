"""The transport: bytes to and from one trio stream, and how it ends.

This is the only module that touches the stream.  It holds the one copy of

- **the fast path for plain TCP.**  For an exact ``trio.SocketStream`` (not
  TLS, not a subclass, not on Windows) the socket's descriptor is read and
  written directly.  ``SocketStream.receive_some()`` makes every read that
  finds data a schedule point, and tries a read before it waits even when
  the last read emptied the socket: on the path of a small message that is
  one more trip through trio's run loop and one more system call between
  the bytes' arrival and the application's answer.  Here a read waits first
  after a short read, and waits (a schedule point) after 8 reads in a row
  that found data anyway, so that a peer that keeps the socket full cannot
  starve other tasks.  A write ends with the same cancel-shielded schedule
  point ``send_all()`` has.  The descriptor is asked of the socket before
  every call, never cached: whoever owns a wrapped stream may close it
  under us, and the number could be reused.
- **the read sizes.**  ``receive_buffer_size`` bytes per read, 64 KiB after
  a read that filled the buffer (more is waiting), and inside a large frame
  the rest of the frame at once (at most 1 MiB).
- **the lingering close.**  Closing a socket with unread input makes the
  kernel send a reset, and a reset can destroy what we wrote last (an HTTP
  response, a Close frame) before the peer reads it.  So where the peer
  should see our last bytes, we send FIN (where the stream can) and drop
  what still comes until the peer closes, for a bounded time.
- **the addresses**, taken when the socket closes (a closed socket no longer
  knows them) and made into ``Endpoint`` objects only when asked for.

Errors are trio's: ``BrokenResourceError`` and ``ClosedResourceError`` from
every read and write; the connection decides what they mean.
"""

from __future__ import annotations

import logging
import os
import sys

import trio

from ._endpoint import Endpoint, TakenAddress, stream_endpoint

__all__ = ["Transport", "describe"]

logger = logging.getLogger("trio_ws")

_MAX_READ = 2**20  # the largest single read, inside a large frame
_MORE_WAITING_READ = 2**16  # the read size after a read that filled receive_buffer_size
_DEFAULT_READ = 2**16  # the read size when receive_buffer_size is None (trio's default)
_YIELD_EVERY = 8  # direct reads in a row that found data before a read waits anyway
_DRAIN_READ = 2**16


def describe(exc: BaseException) -> str:
    """A short text for why a transport failed: the OS or TLS error behind trio's wrapper."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Transport:
    """One stream: reads sized for WebSocket frames, writes, and a close that lingers if asked."""

    __slots__ = (
        "_base_size",
        "_local",
        "_remote",
        "_short",
        "_size",
        "_sock",
        "_streak",
        "bytes_received",
        "bytes_sent",
        "closed",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, receive_buffer_size: int | None) -> None:
        self.stream = stream
        # The socket under a plain trio.SocketStream, read and written directly.
        self._sock = stream.socket if type(stream) is trio.SocketStream and sys.platform != "win32" else None
        self._base_size = receive_buffer_size  # None: trio's default
        self._size = receive_buffer_size  # the size of the next read, grown after full reads
        self._short = False  # the last direct read got less than it asked for: wait first
        self._streak = 0  # direct reads since the last wait
        self.closed = False
        self.bytes_sent = 0  # (statistics)
        self.bytes_received = 0
        # Made when first asked for; taken (not yet made) when the socket closes.
        self._local: Endpoint | str | TakenAddress | None = None
        self._remote: Endpoint | str | TakenAddress | None = None

    @property
    def secure(self) -> bool:
        return isinstance(self.stream, trio.SSLStream)

    def endpoint(self, *, local: bool) -> Endpoint | str:
        """The local or remote :class:`Endpoint` (or the stream's ``repr()`` without one)."""
        known = self._local if local else self._remote
        if known is None or isinstance(known, TakenAddress):
            known = stream_endpoint(self.stream, local=local, taken=known)
            if local:
                self._local = known
            else:
                self._remote = known
        return known

    # --- reading ---------------------------------------------------------------------------

    async def receive(self, wants: int = 0, *, exactly: int | None = None) -> bytes | bytearray:
        """The next bytes for the frame reader (``b""`` at EOF).

        ``wants``: how much the frame under way still needs; a read then
        asks for that much at once (at most 1 MiB).  ``exactly``: one read of
        at most that many bytes, without the sizing (the opening handshake).
        """
        size = self._size
        if exactly is not None:
            read_size: int | None = exactly
            self._short = False
        else:
            read_size = min(wants, _MAX_READ) if size is not None and wants > size else size
        sock = self._sock
        if sock is None:
            data = await self.stream.receive_some(read_size)
        else:
            # A short read emptied the socket: wait first, rather than try a
            # read that would fail.  After several reads in a row that found
            # data, wait anyway (it yields).
            wanted = read_size or _DEFAULT_READ
            wait = self._short or self._streak >= _YIELD_EVERY
            while True:
                fd = sock.fileno()  # fresh each time (see the module's docstring)
                if fd < 0:
                    raise trio.ClosedResourceError("the socket was closed")
                if wait:
                    self._streak = 0
                    wait = False
                    await trio.lowlevel.wait_readable(fd)
                    continue
                try:
                    data = os.read(fd, wanted)
                    break
                except BlockingIOError:
                    wait = True
                except OSError as exc:
                    raise trio.BrokenResourceError from exc
        count = len(data)
        self.bytes_received += count
        if sock is not None:
            self._streak += 1
            self._short = count < wanted
        if size is not None and exactly is None:
            if count == read_size and size < _MORE_WAITING_READ:
                self._size = _MORE_WAITING_READ
            elif size != self._base_size and count < size // 2:
                self._size = self._base_size
        return data

    # --- writing ---------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray) -> None:
        """Write all of ``data``; a schedule point after.  (The caller's cancel point comes
        before: it took the send lock.)"""
        count = len(data)
        self.bytes_sent += count
        sock = self._sock
        if sock is None:
            await self.stream.send_all(data)
            return
        view = memoryview(data)
        sent = 0
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError from exc
            if sent >= count:
                break
        await trio.lowlevel.cancel_shielded_checkpoint()

    def try_send(self, data: bytes) -> int:
        """Write what the socket takes now, without waiting; how many bytes that was.

        Plain TCP only (0 for any other stream, and after an error, which the next
        ``send_all()`` meets): a broadcast hands a message to thousands of connections
        and may wait on none of them.
        """
        sock = self._sock
        if sock is None or self.closed:
            return 0
        fd = sock.fileno()
        if fd < 0:
            return 0
        try:
            sent = os.write(fd, data)
        except OSError:  # BlockingIOError among them
            return 0
        self.bytes_sent += sent
        return sent

    async def start_tls(self) -> None:
        """The TLS handshake, for a client's ``SSLStream`` (nothing for other streams)."""
        if isinstance(self.stream, trio.SSLStream):
            await self.stream.do_handshake()

    # --- ending ----------------------------------------------------------------------------

    async def send_eof(self) -> bool:
        """Send FIN where the stream can (plain TCP); ``False`` where it cannot (TLS) or failed.

        The caller holds the connection's send lock: no frame may be half
        written when the write side closes.
        """
        stream = self.stream
        if self.closed or not isinstance(stream, trio.abc.HalfCloseableStream):
            return False
        try:
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def drain(self, grace: float) -> None:
        """Drop what the peer still sends until it closes, at most ``grace`` seconds.

        The second half of a lingering close (see the module's docstring);
        only the task that reads may call it.
        """
        if self.closed:
            return
        with trio.move_on_after(grace):
            try:
                while await self.receive(exactly=_DRAIN_READ):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def aclose(self) -> None:
        """Close the stream, forcefully and shielded from cancellation; idempotent.

        This runs on cleanup paths, often cancelled ones, and must neither
        block nor raise ``Cancelled``.
        """
        if self.closed:
            return
        self.closed = True
        # Keep the addresses: a closed socket no longer knows them.
        if self._local is None:
            self._local = TakenAddress(self.stream, local=True)
        if self._remote is None:
            self._remote = TakenAddress(self.stream, local=False)
        if self._sock is not None:
            self._sock.close()  # all that SocketStream.aclose() does, less its checkpoint
            return
        with trio.CancelScope(shield=True):
            try:
                await trio.aclose_forcefully(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.debug("error while closing the transport %r: %r", self.stream, exc)
