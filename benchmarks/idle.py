"""Many idle connections to one trio_ws server process: memory, open time, and the latency of an active one.

    python benchmarks/idle.py            # 100,000 connections (capped by the open-files limit); 75-90 s for 19,900
    python benchmarks/idle.py --quick    # 2,000 connections, under 30 s

and the processes it starts (which can also be run by hand):

    python benchmarks/idle.py server --port P [--ping-interval S] [--lifetime S]
    python benchmarks/idle.py client --port P --source 127.0.0.N --connections N [--lifetime S]

The server is a trio_ws ``serve_websocket`` echo server on 127.0.0.1 (plain
ws://), and it is what is measured.  Client processes open the idle
connections; each sends one message, reads its echo, and then stays idle,
answering the server's pings.  Each client process binds its sockets to a
source address of its own (127.0.0.2, 127.0.0.3, ...) before connecting, so
that every process has the whole ephemeral port range to itself: one source
address holds at most about 28,000 connections to one server port.

The clients are lean on purpose: asyncio and a frame parser of a few lines
(the standard library only), without the cyclic garbage collector, so that one
process holds ~19,000 connections in little memory, opens them quickly and
never pauses, leaving the two cores to the server.

Two runs, each with a fresh server process:

1. keepalive off: the server's RSS before and after every connection is open
   (after ``gc.collect()`` and a settle), hence KiB per connection; the time to
   open them all; and the round-trip time of one more, active, connection
   (``/probe``, a blocking socket in this process, opened for the window)
   echoing ``--echoes`` messages paced over the window, before any idle
   connection and with all of them open.
2. keepalive on (``ping_interval=--ping-interval``, ``ping_timeout`` the same):
   the same, and over a window longer than the interval, so that the server's
   keepalive pings every idle connection at least once while the probe runs.
   The clients stamp each connection's first ping in the window; the server
   counts the ping and pong bytes (``statistics()``) and its connections'
   keepalive round trips (``latency``).

Each window also reports the server's CPU share and its garbage collector's
passes (how many full ones, and the longest).

The server can hold as many connections as its RLIMIT_NOFILE allows: this
script raises its soft limit to the hard limit (the children inherit it) and,
when the hard limit is lower than ``--connections`` plus a reserve, opens fewer
connections and says so.  Raising the hard limit needs CAP_SYS_RESOURCE.

Every process has a lifetime and stops when the orchestrator's pipe closes;
the orchestrator bounds every step and stops only its own children, by their
handles.  Exit status: 0 when every check passed, 1 when one failed (an error,
a connection missing or closed, one not pinged in the keepalive window, memory
over ``--max-kib``),
2 when a process died or a step timed out.  Results are saved in
``benchmarks/results/idle-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import gc
import json
import math
import os
import resource
import socket
import struct
import sys
import time
from collections import Counter
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from _procs import (  # benchmarks/_procs.py (on sys.path)
    Child,
    ChildFailed,
    asyncio_commands,
    cpu_seconds,
    emit,
    free_port,
    raise_nofile,
    rss,
)

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # the server; clients bind 127.0.0.2 and up
RESERVE = 100  # descriptors the server keeps for itself (listener, epoll, wakeup pipe, stdio, probe)
HELLO = b"hello"
PROBE_SIZE = 32
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # any base64 of 16 bytes will do: the server checks the form only


# --- frames (both client kinds) -------------------------------------------------------------------


def request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked(opcode: int, payload: bytes) -> bytes:
    """A final client frame (masked, as RFC 6455 requires) with a short payload."""
    size = len(payload)
    assert size <= 125, "short frames only"
    key = os.urandom(4)
    stream = (key * (size // 4 + 1))[:size]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")
    return bytes((0x80 | opcode, 0x80 | size)) + key + body


def split_frames(buffer: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The complete frames at the start of ``buffer`` (a server's: unmasked) as (opcode, payload),
    and how many bytes they took."""
    frames: list[tuple[int, bytes]] = []
    position, size = 0, len(buffer)
    while size - position >= 2:
        length, start = buffer[position + 1] & 0x7F, position + 2
        if length == 126:
            if size - position < 4:
                break
            length, start = struct.unpack_from("!H", buffer, position + 2)[0], position + 4
        elif length == 127:
            if size - position < 10:
                break
            length, start = struct.unpack_from("!Q", buffer, position + 2)[0], position + 10
        if start + length > size:
            break
        frames.append((buffer[position] & 0x0F, bytes(buffer[start : start + length])))
        position = start + length
    return frames, position


