"""One message to many connections: trio_ws.broadcast() against a send_message() loop and websockets.trio.

    python benchmarks/broadcast.py                 # 10,000 connections, 64 B and 4 KiB, all reading, then 1 % not
    python benchmarks/broadcast.py --quick         # 2,000 connections, fewer messages
    python benchmarks/broadcast.py --sweep         # write_limit 16 KiB to 1 MiB: memory and delivery

and the processes it starts (which can also be run by hand):

    python benchmarks/broadcast.py server --impl trio_ws|websockets_trio --port P [--write-limit N] [--sndbuf N]
    python benchmarks/broadcast.py client --port P --connections N [--slow K]

One server process holds every connection; one client process (asyncio, a
frame parser of its own, the standard library only) opens them all and
reads.  The server sends ``--messages`` messages of each size, back to back
(a checkpoint between two), with one of three methods:

- ``broadcast``: ``trio_ws.broadcast(server.connections, message)``;
- ``loop``: ``for ws in server.connections: await ws.send_message(message)``;
- ``websockets``: ``await websockets.trio.server.broadcast(server.connections, message)``
  (websockets 17.4's trio flavour, from benchmarks/.venv-peers): a task per
  connection, each sending and waiting for its socket, in one nursery.

Each message carries a sequence number; the client checks that every
connection gets every message, in order, and says when the last one arrived.
Figures: the send call's time per recipient (median over messages), the
delivered messages per second (all recipients, from the first send to the
last arrival) and the server's RSS (VmRSS, sampled every 50 ms).  Then the
same with 1 % of the connections never reading (``--slow``): the client
shrinks their receive buffer and stops reading them; the others must still get
every message, the sender must not block, and the server's RSS may grow by at
most write_limit per slow connection (plus one message each and 16 MiB of
slack).  A method that blocks on the slow peers shows "blocked" once
``--block-timeout`` passes; the slow peers then read again, and the client
checks every frame they got.

Every server socket gets ``SO_SNDBUF=--sndbuf`` (default 32 KiB, inherited
from the listening socket; 0: the kernel's autotuning, up to 4 MiB a socket on
loopback) and the slow peers ``SO_RCVBUF=4096``: a slow peer then fills the
kernel's buffers with tens of KiB, not megabytes, and its messages pile up in
the server process, which is what is measured.

Everything runs on 127.0.0.1; each process raises RLIMIT_NOFILE to its hard
limit, has a lifetime and stops when the orchestrator's pipe closes; the
orchestrator bounds every step in time and stops only its own children, by
their handles.  Exit status: 0 when every check passed, 1 when one failed, 2
when a process died or a step timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median
from typing import Any

from _procs import (  # benchmarks/_procs.py (this directory is on sys.path)
    Child,
    asyncio_commands,
    emit,
    free_port,
    raise_nofile,
    rss,
)

HERE = Path(__file__).resolve().parent
PEERS_PY = HERE / ".venv-peers" / "bin" / "python"
HOST = "127.0.0.1"  # loopback only, on purpose
MIB = 2**20
SEQ = struct.Struct("!Q")
METHODS = {"broadcast": "trio_ws", "loop": "trio_ws", "websockets": "websockets_trio"}
SIZES = (64, 4096)
SLOW_RCVBUF = 4096
SLACK = 16 * MIB  # RSS growth allowed on top of write_limit + one message per slow connection


# --- shared -------------------------------------------------------------------------------------


def message_for(seq: int, size: int) -> bytes:
    return SEQ.pack(seq) + bytes(size - SEQ.size)


# --- the server process (trio; trio_ws or websockets.trio) ---------------------------------------


Send = Callable[[str, bytes], Awaitable[tuple[int, int, int]]]  # (method, message) -> sent, skipped, closed


async def trio_ws_server(nursery: Any, listeners: list[Any], args: argparse.Namespace) -> tuple[Any, Send, Any]:
    """A trio_ws server in ``nursery``; how it sends (broadcast() or a send_message() loop)."""
    import trio_ws

    async def handler(request: Any) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.get_message()
        except trio_ws.ConnectionClosed:
            pass

    server: Any = trio_ws.WebSocketServer(handler, listeners, write_limit=args.write_limit, disconnect_timeout=2)
    await nursery.start(server.run)

    async def send(method: str, message: bytes) -> tuple[int, int, int]:
        if method == "broadcast":
            result = trio_ws.broadcast(server.connections, message)
            return result.sent, result.skipped, result.closed
        sent = skipped = 0
        for ws in server.connections:
            try:
                await ws.send_message(message)
                sent += 1
            except trio_ws.ConnectionClosed:
                skipped += 1
        return sent, skipped, 0

    def buffered() -> list[int]:
        return [ws.buffered_amount for ws in server.connections]

    return server, send, buffered


async def websockets_server(nursery: Any, listeners: list[Any], args: argparse.Namespace) -> tuple[Any, Send, Any]:
    """A websockets.trio server in ``nursery``; it sends with websockets' own broadcast()."""
    from websockets.exceptions import ConnectionClosed  # type: ignore[import-not-found,unused-ignore]
    from websockets.trio.server import broadcast, serve  # type: ignore[import-not-found,unused-ignore]

    async def handler(ws: Any) -> None:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass

    server = await nursery.start(
        lambda task_status: serve(
            handler, listeners=listeners, compression=None, ping_interval=None, close_timeout=2, task_status=task_status
        )
    )

    async def send(method: str, message: bytes) -> tuple[int, int, int]:
        connections = server.connections
        await broadcast(connections, message)
        return len(connections), 0, 0

    def buffered() -> list[int]:
        return []  # websockets holds no queue: each send waits for its socket

    return server, send, buffered


