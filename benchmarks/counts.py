"""Per-operation cost counts for trio_ws, which do not move with the machine's noise.

    python benchmarks/counts.py                            # all three measurements, about 15 s
    python benchmarks/counts.py --rounds 2000 --only client-rtt --only server-handshake
    python benchmarks/counts.py --only flood --frames 200000
    ../baseline/.venv/bin/python benchmarks/counts.py      # measures that interpreter's trio_ws

The trio_ws under test is whatever ``import trio_ws`` gives the interpreter
that runs this script: it runs in this process, under ``trio.run``.  The fast
peers of ``peers.py`` (blocking sockets, websockets' C masking; its
``fast_ws`` client and server, reused here) run in other processes with the
interpreter of benchmarks/.venv-peers, which bench.py's ``ensure_peers()``
makes on first use.  Everything is on 127.0.0.1, every measurement is bounded
in time, and every process started here is stopped by its handle.

- ``client-rtt``: a trio_ws client (``connect_websocket``) sends a 32-byte
  binary message to peers.py's ``fast_ws`` echo server and awaits the echo,
  ``--rounds`` times after a warm-up, then as many again: the first under a
  trio Instrument, the second under cProfile (never both at once: the profile
  would count the instrument's calls).
- ``server-handshake``: a trio_ws server (``serve_websocket``, echo handler)
  accepts connections from a ``fast_ws`` client process that connects, sends
  one small message, reads the echo and closes, over and over.  The windows
  run from the end of one handler to the end of a later one, so they hold
  whole handshakes; the client makes one more connection after them, so that
  its exit falls outside.

  In both, the peer waits ``--pause`` ms (default 1) before each echo, and
  before each step of the handshake client (its message, its close, its next
  connection), so that what it sends always arrives after trio_ws has parked
  to wait for it, as over any real network.  With ``--pause 0`` (peers back
  to back, as in bench.py) the peer's answer races trio_ws's own return to
  the run loop on loopback, and the path taken depends on which CPUs the
  processes get: from one run to the next, the baseline's round trip then
  averages about 148 or 188 calls and 1.5 or 3 passes, its handshake 8 or 10
  passes.
- ``flood``: a raw client sends one text message as ``--frames`` one-byte
  fragments (TEXT with fin=0, CONTINUATION frames, the last with fin=1, each
  masked with its own key) to a trio_ws echo server with
  ``max_message_size=2**20``.  Reported: the server's CPU time
  (``time.thread_time()`` of the trio thread) and wall time from the handler's
  ``accept()`` to ``get_message()`` returning, and CPU per frame.  After an
  unreported warm-up flood of a tenth of the size, it runs alone three times
  (the median run's CPU figures are shown: times, unlike counts, move with
  the machine's noise), then again while a second client on another connection makes a
  32-byte echo round trip every 1 ms; the longest of those round trips that
  overlapped the flood shows whether the server lets other connections run
  while it parses a flood.

What is counted, for each operation (each round trip, each handshake), shown
as the median over the operations and the mean (total / operations):

- function calls: cProfile's call count (``pstats.Stats(...).total_calls``)
  in this thread, the only one trio runs in: Python and builtin calls, trio's
  run loop included, and a coroutine's resumption counts as a call of its
  frame.  A fresh profile per operation; what that bookkeeping adds is
  measured and subtracted.
- task steps: ``before_task_step`` of a ``trio.abc.Instrument``: one each
  time trio resumes a task.
- run-loop passes: ``before_io_wait``, which trio's run loop calls exactly
  once per iteration, just before it polls for I/O (with a timeout of 0 when
  tasks are runnable); each pass then runs the batch of runnable tasks.

Timing still chooses a path now and then (trio runs a batch in one of two
orders at random; a read finds data or waits), which is why medians are shown:
the means move by a percent or so between runs of the same tree.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, median
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the peers' venv, their servers, free ports)
import peers  # noqa: E402  (the fast WebSocket client over a blocking socket)
from _procs import echo_until_closed  # noqa: E402

if TYPE_CHECKING:
    import trio

PAYLOAD = b"x" * 32
FLOOD_MAX_MESSAGE = 2**20
PROBE_INTERVAL = 0.001
FLOOD_RUNS = 3  # alone, for the CPU figures: the median run is shown
STEP_TIMEOUT = 120.0  # seconds for one measurement, whatever it is
CHILD_LIFETIME = 300.0  # a helper process gives up after this, even if never told to stop
MEASUREMENTS = ("client-rtt", "server-handshake", "flood")


# --- counting ----------------------------------------------------------------------------


@dataclass
class Counts:
    """Per-operation counts: one entry per operation in each list."""

    calls: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)

    @property
    def operations(self) -> int:
        return len(self.calls)

    def medians(self) -> tuple[float, float, float]:
        return median(self.calls), median(self.steps), median(self.passes)

    def means(self) -> tuple[float, float, float]:
        return fmean(self.calls), fmean(self.steps), fmean(self.passes)


def make_counter() -> Any:
    """A trio Instrument counting task steps and run-loop passes."""
    import trio

    class Counter(trio.abc.Instrument):
        def __init__(self) -> None:
            self.steps = 0
            self.passes = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.steps += 1

        def before_io_wait(self, timeout: float) -> None:
            self.passes += 1

    return Counter()


def call_count(profile: cProfile.Profile) -> int:
    """Every call the profile saw (what ``pstats.Stats(profile).total_calls`` adds up)."""
    return sum(entry.callcount for entry in profile.getstats())


class Recorder:
    """``rounds`` operations counted with the Instrument, then ``rounds`` under cProfile.

    Never both at once: the profile would count the instrument's calls.  Call
    ``start()`` where the first operation begins and ``mark()`` where each
    ends; ``mark()`` returns True (and ``done`` is set) once both windows are
    complete.  Each operation gets a fresh profile; the calls that ``mark()``
    itself adds to it (its own call and ``disable()``'s) are measured on
    empty operations, through the same code, and subtracted.
    """

    def __init__(self, rounds: int, overhead: int | None = None) -> None:
        self.rounds = rounds
        self.counts = Counts()
        self.counter = make_counter()
        self.last = (0, 0)
        self.profile: cProfile.Profile | None = None
        self.done = False
        self.overhead = self.calibrate() if overhead is None else overhead

    @staticmethod
    def calibrate() -> int:
        empty = Recorder(5, overhead=0)
        empty.counts.steps = empty.counts.passes = [0] * 5  # as if the instrument's window were over
        empty.start_profile()
        while not empty.mark():
            pass
        return min(empty.counts.calls)

    def start(self) -> None:
        import trio

        trio.lowlevel.add_instrument(self.counter)

    def start_profile(self) -> None:
        self.profile = cProfile.Profile()
        self.profile.enable()

    def mark(self) -> bool:
        profile = self.profile
        if profile is not None:  # keep this path free of calls: they would be counted
            profile.disable()
            self.counts.calls.append(call_count(profile) - self.overhead)
            if len(self.counts.calls) < self.rounds:
                self.start_profile()
                return False
            self.profile = None
            self.done = True
            return True
        import trio

        now = (self.counter.steps, self.counter.passes)
        self.counts.steps.append(now[0] - self.last[0])
        self.counts.passes.append(now[1] - self.last[1])
        self.last = now
        if len(self.counts.steps) == self.rounds:
            trio.lowlevel.remove_instrument(self.counter)
            self.start_profile()
        return False

    def stop(self) -> None:
        """Stop counting, complete or not (on an error)."""
        import trio

        if self.profile is not None:
            self.profile.disable()
            self.profile = None
        with contextlib.suppress(KeyError, RuntimeError):
            trio.lowlevel.remove_instrument(self.counter)


# --- child processes ---------------------------------------------------------------------


class Children:
    """The processes this script started: stopped by their handles when it is done with them."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, arguments: Sequence[str], stdin: bool = False) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [str(bench.PEERS_PY), str(SCRIPT), *arguments],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.stdin:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            if process.stdout:
                process.stdout.close()
        self.processes.clear()


@contextlib.contextmanager
def children() -> Iterator[Children]:
    started = Children()
    try:
        yield started
    finally:
        started.stop()


class Lines:
    """Lines from a child's pipe, read in trio."""

    def __init__(self, pipe: Any) -> None:
        import trio

        self.stream = trio.lowlevel.FdStream(os.dup(pipe.fileno()))
        self.buffer = bytearray()

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("a helper process ended without answering")
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line.decode()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def send_line(pipe: Any, line: str) -> None:
    import trio

    stream = trio.lowlevel.FdStream(os.dup(pipe.fileno()))
    try:
        await stream.send_all(line.encode() + b"\n")
    finally:
        await stream.aclose()


def wait_ready(process: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    """Wait for a child's READY line, at most ``timeout`` seconds."""
    assert process.stdout is not None
    fd, line, deadline = process.stdout.fileno(), b"", time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 1) if ready else b""
        if not chunk:
            raise RuntimeError(f"{what} did not start")
        line += chunk
    if line.strip() != b"READY":
        raise RuntimeError(f"{what} said {line!r}")


def check_exit(process: subprocess.Popen[bytes], what: str) -> None:
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not exit") from None
    if code != 0:
        raise RuntimeError(f"{what} exited with status {code}")


async def serve(handler: Callable[[Any], Awaitable[None]], nursery: trio.Nursery, **options: Any) -> int:
    """Start a trio_ws server on a free loopback port; return the port."""
    import trio_ws

    async def run(task_status: Any) -> None:
        await trio_ws.serve_websocket(handler, "127.0.0.1", 0, None, task_status=task_status, **options)

    server = await nursery.start(run)
    return int(server.port)


# --- client round trip -------------------------------------------------------------------


def measure_client_rtt(rounds: int, pause: float) -> Counts:
    import trio

    port = bench.free_port()
    with children() as started:
        server = started.start(["peer-echo-server", "--port", str(port), "--pause", str(pause)], stdin=True)
        wait_ready(server, "the echo server")
        return trio.run(client_rtt, port, rounds)


async def client_rtt(port: int, rounds: int) -> Counts:
    import trio

    import trio_ws

    recorder = Recorder(rounds)
    with trio.fail_after(STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            ws = await trio_ws.connect_websocket(nursery, "127.0.0.1", port, "/echo", use_ssl=False)
            for _ in range(max(rounds // 10, 50)):  # warm-up
                await ws.send_message(PAYLOAD)
                await ws.get_message()
            recorder.start()
            try:
                while True:
                    await ws.send_message(PAYLOAD)
                    await ws.get_message()
                    if recorder.mark():
                        break
            finally:
                recorder.stop()
            await ws.aclose()
    return recorder.counts


# --- server handshake --------------------------------------------------------------------


def measure_server_handshake(rounds: int, pause: float) -> Counts:
    import trio

    return trio.run(server_handshakes, rounds, pause)


async def server_handshakes(rounds: int, pause: float) -> Counts:
    import trio

    warmup = max(rounds // 10, 20)
    total = warmup + 2 * rounds + 1  # one more, so that the client's exit comes after the windows
    recorder = Recorder(rounds)
    done = 0
    windows_closed = trio.Event()

    async def handler(request: Any) -> None:
        nonlocal done
        await echo_until_closed(await request.accept())
        done += 1  # the windows run from the end of one handler to the end of a later one
        if done == warmup:
            recorder.start()
        elif done > warmup and not recorder.done and recorder.mark():
            windows_closed.set()

    try:
        with children() as started, trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                port = await serve(handler, nursery)
                command = ["peer-handshakes", "--port", str(port), "--count", str(total), "--pause", str(pause)]
                client = started.start(command)
                await trio.to_thread.run_sync(client.wait, abandon_on_cancel=True)
                check_exit(client, "the handshake client")
                if not windows_closed.is_set():
                    raise RuntimeError(f"the server saw {done} handshakes of {total}")
                nursery.cancel_scope.cancel()
    finally:
        recorder.stop()
    return recorder.counts


# --- flood of one-byte fragments ---------------------------------------------------------


@dataclass
class Flood:
    frames: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    start: float = 0.0  # time.monotonic(), comparable across processes on Linux
    end: float = 0.0
    client_wall_s: float = 0.0
    probe: list[tuple[float, float]] = field(default_factory=list)  # (start, round trip) in seconds


def measure_flood(frames: int, probe: bool) -> Flood:
    import trio

    return trio.run(flood, frames, probe)


async def flood(frames: int, probe: bool) -> Flood:
    import trio

    import trio_ws

    result = Flood(frames)

    async def handler(request: Any) -> None:
        ws = await request.accept()
        try:
            if request.path == "/flood":
                cpu, wall = time.thread_time(), time.monotonic()
                message = await ws.get_message()
                result.cpu_s, result.end = time.thread_time() - cpu, time.monotonic()
                result.start, result.wall_s = wall, result.end - wall
                if message != "x" * frames:
                    raise RuntimeError("the flooded message arrived wrong")
                await ws.send_message(message)
            while True:
                await ws.send_message(await ws.get_message())
        except trio_ws.ConnectionClosed:
            pass

    with children() as started, trio.fail_after(STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await serve(handler, nursery, max_message_size=FLOOD_MAX_MESSAGE)
            prober = prober_lines = None
            if probe:
                prober = started.start(["peer-probe", "--port", str(port)], stdin=True)
                prober_lines = Lines(prober.stdout)
                if await prober_lines.next() != "READY":
                    raise RuntimeError("the prober did not start")
            flooder = started.start(["peer-flood", "--port", str(port), "--frames", str(frames)])
            flooder_lines = Lines(flooder.stdout)
            result.client_wall_s = json.loads(await flooder_lines.next())["wall_s"]
            await flooder_lines.aclose()
            if prober is not None and prober_lines is not None:
                await send_line(prober.stdin, "stop")
                result.probe = [(start, rtt) for start, rtt in json.loads(await prober_lines.next())]
                await prober_lines.aclose()
                await trio.to_thread.run_sync(prober.wait, abandon_on_cancel=True)
            await trio.to_thread.run_sync(flooder.wait, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()
        check_exit(flooder, "the flood client")
        if prober is not None:
            check_exit(prober, "the prober")
    return result


def flood_frames(count: int) -> bytes:
    """One text message of ``count`` x's, one byte per frame, each masked with its own key."""
    keys = os.urandom(4 * count)
    out = bytearray()
    for index in range(count):
        opcode = 0x1 if index == 0 else 0x0  # TEXT, then CONTINUATION
        fin = 0x80 if index == count - 1 else 0
        key = keys[4 * index : 4 * index + 4]
        out += bytes((fin | opcode, 0x80 | 1)) + key + bytes((ord("x") ^ key[0],))
    return bytes(out)


# --- the helper processes (run with the peers' interpreter) ------------------------------


def peer_handshakes(port: int, count: int, pause: float) -> None:
    """Connect, send one small message, read the echo, close: ``count`` times, pausing before each step."""
    for _ in range(count):
        conn = peers.sync_connect("fast_ws", port, "/echo")
        conn.sock.settimeout(30)
        time.sleep(pause)
        conn.send(b"x")
        conn.recv()
        time.sleep(pause)
        conn.close()
        time.sleep(pause)


def peer_echo_server(port: int, pause: float) -> None:
    """peers.py's fast_ws echo server (blocking sockets, C masking), pausing before each echo."""
    if pause > 0:
        send = peers.SyncWs.send

        def paused_send(self: peers.SyncWs, data: bytes, opcode: int = 0x2) -> None:
            if opcode != 0x8:
                time.sleep(pause)
            send(self, data, opcode)

        peers.SyncWs.send = paused_send  # type: ignore[method-assign]
    peers.sync_server("fast_ws", port)


def peer_flood(port: int, frames: int) -> None:
    data = flood_frames(frames)
    conn = peers.sync_connect("fast_ws", port, "/flood")
    conn.sock.settimeout(STEP_TIMEOUT)
    start = time.monotonic()
    conn.sock.sendall(data)
    echo = conn.recv()
    wall = time.monotonic() - start
    if echo != b"x" * frames:
        raise SystemExit("the echo of the flood is wrong")
    conn.close()
    print(json.dumps({"wall_s": wall}), flush=True)


def peer_probe(port: int) -> None:
    """A 32-byte echo round trip every 1 ms until stdin says stop; then print them all as JSON."""
    conn = peers.sync_connect("fast_ws", port, "/echo")
    conn.sock.settimeout(30)
    samples: list[tuple[float, float]] = []
    for _ in range(50):  # warm-up
        conn.send(PAYLOAD)
        conn.recv()
    print("READY", flush=True)
    stdin = sys.stdin.fileno()
    pending = b""
    give_up = time.monotonic() + CHILD_LIFETIME
    while time.monotonic() < give_up:
        start = time.monotonic()
        conn.send(PAYLOAD)
        conn.recv()
        samples.append((start, time.monotonic() - start))
        ready, _, _ = select.select([stdin], [], [], max(0.0, start + PROBE_INTERVAL - time.monotonic()))
        if ready:
            chunk = os.read(stdin, 1024)
            pending += chunk
            if not chunk or b"stop" in pending:
                break
    conn.close()
    print(json.dumps(samples), flush=True)


PEER_ROLES: dict[str, Callable[[argparse.Namespace], None]] = {
    "peer-handshakes": lambda args: peer_handshakes(args.port, args.count, args.pause),
    "peer-echo-server": lambda args: peer_echo_server(args.port, args.pause),
    "peer-flood": lambda args: peer_flood(args.port, args.frames),
    "peer-probe": lambda args: peer_probe(args.port),
}


def peer_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="counts.py " + argv[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv[1:])
    # peers.SyncWs imports websockets when a connection is made: import it first, so that the
    # import's 20-odd ms do not fall between the request and the first frame.
    importlib.import_module("websockets.speedups")
    PEER_ROLES[argv[0]](args)
    return 0


# --- the report --------------------------------------------------------------------------


def describe_under_test() -> str:
    import trio

    import trio_ws

    where = Path(trio_ws.__file__).resolve().parent
    python = ".".join(map(str, sys.version_info[:3]))
    return f"trio_ws {trio_ws.__version__} from {where} (Python {python}, trio {trio.__version__})"


def count_rows(results: dict[str, Counts], pause: float) -> list[str]:
    lines = [
        "Per operation: the median over the operations (the mean, total / operations, in brackets):",
        "",
        "| per operation | function calls | task steps | run-loop passes |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "client-rtt": f"client round trip (peer pause {pause:g} ms)",
        "server-handshake": f"server handshake (peer pause {pause:g} ms)",
    }
    for key, counts in results.items():
        cells = [f"{m:,.0f} ({a:,.1f})" for m, a in zip(counts.medians(), counts.means(), strict=True)]
        lines.append(f"| {names[key]}, {counts.operations:,} | " + " | ".join(cells) + " |")
    return lines


def flood_rows(alone: list[Flood], probed: Flood) -> list[str]:
    runs = sorted(alone, key=lambda run: run.cpu_s)
    middle = runs[len(runs) // 2]
    lines = [
        f"Flood: one text message in {middle.frames:,} one-byte fragments; server side from the handler's "
        "accept() to get_message() returning:",
        "",
        "| run | server CPU | server wall | client wall | CPU per frame |",
        "|---|---:|---:|---:|---:|",
    ]
    cpu_range = f"{runs[0].cpu_s / runs[0].frames * 1e6:.2f}-{runs[-1].cpu_s / runs[-1].frames * 1e6:.2f}"
    for name, run in ((f"alone (median of {len(runs)}: {cpu_range} µs)", middle), ("with the prober", probed)):
        per_frame = run.cpu_s / run.frames * 1e6
        lines.append(
            f"| {name} | {run.cpu_s:.3f} s | {run.wall_s:.3f} s | {run.client_wall_s:.3f} s | {per_frame:.2f} µs |"
        )
    during = [rtt for start, rtt in probed.probe if start < probed.end and start + rtt > probed.start]
    before = [rtt for start, rtt in probed.probe if start + rtt <= probed.start]
    lines.append("")
    prober = "Prober (another connection, a 32 B echo round trip every 1 ms)"
    if during:
        lines.append(
            f"{prober}: {len(during)} round trips overlapped the {probed.wall_s * 1e3:.0f} ms flood; "
            f"longest {max(during) * 1e3:.2f} ms, median {median(during) * 1e3:.2f} ms"
        )
    else:
        lines.append(f"{prober}: none overlapped the flood.")
    if before:
        lines.append(
            f"(before the flood: {len(before)} round trips, longest {max(before) * 1e3:.2f} ms, "
            f"median {median(before) * 1e3:.2f} ms)"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PEER_ROLES:
        return peer_main(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000, help="round trips, and handshakes, per window")
    parser.add_argument("--frames", type=int, default=200_000, help="fragments in the flood's message")
    parser.add_argument("--only", choices=MEASUREMENTS, action="append", help="run only this (may repeat)")
    parser.add_argument(
        "--pause", type=float, default=1.0, help="ms the peer waits before each echo or handshake step (default 1)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.frames < 1:
        parser.error("--rounds and --frames must be positive")
    if not 0 <= args.pause <= 100:
        parser.error("--pause is between 0 and 100 ms")
    only = args.only or list(MEASUREMENTS)
    bench.ensure_peers()
    print(describe_under_test(), flush=True)
    print("", flush=True)
    counts: dict[str, Counts] = {}
    started = time.monotonic()
    if "client-rtt" in only:
        counts["client-rtt"] = measure_client_rtt(args.rounds, args.pause / 1000)
    if "server-handshake" in only:
        counts["server-handshake"] = measure_server_handshake(args.rounds, args.pause / 1000)
    if counts:
        print("\n".join(count_rows(counts, args.pause)), flush=True)
        print("", flush=True)
    if "flood" in only:
        measure_flood(max(args.frames // 10, 1), probe=False)  # warm-up
        alone = [measure_flood(args.frames, probe=False) for _ in range(FLOOD_RUNS)]
        probed = measure_flood(args.frames, probe=True)
        print("\n".join(flood_rows(alone, probed)), flush=True)
        print("", flush=True)
    print(f"wall time {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
