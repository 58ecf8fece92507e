"""permessage-deflate: memory per connection, compression ratio and message rate, trio_ws
against websockets.trio, on loopback.

    python benchmarks/compression.py                  # 5 rounds, about 4 minutes
    python benchmarks/compression.py --quick          # 1 round, shorter, about 1 minute
    python benchmarks/compression.py --before /work/dev/.venv/bin/python   # add another tree's trio_ws

What it measures, each round interleaving the implementations (their order rotates), the
table showing medians over rounds with the spread (min-max) beside them:

- **memory**: one process holds ``--pairs`` client/server pairs (default 500) of one
  implementation, echoes one 300-byte JSON message on each, and reports its RSS growth
  per pair (from after a warm-up pair to after the last echo).
- **ratio**: a JSON-like corpus (``corpus()``, 1,000 messages of about 1 KiB, the same for
  every run) sent through a trio_ws pair: bytes on the wire without compression divided by
  bytes with it.
- **msgs/s**: 1 KiB messages echoed with 64 in flight for ``--seconds``, in the server role
  (the implementation serves, a reference client sends) and the client role (the
  implementation sends to a reference echo server), JSON-like and random (incompressible)
  payloads.  The references are blocking-socket peers written for speed (``RefServer``,
  ``ref_client``): the echo server sends every payload back as it came (compressed or not:
  echoing a compressed message verbatim is a valid deflate stream for the client's own
  decompressor, whose context then matches its compressor's), and the reference client
  compresses with zlib in its sending thread and does not inflate what comes back.

Implementations: ``trio_ws`` (``compression="deflate"``, the defaults), ``trio_ws_w15`` (this
tree with the former settings: windows of 2**15 both ways, memory level 8), ``trio_ws_plain``
(no compression: the reference for incompressible data), ``websockets_trio`` (websockets
17.4's trio implementation with its default compression), and with ``--before PY`` the
trio_ws that interpreter imports (``before``).  websockets runs from benchmarks/.venv-peers
(bench.py makes it).  Results go to benchmarks/results/compression-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from statistics import median
from typing import Any

from _procs import echo_until_closed, free_port  # benchmarks/_procs.py (this directory is on sys.path)

HERE = Path(__file__).resolve().parent
PEERS_PY = HERE / ".venv-peers" / "bin" / "python"
PROJECT_PY = Path(sys.executable)
MAX_SIZE = 2**24
TAIL = b"\x00\x00\xff\xff"


# --- the corpus ---------------------------------------------------------------------------------


def corpus(count: int = 1000, size: int = 1024, seed: int = 7) -> list[bytes]:
    """JSON-like messages of ``size`` bytes (an API's updates: repeated keys, varied values)."""
    rng = random.Random(seed)
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    kinds = ["order.created", "order.updated", "price.tick", "user.presence", "chat.message"]
    out = []
    for number in range(count):
        item: dict[str, Any] = {
            "type": rng.choice(kinds),
            "id": number,
            "ts": 1_700_000_000 + number * 0.25 + rng.random(),
            "user": {"name": rng.choice(names), "id": rng.randrange(10**6), "online": rng.random() < 0.5},
            "items": [],
        }
        while len(json.dumps(item)) < size - 90:
            item["items"].append(
                {
                    "sku": f"SKU-{rng.randrange(10000):04d}",
                    "qty": rng.randrange(1, 20),
                    "price": round(rng.random() * 500, 2),
                    "tag": rng.choice(["new", "sale", "", "gift"]),
                }
            )
        text = json.dumps(item).encode()[: size - 2]
        out.append(text + b" " * (size - len(text)))
    return out


def small_message() -> bytes:
    return json.dumps({"type": "hello", "user": "alice", "room": "lobby", "text": "x" * 200, "n": 1}).encode()[:300]


def compression_for(impl: str) -> Any:
    """What ``compression=`` an implementation under test is given."""
    if impl == "trio_ws_plain":
        return None
    if impl == "trio_ws_w15":
        import trio_ws

        return trio_ws.Deflate(send_window_bits=15, receive_window_bits=15, mem_level=8)
    return "deflate"


# --- children: memory and ratio -----------------------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def memory_child(impl: str, pairs: int) -> dict[str, Any]:
    import gc

    import trio

    message = small_message()
    keep: list[Any] = []
    async with trio.open_nursery() as nursery:
        port = await start_echo_server(nursery, impl, 0)
        if impl == "websockets_trio":
            from websockets.trio.client import connect

            async def hold(task_status: Any) -> None:
                # Its context manager runs a nursery: entered and left in a task of its own.
                url = f"ws://127.0.0.1:{port}/"
                async with connect(url, ping_interval=None, max_size=MAX_SIZE, proxy=None) as ws:
                    await ws.send(message)
                    assert await ws.recv() == message
                    task_status.started()
                    await trio.sleep_forever()

            async def open_pair() -> None:
                await nursery.start(hold)
        else:
            import trio_ws

            compression = compression_for(impl)

            async def open_pair() -> None:
                ws = await trio_ws.connect_websocket(
                    nursery, "127.0.0.1", port, "/", use_ssl=False, compression=compression
                )
                await ws.send_message(message)
                assert await ws.get_message() == message
                keep.append(ws)

        for _ in range(5):  # warm up: imports, first allocations
            await open_pair()
        gc.collect()
        before = rss_kib()
        for _ in range(pairs):
            await open_pair()
        gc.collect()
        after = rss_kib()
        nursery.cancel_scope.cancel()
    return {"kib_per_pair": (after - before) / pairs}


async def ratio_child(impl: str) -> dict[str, Any]:
    """Bytes on the wire for the corpus without compression / with it (client to server)."""
    from trio_ws.testing import websocket_pair

    sent = {}
    for label, compression in (("plain", None), ("deflate", compression_for(impl))):
        async with websocket_pair(compression=compression, max_message_size=MAX_SIZE) as (client, server):
            for message in corpus():
                await client.send_message(message)
                await server.get_message()
            sent[label] = client.statistics().bytes_sent
    return {"ratio": sent["plain"] / sent["deflate"]}


# --- children: the implementations under test, as echo servers and as clients ------------------


async def start_echo_server(nursery: Any, impl: str, port: int) -> int:
    """An echo server of ``impl`` (with its compression) on 127.0.0.1:``port`` (0: any) in
    ``nursery``; the port it listens on."""
    if impl == "websockets_trio":
        from websockets.trio.server import serve

        async def ws_echo(ws: Any) -> None:
            async for data in ws:
                await ws.send(data)

        port = port or free_port()
        await nursery.start(
            lambda task_status: serve(
                ws_echo, port, host="127.0.0.1", ping_interval=None, max_size=MAX_SIZE, task_status=task_status
            )
        )
        return port
    import trio_ws

    async def echo(request: Any) -> None:
        await echo_until_closed(await request.accept())

    compression = compression_for(impl)
    server = await nursery.start(
        lambda task_status: trio_ws.serve_websocket(
            echo,
            "127.0.0.1",
            port,
            None,
            compression=compression,
            max_message_size=MAX_SIZE,
            task_status=task_status,
        )
    )
    return int(server.port)


async def server_child(impl: str, port: int) -> None:
    import trio

    async with trio.open_nursery() as nursery:
        await start_echo_server(nursery, impl, port)
        print("READY", flush=True)
        cpu = time.process_time()
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    # This process's CPU time while it served (steadier than a rate on a shared machine).
    print(json.dumps({"cpu_s": time.process_time() - cpu}), flush=True)


async def client_child(impl: str, port: int, payload: str, seconds: float) -> dict[str, Any]:
    import trio

    messages = corpus(256) if payload == "json" else [os.urandom(1024) for _ in range(256)]
    async with trio.open_nursery() as nursery:
        if impl == "websockets_trio":
            from websockets.trio.client import connect

            manager = connect(f"ws://127.0.0.1:{port}/", ping_interval=None, max_size=MAX_SIZE, proxy=None)
            ws = await manager.__aenter__()
            send, receive = ws.send, ws.recv
        else:
            import trio_ws

            conn = await trio_ws.connect_websocket(
                nursery,
                "127.0.0.1",
                port,
                "/",
                use_ssl=False,
                compression=compression_for(impl),
                max_message_size=MAX_SIZE,
            )
            send, receive = conn.send_message, conn.get_message
        window = trio.Semaphore(64)
        # One token per message sent, and one at the end: the receiver waits for an echo
        # only when one is due (checking "is the sender done?" first would race).
        pending = trio.Semaphore(0)
        sent = received = 0
        stop = time.perf_counter() + seconds
        done = False

        async def sender() -> None:
            nonlocal sent, done
            while time.perf_counter() < stop:
                await window.acquire()
                await send(messages[sent % len(messages)])
                sent += 1
                pending.release()
            done = True
            pending.release()

        start = time.perf_counter()
        cpu = time.process_time()
        nursery.start_soon(sender)
        while True:
            await pending.acquire()
            if done and received == sent:
                break
            data = await receive()
            assert data == messages[received % len(messages)]
            received += 1
            window.release()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if impl == "websockets_trio":
            await manager.__aexit__(None, None, None)
        else:
            await conn.aclose()
        nursery.cancel_scope.cancel()
    return {"msgs_per_s": received / elapsed, "cpu_us_per_msg": cpu / received * 1e6}


# --- the reference peers: blocking sockets, zlib, C masking ------------------------------------


def _mask_function() -> Any:
    try:
        from websockets.speedups import apply_mask

        return apply_mask
    except ImportError:  # (the project's own, when run from its venv)
        from trio_ws._speedups import apply_mask

        return apply_mask


def _frame(payload: bytes, rsv1: bool, client: bool, apply_mask: Any) -> bytes:
    first = 0x82 | (0x40 if rsv1 else 0)
    length = len(payload)
    mask_bit = 0x80 if client else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if client:
        key = os.urandom(4)
        return head + key + apply_mask(payload, key)
    return head + payload


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, bytearray()

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(max(65536, size - len(self.buffer)))
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head

    def frame(self, apply_mask: Any) -> tuple[int, bytes]:
        """(first byte, payload) of the next frame."""
        first, second = self.exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self.exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self.exactly(8))
        key = self.exactly(4) if second & 0x80 else None
        payload = self.exactly(length)
        if key is not None:
            payload = apply_mask(payload, key)
        return first, payload


