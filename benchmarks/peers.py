"""The processes that benchmarks/bench.py runs: echo servers and load-generating clients.

    python peers.py server IMPL --port P            serve until stdin closes
    python peers.py client IMPL WORKLOAD --port P   run one workload, print one JSON line
    ... --tls DIR                                   the same over TLS 1.3 (DIR: ca.pem, cert.pem, key.pem)

Server IMPLs: raw_trio, trio_ws, trio_websocket, websockets_trio (the servers under
test), floor_trio (the least a WebSocket over trio can do: the protocol's own cost),
raw_asyncio, websockets_asyncio, and the blocking raw_sync and fast_ws (fast references
for the client role); picows and raw_uvloop (uvloop, compiled: the other kind of fixed
server, bench.py --peer picows), /echo only.
Client IMPLs: the same names; raw_asyncio and websockets_asyncio (C-accelerated
masking) are the fast references for the server role.

Every WebSocket server serves three paths: /echo echoes; /sink receives what a
/trigger asks for: a trigger message "N SIZE" makes the server send N messages
of SIZE bytes to every sink, then answer "done".  The raw servers do the same
over 4-byte length-prefixed frames, the first frame naming the role.

trio_ws and the raw trio peers run in the project's venv; the others in the
benchmark peers venv (bench.py makes it).  Nothing here is imported by trio_ws.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from statistics import median
from typing import Any

MAX_SIZE = 2**24
HEADER = struct.Struct("!I")

# --- TLS (bench.py --tls) -----------------------------------------------------------------------
#
# The orchestrator writes a throw-away CA and a server certificate for
# 127.0.0.1 to a directory and passes it to every process, which builds its
# own contexts from the files: the peers' venv needs no trustme.  TLS 1.3
# only, so that every implementation pays for the same protocol.

TLS_DIR: str | None = None


@functools.cache
def server_ssl() -> Any:
    """The server's context, or None without --tls."""
    if TLS_DIR is None:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(os.path.join(TLS_DIR, "cert.pem"), os.path.join(TLS_DIR, "key.pem"))
    return context


