"""Load and soak tests for trio_ws, over loopback only.

    python benchmarks/load.py soak [--connections 5000] [--clients 2] [--messages 20] [--quick]
    python benchmarks/load.py slow-reader [--quick]

and the processes they start (which can also be run by hand):

    python benchmarks/load.py server --port P [--mode echo|flood|sink] [--lifetime S]
    python benchmarks/load.py client --port P --connections N ...
    python benchmarks/load.py slow-client --port P --mode recv|send ...

``soak`` starts one echo server and a few client processes, opens every
connection and holds them all open at once, then has every connection echo
``--messages`` messages (a sequence number and a CRC-32 of a random payload
of varying size in each) and checks each echo: nothing lost, reordered or
corrupted; then all close with 1000.  It samples the server's RSS
(/proc/PID/status) before any connection, with all connections open and idle,
after the echo phase and after the close, and exits non-zero on any error.

``slow-reader`` shows backpressure in both directions: a server that sends as
fast as it can to a client that never reads, then a client that sends as fast
as it can to a server whose handler never reads.  It samples both processes'
RSS and the sender's message count; the sender must block and neither RSS may
grow by more than ``--max-growth-mib``.  Then the reader drains, and every
message sent must arrive, in order and intact.

Everything listens on and connects to 127.0.0.1.  Every process has a lifetime
bound and stops by itself; the orchestrator stops only the processes it
started, through their Popen handles.  Standard library, trio and trio_ws only.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import queue
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import trio
from _procs import (  # benchmarks/_procs.py (this directory is on sys.path)
    Child,
    cpu_seconds,
    emit,
    raise_nofile,
    stop_child,
)

from trio_ws import ConnectionClosed, WebSocketConnection, WebSocketRequest, open_websocket, serve_websocket

HOST = "127.0.0.1"  # loopback only, on purpose: there is no --host option
MIB = 1024 * 1024
MAX_MESSAGE_SIZE = 2**20

# --- helpers shared by every process --------------------------------------------------------


def describe(exc: BaseException) -> str:
    """A one-line description of an exception, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" (cause: {type(exc.__cause__).__name__}: {exc.__cause__})"
    return text[:300]


class Commands:
    """Lines from stdin, read in a thread with os.read (no Python-level lock is held, so an
    abandoned read cannot block interpreter shutdown)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False

    async def next(self) -> str | None:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline]).decode(errors="replace").strip()
                del self._buffer[: newline + 1]
                return line
            if self._eof:
                return None
            data = await trio.to_thread.run_sync(os.read, 0, 65536, abandon_on_cancel=True)
            if not data:
                self._eof = True
                if self._buffer:
                    self._buffer += b"\n"
            self._buffer += data

    async def dispatch(
        self, cancel: trio.CancelScope, events: dict[str, trio.Event], stats: Callable[[], dict[str, Any]]
    ) -> None:
        """Set ``events[COMMAND]`` for each command line, answer STATS with ``stats()``, and
        cancel ``cancel`` when the orchestrator is gone (stdin closed)."""
        while True:
            line = await self.next()
            if line is None:
                cancel.cancel()
                return
            command = line.upper()
            if command == "STATS":
                emit("STATS", stats())
            elif command in events:
                events[command].set()


class Gate:
    """Counts tasks through a phase; ``event`` is set when all ``target`` have passed."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.event = trio.Event()
        if target == 0:
            self.event.set()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.event.set()


class Errors:
    """Error counts by kind, and the first few messages."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.first: list[str] = []

    def add(self, kind: str, text: str) -> None:
        self.kinds[kind] += 1
        if len(self.first) < 10:
            self.first.append(f"{kind}: {text}")

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def as_dict(self) -> dict[str, Any]:
        return {"errors": self.total, "error_kinds": dict(self.kinds), "first_errors": self.first}


class CountErrorLogs:
    """A logging handler that counts what trio_ws logs at ERROR or above."""

    def __init__(self) -> None:
        import logging

        self.count = 0
        counter = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                counter.count += 1

        logging.basicConfig(level=logging.WARNING, format="[%(process)d %(name)s] %(levelname)s %(message)s")
        logging.getLogger("trio_ws").addHandler(Handler(level=logging.ERROR))


def malloc_trim() -> bool:
    """Ask glibc to give free heap memory back to the OS (a diagnostic: what RSS is only retained)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


# --- the messages ---------------------------------------------------------------------------

# Echo messages.  Binary: (connection id, sequence number, CRC-32 of the payload, payload
# length) then the payload.  Text: "cid:seq:crc:nbytes|" then the payload (crc and nbytes of
# its UTF-8 encoding).
ECHO_HEADER = struct.Struct("!IIII")
TEXT_POOL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;-_éüßæøåçñ€中文😀🚀"


class EchoMismatch(Exception):
    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


def payload_size(rng: random.Random) -> int:
    """Mostly small, some medium, a few across the 7-bit and 16-bit frame-length boundaries."""
    r = rng.random()
    if r < 0.02:
        return rng.randint(65530, 65540)  # 16-bit / 64-bit length field
    if r < 0.12:
        return rng.randint(1025, 16384)
    if r < 0.20:
        return rng.choice((0, 1, 124, 125, 126, 127))  # 7-bit / 16-bit length field
    return rng.randint(0, 1024)


