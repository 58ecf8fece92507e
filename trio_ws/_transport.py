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
- **the direct path for TLS 1.3.**  Over a ``trio.SSLStream`` on such a
  socket, once the opening handshake is over (``go_direct()``, called where
  no other task can be using the stream), reads and writes drive the
  stream's own ``ssl.SSLObject`` and memory BIOs over the descriptor, as
  ``SSLStream`` itself does, without its general machinery: a conflict
  detector per call, a retry loop written for renegotiation, a lock per
  write and per transport read, and ``SocketStream`` under it.  TLS 1.3
  only: it has no renegotiation, so a write never needs a read, and the
  reading task alone feeds the incoming BIO.  Records that reading produces
  (a key update's answer) go out under a lock shared with the writers, so
  that records leave in the order OpenSSL made them.  The stream object
  stays what the application sees (``getpeercert()``, ALPN) and what closes
  the connection.  Where the stream is not exactly that (another trio
  without these attributes, TLS 1.2, a handshake still under way), the
  general path stays.
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
import ssl
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
# Over TLS, the socket read: at least a full record (16 KiB of plaintext and its overhead).
_TLS_RECORD = 2**14  # the most plaintext one TLS record holds
_TLS_SOCKET_READ = _TLS_RECORD + 512


def describe(exc: BaseException) -> str:
    """A short text for why a transport failed: the OS or TLS error behind trio's wrapper."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _TLSLink:
    """What the TLS direct path drives: the pieces of one ``trio.SSLStream`` after its handshake."""

    __slots__ = ("eof_is_ragged_ok", "incoming", "lock", "obj", "outgoing", "sock")

    def __init__(
        self,
        obj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        sock: trio.socket.SocketType,
        eof_is_ragged_ok: bool,
    ) -> None:
        self.obj = obj
        self.incoming = incoming  # ciphertext read, for obj to decrypt
        self.outgoing = outgoing  # ciphertext obj made, to write
        self.sock = sock
        # Held by whoever moves ciphertext from ``outgoing`` to the socket.
        self.lock = trio.Lock()
        # The stream's https_compatible: an EOF without close_notify is an EOF, not an error.
        self.eof_is_ragged_ok = eof_is_ragged_ok


def _tls_link(stream: trio.SSLStream[trio.SocketStream]) -> _TLSLink | None:
    """The direct path's view of ``stream``, or None where the general path must stay.

    This reads ``SSLStream``'s private attributes: checked one by one, and
    any surprise (another trio) keeps the general path, which is always right.
    """
    inner = stream.transport_stream
    if type(inner) is not trio.SocketStream:
        return None
    try:
        obj = stream._ssl_object
        incoming = stream._incoming
        outgoing = stream._outgoing
        state = stream._state
        busy = stream._inner_send_lock.locked() or stream._inner_recv_lock.locked()
        delayed = stream._delayed_outgoing
        ragged_ok = stream._https_compatible
    except AttributeError:  # pragma: no cover - another trio
        return None
    if not (
        isinstance(obj, ssl.SSLObject)
        and isinstance(incoming, ssl.MemoryBIO)
        and isinstance(outgoing, ssl.MemoryBIO)
        and getattr(state, "name", None) == "OK"
        and not busy
        and not delayed
        and not outgoing.pending
        and obj.version() == "TLSv1.3"  # (None until the handshake is over)
    ):
        return None
    return _TLSLink(obj, incoming, outgoing, inner.socket, bool(ragged_ok))


def _descriptor(sock: trio.socket.SocketType) -> int:
    """The socket's descriptor, asked for fresh each time (see the module's docstring).

    :raises trio.ClosedResourceError: the socket was closed.
    """
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the socket was closed")
    return fd


def _is_eof(exc: BaseException) -> bool:
    """An EOF without close_notify, as OpenSSL reports it."""
    return isinstance(exc, ssl.SSLEOFError) or "UNEXPECTED_EOF_WHILE_READING" in str(exc)


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
        "_tls",
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
        self._tls: _TLSLink | None = None  # the TLS direct path, from go_direct() on
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
        data: bytes | bytearray
        if self._tls is not None:
            data = await self._receive_tls(self._tls, read_size or _DEFAULT_READ)
        elif self._sock is not None:
            # _read_socket()'s loop, written out: an idle connection's reader waits in it,
            # and awaiting a helper would keep one more coroutine frame (256 bytes) alive
            # for every idle connection.
            sock, wanted = self._sock, read_size or _DEFAULT_READ
            got = None if self._short or self._streak >= _YIELD_EVERY else self._read_now(sock, wanted)
            while got is None:
                self._streak = 0
                await trio.lowlevel.wait_readable(_descriptor(sock))
                got = self._read_now(sock, wanted)
            data = got
        else:
            data = await self.stream.receive_some(read_size)
        count = len(data)
        self.bytes_received += count
        if size is not None and exactly is None:
            if count == read_size and size < _MORE_WAITING_READ:
                self._size = _MORE_WAITING_READ
            elif size != self._base_size and count < size // 2:
                self._size = self._base_size
        return data

    async def _read_socket(self, sock: trio.socket.SocketType, wanted: int) -> bytes:
        """One read of the descriptor, of at most ``wanted`` bytes (``b""`` at EOF), waiting
        for data when there is none (the TLS path's; ``receive()`` has the same loop).

        A short read emptied the socket: wait first, rather than try a read
        that would fail.  After several reads in a row that found data, wait
        anyway (it yields).
        """
        data = None if self._short or self._streak >= _YIELD_EVERY else self._read_now(sock, wanted)
        while data is None:
            self._streak = 0
            await trio.lowlevel.wait_readable(_descriptor(sock))
            data = self._read_now(sock, wanted)
        return data

    def _read_now(self, sock: trio.socket.SocketType, wanted: int) -> bytes | None:
        """One read of at most ``wanted`` bytes (``b""`` at EOF), ``None`` if nothing is there."""
        fd = sock.fileno()  # (what _descriptor() does, written out: a call less on every read)
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            data = os.read(fd, wanted)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError from exc
        self._streak += 1
        self._short = len(data) < wanted
        return data

    async def _receive_tls(self, link: _TLSLink, size: int) -> bytes | bytearray:
        """At most ``size`` bytes of plaintext (``b""`` at EOF): what is decrypted, or one socket read's.

        One ``SSLObject.read()`` gives at most one record (16 KiB); a larger
        read takes every record already here, as a socket read takes every
        byte that arrived, into one buffer (``read(n)`` would allocate ``n``
        bytes for each record).  The socket is read only when nothing is left.
        """
        obj, incoming = link.obj, link.incoming
        buffer = bytearray(size) if size > _TLS_RECORD else None
        view = None if buffer is None else memoryview(buffer)
        count = 0
        try:
            while True:
                try:
                    if view is None:
                        data: bytes | bytearray = obj.read(size)
                        break
                    # (With a buffer, read() returns a count; typeshed says bytes.)
                    got: int = obj.read(size - count, view[count:])  # type: ignore[assignment]
                    count += got
                    if not got or count == size or not (incoming.pending or obj.pending()):
                        break
                    continue
                except ssl.SSLWantReadError:
                    if count:
                        break
                except ssl.SSLError as exc:
                    if count:  # the next read meets it again
                        break
                    if link.eof_is_ragged_ok and _is_eof(exc):
                        return b""
                    raise trio.BrokenResourceError from exc
                received = await self._read_socket(link.sock, max(size, _TLS_SOCKET_READ))
                if received:
                    incoming.write(received)
                else:
                    incoming.write_eof()  # what comes next: close_notify's b"", or SSLEOFError
        finally:
            if view is not None:
                view.release()
        if buffer is not None:
            del buffer[count:]
            data = buffer
        if link.outgoing.pending and not link.lock.locked():
            # Reading made records to send (a key update's answer): send them now,
            # unless a writer is at it, who sends them after its own (_flush_tls).
            await self._flush_tls(link)
        return data

    # --- writing ---------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray) -> None:
        """Write all of ``data``; a schedule point after.  (The caller's cancel point comes
        before: it took the send lock.)

        A write that fails or is cancelled part way leaves the stream unusable
        (as ``trio.SSLStream`` says of itself): the connection aborts.
        """
        self.bytes_sent += len(data)
        if self._tls is not None:
            if data:  # (SSLObject.write(b"") would mean something else)
                try:
                    self._tls.obj.write(data)
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError from exc
                await self._flush_tls(self._tls)
        elif self._sock is not None:
            await self._write_socket(self._sock, data)
        else:
            await self.stream.send_all(data)
            return
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_socket(self, sock: trio.socket.SocketType, data: bytes | bytearray) -> None:
        """Write all of ``data`` to the descriptor, waiting while the socket is full."""
        count = len(data)
        view = memoryview(data)
        sent = 0
        while True:
            fd = _descriptor(sock)
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError from exc
            if sent >= count:
                break

    async def _flush_tls(self, link: _TLSLink) -> None:
        """Write the ciphertext waiting in the outgoing BIO, until none is left.

        Whoever holds the lock writes what the others added meanwhile, in order.
        """
        lock = link.lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            outgoing = link.outgoing
            while outgoing.pending:
                await self._write_socket(link.sock, outgoing.read())
        finally:
            lock.release()

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

    def go_direct(self) -> None:
        """The opening handshake is over and no other task is using the stream: over
        TLS 1.3, take the direct path from here on (see the module's docstring)."""
        if self._tls is None and type(self.stream) is trio.SSLStream and sys.platform != "win32":
            self._tls = _tls_link(self.stream)

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