@functools.cache
def client_ssl() -> Any:
    """The client's context (trusting the throw-away CA), or None without --tls: one per
    process, as an application keeps one (making it takes about 0.6 ms here, a fifth of a
    whole TLS handshake cycle, which a context per connection added to every implementation)."""
    if TLS_DIR is None:
        return None
    import ssl

    context = ssl.create_default_context(cafile=os.path.join(TLS_DIR, "ca.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def ws_scheme() -> str:
    return "ws" if TLS_DIR is None else "wss"


# --- shared workload logic, written once for any framework ----------------------------------


def ws_frame(data: bytes, opcode: int, client: bool, apply_mask: Callable[[bytes, bytes], bytes]) -> bytes:
    """One unfragmented WebSocket frame; a client's is masked with a fresh key."""
    length = len(data)
    mask_bit = 0x80 if client else 0
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, length)
    if client:
        key = os.urandom(4)
        return head + key + apply_mask(data, key)
    return head + data


class Conn:
    """What a workload needs of a connection: send, receive, close."""

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def recv(self) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


Spawn = Callable[[list[Callable[[], Awaitable[None]]]], Awaitable[None]]  # run coroutines concurrently


async def latency(conn: Conn, spawn: Spawn, seconds: float) -> dict[str, Any]:
    payload = b"x" * 32
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        await conn.send(payload)
        await conn.recv()
        samples.append(time.perf_counter() - start)
    return {"p50_us": median(samples) * 1e6, "count": len(samples)}


async def throughput(conn: Conn, spawn: Spawn, seconds: float, size: int, window: int) -> dict[str, Any]:
    """Keep ``window`` messages in flight; count echoes."""
    payload = os.urandom(size)
    sent = received = 0
    stop = time.perf_counter() + seconds
    done_sending = False
    credits: list[int] = [window]
    wake: list[Callable[[], None]] = []

    sent_wake: list[Callable[[], None]] = []

    async def sender() -> None:
        nonlocal sent, done_sending
        while time.perf_counter() < stop:
            while credits[0] == 0:
                await wait_credit()
            credits[0] -= 1
            await conn.send(payload)
            sent += 1
            for callback in sent_wake[:]:
                callback()
        done_sending = True
        for callback in sent_wake[:]:
            callback()

    async def receiver() -> None:
        nonlocal received
        while not (done_sending and received >= sent):
            if received >= sent:  # nothing in flight: wait for a send (or the end)
                await wait_sent()
                continue
            data = await conn.recv()
            assert len(data) == size
            received += 1
            credits[0] += 1
            for callback in wake[:]:
                callback()

    wait_credit = _credit_waiter(wake)
    wait_sent = _credit_waiter(sent_wake)
    start, cpu = time.perf_counter(), time.process_time()
    await spawn([sender, receiver])
    elapsed = time.perf_counter() - start
    cpu_us = (time.process_time() - cpu) / max(received, 1) * 1e6  # the client's CPU per echo: less noisy
    return {
        "msgs_per_s": received / elapsed,
        "mb_per_s": received * size / elapsed / 1e6,
        "count": received,
        "cpu_us": cpu_us,
    }


def _credit_waiter(wake: list[Callable[[], None]]) -> Callable[[], Awaitable[None]]:
    """An event usable from asyncio or trio, whichever is running."""
    if "trio" in sys.modules and _running_trio():
        import trio

        async def wait_trio() -> None:
            event = trio.Event()
            wake.append(event.set)
            await event.wait()
            wake.remove(event.set)

        return wait_trio
    import asyncio

    async def wait_asyncio() -> None:
        event = asyncio.Event()
        wake.append(event.set)
        await event.wait()
        wake.remove(event.set)

    return wait_asyncio


def _running_trio() -> bool:
    try:
        import trio

        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


# --- trio clients and servers -------------------------------------------------------------


def trio_spawn() -> Spawn:
    import trio

    async def spawn(functions: list[Callable[[], Awaitable[None]]]) -> None:
        async with trio.open_nursery() as nursery:
            for function in functions:
                nursery.start_soon(function)

    return spawn


class RawTrioConn(Conn):
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(HEADER.pack(len(data)) + data)

    async def recv(self) -> bytes:
        buffer = self.buffer
        while True:
            need = 4 + HEADER.unpack_from(buffer)[0] if len(buffer) >= 4 else 4
            if len(buffer) >= need:
                with memoryview(buffer) as view:
                    data = view[4:need].tobytes()  # one copy
                del buffer[:need]
                return data
            # The rest of a large frame in one read (at most 1 MiB), as trio_ws reads it.
            chunk = await self.stream.receive_some(max(65536, min(need - len(buffer), 2**20)))
            if not chunk:
                raise EOFError
            buffer += chunk

    async def close(self) -> None:
        await self.stream.aclose()


class TrioWsConn(Conn):
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send_message(data)

    async def recv(self) -> bytes:
        return await self.ws.get_message()  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.ws.aclose()


class WebsocketsConn(Conn):
    """websockets' connection, asyncio or trio flavour."""

    def __init__(self, ws: Any, manager: Any = None) -> None:
        self.ws = ws
        self.manager = manager

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    async def recv(self) -> bytes:
        return await self.ws.recv()  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.__aexit__(None, None, None)
        else:
            await self.ws.close()


class FloorWsConn(Conn):
    """The least a WebSocket over trio can do: a floor for the libraries, not a library.

    One task per connection, no checks beyond the frame layout, no
    fragments, no UTF-8 validation, C masking (trio_ws's own apply_mask).
    What it costs more than raw trio is the protocol's own price: the
    handshake's and the closing handshake's round trips, frame headers,
    masking.  ``bench.py --floor`` measures it next to the others.
    """

    REQUEST = (
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    def __init__(self, stream: Any, client: bool) -> None:
        from trio_ws._speedups import apply_mask

        self.stream, self.client, self.apply_mask = stream, client, apply_mask
        self.buffer = bytearray()

    async def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head

    async def open_client(self, path: str) -> None:
        import base64

        key = base64.b64encode(os.urandom(16))
        await self.stream.send_all(self.REQUEST % (path.encode(), key))
        if not (await self.read_head()).startswith(b"HTTP/1.1 101"):
            raise RuntimeError("handshake refused")

    async def open_server(self) -> str:
        import base64
        import hashlib

        head = await self.read_head()
        lines = head.split(b"\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        await self.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        return head.split(b" ", 2)[1].decode()

    async def send(self, data: bytes, opcode: int = 0x2) -> None:
        await self.stream.send_all(ws_frame(data, opcode, self.client, self.apply_mask))

    async def recv(self) -> bytes:
        """The next data message; answers a Close (and raises EOFError)."""
        buffer = self.buffer
        while True:
            if len(buffer) >= 2:
                length, offset = buffer[1] & 0x7F, 2
                if length == 126 and len(buffer) >= 4:
                    (length,), offset = struct.unpack_from("!H", buffer, 2), 4
                elif length == 127 and len(buffer) >= 10:
                    (length,), offset = struct.unpack_from("!Q", buffer, 2), 10
                key_end = offset + (4 if buffer[1] & 0x80 else 0)
                if (length < 126 or offset > 2) and len(buffer) >= key_end + length:
                    payload = bytes(buffer[key_end : key_end + length])
                    if key_end > offset:
                        payload = self.apply_mask(payload, bytes(buffer[offset:key_end]))
                    opcode = buffer[0] & 0x0F
                    del buffer[: key_end + length]
                    if opcode == 0x8:
                        if not self.client:  # answer, and close first (RFC 6455 7.1.1)
                            await self.send(payload[:2], 0x8)
                            await self.stream.aclose()
                        raise EOFError
                    return payload
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError
            buffer += chunk

    async def close(self) -> None:
        import trio

        try:
            await self.send(struct.pack("!H", 1000), 0x8)
            while True:
                await self.recv()
            # Over TLS a server may close without close_notify: as EOF, here.
        except (EOFError, OSError, trio.BrokenResourceError):
            pass
        try:
            while await self.stream.receive_some(65536):  # the server closes TCP first
                pass
        except trio.BrokenResourceError:
            pass
        await self.stream.aclose()


async def trio_connect(impl: str, port: int, path: str) -> Conn:
    import trio

    context = client_ssl()
    if impl in ("raw_trio", "floor_trio"):
        stream: Any = await trio.open_tcp_stream("127.0.0.1", port)
        if context is not None:
            # Opened here, as trio.open_ssl_over_tcp_stream does: a TCP stream, then TLS over it.
            stream = trio.SSLStream(stream, context, server_hostname="127.0.0.1")
        if impl == "raw_trio":
            conn = RawTrioConn(stream)
            await conn.send(path.encode())
            return conn
        floor = FloorWsConn(stream, client=True)
        await floor.open_client(path)
        return floor
    use_ssl = False if context is None else context
    if impl == "trio_ws":
        import trio_ws

        ws = await trio_ws.connect_websocket(
            _NURSERY, "127.0.0.1", port, path, use_ssl=use_ssl, max_message_size=MAX_SIZE
        )
        return TrioWsConn(ws)
    if impl == "trio_websocket":
        import trio_websocket

        ws = await trio_websocket.connect_websocket(
            _NURSERY, "127.0.0.1", port, path, use_ssl=use_ssl, max_message_size=MAX_SIZE
        )
        return TrioWsConn(ws)
    if impl == "websockets_trio":
        from websockets.trio.client import connect

        manager = connect(
            f"{ws_scheme()}://127.0.0.1:{port}{path}",
            max_size=MAX_SIZE,
            compression=None,
            ping_interval=None,
            proxy=None,
            ssl=context,
        )
        return WebsocketsConn(await manager.__aenter__(), manager)
    raise SystemExit(f"no trio client {impl}")


_NURSERY: Any = None


async def trio_client(impl: str, workload: str, port: int, options: dict[str, Any]) -> dict[str, Any]:
    import trio

    global _NURSERY
    async with trio.open_nursery() as nursery:
        _NURSERY = nursery
        result = await run_workload(lambda path: trio_connect(impl, port, path), trio_spawn(), workload, options)
        nursery.cancel_scope.cancel()
    return result


async def trio_server(impl: str, port: int) -> None:
    import trio

    sinks: list[Any] = []

    async def until_stdin_closes() -> None:
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)

    if impl == "raw_trio":

        async def handle(stream: Any) -> None:
            conn = RawTrioConn(stream)
            try:
                role = await conn.recv()
                if role == b"/echo":
                    while True:
                        await conn.send(await conn.recv())
                elif role == b"/sink":
                    sinks.append(conn)
                    # Read until the client closes (it sends nothing else), as the
                    # WebSocket servers do: over TLS the client's close waits for an
                    # answer to its close_notify, which a task that never reads never gives.
                    await conn.recv()
                elif role == b"/trigger":
                    count, size = map(int, (await conn.recv()).split())
                    await _broadcast_trio(sinks, count, size)
                    await conn.send(b"done")
                    await conn.recv()
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                if conn in sinks:
                    sinks.remove(conn)

        async with trio.open_nursery() as nursery:
            await nursery.start(serve_trio_tcp, handle, port)
            _ready()
            await until_stdin_closes()
            nursery.cancel_scope.cancel()
        return

    if impl == "floor_trio":  # /echo only: bench.py measures no other workload with it

        async def floor_handle(stream: Any) -> None:
            conn = FloorWsConn(stream, client=False)
            try:
                await conn.open_server()
                while True:
                    await conn.send(await conn.recv())
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            await nursery.start(serve_trio_tcp, floor_handle, port)
            _ready()
            await until_stdin_closes()
            nursery.cancel_scope.cancel()
        return

    if impl in ("trio_ws", "trio_websocket"):
        module: Any = __import__(impl)

        async def handler(request: Any) -> None:
            ws = await request.accept()
            conn = TrioWsConn(ws)
            try:
                if request.path == "/echo":
                    while True:
                        await ws.send_message(await ws.get_message())
                elif request.path == "/sink":
                    sinks.append(conn)
                    await ws.get_message()  # until it closes
                elif request.path == "/trigger":
                    count, size = map(int, (await ws.get_message()).split())
                    await _broadcast_trio(sinks, count, size)
                    await ws.send_message("done")
                    await ws.get_message()
            except module.ConnectionClosed:
                pass
            finally:
                if conn in sinks:
                    sinks.remove(conn)

        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: module.serve_websocket(
                    handler, "127.0.0.1", port, server_ssl(), max_message_size=MAX_SIZE, task_status=task_status
                )
            )
            _ready()
            await until_stdin_closes()
            nursery.cancel_scope.cancel()
        return

    if impl == "websockets_trio":
        from websockets.exceptions import ConnectionClosed
        from websockets.trio.server import serve

        async def ws_handler(ws: Any) -> None:
            conn = WebsocketsConn(ws)
            path = ws.request.path
            try:
                if path == "/echo":
                    async for message in ws:
                        await ws.send(message)
                elif path == "/sink":
                    sinks.append(conn)
                    await ws.recv()
                elif path == "/trigger":
                    count, size = map(int, (await ws.recv()).split())
                    await _broadcast_trio(sinks, count, size)
                    await ws.send("done")
                    await ws.recv()
            except ConnectionClosed:
                pass
            finally:
                if conn in sinks:
                    sinks.remove(conn)

        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(
                    ws_handler,
                    port,
                    host="127.0.0.1",
                    max_size=MAX_SIZE,
                    compression=None,
                    ping_interval=None,
                    ssl=server_ssl(),
                    task_status=task_status,
                )
            )
            _ready()
            await until_stdin_closes()
            nursery.cancel_scope.cancel()
        return
    raise SystemExit(f"no trio server {impl}")