def make_echo_message(rng: random.Random, cid: int, seq: int) -> tuple[str | bytes, tuple[bool, int, int]]:
    """A message and what its echo must carry: (is text, CRC-32, byte length)."""
    size = payload_size(rng)
    if seq % 4 == 3:  # every fourth message is text, with multi-byte characters
        text = "".join(rng.choices(TEXT_POOL, k=min(size, 4096)))
        data = text.encode()
        crc = zlib.crc32(data)
        return f"{cid}:{seq}:{crc:08x}:{len(data)}|{text}", (True, crc, len(data))
    data = rng.randbytes(size)
    crc = zlib.crc32(data)
    return ECHO_HEADER.pack(cid, seq, crc, len(data)) + data, (False, crc, len(data))


def check_echo(message: str | bytes, cid: int, seq: int, expected: tuple[bool, int, int]) -> None:
    """Raise EchoMismatch unless ``message`` is the echo of message ``seq`` of ``cid``."""
    is_text, crc, length = expected
    try:
        if isinstance(message, str):
            head, bar, body = message.partition("|")
            fields = head.split(":")
            if not bar or len(fields) != 4:
                raise ValueError("bad text header")
            h_cid, h_seq, h_crc, h_len = int(fields[0]), int(fields[1]), int(fields[2], 16), int(fields[3])
            data = body.encode()
        else:
            h_cid, h_seq, h_crc, h_len = ECHO_HEADER.unpack_from(message)
            data = message[ECHO_HEADER.size :]
    except (ValueError, struct.error) as exc:
        raise EchoMismatch("corrupted", f"conn {cid} seq {seq}: unparsable header ({exc})") from None
    if h_cid != cid:
        raise EchoMismatch("wrong_connection", f"conn {cid} seq {seq}: got a message of conn {h_cid}")
    if h_seq != seq:
        what = "lost or reordered" if h_seq > seq else "reordered or duplicated"
        raise EchoMismatch("sequence", f"conn {cid}: expected seq {seq}, got {h_seq} ({what})")
    if isinstance(message, str) != is_text:
        raise EchoMismatch("corrupted", f"conn {cid} seq {seq}: expected a {'text' if is_text else 'binary'} message")
    if len(data) != h_len or zlib.crc32(data) != h_crc or (h_crc, h_len) != (crc, length):
        raise EchoMismatch("corrupted", f"conn {cid} seq {seq}: checksum or length mismatch")


# Stream messages (slow-reader): sequence number, CRC-32 of the body, then the body, a
# window into a random block that moves with the sequence number.
STREAM_HEADER = struct.Struct("!QI")


class StreamMessages:
    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self._block = random.Random(seed).randbytes(2 * max(size, 1))

    def make(self, seq: int) -> bytes:
        offset = (seq * 7919) % max(self.size, 1)
        body = self._block[offset : offset + self.size]
        return STREAM_HEADER.pack(seq, zlib.crc32(body)) + body

    def check(self, message: str | bytes, seq: int) -> str | None:
        if not isinstance(message, bytes) or len(message) != STREAM_HEADER.size + self.size:
            return f"seq {seq}: wrong type or length"
        h_seq, crc = STREAM_HEADER.unpack_from(message)
        if h_seq != seq:
            return f"expected seq {seq}, got {h_seq} ({'lost' if h_seq > seq else 'reordered'})"
        if zlib.crc32(message[STREAM_HEADER.size :]) != crc:
            return f"seq {seq}: checksum mismatch"
        return None


# --- the server process ---------------------------------------------------------------------


class ServerState:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.accepted = 0
        self.active = 0
        self.peak_active = 0
        self.messages = 0  # echoed (echo), sent (flood), received and checked (sink)
        self.bytes = 0
        self.close_codes: Counter[int] = Counter()
        self.errors = Errors()
        self.drain = trio.Event()  # sink: start reading
        self.stop = trio.Event()  # flood: stop sending, close with 1000
        self.stream = StreamMessages(args.message_size, args.seed)
        self.logs = CountErrorLogs()
        self.fault_done = False
        self.open_connections: set[WebSocketConnection] = set()

    def snapshot(self, collect: bool = False) -> dict[str, Any]:
        if collect:
            gc.collect()
        return {
            "tasks": trio.lowlevel.current_statistics().tasks_living,
            "py_blocks": sys.getallocatedblocks(),
            "gc_objects": len(gc.get_objects()),
            "accepted": self.accepted,
            "active": self.active,
            "peak_active": self.peak_active,
            "messages": self.messages,
            "bytes": self.bytes,
            "buffered": sum(ws.buffered_amount for ws in self.open_connections),
            "close_codes": {str(k): v for k, v in sorted(self.close_codes.items())},
            "log_errors": self.logs.count,
            **self.errors.as_dict(),
        }

    async def handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        self.accepted += 1
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        self.open_connections.add(ws)
        try:
            await getattr(self, f"_{self.args.mode}")(ws)
        except ConnectionClosed as exc:
            self.close_codes[exc.reason.code if exc.reason else -1] += 1
        except Exception as exc:
            self.errors.add("handler", describe(exc))
            raise
        finally:
            self.active -= 1
            self.open_connections.discard(ws)

    async def _echo(self, ws: WebSocketConnection) -> None:
        count = 0
        held: str | bytes | None = None
        while True:
            message = await ws.get_message()
            count += 1
            self.messages += 1
            self.bytes += len(message)
            if self.args.fault != "none" and count == 3 and not self.fault_done:
                # Self-test of the checker (--fault): damage the third message of one connection.
                self.fault_done = True
                if self.args.fault == "drop":
                    continue
                if self.args.fault == "swap":
                    held = message
                    continue
                if self.args.fault == "corrupt":
                    if isinstance(message, str):
                        message = message[:-1] + ("x" if message[-1:] != "x" else "y")
                    else:
                        message = message[:-1] + bytes([(message[-1] ^ 1) if message[-1:] else 0])
            await ws.send_message(message)
            if held is not None:
                await ws.send_message(held)
                held = None

    async def _flood(self, ws: WebSocketConnection) -> None:
        seq = 0
        while not self.stop.is_set():
            await ws.send_message(self.stream.make(seq))
            seq += 1
            self.messages += 1
            self.bytes += self.stream.size
        self.close_codes[1000] += 1  # returning closes with 1000

    async def _sink(self, ws: WebSocketConnection) -> None:
        await self.drain.wait()  # never reads before that
        seq = 0
        while True:
            message = await ws.get_message()
            problem = self.stream.check(message, seq)
            if problem is not None:
                self.errors.add("stream", problem)
                await ws.aclose(1008, "stream check failed")
                return
            seq += 1
            self.messages += 1
            self.bytes += len(message)