def head_end(buffer: bytearray) -> int:
    """Where the HTTP response head ends in ``buffer`` (-1: not yet); raise unless it is a 101."""
    end = buffer.find(b"\r\n\r\n")
    if end >= 0 and not buffer.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(bytes(buffer[:80]).decode(errors="replace"))
    return end


# --- the server process (trio, trio_ws) -----------------------------------------------------------


class GcPauses:
    """The cyclic garbage collector's passes in this process, by generation: how many, and the
    longest.  A full (generation 2) pass walks every live object: with tens of thousands of
    connections it stops the server long enough to show in a round trip."""

    def __init__(self) -> None:
        self.started = 0.0
        self.passes = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        generation = info["generation"]
        self.passes[generation] += 1
        self.longest[generation] = max(self.longest[generation], time.perf_counter() - self.started)

    def take(self) -> dict[str, Any]:
        """The passes since the last call (or the start)."""
        taken = {"passes": self.passes, "longest_ms": [round(t * 1e3, 2) for t in self.longest]}
        self.passes, self.longest = [0, 0, 0], [0.0, 0.0, 0.0]
        return taken


async def server_main(args: argparse.Namespace) -> int:
    import trio

    import trio_ws

    soft = raise_nofile()
    pauses = GcPauses()
    probes: set[trio_ws.WebSocketConnection] = set()
    endings: Counter[str] = Counter()

    async def echo(request: trio_ws.WebSocketRequest) -> None:
        ws = await request.accept()
        probe = request.path == "/probe"
        if probe:
            probes.add(ws)
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_ws.ConnectionClosed as exc:
            if not probe:  # a probe closes after each window; an idle connection should never end
                endings[str(exc.reason.code if exc.reason else None)] += 1
        finally:
            probes.discard(ws)

    def counters() -> dict[str, Any]:
        """What the keepalive did on the idle connections: bytes both ways, and round trips."""
        started = time.perf_counter()
        sent = received = 0
        latencies: list[float] = []
        for ws in server.connections:
            if ws in probes:
                continue
            stats = ws.statistics()
            sent += stats.bytes_sent
            received += stats.bytes_received
            if stats.latency is not None:
                latencies.append(stats.latency)
        latencies.sort()
        try:  # the server's keepalive payload (a task per connection pinged with 4 random bytes)
            from trio_ws._keepalive import SWEEP_PAYLOAD

            payload = len(SWEEP_PAYLOAD)
        except ImportError:
            payload = 4
        return {
            "ping_payload": payload,
            "bytes_sent": sent,
            "bytes_received": received,
            "with_latency": len(latencies),
            "rtt_p50_us": quantile(latencies, 0.50) * 1e6,
            "rtt_p99_us": quantile(latencies, 0.99) * 1e6,
            "seconds": time.perf_counter() - started,
        }

    interval = args.ping_interval or None
    async with trio.open_nursery() as nursery:
        serve = partial(trio_ws.serve_websocket, ping_interval=interval, ping_timeout=interval, disconnect_timeout=2)
        server: trio_ws.WebSocketServer = await nursery.start(serve, echo, HOST, args.port, None)
        emit("READY", {"pid": os.getpid(), "nofile": soft})
        with trio.move_on_after(args.lifetime):
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line:
                    break
                command = json.loads(line)["cmd"]
                if command == "stats":
                    emit("STATS", {"connections": len(server.connections), "endings": dict(endings)})
                elif command == "gc":
                    gc.collect()
                    emit("GC", {})
                elif command == "counters":
                    emit("COUNTERS", counters())
                elif command == "pauses":
                    emit("PAUSES", pauses.take())
        # The clients are gone by now (the orchestrator stops them first): closing is quick.
        nursery.cancel_scope.cancel()
    return 0


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of a sorted list (nearest rank); 0.0 for an empty one."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- the client process (asyncio, standard library only) -----------------------------------------


class Phase(enum.Enum):
    HANDSHAKE = "handshake"  # the upgrade request is sent
    ECHO = "echo"  # upgraded; the one message is sent, its echo awaited
    IDLE = "idle"  # open and idle: answering pings
    CLOSED = "closed"  # the server sent a Close, or the socket went away


