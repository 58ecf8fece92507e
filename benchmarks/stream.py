"""One very large message each way, streamed: memory stays flat however large the message.

    python benchmarks/stream.py                          # 1 GiB each way, 64 KiB pieces
    python benchmarks/stream.py --quick                  # 64 MiB each way
    python benchmarks/stream.py --compression deflate    # the same with permessage-deflate
    python benchmarks/stream.py --size 256M --piece 16K --read-size 65536 --data words

and the processes it starts (which can also be run by hand):

    python benchmarks/stream.py server --size N ...     # prints READY {"port": P, ...}
    python benchmarks/stream.py client --port P ...     # commands on stdin: UP, DOWN, QUIT

Two directions, each one binary message of ``--size`` bytes (default 1 GiB):

- upload: the client opens ``/upload`` and sends the message with
  ``send_message(pieces)``, ``--piece`` bytes per piece (one frame each),
  generated as they are sent.  The server's handler reads it with
  ``receive_fragments(max_size=None)`` and checks every piece against the same
  generator as it comes, then answers with its verdict (a small text message).
- download: the client opens ``/download`` and says "go"; the server's handler
  sends the message the same way and the client reads and checks it with
  ``receive_fragments(max_size=None)``.

Nobody ever holds the message: a piece is generated, sent and dropped; a
received piece is compared with the bytes the generator gives at its offset
and dropped.  The generator is a seeded pseudo-random pool (1 MiB + 64 KiB);
the 64 KiB block at message offset ``b * 65536`` is the pool's window at
``(b * 7919) % 2**20``, so the message repeats only after 64 GiB, and a lost,
duplicated, reordered or damaged byte is caught at its offset.  ``--data
words`` fills the pool with words and spaces instead of random bytes, which
permessage-deflate can compress (random bytes are its worst case).

Measured for each direction: the client's wall time from the first byte sent
(the message, or "go") to the end (the server's verdict, or the last piece
checked), MB/s (10**6 bytes), each process's CPU time, and each process's RSS
just before the direction and at its peak during it.  The peak is the larger
of VmRSS sampled every 50 ms from /proc/PID/status and VmHWM (reset at the
start of the direction by writing 5 to /proc/PID/clear_refs, where the kernel
allows it).  The run fails (exit 1) if a message did not check or the
server's RSS grew by ``--max-growth-mib`` (16 MiB) or more in a direction; the
client's growth is shown (and bounded with ``--check-client``).  Exit 2: a
process died or a step timed out.

Everything listens on and connects to 127.0.0.1.  Each direction is bounded in
time (``--timeout``, by default 60 s + 1 s per 2 MB); every child has a
lifetime and stops when the orchestrator's pipe closes; the orchestrator stops
only the processes it started, through their Popen handles.  Standard
library, trio and trio_ws only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import queue
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from _procs import Child, cpu_seconds, stop_child  # benchmarks/_procs.py (this directory is on sys.path)

import trio_ws
from trio_ws import CloseReason, ConnectionClosed, WebSocketRequest, open_websocket, serve_websocket

HOST = "127.0.0.1"  # loopback only, on purpose: there is no --host option
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BLOCK = 64 * KIB  # the generator's unit: one window of the pool
SPAN = 2**20  # windows start anywhere in the pool's first MiB
STRIDE = 7919  # odd, so the window offsets of blocks 0 .. 2**20 - 1 are all different
SAMPLE_EVERY = 0.05  # seconds between RSS samples
DEFAULT_SIZE = GIB
QUICK_SIZE = 64 * MIB


# --- the message: generated and checked on the fly --------------------------------------------


class Pattern:
    """The bytes of the message, addressable by offset, from a seeded pool.

    Block ``b`` (bytes ``b * BLOCK`` to ``(b + 1) * BLOCK``) is the pool's window at
    ``(b * STRIDE) % SPAN``: the message repeats itself only every ``SPAN * BLOCK``
    bytes (64 GiB).
    """

    def __init__(self, seed: int, data: str) -> None:
        rng = random.Random(seed)
        if data == "random":
            self.pool = rng.randbytes(SPAN + BLOCK)
        else:  # "words": compressible, roughly like text
            vocabulary = [
                "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))).encode() for _ in range(2000)
            ]
            words = bytearray()
            while len(words) < SPAN + BLOCK:
                words += rng.choice(vocabulary) + rng.choice((b" ", b" ", b" ", b", ", b".\n"))
            self.pool = bytes(words[: SPAN + BLOCK])

    def take(self, offset: int, length: int) -> bytes:
        """The message's bytes from ``offset``, ``length`` of them (at most one block's copy each)."""
        parts: list[bytes] = []
        while length > 0:
            block, within = divmod(offset, BLOCK)
            n = min(length, BLOCK - within)
            start = (block * STRIDE) % SPAN + within
            parts.append(self.pool[start : start + n])
            offset += n
            length -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pieces(self, size: int, piece: int, fault: bool = False) -> Iterator[bytes]:
        """The whole message of ``size`` bytes, in pieces of ``piece`` bytes, made one at a time.

        ``fault``: one byte in the middle of the message is wrong (a self-test of the check).
        """
        damaged = size // 2
        for offset in range(0, size, piece):
            data = self.take(offset, min(piece, size - offset))
            if fault and offset <= damaged < offset + len(data):
                at = damaged - offset
                data = data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]
            yield data


class Checker:
    """Compares the pieces of a received message with the pattern, as they come; holds none."""

    def __init__(self, pattern: Pattern, size: int) -> None:
        self.pattern = pattern
        self.size = size
        self.received = 0
        self.pieces = 0
        self.largest = 0
        self.problem: str | None = None

    def feed(self, piece: str | bytes) -> None:
        n = len(piece)
        if self.problem is None:
            if not isinstance(piece, bytes):
                self.problem = f"a text piece at offset {self.received}"
            elif self.received + n > self.size:
                self.problem = f"more than {self.size} bytes (a piece of {n} at offset {self.received})"
            else:
                expected = self.pattern.take(self.received, n)
                if piece != expected:
                    at = next(i for i in range(n) if piece[i] != expected[i])
                    self.problem = f"wrong byte at offset {self.received + at}"
        self.received += n
        self.pieces += 1
        self.largest = max(self.largest, n)

    def verdict(self) -> dict[str, Any]:
        problem = self.problem
        if problem is None and self.received != self.size:
            problem = f"{self.received} bytes received, {self.size} expected"
        return {
            "ok": problem is None,
            "problem": problem,
            "bytes": self.received,
            "pieces": self.pieces,
            "largest_piece": self.largest,
        }


# --- helpers of the child processes --------------------------------------------------------------


def emit(tag: str, payload: dict[str, Any]) -> None:
    """One line of the protocol between a child and the orchestrator: TAG {json}."""
    try:
        print(f"{tag} {json.dumps(payload, separators=(',', ':'))}", flush=True)
    except BrokenPipeError:  # the orchestrator is gone: we stop on stdin's end anyway
        pass


def describe(exc: BaseException) -> str:
    """A one-line description of an exception, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]