async def server_main(args: argparse.Namespace) -> int:
    nofile = raise_nofile()
    state = ServerState(args)
    commands = Commands()
    expired = True
    with trio.move_on_after(args.lifetime):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    serve_websocket,
                    state.handler,
                    HOST,
                    args.port,
                    None,
                    message_queue_size=args.queue_size,
                    max_message_size=MAX_MESSAGE_SIZE,
                    connect_timeout=args.connect_timeout,
                    disconnect_timeout=args.disconnect_timeout,
                )
            )
            emit("READY", {"port": server.port, "pid": os.getpid(), "mode": args.mode, "nofile": nofile})
            while True:
                line = await commands.next()
                if line is None:
                    if args.exit_on_eof:
                        break
                    await trio.sleep_forever()
                command = line.split()[0].upper() if line.split() else ""
                if command == "STATS":
                    emit("STATS", state.snapshot(collect=line.upper().endswith(" GC")))
                elif command == "TRIM":
                    emit("TRIM", {"trimmed": malloc_trim()})
                elif command == "DRAIN":
                    state.drain.set()
                elif command == "STOP":
                    state.stop.set()
                elif command == "QUIT":
                    break
            expired = False
            nursery.cancel_scope.cancel()  # closes what is still open with 1001
    emit("FINAL", {**state.snapshot(), "lifetime_expired": expired})
    return 3 if expired else 0


# --- the soak client process ----------------------------------------------------------------


async def client_main(args: argparse.Namespace) -> int:
    nofile = raise_nofile()
    logs = CountErrorLogs()
    n = args.connections
    opened, echoed, closed = Gate(n), Gate(n), Gate(n)
    connect, go, close_now = trio.Event(), trio.Event(), trio.Event()
    limiter = trio.CapacityLimiter(args.handshake_concurrency)
    errors = Errors()
    handshake_times: list[float] = []
    counts = Counter[str]()
    commands = Commands()

    async def connection(cid: int) -> None:
        rng = random.Random(args.seed * 1_000_003 + cid)
        passed: set[Gate] = set()
        stage = "connect"

        def through(gate: Gate) -> None:
            passed.add(gate)
            gate.hit()

        try:
            async with AsyncExitStack() as stack:
                await limiter.acquire()
                try:
                    started = trio.current_time()
                    ws = await stack.enter_async_context(
                        open_websocket(
                            HOST,
                            args.port,
                            f"/soak/{cid}",
                            use_ssl=False,
                            max_message_size=MAX_MESSAGE_SIZE,
                            connect_timeout=args.connect_timeout,
                            disconnect_timeout=args.disconnect_timeout,
                        )
                    )
                    handshake_times.append(trio.current_time() - started)
                finally:
                    limiter.release()
                counts["open"] += 1
                through(opened)
                stage = "wait"
                await go.wait()
                stage = "echo"
                await echo(ws, cid, rng)
                counts["echo_ok"] += 1
                through(echoed)
                stage = "idle"
                await close_now.wait()
                stage = "close"
            reason = ws.closed
            if reason is not None and reason.code == 1000 and reason.was_clean:
                counts["clean_close"] += 1
            else:
                errors.add("close", f"conn {cid}: closed with {reason!r}, clean={reason and reason.was_clean}")
        except EchoMismatch as exc:
            errors.add(exc.kind, str(exc))
        except BaseExceptionGroup as group:  # from the echo's nursery
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                leaf = leaf.exceptions[0]
            if isinstance(leaf, EchoMismatch):
                errors.add(leaf.kind, str(leaf))
            elif isinstance(leaf, trio.Cancelled):
                raise
            else:
                errors.add(stage, f"conn {cid}: {describe(group)}")
        except Exception as exc:
            errors.add(stage, f"conn {cid}: {describe(exc)}")
        finally:
            for gate in (opened, echoed, closed):
                if gate not in passed:
                    gate.hit()

    async def echo(ws: WebSocketConnection, cid: int, rng: random.Random) -> None:
        expected: list[tuple[bool, int, int]] = []

        async def sender() -> None:
            for seq in range(args.messages):
                message, meta = make_echo_message(rng, cid, seq)
                expected.append(meta)
                await ws.send_message(message)
                counts["sent"] += 1
                counts["sent_bytes"] += len(message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            for seq in range(args.messages):
                message = await ws.get_message()
                check_echo(message, cid, seq, expected[seq])
                counts["checked"] += 1

    def report() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "connections": n,
            "open": counts["open"],
            "echo_ok": counts["echo_ok"],
            "sent": counts["sent"],
            "sent_bytes": counts["sent_bytes"],
            "checked": counts["checked"],
            "clean_closes": counts["clean_close"],
            "log_errors": logs.count,
            **errors.as_dict(),
        }

    async def command_loop(cancel: trio.CancelScope) -> None:
        await commands.dispatch(cancel, {"CONNECT": connect, "GO": go, "CLOSE": close_now}, report)

    emit("READY", {"pid": os.getpid(), "nofile": nofile})
    expired = True
    with trio.move_on_after(args.lifetime):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(command_loop, nursery.cancel_scope)
            await connect.wait()
            started = trio.current_time()
            for i in range(n):
                nursery.start_soon(connection, args.first_id + i)
            await opened.event.wait()
            open_seconds = trio.current_time() - started
            emit(
                "OPENED",
                {
                    **report(),
                    "open_seconds": round(open_seconds, 3),
                    "handshake_seconds": [round(t, 5) for t in handshake_times],
                },
            )
            await go.wait()
            started = trio.current_time()
            await echoed.event.wait()
            emit("ECHOED", {**report(), "echo_seconds": round(trio.current_time() - started, 3)})
            await close_now.wait()
            started = trio.current_time()
            await closed.event.wait()
            emit("DONE", {**report(), "close_seconds": round(trio.current_time() - started, 3)})
            expired = False
            nursery.cancel_scope.cancel()
    if expired:
        emit("DONE", {**report(), "lifetime_expired": True})
        return 3
    return 0 if errors.total == 0 and logs.count == 0 else 1