async def serve_trio_tcp(handler: Callable[[Any], Awaitable[None]], port: int, *, task_status: Any) -> None:
    """trio.serve_tcp, or trio.serve_ssl_over_tcp with --tls (TLS handshakes in the handler's task)."""
    import trio

    context = server_ssl()
    if context is None:
        await trio.serve_tcp(handler, port, task_status=task_status)
    else:
        await trio.serve_ssl_over_tcp(handler, port, context, task_status=task_status)


async def _broadcast_trio(sinks: list[Conn], count: int, size: int) -> None:
    import trio

    payload = os.urandom(size)
    for _ in range(count):
        async with trio.open_nursery() as nursery:
            for conn in list(sinks):
                nursery.start_soon(conn.send, payload)


# --- asyncio references (C-accelerated websockets) -------------------------------------------


def asyncio_spawn() -> Spawn:
    import asyncio

    async def spawn(functions: list[Callable[[], Awaitable[None]]]) -> None:
        await asyncio.gather(*(function() for function in functions))

    return spawn


class RawAsyncioConn(Conn):
    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(HEADER.pack(len(data)) + data)
        await self.writer.drain()

    async def recv(self) -> bytes:
        (size,) = HEADER.unpack(await self.reader.readexactly(4))
        return await self.reader.readexactly(size)  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def asyncio_connect(impl: str, port: int, path: str) -> Conn:
    import asyncio

    if impl == "raw_asyncio":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl())
        conn = RawAsyncioConn(reader, writer)
        await conn.send(path.encode())
        return conn
    if impl == "websockets_asyncio":
        from websockets.asyncio.client import connect

        ws = await connect(
            f"{ws_scheme()}://127.0.0.1:{port}{path}",
            max_size=MAX_SIZE,
            compression=None,
            ping_interval=None,
            proxy=None,
            ssl=client_ssl(),
        )
        return WebsocketsConn(ws)
    raise SystemExit(f"no asyncio client {impl}")