class Commands:
    """Lines from stdin, read in a thread (os.read: an abandoned read blocks nothing at exit)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._eof = False

    async def next(self) -> str | None:
        """The next line, or ``None`` once stdin is closed (the orchestrator is done or gone)."""
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            data = await trio.to_thread.run_sync(os.read, 0, 4096, abandon_on_cancel=True)
            if not data:
                self._eof = True
                if not self._buffer:
                    return None
                self._buffer += b"\n"
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace").strip()


def clean_close(reason: CloseReason | None) -> str | None:
    """``None`` for a clean closing handshake with 1000, else what happened."""
    if reason is not None and reason.code == 1000 and reason.was_clean:
        return None
    return f"closed with {reason}" + (" (not cleanly)" if reason is not None and not reason.was_clean else "")


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options both ends use."""
    return {
        "compression": None if args.compression == "none" else args.compression,
        "receive_buffer_size": args.read_size,
        "disconnect_timeout": 30,
    }


# --- the server process ----------------------------------------------------------------------


async def server_main(args: argparse.Namespace) -> int:
    pattern = Pattern(args.seed, args.data)
    errors: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        path = request.path
        ws = await request.accept()
        try:
            if path == "/upload":
                checker = Checker(pattern, args.size)
                started = trio.current_time()
                async for piece in ws.receive_fragments(max_size=None):
                    checker.feed(piece)
                verdict = {**checker.verdict(), "seconds": trio.current_time() - started, "extensions": ws.extensions}
                emit("RECEIVED", verdict)
                await ws.send_message(json.dumps(verdict))
            elif path == "/download":
                if await ws.get_message() != "go":
                    raise ValueError("the client did not say go")
                started = trio.current_time()
                await ws.send_message(pattern.pieces(args.size, args.piece, args.fault))
                emit("SENT", {"bytes": args.size, "seconds": trio.current_time() - started})
            else:
                await ws.aclose(1008, "no such path")
        except ConnectionClosed as exc:
            errors.append(f"{path}: closed early: {exc.reason}")
            emit("ERROR", {"path": path, "error": errors[-1]})
        except Exception as exc:  # counted and reported; the server goes on
            errors.append(f"{path}: {describe(exc)}")
            emit("ERROR", {"path": path, "error": errors[-1]})
        # Returning closes the connection with 1000.

    commands = Commands()
    expired = True
    with trio.move_on_after(args.lifetime):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, handler, HOST, args.port, None, connect_timeout=30, **connection_options(args))
            )
            emit("READY", {"port": server.port, "pid": os.getpid()})
            while await commands.next() not in (None, "QUIT"):
                pass
            expired = False
            nursery.cancel_scope.cancel()
    emit("FINAL", {"errors": errors, "lifetime_expired": expired})
    return 3 if expired else 1 if errors else 0