# --- the slow-reader client process ---------------------------------------------------------


async def slow_client_main(args: argparse.Namespace) -> int:
    """recv: open connections and never read until DRAIN.  send: send as fast as possible."""
    raise_nofile()
    logs = CountErrorLogs()
    stream = StreamMessages(args.message_size, args.seed)
    errors = Errors()
    counts = Counter[str]()
    codes: Counter[int] = Counter()
    connect, drain, stop = trio.Event(), trio.Event(), trio.Event()
    opened, done = Gate(args.connections), Gate(args.connections)
    commands = Commands()
    open_connections: set[WebSocketConnection] = set()

    def report() -> dict[str, Any]:
        return {
            "messages": counts["messages"],
            "bytes": counts["bytes"],
            "open": counts["open"],
            "buffered": sum(ws.buffered_amount for ws in open_connections),
            "close_codes": {str(k): v for k, v in sorted(codes.items())},
            "log_errors": logs.count,
            **errors.as_dict(),
        }

    async def connection(cid: int) -> None:
        passed: set[Gate] = set()
        try:
            async with open_websocket(
                HOST,
                args.port,
                f"/slow/{cid}",
                use_ssl=False,
                message_queue_size=args.queue_size,
                max_message_size=MAX_MESSAGE_SIZE,
                connect_timeout=10,
                disconnect_timeout=10,
            ) as ws:
                open_connections.add(ws)
                counts["open"] += 1
                passed.add(opened)
                opened.hit()
                if args.mode == "recv":
                    await drain.wait()  # never reads before that
                    seq = 0
                    try:
                        while True:
                            message = await ws.get_message()
                            problem = stream.check(message, seq)
                            if problem is not None:
                                errors.add("stream", f"conn {cid}: {problem}")
                                return
                            seq += 1
                            counts["messages"] += 1
                            counts["bytes"] += len(message)
                    except ConnectionClosed as exc:
                        codes[exc.reason.code if exc.reason else -1] += 1
                else:
                    seq = 0
                    while not stop.is_set():
                        await ws.send_message(stream.make(seq))
                        seq += 1
                        counts["messages"] += 1
                        counts["bytes"] += stream.size
            open_connections.discard(ws)
            if args.mode == "send":
                reason = ws.closed
                codes[reason.code if reason else -1] += 1
                if reason is None or reason.code != 1000 or not reason.was_clean:
                    errors.add("close", f"conn {cid}: {reason!r}")
        except Exception as exc:
            errors.add("connection", f"conn {cid}: {describe(exc)}")
        finally:
            if opened not in passed:
                opened.hit()
            done.hit()

    async def command_loop(cancel: trio.CancelScope) -> None:
        await commands.dispatch(cancel, {"CONNECT": connect, "DRAIN": drain, "STOP": stop}, report)

    emit("READY", {"pid": os.getpid(), "mode": args.mode})
    expired = True
    with trio.move_on_after(args.lifetime):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(command_loop, nursery.cancel_scope)
            await connect.wait()
            for cid in range(args.connections):
                nursery.start_soon(connection, cid)
            await opened.event.wait()
            emit("OPENED", report())
            await done.event.wait()
            emit("DONE", report())
            expired = False
            nursery.cancel_scope.cancel()
    if expired:
        emit("DONE", {**report(), "lifetime_expired": True})
        return 3
    return 0 if errors.total == 0 and logs.count == 0 else 1


# --- the orchestrator -----------------------------------------------------------------------


class PeerError(Exception):
    pass


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise PeerError(f"no VmRSS for pid {pid}")