async def asyncio_client(impl: str, workload: str, port: int, options: dict[str, Any]) -> dict[str, Any]:
    return await run_workload(lambda path: asyncio_connect(impl, port, path), asyncio_spawn(), workload, options)


async def asyncio_server(impl: str, port: int) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    if impl == "raw_asyncio":

        async def handle(reader: Any, writer: Any) -> None:
            conn = RawAsyncioConn(reader, writer)
            try:
                await conn.recv()  # the role: the reference server only echoes
                while True:
                    await conn.send(await conn.recv())
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=server_ssl())
    elif impl == "websockets_asyncio":
        from websockets.asyncio.server import serve

        async def ws_handler(ws: Any) -> None:
            async for message in ws:
                await ws.send(message)

        server = await serve(
            ws_handler,
            "127.0.0.1",
            port,
            max_size=MAX_SIZE,
            compression=None,
            ping_interval=None,
            ssl=server_ssl(),
        )
    else:
        raise SystemExit(f"no asyncio server {impl}")
    _ready()
    await stdin_closed
    server.close()


# --- uvloop references: a compiled WebSocket server and its raw counterpart ----------------------
#
# ``bench.py --peer picows``: in the client role, the fixed server is picows
# (a Cython WebSocket, on uvloop) rather than the blocking fast_ws, and raw
# trio's is raw_uvloop, an asyncio Protocol on the same loop that echoes the
# same length-prefixed frames raw_sync does.  Both answer from data_received
# with one write per whole message and no task switch: what such a server
# does differently from a blocking one (its read sizes, how its echo is cut
# into writes) is then felt by every client, raw trio's too.