def ref_server(port: int, deflate: bool) -> None:
    """Echo every data frame back as it came; answer permessage-deflate's first offer."""
    import base64
    import hashlib

    apply_mask = _mask_function()
    listener = socket.create_server(("127.0.0.1", port), backlog=128)

    def serve(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(sock)
        try:
            head = reader.head()
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            key = headers[b"sec-websocket-key"]
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            extension = b""
            offer = headers.get(b"sec-websocket-extensions", b"").split(b",")[0].strip()
            if deflate and offer.lower().startswith(b"permessage-deflate"):
                # Echoing verbatim: each side decompresses what it compressed itself, so
                # the window each side compresses with is what it agreed on already.
                params = [p.strip() for p in offer.split(b";")[1:]]
                kept = [p for p in params if p.startswith(b"server_max_window_bits")]
                extension = b"Sec-WebSocket-Extensions: " + b"; ".join([b"permessage-deflate", *kept]) + b"\r\n"
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extension + b"\r\n"
            )
            while True:
                first, payload = reader.frame(apply_mask)
                opcode = first & 0x0F
                if opcode == 0x8:
                    sock.sendall(bytes([0x88, len(payload[:2])]) + payload[:2])
                    return
                sock.sendall(_frame(payload, bool(first & 0x40), False, apply_mask))
        except (EOFError, OSError):
            pass
        finally:
            sock.close()

    def accept_loop() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    print("READY", flush=True)
    sys.stdin.read()
    listener.close()