async def server_main(args: argparse.Namespace) -> int:
    import trio

    raise_nofile()
    listeners = await trio.open_tcp_listeners(args.port, host=HOST, backlog=4096)
    for listener in listeners:
        if args.sndbuf:
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
    state: dict[str, Any] = {"sending": None}

    async with trio.open_nursery() as nursery:
        make = trio_ws_server if args.impl == "trio_ws" else websockets_server
        server, send, buffered = await make(nursery, listeners, args)

        async def run_send(command: dict[str, Any]) -> None:
            count, size, seq0, method = command["count"], command["size"], command["seq0"], command["method"]
            calls: list[float] = []
            recipients: list[int] = []
            totals = [0, 0, 0]
            state["sending"] = 0
            t0 = time.monotonic()
            for i in range(count):
                message = message_for(seq0 + i, size)
                started = time.perf_counter()
                counts = await send(method, message)
                calls.append(time.perf_counter() - started)
                recipients.append(sum(counts))
                for k in range(3):
                    totals[k] += counts[k]
                state["sending"] = i + 1
                await trio.lowlevel.checkpoint()
            emit(
                "SENT",
                {
                    "t0": t0,
                    "t1": time.monotonic(),
                    "calls": calls,
                    "recipients": recipients,
                    "sent": totals[0],
                    "skipped": totals[1],
                    "closed": totals[2],
                },
            )
            state["sending"] = None

        emit("READY", {"pid": os.getpid()})
        with trio.move_on_after(args.lifetime):
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line:
                    break
                command = json.loads(line)
                if command["cmd"] == "send":
                    nursery.start_soon(run_send, command)
                elif command["cmd"] == "stats":
                    amounts = buffered()
                    emit(
                        "STATS",
                        {
                            "connections": len(server.connections),
                            "sending": state["sending"],
                            "buffered_total": sum(amounts),
                            "buffered_max": max(amounts, default=0),
                        },
                    )
        nursery.cancel_scope.cancel()
    return 0


# --- the client process (asyncio, standard library only) -----------------------------------------