class IdleConnection(asyncio.Protocol):
    """One idle connection: the upgrade, one echoed message, then pongs to the server's pings."""

    __slots__ = ("buffer", "client", "first_ping", "opened", "phase", "transport")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.phase = Phase.HANDSHAKE
        self.buffer = bytearray()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.first_ping = 0.0  # the time of the first ping since the last mark (0: none yet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(request("/idle"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed in phase {self.phase.value}"))
        elif self.phase is Phase.IDLE:
            self.client.lost += 1
        self.phase = Phase.CLOSED

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        if self.phase is Phase.HANDSHAKE:
            try:
                end = head_end(self.buffer)
            except ConnectionError as exc:
                self.opened.set_exception(exc)
                self.transport.abort()
                return
            if end < 0:
                return
            del self.buffer[: end + 4]
            self.phase = Phase.ECHO
            self.transport.write(masked(1, HELLO))
        frames, used = split_frames(self.buffer)
        del self.buffer[:used]
        for opcode, payload in frames:
            if opcode == 9:
                self.transport.write(masked(10, payload))
                self.client.pinged(self)
            elif opcode == 8:
                self.phase = Phase.CLOSED
                self.client.closed_by_server += 1
                self.transport.write(masked(8, payload[:2]))
            elif self.phase is Phase.ECHO and payload == HELLO:
                self.phase = Phase.IDLE
                self.opened.set_result(None)
            else:
                self.client.unexpected += 1


class Client:
    """The connections of one client process, and what they saw."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.connections: list[IdleConnection] = []
        self.errors: Counter[str] = Counter()
        self.first_error = ""
        self.pings = 0  # since the last mark
        self.lost = self.closed_by_server = self.unexpected = 0

    def pinged(self, connection: IdleConnection) -> None:
        self.pings += 1
        if not connection.first_ping:
            connection.first_ping = time.monotonic()  # CLOCK_MONOTONIC: the same in every process

    def mark(self) -> None:
        self.pings = 0
        for connection in self.connections:
            connection.first_ping = 0.0

    def report(self) -> dict[str, Any]:
        return {
            "open": sum(1 for c in self.connections if c.phase is Phase.IDLE),
            "pings": self.pings,
            "first_pings": [round(c.first_ping, 6) for c in self.connections if c.first_ping],
            "lost": self.lost,
            "closed_by_server": self.closed_by_server,
            "unexpected": self.unexpected,
        }

    async def open_all(self) -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(self.args.in_flight)
        # Linux: choose the port at connect(), from the 4-tuple, not at bind() (one per address).
        no_port = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

        async def one() -> None:
            async with limit:
                sock = socket.socket()
                try:
                    sock.setsockopt(socket.IPPROTO_IP, no_port, 1)
                    sock.bind((self.args.source, 0))
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (HOST, self.args.port))
                    connection = IdleConnection(self)
                    await loop.create_connection(lambda: connection, sock=sock)
                    await connection.opened
                except OSError as exc:
                    sock.close()
                    self.errors[type(exc).__name__] += 1
                    self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
                    return
            self.connections.append(connection)

        await asyncio.gather(*(one() for _ in range(self.args.connections)))


async def client_main(args: argparse.Namespace) -> int:
    nofile = raise_nofile()
    # A load generator must not stall: a full collector pass over 10,000 connections' objects
    # takes a good part of a second, during which pongs would wait and the server look slow.
    # What a client leaves for the collector (cycles) is small and lives as long as the process.
    gc.disable()
    loop = asyncio.get_running_loop()
    client = Client(args)
    emit("READY", {"pid": os.getpid(), "nofile": nofile})
    deadline = loop.time() + args.lifetime
    async for message in asyncio_commands(args.lifetime):
        command = message["cmd"]
        if command == "open":
            started = time.monotonic()
            try:
                await asyncio.wait_for(client.open_all(), max(0.1, deadline - loop.time()))
            except TimeoutError:
                emit("FAILED", {"error": "opening outlived the lifetime"})
                break
            emit(
                "OPEN",
                {
                    "connections": len(client.connections),
                    "seconds": time.monotonic() - started,
                    "errors": dict(client.errors),
                    "first_error": client.first_error,
                },
            )
        elif command == "mark":
            client.mark()
            emit("MARKED", {})
        elif command == "stats":
            emit("STATS", client.report())
    for connection in client.connections:
        if connection.transport is not None:
            connection.transport.abort()
    return 0


# --- the orchestrator ---------------------------------------------------------------------------


class StepFailed(ChildFailed):
    """A process died or a step did not finish in time (exit status 2)."""


class Probe:
    """The one active connection: a blocking socket in this process, echoing binary messages."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(request("/probe"))
        self.buffer = bytearray()
        while (end := head_end(self.buffer)) < 0:
            self.buffer += self._recv()
        del self.buffer[: end + 4]
        self.pongs = 0

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise StepFailed("the server closed the probe connection")
        return data

    def echo(self, payload: bytes) -> float:
        """One round trip, in seconds (pings met on the way are answered)."""
        started = time.perf_counter()
        self.sock.sendall(masked(2, payload))
        while True:
            frames, used = split_frames(self.buffer)
            del self.buffer[:used]
            for opcode, body in frames:
                if opcode == 9:
                    self.sock.sendall(masked(10, body))
                    self.pongs += 1
                elif opcode == 2 and body == payload:
                    return time.perf_counter() - started
                else:
                    raise StepFailed(f"probe: unexpected frame {opcode} {body[:20]!r}")
            self.buffer += self._recv()

    def run(self, count: int, window: float) -> list[float]:
        """``count`` round trips, one every ``window / count`` seconds (paced, so that each is
        measured alone and the whole window is sampled); sorted."""
        spacing, started = window / count, time.perf_counter()
        rtts = []
        for i in range(count):
            wait = started + i * spacing - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # pacing, not synchronisation
            rtts.append(self.echo(i.to_bytes(PROBE_SIZE, "big")))
        return sorted(rtts)

    def close(self) -> None:
        try:
            self.sock.sendall(masked(8, (1000).to_bytes(2, "big")))
        except OSError:
            pass
        self.sock.close()