class Peer:
    """A child process started by the orchestrator: commands on stdin, tagged lines on stdout."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        # The process and the thread that reads its tagged lines; this class adds the
        # text commands and the deadlines this script uses.
        child = Child(name, __file__, argv)
        self.proc = child.proc
        self.pid = child.pid
        self._lines = child.lines
        self._pending: list[tuple[str, Any]] = []

    def send(self, command: str) -> None:
        if self.proc.poll() is not None:
            raise PeerError(f"{self.name} exited with code {self.proc.returncode} before {command}")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise PeerError(f"{self.name}: cannot send {command}: its stdin is closed") from None

    def expect(self, tag: str, deadline: float) -> dict[str, Any]:
        for i, (got, payload) in enumerate(self._pending):
            if got == tag:
                del self._pending[i]
                return payload  # type: ignore[no-any-return]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"timed out waiting for {tag} from {self.name}")
            try:
                got, payload = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if got == tag:
                return payload  # type: ignore[no-any-return]
            if got == "EOF":
                self._lines.put((got, payload))
                code = self.proc.wait()
                raise PeerError(f"{self.name} exited with code {code} while we waited for {tag}")
            self._pending.append((got, payload))

    def request(self, command: str, deadline: float) -> dict[str, Any]:
        self.send(command)
        return self.expect(command.split()[0], deadline)

    def wait(self, deadline: float) -> int:
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.name} did not exit in time") from None

    def stop(self) -> None:
        """Make sure this process (and only it) is gone: EOF on stdin, then SIGTERM, then SIGKILL."""
        stop_child(self.proc, 5)


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def run_orchestrated(body: Callable[[list[Peer]], int]) -> int:
    peers: list[Peer] = []
    # SIGTERM as well as Ctrl-C runs the finally clause, which stops our own children.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return body(peers)
    except PeerError as exc:
        print(f"FAILED: {exc}", flush=True)
        return 2
    finally:
        for peer in peers:
            peer.stop()


def soak(args: argparse.Namespace) -> int:
    if args.quick:
        args.connections = min(args.connections, 500)
        args.timeout = min(args.timeout, 60)
    started = time.monotonic()
    deadline = started + args.timeout
    lifetime = str(args.timeout + 30)
    shares = [args.connections // args.clients + (k < args.connections % args.clients) for k in range(args.clients)]
    print(
        f"soak: {args.connections} connections from {args.clients} client process(es) {shares}, "
        f"{args.messages} messages each, {args.handshake_concurrency} concurrent handshakes per client",
        flush=True,
    )

    def client_argv(port: int, share: int, first: int, seed: int) -> list[str]:
        return [
            "client",
            "--port",
            str(port),
            "--connections",
            str(share),
            "--first-id",
            str(first),
            "--messages",
            str(args.messages),
            "--handshake-concurrency",
            str(args.handshake_concurrency),
            "--seed",
            str(seed),
            "--lifetime",
            lifetime,
            "--connect-timeout",
            str(args.connect_timeout),
        ]

    def one_round(peers: list[Peer], server: Peer, port: int, r: int, failures: list[str]) -> dict[str, Any]:
        """Open every connection, hold them, echo, close; with the server's figures at each step."""
        n = args.connections
        so_far = n * r  # connections served in the rounds before this one
        before = server.request("STATS", deadline)
        clients = []
        first = 0
        for k, share in enumerate(shares):
            clients.append(Peer(f"client{k}", client_argv(port, share, first, args.seed + r)))
            peers.append(clients[-1])
            first += share
        for c in clients:
            c.expect("READY", deadline)
        time.sleep(0.3)
        client_rss_base = [rss(c.pid) for c in clients]
        rss_before, cpu_before = rss(server.pid), cpu_seconds(server.pid)
        for c in clients:
            c.send("CONNECT")
        opened = [c.expect("OPENED", deadline) for c in clients]
        time.sleep(args.settle)  # idle: let everything settle before the peak sample
        held = server.request("STATS", deadline)
        rss_peak, cpu_open = rss(server.pid), cpu_seconds(server.pid)
        client_rss_peak = [rss(c.pid) for c in clients]
        n_open = sum(o["open"] for o in opened)
        if n_open != n:
            failures.append(f"round {r + 1}: only {n_open} of {n} connections opened")
        if held["active"] != n:
            failures.append(f"round {r + 1}: the server held {held['active']} connections at the peak, not {n}")

        t_echo = time.monotonic()
        for c in clients:
            c.send("GO")
        echoed = [c.expect("ECHOED", deadline) for c in clients]
        echo_wall = time.monotonic() - t_echo
        echo_ok = sum(e["echo_ok"] for e in echoed)
        if echo_ok != n:
            failures.append(f"round {r + 1}: {echo_ok} of {n} connections completed their echoes")
        after_echo = server.request("STATS", deadline)
        rss_echo, cpu_echo = rss(server.pid), cpu_seconds(server.pid)

        t_close = time.monotonic()
        for c in clients:
            c.send("CLOSE")
        done = [c.expect("DONE", deadline) for c in clients]
        close_wall = time.monotonic() - t_close
        codes = [c.wait(deadline) for c in clients]
        # The server's handlers end once the closing handshakes are through.
        after_close = server.request("STATS", deadline)
        while after_close["active"] and time.monotonic() < min(deadline, t_close + close_wall + 15):
            time.sleep(0.2)
            after_close = server.request("STATS", deadline)
        time.sleep(args.settle)
        rss_closed = rss(server.pid)
        collected = server.request("STATS GC", deadline)  # object counts after gc.collect()
        server.request("TRIM", deadline)
        rss_trimmed = rss(server.pid)

        handshakes = [t for o in opened for t in o["handshake_seconds"]]
        checked = sum(d["checked"] for d in done)
        expected_checks = n * args.messages
        client_errors = sum(d["errors"] for d in done)
        clean = sum(d["clean_closes"] for d in done)
        kinds: Counter[str] = Counter()
        for d in done:
            kinds.update(d["error_kinds"])
        echoed_by_server = after_echo["messages"] - before["messages"]
        if checked != expected_checks:
            failures.append(f"round {r + 1}: {checked} echoes checked, expected {expected_checks}")
        if client_errors:
            errors = [e for d in done for e in d["first_errors"]][:5]
            failures.append(f"round {r + 1}: {client_errors} client errors {dict(kinds)}: {errors}")
        if clean != n:
            failures.append(f"round {r + 1}: {clean} clean 1000 closes, expected {n}")
        if any(d["log_errors"] for d in done):
            failures.append(f"round {r + 1}: trio_ws logged errors in a client")
        if echoed_by_server != expected_checks:
            failures.append(f"round {r + 1}: the server echoed {echoed_by_server} messages, expected {expected_checks}")
        if after_close["close_codes"] != {"1000": so_far + n}:
            failures.append(f"round {r + 1}: the server saw close codes {after_close['close_codes']}")
        if after_close["accepted"] != so_far + n:
            failures.append(f"round {r + 1}: the server accepted {after_close['accepted']} connections in all")
        if after_close["active"]:
            failures.append(f"round {r + 1}: {after_close['active']} server handlers still running after the close")
        if any(codes):
            failures.append(f"round {r + 1}: client exit codes {codes}")
        sent_bytes = sum(d["sent_bytes"] for d in done)
        open_s = max(o["open_seconds"] for o in opened)
        return {
            "round": r + 1,
            "held": held["active"],
            "opened": n_open,
            "checked": checked,
            "client_errors": client_errors,
            "clean_closes": clean,
            "client_log_errors": sum(d["log_errors"] for d in done),
            "open_s": round(open_s, 3),
            "echo_s": round(echo_wall, 3),
            "close_s": round(close_wall, 3),
            "handshake_ms": {str(p): round(percentile(handshakes, p) * 1e3, 1) for p in (50, 90, 99, 100)},
            "sent_bytes": sent_bytes,
            "rss_before": rss_before,
            "rss_peak": rss_peak,
            "rss_after_echo": rss_echo,
            "rss_after_close": rss_closed,
            "rss_after_trim": rss_trimmed,
            "cpu_open_s": round(cpu_open - cpu_before, 2),
            "cpu_echo_s": round(cpu_echo - cpu_open, 2),
            "client_rss_base": client_rss_base,
            "client_rss_peak": client_rss_peak,
            "server_after_close": {k: collected[k] for k in ("tasks", "py_blocks", "gc_objects")},
            "server_close_codes": after_close["close_codes"],
        }

    def body(peers: list[Peer]) -> int:
        failures: list[str] = []
        server = Peer(
            "server",
            [
                "server",
                "--port",
                str(args.port),
                "--mode",
                "echo",
                "--lifetime",
                lifetime,
                "--exit-on-eof",
                "--disconnect-timeout",
                "10",
                "--fault",
                args.fault,
            ],
        )
        peers.append(server)
        port = server.expect("READY", deadline)["port"]
        time.sleep(0.5)
        rss_base = rss(server.pid)
        idle = server.request("STATS GC", deadline)
        rounds = [one_round(peers, server, port, r, failures) for r in range(args.rounds)]
        server.send("QUIT")
        final = server.expect("FINAL", deadline)
        server_code = server.wait(deadline)
        wall = time.monotonic() - started
        if final["errors"] or final["log_errors"]:
            failures.append(
                f"server errors: {final['errors']} handler, {final['log_errors']} logged: {final['first_errors'][:5]}"
            )
        if server_code:
            failures.append(f"server exit code {server_code}")

        n = args.connections
        first = rounds[0]
        per_conn = (first["rss_peak"] - rss_base) / n
        client_growth = sum(first["client_rss_peak"]) - sum(first["client_rss_base"])
        print(
            f"server idle, before any connection: RSS {mib(rss_base)}; {idle['tasks']} trio tasks, "
            f"{idle['py_blocks']} Python memory blocks, {idle['gc_objects']} gc-tracked objects"
        )
        for rd in rounds:
            hs = rd["handshake_ms"]
            print(f"-- round {rd['round']} of {args.rounds}")
            print(f"connections held at once : {rd['held']} (server), {rd['opened']} (clients)")
            print(
                f"open phase               : {rd['open_s']:.2f} s, {n / rd['open_s']:.0f} connections/s; handshake "
                f"p50 {hs['50']:.1f} ms, p90 {hs['90']:.1f} ms, p99 {hs['99']:.1f} ms, max {hs['100']:.1f} ms"
            )
            print(
                f"echo phase               : {rd['echo_s']:.2f} s, {rd['checked']} messages checked "
                f"({rd['checked'] / rd['echo_s']:.0f}/s, {mib(rd['sent_bytes'])} each way)"
            )
            print(
                f"close phase              : {rd['close_s']:.2f} s, {rd['clean_closes']} clean 1000 closes; "
                f"server close codes so far {rd['server_close_codes']}"
            )
            print(
                f"errors                   : {rd['client_errors']} client, {rd['client_log_errors']} logged by "
                f"trio_ws in the clients"
            )
            print(
                f"server RSS               : before {mib(rd['rss_before'])}, peak (all open, idle) "
                f"{mib(rd['rss_peak'])}, after echo {mib(rd['rss_after_echo'])}, after close "
                f"{mib(rd['rss_after_close'])}, after gc.collect() + malloc_trim(0) {mib(rd['rss_after_trim'])}"
            )
            after = rd["server_after_close"]
            print(
                f"server after close       : {after['tasks']} trio tasks, {after['py_blocks']} Python memory blocks, "
                f"{after['gc_objects']} gc-tracked objects"
            )
            print(f"server CPU               : open {rd['cpu_open_s']:.2f} s, echo {rd['cpu_echo_s']:.2f} s")
        print("-- summary")
        print(f"connections held         : {first['held']} at once (round 1)")
        print(f"messages checked         : {sum(rd['checked'] for rd in rounds)}")
        print(
            f"errors                   : {sum(rd['client_errors'] for rd in rounds)} client, {final['errors']} "
            f"server handler, {final['log_errors'] + sum(rd['client_log_errors'] for rd in rounds)} logged"
        )
        print(f"server RSS / connection  : {per_conn / 1024:.1f} KiB ((peak - baseline) / {n}, round 1)")
        print(
            f"client RSS / connection  : {client_growth / n / 1024:.1f} KiB (peak over their baselines; "
            f"{', '.join(mib(x) for x in first['client_rss_peak'])} in all)"
        )
        print(f"wall time                : {wall:.2f} s")
        result = {
            "scenario": "soak",
            "connections": n,
            "clients": args.clients,
            "messages": args.messages,
            "rss_base": rss_base,
            "rss_per_connection": round(per_conn),
            "wall_s": round(wall, 3),
            "idle": {k: idle[k] for k in ("tasks", "py_blocks", "gc_objects")},
            "rounds": rounds,
            "failures": failures,
        }
        print("RESULT " + json.dumps(result), flush=True)
        for failure in failures:
            print(f"FAILED: {failure}", flush=True)
        print("OK" if not failures else "FAILED", flush=True)
        return 1 if failures else 0

    return run_orchestrated(body)