def ref_client(port: int, deflate: bool, payload: str, seconds: float) -> dict[str, Any]:
    """Send 1 KiB messages (compressed with zlib when agreed and smaller), 64 in flight; count echoes."""
    import base64

    apply_mask = _mask_function()
    messages = corpus(256) if payload == "json" else [os.urandom(1024) for _ in range(256)]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else b""
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: "
        + base64.b64encode(os.urandom(16))
        + b"\r\nSec-WebSocket-Version: 13\r\n"
        + offer
        + b"\r\n"
    )
    reader = _Reader(sock)
    head = reader.head()
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    agreed = b"permessage-deflate" in head.lower()
    bits = 15
    for part in head.lower().split(b";"):
        if part.strip().startswith(b"client_max_window_bits="):
            bits = int(part.split(b"=")[1].split(b"\r\n")[0])
    # Every frame is made before the clock starts (compressed in order, with context
    # takeover, when agreed and JSON; random bytes would not shrink), so that the sending
    # thread only writes: the implementation under test is the bottleneck, not this peer.
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits, 8) if agreed and payload == "json" else None
    frames = []
    for number in range(int(seconds * 40_000)):
        message = messages[number % len(messages)]
        if compressor is not None:
            data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
            frames.append(_frame(data[:-4], True, True, apply_mask))
        else:
            frames.append(_frame(message, False, True, apply_mask))
    window = threading.Semaphore(64)
    pending = threading.Semaphore(0)
    sent = [0]
    finished = [False]
    stop = time.perf_counter() + seconds

    def sender() -> None:
        while time.perf_counter() < stop and sent[0] < len(frames):
            window.acquire()
            sock.sendall(frames[sent[0]])
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
            break
        reader.frame(apply_mask)
        received += 1
        window.release()
    elapsed = time.perf_counter() - start
    thread.join()
    sock.sendall(_frame(struct.pack("!H", 1000), False, True, apply_mask).replace(b"\x82", b"\x88", 1))
    sock.close()
    return {"msgs_per_s": received / elapsed, "received": received}