def read_limits(asked: int, reserve: int) -> dict[str, Any]:
    """The limits that decide how many connections one server process can hold here."""
    soft = raise_nofile()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = asked + reserve
    raising = "not needed"
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # needs CAP_SYS_RESOURCE; the children would inherit it
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft = hard = wanted
            raising = "raised"
        except (ValueError, OSError) as exc:
            raising = f"refused ({type(exc).__name__}: {exc})"

    def sysctl(name: str) -> str:
        try:
            return Path("/proc/sys", *name.split(".")).read_text().strip().replace("\t", " ")
        except OSError:
            return "?"

    cap = asked if hard == resource.RLIM_INFINITY else max(0, min(asked, soft - reserve))
    return {
        "nofile_soft": soft,
        "nofile_hard": hard,
        "raising_the_hard_limit": raising,
        "fs.nr_open": sysctl("fs.nr_open"),
        "fs.file-max": sysctl("fs.file-max"),
        "net.ipv4.ip_local_port_range": sysctl("net.ipv4.ip_local_port_range"),
        "net.core.somaxconn": sysctl("net.core.somaxconn"),
        "connections": cap,
    }


def quantiles_us(rtts: list[float]) -> dict[str, float]:
    return {"p50_us": quantile(rtts, 0.50) * 1e6, "p99_us": quantile(rtts, 0.99) * 1e6, "max_us": rtts[-1] * 1e6}


def sweep_span(first_pings: list[float], interval: float) -> float:
    """How long one keepalive round takes to reach every connection: the shortest arc of the
    ``interval``-long cycle that holds every connection's first ping (pings repeat every interval,
    so a round that starts before the window and ends in it is one round)."""
    if len(first_pings) < 2:
        return 0.0
    times = sorted(first_pings)
    largest_gap = max(max(b - a for a, b in pairwise(times)), times[0] + interval - times[-1])
    return max(0.0, interval - largest_gap)