def slow_reader(args: argparse.Namespace) -> int:
    if args.quick:
        args.interval, args.duration = 0.25, 2.0
    bound = args.max_growth_mib * MIB
    deadline = time.monotonic() + args.timeout
    lifetime = str(args.timeout + 30)
    results: list[dict[str, Any]] = []
    failures: list[str] = []

    def direction(peers: list[Peer], sender_role: str) -> None:
        """sender_role "server": the server floods a client that never reads; "client": the reverse."""
        title = (
            "server -> client (the client never reads)"
            if sender_role == "server"
            else "client -> server (the server's handler never reads)"
        )
        print(
            f"\n== {title}: {args.connections} connection(s), {args.message_size}-byte messages, "
            f"message_queue_size={args.queue_size} on the reading side",
            flush=True,
        )
        server = Peer(
            "server",
            [
                "server",
                "--port",
                str(args.port),
                "--mode",
                "flood" if sender_role == "server" else "sink",
                "--message-size",
                str(args.message_size),
                "--queue-size",
                str(args.queue_size),
                "--lifetime",
                lifetime,
                "--exit-on-eof",
                "--disconnect-timeout",
                "10",
            ],
        )
        peers.append(server)
        port = server.expect("READY", deadline)["port"]
        client = Peer(
            "client",
            [
                "slow-client",
                "--port",
                str(port),
                "--mode",
                "recv" if sender_role == "server" else "send",
                "--connections",
                str(args.connections),
                "--message-size",
                str(args.message_size),
                "--queue-size",
                str(args.queue_size),
                "--lifetime",
                lifetime,
            ],
        )
        peers.append(client)
        client.expect("READY", deadline)
        time.sleep(0.3)
        base = {"server": rss(server.pid), "client": rss(client.pid)}
        sender = server if sender_role == "server" else client
        client.send("CONNECT")
        client.expect("OPENED", deadline)
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        steps = round(args.duration / args.interval)
        print(
            f"{'t (s)':>6} {'server RSS':>12} {'client RSS':>12} {'sent (msgs)':>12} {'sent (MiB)':>11} "
            f"{'blocked in send_message':>24}"
        )
        print(f"{'base':>6} {mib(base['server']):>12} {mib(base['client']):>12}")
        for i in range(steps + 1):
            time.sleep(max(0.0, t0 + i * args.interval - time.monotonic()))
            stats = sender.request("STATS", deadline)
            sample = {
                "t": round(time.monotonic() - t0, 2),
                "server": rss(server.pid),
                "client": rss(client.pid),
                "sent": stats["messages"],
                "sent_bytes": stats["bytes"],
                "buffered": stats["buffered"],
            }
            samples.append(sample)
            print(
                f"{sample['t']:>6.2f} {mib(sample['server']):>12} {mib(sample['client']):>12} "
                f"{sample['sent']:>12} {sample['sent_bytes'] / MIB:>11.1f} {sample['buffered']:>18} bytes",
                flush=True,
            )
        # Blocked: the count did not move over the last second (or the last half, if shorter).
        tail = samples[-max(2, min(len(samples) // 2, round(1.0 / args.interval) + 1)) :]
        blocked = tail[0]["sent"] == tail[-1]["sent"]
        growth = {role: samples[-1][role] - base[role] for role in ("server", "client")}
        peak_growth = {role: max(s[role] for s in samples) - base[role] for role in ("server", "client")}
        late_growth = {role: samples[-1][role] - samples[len(samples) // 2][role] for role in ("server", "client")}
        print(
            f"growth from baseline: server {mib(growth['server'])} (peak {mib(peak_growth['server'])}), "
            f"client {mib(growth['client'])} (peak {mib(peak_growth['client'])}); "
            f"over the second half: server {mib(late_growth['server'])}, client {mib(late_growth['client'])}"
        )
        print(
            f"the sender {'blocked' if blocked else 'was STILL SENDING'} after {samples[-1]['sent']} messages "
            f"({mib(samples[-1]['sent_bytes'])}; the rest waits in TCP buffers and the reader's queue)"
        )
        for role in ("server", "client"):
            if peak_growth[role] > bound:
                failures.append(f"{title}: {role} RSS grew by {mib(peak_growth[role])} (> {args.max_growth_mib} MiB)")
        if not blocked:
            failures.append(
                f"{title}: the sender never blocked "
                f"({tail[0]['sent']} -> {tail[-1]['sent']} messages over the last samples)"
            )

        # Now the reader reads: every message sent must arrive, in order and intact, then a clean 1000.
        if sender_role == "server":
            client.send("DRAIN")
            time.sleep(0.5)
            server.send("STOP")
            done = client.expect("DONE", deadline)
            sent = server.request("STATS", deadline)
            received = done
        else:
            server.send("DRAIN")
            time.sleep(0.5)
            client.send("STOP")
            done = client.expect("DONE", deadline)
            sent = done
            received = server.request("STATS", deadline)
            while received["active"] and time.monotonic() < deadline:
                time.sleep(0.1)
                received = server.request("STATS", deadline)
        client_code = client.wait(deadline)
        server.send("QUIT")
        final = server.expect("FINAL", deadline)
        server_code = server.wait(deadline)
        ok_drain = (
            received["messages"] == sent["messages"]
            and not done["errors"]
            and not final["errors"]
            and not done["log_errors"]
            and not final["log_errors"]
        )
        print(
            f"after draining: {sent['messages']} sent, {received['messages']} received in order with valid "
            f"checksums; close codes: client {done['close_codes']}, server {final['close_codes']}; "
            f"errors: client {done['errors']}, server {final['errors']}"
        )
        if not ok_drain:
            failures.append(
                f"{title}: drain mismatch or errors: sent {sent['messages']}, received {received['messages']}, "
                f"{done['first_errors'][:3]} {final['first_errors'][:3]}"
            )
        if done["close_codes"] != {"1000": args.connections} or final["close_codes"] != {"1000": args.connections}:
            failures.append(f"{title}: close codes client {done['close_codes']}, server {final['close_codes']}")
        if client_code or server_code:
            failures.append(f"{title}: exit codes client {client_code}, server {server_code}")
        results.append(
            {
                "direction": f"{sender_role}-sends",
                "base": base,
                "samples": samples,
                "growth": growth,
                "peak_growth": peak_growth,
                "blocked": blocked,
                "sent_before_block": samples[-1]["sent"],
                "drained": received["messages"],
            }
        )

    def body(peers: list[Peer]) -> int:
        direction(peers, "server")
        direction(peers, "client")
        print(
            "\nRESULT " + json.dumps({"scenario": "slow-reader", "results": results, "failures": failures}), flush=True
        )
        for failure in failures:
            print(f"FAILED: {failure}", flush=True)
        print("OK" if not failures else "FAILED", flush=True)
        return 1 if failures else 0

    return run_orchestrated(body)


# --- command line ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("soak", help="hold many connections open, echo and verify, close")
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--messages", type=int, default=20, help="echoed messages per connection")
    p.add_argument("--handshake-concurrency", type=int, default=100, help="per client process")
    p.add_argument("--port", type=int, default=0, help="0: any free port")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle", type=float, default=1.0, help="seconds idle before the peak RSS sample")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run")
    p.add_argument("--rounds", type=int, default=1, help="repeat open/echo/close against the same server")
    p.add_argument("--quick", action="store_true", help="500 connections, 60 s bound")
    p.add_argument(
        "--fault",
        choices=("none", "drop", "swap", "corrupt"),
        default="none",
        help="self-test: the server drops, swaps or corrupts one echo; the run must then fail",
    )

    p = sub.add_parser("slow-reader", help="backpressure: a reader that does not read, both ways")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--message-size", type=int, default=16384)
    p.add_argument("--queue-size", type=int, default=1, help="message_queue_size of the reading side")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-growth-mib", type=float, default=64.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--quick", action="store_true", help="sample every 0.25 s for 2 s")

    p = sub.add_parser("server", help="a trio_ws server on 127.0.0.1 (commands on stdin: STATS, DRAIN, STOP, QUIT)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("echo", "flood", "sink"), default="echo")
    p.add_argument("--lifetime", type=float, default=600.0, help="stop by itself after this many seconds")
    p.add_argument("--message-size", type=int, default=16384, help="flood/sink message size")
    p.add_argument("--queue-size", type=int, default=1, help="message_queue_size")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--disconnect-timeout", type=float, default=10.0)
    p.add_argument("--exit-on-eof", action="store_true", help="stop when stdin closes")
    p.add_argument(
        "--fault",
        choices=("none", "drop", "swap", "corrupt"),
        default="none",
        help="echo: damage the third message of one connection (a self-test of the checks)",
    )

    p = sub.add_parser("client", help="soak client (commands on stdin: GO, CLOSE, STATS)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--first-id", type=int, default=0)
    p.add_argument("--messages", type=int, default=20)
    p.add_argument("--handshake-concurrency", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--disconnect-timeout", type=float, default=10.0)
    p.add_argument("--lifetime", type=float, default=600.0)

    p = sub.add_parser("slow-client", help="slow-reader client (commands on stdin: CONNECT, DRAIN, STOP, STATS)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("recv", "send"), required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--message-size", type=int, default=16384)
    p.add_argument("--queue-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lifetime", type=float, default=120.0)

    args = parser.parse_args()
    if args.command == "soak":
        return soak(args)
    if args.command == "slow-reader":
        return slow_reader(args)
    runner = {"server": server_main, "client": client_main, "slow-client": slow_client_main}[args.command]
    return trio.run(runner, args)


if __name__ == "__main__":
    sys.exit(main())