# --- the orchestrator -----------------------------------------------------------------------------


def python_for(impl: str, before: str | None) -> str:
    if impl == "websockets_trio":
        return str(PEERS_PY)
    if impl == "before":
        assert before is not None
        return before
    return str(PROJECT_PY)


def child(python: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    command = [python, str(Path(__file__).resolve()), "child", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class Background:
    """A child process serving until its stdin closes (stopped by its handle)."""

    def __init__(self, python: str, *args: str) -> None:
        command = [python, str(Path(__file__).resolve()), "child", *args]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "READY":
            self.stop()
            raise RuntimeError(f"{' '.join(args)} did not start")

    def stop(self) -> str:
        """Stop it; what it printed after READY."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        rest = self.process.stdout.read()
        self.process.stdout.close()
        return rest


def speed(impl: str, role: str, payload: str, seconds: float, before: str | None) -> tuple[float, float]:
    """Messages a second, and the CPU time (µs) per message of the process under test."""
    port = free_port()
    deflate = impl != "trio_ws_plain"
    reference = str(PEERS_PY)
    if role == "server":
        server = Background(python_for(impl, before), "server", impl, "--port", str(port))
        try:
            args = ["ref-client", "--port", str(port), "--payload", payload, "--seconds", str(seconds)]
            result = child(reference, *args, *(["--deflate"] if deflate else []), timeout=seconds + 30)
        finally:
            rest = server.stop()
        cpu_s = json.loads(rest.strip().splitlines()[-1])["cpu_s"]
        return float(result["msgs_per_s"]), cpu_s / result["received"] * 1e6
    server = Background(reference, "ref-server", "--port", str(port), *(["--deflate"] if deflate else []))
    try:
        args = ["client", impl, "--port", str(port), "--payload", payload, "--seconds", str(seconds)]
        result = child(python_for(impl, before), *args, timeout=seconds + 30)
    finally:
        server.stop()
    return float(result["msgs_per_s"]), float(result["cpu_us_per_msg"])


def rotate(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--before", help="another interpreter whose trio_ws to measure too (as 'before')")
    parser.add_argument("--only", choices=["memory", "ratio", "speed"], action="append")
    args = parser.parse_args()
    if not PEERS_PY.exists():
        raise SystemExit(
            "benchmarks/.venv-peers is missing: python benchmarks/bench.py --quick --only 'lat p50' makes it"
        )
    rounds = args.rounds or (1 if args.quick else 5)
    pairs = args.pairs or (200 if args.quick else 500)
    seconds = args.seconds or (0.5 if args.quick else 1.0)
    parts = args.only or ["memory", "ratio", "speed"]
    extra = ["before"] if args.before else []
    memory_impls = ["trio_ws", "trio_ws_w15", "trio_ws_plain", "websockets_trio", *extra]
    speed_impls = ["trio_ws", "websockets_trio", "trio_ws_plain", *extra]
    values: dict[str, list[float]] = {}
    started = time.monotonic()

    def record(name: str, value: float) -> None:
        values.setdefault(name, []).append(value)
        print(f"  {name}: {value:.4g}", flush=True)

    for number in range(rounds):
        print(f"round {number + 1}", flush=True)
        if "memory" in parts:
            for impl in rotate(memory_impls, number):
                result = child(python_for(impl, args.before), "memory", impl, "--pairs", str(pairs))
                record(f"memory {impl} KiB/pair", result["kib_per_pair"])
        if "ratio" in parts and number == 0:  # deterministic: once
            for impl in ["trio_ws", "trio_ws_w15", *extra]:
                record(f"ratio {impl}", child(python_for(impl, args.before), "ratio", impl)["ratio"])
        if "speed" in parts:
            for role in ("server", "client"):
                for payload in ("json", "random"):
                    for impl in rotate(speed_impls, number):
                        if payload == "random" and impl == "websockets_trio":
                            continue  # (the target compares trio_ws with itself there)
                        value, cpu = speed(impl, role, payload, seconds, args.before)
                        record(f"msgs/s {role} {payload} {impl}", value)
                        record(f"cpu us/msg {role} {payload} {impl}", cpu)
    table = render(values, rounds, time.monotonic() - started, args)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"compression-{stamp}.json").write_text(json.dumps(values, indent=1))
    return 0


def render(values: dict[str, list[float]], rounds: int, elapsed: float, args: argparse.Namespace) -> str:
    def cell(name: str) -> str:
        got = values.get(name)
        if not got:
            return "-"
        spread = f" ({min(got):.4g}-{max(got):.4g})" if len(got) > 1 else ""
        return f"{median(got):.4g}{spread}"

    def med(name: str) -> float:
        got = values.get(name)
        return median(got) if got else float("nan")

    lines = [f"median of {rounds} round(s), (min-max) over rounds", "", "what | value", "---|---:"]
    lines += [f"{name} | {cell(name)}" for name in values]
    lines += ["", "targets:"]
    mine, theirs = med("memory trio_ws KiB/pair"), med("memory websockets_trio KiB/pair")
    lines.append(f"- memory: trio_ws / websockets.trio = {mine / theirs:.2f} (target <= 0.5)")
    ratio_new, ratio_old = med("ratio trio_ws"), med("ratio trio_ws_w15")
    before = med("ratio before")
    lines.append(
        f"- ratio: new {ratio_new:.3f}, former settings {ratio_old:.3f}, before {before:.3f}: "
        f"new / before = {ratio_new / before if before == before else ratio_new / ratio_old:.3f} (target >= 0.9)"
    )
    for role in ("server", "client"):
        json_gain = med(f"msgs/s {role} json trio_ws") / med(f"msgs/s {role} json websockets_trio")
        random_cost = med(f"msgs/s {role} random trio_ws_plain") / med(f"msgs/s {role} random trio_ws")
        cpu_gain = med(f"cpu us/msg {role} json websockets_trio") / med(f"cpu us/msg {role} json trio_ws")
        lines.append(
            f"- {role} role: JSON with deflate, trio_ws / websockets.trio = {json_gain:.2f} (target >= 1.5); "
            f"by CPU time a message {cpu_gain:.2f}"
        )
        lines.append(f"- {role} role: random bytes, trio_ws without / with deflate = {random_cost:.2f} (target <= 1.3)")
    command = "python benchmarks/compression.py" + (" --quick" if args.quick else "")
    lines.append(f"\nwall time {elapsed:.0f} s; command: {command}")
    return "\n".join(lines) + "\n"


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["memory", "ratio", "server", "client", "ref-server", "ref-client"])
    parser.add_argument("impl", nargs="?")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--port", type=int)
    parser.add_argument("--payload", default="json")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--deflate", action="store_true")
    args = parser.parse_args(argv)
    if args.what == "ref-server":
        ref_server(args.port, args.deflate)
        return
    if args.what == "ref-client":
        print(json.dumps(ref_client(args.port, args.deflate, args.payload, args.seconds)))
        return
    import trio

    if args.what == "memory":
        result = trio.run(memory_child, args.impl, args.pairs)
    elif args.what == "ratio":
        result = trio.run(ratio_child, args.impl)
    elif args.what == "server":
        trio.run(server_child, args.impl, args.port)
        return
    else:
        result = trio.run(client_child, args.impl, args.port, args.payload, args.seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
    else:
        sys.exit(main())