class ClientConn(asyncio.Protocol):
    """One connection: the handshake, then frames counted and checked as they come."""

    REQUEST = (
        b"GET /broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    def __init__(self, client: Client, slow: bool) -> None:
        self.client, self.slow = client, slow
        self.buffer = bytearray()
        self.open = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.expected = 0  # the next sequence number
        self.got = 0  # messages this phase
        self.gaps = 0  # messages skipped (for this connection) this phase
        self.errors = 0
        self.closed_by_server = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.open.set_exception(ConnectionError(bytes(buffer[:80]).decode(errors="replace")))
                return
            del buffer[: end + 4]
            self.open.set_result(None)
        position, size = 0, len(buffer)
        while size - position >= 2:
            length, start = buffer[position + 1] & 0x7F, position + 2
            if length == 126:
                if size - position < 4:
                    break
                length, start = (buffer[position + 2] << 8) | buffer[position + 3], position + 4
            elif length == 127:
                if size - position < 10:
                    break
                length, start = int.from_bytes(buffer[position + 2 : position + 10], "big"), position + 10
            end = start + length
            if end > size:
                break
            opcode = buffer[position] & 0x0F
            if opcode in (1, 2):
                seq = int.from_bytes(buffer[start : start + 8], "big") if length >= 8 else -1
                if 0 <= seq < self.client.phase_start:
                    pass  # late, from the phase before (a slow peer's small buffer): not counted
                elif seq < self.expected or length != self.client.size:
                    self.errors += 1
                    if os.environ.get("BROADCAST_DEBUG"):
                        print(
                            f"bad frame: seq {seq} expected {self.expected} length {length} slow {self.slow}",
                            file=sys.stderr,
                        )
                else:
                    self.gaps += seq - self.expected
                    self.expected = seq + 1
                    self.got += 1
                    self.client.delivered(self)
            elif opcode == 8:
                self.closed_by_server = True
            position = end
        if position:
            del buffer[:position]


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.conns: list[ClientConn] = []
        self.size = 0
        self.target = 0
        self.complete = 0  # fast connections that have every message of the phase
        self.total = 0  # messages delivered this phase (every connection)
        self.reported = True
        self.fast_count = 0  # set once every connection is open
        self.phase_start = 0  # the first sequence number of the phase

    def delivered(self, conn: ClientConn) -> None:
        self.total += 1
        if not conn.slow and conn.got == self.target:
            self.complete += 1
            if self.complete == self.fast_count and not self.reported:
                self.reported = True
                emit("GOT", {"t": time.monotonic(), **self.report()})

    def report(self) -> dict[str, Any]:
        fast = [c for c in self.conns if not c.slow]
        slow = [c for c in self.conns if c.slow]
        return {
            "delivered": self.total,
            "fast_complete": self.complete,
            "fast": len(fast),
            "fast_gaps": sum(c.gaps for c in fast),
            "fast_with_gaps": sum(1 for c in fast if c.gaps),
            "slow_got": sum(c.got for c in slow),
            "slow_gaps": sum(c.gaps for c in slow),
            "errors": sum(c.errors for c in self.conns),
            "closed_by_server": sum(1 for c in self.conns if c.closed_by_server),
        }

    async def open_all(self) -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(200)
        n, slow_every = self.args.connections, (self.args.connections // self.args.slow if self.args.slow else 0)

        async def one(index: int) -> None:
            slow = bool(slow_every) and index % slow_every == slow_every - 1
            async with limit:
                sock = socket.socket()
                sock.setblocking(False)
                if slow:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
                await loop.sock_connect(sock, (HOST, self.args.port))
                conn = ClientConn(self, slow)
                await loop.create_connection(lambda: conn, sock=sock)
                await conn.open
            self.conns.append(conn)

        await asyncio.gather(*(one(i) for i in range(n)))
        self.fast_count = sum(1 for conn in self.conns if not conn.slow)

    def expect(self, command: dict[str, Any]) -> None:
        self.size, self.target, self.phase_start = command["size"], command["count"], command["seq0"]
        self.complete = self.total = 0
        self.reported = False
        for conn in self.conns:
            conn.expected, conn.got, conn.gaps = command["seq0"], 0, 0

    def set_reading(self, reading: bool) -> None:
        for conn in self.conns:
            if conn.slow and conn.transport is not None:
                if reading:
                    conn.transport.resume_reading()
                else:
                    conn.transport.pause_reading()


async def client_main(args: argparse.Namespace) -> int:
    raise_nofile()
    client = Client(args)
    started = time.monotonic()
    try:
        await asyncio.wait_for(client.open_all(), args.lifetime)
    except (OSError, ConnectionError) as exc:
        emit("FAILED", {"error": f"{type(exc).__name__}: {exc}"})
        return 2
    emit("OPEN", {"connections": len(client.conns), "seconds": time.monotonic() - started})
    async for command in asyncio_commands(args.lifetime):
        if command["cmd"] == "expect":
            client.expect(command)
            emit("EXPECTING", {})
        elif command["cmd"] == "pause":
            client.set_reading(False)
            emit("PAUSED", {})
        elif command["cmd"] == "resume":
            client.set_reading(True)
            emit("RESUMED", {})
        elif command["cmd"] == "stats":
            emit("STATS", client.report())
    for conn in client.conns:
        if conn.transport is not None:
            conn.transport.abort()
    return 0


# --- what compression costs a broadcast (one process, socket pairs) ------------------------------


def sample_json(size: int, seq: int) -> str:
    """A JSON message of about ``size`` bytes that compresses as real data does (records, numbers)."""
    records: list[dict[str, object]] = []
    n = 0
    while len(json.dumps(records)) < size - 40:
        records.append({"id": seq * 1000 + n, "name": f"item-{(seq * 7 + n * 13) % 997}", "price": (n * 37) % 1000 / 7})
        n += 1
    return json.dumps({"seq": seq, "records": records})[:size]


async def compression_costs(args: argparse.Namespace) -> int:
    """The time of a broadcast() call per recipient, with and without permessage-deflate."""
    import trio

    import trio_ws

    raise_nofile()
    offers = {
        "no compression": None,
        "deflate, context takeover": "permessage-deflate",
        "deflate, server_no_context_takeover": "permessage-deflate; server_no_context_takeover",
        "deflate, compress=False": "permessage-deflate",
    }
    rows = []
    for name, offer in offers.items():
        async with trio.open_nursery() as nursery:
            peers: list[socket.socket] = []
            connections = []
            for _ in range(args.connections):
                ours, theirs = socket.socketpair()
                peers.append(theirs)
                extra = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
                theirs.sendall(ClientConn.REQUEST.replace(b"\r\n\r\n", f"\r\n{extra}\r\n".encode()))
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
                request = await trio_ws.wrap_server_stream(
                    nursery, stream, compression="deflate" if offer else None, disconnect_timeout=1
                )
                connections.append(await request.accept())
                theirs.recv(65536)
                theirs.setblocking(False)
            for size in SIZES:
                per_recipient = []
                for seq in range(args.messages):
                    message = sample_json(size, seq)
                    started = time.perf_counter()
                    result = trio_ws.broadcast(connections, message, compress=name != "deflate, compress=False")
                    per_recipient.append((time.perf_counter() - started) / result.sent)
                    await trio.lowlevel.checkpoint()
                    for peer in peers:  # keep the socket buffers empty
                        try:
                            while peer.recv(1 << 20):
                                pass
                        except BlockingIOError:
                            pass
                wire = sum(ws.statistics().bytes_sent for ws in connections)
                rows.append((name, size, median(per_recipient) * 1e6, wire))
                print(f"  {name:36} {size:5} B: {median(per_recipient) * 1e6:6.2f} us per recipient", flush=True)
            for peer in peers:  # (the peers answer no Close: they just go)
                peer.close()
            nursery.cancel_scope.cancel()
    print()
    print(f"| permessage-deflate ({args.connections:,} connections, JSON) | 64 B | 4 KiB |")
    print("|---|---:|---:|")
    for name in offers:
        cells = [f"{us:.1f} µs" for row_name, _, us, _ in rows if row_name == name]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


# --- the orchestrator --------------------------------------------------------------------------


class RssSampler:
    """The peak VmRSS of a process, sampled every 50 ms in a thread while running."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
            except OSError:
                return
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self.peak = rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def phase(
    server: Child,
    client: Child,
    method: str,
    size: int,
    count: int,
    seq0: int,
    timeout: float,
) -> dict[str, Any]:
    """Send ``count`` messages of ``size`` bytes; wait until every reading connection has them
    (at most ``timeout`` s), then until the send ends.  A row of the table."""
    client.request("EXPECTING", 10, cmd="expect", size=size, count=count, seq0=seq0)
    before = rss(server.pid)
    with RssSampler(server.pid) as sampler:
        server.send(cmd="send", method=method, size=size, count=count, seq0=seq0)
        got = client.expect("GOT", timeout)
        progress = -1
        while got is None:  # slow, or blocked? Blocked: no message sent for ``timeout`` s.
            sending = server.request("STATS", 10, cmd="stats")["sending"]
            if sending is None or sending == progress:
                break
            progress = sending
            got = client.expect("GOT", timeout)
        sent = server.expect("SENT", 1 if got is None else timeout)
        stats = server.request("STATS", 10, cmd="stats")
    row: dict[str, Any] = {
        "method": method,
        "size": size,
        "count": count,
        "rss_before": before,
        "rss_peak": sampler.peak,
        "buffered_total": stats["buffered_total"],
        "buffered_max": stats["buffered_max"],
        "blocked": sent is None,
        "complete": got is not None,
    }
    if sent is not None:
        per_recipient = [c / r for c, r in zip(sent["calls"], sent["recipients"], strict=True) if r]
        row.update(
            call_p50=median(sent["calls"]),
            call_max=max(sent["calls"]),
            per_recipient_us=median(per_recipient) * 1e6 if per_recipient else float("nan"),
            sent=sent["sent"],
            skipped=sent["skipped"],
            closed=sent["closed"],
            t0=sent["t0"],
        )
    report = got or client.request("STATS", 10, cmd="stats")
    row.update(report)
    if got is not None and sent is not None:
        row["msgs_per_s"] = report["delivered"] / max(1e-9, got["t"] - sent["t0"])
    return row


def run_method(
    method: str,
    args: argparse.Namespace,
    write_limit: int,
    slow: int,
    sizes: tuple[int, ...],
    count_for: Callable[[int], int],
) -> list[dict[str, Any]]:
    """One server and one client process: each size with everybody reading, then (if
    ``slow``) with the slow ones not reading."""
    impl = METHODS[method]
    python = sys.executable if impl == "trio_ws" else PEERS_PY
    port = free_port()
    lifetime = str(args.timeout * 10 + 300)
    server_argv = ["server", "--impl", impl, "--port", str(port), "--write-limit", str(write_limit)]
    server = Child(
        f"{method} server", __file__, [*server_argv, "--sndbuf", str(args.sndbuf), "--lifetime", lifetime], python
    )
    client: Child | None = None
    rows: list[dict[str, Any]] = []
    try:
        if server.expect("READY", 30) is None:
            raise RuntimeError("the server did not start")
        client = Child(
            "client",
            __file__,
            [
                "client",
                "--port",
                str(port),
                "--connections",
                str(args.connections),
                "--slow",
                str(slow),
                "--lifetime",
                lifetime,
            ],
        )
        opened = client.expect("OPEN", 120)
        if opened is None:
            raise RuntimeError("the client did not open its connections in 120 s")
        seq = 0
        modes = [False, True] if slow else [False]
        for with_slow in modes:
            for size in sizes:
                count = count_for(size) if not with_slow else args.slow_messages_for(size)
                if with_slow:
                    client.request("PAUSED", 10, cmd="pause")
                timeout = args.block_timeout if with_slow else args.timeout
                row = phase(server, client, method, size, count, seq, timeout)
                row.update(slow_peers=slow if with_slow else 0, write_limit=write_limit, connections=args.connections)
                seq += count
                if with_slow:
                    client.request("RESUMED", 10, cmd="resume")
                    if row["blocked"]:  # the slow peers read: the send can finish
                        sent = server.expect("SENT", args.timeout)
                        row["unblocked"] = sent is not None
                        if sent is None:
                            raise RuntimeError(f"{method}: the send did not finish after the slow peers read")
                        client.expect("GOT", args.timeout)  # (this phase's, late)
                    time.sleep(1)  # the slow peers drain what was queued for them
                    after = client.request("STATS", 10, cmd="stats")
                    row["slow_errors"] = after["errors"]
                    row["slow_got_after"] = after["slow_got"]
                rows.append(row)
                print(summary(row), flush=True)
    finally:
        if client is not None:
            client.stop()
        server.stop()
    return rows


def summary(row: dict[str, Any]) -> str:
    text = f"  {row['method']:10} {row['size']:5} B x {row['count']:4}"
    if row.get("slow_peers"):
        text += f" ({row['slow_peers']} slow)"
    if row["blocked"]:
        text += f": BLOCKED; {row['delivered']:,} delivered"
    else:
        text += f": {row['per_recipient_us']:.2f} us/recipient, call p50 {row['call_p50'] * 1e3:.1f} ms"
        if "msgs_per_s" in row:
            text += f", {row['msgs_per_s']:,.0f} msgs/s"
    text += f", RSS +{(row['rss_peak'] - row['rss_before']) / MIB:.1f} MiB"
    text += f", fast gaps {row['fast_gaps']}, errors {row['errors']}"
    return text


def check(row: dict[str, Any]) -> list[str]:
    """What is wrong with a trio_ws broadcast row (the promises of the issue)."""
    problems = []
    name = f"{row['method']} {row['size']} B (slow {row['slow_peers']}, write_limit {row['write_limit']})"
    if row["errors"]:
        problems.append(f"{name}: {row['errors']} bad frames")
    if row["method"] != "broadcast":
        return problems
    if row["blocked"] or not row["complete"]:
        problems.append(f"{name}: the reading peers did not get every message")
    if row["fast_gaps"]:
        problems.append(f"{name}: reading peers missed {row['fast_gaps']} messages")
    bound = row["slow_peers"] * (row["write_limit"] + row["size"] + 14) + SLACK
    growth = row["rss_peak"] - row["rss_before"]
    if row["slow_peers"] and growth > bound:
        problems.append(f"{name}: RSS grew {growth / MIB:.1f} MiB, more than {bound / MIB:.1f} MiB")
    return problems


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| method | size | slow peers | messages | time per recipient | send call p50 / max | delivered msgs/s "
        "| reading peers got all | skipped | server RSS growth | held for slow peers |"
    )
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        growth = (row["rss_peak"] - row["rss_before"]) / MIB
        if row["blocked"]:
            timing = call = "blocked"
            rate = f"({row['delivered']:,} delivered, then stuck)"
        else:
            timing = f"{row['per_recipient_us']:.2f} µs"
            call = f"{row['call_p50'] * 1e3:.1f} / {row['call_max'] * 1e3:.0f} ms"
            rate = f"{row['msgs_per_s']:,.0f}" if "msgs_per_s" in row else "-"
        got_all = "yes" if row["complete"] and not row["fast_gaps"] else f"no ({row['fast_gaps']} missed)"
        held = f"{row['buffered_max'] / 1024:.0f} KiB max" if row["method"] != "websockets" else "-"
        lines.append(
            f"| {row['method']} | {row['size']} B | {row['slow_peers']} | {row['count']} | {timing} | {call} | {rate} "
            f"| {got_all} | {row.get('skipped', '-')} | {growth:+.1f} MiB | {held} |"
        )
    return "\n".join(lines)


def main_bench(args: argparse.Namespace) -> int:
    if not PEERS_PY.exists() and "websockets" in args.methods:
        sys.path.insert(0, str(HERE))
        from bench import ensure_peers

        ensure_peers()
    raise_nofile()
    slow = max(1, args.connections // 100) if args.slow is None else args.slow
    messages: int = args.messages
    slow_messages: int = args.slow_messages

    def normal_count(size: int) -> int:
        return messages

    def slow_count(size: int) -> int:
        # Enough to fill a slow peer's kernel buffers and then its write_limit, for 4 KiB
        return messages if size < 1024 else slow_messages

    args.slow_messages_for = slow_count
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.monotonic()
    if args.sweep:
        for limit in args.limits:
            print(f"write_limit {limit:,}: {args.connections:,} connections, {slow} never reading", flush=True)
            got = run_method("broadcast", args, limit, slow, (4096,), normal_count)
            rows += [row for row in got if row["slow_peers"]]
    else:
        for method in args.methods:
            print(f"{method}: {args.connections:,} connections, then {slow} of them never reading", flush=True)
            try:
                rows += run_method(method, args, args.write_limit, slow, SIZES, normal_count)
            except RuntimeError as exc:
                failures.append(f"{method}: {exc}")
                print(f"  {method}: {exc}", flush=True)
    for row in rows:
        failures += check(row)
    print()
    print(table(rows))
    print()
    command = " ".join(["python benchmarks/broadcast.py", *sys.argv[1:]])
    print(f"wall time {time.monotonic() - started:.0f} s; command: {command}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"broadcast-{stamp}.json").write_text(json.dumps(rows, indent=1))
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def size_arg(text: str) -> int:
    units = {"K": 2**10, "M": 2**20}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    p = sub.add_parser("server")
    p.add_argument("--impl", choices=["trio_ws", "websockets_trio"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--write-limit", type=size_arg, default=2**16)
    p.add_argument("--sndbuf", type=size_arg, default=0)
    p.add_argument("--lifetime", type=float, default=900)
    p = sub.add_parser("compression", help="what permessage-deflate costs a broadcast, per recipient")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--messages", type=int, default=20)
    p = sub.add_parser("client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--slow", type=int, default=0, help="how many of them never read (spread evenly)")
    p.add_argument("--lifetime", type=float, default=900)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--slow", type=int, default=None, help="connections that never read (default: 1 %%)")
    parser.add_argument("--messages", type=int, default=20, help="messages of each size, everybody reading")
    parser.add_argument(
        "--slow-messages", type=int, default=40, help="4 KiB messages with slow peers (enough to fill them)"
    )
    parser.add_argument("--write-limit", type=size_arg, default=2**16)
    parser.add_argument("--sndbuf", type=size_arg, default=32 * 2**10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--timeout", type=float, default=120, help="seconds for one phase")
    parser.add_argument("--block-timeout", type=float, default=20, help="seconds before a send counts as blocked")
    parser.add_argument("--quick", action="store_true", help="2,000 connections, 10 messages")
    parser.add_argument("--sweep", action="store_true", help="write_limit 16 KiB, 64 KiB, 256 KiB, 1 MiB")
    parser.add_argument("--limits", nargs="+", type=size_arg, default=[2**14, 2**16, 2**18, 2**20])
    args = parser.parse_args()
    if args.role == "server":
        import trio

        code: int = trio.run(server_main, args)
        return code
    if args.role == "client":
        return int(asyncio.run(client_main(args)))
    if args.role == "compression":
        import trio

        status: int = trio.run(compression_costs, args)
        return status
    if args.quick:
        args.connections = min(args.connections, 2000)
        args.messages = min(args.messages, 10)
    if args.sweep and "--connections" not in sys.argv:
        args.connections = 1000
    if args.sweep and "--slow" not in sys.argv:
        args.slow = args.connections // 10
    if args.sweep and "--slow-messages" not in sys.argv:
        args.slow_messages = 320
    return main_bench(args)


if __name__ == "__main__":
    sys.exit(main())