def uvloop_server(impl: str, port: int) -> None:
    import asyncio

    import uvloop

    class RawUvloopEcho(asyncio.BufferedProtocol):
        """The first length-prefixed frame names the role; every later one is echoed whole.

        Read into one buffer (as picows does), one copy per echo: uvloop
        keeps what a write could not send yet, so it must own its bytes.
        """

        def __init__(self) -> None:
            self.buffer = bytearray(2**18)
            self.end = 0  # bytes received into the buffer
            self.transport: Any = None
            self.role_seen = False

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def get_buffer(self, sizehint: int) -> memoryview:
            if len(self.buffer) - self.end < 2**16:  # a new buffer: the loop may still hold a view of the old
                bigger = bytearray(2 * len(self.buffer))
                bigger[: self.end] = memoryview(self.buffer)[: self.end]
                self.buffer = bigger
            return memoryview(self.buffer)[self.end :]

        def buffer_updated(self, nbytes: int) -> None:
            buffer, end, start = self.buffer, self.end + nbytes, 0
            while end - start >= 4:
                stop = start + 4 + HEADER.unpack_from(buffer, start)[0]
                if stop > end:
                    break
                if self.role_seen:
                    with memoryview(buffer) as view:
                        self.transport.write(view[start:stop].tobytes())  # the frame as it came
                self.role_seen = True
                start = stop
            if start:
                buffer[: end - start] = buffer[start:end]  # (the same length: no resize)
            self.end = end - start

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        if impl == "raw_uvloop":
            server = await loop.create_server(RawUvloopEcho, "127.0.0.1", port, ssl=server_ssl())
        else:
            import logging

            from picows import WSListener, WSMsgType, ws_create_server

            logging.getLogger("picows").setLevel(logging.ERROR)  # not a warning per full socket buffer

            class Echo(WSListener):  # type: ignore[misc]
                def on_ws_frame(self, transport: Any, frame: Any) -> None:
                    if frame.msg_type == WSMsgType.CLOSE:
                        transport.send_close(frame.get_close_code(), frame.get_close_message())
                        transport.disconnect()
                    elif frame.msg_type in (WSMsgType.BINARY, WSMsgType.TEXT):  # unfragmented: all clients here
                        transport.send(frame.msg_type, frame.get_payload_as_memoryview())

            server = await ws_create_server(
                lambda request: Echo(), "127.0.0.1", port, max_frame_size=MAX_SIZE, ssl=server_ssl()
            )
        _ready()
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    uvloop.run(serve())