class Run:
    """One server process, the client processes and the probe: opened, measured and stopped."""

    def __init__(self, args: argparse.Namespace, connections: int, interval: float | None) -> None:
        self.args, self.n, self.interval = args, connections, interval
        self.result: dict[str, Any] = {"connections": connections, "ping_interval": interval}
        self.problems: list[str] = []
        self.server: Child | None = None
        self.clients: list[Child] = []

    def start(self) -> None:
        args, port = self.args, free_port()
        self.port = port
        lifetime = str(args.lifetime)
        server_argv = ["server", "--port", str(port), "--lifetime", lifetime]
        self.server = Child("server", __file__, [*server_argv, "--ping-interval", str(self.interval or 0)])
        self.result["server_nofile"] = self.server.need("READY", 30)["nofile"]
        shares = split(self.n, args.clients)
        for i, share in enumerate(shares):
            source = f"127.0.0.{2 + i}"
            argv = ["client", "--port", str(port), "--source", source, "--connections", str(share)]
            self.clients.append(Child(f"client {source}", __file__, [*argv, "--lifetime", lifetime]))
        for client in self.clients:
            client.need("READY", 30)
        self.result["clients"] = [{"source": f"127.0.0.{2 + i}", "connections": s} for i, s in enumerate(shares)]
        self.open_probe().close()  # warm-up: the server's code paths run before anything is measured

    def open_probe(self) -> Probe:
        """A new active connection, after 200 echoes.  New for each window: a blocking socket
        answers pings only while it echoes, and the keepalive would close one left waiting."""
        probe = Probe(self.port)
        try:
            probe.run(200, 0.0)
        except BaseException:
            probe.close()
            raise
        return probe

    def stop(self) -> None:
        for client in self.clients:  # first: the server then sees every connection end at once
            client.stop()
        if self.server is not None:
            self.server.stop()

    def settled_rss(self) -> int:
        assert self.server is not None
        self.server.request("GC", 30, cmd="gc")
        time.sleep(self.args.settle)
        return rss(self.server.pid)

    def window(self, name: str) -> None:
        """The probe's round trips over one window, and the server's CPU meanwhile."""
        assert self.server is not None
        probe = self.open_probe()
        try:
            self.server.request("PAUSES", 30, cmd="pauses")
            cpu, started = cpu_seconds(self.server.pid), time.monotonic()
            rtts = probe.run(self.args.echoes, self.args.window)
            wall = time.monotonic() - started
            cpu = cpu_seconds(self.server.pid) - cpu
            pauses = self.server.request("PAUSES", 30, cmd="pauses")
        finally:
            probe.close()
        self.result[name] = {
            **quantiles_us(rtts),
            "echoes": len(rtts),
            "seconds": wall,
            "server_cpu": cpu / wall,
            "server_gc": pauses,
        }

    def open_all(self) -> None:
        assert self.server is not None
        rss_before, cpu, started = self.settled_rss(), cpu_seconds(self.server.pid), time.monotonic()
        for client in self.clients:
            client.send(cmd="open")
        timeout = 60 + self.n / 200
        opened = [client.need("OPEN", timeout) for client in self.clients]
        seconds = time.monotonic() - started
        cpu_open = cpu_seconds(self.server.pid) - cpu
        got = sum(o["connections"] for o in opened)
        errors: Counter[str] = Counter()
        for o in opened:
            errors.update(o["errors"])
            if o["first_error"]:
                self.problems.append(f"opening: {o['first_error']}")
        if got != self.n:
            self.problems.append(f"opened {got} of {self.n} connections ({dict(errors)})")
        on_server = self.server.request("STATS", 30, cmd="stats")["connections"]
        if on_server != got:
            self.problems.append(f"the server holds {on_server} connections, not {got}")
        rss_after = self.settled_rss()
        self.result.update(
            opened=got,
            open_errors=dict(errors),
            open_seconds=seconds,
            opens_per_second=got / seconds,
            open_server_cpu=cpu_open / seconds,
            rss_before=rss_before,
            rss_after=rss_after,
            kib_per_connection=(rss_after - rss_before) / max(got, 1) / 1024,
        )

    def sweep_window(self) -> None:
        """The probe's window while the keepalive pings every idle connection at least once."""
        assert self.server is not None
        assert self.interval is not None
        before = self.server.request("COUNTERS", 30, cmd="counters")
        for client in self.clients:
            client.request("MARKED", 30, cmd="mark")
        self.window("sweep")
        after = self.server.request("COUNTERS", 30, cmd="counters")
        reports = [client.request("STATS", 60, cmd="stats") for client in self.clients]
        first = [t for r in reports for t in r["first_pings"]]
        pings = sum(r["pings"] for r in reports)
        span = sweep_span(first, self.interval)
        payload = after.get("ping_payload", 4)
        ping_bytes, pong_bytes = 2 + payload, 6 + payload  # 2 header bytes, and a 4-byte mask for a pong
        self.result["sweep"].update(
            pinged_connections=len(first),
            pings_received=pings,
            pings_sent_by_server=(after["bytes_sent"] - before["bytes_sent"]) / ping_bytes,
            pongs_received_by_server=(after["bytes_received"] - before["bytes_received"]) / pong_bytes,
            sweep_seconds=span,
            pings_per_second=len(first) / span if span else 0.0,
            keepalive_rtt_p50_us=after["rtt_p50_us"],
            keepalive_rtt_p99_us=after["rtt_p99_us"],
            counters_seconds=after["seconds"],
        )
        if len(first) != self.result["opened"]:
            self.problems.append(f"the keepalive pinged {len(first)} of {self.result['opened']} idle connections")

    def finish(self) -> None:
        """Nothing closed by surprise: every connection is still there at the end."""
        assert self.server is not None
        stats = self.server.request("STATS", 30, cmd="stats")
        reports = [client.request("STATS", 60, cmd="stats") for client in self.clients]
        lost = sum(r["lost"] + r["closed_by_server"] for r in reports)
        unexpected = sum(r["unexpected"] for r in reports)
        self.result.update(server_endings=stats["endings"], client_lost=lost, client_unexpected=unexpected)
        if stats["endings"] or lost or unexpected:
            self.problems.append(
                f"connections ended: server {stats['endings']}, clients {lost}, odd frames {unexpected}"
            )
        if stats["connections"] != self.result["opened"]:
            self.problems.append(f"{stats['connections']} connections left of {self.result['opened']}")


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measure(args: argparse.Namespace, connections: int, interval: float | None) -> tuple[dict[str, Any], list[str]]:
    run = Run(args, connections, interval)
    try:
        run.start()
        if interval is None:
            run.window("alone")  # before any idle connection: the reference
        run.open_all()
        if interval is None:
            run.window("idle")
        else:
            run.result["sweep"] = {}
            run.sweep_window()
        run.finish()
    finally:
        run.stop()
    return run.result, run.problems