# --- the client process ----------------------------------------------------------------------


async def client_main(args: argparse.Namespace) -> int:
    pattern = Pattern(args.seed, args.data)
    options = connection_options(args)
    failed = False

    async def upload() -> dict[str, Any]:
        async with open_websocket(HOST, args.port, "/upload", use_ssl=False, **options) as ws:
            started = trio.current_time()
            await ws.send_message(pattern.pieces(args.size, args.piece, args.fault))
            sent = trio.current_time()
            verdict = json.loads(await ws.get_message())
            done = trio.current_time()
            wire = ws.statistics().bytes_sent
        return {
            "wire_bytes": wire,
            "seconds": done - started,
            "send_seconds": sent - started,
            "server": verdict,
            "ok": bool(verdict["ok"]),
            "extensions": ws.extensions,
            "close": clean_close(ws.closed),
        }

    async def download() -> dict[str, Any]:
        checker = Checker(pattern, args.size)
        async with open_websocket(HOST, args.port, "/download", use_ssl=False, **options) as ws:
            started = trio.current_time()
            await ws.send_message("go")
            async for piece in ws.receive_fragments(max_size=None):
                checker.feed(piece)
            done = trio.current_time()
            wire = ws.statistics().bytes_received
        verdict = checker.verdict()
        return {
            "wire_bytes": wire,
            "seconds": done - started,
            **verdict,
            "extensions": ws.extensions,
            "close": clean_close(ws.closed),
        }

    commands = Commands()
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {"UP": upload, "DOWN": download}
    sender, receiver = trio.open_memory_channel[str](16)

    async def read_commands(nursery: trio.Nursery) -> None:
        async with sender:
            while (line := await commands.next()) not in (None, "QUIT"):
                await sender.send(line or "")
        nursery.cancel_scope.cancel()  # QUIT, or the orchestrator is gone: stop now, even mid-step

    emit("READY", {"pid": os.getpid()})
    expired = True
    with trio.move_on_after(args.lifetime):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_commands, nursery)
            async for line in receiver:
                step = steps.get(line)
                if step is None:
                    continue
                try:
                    result = await step()
                except Exception as exc:
                    result = {"ok": False, "error": describe(exc)}
                failed = failed or not result["ok"] or result.get("close") is not None
                emit("DONE", result)
        expired = False
    if expired:
        return 3
    return 1 if failed else 0