# --- fast synchronous references: blocking sockets, C masking -------------------------------------
#
# The lowest-overhead peers Python offers: no event loop, one thread per
# direction, websockets' C apply_mask for masking.  They make the peer under
# test the bottleneck, so that its own cost shows.


def _recv_exactly(sock: Any, size: int, buffer: bytearray) -> bytes:
    while len(buffer) < size:
        chunk = sock.recv(max(65536, size - len(buffer)))
        if not chunk:
            raise EOFError
        buffer += chunk
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


class SyncRaw:
    def __init__(self, sock: Any) -> None:
        self.sock, self.buffer = sock, bytearray()

    def frame(self, data: bytes) -> bytes:
        return HEADER.pack(len(data)) + data

    def complete(self) -> bool:
        """Whether the buffer holds a whole message (recv() then needs no socket)."""
        return len(self.buffer) >= 4 and len(self.buffer) >= 4 + HEADER.unpack_from(self.buffer)[0]

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.frame(data))

    def recv(self) -> bytes:
        (size,) = HEADER.unpack(_recv_exactly(self.sock, 4, self.buffer))
        return _recv_exactly(self.sock, size, self.buffer)

    def close(self) -> None:
        self.sock.close()


class SyncWs:
    """A minimal WebSocket endpoint over a blocking socket: binary frames, no extensions."""

    def __init__(self, sock: Any, client: bool) -> None:
        from websockets.speedups import apply_mask

        self.sock, self.buffer, self.client, self.apply_mask = sock, bytearray(), client, apply_mask

    def frame(self, data: bytes) -> bytes:
        return ws_frame(data, 0x2, self.client, self.apply_mask)

    def complete(self) -> bool:
        """Whether the buffer holds a whole frame (recv() then needs no socket)."""
        buffer = self.buffer
        if len(buffer) < 2:
            return False
        length, offset = buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return False
            (length,), offset = struct.unpack_from("!H", buffer, 2), 4
        elif length == 127:
            if len(buffer) < 10:
                return False
            (length,), offset = struct.unpack_from("!Q", buffer, 2), 10
        return len(buffer) >= offset + (4 if buffer[1] & 0x80 else 0) + length

    def send(self, data: bytes, opcode: int = 0x2) -> None:
        self.sock.sendall(ws_frame(data, opcode, self.client, self.apply_mask))

    def recv(self) -> bytes:
        while True:
            first, second = _recv_exactly(self.sock, 2, self.buffer)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", _recv_exactly(self.sock, 2, self.buffer))
            elif length == 127:
                (length,) = struct.unpack("!Q", _recv_exactly(self.sock, 8, self.buffer))
            key = _recv_exactly(self.sock, 4, self.buffer) if second & 0x80 else None
            payload = _recv_exactly(self.sock, length, self.buffer)
            if key is not None:
                payload = self.apply_mask(payload, key)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise EOFError
            if opcode in (0x1, 0x2):  # unfragmented data: all our peers send it so
                return payload
            if opcode == 0x9:
                self.send(payload, 0xA)

    def close(self) -> None:
        try:
            self.send(struct.pack("!H", 1000), 0x8)
            while True:
                self.recv()
        except (EOFError, OSError):
            pass
        self.sock.close()


def sync_connect(impl: str, port: int, path: str) -> Any:
    import base64
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    context = client_ssl()
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")  # the handshake, blocking
    if impl == "raw_sync":
        conn: Any = SyncRaw(sock)
        conn.send(path.encode())
        return conn
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    conn = SyncWs(sock, client=True)
    while b"\r\n\r\n" not in conn.buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("no handshake response")
        conn.buffer += chunk
    head, _, rest = bytes(conn.buffer).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    conn.buffer = bytearray(rest)
    return conn


