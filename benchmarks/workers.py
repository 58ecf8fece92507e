"""Handshakes and 32 B echo messages per second from 1 and from 2 worker processes (run_workers).

    .venv/bin/python benchmarks/workers.py                 # 1 and 2 workers, 3 s a workload: ~30 s
    .venv/bin/python benchmarks/workers.py --seconds 5 --clients 2 --workers 1 2 4

The server is ``trio_ws.run_workers`` serving :func:`echo` (below) on loopback, port 0.  The load
comes from ``--clients`` other processes (this file, ``--client``): asyncio with raw sockets and
hand-made frames, so that the clients cost as little as Python allows.  Each client runs
``--connections`` concurrent tasks:

- handshakes: connect, send the opening handshake, read the 101, send a Close, read the server's
  Close, close the socket; again;
- messages: one connection per task, a 32 B masked text message, wait for its echo; again.

Clients and workers share the machine's cores: with 2 cores, 2 workers and 2 clients compete
for them, so the ratio 2 workers / 1 worker says how much of a second core the server can use
when the load generator also needs one.  Everything stops itself after its time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef") + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MASK = b"\x01\x02\x03\x04"
PAYLOAD = b"x" * 32
MESSAGE = bytes([0x81, 0x80 | len(PAYLOAD)]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
CLOSE = bytes([0x88, 0x82]) + MASK + bytes(b ^ MASK[i] for i, b in enumerate(struct.pack("!H", 1000)))


async def echo(request: object) -> None:  # the handler the workers import: benchmarks.workers:echo
    from trio_ws import ConnectionClosed, WebSocketRequest

    assert isinstance(request, WebSocketRequest)
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


# --- the client processes (asyncio, raw frames) ------------------------------------------------------


async def _handshakes(port: int, until: float, counts: list[int]) -> None:
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(CLOSE)
        await reader.readexactly(4)  # the server's Close: 0x88, 2, code
        writer.close()
        await writer.wait_closed()
        counts[0] += 1


async def _messages(port: int, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await reader.readuntil(b"\r\n\r\n")
    reply = 2 + len(PAYLOAD)
    while time.monotonic() < until:
        writer.write(MESSAGE)
        await reader.readexactly(reply)
        counts[0] += 1
    writer.write(CLOSE)
    await reader.readexactly(4)
    writer.close()
    await writer.wait_closed()


async def _client(port: int, workload: str, connections: int, seconds: float) -> None:
    counts = [0]
    run = _handshakes if workload == "handshakes" else _messages
    start = time.monotonic()
    await asyncio.gather(*(run(port, start + seconds, counts) for _ in range(connections)))
    print(json.dumps({"count": counts[0], "seconds": time.monotonic() - start}), flush=True)


# --- the driver ---------------------------------------------------------------------------------------


def _load(port: int, workload: str, clients: int, connections: int, seconds: float) -> float:
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", str(port), workload, str(connections), str(seconds)],
            stdout=subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    total = 0.0
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 30)
        result = json.loads(out)
        total += result["count"] / result["seconds"]
    return total


async def _measure(workers: int, args: argparse.Namespace) -> dict[str, float]:
    import trio

    import trio_ws

    async with trio.open_nursery() as nursery:
        pool = await nursery.start(
            partial(
                trio_ws.run_workers,
                "benchmarks.workers:echo",
                "127.0.0.1",
                0,
                workers=workers,
                handle_signals=False,
                log_level="WARNING",
                disconnect_timeout=2,
            )
        )
        figures = {}
        for workload in ("handshakes", "messages"):
            figures[workload] = await trio.to_thread.run_sync(
                _load, pool.port, workload, args.clients, args.connections, args.seconds
            )
        pool.stop()
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, workload, connections, seconds = sys.argv[2:6]
        asyncio.run(_client(int(port), workload, int(connections), float(seconds)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent tasks per client (default 32)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per workload (default 3)")
    args = parser.parse_args()
    os.chdir(ROOT)  # the workers import benchmarks.workers from here

    import trio

    print(f"{os.cpu_count()} CPUs; {args.clients} clients x {args.connections} connections; {args.seconds:g} s")
    results = {workers: trio.run(_measure, workers, args) for workers in args.workers}
    print(f"{'workers':>8} {'handshakes/s':>14} {'32 B msgs/s':>14}")
    for workers, figures in results.items():
        print(f"{workers:>8} {figures['handshakes']:>14,.0f} {figures['messages']:>14,.0f}")
    first = results[args.workers[0]]
    for workers in args.workers[1:]:
        figures = results[workers]
        print(
            f"ratio {workers}/{args.workers[0]}: handshakes {figures['handshakes'] / first['handshakes']:.2f}, "
            f"messages {figures['messages'] / first['messages']:.2f}"
        )


if __name__ == "__main__":
    main()