def fmt_us(value: float) -> str:
    return f"{value:,.0f} µs"


def window_cells(window: dict[str, Any]) -> str:
    """The probe's round trips, the server's CPU and its full GC passes in one window."""
    gc_full = window["server_gc"]
    return (
        f"{fmt_us(window['p50_us'])} | {fmt_us(window['p99_us'])} | {fmt_us(window['max_us'])} "
        f"| {window['server_cpu']:.0%} | {gc_full['passes'][2]} ({gc_full['longest_ms'][2]:,.0f} ms) |"
    )


def table(limits: dict[str, Any], idle: dict[str, Any], sweep: dict[str, Any], max_kib: float) -> str:
    rows = [
        "| phase | connections | open time | opens/s | server KiB/conn | probe p50 | probe p99 | probe max "
        "| server CPU | full GC passes (longest) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| one connection alone | 0 | | | | {window_cells(idle['alone'])}",
    ]
    for label, run, window in (
        ("all idle, keepalive off", idle, idle["idle"]),
        (f"keepalive sweep (ping every {sweep['ping_interval']:g} s)", sweep, sweep["sweep"]),
    ):
        rows.append(
            f"| {label} | {run['opened']:,} | {run['open_seconds']:.1f} s | {run['opens_per_second']:,.0f} "
            f"| {run['kib_per_connection']:.1f} | {window_cells(window)}"
        )
    s = sweep["sweep"]
    lines = [
        *rows,
        "",
        f"Keepalive window ({s['seconds']:.1f} s): {s['pinged_connections']:,} of {sweep['opened']:,} idle connections "
        f"pinged ({s['pings_received']:,} pings received by clients; server counters: "
        f"{s['pings_sent_by_server']:,.0f} pings sent, {s['pongs_received_by_server']:,.0f} pongs received); "
        f"one round reaches them all in {s['sweep_seconds']:.2f} s ({s['pings_per_second']:,.0f} pings/s); "
        f"keepalive round trip p50 {fmt_us(s['keepalive_rtt_p50_us'])}, p99 {fmt_us(s['keepalive_rtt_p99_us'])}.",
        f"Server RSS {idle['rss_before'] / 2**20:.1f} MiB before, {idle['rss_after'] / 2**20:.1f} MiB with "
        f"{idle['opened']:,} idle connections (target: at most {max_kib:g} KiB per connection); "
        f"server CPU while opening {idle['open_server_cpu']:.0%} (keepalive run {sweep['open_server_cpu']:.0%}). "
        f"RLIMIT_NOFILE {limits['nofile_soft']:,} (hard {limits['nofile_hard']:,}).",
    ]
    return "\n".join(lines)