def sync_client(impl: str, workload: str, port: int, options: dict[str, Any]) -> dict[str, Any]:
    import threading

    seconds = float(options.get("seconds", 2.0))
    if workload == "latency":
        conn = sync_connect(impl, port, "/echo")
        payload, samples = b"x" * 32, []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            conn.send(payload)
            conn.recv()
            samples.append(time.perf_counter() - start)
        conn.close()
        return {"p50_us": median(samples) * 1e6, "count": len(samples)}
    if workload.startswith("throughput-") and TLS_DIR is not None:
        size = int(workload.split("-", 1)[1])
        return _tls_throughput(sync_connect(impl, port, "/echo"), size, 64 if size <= 4096 else 8, seconds)
    if workload.startswith("throughput-"):
        size = int(workload.split("-", 1)[1])
        window = threading.Semaphore(64 if size <= 4096 else 8)
        # One token per message sent, then one for the end: the receiver only
        # calls recv() when an echo is due.  (Checking "is the sender alive?"
        # raced: the sender could stop right after, and recv() then waited
        # for an echo that never comes.)
        pending = threading.Semaphore(0)
        conn = sync_connect(impl, port, "/echo")
        payload = os.urandom(size)
        sent = [0]
        finished = [False]
        stop = time.perf_counter() + seconds

        def sender() -> None:
            while time.perf_counter() < stop:
                window.acquire()
                conn.send(payload)
                sent[0] += 1
                pending.release()
            finished[0] = True
            pending.release()

        start = time.perf_counter()
        thread = threading.Thread(target=sender)
        thread.start()
        received = 0
        while True:
            pending.acquire()
            if finished[0] and received == sent[0]:
                break  # the end's token: every echo is in
            data = conn.recv()
            assert len(data) == size
            received += 1
            window.release()
        elapsed = time.perf_counter() - start
        thread.join()
        conn.close()
        return {"msgs_per_s": received / elapsed, "mb_per_s": received * size / elapsed / 1e6, "count": received}
    if workload == "handshakes":
        count, start = 0, time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            conn = sync_connect(impl, port, "/echo")
            conn.send(b"x")
            conn.recv()
            conn.close()
            count += 1
        return {"per_s": count / (time.perf_counter() - start), "count": count}
    raise SystemExit(f"no sync workload {workload}")


def _tls_throughput(conn: Any, size: int, window: int, seconds: float) -> dict[str, Any]:
    """The pipelined echo over TLS in one thread: a non-blocking socket and a selector.

    The plain path's two threads (one sending, one receiving) cannot share an
    SSL socket: OpenSSL's connection object is not safe for a concurrent read
    and write, and the peer saw corrupt records (bad MACs, resets).  One
    thread that writes while the window allows and reads whatever arrives
    keeps the same window of messages in flight.
    """
    import selectors
    import ssl

    sock = conn.sock
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    payload = os.urandom(size)
    frame = conn.frame(payload)
    out = bytearray()
    chunk = b""  # the write under way: an SSL write is retried with the same bytes
    sent = received = 0
    start = time.perf_counter()
    stop = start + seconds
    while True:
        sending = time.perf_counter() < stop
        if not sending and received == sent and not out and not chunk:
            break
        while sending and sent - received < window:
            out += frame
            sent += 1
            if isinstance(conn, SyncWs):
                frame = conn.frame(payload)  # a fresh mask key for each client frame
        progressed = False
        try:
            if not chunk and out:
                chunk = bytes(out[:262144])
                del out[:262144]
            if chunk:
                chunk, progressed = chunk[sock.send(chunk) :], True
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
        try:
            while True:
                data = sock.recv(262144)
                if not data:
                    raise EOFError
                conn.buffer += data
                progressed = True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        while conn.complete():
            assert len(conn.recv()) == size
            received += 1
            progressed = True
        if not progressed:
            selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if chunk else 0))
            selector.select(0.05)
    elapsed = time.perf_counter() - start
    selector.close()
    sock.setblocking(True)
    conn.close()
    return {"msgs_per_s": received / elapsed, "mb_per_s": received * size / elapsed / 1e6, "count": received}