# --- the orchestrator --------------------------------------------------------------------------


class PeerError(Exception):
    """A child died, or did not answer in time: exit status 2."""


def proc_status(pid: int, field_name: str) -> int:
    """A size from /proc/PID/status (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise PeerError(f"no {field_name} for pid {pid}")


def reset_peak(pid: int) -> bool:
    """Reset the kernel's VmHWM of ``pid`` to its current RSS (Linux 4.0+); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class Peer:
    """A child process: commands on its stdin, ``TAG {json}`` lines on its stdout."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        # The process and the thread that reads its tagged lines; this class adds the
        # text commands and the deadlines this script uses.
        child = Child(name, __file__, argv)
        self.proc = child.proc
        self.pid = child.pid
        self._lines = child.lines

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise PeerError(f"{self.name} is gone: cannot send {command}") from None

    def expect(self, tag: str, deadline: float) -> dict[str, Any]:
        """The payload of the next line tagged ``tag``; ERROR lines are printed on the way."""
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
                raise PeerError(f"{self.name} exited with code {self.proc.wait()} while we waited for {tag}")
            if got == "ERROR":
                print(f"[{self.name}] error: {payload}", flush=True)

    def wait(self, deadline: float) -> int:
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.name} did not exit in time") from None

    def stop(self) -> None:
        """Make sure this process (and only it) is gone: EOF on stdin, then SIGTERM, then SIGKILL."""
        stop_child(self.proc, 5)


class Sampler:
    """Samples the VmRSS of some processes every SAMPLE_EVERY seconds in a thread; keeps the peaks."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peaks = {name: 0 for name in pids}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                try:
                    self.peaks[name] = max(self.peaks[name], proc_status(pid, "VmRSS"))
                except (OSError, PeerError):
                    pass
            self.samples += 1
            if self._stop.wait(SAMPLE_EVERY):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Direction:
    """The figures of one direction."""

    name: str
    seconds: float = 0.0
    ok: bool = False
    problem: str | None = None
    before: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    pieces: int = 0
    largest_piece: int = 0
    wire_bytes: int = 0
    extensions: str = ""

    def growth(self, role: str) -> int:
        return self.peak[role] - self.before[role]


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def run_direction(name: str, server: Peer, client: Peer, args: argparse.Namespace, hwm: bool) -> Direction:
    """Have the client run UP or DOWN; sample both processes meanwhile."""
    pids = {"server": server.pid, "client": client.pid}
    result = Direction(name)
    time.sleep(0.2)  # let the last direction's connection wind down
    if hwm:
        for pid in pids.values():
            reset_peak(pid)
    result.before = {role: proc_status(pid, "VmRSS") for role, pid in pids.items()}
    cpu_before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    with Sampler(pids) as sampler:
        client.send("UP" if name == "upload" else "DOWN")
        done = client.expect("DONE", time.monotonic() + args.timeout)
    result.cpu = {role: cpu_seconds(pid) - cpu_before[role] for role, pid in pids.items()}
    result.peak = {role: max(sampler.peaks[role], result.before[role]) for role in pids}
    if hwm:
        result.peak = {role: max(result.peak[role], proc_status(pid, "VmHWM")) for role, pid in pids.items()}
    if "error" in done:
        result.problem = f"client: {done['error']}"
        return result
    result.seconds = done["seconds"]
    received = done["server"] if name == "upload" else done
    result.ok = bool(received["ok"]) and bool(done["ok"]) and done["close"] is None
    result.problem = received["problem"] or done["close"]
    result.pieces = received["pieces"]
    result.largest_piece = received["largest_piece"]
    result.extensions = done["extensions"]
    result.wire_bytes = done["wire_bytes"]
    return result