def main_bench(args: argparse.Namespace) -> int:
    limits = read_limits(args.connections, RESERVE)
    n = limits["connections"]
    print("limits: " + ", ".join(f"{k} {v}" for k, v in limits.items()), flush=True)
    if n < args.connections:
        bar = "!" * 100
        print(
            f"{bar}\n!!! CAPPED: {n:,} connections, not {args.connections:,}. One process may hold "
            f"{limits['nofile_hard']:,} descriptors here (RLIMIT_NOFILE hard limit; raising it needs "
            f"CAP_SYS_RESOURCE: {limits['raising_the_hard_limit']}),\n"
            f"!!! and the server keeps {RESERVE} for itself. On a machine that allows it, "
            f"`ulimit -Hn {args.connections + RESERVE}` before the run gives all {args.connections:,}.\n{bar}",
            flush=True,
        )
    if n < 1:
        print("no connection possible under these limits", file=sys.stderr)
        return 2
    per_client = limits["nofile_soft"] - RESERVE
    args.clients = max(args.clients, math.ceil(n / min(args.per_client, per_client)))
    print(
        f"{n:,} idle connections from {args.clients} client processes (127.0.0.2-{1 + args.clients}); "
        f"window {args.window:g} s, {args.echoes:,} echoes; keepalive run: ping every {args.ping_interval:g} s",
        flush=True,
    )
    started = time.monotonic()
    try:
        idle, problems = measure(args, n, None)
        print(f"keepalive off: {idle['opened']:,} open in {idle['open_seconds']:.1f} s", flush=True)
        sweep, more = measure(args, n, args.ping_interval)
        problems += more
    except (ChildFailed, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 2
    if idle["kib_per_connection"] > args.max_kib:
        problems.append(f"{idle['kib_per_connection']:.2f} KiB per idle connection (at most {args.max_kib:g})")
    results = {
        "command": " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "asked": args.connections,
        "limits": limits,
        "idle": idle,
        "keepalive": sweep,
        "problems": problems,
        "wall_seconds": time.monotonic() - started,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"idle-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print()
    print(table(limits, idle, sweep, args.max_kib))
    print(f"\nsaved {path.relative_to(HERE.parent)}; {results['wall_seconds']:.0f} s")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    p = sub.add_parser("server")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ping-interval", type=float, default=0, help="keepalive (0: off)")
    p.add_argument("--lifetime", type=float, default=900)
    p = sub.add_parser("client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", default="127.0.0.2", help="the address every socket binds before connecting")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--in-flight", type=int, default=100, help="handshakes under way at once")
    p.add_argument("--lifetime", type=float, default=900)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=2, help="client processes (at least; more if needed)")
    parser.add_argument("--per-client", type=int, default=19_000, help="connections one client process holds")
    parser.add_argument("--ping-interval", type=float, default=None, help="keepalive run (default 8 s, quick 2.5 s)")
    parser.add_argument("--window", type=float, default=None, help="probe window (default: ping interval + 2 s)")
    parser.add_argument("--echoes", type=int, default=None, help="round trips per window (2,000; quick 1,000)")
    parser.add_argument("--settle", type=float, default=None, help="seconds before reading RSS (2; quick 1)")
    parser.add_argument("--max-kib", type=float, default=10.0, help="server RSS per idle connection, at most")
    parser.add_argument("--lifetime", type=float, default=900, help="of every child process")
    parser.add_argument("--quick", action="store_true", help="2,000 connections, shorter windows")
    args = parser.parse_args()
    if args.role == "server":
        import trio

        code: int = trio.run(server_main, args)
        return code
    if args.role == "client":
        return int(asyncio.run(client_main(args)))
    if args.quick and "--connections" not in sys.argv:
        args.connections = 2000
    if args.ping_interval is None:
        args.ping_interval = 2.5 if args.quick else 8.0
    if args.window is None:
        args.window = args.ping_interval + 2
    if args.echoes is None:
        args.echoes = 1000 if args.quick else 2000
    if args.settle is None:
        args.settle = 1.0 if args.quick else 2.0
    return main_bench(args)


if __name__ == "__main__":
    sys.exit(main())