def sync_server(impl: str, port: int) -> None:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    context = server_ssl()

    def serve(sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if context is not None:  # the handshake in this connection's thread, not the accepting one
                sock = context.wrap_socket(sock, server_side=True)
            if impl == "raw_sync":
                conn: Any = SyncRaw(sock)
                conn.recv()  # the role: the reference server only echoes
            else:
                from websockets.utils import accept_key

                buffer = bytearray()
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                sock.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
                )
                conn = SyncWs(sock, client=False)
                conn.buffer = bytearray(rest)
            while True:
                conn.send(conn.recv())
        except (EOFError, OSError):
            pass
        finally:
            sock.close()

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    _ready()
    sys.stdin.read()
    listener.close()


# --- workloads ------------------------------------------------------------------------------------


async def run_workload(
    connect: Callable[[str], Awaitable[Conn]], spawn: Spawn, workload: str, options: dict[str, Any]
) -> dict[str, Any]:
    seconds = float(options.get("seconds", 2.0))
    if workload == "latency":
        conn = await connect("/echo")
        result = await latency(conn, spawn, seconds)
        await conn.close()
        return result
    if workload.startswith("throughput-"):
        size = int(workload.split("-", 1)[1])
        window = 64 if size <= 4096 else 8
        conn = await connect("/echo")
        result = await throughput(conn, spawn, seconds, size, window)
        await conn.close()
        return result
    if workload == "handshakes":
        count = 0
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            conn = await connect("/echo")
            await conn.send(b"x")
            await conn.recv()
            await conn.close()
            count += 1
        return {"per_s": count / (time.perf_counter() - start), "count": count}
    if workload == "idle":
        count = int(options.get("connections", 1000))
        conns = [await connect("/echo") for _ in range(count)]
        for conn in conns:  # every connection fully open and used once
            await conn.send(b"x")
            await conn.recv()
        _ready()
        await _read_stdin_line(spawn)
        for conn in conns:
            await conn.close()
        return {"connections": count}
    if workload == "broadcast":
        sinks_n = int(options.get("connections", 1000))
        messages = int(options.get("messages", 10))
        size = int(options.get("size", 64))
        sinks = [await connect("/sink") for _ in range(sinks_n)]
        trigger = await connect("/trigger")
        received = 0

        async def drain(conn: Conn) -> None:
            nonlocal received
            for _ in range(messages):
                await conn.recv()
                received += 1

        async def fire() -> None:
            await conn_send(trigger, f"{messages} {size}".encode())
            await trigger.recv()

        start = time.perf_counter()
        await spawn([fire, *[(lambda conn=conn: drain(conn)) for conn in sinks]])
        elapsed = time.perf_counter() - start
        for conn in [*sinks, trigger]:
            await conn.close()
        return {"msgs_per_s": received / elapsed, "count": received}
    raise SystemExit(f"no workload {workload}")


async def conn_send(conn: Conn, data: bytes) -> None:
    # A trigger names its request as text on WebSocket connections.
    if isinstance(conn, (TrioWsConn, WebsocketsConn)):
        await conn.send(data.decode())  # type: ignore[arg-type]
    else:
        await conn.send(data)


async def _read_stdin_line(spawn: Spawn) -> None:
    if _running_trio():
        import trio

        await trio.to_thread.run_sync(sys.stdin.readline)
    else:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _ready() -> None:
    print("READY", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("impl")
    parser.add_argument("workload", nargs="?")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--tls", default=None, metavar="DIR", help="TLS 1.3 with DIR's ca.pem, cert.pem, key.pem")
    args = parser.parse_args()
    global TLS_DIR
    TLS_DIR = args.tls
    asyncio_impls = ("raw_asyncio", "websockets_asyncio")
    sync_impls = ("raw_sync", "fast_ws")
    if args.role == "server":
        if args.impl in sync_impls:
            sync_server(args.impl, args.port)
        elif args.impl in ("picows", "raw_uvloop"):
            uvloop_server(args.impl, args.port)
        elif args.impl in asyncio_impls:
            import asyncio

            asyncio.run(asyncio_server(args.impl, args.port))
        else:
            import trio

            trio.run(trio_server, args.impl, args.port)
        return
    options = json.loads(args.options)
    if args.impl in sync_impls:
        result = sync_client(args.impl, args.workload, args.port, options)
    elif args.impl in asyncio_impls:
        import asyncio

        result = asyncio.run(asyncio_client(args.impl, args.workload, args.port, options))
    else:
        import trio

        result = trio.run(trio_client, args.impl, args.workload, args.port, options)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