def describe_under_test() -> str:
    where = Path(trio_ws.__file__).resolve().parent
    python = ".".join(map(str, sys.version_info[:3]))
    return f"trio_ws {trio_ws.__version__} from {where} (Python {python}, trio {trio.__version__})"


def render(results: list[Direction], args: argparse.Namespace, command: str, wall: float, hwm: bool) -> str:
    peak_from = "max(VmRSS every 50 ms, VmHWM)" if hwm else "VmRSS every 50 ms"
    lines = [
        f"{describe_under_test()}",
        f"one {args.size:,}-byte binary message each way ({mib(args.size)}), pieces of {args.piece:,} B sent, "
        f"receive_buffer_size {args.read_size}, data {args.data}, "
        f"compression {args.compression} (negotiated: {results[0].extensions or 'none'})",
        "",
        "| direction | time | MB/s | server RSS before -> peak (growth) | client RSS before -> peak (growth) "
        "| CPU server / client | on the wire | pieces received (largest) | check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for d in results:
        title = "upload (client -> server)" if d.name == "upload" else "download (server -> client)"
        rate = f"{args.size / d.seconds / 1e6:.1f}" if d.seconds else "-"
        cells = [
            title,
            f"{d.seconds:.2f} s",
            rate,
            f"{mib(d.before['server'])} -> {mib(d.peak['server'])} (+{mib(d.growth('server'))})",
            f"{mib(d.before['client'])} -> {mib(d.peak['client'])} (+{mib(d.growth('client'))})",
            f"{d.cpu['server']:.1f} s / {d.cpu['client']:.1f} s",
            f"{d.wire_bytes / 1e6:,.1f} MB ({d.wire_bytes / args.size:.0%})",
            f"{d.pieces:,} ({d.largest_piece:,} B)",
            "ok" if d.ok else f"FAILED: {d.problem}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"RSS peak: {peak_from}; bound on the server's growth: < {args.max_growth_mib:g} MiB"
        f"{' (and the client)' if args.check_client else ''}",
        f"wall time {wall:.0f} s; command: {command}",
    ]
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    if args.quick:
        args.size = min(args.size, QUICK_SIZE)
    if args.timeout is None:
        args.timeout = 60 + args.size / 2e6
    started = time.monotonic()
    lifetime = str(2 * args.timeout + 120)
    command = shlex.join(["python", "benchmarks/stream.py", *sys.argv[1:]])
    common = [
        "--size",
        str(args.size),
        "--piece",
        str(args.piece),
        "--read-size",
        str(args.read_size or 0),
        "--compression",
        args.compression,
        "--data",
        args.data,
        "--seed",
        str(args.seed),
        *(["--fault"] if args.fault else []),
        "--lifetime",
        lifetime,
    ]
    peers: list[Peer] = []
    # SIGTERM as well as Ctrl-C runs the finally clause, which stops our own children.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        server = Peer("server", ["server", "--port", "0", *common])
        peers.append(server)
        ready = server.expect("READY", time.monotonic() + 30)
        client = Peer("client", ["client", "--port", str(ready["port"]), *common])
        peers.append(client)
        client.expect("READY", time.monotonic() + 30)
        hwm = reset_peak(server.pid) and reset_peak(client.pid)
        print(
            f"streaming {mib(args.size)} each way (timeout {args.timeout:.4g} s per direction) ...",
            flush=True,
        )
        results: list[Direction] = []
        for name in ("upload", "download"):
            results.append(run_direction(name, server, client, args, hwm))
            d = results[-1]
            print(
                f"  {name}: {d.seconds:.2f} s, server +{mib(d.growth('server'))}, client +{mib(d.growth('client'))}, "
                f"{'ok' if d.ok else 'FAILED'}",
                flush=True,
            )
        deadline = time.monotonic() + 30
        client.send("QUIT")
        client_code = client.wait(deadline)
        server.send("QUIT")
        final = server.expect("FINAL", deadline)
        server_code = server.wait(deadline)
    except PeerError as exc:
        print(f"FAILED: {exc}", flush=True)
        return 2
    finally:
        for peer in peers:
            peer.stop()

    bound = args.max_growth_mib * MIB
    failures = [f"{d.name}: the message did not check: {d.problem}" for d in results if not d.ok]
    for d in results:
        for role in ("server", "client") if args.check_client else ("server",):
            if d.growth(role) >= bound:
                failures.append(f"{d.name}: {role} RSS grew by {mib(d.growth(role))} (bound {args.max_growth_mib:g})")
    failures += [f"server: {error}" for error in final["errors"]]
    if client_code or server_code:
        failures.append(f"exit codes: client {client_code}, server {server_code}")
    print()
    print(render(results, args, command, time.monotonic() - started, hwm))
    summary = {
        "size": args.size,
        "piece": args.piece,
        "read_size": args.read_size,
        "compression": args.compression,
        "data": args.data,
        "directions": [
            {
                "name": d.name,
                "seconds": round(d.seconds, 3),
                "mb_per_s": round(args.size / d.seconds / 1e6, 1) if d.seconds else None,
                "rss_before": d.before,
                "rss_peak": d.peak,
                "cpu_s": {role: round(s, 2) for role, s in d.cpu.items()},
                "wire_bytes": d.wire_bytes,
                "pieces": d.pieces,
                "ok": d.ok,
            }
            for d in results
        ],
        "failures": failures,
    }
    print("\nRESULT " + json.dumps(summary), flush=True)
    for failure in failures:
        print(f"FAILED: {failure}", flush=True)
    print("OK" if not failures else "FAILED", flush=True)
    return 1 if failures else 0


# --- command line -----------------------------------------------------------------------------


def size(text: str) -> int:
    """A byte count: 1073741824, 1G, 64M, 16K (binary units; an optional i/iB/B after them)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    value = int(match[1]) * {"": 1, "k": KIB, "m": MIB, "g": GIB}[match[2].lower()]
    if value < 1:
        raise argparse.ArgumentTypeError("a size must be at least 1 byte")
    return value


def read_size(text: str) -> int | None:
    """``receive_buffer_size``: 0 means None (trio's own choice)."""
    return size(text) if text.strip() != "0" else None


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=size, default=DEFAULT_SIZE, help="bytes each way (default 1G)")
    parser.add_argument("--piece", type=size, default=64 * KIB, help="bytes per piece sent (default 64K)")
    parser.add_argument(
        "--read-size",
        type=read_size,
        default=inspect.signature(open_websocket).parameters["receive_buffer_size"].default,
        help="receive_buffer_size of both ends (default: trio_ws's, 4K; 0: None)",
    )
    parser.add_argument("--compression", choices=("none", "deflate"), default="none")
    parser.add_argument("--data", choices=("random", "words"), default="random", help="what the pool holds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fault", action="store_true", help="self-test: both senders damage one byte; the run must then fail"
    )


def main() -> int:
    argv = sys.argv[1:]
    if argv and argv[0] in ("server", "client"):
        parser = argparse.ArgumentParser(prog=f"stream.py {argv[0]}")
        add_common(parser)
        parser.add_argument("--port", type=int, required=argv[0] == "client", default=0)
        parser.add_argument("--lifetime", type=float, default=600.0, help="stop by itself after this many seconds")
        args = parser.parse_args(argv[1:])
        return trio.run(server_main if argv[0] == "server" else client_main, args)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None, epilog="see the module's docstring"
    )
    add_common(parser)
    parser.add_argument("--quick", action="store_true", help=f"at most {mib(QUICK_SIZE)} each way")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per direction (default 60 + 1 per 2 MB)")
    parser.add_argument("--max-growth-mib", type=float, default=16.0, help="bound on the server's RSS growth")
    parser.add_argument("--check-client", action="store_true", help="bound the client's RSS growth as well")
    args = parser.parse_args(argv)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
